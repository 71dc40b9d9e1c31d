//! Requests the service refuses: each gets a clear error on its own
//! connection, and the service goes on serving the next client.

mod common;
use common::Guarded;

use async_io::Async;
use common::*;
use selfdump::proto::{
    self, DumpOptions, HEADER_LEN, Header, PROTOCOL_VERSION, RefusalKind, Request, Response,
};
use selfdump::server::Policy;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

const NOBODY: u32 = 65534;

/// Sends raw frame bytes (and fds) and returns the raw answer frame.
fn exchange(service: &Service, frame: &[u8], fds: &[BorrowedFd<'_>]) -> proto::Frame {
    async_io::block_on(async {
        let stream = Async::<UnixStream>::connect(&service.socket).await.unwrap();
        proto::write_frame(&stream, frame, fds).await.unwrap();
        proto::read_frame(&stream)
            .await
            .unwrap()
            .expect("an answer")
    })
}

fn refusal(frame: proto::Frame) -> (RefusalKind, String) {
    match proto::decode_body::<Response>(frame.header, &frame.body).unwrap() {
        Response::Refused(r) => (r.kind, r.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A service whose policy also admits uid 65534.
fn service_allowing_nobody() -> Service {
    Service::start_with(|b| {
        b.policy(Policy {
            allow_uids: [NOBODY].into(),
            ..Policy::default()
        })
    })
}

/// The counter as uid 65534, checkpointing at 1 and counting to `until`:
/// the program and its checkpoint line.
fn nobody_checkpoints(service: &Service, images: &Path, until: &str) -> (Program, String) {
    let args = ["--at", "1", "--until", until, "--interval-ms", "20"];
    let program = Program::start_as(service, images, &args, Some(NOBODY));
    let line = program.wait_for("the checkpoint outcome", |l| l.starts_with("checkpoint "));
    (program, line)
}

/// A normal checkpoint through the same service still works.
fn assert_still_serves(service: &Service) {
    let images = images_dir();
    let mut program = Program::start(
        service,
        images.path(),
        &["--at", "1", "--until", "2", "--interval-ms", "20"],
    );
    let line = program.wait_for("a normal checkpoint", |l| l.starts_with("checkpoint "));
    assert!(
        line.starts_with("checkpoint continued"),
        "service stopped serving: {line}"
    );
    assert!(program.wait().success());
}

#[test]
fn other_protocol_version_gets_an_answer_naming_both_versions() {
    let service = Service::start();
    let body = b"\x92\x01\x02";
    let mut frame = Header {
        version: PROTOCOL_VERSION + 1,
        body_len: body.len() as u32,
    }
    .to_bytes()
    .to_vec();
    frame.extend_from_slice(body);
    let answer = exchange(&service, &frame, &[]);
    assert_eq!(
        answer.header.version, PROTOCOL_VERSION,
        "answered in the service's own version"
    );
    let text = String::from_utf8(answer.body).unwrap();
    assert!(
        text.contains(&format!("you speak {}", PROTOCOL_VERSION + 1))
            && text.contains(&format!("this side speaks {PROTOCOL_VERSION}")),
        "{text}"
    );
    // What a client of that other version makes of it:
    let err = proto::decode_body::<Response>(
        Header {
            version: PROTOCOL_VERSION + 1,
            body_len: text.len() as u32,
        },
        text.as_bytes(),
    )
    .unwrap_err();
    let client_error = selfdump::Error::from(err).to_string();
    assert!(
        client_error.contains(&format!(
            "client speaks {PROTOCOL_VERSION}, service speaks {}",
            PROTOCOL_VERSION + 1
        )),
        "{client_error}"
    );
    assert_still_serves(&service);
}

#[test]
fn checkpoint_without_a_directory_fd_is_refused() {
    let service = Service::start();
    let frame = proto::encode_frame(&Request::Checkpoint(DumpOptions::default()));
    let (kind, message) = refusal(exchange(&service, &frame, &[]));
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(message.contains("missing its file descriptor"), "{message}");
    assert_still_serves(&service);
}

#[test]
fn images_fd_that_is_not_a_directory_is_refused() {
    let service = Service::start();
    let file = tempfile::tempfile().unwrap();
    let frame = proto::encode_frame(&Request::Checkpoint(DumpOptions::default()));
    let (kind, message) = refusal(exchange(&service, &frame, &[file.as_fd()]));
    assert_eq!(kind, RefusalKind::BadDirectory);
    assert!(message.contains("not a directory"), "{message}");
    assert_still_serves(&service);
}

#[test]
fn garbage_instead_of_a_frame_is_refused() {
    let service = Service::start();
    let (kind, message) = refusal(exchange(&service, b"GET / HTTP/1.1\r\n\r\n", &[]));
    assert_eq!(kind, RefusalKind::BadRequest);
    assert!(message.contains("not a selfdump peer"), "{message}");
    let mut frame = proto::encode_frame(&Request::Checkpoint(DumpOptions::default()));
    frame.push(0xc0);
    frame[HEADER_LEN - 1] += 1; // the length covers the extra byte
    let (_, message) = refusal(exchange(&service, &frame, &[]));
    assert!(message.contains("trailing"), "{message}");
    assert_still_serves(&service);
}

#[test]
fn uid_outside_the_policy_is_refused_with_the_way_to_allow_it() {
    let service = Service::start();
    let images = images_dir();
    std::os::unix::fs::chown(images.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let (mut program, line) = nobody_checkpoints(&service, images.path(), "2");
    assert!(
        line.contains("refused (NotPermitted)") && line.contains("--allow-uid 65534"),
        "{line}"
    );
    assert!(program.wait().success(), "the refused caller runs on");
    assert_still_serves(&service);
}

#[test]
fn directory_the_caller_cannot_write_is_refused() {
    let service = service_allowing_nobody();
    let images = images_dir(); // root's, mode 0755: nobody may not write there
    let (mut program, line) = nobody_checkpoints(&service, images.path(), "2");
    assert!(
        line.contains("refused (BadDirectory)") && line.contains("may not create files"),
        "{line}"
    );
    assert!(program.wait().success());
    assert!(
        image_files(images.path()).is_empty(),
        "nothing written for a refused caller"
    );
    assert_still_serves(&service);
}

#[test]
fn non_root_caller_in_its_own_directory_is_dumped_by_a_criu_of_its_own_uid() {
    let service = service_allowing_nobody();
    let images = images_dir();
    std::os::unix::fs::chown(images.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let (mut program, line) = nobody_checkpoints(&service, images.path(), "3");
    assert!(program.wait().success(), "the caller runs on");
    assert!(line.starts_with("checkpoint continued"), "{line}");
    for (name, uid, _) in image_files(images.path()) {
        assert_eq!(uid, NOBODY, "{name}");
    }
    let files = image_files(&images.path().join("latest"));
    assert!(files.iter().any(|f| f.0 == "pstree.img"), "{files:?}");
    for (name, uid, mode) in files {
        assert_eq!((uid, mode), (NOBODY, 0o600), "{name}");
    }
    let log = std::fs::read_to_string(images.path().join("latest/dump.log")).unwrap();
    assert!(
        log.contains("Loaded kdat cache from /run/selfdump-criu/criu.kdat"),
        "the unprivileged CRIU found its kernel-feature cache"
    );
}

#[test]
fn pre_dump_is_refused_with_the_reason_this_machine_cannot_do_it() {
    let service = Service::start();
    let images = images_dir();
    let dir = std::fs::File::open(images.path()).unwrap();
    let options = DumpOptions {
        pre_dump: true,
        ..DumpOptions::default()
    };
    let frame = proto::encode_frame(&Request::Checkpoint(options));
    let (kind, message) = refusal(exchange(&service, &frame, &[dir.as_fd()]));
    assert_eq!(kind, RefusalKind::Unsupported);
    let tracks_memory = std::process::Command::new(criu().path)
        .args(["check", "--feature", "mem_dirty_track"])
        .output_guarded()
        .unwrap()
        .status
        .success();
    if tracks_memory {
        assert!(message.contains("not implemented"), "{message}");
    } else {
        assert!(
            message.contains("soft-dirty") && message.contains("CONFIG_MEM_SOFT_DIRTY"),
            "{message}"
        );
    }
    assert!(image_files(images.path()).is_empty(), "nothing ran");
    assert_still_serves(&service);
}

#[test]
fn a_latest_of_another_user_in_a_sticky_directory_is_refused_before_the_dump() {
    let service = service_allowing_nobody();
    let images = images_dir();
    std::fs::set_permissions(
        images.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    // root's checkpoint made it; nobody could not replace it when switching
    std::os::unix::fs::symlink(
        "gen-20250101-000000.000000-00000001",
        images.path().join("latest"),
    )
    .unwrap();
    let (mut program, line) = nobody_checkpoints(&service, images.path(), "2");
    assert!(
        line.contains("refused (BadDirectory)")
            && line
                .contains("latest in the images directory is uid 0's, and the directory is sticky"),
        "{line}"
    );
    assert!(program.wait().success());
    let names: Vec<String> = image_files(images.path())
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(names, ["latest"], "nothing made");
    assert_still_serves(&service);
}
