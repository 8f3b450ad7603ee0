//! See `xenblk_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenblk_fuzz::config(data));
