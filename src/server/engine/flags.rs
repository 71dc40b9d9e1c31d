//! The CRIU options a dump is made with that its restore must repeat: one
//! place maps them to CRIU's RPC options (the dump), to the image
//! metadata, and back to `criu restore` flags. A new option is one field
//! here (and its row in [`CriuFlags::rows`]), plus the wire option that
//! asks for it.

use super::rpc::CriuOpts;
use crate::proto::DumpOptions;
use crate::server::images::format::ImageMeta;

/// The dump options that must match between a dump and its restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CriuFlags {
    /// The caller does not lead its session (`--shell-job`).
    pub(crate) shell_job: bool,
    /// Established TCP connections (`--tcp-established`).
    pub(crate) tcp_established: bool,
    /// File locks (`--file-locks`).
    pub(crate) file_locks: bool,
    /// Unix sockets connected outside the tree (`--ext-unix-sk`).
    pub(crate) ext_unix_sk: bool,
}

impl CriuFlags {
    /// The flags of a dump with the caller's `options`.
    pub(crate) fn for_dump(options: &DumpOptions, shell_job: bool) -> Self {
        Self {
            shell_job,
            tcp_established: options.tcp_established,
            file_locks: options.file_locks,
            ext_unix_sk: options.ext_unix_sk,
        }
    }

    /// The flags the images were dumped with.
    pub(crate) fn of(meta: &ImageMeta) -> Self {
        Self {
            shell_job: meta.shell_job,
            tcp_established: meta.tcp_established,
            file_locks: meta.file_locks,
            ext_unix_sk: meta.ext_unix_sk,
        }
    }

    /// Each flag with CRIU's name for it.
    fn rows(self) -> [(bool, &'static str); 4] {
        [
            (self.shell_job, "shell-job"),
            (self.tcp_established, "tcp-established"),
            (self.file_locks, "file-locks"),
            (self.ext_unix_sk, "ext-unix-sk"),
        ]
    }

    /// The `criu restore` arguments (`--shell-job`, ...) for the flags set.
    pub(crate) fn restore_args(self) -> impl Iterator<Item = String> {
        self.rows()
            .into_iter()
            .filter(|&(on, _)| on)
            .map(|(_, name)| format!("--{name}"))
    }

    /// Sets these flags in CRIU's RPC options.
    pub(crate) fn apply(self, opts: &mut CriuOpts) {
        opts.shell_job = Some(self.shell_job);
        opts.tcp_established = Some(self.tcp_established);
        opts.file_locks = Some(self.file_locks);
        opts.ext_unix_sk = Some(self.ext_unix_sk);
    }

    /// Records these flags in the images' metadata.
    pub(crate) fn record(self, meta: &mut ImageMeta) {
        meta.shell_job = self.shell_job;
        meta.tcp_established = self.tcp_established;
        meta.file_locks = self.file_locks;
        meta.ext_unix_sk = self.ext_unix_sk;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_and_its_restore_use_the_same_flags() {
        let options = DumpOptions {
            tcp_established: true,
            ext_unix_sk: true,
            ..DumpOptions::default()
        };
        let flags = CriuFlags::for_dump(&options, true);
        let mut meta = ImageMeta::default();
        flags.record(&mut meta);
        assert_eq!(CriuFlags::of(&meta), flags);
        let args: Vec<String> = CriuFlags::of(&meta).restore_args().collect();
        assert_eq!(args, ["--shell-job", "--tcp-established", "--ext-unix-sk"]);
        let mut opts = CriuOpts::default();
        flags.apply(&mut opts);
        assert_eq!(
            (
                opts.shell_job,
                opts.tcp_established,
                opts.file_locks,
                opts.ext_unix_sk
            ),
            (Some(true), Some(true), Some(false), Some(true))
        );
    }
}
