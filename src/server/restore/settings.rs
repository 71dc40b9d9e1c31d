//! How to restore, what comes of a restore, and why one did not happen.

use crate::server::engine::Criu;
use crate::server::images::trust::{Key, PublicKey, Trust};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why a restore did not happen.
#[derive(Debug)]
#[non_exhaustive]
pub enum RestoreError {
    /// The images did not verify, or may not be restored for this
    /// requester: nothing of them ran.
    Refused(String),
    /// A pid, session or process group the images need is taken.
    IdInUse {
        /// What kind of id.
        what: &'static str,
        /// The id.
        id: u32,
        /// Who holds it (a process name or pid), if known.
        holder: String,
    },
    /// CRIU failed; its log is kept in a directory of root's
    /// ([`LOG_DIR`](super::LOG_DIR)), never in the images directory.
    Criu {
        /// What CRIU or the system said.
        message: String,
        /// The restore log.
        log: PathBuf,
    },
}

impl RestoreError {
    pub(crate) fn refused(e: impl fmt::Display) -> Self {
        Self::Refused(e.to_string())
    }
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(why) => write!(f, "restore refused: {why}"),
            Self::IdInUse { what, id, holder } => write!(
                f,
                "{what} {id} is in use by {holder}; the restored tree needs it free: stop that \
                 process (and reap it if it is a zombie) before restoring"
            ),
            Self::Criu { message, log } => {
                write!(f, "criu restore failed: {message}; see {}", log.display())?;
                if message.contains("has bad size") {
                    f.write_str(BAD_SIZE)?;
                }
                Ok(())
            }
        }
    }
}

/// What CRIU's "File ... has bad size N (expect M)" means: a regular file
/// the tree had open changed size since the dump.
const BAD_SIZE: &str = ". A file the program had open changed size since the dump: CRIU \
     restores a file written without O_APPEND only at the size it was dumped with. Open \
     logs for append (`>>` in a shell, O_APPEND), which CRIU restores whatever their size \
     (the preflight lists files written otherwise); a program or library file must be \
     the one that was dumped (the same build)";

impl std::error::Error for RestoreError {}

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreSettings {
    /// The CRIU to run.
    pub criu: Criu,
    /// This host's key: images signed with it verify (`None` and no
    /// [`Self::trusted`] keys: only with `trust_unsigned`).
    pub key: Option<Key>,
    /// Other services' public keys whose images verify too (a host's trust
    /// directory: [`Trust::load`]).
    pub trusted: Vec<PublicKey>,
    /// Where [`Self::trusted`] came from, for messages.
    pub trust_dir: Option<PathBuf>,
    /// Restore images without a manifest (made by plain CRIU), unchecked.
    pub trust_unsigned: bool,
    /// How long to wait for the images' pids, sessions and groups to be
    /// free (a previous copy still dying).
    pub wait: Duration,
    /// How long CRIU may take; past it, CRIU and whatever it restored so
    /// far are killed.
    pub deadline: Duration,
}

impl RestoreSettings {
    /// Defaults: signed images only, no waiting, a 60 s deadline.
    pub fn new(criu: Criu, key: Option<Key>) -> Self {
        Self {
            criu,
            key,
            trusted: Vec::new(),
            trust_dir: None,
            trust_unsigned: false,
            wait: Duration::ZERO,
            deadline: Duration::from_secs(60),
        }
    }
}

impl RestoreSettings {
    /// Also trusts the keys of `trust` (its own key, if any, replaces
    /// [`Self::key`]).
    pub fn trusting(mut self, trust: Trust) -> Self {
        self.key = trust.own.or(self.key);
        self.trusted = trust.keys;
        self.trust_dir = trust.dir;
        self
    }

    /// The keys images may be signed with (`None`: none at all).
    pub(crate) fn trust(&self) -> Option<Trust> {
        (self.key.is_some() || !self.trusted.is_empty()).then(|| Trust {
            own: self.key.clone(),
            keys: self.trusted.clone(),
            dir: self.trust_dir.clone(),
        })
    }
}

/// A restored tree.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The restored root pid.
    pub pid: i32,
    /// The images' owner.
    pub uid: u32,
    /// The generation restored; `None` for images directly in the
    /// directory given.
    pub generation: Option<String>,
    /// Time spent verifying the images.
    pub verify: Duration,
    /// Time from the request to CRIU's answer.
    pub total: Duration,
}
