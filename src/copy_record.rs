//! The one line a restorer gives each copy through its copy slot (see
//! `client/copy_slot.rs` and `server/restore/copies/`): its number and restore id.

/// First word of a record.
const RECORD_TAG: &str = "selfdump-copy-v1";

/// A copy's number and restore id, as a restorer writes them.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) fn record(copy: u32, restore_id: u128) -> String {
    format!("{RECORD_TAG} copy={copy} id={restore_id:032x}\n")
}

/// The copy's number and restore id from a record.
#[cfg_attr(not(feature = "client"), allow(dead_code))]
pub(crate) fn parse(text: &str) -> Option<(u32, u128)> {
    let mut words = text.trim_end().split(' ');
    if words.next()? != RECORD_TAG {
        return None;
    }
    let copy = words.next()?.strip_prefix("copy=")?.parse().ok()?;
    let id = u128::from_str_radix(words.next()?.strip_prefix("id=")?, 16).ok()?;
    words.next().is_none().then_some((copy, id))
}

/// A fresh random id from the kernel (a restore never copies its pool).
pub(crate) fn fresh_id() -> u128 {
    let mut bytes = [0u8; 16];
    // getrandom blocks only before the kernel's pool is initialised
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    u128::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let id = fresh_id();
        assert_ne!(id, fresh_id());
        assert_eq!(parse(&record(7, id)), Some((7, id)));
        assert_eq!(parse("selfdump-copy-v1 copy=1 id=zz\n"), None);
        assert_eq!(parse("other copy=1 id=01\n"), None);
        assert_eq!(parse("selfdump-copy-v1 copy=1 id=01 more\n"), None);
        assert_eq!(parse(""), None);
    }
}
