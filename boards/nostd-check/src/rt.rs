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
