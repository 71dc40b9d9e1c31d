//! The kernel-feature cache of CRIUs in unprivileged mode (see the
//! module docs of [`kdat`](super)).

use super::super::run_as::{DUMP_CAPS, Keep};
use super::{CacheFile, KdatCache, install_bytes, is_tmpfs, written_this_boot};
use crate::server::caller::credentials::Credentials;
use crate::server::engine::Criu;
use crate::server::fs::service_dir::ServiceDir;
use rustix::fs::{Mode, OFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

/// The `XDG_RUNTIME_DIR` the service gives the CRIUs it runs as a user:
/// root's, mode 0755, holding only [`UNPRIVILEGED_FILE`].
pub const UNPRIVILEGED_DIR: &str = "/run/selfdump-criu";
/// The cache file in it (CRIU's name: `$XDG_RUNTIME_DIR/criu.kdat`).
pub const UNPRIVILEGED_FILE: &str = "/run/selfdump-criu/criu.kdat";

/// The user the cache is generated as (any unprivileged user would do: the
/// probes depend on capabilities, not on the uid).
const PROBE_UID: u32 = 65534;

/// A cache CRIU writes is a few hundred bytes; anything far larger is not one.
const MAX_CACHE: usize = 64 << 10;

/// Makes sure unprivileged dumps find a valid kernel-feature cache, as
/// [`ensure_cache`](super::ensure_cache) does for root's.
pub fn ensure_unprivileged_cache(criu: &Criu) -> KdatCache {
    if let Err(e) = cache_dir() {
        return KdatCache::Unavailable(e.to_string());
    }
    if written_this_boot(UNPRIVILEGED_FILE)
        && let Ok(held) = CacheFile::hold(UNPRIVILEGED_FILE)
    {
        return KdatCache::Valid(held);
    }
    match generate(criu).and_then(|()| CacheFile::hold(UNPRIVILEGED_FILE)) {
        Ok(held) => KdatCache::Installed(held),
        Err(e) => KdatCache::Unavailable(e.to_string()),
    }
}

/// [`UNPRIVILEGED_DIR`], made if missing, checked to be root's and
/// writable by root alone, and made searchable by everyone.
fn cache_dir() -> io::Result<ServiceDir> {
    let dir = ServiceDir::open_or_create(Path::new(UNPRIVILEGED_DIR))?;
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o755))?;
    Ok(dir)
}

/// Runs `criu check --unprivileged` as [`PROBE_UID`] with
/// `XDG_RUNTIME_DIR` a fresh directory of that user's on a tmpfs (CRIU
/// saves its cache only there), which it reaches through an inherited fd
/// (the directory is inside one of root's, mode 0700, so no process of
/// that user can put anything in it), then installs what it wrote.
fn generate(criu: &Criu) -> io::Result<()> {
    let shm = Path::new("/dev/shm");
    if !is_tmpfs(shm) {
        return Err(io::Error::other("/dev/shm is not a tmpfs"));
    }
    let scratch = ServiceDir::create_in(shm, "selfdump-kdat-")?;
    let result = run_check_in(criu, &scratch);
    if let Err(e) = scratch.remove_all() {
        log::warn!("cannot remove the scratch directory of the kdat cache: {e}");
    }
    install_bytes(&result?, UNPRIVILEGED_FILE)
}

/// The cache an unprivileged `criu check` wrote into `scratch/user`.
fn run_check_in(criu: &Criu, scratch: &ServiceDir) -> io::Result<Vec<u8>> {
    let user_dir = user_dir_in(scratch)?;
    let fd = user_dir.as_raw_fd();
    let runtime_dir = crate::procfs::self_fd(fd);
    let user = Credentials {
        uid: PROBE_UID,
        gid: PROBE_UID,
        groups: Vec::new(),
    };
    let mut cmd = criu.command();
    cmd.args(["check", "--unprivileged"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fds = [user_dir.as_fd()];
    user.apply(
        &mut cmd,
        Keep {
            caps: DUMP_CAPS,
            confine: true,
            fds: &fds,
            runtime_dir: Some(Path::new(&runtime_dir)),
        },
    );
    // no caller's connection may be copied into the forked child
    let status = crate::server::engine::spawn(&mut cmd)?.wait()?;
    log::debug!("unprivileged criu check for the kdat cache: {status}");
    let bytes =
        crate::server::images::format::read_image(&user_dir, "criu.kdat").ok_or_else(|| {
            io::Error::other(format!(
                "an unprivileged criu check wrote no cache ({status})"
            ))
        })?;
    for name in crate::server::images::format::entry_names(&user_dir)? {
        let _ = rustix::fs::unlinkat(&user_dir, name.as_str(), rustix::fs::AtFlags::empty());
    }
    let _ = rustix::fs::unlinkat(scratch, "user", rustix::fs::AtFlags::REMOVEDIR);
    if bytes.is_empty() || bytes.len() > MAX_CACHE {
        return Err(io::Error::other(format!(
            "criu wrote a cache of {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// `scratch/user`, owned by [`PROBE_UID`], mode 0700.
fn user_dir_in(scratch: &ServiceDir) -> io::Result<OwnedFd> {
    rustix::fs::mkdirat(scratch, "user", Mode::RWXU)?;
    let dir = rustix::fs::openat(
        scratch,
        "user",
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?;
    rustix::fs::fchown(
        &dir,
        Some(rustix::fs::Uid::from_raw(PROBE_UID)),
        Some(rustix::fs::Gid::from_raw(PROBE_UID)),
    )?;
    Ok(dir)
}
