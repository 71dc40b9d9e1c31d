//! Attacks through the images directory: one the caller may not write, one
//! owned by someone else, fds that are not directories, symlinks planted at
//! the names CRIU writes, and a full disk.

use crate::Ctx;
use crate::common::Guarded;
use crate::common::*;
use crate::support::*;
use selfdump::proto::RefusalKind;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// A directory the caller cannot write (root's, 0755).
pub fn unwritable_images_dir(ctx: &mut Ctx) -> String {
    refused_as_bad_directory(ctx, images_dir)
}

/// A directory owned by another unprivileged user (0755).
pub fn foreign_owned_images_dir(ctx: &mut Ctx) -> String {
    refused_as_bad_directory(ctx, || dir_of(OTHER))
}

/// A caller of uid nobody, checkpointing into `images()`, is refused: it may
/// not create files there.
fn refused_as_bad_directory(ctx: &mut Ctx, images: impl FnOnce() -> tempfile::TempDir) -> String {
    let socket = ctx.service(allow(&[NOBODY]));
    let images = images();
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--at 1 --until 2 --interval-ms 20"),
        Some(NOBODY),
    );
    let line = outcome(&program);
    assert!(
        line.contains("refused (BadDirectory)") && line.contains("may not create files"),
        "{line}"
    );
    assert!(program.wait().success());
    assert!(image_files(images.path()).is_empty());
    ctx.reached("refused at the directory check, as the caller, before CRIU");
    format!("refused: {}", short(&line))
}

/// Fds that are not directories: a regular file, a pipe, a socket.
pub fn non_directory_images_fd(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let file = tempfile::tempfile().unwrap();
    let (pipe, _w) = rustix::pipe::pipe().unwrap();
    let (sock, _other) = UnixStream::pair().unwrap();
    for fd in [file.as_fd(), pipe.as_fd(), sock.as_fd()] {
        let (kind, message) = refusal(exchange(&socket, &checkpoint_frame(), &[fd]));
        assert_eq!(kind, RefusalKind::BadDirectory, "{message}");
        assert!(message.contains("not a directory"), "{message}");
    }
    ctx.reached("each fd refused at the directory check");
    "refused file, pipe and socket fds as not a directory".into()
}

/// Symlinks planted inside the images directory at names CRIU and the
/// service wrote there before generations: never followed, left alone
/// (the images go into a generation directory of their own). The
/// directory itself, opened through a symlink, is fine.
pub fn symlinks_planted_in_images_dir(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let victim = Path::new("/etc/selfdump-victim");
    std::fs::write(victim, "precious\n").unwrap();
    let images = images_dir();
    for name in [
        "pstree.img",
        "inventory.img",
        "dump.log",
        "selfdump-manifest",
        "stats-dump",
    ] {
        std::os::unix::fs::symlink(victim, images.path().join(name)).unwrap();
    }
    let links = tempfile::tempdir().unwrap();
    let via_link = links.path().join("images");
    std::os::unix::fs::symlink(images.path(), &via_link).unwrap();
    let mut program = Program::start_on(
        &socket,
        &via_link,
        &args("--at 1 --until 3 --interval-ms 20"),
        None,
    );
    let line = outcome(&program);
    assert!(program.wait().success());
    let kept = std::fs::read_to_string(victim).unwrap();
    std::fs::remove_file(victim).unwrap();
    assert_eq!(
        kept, "precious\n",
        "the victim was written through a symlink"
    );
    assert!(line.starts_with("checkpoint continued"), "{line}");
    ctx.reached("the dump committed a generation beside the planted links");
    let generation = images.path().join("latest");
    for (name, _, mode) in image_files(&generation) {
        let meta = std::fs::symlink_metadata(generation.join(&name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is a link");
        assert_eq!(mode, 0o600, "{name}");
    }
    for name in ["pstree.img", "dump.log"] {
        let planted = std::fs::read_link(images.path().join(name)).unwrap();
        assert_eq!(planted, victim, "the planted {name} was left alone");
    }
    let restored = restored_copy(images.path(), &program);
    ctx.reached("the images restored");
    format!(
        "dumped into a generation; planted links left alone, never followed; victim \
         untouched; the images restore: {}",
        short(&restored)
    )
}

/// The images restore (they are good): a copy of `program` (which has
/// ended) runs from them, says so, and is ended.
fn restored_copy(dir: &Path, program: &Program) -> String {
    let pid = restore(dir).unwrap_or_else(|e| panic!("the images do not restore: {e}"));
    assert_eq!(pid, program.pid, "restored as another pid");
    let said = program.wait_for("the restored copy", |l| {
        l.starts_with("checkpoint restored")
    });
    kill_and_reap(pid);
    said
}

/// The images directory is a 64 KiB tmpfs: the dump fails, the caller is
/// told, and no partial image set is left to pass for a good one.
pub fn disk_full(ctx: &mut Ctx) -> String {
    let socket = ctx.service(|b| b);
    let images = images_dir();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
        .arg(images.path())
        .status_guarded();
    if !status.as_ref().is_ok_and(|s| s.success()) {
        let why = format!("cannot mount a tiny tmpfs ({status:?}), so no full disk");
        return ctx.skip(Limit::NoTmpfsMount, &why);
    }
    ctx.reached("the images directory is a 64 KiB tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(&self.0)
                .status_guarded();
        }
    }
    let _unmount = Unmount(images.path().to_path_buf());
    let mut program = Program::start_on(
        &socket,
        images.path(),
        &args("--alloc-mb 1 --at 1 --until 4 --interval-ms 50"),
        None,
    );
    let line = outcome(&program);
    assert!(line.starts_with("checkpoint error"), "{line}");
    // CRIU says so, unless the full disk cut its log first; never the
    // harmless line it logs on every run here, as if that were the cause
    // (the full disk may cut CRIU's line itself: "No space left on")
    assert!(
        line.contains("No space left") || line.contains("no error logged"),
        "not told of the full disk: {line}"
    );
    ctx.reached(match line.contains("No space left") {
        true => "CRIU ran out of space, and said so",
        false => "CRIU ran out of space, before it could log why",
    });
    assert!(program.wait().success(), "the caller runs on");
    assert_no_images(images.path(), 0);
    assert_no_staging(images.path());
    format!("caller told: {}", short(&line))
}
