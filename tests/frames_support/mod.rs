//! Shared by `tests/frames.rs` and `tests/fd_passing.rs`: proptest
//! strategies for every message, and frames built by hand.

use proptest::prelude::*;
use selfdump::proto::{
    DumpFailure, DumpOptions, DumpReport, FrozenNotice, Header, JobId, Refusal, RefusalKind,
    Request, Response,
};

/// A frame of `version` around `body`, whatever the body holds.
pub fn frame_of(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Header {
        version,
        body_len: body.len() as u32,
    }
    .to_bytes()
    .to_vec();
    out.extend_from_slice(body);
    out
}

pub fn checkpoint_request() -> Request {
    Request::Checkpoint(DumpOptions::default())
}

// ---------------------------------------------------------------------------
// Strategies for every message.

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..2000).prop_map(String::from_iter),
    ]
}

fn job_id() -> impl Strategy<Value = JobId> {
    (any::<u64>(), any::<u64>()).prop_map(|(service, seq)| JobId { service, seq })
}

fn dump_options() -> impl Strategy<Value = DumpOptions> {
    (any::<[bool; 5]>(), any::<Option<i32>>(), any::<u32>()).prop_map(|(b, slot, keep)| {
        DumpOptions {
            leave_running: b[0],
            tcp_established: b[1],
            file_locks: b[2],
            ext_unix_sk: b[3],
            pre_dump: b[4],
            copy_slot_fd: slot,
            keep,
        }
    })
}

pub fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        dump_options().prop_map(Request::Checkpoint),
        job_id().prop_map(Request::Result),
    ]
}

fn refusal_kind() -> impl Strategy<Value = RefusalKind> {
    prop_oneof![
        Just(RefusalKind::BadRequest),
        Just(RefusalKind::NotPermitted),
        Just(RefusalKind::BadDirectory),
        Just(RefusalKind::Busy),
        Just(RefusalKind::ShuttingDown),
        Just(RefusalKind::Invalid),
        Just(RefusalKind::Unsupported),
    ]
}

pub fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (job_id(), text())
            .prop_map(|(job, generation)| Response::Frozen(FrozenNotice { job, generation })),
        (refusal_kind(), text())
            .prop_map(|(kind, message)| Response::Refused(Refusal { kind, message })),
        (job_id(), any::<[u64; 10]>(), any::<u32>(), text()).prop_map(
            |(job, n, processes, generation)| Response::Dumped(DumpReport {
                job,
                generation,
                frozen_us: n[0],
                freezing_us: n[1],
                memdump_us: n[2],
                total_us: n[3],
                pages_written: n[4],
                bytes_written: n[5],
                sync_us: n[6],
                service_frozen_us: n[7],
                memwrite_us: n[8],
                pages_scanned: n[9],
                processes,
            })
        ),
        (prop::option::of(job_id()), text(), prop::option::of(text())).prop_map(
            |(job, message, log_file)| Response::DumpFailed(DumpFailure {
                job,
                message,
                log_file
            })
        ),
        job_id().prop_map(Response::UnknownJob),
    ]
}
