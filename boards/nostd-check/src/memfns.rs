//! The freestanding runtime pieces every no-libc binary of this project needs: the unwinding
//! personality stub and the memory functions the compiler calls. Shared by boards/nostd-check
//! and boards/xen-pv (which includes this file with `#[path]`).
//!
//! The precompiled `core` is built for unwinding and its unwind tables name the personality
//! routine. Both binaries abort on panic, so no unwinder ever runs; it only has to exist.

use core::arch::asm;
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

// ---- The memory functions LLVM emits calls to. libc would provide them; here nothing does.
// Each is written with `rep` string instructions (or a volatile loop) so that the compiler
// cannot turn its body back into a call to itself. The direction flag is clear on entry to
// every function (System V ABI).

/// `memcpy`.
///
/// # Safety
///
/// `dst` and `src` must be valid for `n` bytes and must not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes; `rep movsb` copies
    // exactly `n` bytes forward from rsi to rdi.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// `memmove`.
///
/// # Safety
///
/// `dst` and `src` must be valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when the destination starts before the source
        // or the ranges do not overlap; both are valid per the caller.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: overlapping with dst above src: copy backwards from the last byte (n > 0 here,
    // since an empty range cannot overlap). `std` sets the direction flag and `cld` clears
    // it again before returning, as the ABI requires.
    unsafe {
        asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
             inout("rsi") src.add(n - 1) => _, options(nostack));
    }
    dst
}

/// `memset`.
///
/// # Safety
///
/// `dst` must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dst` is valid for `n` bytes; `rep stosb` stores al
    // `n` times.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// `memcmp`.
///
/// # Safety
///
/// `a` and `b` must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n` and both ranges are valid for `n` bytes. Volatile reads keep the
        // loop a loop (it cannot be recognised as a call to memcmp/bcmp).
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

/// `bcmp`: zero iff equal.
///
/// # Safety
///
/// `a` and `b` must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
