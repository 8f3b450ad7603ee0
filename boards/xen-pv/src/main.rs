//! `xenblk-xen-pv`: a freestanding x86_64 Xen PV guest kernel that runs xenblk's frontend.
//!
//! Built by `build.sh` (`XENBLK_XEN_PV=1`, `panic = "abort"`, relocation-model=static, own
//! linker script `xen-pv.ld`), the binary is `#![no_std]`/`#![no_main]` and is started by
//! Xen's PV domain builder at `_start` (see `hyp.rs` for the entry and the ELF notes). It
//! maps the shared-info page, the console and xenstore rings and its grant table, implements
//! xenblk's platform traits with hypercalls (`pv.rs`), attaches the frontend to its first
//! vbd, writes, reads back and checksums data, prints the result on its console and powers
//! itself off.
//!
//! Without that variable the crate is an ordinary host program whose unit tests exercise
//! the portable parts (`rings.rs`, `pattern.rs`); `main` then only says how to build.
#![cfg_attr(xenblk_xen_pv, no_std, no_main)]
// The host build exists for the unit tests; the kernel build uses everything.
#![cfg_attr(not(xenblk_xen_pv), allow(dead_code))]

mod pattern;
mod rings;

#[cfg(xenblk_xen_pv)]
mod hyp;
#[cfg(xenblk_xen_pv)]
#[path = "../../nostd-check/src/memfns.rs"]
mod memfns;
#[cfg(xenblk_xen_pv)]
mod pv;
#[cfg(xenblk_xen_pv)]
mod rt;

#[cfg(xenblk_xen_pv)]
pub use pv::kmain;

#[cfg(not(xenblk_xen_pv))]
fn main() {
    // Keep the portable modules linked into the host build (they are tested by `cargo test`).
    let mut b = [0u8; 20];
    let _ = rings::fmt_u32(xenblk::config::FRONTEND_POOL_GRANTS as u32, &mut b);
    let _ = pattern::Pattern::new(1);
    println!("xenblk-xen-pv: the guest kernel is built by boards/xen-pv/build.sh");
}
