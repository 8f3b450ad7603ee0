//! blkif request/response decoding, x86_64 ABI.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenblk_fuzz::blkif(xenblk::proto::blkif::Abi::X86_64, data));
