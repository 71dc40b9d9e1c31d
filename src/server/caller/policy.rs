//! Who may ask for a dump, and whether a caller may be dumped at all.

use super::status::TaskStatus;
use rustix::fs::{FileType, Stat};
use std::collections::BTreeSet;
use std::os::fd::BorrowedFd;

/// A caller asking for a checkpoint, as an embedder's admission callback
/// sees it ([`Builder::admit`](crate::server::Builder::admit)).
///
/// Every field comes from the kernel, never from the request, and the
/// caller has passed the built-in checks: in particular its real,
/// effective, saved and filesystem ids are equal (callers with changed ids
/// are refused before), so `uid` and `gid` are all of them.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CallerInfo<'a> {
    /// The caller's uid, read from `/proc/<pid>/status` once the pidfd
    /// pinned the pid.
    pub uid: u32,
    /// The caller's gid, likewise.
    pub gid: u32,
    /// The calling process (the thread group leader's pid, as
    /// `SO_PEERCRED` gives it). Compare it with pids you started; the
    /// pidfd says whether it still names the caller.
    pub pid: i32,
    /// A pidfd of the caller (`SO_PEERPIDFD`), valid while the callback
    /// runs: poll it, send it signals with `pidfd_send_signal`, or
    /// `try_clone_to_owned` it to keep it. While the caller lives, `pid`
    /// names it.
    pub pidfd: BorrowedFd<'a>,
}

/// Which callers may ask for a checkpoint. The socket's own mode and owner
/// are the first gate; this is the second. The default allows root only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Uids allowed besides root.
    pub allow_uids: BTreeSet<u32>,
    /// Callers with one of these gids (primary or supplementary) are allowed.
    pub allow_gids: BTreeSet<u32>,
    /// Allow every caller that can connect (the socket's permissions decide).
    pub allow_any: bool,
}

impl Policy {
    /// Root only.
    pub fn root_only() -> Self {
        Self::default()
    }

    /// Whether this caller may ask at all; the error says why not.
    pub(crate) fn admit(&self, caller: &TaskStatus) -> Result<(), String> {
        let uid = caller.uid();
        if self.allow_any
            || uid == 0
            || self.allow_uids.contains(&uid)
            || self.allow_gids.iter().any(|&g| caller.in_group(g))
        {
            Ok(())
        } else {
            Err(format!(
                "uid {uid} is not allowed to checkpoint through this service; \
                 the operator can allow it with `selfdump serve --allow-uid {uid}`"
            ))
        }
    }
}

/// Refuses callers that could hand the service more than they could reach
/// themselves: changed ids (setuid/setgid), or, for non-root callers, any
/// permitted, effective or ambient capability (a permitted one can be made
/// effective at any moment; an ambient one survives `execve`), or a
/// `/proc` entry not owned by the caller (not dumpable). `proc_file` must
/// be a file such as `/proc/<pid>/stat`: the kernel hands a non-dumpable
/// task's files to root, but never its `/proc/<pid>` directory.
///
/// A zombie (see [`TaskStatus::zombie`]) has no memory, so there is nothing
/// its dumpability protects, and the kernel makes its files root's
/// whatever it was: the ownership test is skipped for it. Its ids and
/// capabilities are still checked (they are what it ran with).
pub(crate) fn check_dumpable(
    caller: &TaskStatus,
    proc_file: &Stat,
    what: &str,
) -> Result<(), String> {
    let ruid = caller.uids.real;
    if !caller.uids.unchanged() || !caller.gids.unchanged() {
        return Err(format!(
            "{what} has changed ids (uids {:?}, gids {:?}; setuid or setgid): not dumpable",
            caller.uids.as_array(),
            caller.gids.as_array()
        ));
    }
    if ruid != 0 {
        let caps = [
            ("permitted", caller.caps.permitted),
            ("effective", caller.caps.effective),
            ("ambient", caller.caps.ambient),
        ];
        if let Some((set, caps)) = caps.into_iter().find(|(_, c)| *c != 0) {
            return Err(format!(
                "{what} runs as uid {ruid} with {set} capabilities {caps:#x}: not dumpable by an \
                 unprivileged caller (drop every capability, e.g. with capsh --drop or by not \
                 keeping them across setuid, and ask again)"
            ));
        }
        if !caller.zombie && proc_file.st_uid != ruid {
            return Err(format!("{what} is not dumpable (PR_SET_DUMPABLE is off)"));
        }
    }
    Ok(())
}

