//! The freestanding runtime: entry point, exit, console output, panic handler, the memory
//! functions the compiler calls, and (for `pool-dynamic`) a bump allocator.
//!
//! x86_64 Linux only: system calls are made with the `syscall` instruction.

use core::arch::{asm, naked_asm};
use core::fmt::Write;

const SYS_WRITE: usize = 1;
const SYS_EXIT_GROUP: usize = 231;

/// Process entry. The kernel enters with the stack pointer 16-byte aligned on `argc` and no
/// return address; realign and call into Rust with a normal frame.
#[unsafe(naked)]
#[unsafe(no_mangle)]
extern "C" fn _start() -> ! {
    naked_asm!("xor ebp, ebp", "and rsp, -16", "call {main}", "ud2", main = sym main)
}

extern "C" fn main() -> ! {
    let code = crate::check::run();
    if code == 0 {
        write(1, crate::check::SUMMARY.as_bytes());
        write(1, b"\n");
    } else {
        let mut w = Console::new(2);
        let _ = writeln!(w, "xenblk-nostd-check: check {code} failed");
    }
    exit(code)
}

/// `write(2)` on `fd`, retrying short writes; errors are ignored.
fn write(fd: usize, mut buf: &[u8]) {
    while !buf.is_empty() {
        let ret: isize;
        // SAFETY: the write system call only reads `buf.len()` bytes from `buf`, which is a
        // valid slice; rcx and r11 are clobbered by `syscall`.
        unsafe {
            asm!("syscall", inlateout("rax") SYS_WRITE => ret, in("rdi") fd, in("rsi") buf.as_ptr(),
                 in("rdx") buf.len(), lateout("rcx") _, lateout("r11") _, options(nostack, readonly));
        }
        if ret <= 0 {
            return;
        }
        buf = &buf[ret as usize..];
    }
}

/// `exit_group(2)`.
fn exit(code: i32) -> ! {
    // SAFETY: exit_group ends the process and never returns.
    unsafe { asm!("syscall", in("rax") SYS_EXIT_GROUP, in("rdi") code as isize, options(noreturn, nostack)) }
}

/// A line buffer written to a file descriptor.
struct Console {
    fd: usize,
    buf: [u8; 256],
    len: usize,
}

impl Console {
    fn new(fd: usize) -> Self {
        Console { fd, buf: [0; 256], len: 0 }
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                write(self.fd, &self.buf);
                self.len = 0;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        if s.ends_with('\n') {
            write(self.fd, &self.buf[..self.len]);
            self.len = 0;
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut w = Console::new(2);
    let _ = writeln!(w, "xenblk-nostd-check: {info}");
    exit(101)
}

/// The precompiled `core` is built for unwinding and its unwind tables name this personality
/// routine. This program aborts on panic (`panic = "abort"`, and the handler above exits), so
/// no unwinder ever runs and the routine is never called; it only has to exist.
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

#[cfg(feature = "pool-dynamic")]
mod heap {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicUsize, Ordering};

    const HEAP_BYTES: usize = 4 << 20;

    #[repr(C, align(4096))]
    struct Arena(UnsafeCell<[u8; HEAP_BYTES]>);

    // SAFETY: the arena is only handed out in disjoint pieces by `Bump::alloc`.
    unsafe impl Sync for Arena {}

    static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_BYTES]));

    /// A bump allocator over a static arena: frees only the most recent allocation.
    struct Bump {
        next: AtomicUsize,
    }

    // SAFETY: `alloc` returns disjoint, suitably aligned ranges inside the arena (or null when
    // it is exhausted); `dealloc` only rolls back the most recent allocation, which no one else
    // can hold.
    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let base = ARENA.0.get() as usize;
            let mut cur = self.next.load(Ordering::Relaxed);
            loop {
                let start = (base + cur).next_multiple_of(layout.align()) - base;
                let Some(end) = start.checked_add(layout.size()).filter(|&e| e <= HEAP_BYTES) else {
                    return core::ptr::null_mut();
                };
                match self.next.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return (base + start) as *mut u8,
                    Err(now) => cur = now,
                }
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let end = ptr as usize - ARENA.0.get() as usize + layout.size();
            let start = ptr as usize - ARENA.0.get() as usize;
            let _ = self.next.compare_exchange(end, start, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    #[global_allocator]
    static ALLOCATOR: Bump = Bump { next: AtomicUsize::new(0) };
}
