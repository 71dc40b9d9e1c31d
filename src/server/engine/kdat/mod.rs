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
//! cache there, and installs the file as `/run/criu.kdat`. A cache written
//! since this boot began is valid and left as it is (another service, or
//! another selfdump, may use it); an older one may describe another kernel
//! and is replaced.
//!
//! Every service that uses the cache holds a shared `flock` on it. At stop
//! a service removes the cache only if it installed it, the file is still
//! the one it installed, and no other service holds it: a cache it did not
//! install, or one still in use, stays.
//!
//! A CRIU in unprivileged mode (the dumps of non-root callers) looks for
//! its cache in `$XDG_RUNTIME_DIR` instead, never in `/run`, and probes less
//! than root's (no network or cgroup probes), so it needs a cache of its own
//! ([`ensure_unprivileged_cache`]): made by an unprivileged `criu check`, kept
//! in [`UNPRIVILEGED_DIR`] (root's, mode 0755, the file 0644), which the
//! service gives its unprivileged CRIUs as `XDG_RUNTIME_DIR`. They can read
//! it and cannot change it (one that finds no valid cache probes, then
//! fails to save one there, harmlessly).

use super::Criu;
use rustix::fs::StatFs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Where CRIU looks for its cache (fixed in CRIU).
pub const KDAT_FILE: &str = "/run/criu.kdat";
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// What [`ensure_cache`] found or did.
#[derive(Debug)]
pub enum KdatCache {
    /// `/run` is a tmpfs: CRIU keeps its cache by itself.
    CriuKeepsIt,
    /// A cache written since this boot began was there: it is used as it
    /// is, and never removed by this service.
    Valid(CacheFile),
    /// The service generated the cache and installed it at [`KDAT_FILE`].
    Installed(CacheFile),
    /// No cache: every dump probes the kernel (the reason says why).
    Unavailable(String),
}

/// For the service log: where the cache is, or why there is none.
impl std::fmt::Display for KdatCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CriuKeepsIt => f.write_str("kept by CRIU itself (/run is a tmpfs)"),
            Self::Valid(file) => write!(f, "{}, made earlier in this boot", file.path),
            Self::Installed(file) => write!(f, "{}, made now", file.path),
            Self::Unavailable(why) => write!(f, "none ({why}): every dump probes the kernel"),
        }
    }
}

/// The cache file as this service opened it, with a shared `flock` held
/// on it while the service uses it.
#[derive(Debug)]
pub struct CacheFile {
    fd: std::os::fd::OwnedFd,
    path: &'static str,
}

impl CacheFile {
    /// Opens the cache at `path` and takes a shared lock on it.
    fn hold(path: &'static str) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockShared)?;
        Ok(Self { fd, path })
    }

    /// Whether its path still names this file (not replaced since).
    fn is_current(&self) -> bool {
        match (rustix::fs::fstat(&self.fd), rustix::fs::stat(self.path)) {
            (Ok(ours), Ok(now)) => (ours.st_dev, ours.st_ino) == (now.st_dev, now.st_ino),
            _ => false,
        }
    }
}

/// Whether the cache at `path` was written since this boot began (CRIU
/// itself checks only its size and magic, not the kernel).
fn written_this_boot(path: &str) -> bool {
    let Ok(stat) = rustix::fs::stat(path) else {
        return false;
    };
    boot_time().is_some_and(|boot| stat.st_mtime >= boot)
}

/// When this boot began, in seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<i64> {
    let stat = crate::procfs::PROC.read_file("stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn is_tmpfs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s: StatFs| s.f_type == TMPFS_MAGIC)
}

/// Makes sure dumps find a valid kernel-feature cache.
pub fn ensure_cache(criu: &Criu) -> KdatCache {
    if is_tmpfs(Path::new("/run")) {
        return KdatCache::CriuKeepsIt;
    }
    if written_this_boot(KDAT_FILE)
        && let Ok(held) = CacheFile::hold(KDAT_FILE)
    {
        return KdatCache::Valid(held);
    }
    match generate(criu).and_then(|()| CacheFile::hold(KDAT_FILE)) {
        Ok(held) => KdatCache::Installed(held),
        Err(e) => KdatCache::Unavailable(e.to_string()),
    }
}

/// Removes the cache if this service installed it, it is still the file
/// installed, and no other service holds it (it describes this boot's
/// kernel only). A cache found valid, replaced since, or still in use stays.
pub fn remove_cache(state: &KdatCache) {
    let KdatCache::Installed(held) = state else {
        return;
    };
    // our shared lock becomes exclusive only if no one else holds one
    let alone = rustix::fs::flock(
        &held.fd,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .is_ok();
    if alone && held.is_current() {
        let _ = std::fs::remove_file(held.path);
    }
    let _ = rustix::fs::flock(&held.fd, rustix::fs::FlockOperation::NonBlockingLockShared);
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
    let mut cmd = criu.command();
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
    // no caller's connection may be copied into the forked child
    let status = crate::server::engine::spawn(&mut cmd)?.wait()?;
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
    install_bytes(&bytes, KDAT_FILE)
}

/// Installs a cache at `path` (in a directory only root can write), whole
/// or not at all, readable by everyone.
fn install_bytes(bytes: &[u8], path: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = PathBuf::from(format!("{path}.selfdump-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

mod unprivileged;
pub use unprivileged::{UNPRIVILEGED_DIR, UNPRIVILEGED_FILE, ensure_unprivileged_cache};
