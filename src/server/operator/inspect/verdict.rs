//! The one-line verdict of `selfdump inspect`: would `selfdump restore`
//! restore the checkpoint here, now; and if not, why (or why this user
//! cannot tell).

use super::report::{Inspection, Verdict};
use crate::server::engine::host;

/// The verdict on what [`inspect`](super::inspect) found.
pub(super) fn verdict(found: &Inspection) -> Verdict {
    let (restorable, summary) = match why_not(found) {
        Some((restorable, why)) => (restorable, why),
        None => (
            Some(true),
            "restorable here: signed by a key trusted here, taken on a host this one can \
             stand in for, every signed file there with its size, its ids free"
                .into(),
        ),
    };
    Verdict {
        restorable,
        summary,
    }
}

/// Why the checkpoint would not restore here (`Some(false)`), or why
/// this user cannot tell (`None`); `None` when nothing stands in the way.
fn why_not(found: &Inspection) -> Option<(Option<bool>, String)> {
    let uid = rustix::process::geteuid().as_raw();
    if let Some(file) = &found.unreadable {
        let why = format!(
            "cannot tell: uid {uid} cannot read the images ({file}); inspect as root or as \
             their owner"
        );
        return Some((None, why));
    }
    let no = |why: String| Some((Some(false), why));
    if let Some(why) = not_signed(found) {
        return no(why);
    }
    // what `selfdump restore` checks before CRIU runs (CRIU's own version
    // too, which this does not run CRIU to learn)
    let needs = found.meta.as_ref().and_then(|m| m.needs.as_ref());
    if let Err(why) = host::check(needs, None) {
        return no(why);
    }
    if let Some(f) = found.files.iter().find(|f| f.state == "missing") {
        return no(format!("{} is missing (it was signed)", f.name));
    }
    if let Some(f) = found.files.iter().find(|f| f.state == "size differs") {
        let signed = f.signed_size.unwrap_or_default();
        let size = f.size;
        return no(format!(
            "{} changed since the dump ({size} bytes, signed {signed})",
            f.name
        ));
    }
    if let Some(ids) = &found.ids_in_use {
        return no(format!(
            "not now: {ids} (`selfdump restore --wait SECS` waits for it)"
        ));
    }
    let unchecked = found
        .signature
        .as_ref()
        .is_some_and(|s| s.verifies.is_none());
    if unchecked {
        let why = format!(
            "its files are whole and its ids free, but uid {uid} cannot read the signing key \
             to check the signature: inspect as root (a restore through the service checks it)"
        );
        return Some((None, why));
    }
    None
}

/// Why what was found is not a checkpoint signed by a key trusted here.
fn not_signed(found: &Inspection) -> Option<String> {
    let criu_images = found.files.iter().any(|f| f.name == "inventory.img");
    match &found.signature {
        None if !criu_images && !found.generations.is_empty() => {
            Some("no generation is named `latest`: name one (DIR/gen-...)".into())
        }
        None if !criu_images => Some(
            "not a checkpoint: no generation, no CRIU images (inventory.img), no selfdump \
             manifest"
                .into(),
        ),
        None => Some(
            "unsigned: CRIU images not made by a selfdump service; `selfdump restore \
             --trust-unsigned` restores them unchecked (root only)"
                .into(),
        ),
        Some(s) if s.verifies == Some(false) => {
            let problem = s.problem.as_deref().unwrap_or("it does not verify");
            Some(format!("its signature does not verify: {problem}"))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::images::format::ImageMeta;
    use crate::server::images::host_needs::HostNeeds;
    use crate::server::operator::inspect::report::{FileInfo, Signature};

    /// A signed checkpoint, whole, its ids free, that needs `needs`.
    fn found(needs: Option<HostNeeds>) -> Inspection {
        Inspection {
            generations: Vec::new(),
            generation: None,
            meta: Some(ImageMeta {
                needs,
                ..ImageMeta::default()
            }),
            signature: Some(Signature {
                key_id: "k".into(),
                verifies: Some(true),
                problem: None,
            }),
            tree: Vec::new(),
            files: vec![FileInfo {
                name: "inventory.img".into(),
                size: 1,
                state: "signed".into(),
                signed_size: Some(1),
            }],
            bytes: 1,
            pages: 0,
            ids_in_use: None,
            stats: None,
            unreadable: None,
            verdict: Verdict {
                restorable: None,
                summary: String::new(),
            },
        }
    }

    #[test]
    fn a_checkpoint_of_a_host_this_one_cannot_stand_in_for_is_not_restorable() {
        assert_eq!(verdict(&found(None)).restorable, Some(true), "old images");
        let here = crate::server::engine::host::this_host(std::path::Path::new("/nonexistent"));
        assert_eq!(verdict(&found(Some(here.clone()))).restorable, Some(true));
        let mut elsewhere = here;
        elsewhere.cpu_flags.push("selfdump_test_feature".into());
        let v = verdict(&found(Some(elsewhere)));
        assert_eq!(v.restorable, Some(false));
        assert!(
            v.summary.contains("lacks selfdump_test_feature"),
            "{}",
            v.summary
        );
    }
}
