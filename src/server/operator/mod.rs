//! Operator tooling, off the request path: `selfdump check` (`check.rs`,
//! `check_non_root.rs`), `selfdump inspect` (`inspect.rs`), and systemd's
//! socket activation and readiness (`systemd.rs`).

pub mod check;
mod check_non_root;
mod finding;
pub mod inspect;
pub mod systemd;
