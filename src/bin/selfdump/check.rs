//! `selfdump check`: can CRIU dump and restore here, and what in a process
//! would it refuse?

use crate::cli::{Res, out, usage, value};
use crate::{help_requested, need_root};
use selfdump::server::{Criu, check};
use std::process::ExitCode;

pub(crate) const USAGE: &str = "\
selfdump check: is CRIU usable on this machine?

USAGE: selfdump check [--criu PATH] [--scratch DIR]
       selfdump check --pid PID [--tcp-established] [--ext-unix-sk]

Without --pid: checks that criu is installed, is version 4 or newer, passes
`criu check`, and can really dump and restore a tiny process (in DIR,
default /tmp); then says which engine non-root callers get here (a CRIU
running as the caller, tried by a dump and restore as uid 65534, or else
`selfdump serve`'s --non-root-fallback).

With --pid: lists what in process PID and its children would make CRIU
refuse the dump or fail the restore (connections to unix sockets outside
the tree, TCP connections, deleted files, files written without O_APPEND,
io_uring, a tracer), each with its fd and what to do: the same preflight
that selfdump::checkpoint() runs. --tcp-established and --ext-unix-sk say
the dump will use those options. Each finding names the pid and fd; the
fix for a kind of finding is said once.

EXIT CODES: 0 CRIU can dump and restore here (with --pid: nothing it would
refuse); 1 it cannot, the first FAIL says why, or not run as root (with
--pid: CRIU would refuse the process, or there is no such process); 2 a
usage error.";

/// `selfdump check --pid PID`: the preflight of another process.
fn check_pid(preflight: selfdump::preflight::Preflight) -> Res<ExitCode> {
    use selfdump::preflight::Severity;
    let findings = preflight.run()?;
    if !findings.is_empty() {
        out(selfdump::preflight::describe(&findings, "").trim_end())?;
    }
    let refused = findings
        .iter()
        .filter(|f| f.severity == Severity::Refused)
        .count();
    out(format_args!(
        "verdict: {}",
        match (refused, findings.len()) {
            (0, 0) => "nothing found; CRIU should dump this process".to_owned(),
            (0, n) => format!("{n} risk(s), nothing CRIU would refuse"),
            (r, _) => format!("CRIU would refuse this process ({r} finding(s)); fix them first"),
        }
    ))?;
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) fn check_cmd(mut parser: lexopt::Parser) -> Res<ExitCode> {
    use lexopt::Arg::*;
    let mut criu = Criu {
        path: check::find_criu(),
        ..Criu::default()
    };
    let mut scratch = std::env::temp_dir();
    let mut preflight: Option<selfdump::preflight::Preflight> = None;
    let (mut tcp, mut ext_unix) = (false, false);
    while let Some(arg) = parser.next()? {
        if help_requested(&arg, USAGE) {
            return Ok(ExitCode::SUCCESS);
        }
        match arg {
            Long("criu") => criu.path = parser.value()?.into(),
            Long("scratch") => scratch = parser.value()?.into(),
            Long("pid") => {
                let pid: i32 = value(&mut parser, "pid")?;
                if pid <= 0 {
                    return Err(usage("--pid wants a process id (1 or more)"));
                }
                preflight = Some(selfdump::preflight::Preflight::new().pid(pid));
            }
            Long("tcp-established") => tcp = true,
            Long("ext-unix-sk") => ext_unix = true,
            other => return Err(other.unexpected().into()),
        }
    }
    if let Some(preflight) = preflight {
        return check_pid(preflight.tcp_established(tcp).ext_unix_sk(ext_unix));
    }
    check_machine(&criu, &scratch)
}

/// `selfdump check`: can CRIU dump and restore here?
fn check_machine(criu: &Criu, scratch: &std::path::Path) -> Res<ExitCode> {
    need_root(
        "`criu check` and the dump and restore of a tiny process it tries need \
         CAP_SYS_ADMIN (`selfdump check --pid PID` does not, for your own processes)",
    )?;
    let findings = check::check(criu, scratch);
    // the first four decide; what follows (dumps of non-root callers) is
    // a note on what works here
    let (core, notes) = findings.split_at(findings.len().min(4));
    let show = |f: &check::Finding, not_ok: &str| {
        let mark = if f.ok { "ok  " } else { not_ok };
        out(format_args!("{mark} {:<40} {}", f.what, f.detail))
    };
    for f in core {
        show(f, "FAIL")?;
    }
    let ok = core.iter().all(|f| f.ok) && core.len() == 4;
    for f in notes {
        show(f, "NOTE")?;
    }
    let root_only = notes.iter().any(|f| !f.ok);
    out(match (ok, root_only) {
        (true, false) => "verdict: selfdump can checkpoint and restore on this machine",
        (true, true) => {
            "verdict: selfdump can checkpoint and restore on this machine, for root callers \
                 only (see NOTE above)"
        }
        (false, _) => "verdict: NOT usable; fix the first FAIL above",
    })?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
