//! Start a program isolated: as the child of a tiny init in a pid
//! namespace of its own, so that its checkpoints are of the whole
//! namespace and restore as many copies at once
//! (`selfdump restore --copies N`), each in a fresh namespace.
//!
//! This is the library twin of `selfdump run -- CMD ARGS`: it builds that
//! command, for harnesses and supervisors written in Rust. It needs the
//! `selfdump` binary (the init is that binary, re-executed as
//! `selfdump __init`) and root (a new pid namespace needs
//! `CAP_SYS_ADMIN`).
//!
//! ```no_run
//! use selfdump::isolate::Isolated;
//! use std::process::Stdio;
//!
//! # fn main() -> std::io::Result<()> {
//! let mut cmd = Isolated::new("/usr/local/bin/my-benchmark")
//!     .args(["--warm-up", "--images", "/var/lib/bench/images"])
//!     .command(); // a std::process::Command: set stdio, env, cwd on it
//! cmd.stdout(Stdio::inherit());
//! let mut child = cmd.spawn()?; // `selfdump run`: waits for the program,
//! let status = child.wait()?; // passes signals on, exits with its status
//! # let _ = status; Ok(()) }
//! ```
//!
//! What the namespace is: the program's pid is small (3: the init is 1,
//! its reactor thread 2), the init leads the namespace's only session, and
//! nothing else is private: the host's `/proc`, mounts, network and users.
//! So inside, `getpid()` is the namespace's number while `/proc/<pid>`
//! counts in the host's: read `/proc/self`, never `/proc/<getpid()>`. No
//! parent-death signal is set (a restored copy's init would get it as soon
//! as CRIU exits).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Child, Command};

/// Environment variable naming the `selfdump` binary for [`Isolated`].
pub const SELFDUMP_BIN_ENV: &str = "SELFDUMP_BIN";

/// A program to start isolated (`selfdump run -- PROGRAM ARGS`).
#[derive(Debug, Clone)]
pub struct Isolated {
    selfdump: PathBuf,
    program: OsString,
    args: Vec<OsString>,
}

impl Isolated {
    /// `program`, isolated. The `selfdump` binary is `$SELFDUMP_BIN`, else
    /// `selfdump` on the `PATH` (see [`Isolated::selfdump`]).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            selfdump: std::env::var_os(SELFDUMP_BIN_ENV)
                .map_or_else(|| PathBuf::from("selfdump"), PathBuf::from),
            program: program.as_ref().to_owned(),
            args: Vec::new(),
        }
    }

    /// One more argument for the program.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More arguments for the program.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The `selfdump` binary that runs the init.
    pub fn selfdump(mut self, path: impl Into<PathBuf>) -> Self {
        self.selfdump = path.into();
        self
    }

    /// The command that starts it: `selfdump run -- PROGRAM ARGS`. Set its
    /// stdio, environment and working directory as for any command; the
    /// program inherits them through the init.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.selfdump);
        cmd.arg("run").arg("--").arg(&self.program).args(&self.args);
        cmd
    }

    /// Starts it with this process's stdio. The child is `selfdump run`:
    /// it exits with the program's status (128+N if signal N ended it) and
    /// passes SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 on.
    pub fn spawn(&self) -> std::io::Result<Child> {
        self.command().spawn()
    }
}

/// Whether this process runs in a pid namespace other than its `/proc`'s
/// (as under `selfdump run`): then `getpid()` and `/proc/self` disagree.
pub fn in_own_pid_namespace() -> bool {
    crate::procfs::PROC
        .own_pid()
        .is_ok_and(|proc_pid| proc_pid != rustix::process::getpid().as_raw_nonzero().get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_selfdump_run() {
        let cmd = Isolated::new("prog")
            .arg("-x")
            .args(["a", "b"])
            .selfdump("/bin/selfdump")
            .command();
        assert_eq!(cmd.get_program(), "/bin/selfdump");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["run", "--", "prog", "-x", "a", "b"]);
    }

    #[test]
    fn the_test_process_is_not_isolated() {
        assert!(!in_own_pid_namespace());
    }
}
