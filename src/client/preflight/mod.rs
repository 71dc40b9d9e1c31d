//! What in a process would make CRIU refuse to dump it, or make its images
//! fail to restore, found before anything is frozen.
//!
//! [`checkpoint`](crate::checkpoint) runs this first (unless
//! [`Options::skip_preflight`](crate::Options::skip_preflight)) and fails
//! with [`Error::Preflight`](crate::Error::Preflight) when CRIU would refuse;
//! `selfdump check --pid PID` prints the same list for another process.
//!
//! ```no_run
//! for finding in selfdump::preflight()? {
//!     eprintln!("{finding}");
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! What is looked at, for the process and every descendant (CRIU dumps the
//! whole tree): `/proc/PID/fd` and `/proc/PID/fdinfo`, the kernel's unix
//! socket table (`sock_diag`, which names each connection's peer),
//! `/proc/PID/net/tcp{,6}`, and `/proc/PID/status`.
//!
//! It runs before every checkpoint, so it only asks about what the tree
//! holds (a fraction of a millisecond for a small process, see
//! `benches/preflight.rs`): each socket's protocol comes from its
//! `system.sockprotoname`, `sock_diag` is asked for the tree's own unix
//! sockets by inode and the caller's TCP connections by address, and the
//! TCP tables (slow to read: the kernel walks its whole connection table)
//! are read only for the TCP sockets those answers leave out. Modules:
//! `tree` (processes, fds, tracer), `files`, `sockets` (unix, and the
//! findings), `tcp` and `tcp_table`, `diag` (the netlink transport).

mod diag;
mod files;
mod sockets;
mod tcp;
mod tcp_table;
mod tree;

use std::fmt;
use std::io;

/// What kind of problem a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A stream (or seqpacket) unix socket connected to a process outside
    /// the dumped tree: CRIU cannot dump one half of a connection.
    UnixStreamToOutside,
    /// A datagram unix socket connected to a socket outside the tree
    /// (`/dev/log`, say): CRIU refuses it without `ext_unix_sk`.
    UnixDgramToOutside,
    /// A TCP connection (not listening, not closed): CRIU refuses it
    /// without `tcp_established`.
    TcpConnection,
    /// A file opened on a path that has since been deleted.
    DeletedFile,
    /// A regular file open for writing without `O_APPEND`: if its size
    /// changes after the checkpoint, CRIU refuses to restore it.
    WrittenWithoutAppend,
    /// An `io_uring` instance, which CRIU cannot dump.
    IoUring,
    /// The process is being traced (a debugger, strace): CRIU cannot seize it.
    Traced,
    /// The process's session leader is outside its pid namespace (its
    /// session id reads as 0 there): CRIU refuses to dump such a process.
    SessionOutsideNamespace,
}

/// How bad a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The dump or restore may work, but something may not come back as it
    /// was (a restore can fail later). [`checkpoint`](crate::checkpoint)
    /// logs these and goes on, unless
    /// [`Options::strict_preflight`](crate::Options::strict_preflight).
    Risky,
    /// CRIU would refuse to dump the process: [`checkpoint`](crate::checkpoint)
    /// fails early.
    Refused,
}

/// One thing in the process tree that CRIU would refuse or mishandle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The process holding it.
    pub pid: i32,
    /// The file descriptor, when the finding is about one.
    pub fd: Option<i32>,
    /// What kind of problem.
    pub kind: Kind,
    /// How bad.
    pub severity: Severity,
    /// What it is (the socket's addresses, the file's path, ...).
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pid {}", self.severity_label(), self.pid)?;
        if let Some(fd) = self.fd {
            write!(f, " fd {fd}")?;
        }
        write!(f, ": {}; {}", self.what, self.fix)
    }
}

/// Which process to look at, and which CRIU options the dump will use.
///
/// ```no_run
/// use selfdump::preflight::Preflight;
/// let findings = Preflight::new().pid(1234).tcp_established(true).run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    pid: Option<i32>,
    tcp_established: bool,
    ext_unix_sk: bool,
}

impl Preflight {
    /// The calling process, dumped without the TCP and external unix socket options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Look at process `pid` (and its descendants) instead of the caller.
    pub fn pid(mut self, pid: i32) -> Self {
        self.pid = Some(pid);
        self
    }

