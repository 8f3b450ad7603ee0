//! See `xenblk_fuzz::frontend_responses`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenblk_fuzz::frontend_responses::run(data));
