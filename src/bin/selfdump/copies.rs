//! What `selfdump restore --copies N` prints, from a directory or a URL.

use crate::cli::Res;
use std::process::ExitCode;

/// Prints each copy's root pid, and with `lazy`, stays until their memory
/// is in.
pub(crate) fn print_copies(copies: selfdump::server::copies::Copies, lazy: bool) -> Res<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for copy in &copies.copies {
        writeln!(out, "{}", copy.pid)?;
    }
    out.flush()?;
    drop(out);
    if !lazy {
        return Ok(ExitCode::SUCCESS);
    }
    let died = copies
        .supervise()
        .into_iter()
        .filter(|(_, pages)| !matches!(pages, selfdump::server::copies::Pages::Loaded(_)))
        .count();
    if died > 0 {
        return Err(
            format!("{died} lazy cop(y/ies) lost their page daemon and were killed").into(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