    /// The dump will use `tcp_established`: established connections are fine.
    pub fn tcp_established(mut self, on: bool) -> Self {
        self.tcp_established = on;
        self
    }

    /// The dump will use `ext_unix_sk`: datagram sockets connected outside are fine.
    pub fn ext_unix_sk(mut self, on: bool) -> Self {
        self.ext_unix_sk = on;
        self
    }

    /// Looks at the process tree and lists what CRIU would refuse or mishandle.
    ///
    /// Fails only when the process cannot be looked at (it does not exist,
    /// or its `/proc` entries are not readable by this process).
    pub fn run(&self) -> io::Result<Vec<Finding>> {
        let root = self.pid.unwrap_or_else(tree::own_pid);
        let tree = tree::process_tree(root)?;
        let mut fds = Vec::new();
        let mut findings = Vec::new();
        for &pid in &tree {
            if let Some(tracer) = tree::tracer(pid) {
                findings.push(Finding {
                    pid,
                    fd: None,
                    kind: Kind::Traced,
                    severity: Severity::Refused,
                    what: format!("traced by process {tracer} ({})", tree::comm(tracer)),
                    fix: "detach the debugger or strace first: CRIU must trace the process itself"
                        .into(),
                });
            }
            if tree::session_id(pid) == Some(0)
                && !findings
                    .iter()
                    .any(|f: &Finding| f.kind == Kind::SessionOutsideNamespace)
            {
                findings.push(Finding {
                    pid,
                    fd: None,
                    kind: Kind::SessionOutsideNamespace,
                    severity: Severity::Refused,
                    what: "its session leader is outside its pid namespace".into(),
                    fix: "start the program in a session of its own (`setsid`, or \
                          `setsid()` before it starts work)"
                        .into(),
                });
            }
            match tree::open_fds(pid) {
                Ok(list) => fds.extend(list),
                Err(e) if pid == root => return Err(e),
                Err(_) => {} // a descendant that just exited
            }
        }
        let sockets = sockets::Sockets::look_up(root, &fds);
        for fd in &fds {
            match fd.socket {
                Some(ino) => sockets.check(self, fd, ino, &mut findings),
                None => files::check_file(fd, &mut findings),
            }
        }
        findings.sort_by_key(|f| (std::cmp::Reverse(f.severity), f.pid, f.fd));
        Ok(findings)
    }
}

/// Lists what in the calling process (and its children) would make CRIU
/// refuse to dump it or fail to restore it, for a dump without the TCP and
/// external unix socket options. See [`Preflight`] for those and for other
/// processes.
pub fn preflight() -> io::Result<Vec<Finding>> {
    Preflight::new().run()
}

/// The findings for a person, one line each (`prefix` before it), each
/// distinct fix once after the findings it is for: the same paragraph
/// under every fd of a process would bury the list.
///
/// ```
/// use selfdump::preflight::{describe, Finding, Kind, Severity};
/// let fd = |fd| Finding {
///     pid: 7,
///     fd: Some(fd),
///     kind: Kind::WrittenWithoutAppend,
///     severity: Severity::Risky,
///     what: format!("file {fd} written without O_APPEND"),
///     fix: "open it with O_APPEND".into(),
/// };
/// let text = describe(&[fd(3), fd(4)], "");
/// assert_eq!(text.matches("open it with O_APPEND").count(), 1);
/// ```
pub fn describe(findings: &[Finding], prefix: &str) -> String {
    use std::fmt::Write;
    let mut fixes: Vec<&str> = Vec::new();
    for f in findings {
        if !fixes.contains(&f.fix.as_str()) {
            fixes.push(&f.fix);
        }
    }
    let mut out = String::new();
    for fix in fixes {
        for f in findings.iter().filter(|f| f.fix == fix) {
            let _ = write!(out, "{prefix}{}", f.severity_label());
            let _ = write!(out, " pid {}", f.pid);
            if let Some(fd) = f.fd {
                let _ = write!(out, " fd {fd}");
            }
            let _ = writeln!(out, ": {}", f.what);
        }
        let _ = writeln!(out, "{prefix}  fix: {fix}");
    }
    out
}

impl Finding {
    fn severity_label(&self) -> &'static str {
        match self.severity {
            Severity::Refused => "[refused]",
            Severity::Risky => "[risky]",
        }
    }
}
