//! Whose signatures a host accepts ([`Trust`]): its own service key, and
//! the public keys of its trust directory ([`DEFAULT_TRUST_DIR`]).
//!
//! A service signs manifests with Ed25519. Its signing key is derived from
//! the 32-byte secret it always had ([`Key`]: `signing.key`), so no key file
//! changes and no migration is needed; its public key is what other hosts
//! trust. `selfdump key public` prints it in minisign's public-key file
//! format (two lines: an untrusted comment, then base64 of `Ed`, an 8-byte
//! key number and the 32-byte key), which is exactly what a file of the
//! trust directory holds, and which minisign's own tools read.
//!
//! The trust directory is checked like the key file, because whoever can
//! add a file there can make this host restore anything as root: it must
//! be a directory of root's that nobody else can write (nor any directory
//! above it, but for sticky ones of root's such as `/tmp`), and each
//! `*.pub` file in it a regular file of root's that nobody else can write
//! (not followed through a symlink). A file that breaks these rules, or is
//! not a public key, is an error naming it, never silently skipped.
//! Reading it ([`Trust::load`]) is `fs/trust_dir.rs`'s.

pub use super::key::{Key, PublicKey};
use std::path::PathBuf;

/// Where `selfdump restore`, `inspect` and `pull` look for trusted public
/// keys unless told otherwise (`--trust-dir`).
pub const DEFAULT_TRUST_DIR: &str = "/etc/selfdump/trusted.d";

/// The keys a host accepts manifests from: its own service key (when it
/// can read it) and the public keys of its trust directory.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// This host's own key: its public half is trusted, and it also checks
    /// manifests signed the old way (a keyed hash), which only this key can.
    pub own: Option<Key>,
    /// Other services' public keys.
    pub keys: Vec<PublicKey>,
    /// Where they were read from, for messages.
    pub dir: Option<PathBuf>,
}

impl Trust {
    /// Trusts `own` alone.
    pub fn own(key: Key) -> Self {
        Self {
            own: Some(key),
            ..Self::default()
        }
    }

    /// Whether it holds any key at all.
    pub fn is_empty(&self) -> bool {
        self.own.is_none() && self.keys.is_empty()
    }

    /// The trusted public key with this id.
    pub fn find(&self, id: &str) -> Option<PublicKey> {
        let own = self.own.as_ref().map(Key::public);
        own.into_iter()
            .chain(self.keys.iter().cloned())
            .find(|k| k.id().eq_ignore_ascii_case(id))
    }

    /// The ids trusted, for messages.
    pub fn ids(&self) -> Vec<String> {
        let own = self.own.as_ref().map(Key::id);
        own.into_iter()
            .chain(self.keys.iter().map(PublicKey::id))
            .collect()
    }
}
