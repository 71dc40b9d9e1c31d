//! A whole images directory, as `selfdump inspect` reads it:
//! `checks::inspect_dir`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::inspect_dir(data));
