//! CRIU's kernel-feature cache. Every CRIU run probes the kernel
//! (`kerndat_init`, 22–48 ms on these VMs) unless it can load
//! `/run/criu.kdat`. CRIU loads that file from any filesystem but only
//! *writes* it when `/run` is a tmpfs, so on machines whose `/run` is not,
//! every dump pays the probe.
//!
//! The service fixes that without changing the mount namespace of the CRIU
//! that dumps (a CRIU in another mount namespace than its target would try to
//! dump mounts): it runs `criu check` once in a private mount namespace where
//! `/run` is a directory on the `/dev/shm` tmpfs, so that CRIU writes its
//! cache there, and installs the file as `/run/criu.kdat`. It does so at
//! every start (a cache from before a reboot may describe another kernel)
//! and removes the file when it stops.

use super::Criu;
use rustix::fs::StatFs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where CRIU looks for its cache (fixed in CRIU).
pub const KDAT_FILE: &str = "/run/criu.kdat";
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// What [`ensure_cache`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KdatCache {
    /// `/run` is a tmpfs: CRIU keeps its cache by itself.
    CriuKeepsIt,
    /// The service generated the cache and installed it at [`KDAT_FILE`].
    Installed,
    /// No cache: every dump probes the kernel (the reason says why).
    Unavailable(String),
}

fn is_tmpfs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s: StatFs| s.f_type == TMPFS_MAGIC)
}

/// Makes sure dumps find a valid kernel-feature cache.
pub fn ensure_cache(criu: &Criu) -> KdatCache {
    if is_tmpfs(Path::new("/run")) {
        return KdatCache::CriuKeepsIt;
    }
    match generate(criu) {
        Ok(()) => KdatCache::Installed,
        Err(e) => KdatCache::Unavailable(e.to_string()),
    }
}

/// Removes a cache the service installed (it describes this boot's kernel only).
pub fn remove_cache(state: &KdatCache) {
    if *state == KdatCache::Installed {
        let _ = std::fs::remove_file(KDAT_FILE);
    }
}

fn generate(criu: &Criu) -> io::Result<()> {
    let shm = Path::new("/dev/shm");
    if !is_tmpfs(shm) {
        return Err(io::Error::other("neither /run nor /dev/shm is a tmpfs"));
    }
    let scratch = shm.join(format!("selfdump-kdat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir(&scratch)?;
    let result =
        run_check_with_run_at(criu, &scratch).and_then(|()| install(&scratch.join("criu.kdat")));
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_check_with_run_at(criu: &Criu, run_dir: &Path) -> io::Result<()> {
    let source = std::ffi::CString::new(run_dir.as_os_str().as_encoded_bytes())?;
    let mut cmd = Command::new(&criu.path);
    cmd.arg("check")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only raw unshare/mount syscalls on prepared C strings run
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            use rustix::mount::{MountPropagationFlags, mount_bind, mount_change};
            rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
            mount_change(
                c"/",
                MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
            )?;
            mount_bind(source.as_c_str(), c"/run")?;
            Ok(())
        });
    }
    let status = cmd.status()?;
    log::debug!("criu check for the kdat cache: {status}");
    Ok(())
}

fn install(generated: &Path) -> io::Result<()> {
    let bytes = std::fs::read(generated).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("criu wrote no cache ({}: {e})", generated.display()),
        )
    })?;
    let tmp = PathBuf::from(format!("{KDAT_FILE}.selfdump-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, KDAT_FILE).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
