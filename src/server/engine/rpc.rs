//! The few messages of CRIU's `images/rpc.proto` (and the stats and pstree
//! images) that selfdump uses, declared by hand for prost. Field numbers and
//! types follow CRIU's `.proto` files; everything unused is left out.

#![allow(missing_docs)]

/// `criu_req_type` values used here.
pub mod req_type {
    pub const DUMP: i32 = 1;
    pub const NOTIFY: i32 = 6;
    pub const FEATURE_CHECK: i32 = 9;
    pub const VERSION: i32 = 10;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuOpts {
    #[prost(int32, required, tag = "1")]
    pub images_dir_fd: i32,
    #[prost(int32, optional, tag = "2")]
    pub pid: Option<i32>,
    #[prost(bool, optional, tag = "3")]
    pub leave_running: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    pub ext_unix_sk: Option<bool>,
    #[prost(bool, optional, tag = "5")]
    pub tcp_established: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub shell_job: Option<bool>,
    #[prost(bool, optional, tag = "8")]
    pub file_locks: Option<bool>,
    #[prost(int32, optional, tag = "9")]
    pub log_level: Option<i32>,
    #[prost(string, optional, tag = "10")]
    pub log_file: Option<String>,
    #[prost(bool, optional, tag = "12")]
    pub notify_scripts: Option<bool>,
    #[prost(bool, optional, tag = "67")]
    pub unprivileged: Option<bool>,
    /// Used by CRIU only when `images_dir_fd` is -1.
    #[prost(string, optional, tag = "68")]
    pub images_dir: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuFeatures {
    #[prost(bool, optional, tag = "1")]
    pub mem_track: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuReq {
    #[prost(int32, required, tag = "1")]
    pub r#type: i32,
    #[prost(message, optional, tag = "2")]
    pub opts: Option<CriuOpts>,
    #[prost(bool, optional, tag = "3")]
    pub notify_success: Option<bool>,
    #[prost(message, optional, tag = "5")]
    pub features: Option<CriuFeatures>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuNotify {
    #[prost(string, optional, tag = "1")]
    pub script: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub pid: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuVersion {
    #[prost(int32, required, tag = "1")]
    pub major_number: i32,
    #[prost(int32, required, tag = "2")]
    pub minor_number: i32,
    #[prost(int32, optional, tag = "4")]
    pub sublevel: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuResp {
    #[prost(int32, required, tag = "1")]
    pub r#type: i32,
    #[prost(bool, required, tag = "2")]
    pub success: bool,
    #[prost(message, optional, tag = "5")]
    pub notify: Option<CriuNotify>,
    #[prost(int32, optional, tag = "7")]
    pub cr_errno: Option<i32>,
    #[prost(message, optional, tag = "8")]
    pub features: Option<CriuFeatures>,
    #[prost(string, optional, tag = "9")]
    pub cr_errmsg: Option<String>,
    #[prost(message, optional, tag = "10")]
    pub version: Option<CriuVersion>,
}

/// `images/stats.proto`: `stats_entry` with its `dump_stats_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsEntry {
    #[prost(message, optional, tag = "1")]
    pub dump: Option<DumpStatsEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DumpStatsEntry {
    #[prost(uint32, required, tag = "1")]
    pub freezing_time: u32,
    #[prost(uint32, required, tag = "2")]
    pub frozen_time: u32,
    #[prost(uint32, required, tag = "3")]
    pub memdump_time: u32,
    #[prost(uint32, required, tag = "4")]
    pub memwrite_time: u32,
    #[prost(uint64, required, tag = "5")]
    pub pages_scanned: u64,
    #[prost(uint64, required, tag = "7")]
    pub pages_written: u64,
}

/// `images/pstree.proto`: one task of the dumped tree.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PstreeEntry {
    #[prost(uint32, required, tag = "1")]
    pub pid: u32,
    #[prost(uint32, required, tag = "2")]
    pub ppid: u32,
    #[prost(uint32, required, tag = "3")]
    pub pgid: u32,
    #[prost(uint32, required, tag = "4")]
    pub sid: u32,
    #[prost(uint32, repeated, packed = "false", tag = "5")]
    pub threads: Vec<u32>,
}

/// `images/core.proto`: the parts of a task's core image selfdump reads
/// (its command, and its credentials, which a restore checks).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CoreEntry {
    #[prost(message, optional, tag = "3")]
    pub tc: Option<TaskCoreEntry>,
    #[prost(message, optional, tag = "5")]
    pub thread_core: Option<ThreadCoreEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskCoreEntry {
    #[prost(string, optional, tag = "6")]
    pub comm: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ThreadCoreEntry {
    #[prost(message, optional, tag = "10")]
    pub creds: Option<CredsEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CredsEntry {
    #[prost(uint32, tag = "1")]
    pub uid: u32,
    #[prost(uint32, tag = "2")]
    pub gid: u32,
    #[prost(uint32, tag = "3")]
    pub euid: u32,
    #[prost(uint32, tag = "4")]
    pub egid: u32,
    #[prost(uint32, tag = "5")]
    pub suid: u32,
    #[prost(uint32, tag = "6")]
    pub sgid: u32,
    #[prost(uint32, tag = "7")]
    pub fsuid: u32,
    #[prost(uint32, tag = "8")]
    pub fsgid: u32,
    #[prost(uint32, repeated, packed = "false", tag = "9")]
    pub cap_inh: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "10")]
    pub cap_prm: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "11")]
    pub cap_eff: Vec<u32>,
}
