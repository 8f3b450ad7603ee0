//! blkif request/response decoding, x86_32 ABI.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenblk_fuzz::blkif(xenblk::proto::blkif::Abi::X86_32, data));
