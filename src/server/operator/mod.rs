//! Operator tooling, off the request path.

pub mod check;
mod check_non_root;
mod finding;
pub mod inspect;
pub mod systemd;
