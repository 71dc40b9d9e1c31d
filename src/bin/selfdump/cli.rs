//! What every command shares: errors and their exit codes, option values
//! parsed with the option's name in the message, and output that a closed
//! pipe does not turn into a panic.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

/// What a command returns: its exit code, or why it failed.
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A command line that cannot be run as written (exit code 2, or 125 for
/// `selfdump run`), as opposed to a command that ran and failed (1).
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error, boxed as every command's error.
pub(crate) fn usage(message: impl Into<String>) -> Box<dyn std::error::Error> {
    Box::new(Usage(message.into()))
}

/// Whether `e` is about the command line (ours, or lexopt's own: an
/// unknown option, a missing value).
pub(crate) fn is_usage(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<Usage>() || e.is::<lexopt::Error>()
}

/// A failure with an exit code of its own (`selfdump run`: 126, 127, 125;
/// `selfdump inspect`: 3).
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The value of `--name`, parsed; a usage error naming the option and
/// the value otherwise.
pub(crate) fn value<T>(parser: &mut lexopt::Parser, name: &str) -> Res<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let raw = parser.value()?;
    let text = raw
        .to_str()
        .ok_or_else(|| usage(format!("--{name}: {raw:?} is not valid UTF-8")))?;
    text.parse()
        .map_err(|e| usage(format!("--{name} {text:?}: {e}")))
}

/// A count that must be at least 1 (a limit of 0 would refuse everything).
pub(crate) fn at_least_one<T>(parser: &mut lexopt::Parser, name: &str) -> Res<T>
where
    T: FromStr + PartialOrd + From<u8>,
    T::Err: fmt::Display,
{
    let n: T = value(parser, name)?;
    if n < T::from(1) {
        return Err(usage(format!("--{name} must be at least 1")));
    }
    Ok(n)
}

/// Seconds (fractions allowed): at least 0, or more than 0 when `zero` is
/// not allowed (a deadline of 0 would kill at once).
pub(crate) fn seconds(parser: &mut lexopt::Parser, name: &str, zero: bool) -> Res<Duration> {
    let secs: f64 = value(parser, name)?;
    let d = Duration::try_from_secs_f64(secs)
        .map_err(|_| usage(format!("--{name} {secs}: not a number of seconds")))?;
    if d.is_zero() && !zero {
        return Err(usage(format!("--{name} must be more than 0 seconds")));
    }
    Ok(d)
}

/// Writes `text` and a newline to stdout. A closed pipe (`selfdump ... |
/// head`) is an error to return, never a panic as with `println!`.
pub(crate) fn out(text: impl fmt::Display) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()
}
