//! Why a dump failed, told to its caller in terms it can act on.

use crate::procfs::PROC;
use crate::server::caller::process::Process;
use crate::server::caller::status::TaskStatus;
use crate::server::caller::tree::check_frozen_tree;
use crate::server::engine::EngineError;

/// Why a dump failed, for its caller: CRIU's first logged error (`logged`)
/// or message, with a capability root's CRIU lacks named first.
///
/// `as_caller` is the root of the tree when the CRIU ran as the caller:
/// it needs no capability of the caller's uid; its death or time-out may
/// be the caller's own doing; and when it could not seize a task of the
/// tree (the kernel refuses it what the caller may not ptrace, before the
/// freeze and so before the service's own check of the frozen tree), the
/// tree is checked now, so the caller learns which task and why.
///
/// `caller_alive`: whether the caller still ran once CRIU was done; the
/// words for a CRIU that died or was abandoned say the process runs on,
/// and are not used for a caller that is gone.
pub(crate) fn failure_message(
    e: &EngineError,
    logged: Option<String>,
    caller: &TaskStatus,
    as_caller: Option<&Process>,
    caller_alive: bool,
) -> String {
    let uid = caller.uid();
    let logged = logged
        .as_deref()
        .or(match e {
            // (CRIU's own message is the harmless RLIMIT_NOFILE line
            // whenever it logged that first: see `engine::first_error`)
            EngineError::Failed(errmsg) => {
                errmsg.as_deref().filter(|m| !m.contains("RLIMIT_NOFILE"))
            }
            _ => None,
        })
        .unwrap_or("no error logged")
        .to_owned();
    let e_said = match caller_alive {
        true => e.to_string(),
        false => gone(e).unwrap_or_else(|| e.to_string()),
    };
    match (e, as_caller) {
        (EngineError::Failed(_), Some(root)) if logged.contains("Unseizable") => {
            match check_frozen_tree(PROC, root, caller) {
                Err(why) => format!(
                    "criu dump failed: {why}; the CRIU that dumps you runs as your uid and \
                     could not seize it (criu: {logged})"
                ),
                Ok(()) => format!("criu dump failed: {logged}"),
            }
        }
        (EngineError::Failed(_), Some(_)) => format!("criu dump failed: {logged}"),
        (EngineError::Failed(_), None) => format!(
            "criu dump failed: {}",
            crate::server::caller::caps::explain_dump_failure(&logged, uid)
        ),
        (EngineError::Died | EngineError::Killed(_) | EngineError::TimedOut(_), Some(_)) => {
            format!(
                "{e_said}; the CRIU that dumped you ran as your uid {uid}, so any process of \
                 that uid may signal, stop or limit it (that fails this dump and nothing else)"
            )
        }
        _ => e_said,
    }
}

/// What to say of a CRIU that died, was killed or was abandoned, when the
/// caller is gone too.
fn gone(e: &EngineError) -> Option<String> {
    Some(match e {
        EngineError::Died => {
            "criu died in the middle of the dump, and the process is gone too".into()
        }
        EngineError::Killed(signal) => format!(
            "criu was killed by signal {signal} in the middle of the dump, and the process is \
             gone too"
        ),
        EngineError::TimedOut(limit) => format!(
            "dump exceeded its time limit of {limit:?}; it was abandoned, and the process is gone"
        ),
        _ => return None,
    })
}
