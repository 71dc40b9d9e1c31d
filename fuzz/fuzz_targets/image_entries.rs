//! A CRIU image file and its entries: `checks::image_entries`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::image_entries(data));
