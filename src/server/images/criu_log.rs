//! CRIU's log in an images directory: its name, and the error in it that
//! matters.

/// Name of CRIU's log inside the images directory.
pub(crate) const DUMP_LOG: &str = "dump.log";

/// The first error line of a CRIU log that matters. CRIU logs a harmless
/// "Can't setup `RLIMIT_NOFILE`" error on every run without `CAP_SYS_RESOURCE`,
/// which CRIU's own `cr_errmsg` then reports even for unrelated failures.
pub(crate) fn first_error(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("Error (") && !l.contains("RLIMIT_NOFILE"))
        .map(|l| l.split_once("Error (").map_or(l, |(_, rest)| rest))
        .map(|rest| {
            rest.split_once("): ")
                .map_or(rest, |(_, msg)| msg)
                .trim()
                .to_owned()
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::first_error;

    #[test]
    fn first_error_skips_the_rlimit_line() {
        let log = "(00.08) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
                   (00.09)  1: Error (criu/files-reg.c:2175): File tmp/x has bad size 149 (expect 46)\n\
                   (00.10) Error (criu/cr-restore.c:2320): Restoring FAILED.\n";
        assert_eq!(
            first_error(log).as_deref(),
            Some("File tmp/x has bad size 149 (expect 46)")
        );
        assert_eq!(first_error("all fine\n"), None);
    }
}
