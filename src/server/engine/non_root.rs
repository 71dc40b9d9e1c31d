//! Which engine dumps non-root callers here, decided once at start: a CRIU
//! that runs as the caller where the kernel and the service allow it (see
//! the module docs of [`engine`](super)), else the operator's fallback.

use super::kdat::{self, KdatCache, UNPRIVILEGED_DIR};
use super::run_as::{DUMP_CAPS, cannot_grant};
use super::{Criu, Worker};
use crate::server::caller::credentials::Credentials;
use std::path::Path;

/// What non-root callers get where CRIU cannot run as the caller (a kernel
/// older than 5.9, without `CAP_CHECKPOINT_RESTORE`; a service whose
/// bounding set lacks it, as in a container or under systemd's
/// `CapabilityBoundingSet=`; a CRIU that will not start as another user).
/// Root callers always get root's CRIU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NonRootFallback {
    /// Refuse their checkpoints, saying why (the default): no CRIU running
    /// as root ever parses the state of an unprivileged process.
    #[default]
    Refuse,
    /// Dump them with root's CRIU, which parses state their processes
    /// control with every privilege (and needs `CAP_SYS_RESOURCE`, among
    /// others, to dump another uid at all).
    RootEngine,
}

/// How non-root callers are dumped by this service.
#[derive(Debug)]
pub(crate) enum NonRootEngine {
    /// By a CRIU running as the caller, with the unprivileged
    /// kernel-feature cache as found or made at start.
    AsCaller(KdatCache),
    /// By root's CRIU (the operator's fallback), since CRIU cannot run as
    /// the caller here, for this reason.
    Root(String),
    /// Not at all (the operator's fallback), for this reason.
    Refused(String),
}

impl NonRootEngine {
    /// Finds out whether CRIU can run as a caller here (it tries one as
    /// uid 65534), and if so makes sure it finds a kernel-feature cache;
    /// else applies `fallback`. Runs CRIU; blocks.
    pub(crate) fn decide(criu: &Criu, fallback: NonRootFallback) -> Self {
        let why = match cannot_grant(DUMP_CAPS) {
            Some(why) => why,
            None => match try_as_user(criu) {
                Ok(()) => return Self::AsCaller(kdat::ensure_unprivileged_cache(criu)),
                Err(why) => why,
            },
        };
        match fallback {
            NonRootFallback::Refuse => Self::Refused(why),
            NonRootFallback::RootEngine => Self::Root(why),
        }
    }

    /// Who the CRIU that dumps a caller of these ids runs as: the caller
    /// itself when it is not root and CRIU can run as it; `None` for root's CRIU.
    pub(crate) fn criu_for(&self, caller: &Credentials) -> Option<Credentials> {
        (caller.uid != 0 && matches!(self, Self::AsCaller(_))).then(|| caller.clone())
    }

    /// The `XDG_RUNTIME_DIR` of CRIUs run as a caller, when the cache is there.
    pub(crate) fn runtime_dir(&self) -> Option<&'static Path> {
        match self {
            Self::AsCaller(KdatCache::Valid(_) | KdatCache::Installed(_)) => {
                Some(Path::new(UNPRIVILEGED_DIR))
            }
            _ => None,
        }
    }

    /// One line for logs and `selfdump check`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::AsCaller(cache) => format!(
                "CRIU runs as the caller (unprivileged mode, CAP_CHECKPOINT_RESTORE only); \
                 its kernel-feature cache: {cache}"
            ),
            Self::Root(why) => format!(
                "root's CRIU (the configured fallback): CRIU cannot run as the caller here: {why}"
            ),
            Self::Refused(why) => format!(
                "refused (the configured fallback): CRIU cannot run as the caller here: {why}"
            ),
        }
    }
}

impl Drop for NonRootEngine {
    fn drop(&mut self) {
        if let Self::AsCaller(cache) = self {
            kdat::remove_cache(cache);
        }
    }
}

/// Starts `criu swrk` as uid 65534 with [`DUMP_CAPS`] and asks its version.
fn try_as_user(criu: &Criu) -> Result<(), String> {
    let nobody = Credentials {
        uid: 65534,
        gid: 65534,
        groups: Vec::new(),
    };
    let asked = async {
        let worker = Worker::start_as(criu, &nobody, None, None)?;
        worker.ask_version().await
    };
    async_io::block_on(asked).map(drop).map_err(|e| {
        format!(
            "{} as uid 65534 with CAP_CHECKPOINT_RESTORE: {e}",
            criu.path.display()
        )
    })
}
