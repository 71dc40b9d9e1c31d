//! The job table: who may collect a result, and what is kept how long.

use super::*;
use crate::proto::Response;
use crate::server::caller::process::Process;
use std::os::unix::net::UnixStream;

/// This test process as a connected caller.
fn me() -> (Peer, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (Peer::of(&ours).unwrap(), theirs)
}

const GRACE: Duration = Duration::from_secs(60);

#[test]
fn a_running_job_is_awaited_by_its_owner_only() {
    let jobs = Jobs::new(GRACE);
    let (peer, _keep) = me();
    let _job = jobs.start(&peer).unwrap();
    assert!(jobs.awaited(GRACE));
    assert!(jobs.awaits_result(peer.pid(), GRACE));
    assert!(!jobs.awaits_result(peer.pid() + 1, GRACE));
}

#[test]
fn a_finished_job_is_awaited_until_claimed_or_its_grace_is_over() {
    let jobs = Jobs::new(GRACE);
    let (peer, _keep) = me();
    let job = jobs.start(&peer).unwrap();
    job.finish(Outcome::failed(Some(job.id), "any"));
    assert!(jobs.awaited(GRACE));
    assert!(!jobs.awaited(Duration::ZERO), "grace over");
    jobs.claim(job.id, &peer).unwrap();
    assert!(!jobs.awaited(GRACE), "claimed");
}

#[test]
fn a_job_whose_failure_went_to_the_connection_is_not_awaited() {
    let jobs = Jobs::new(GRACE);
    let (peer, _keep) = me();
    let job = jobs.start(&peer).unwrap();
    jobs.remove(job.id);
    assert!(!jobs.awaited(GRACE));
    assert!(!jobs.awaits_result(peer.pid(), GRACE));
}

#[test]
fn a_job_dropped_unfinished_ends_as_an_internal_failure() {
    let jobs = Jobs::new(GRACE);
    let (peer, _keep) = me();
    let id = jobs.start(&peer).unwrap().id; // the handle drops here
    let job = jobs.claim(id, &peer).unwrap();
    match Response::from(async_io::block_on(job.result())) {
        Response::DumpFailed(f) => assert!(f.message.contains("failed internally"), "{f:?}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_finished_job_holds_no_fd() {
    let jobs = Jobs::new(GRACE);
    let (peer, _keep) = me();
    let job = jobs.start(&peer).unwrap();
    assert!(
        job.owner_pinned.lock().unwrap().is_some(),
        "running: pidfd held"
    );
    job.finish(Outcome::failed(Some(job.id), "any"));
    assert!(
        job.owner_pinned.lock().unwrap().is_none(),
        "finished: no fd"
    );
    assert!(
        jobs.awaits_result(peer.pid(), GRACE),
        "still known as alive"
    );
    assert!(jobs.claim(job.id, &peer).is_ok());
}

#[test]
fn the_oldest_results_expire_past_the_cap_and_their_owner_is_told() {
    let jobs = Jobs::with_caps(GRACE, 100, 3);
    let (peer, _keep) = me();
    let ids: Vec<JobId> = (0..5)
        .map(|_| {
            let job = jobs.start(&peer).unwrap();
            job.finish(Outcome::failed(Some(job.id), "any"));
            job.id
        })
        .collect();
    for (n, id) in ids.iter().enumerate() {
        match jobs.claim(*id, &peer).map_err(Response::from) {
            Ok(_) => assert!(n >= 2, "job {n} should have expired"),
            Err(Response::Refused(r)) => {
                assert!(n < 2, "job {n} expired too early");
                assert!(r.message.starts_with("result expired"), "{}", r.message);
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    // told once; then unknown like any other id
    assert_eq!(
        Response::from(jobs.claim(ids[0], &peer).unwrap_err()),
        Response::UnknownJob(ids[0])
    );
}

#[test]
fn another_process_is_answered_as_for_an_unknown_job() {
    let jobs = Jobs::new(GRACE);
    let (peer, _keep) = me();
    let job = jobs.start(&peer).unwrap();
    job.finish(Outcome::failed(Some(job.id), "any"));
    // init: another live process, and no child to start (a fork here
    // would hold copies of other tests' fds, flocks among them)
    let other = Peer {
        uid: peer.uid,
        process: Process::open(1).unwrap(),
    };
    let made_up = JobId { seq: 999, ..job.id };
    assert_eq!(
        Response::from(jobs.claim(job.id, &other).unwrap_err()),
        Response::UnknownJob(job.id)
    );
    assert_eq!(
        Response::from(jobs.claim(made_up, &other).unwrap_err()),
        Response::UnknownJob(made_up)
    );
    assert!(jobs.claim(job.id, &peer).is_ok(), "the owner still gets it");
}
