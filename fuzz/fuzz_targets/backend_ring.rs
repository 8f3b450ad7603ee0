//! See `xenblk_fuzz::backend_ring`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenblk_fuzz::backend_ring::run(data));
