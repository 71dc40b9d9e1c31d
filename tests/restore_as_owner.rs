//! A checkpoint of a non-root process is restored by CRIU running as its
//! owner (`--unprivileged`, with only `CAP_CHECKPOINT_RESTORE` and
//! `CAP_SETPCAP`), so a path the checkpoint recorded that its owner has
//! since pointed at a file of root's gets it nothing.
//!
//! The service cannot dump a non-root process on machines without
//! `CAP_SYS_RESOURCE`, so the images are made here the way an
//! unprivileged CRIU makes them (run as the owner with
//! `CAP_CHECKPOINT_RESTORE` and `CAP_SYS_PTRACE`), and signed with the
//! service's key as the service would.

mod common;

use common::*;
use selfdump::proto::{JobId, PROTOCOL_VERSION};
use selfdump::server::Policy;
use selfdump::server::images::ImageMeta;
use selfdump::server::manifest::{
    DEFAULT_KEY_FILE, FileDigest, Key, MANIFEST_FILE, Manifest, hash_file, unsigned_extra,
};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn as_nobody(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    cmd.arg(program);
    cmd
}

/// Signs the images in `dir` as the service does for a dump of `pid`.
fn sign(dir: &Path, pid: i32) {
    let key = Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if unsigned_extra(&name) {
            continue;
        }
        let size = entry.metadata().unwrap().len();
        let file: std::os::fd::OwnedFd = std::fs::File::open(entry.path()).unwrap().into();
        files.push(FileDigest {
            name,
            size,
            hash: hash_file(&file, size).unwrap(),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let manifest = Manifest {
        key_id: key.id(),
        meta: ImageMeta {
            protocol: PROTOCOL_VERSION,
            job: JobId::default(),
            pid,
            uid: NOBODY,
            gid: NOBODY,
            pids: vec![pid],
            shell_job: true,
            ..ImageMeta::default()
        },
        files,
    };
    std::fs::write(dir.join(MANIFEST_FILE), manifest.sign(&key)).unwrap();
    std::os::unix::fs::chown(dir.join(MANIFEST_FILE), Some(NOBODY), Some(NOBODY)).unwrap();
}

/// Whether this process's bounding set holds what an unprivileged CRIU
/// is given here (CAP_CHECKPOINT_RESTORE, CAP_SYS_PTRACE); else which it
/// lacks.
fn bounding_set_allows_unprivileged_criu() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let missing: Vec<&str> = [(40, "CAP_CHECKPOINT_RESTORE"), (19, "CAP_SYS_PTRACE")]
        .into_iter()
        .filter(|(bit, _)| bounding & (1 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "the bounding set ({bounding:#x}) lacks {missing:?}"
        )),
    }
}

#[test]
fn a_non_root_checkpoint_restores_as_its_owner_and_its_paths_cannot_reach_roots_files() {
    if let Err(why) = bounding_set_allows_unprivileged_criu() {
        return skip(
            Limit::NoCapCheckpointRestore,
            &format!(
                "{why}: no unprivileged CRIU can make non-root images here, so restoring them \
                 as their owner is not tested"
            ),
        );
    }
    let service = Service::start_with(|b| {
        b.policy(Policy {
            allow_uids: [NOBODY].into_iter().collect(),
            ..Policy::default()
        })
    });
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let (images, data) = (base.path().join("images"), base.path().join("data"));
    for dir in [&images, &data] {
        std::fs::create_dir(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let log = data.join("log");

    // nobody's process, holding a file of its own open for append
    let mut original = as_nobody("sh")
        .arg("-c")
        .arg(format!("exec 3>>{} && exec sleep 600", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = original.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_link(format!("/proc/{pid}/fd/3")).is_ok_and(|t| t == log) {
        assert!(
            Instant::now() < deadline,
            "the process never opened its file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let dumped = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+checkpoint_restore,+sys_ptrace",
            "--ambient-caps=+checkpoint_restore,+sys_ptrace",
        ])
        .arg(criu().path)
        .args([
            "dump",
            "--unprivileged",
            "--shell-job",
            "-t",
            &pid.to_string(),
            "-D",
        ])
        .arg(&images)
        .args(["-o", "dump.log"])
        .current_dir(&images)
        .output()
        .unwrap();
    let _ = original.kill();
    let _ = original.wait();
    // with the capabilities it needs (checked above), a failure is a bug
    assert!(
        dumped.status.success(),
        "an unprivileged CRIU (uid 65534 with CAP_CHECKPOINT_RESTORE and CAP_SYS_PTRACE) could \
         not dump nobody's process ({}): {}\n{}",
        dumped.status,
        String::from_utf8_lossy(&dumped.stderr),
        std::fs::read_to_string(images.join("dump.log")).unwrap_or_default()
    );
    sign(&images, pid);
    let restore_as_nobody = || {
        let out = Command::new(selfdump_bin())
            .args(["restore", "--socket"])
            .arg(&service.socket)
            .arg(&images)
            .env("RUST_LOG", "warn")
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<i32>()
                .unwrap()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    };

    // restored through the service, by its owner, as its owner
    let restored = restore_as_nobody().expect("nobody restores its own checkpoint");
    assert_eq!(restored, pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap(),
        log
    );
    kill_and_reap(pid);

    // the owner points the recorded path at a file of root's
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "root's\n").unwrap();
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(secret_dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&secret, &log).unwrap();
    std::os::unix::fs::lchown(&log, Some(NOBODY), Some(NOBODY)).unwrap();
    let e = restore_as_nobody().expect_err("restored with root's file");
    assert!(e.contains("restore failed"), "{e}");
    // (CRIU killed the task it had begun: at most a zombie, reaped here)
    assert!(
        poll_for(std::time::Duration::from_secs(10), || {
            process_state(pid).is_none_or(|s| s == 'Z')
        }),
        "nothing of it runs"
    );
    kill_and_reap(pid);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root's\n");
    assert_eq!(std::fs::metadata(&secret).unwrap().uid(), 0);
}
