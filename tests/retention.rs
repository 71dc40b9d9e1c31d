//! Older generations go once a new one is committed, keeping the newest
//! `keep`, never the one `latest` names, never one being restored; and two
//! programs checkpointing into one directory at once both commit, `latest`
//! names one of their generations, and nothing half is left.

mod common;

use common::looping::*;
use common::*;
use selfdump::server::manifest::{DEFAULT_KEY_FILE, Key};
use selfdump::server::restore::{RestoreSettings, verify_path};
use std::path::Path;

#[test]
fn the_newest_are_kept_and_one_being_restored_is_not_removed_under_it() {
    let service = Service::start();
    let images = images_dir();
    let looping = Looping::start(
        &service.socket,
        images.path(),
        true,
        &["--count", "6", "--keep", "2"],
    );
    let mut made = Vec::new();
    for i in 1..=2 {
        looping.go(i);
        made.push(looping.committed(i));
    }
    assert_eq!(generations(images.path()), made);
    // the oldest is verified for a restore (rounds of copies hold it so)
    let settings = RestoreSettings::new(
        criu(),
        Some(Key::load(Path::new(DEFAULT_KEY_FILE)).unwrap()),
    );
    let held = verify_path(&images.path().join(&made[0]), &settings).unwrap();
    assert_eq!(held.generation, None, "named by its own path");
    for i in 3..=5 {
        looping.go(i);
        made.push(looping.committed(i));
        let newest = made[made.len() - 2..].to_vec();
        let mut expected = vec![made[0].clone()];
        expected.extend(newest);
        wait_generations(images.path(), |now| now == expected);
        assert_eq!(latest(images.path()).as_ref(), made.last());
        assert_generations_whole(images.path());
    }
    drop(held);
    looping.go(6);
    made.push(looping.committed(6));
    wait_generations(images.path(), |now| now == &made[4..]);
    assert_generations_whole(images.path());
    assert_no_leftovers(images.path());
}

#[test]
fn two_programs_checkpointing_one_directory_at_once_both_commit() {
    let service = Service::start();
    let images = images_dir();
    let logs = tempfile::tempdir().unwrap();
    let args = ["--count", "12", "--keep", "2", "--churn"];
    let start = |n: &str| {
        Looping::start_logged(&service.socket, images.path(), &logs.path().join(n), &args)
    };
    let (one, two) = (start("one.log"), start("two.log"));
    for i in 1..=12 {
        one.go(i);
        two.go(i);
    }
    let mut committed = Vec::new();
    for looping in [&one, &two] {
        for i in 1..=12 {
            committed.push(looping.committed(i));
        }
    }
    wait_for_line(&one.log, "the first to end", |l| l == "done");
    wait_for_line(&two.log, "the second to end", |l| l == "done");
    let now = latest(images.path()).unwrap();
    assert!(
        committed.contains(&now),
        "latest names {now}, which nobody committed"
    );
    let left = wait_generations(images.path(), |now| now.len() <= 3);
    for g in &left {
        assert!(committed.contains(g), "{g} was never reported committed");
    }
    assert_generations_whole(images.path());
    assert_no_leftovers(images.path());
    let heard = restore_and_hear(
        images.path(),
        if read(&one.log).contains(&now) {
            &one
        } else {
            &two
        },
    );
    assert!(heard.contains(&format!(" restored {now} ")), "{heard}");
}
