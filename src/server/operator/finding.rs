//! One line of `selfdump check`'s verdict.

/// One line of the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked.
    pub what: String,
    /// Whether it passed.
    pub ok: bool,
    /// Details or the fix.
    pub detail: String,
}

pub(super) fn finding(what: &str, ok: bool, detail: impl Into<String>) -> Finding {
    Finding {
        what: what.into(),
        ok,
        detail: detail.into(),
    }
}
