//! The keys that sign and verify the images. The service's secret
//! ([`Key`]: 32 random bytes) derives its Ed25519 signing key (BLAKE3
//! `derive_key`), so a key file made when manifests were signed with a
//! keyed hash signs with Ed25519 now, unchanged; its public half
//! ([`PublicKey`]) is what other hosts trust. Where the secret is kept (a
//! file of root's, [`Key::load_or_create`]) is `fs/key_file.rs`'s.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fmt;
use std::io;

/// Length of an old manifest's tag (a BLAKE3 keyed hash).
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

    /// The id of its public key ([`PublicKey::id`]), which manifests name
    /// and `selfdump inspect` shows.
    pub fn id(&self) -> String {
        self.public().id()
    }

    /// The id manifests signed the old way (a keyed hash) name.
    pub(crate) fn legacy_id(&self) -> String {
        let id = blake3::derive_key("selfdump signing key id v1", &self.0);
        id[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The Ed25519 key that signs manifests, derived from the secret.
    pub(super) fn signing(&self) -> ed25519_dalek::SigningKey {
        let seed = blake3::derive_key("selfdump ed25519 signing key v1", &self.0);
        ed25519_dalek::SigningKey::from_bytes(&seed)
    }

    /// Its public key, which other hosts trust (`selfdump key public`).
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing().verifying_key())
    }

    /// A key of these bytes.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Its bytes, to be kept (`fs/key_file.rs`).
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The keyed hash old manifests were signed with.
    pub(super) fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        *blake3::keyed_hash(&self.0, body).as_bytes()
    }
}

/// An Ed25519 public key a host may trust.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// Its key number: the first 8 bytes of a hash of the key (what
    /// minisign calls the key id).
    fn number(&self) -> [u8; 8] {
        let hash = blake3::derive_key("selfdump ed25519 key id v1", self.0.as_bytes());
        hash[..8].try_into().expect("8 bytes")
    }

    /// The key's id, as manifests name their signer: 16 lowercase hex
    /// digits (minisign shows the same number in upper case).
    pub fn id(&self) -> String {
        format!("{:016x}", u64::from_le_bytes(self.number()))
    }

    /// The key in minisign's public-key file format (ends with a newline).
    pub fn to_file(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.number());
        raw.extend_from_slice(self.0.as_bytes());
        format!(
            "untrusted comment: minisign public key {:016X} (selfdump service)\n{}\n",
            u64::from_le_bytes(self.number()),
            BASE64.encode(raw)
        )
    }

    /// Parses a public key file (minisign's format: an optional
    /// `untrusted comment:` line, then the base64 key line).
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or("no key line")?;
        let raw = BASE64
            .decode(line)
            .map_err(|e| format!("the key line is not base64: {e}"))?;
        if raw.len() != 42 || &raw[..2] != b"Ed" {
            return Err("not an Ed25519 public key in minisign's format".into());
        }
        let bytes: [u8; 32] = raw[10..].try_into().expect("32 bytes");
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "not a valid Ed25519 public key")?;
        let key = Self(key);
        if raw[2..10] != key.number() {
            return Err(format!(
                "its key number is not the one of its key ({}): not a selfdump service key",
                key.id()
            ));
        }
        Ok(key)
    }

    /// Whether `signature` is this key's over `message`.
    pub(super) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &signature).is_ok()
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
        assert_eq!(key.legacy_id().len(), 16);
        assert!(!format!("{key:?}").contains(&format!("{:02x}", key.0[0]).repeat(2)));
    }

    #[test]
    fn a_public_key_file_parses_back_to_its_key() {
        let key = Key::generate().unwrap().public();
        let file = key.to_file();
        assert!(file.starts_with("untrusted comment: minisign public key "));
        assert_eq!(PublicKey::parse(&file).unwrap(), key);
        assert_eq!(PublicKey::parse(file.lines().nth(1).unwrap()).unwrap(), key);
        let mut other_number = file.clone().into_bytes();
        let at = file.find('\n').unwrap() + 5;
        other_number[at] = if other_number[at] == b'A' { b'B' } else { b'A' };
        assert!(PublicKey::parse(&String::from_utf8(other_number).unwrap()).is_err());
        assert!(PublicKey::parse("untrusted comment: x\n").is_err());
        assert!(PublicKey::parse("RWQ=\n").is_err());
    }
}
