//! The filesystem rule: every operation the service does in a place the
//! caller can write is done either through an fd the service opened itself
//! and verified, or with the caller's own credentials, so that the kernel
//! applies the caller's permissions (sticky bits, symlinks, ACLs, quotas)
//! and a name the caller swapped in between two system calls gets nothing
//! the caller could not get by itself.
//!
//! [`Credentials::run`] is the second way. It runs a closure on a thread of
//! its own whose *filesystem* ids are the caller's (`setfsuid`, `setfsgid`,
//! the caller's supplementary groups) and whose effective capability set is
//! empty. Only the filesystem ids change: the thread's real, effective and
//! saved uids stay root's, so the caller can neither signal nor ptrace it,
//! which a full `setresuid` would allow for as long as the thread lives.

use crate::server::caller::credentials::Credentials;
use rustix::process::{Gid, Uid};
use std::io;

impl Credentials {
    /// Runs `work` with these credentials: on the calling thread for root
    /// (the service's own rights), on a short-lived thread of its own
    /// otherwise. Blocking; call it off the executor.
    pub(crate) fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> io::Result<T> {
        if self.uid == 0 {
            return Ok(work());
        }
        let dumpable = rustix::process::dumpable_behavior().ok();
        let result = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.assume()?;
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        // Changing a thread's fsuid makes the kernel mark the process
        // non-dumpable. That only guards threads whose real, effective or
        // saved ids change, which ours never do, so the service's own
        // setting is put back (core dumps of a crashed service stay on).
        if let Some(dumpable) = dumpable {
            let _ = rustix::process::set_dumpable_behavior(dumpable);
        }
        result
    }

    /// Turns the current thread into the caller, as far as the filesystem
    /// is concerned. The thread must end afterwards.
    fn assume(&self) -> io::Result<()> {
        let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        // the raw per-thread syscall: libc's setgroups changes every thread
        rustix::thread::set_thread_groups(&groups)?;
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(self.gid));
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(self.uid));
        // setfs[ug]id report no errors: read the ids back (an invalid id
        // leaves them unchanged and returns the current one).
        let fsgid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(u32::MAX));
        let fsuid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(u32::MAX));
        if fsuid.as_raw() != self.uid || fsgid.as_raw() != self.gid {
            return Err(io::Error::other(format!(
                "cannot take the caller's filesystem ids (uid {}, gid {})",
                self.uid, self.gid
            )));
        }
        // A non-root fsuid already drops the file capabilities (DAC, FOWNER,
        // CHOWN, ...); drop the rest too (CAP_SYS_RESOURCE would bypass the
        // caller's quota).
        let mut caps = rustix::thread::capabilities(None)?;
        caps.effective = rustix::thread::CapabilitySet::empty();
        rustix::thread::set_capabilities(None, caps)?;
        debug_assert!(Uid::from_raw(self.uid) != Uid::ROOT);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn nobody() -> Credentials {
        Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        }
    }

    #[test]
    fn the_kernel_checks_the_callers_permissions_not_roots() {
        if !rustix::process::geteuid().is_root() {
            return crate::test_skip::skip(
                crate::test_skip::Limit::NotRoot,
                "tests dropping root's file rights",
            );
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root_only = dir.path().join("root-only");
        let created = nobody().run(|| std::fs::create_dir(&root_only)).unwrap();
        assert_eq!(
            created.unwrap_err().kind(),
            io::ErrorKind::PermissionDenied,
            "nobody may not create in root's 0755 directory"
        );

        // in a sticky directory nobody can write, it may create, but not
        // remove root's entries (root itself could)
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(dir.path().join("roots"), b"x").unwrap();
        let own = dir.path().join("own");
        nobody().run(|| std::fs::create_dir(&own)).unwrap().unwrap();
        assert_eq!(std::fs::metadata(&own).unwrap().uid(), 65534);
        let removed = nobody()
            .run(|| std::fs::remove_file(dir.path().join("roots")))
            .unwrap();
        assert!(removed.is_err(), "the sticky bit binds the caller");
        assert!(dir.path().join("roots").exists());

        // the service's own thread keeps root's rights
        std::fs::create_dir(&root_only).unwrap();
        assert_eq!(rustix::process::getuid(), Uid::ROOT);
    }

    #[test]
    fn root_runs_in_place() {
        let me = std::thread::current().id();
        let creds = Credentials {
            uid: 0,
            gid: 0,
            groups: vec![],
        };
        assert_eq!(creds.run(|| std::thread::current().id()).unwrap(), me);
    }
}
