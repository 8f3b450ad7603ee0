//! See `xenblk_fuzz::xs_wire`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenblk_fuzz::xs_wire(data));
