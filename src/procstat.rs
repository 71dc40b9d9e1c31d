//! Fields of `/proc/<pid>/stat`. The second field, the command name in
//! parentheses, may itself hold spaces and parentheses, so the fields are
//! counted from the last `)`.

/// The process state (`R`, `S`, `Z`, ...).
pub(crate) const STATE: usize = 3;
/// The process group id.
#[cfg(feature = "server")]
pub(crate) const PGRP: usize = 5;
/// The session id: 0 when the session leader is outside the pid namespace
/// of this `/proc`.
pub(crate) const SESSION: usize = 6;
/// The start time, in clock ticks after boot.
#[cfg(any(feature = "client", feature = "server"))]
pub(crate) const START_TIME: usize = 22;

/// Field `n` of a `/proc/<pid>/stat` text, numbered as in proc(5) (from 3,
/// the first after the command name).
pub(crate) fn field<T: std::str::FromStr>(stat: &str, n: usize) -> Option<T> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace()
        .nth(n.checked_sub(STATE)?)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_count_from_the_last_parenthesis() {
        let stat = "42 (a) b) (c) S 1 42 7 0 -1";
        assert_eq!(field::<char>(stat, STATE), Some('S'));
        assert_eq!(field::<i32>(stat, SESSION), Some(7));
        assert_eq!(field::<i32>(stat, 2), None);
        assert_eq!(field::<i32>(stat, 40), None);
    }
}
