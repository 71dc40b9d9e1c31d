//! A checkpoint object from a store: `checks::store_object`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::store_object(data));
