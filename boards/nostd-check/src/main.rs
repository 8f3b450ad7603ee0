//! `xenblk-nostd-check`: links the driver into a freestanding x86_64 Linux binary.
//!
//! Built by `check.sh` with `XENBLK_NOSTD_FREESTANDING=1` and `panic = "abort"`, the binary is
//! `#![no_std]`/`#![no_main]`, has its own `_start`, panic handler, `mem*` functions and (for
//! `pool-dynamic`) a bump allocator, and is linked with `-nostartfiles -nodefaultlibs -static`:
//! nothing provides std or libc, so a driver that used either would fail to build. It then
//! runs: a ring round trip in both ABIs, request encoding and decoding, the persistent-grant
//! pools, and the role state machines against a stub platform, and exits with status 0
//! through a raw `exit_group` system call (non-zero: the number of the failed check).
//!
//! Without that variable the same checks build as an ordinary host program, so that
//! workspace-wide `cargo build`, `clippy` and `test` need no special flags.
#![cfg_attr(xenblk_freestanding, no_std, no_main)]

#[cfg(feature = "pool-dynamic")]
extern crate alloc;

mod check;
mod stub;

#[cfg(xenblk_freestanding)]
mod memfns;
#[cfg(xenblk_freestanding)]
mod rt;

#[cfg(not(xenblk_freestanding))]
fn main() {
    let code = check::run();
    if code == 0 {
        println!("{}", check::SUMMARY);
    } else {
        eprintln!("xenblk-nostd-check: check {code} failed");
    }
    std::process::exit(code);
}
