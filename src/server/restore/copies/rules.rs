//! Which images copies are made of, and how many at once.

use crate::server::images::format::ImageMeta;
use crate::server::restore::RestoreError;
use std::path::Path;

/// Most copies one call starts.
pub const MAX_COPIES: u32 = 1024;

/// `copies` is 1 to [`MAX_COPIES`].
pub(crate) fn check_count(copies: u32) -> Result<(), RestoreError> {
    if copies == 0 || copies > MAX_COPIES {
        return Err(RestoreError::Refused(format!(
            "--copies must be 1 to {MAX_COPIES}"
        )));
    }
    Ok(())
}

/// Copies are made of root's images of a whole pid namespace only.
pub(crate) fn copyable(meta: &ImageMeta, dir: &Path) -> Result<(), RestoreError> {
    if !meta.pid_namespace {
        return Err(RestoreError::Refused(format!(
            "{}: these images are of a process, not of a whole pid namespace, so each \
             copy would need the same pids; start the program with `selfdump run` to make \
             images that restore many times at once",
            dir.display()
        )));
    }
    if meta.uid != 0 {
        // copies run CRIU as root, which may only restore root's images
        // (a non-root checkpoint restores as its owner: `restore::as_owner`)
        return Err(RestoreError::Refused(format!(
            "{}: these images are uid {}'s; copies are made of root's checkpoints only",
            dir.display(),
            meta.uid
        )));
    }
    Ok(())
}
