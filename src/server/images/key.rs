//! The key that signs the images. Where it is kept (a file of root's,
//! [`Key::load_or_create`]) is `fs/key_file.rs`'s.

use std::fmt;
use std::io;

/// Length of a manifest's tag (a BLAKE3 keyed hash).
pub(super) const TAG_LEN: usize = 32;

/// The service's signing key: 32 random bytes, root's, mode 0600.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

impl Key {
    /// A fresh random key.
    pub fn generate() -> io::Result<Self> {
        let mut key = [0u8; 32];
        rustix::rand::getrandom(&mut key, rustix::rand::GetRandomFlags::empty())?;
        Ok(Self(key))
    }

    /// A short public name of the key (a hash of it), shown in manifests
    /// and by `selfdump inspect`.
    pub fn id(&self) -> String {
        let id = blake3::derive_key("selfdump signing key id v1", &self.0);
        id[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A key of these bytes.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Its bytes, to be kept (`fs/key_file.rs`).
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(super) fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        *blake3::keyed_hash(&self.0, body).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_differ_and_hide_the_key() {
        let key = Key::generate().unwrap();
        assert_ne!(key.id(), Key::generate().unwrap().id());
        assert_eq!(key.id().len(), 16);
        assert!(!format!("{key:?}").contains(&format!("{:02x}", key.0[0]).repeat(2)));
    }
}
