//! The "done when": a program that checkpoints 100 times into one
//! directory, its children coming and going, restores from `latest` every
//! time it is asked, while it goes on checkpointing.

mod common;

use common::looping::*;
use common::*;

#[test]
fn a_hundred_generations_restore_from_latest_whenever_asked() {
    let service = Service::start();
    let images = images_dir();
    let looping = Looping::start(
        &service.socket,
        images.path(),
        false,
        &["--count", "100", "--churn"],
    );
    let committed = |i: u32| looping.committed(i);
    let mut asked = 0;
    for k in 1..=10 {
        // asked while it checkpoints on: latest moves under the restore
        committed(10 * k - 5);
        let heard = restore_and_hear(images.path(), &looping);
        let fields: Vec<&str> = heard.split_whitespace().collect();
        let (i, generation) = (fields[1].parse::<u32>().unwrap(), fields[3]);
        assert!(i >= 10 * k - 5, "an older generation than latest: {heard}");
        assert_eq!(generation, committed(i), "{heard}");
        let children = (i % 4).to_string();
        assert_eq!(
            fields[5..],
            [children.as_str(), "alive", children.as_str()],
            "{heard}"
        );
        asked += 1;
    }
    wait_for_line(&looping.log, "the hundredth checkpoint", |l| l == "done");
    let last = committed(100);
    assert_eq!(latest(images.path()).as_deref(), Some(last.as_str()));
    wait_generations(images.path(), |now| now.len() == 3); // the default keep
    assert_generations_whole(images.path());
    let heard = restore_and_hear(images.path(), &looping);
    assert!(
        heard.starts_with(&format!("gen 100 restored {last} children 0 alive 0")),
        "{heard}"
    );
    eprintln!("100 generations; restored from latest {} times", asked + 1);
}
