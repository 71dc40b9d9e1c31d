//! The entries of CRIU's image files that selfdump reads (statistics, the
//! process tree, task cores and credentials), declared by hand for prost.
//! Field numbers and types follow CRIU's `images/*.proto`; everything
//! unused is left out.

#![allow(missing_docs)]

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
