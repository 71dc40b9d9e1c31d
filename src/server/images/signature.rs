//! Signing a manifest and checking its signature. A manifest file is a
//! magic, a seal and the body: [`MAGIC_V2`], an Ed25519 signature by the
//! service's key over a fixed context and the body; or, as services wrote
//! them before Ed25519, [`MAGIC_V1`] and a BLAKE3 keyed hash of the body,
//! which only the host holding the secret can check.

use super::key::{Key, TAG_LEN};
use super::manifest::{MAGIC_V1, MAGIC_V2, Manifest, ManifestError, SIGNATURE_LEN};
use super::trust::Trust;

/// What an Ed25519 manifest signature covers: this, then the body (so the
/// key signs nothing that could be mistaken for another message).
const SIGNED_CONTEXT: &[u8] = b"selfdump manifest v2\0";

impl Manifest {
    /// The signed bytes of the manifest, for the file
    /// [`MANIFEST_FILE`](super::manifest::MANIFEST_FILE)
    /// (Ed25519, [`MAGIC_V2`]), naming `key` as its signer whatever its
    /// [`Manifest::key_id`] said.
    pub fn sign(&self, key: &Key) -> Vec<u8> {
        let named = Self {
            key_id: key.id(),
            ..self.clone()
        };
        let body = rmp_serde::to_vec_named(&named).expect("a manifest serialises");
        sign_body(key, body)
    }

    /// The manifest signed the old way ([`MAGIC_V1`]: a keyed hash), as
    /// services wrote them before Ed25519; for tests of old checkpoints.
    #[doc(hidden)]
    pub fn sign_legacy(&self, key: &Key) -> Vec<u8> {
        let body = rmp_serde::to_vec_named(self).expect("a manifest serialises");
        [&MAGIC_V1[..], &key.tag(&body), &body].concat()
    }

    /// Parses and verifies a manifest file signed by `key` (this host's own
    /// key: either way of signing).
    pub fn verify(bytes: &[u8], key: &Key) -> Result<Self, ManifestError> {
        Self::verify_trusted(bytes, &Trust::own(key.clone()))
    }

    /// Parses and verifies a manifest file signed by a key of `trust`.
    pub fn verify_trusted(bytes: &[u8], trust: &Trust) -> Result<Self, ManifestError> {
        let (manifest, seal, body) = Self::parse_unverified(bytes)?;
        if bytes.starts_with(MAGIC_V1) {
            let Some(own) = &trust.own else {
                return Err(ManifestError::Legacy {
                    theirs: manifest.key_id,
                    ours: None,
                });
            };
            let tag: [u8; TAG_LEN] = seal.try_into().expect("32 bytes");
            // constant time: blake3's Hash compares in constant time
            if blake3::Hash::from(tag) != blake3::Hash::from(own.tag(body)) {
                if manifest.key_id != own.legacy_id() {
                    return Err(ManifestError::Legacy {
                        theirs: manifest.key_id,
                        ours: Some(own.legacy_id()),
                    });
                }
                return Err(ManifestError::BadSignature {
                    ours: own.legacy_id(),
                    theirs: manifest.key_id,
                });
            }
            return Ok(manifest);
        }
        let Some(key) = trust.find(&manifest.key_id) else {
            return Err(ManifestError::Untrusted {
                theirs: manifest.key_id,
                ours: trust.own.as_ref().map(Key::id),
                dir: trust.dir.clone(),
            });
        };
        let signature: [u8; SIGNATURE_LEN] = seal.try_into().expect("64 bytes");
        if !key.verify(&[SIGNED_CONTEXT, body].concat(), &signature) {
            return Err(ManifestError::BadSignature {
                ours: key.id(),
                theirs: manifest.key_id,
            });
        }
        Ok(manifest)
    }
}

/// A manifest body as [`Manifest::sign`] writes it, signed by `key`.
pub(super) fn sign_body(key: &Key, body: Vec<u8>) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let signature = key.signing().sign(&[SIGNED_CONTEXT, &body].concat());
    [&MAGIC_V2[..], &signature.to_bytes(), &body].concat()
}

#[cfg(test)]
#[path = "signature_tests.rs"]
mod tests;