/// Whether a caller may create files in a directory, from its mode bits
/// (the caller needs write and search permission).
pub(crate) fn may_write_dir(caller: &TaskStatus, dir: &Stat) -> Result<(), String> {
    if FileType::from_raw_mode(dir.st_mode) != FileType::Directory {
        return Err("the images fd is not a directory".into());
    }
    let uid = caller.uid();
    if uid == 0 {
        return Ok(());
    }
    let mode = dir.st_mode;
    let bits = if dir.st_uid == uid {
        (mode >> 6) & 0o3
    } else if caller.in_group(dir.st_gid) {
        (mode >> 3) & 0o3
    } else {
        mode & 0o3
    };
    if bits == 0o3 {
        Ok(())
    } else {
        Err(format!(
            "uid {uid} may not create files in the images directory"
        ))
    }
}

/// `CAP_SYS_PTRACE`: lets its holder inspect processes of any uid.
const CAP_SYS_PTRACE: u64 = 1 << 19;

/// Whether `caller` may get images of `task`, one task (thread) of its tree,
/// checked once the tree is frozen. `what` names the task in the error.
///
/// The rule is "a caller must not get images of a process it could not
/// ptrace itself", made stricter in one way:
///
/// - every task must pass the checks a caller passes ([`check_dumpable`]):
///   no changed ids (setuid/setgid), no capabilities unless it runs as root,
///   and dumpable. This holds even for a root caller, which could ptrace
///   the task: a task that is setuid-changed or made itself non-dumpable
///   (`PR_SET_DUMPABLE` 0, or a privilege drop, which the kernel marks
///   non-dumpable) has asked not to be inspected, and its images would
///   hold what it protects. It can opt back in with `PR_SET_DUMPABLE` 1.
/// - as in the kernel's ptrace check, a caller without `CAP_SYS_PTRACE`
///   may only get tasks whose real, effective and saved uids all equal its
///   own uid, likewise for gids, and whose permitted capabilities are a
///   subset of its own.
///
/// The dumpability of a root-owned task cannot be told from `/proc` (its
/// entries are root's either way); such a task passes when the caller holds
/// `CAP_SYS_PTRACE` and fails the uid rule otherwise.
pub(crate) fn check_tree_task(
    caller: &TaskStatus,
    task: &TaskStatus,
    task_proc: &Stat,
    what: &str,
) -> Result<(), String> {
    check_dumpable(task, task_proc, what)?;
    if caller.caps.effective & CAP_SYS_PTRACE != 0 {
        return Ok(());
    }
    let uid = caller.uid();
    if !task.uids.are(uid) {
        return Err(format!(
            "{what} runs as uid {} and the caller as uid {uid}: the caller could not inspect it",
            task.uid()
        ));
    }
    let gid = caller.gid();
    if !task.gids.are(gid) {
        return Err(format!(
            "{what} runs as gid {} and the caller as gid {gid}: the caller could not inspect it",
            task.gid()
        ));
    }
    let lacked = task.caps.permitted & !caller.caps.permitted;
    if lacked != 0 {
        return Err(format!(
            "{what} holds capabilities {lacked:#x} that the caller lacks"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::caller::status::Caps;

    fn status(uids: [u32; 4], gids: [u32; 4], eff: u64, prm: u64) -> TaskStatus {
        TaskStatus {
            uids: uids.into(),
            gids: gids.into(),
            groups: vec![],
            caps: Caps {
                effective: eff,
                permitted: prm,
                ambient: 0,
            },
            zombie: false,
        }
    }

    fn proc_owned_by(uid: u32) -> Stat {
        // SAFETY: `Stat` is a plain C struct; all-zero is a valid value.
        let mut st: Stat = unsafe { std::mem::zeroed() };
        st.st_uid = uid;
        st
    }

    #[test]
    fn parse_reads_ids_groups_and_capabilities() {
        let text = "Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t9 10 \n\
                    State:\tZ (zombie)\nCapPrm:\t00000000000000ff\nCapEff:\t000000000000000f\n\
                    CapAmb:\t0000000000000001\n";
        let c = TaskStatus::parse(text).unwrap();
        assert_eq!(c.uids.as_array(), [1, 2, 3, 4]);
        assert_eq!((c.uids.real, c.uids.effective), (1, 2));
        assert_eq!(c.gids.as_array(), [5, 6, 7, 8]);
        assert_eq!(c.groups, vec![9, 10]);
        assert_eq!(
            (c.caps.effective, c.caps.permitted, c.caps.ambient),
            (0xf, 0xff, 1)
        );
        assert!(c.zombie);
    }

    #[test]
    fn tree_rules_for_root_and_unprivileged_callers() {
        let all = 0x1ff_ffff_ffff;
        let root = status([0; 4], [0; 4], all, all);
        let nobody = status([65534; 4], [65534; 4], 0, 0);
        let nobody_task = status([65534; 4], [65534; 4], 0, 0);
        let root_task = status([0; 4], [0; 4], all, all);
        let setuid_task = status([65534, 0, 0, 0], [65534; 4], all, all);
        let other_user = status([1000; 4], [1000; 4], 0, 0);
        let ok = |c: &TaskStatus, t: &TaskStatus, owner| {
            check_tree_task(c, t, &proc_owned_by(owner), "t")
        };
        // root may have its dumpable children of any uid, but not setuid or non-dumpable ones
        assert!(ok(&root, &root_task, 0).is_ok());
        assert!(ok(&root, &nobody_task, 65534).is_ok());
        assert!(
            ok(&root, &nobody_task, 0)
                .unwrap_err()
                .contains("not dumpable")
        );
        assert!(ok(&root, &setuid_task, 0).unwrap_err().contains("setuid"));
        // an unprivileged caller gets only its own tasks
        assert!(ok(&nobody, &nobody_task, 65534).is_ok());
        assert!(
            ok(&nobody, &other_user, 1000)
                .unwrap_err()
                .contains("could not inspect")
        );
        assert!(
            ok(&nobody, &root_task, 0)
                .unwrap_err()
                .contains("could not inspect")
        );
        assert!(ok(&nobody, &setuid_task, 0).unwrap_err().contains("setuid"));
        assert!(
            ok(&nobody, &nobody_task, 0)
                .unwrap_err()
                .contains("not dumpable")
        );
        // root without CAP_SYS_PTRACE is held to the ptrace rule
        let weak_root = status([0; 4], [0; 4], all & !CAP_SYS_PTRACE, all & !CAP_SYS_PTRACE);
        assert!(ok(&weak_root, &nobody_task, 65534).is_err());
        assert!(
            ok(&weak_root, &root_task, 0)
                .unwrap_err()
                .contains("capabilities")
        );
    }

    #[test]
    fn a_non_root_caller_with_any_capability_is_refused() {
        let nobody = |eff, prm, amb| {
            let mut status = status([65534; 4], [65534; 4], eff, prm);
            status.caps.ambient = amb;
            status
        };
        let mine = proc_owned_by(65534);
        assert!(check_dumpable(&nobody(0, 0, 0), &mine, "c").is_ok());
        for (c, set) in [
            (nobody(0, 0x1ff, 0), "permitted"),
            (nobody(0x1, 0x1, 0), "permitted"),
            (nobody(0, 0, 0x2), "ambient"),
        ] {
            let e = check_dumpable(&c, &mine, "c").unwrap_err();
            assert!(e.contains(set), "{e}");
        }
        // root keeps its capabilities
        let all = 0x1ff_ffff_ffff;
        assert!(check_dumpable(&status([0; 4], [0; 4], all, all), &proc_owned_by(0), "c").is_ok());
    }

    #[test]
    fn a_zombie_is_not_refused_as_not_dumpable() {
        let zombie = TaskStatus {
            zombie: true,
            ..status([65534; 4], [65534; 4], 0, 0)
        };
        let nobody = status([65534; 4], [65534; 4], 0, 0);
        // a zombie's /proc files are root's
        assert!(check_tree_task(&nobody, &zombie, &proc_owned_by(0), "z").is_ok());
        // but its ids still count
        let setuid_zombie = TaskStatus {
            zombie: true,
            ..status([65534, 0, 0, 0], [65534; 4], 0, 0)
        };
        assert!(check_tree_task(&nobody, &setuid_zombie, &proc_owned_by(0), "z").is_err());
    }
}
