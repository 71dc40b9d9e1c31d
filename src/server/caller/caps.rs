//! The service's own capabilities, and what CRIU needs of them to dump a
//! process of another uid. A dump that fails for a capability the service
//! lacks is reported with the capability's name and the fix, not only
//! CRIU's raw line (e.g. "Can't get rlimit 0: Operation not permitted").

/// Capabilities CRIU uses when it dumps a process that runs as another
/// uid than itself (name, bit), with what for.
pub const NEEDED_FOR_OTHER_UIDS: &[(&str, u32, &str)] = &[
    ("CAP_SYS_PTRACE", 19, "to seize the process"),
    (
        "CAP_SYS_RESOURCE",
        24,
        "to read the process's resource limits",
    ),
    ("CAP_DAC_OVERRIDE", 1, "to read the process's /proc files"),
    ("CAP_DAC_READ_SEARCH", 2, "to open the process's files"),
    ("CAP_KILL", 5, "to signal the process"),
    (
        "CAP_SETUID",
        7,
        "to act with the process's ids (parasite, sockets)",
    ),
    ("CAP_SETGID", 6, "to act with the process's groups"),
    (
        "CAP_FOWNER",
        3,
        "to read the process's memory and file state",
    ),
];

/// `CAP_CHECKPOINT_RESTORE` (Linux 5.9+); `CAP_SYS_ADMIN` stands in for it.
const CAP_CHECKPOINT_RESTORE: u32 = 40;
const CAP_SYS_ADMIN: u32 = 21;

/// The effective capabilities of this process (`/proc/self/status`).
pub fn own_effective() -> Option<u64> {
    let status = crate::procfs::PROC.read("self", "status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The capabilities CRIU needs to dump a process of another uid that
/// `effective` lacks, with what each is for.
pub fn missing_for_other_uids(effective: u64) -> Vec<(&'static str, &'static str)> {
    let has = |bit: u32| effective & (1u64 << bit) != 0;
    let mut missing: Vec<_> = NEEDED_FOR_OTHER_UIDS
        .iter()
        .filter(|(_, bit, _)| !has(*bit))
        .map(|(name, _, why)| (*name, *why))
        .collect();
    if !has(CAP_CHECKPOINT_RESTORE) && !has(CAP_SYS_ADMIN) {
        missing.push((
            "CAP_CHECKPOINT_RESTORE",
            "to read the process's memory maps and set its pids (or CAP_SYS_ADMIN)",
        ));
    }
    missing
}

/// Why non-root callers cannot be dumped by a service with `effective`
/// capabilities, or `None` when it has all CRIU needs.
pub fn other_uids_blocked(effective: u64) -> Option<String> {
    let missing = missing_for_other_uids(effective);
    if missing.is_empty() {
        return None;
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(name, why)| format!("{name} ({why})"))
        .collect();
    Some(format!(
        "the service lacks {}, which CRIU needs to dump a process of another uid; run the \
         service with full root capabilities (no CapabilityBoundingSet= or container that \
         drops them)",
        list.join(", ")
    ))
}

/// The message for a dump that CRIU failed with `logged` (its first error
/// line), for a caller of uid `caller_uid`: when the caller is not the
/// service's uid and the service lacks a capability CRIU needs for that,
/// the capability is named first, CRIU's line follows.
pub fn explain_dump_failure(logged: &str, caller_uid: u32) -> String {
    let service_uid = rustix::process::geteuid().as_raw();
    if caller_uid != service_uid
        && let Some(why) = own_effective().and_then(other_uids_blocked)
    {
        return format!("{why} (criu: {logged})");
    }
    logged.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_capability_is_named_with_the_fix() {
        let full = 0x1ff_ffff_ffff;
        assert!(other_uids_blocked(full).is_none());
        let why = other_uids_blocked(full & !(1 << 24)).unwrap();
        assert!(
            why.starts_with("the service lacks CAP_SYS_RESOURCE (")
                && why.contains("full root capabilities"),
            "{why}"
        );
        // either capability lets CRIU at the memory maps
        assert!(other_uids_blocked(full & !(1 << 40)).is_none());
        let neither = missing_for_other_uids(full & !(1 << 40) & !(1 << 21));
        assert_eq!(neither[0].0, "CAP_CHECKPOINT_RESTORE");
    }
}
