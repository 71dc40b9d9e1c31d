//! The manifest's signatures: each key verifies its own only; old ones where
//! their key is.

use super::*;
use crate::proto::JobId;
use crate::server::images::format::ImageMeta;
use crate::server::images::manifest::FileDigest;

fn manifest() -> Manifest {
    Manifest {
        key_id: "k".into(),
        meta: ImageMeta {
            protocol: 1,
            job: JobId { service: 1, seq: 2 },
            pid: 42,
            uid: 1000,
            ..ImageMeta::default()
        },
        files: vec![FileDigest {
            name: "pstree.img".into(),
            size: 3,
            hash: [7; 32],
        }],
    }
}

#[test]
fn a_manifest_verifies_with_its_key_only() {
    let (key, other) = (Key::generate().unwrap(), Key::generate().unwrap());
    let signed = manifest().sign(&key);
    let named = Manifest {
        key_id: key.id(),
        ..manifest()
    };
    assert_eq!(Manifest::verify(&signed, &key).unwrap(), named);
    assert!(matches!(
        Manifest::verify(&signed, &other),
        Err(ManifestError::Untrusted { .. })
    ));
    for at in [0, 9, 40, signed.len() - 1] {
        let mut flipped = signed.clone();
        flipped[at] ^= 1;
        assert!(
            Manifest::verify(&flipped, &key).is_err(),
            "byte {at} flipped"
        );
    }
    let mut longer = signed.clone();
    longer.push(0);
    assert!(Manifest::verify(&longer, &key).is_err());
}

#[test]
fn old_manifests_verify_with_the_key_that_made_them_only() {
    let (key, other) = (Key::generate().unwrap(), Key::generate().unwrap());
    let mut old = manifest();
    old.key_id = key.legacy_id();
    let signed = old.sign_legacy(&key);
    assert_eq!(Manifest::verify(&signed, &key).unwrap(), old);
    let e = Manifest::verify(&signed, &other).unwrap_err().to_string();
    assert!(
        e.contains(&key.legacy_id()) && e.contains("the old way"),
        "{e}"
    );
    let mut changed = signed.clone();
    *changed.last_mut().unwrap() ^= 1;
    let e = Manifest::verify(&changed, &key).unwrap_err().to_string();
    assert!(e.contains("changed after the dump"), "{e}");
    let e = Manifest::verify_trusted(
        &signed,
        &Trust {
            keys: vec![key.public()],
            ..Trust::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("only the host holding that key"), "{e}");
}

#[test]
fn a_manifest_verifies_with_a_trusted_public_key_and_names_an_untrusted_one() {
    let (key, other) = (Key::generate().unwrap(), Key::generate().unwrap());
    let mut m = manifest();
    m.key_id = key.id();
    let signed = m.sign(&key);
    let trusting = |keys| Trust {
        own: Some(other.clone()),
        keys,
        dir: None,
    };
    assert_eq!(
        Manifest::verify_trusted(&signed, &trusting(vec![key.public()])).unwrap(),
        m
    );
    let e = Manifest::verify_trusted(&signed, &trusting(vec![]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("key {} is not trusted on this host", key.id())),
        "{e}"
    );
    // a manifest naming a trusted key but signed by another
    let mut forged = m.clone();
    forged.key_id = other.id();
    let forged = sign_body(&key, rmp_serde::to_vec_named(&forged).unwrap());
    let e = Manifest::verify(&forged, &other).unwrap_err().to_string();
    assert!(e.contains("it was changed after the dump"), "{e}");
    let mut signed = signed;
    signed[20] ^= 1;
    assert!(Manifest::verify(&signed, &key).is_err());
}
