//! Xen PV x86_64 interface: the boot entry, the ELF notes, the hypercall page and thin
//! wrappers around the hypercalls the guest uses. Numbers and layouts are those of Xen's
//! public ABI (xen.h, sched.h, event_channel.h, grant_table.h, xen/io/*.h).

use core::arch::{asm, global_asm};

// ---- hypercall numbers (offset in the hypercall page = number * 32)
const HC_MMU_UPDATE: usize = 1;
const HC_UPDATE_VA_MAPPING: usize = 14;
const HC_CONSOLE_IO: usize = 18;
const HC_GRANT_TABLE_OP: usize = 20;
const HC_SCHED_OP: usize = 29;
const HC_EVENT_CHANNEL_OP: usize = 32;

// ---- sub-operations
const CONSOLEIO_WRITE: usize = 0;
const SCHEDOP_SHUTDOWN: usize = 2;
const SCHEDOP_POLL: usize = 3;
const EVTCHNOP_CLOSE: usize = 3;
const EVTCHNOP_SEND: usize = 4;
const EVTCHNOP_ALLOC_UNBOUND: usize = 6;
const EVTCHNOP_BIND_INTERDOMAIN: usize = 0;
const GNTTABOP_SETUP_TABLE: usize = 2;
/// `update_va_mapping` flag: invalidate the one TLB entry, on this vCPU only.
const UVMF_INVLPG: usize = 2;

/// `SHUTDOWN_poweroff`.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// `SHUTDOWN_crash`.
pub const SHUTDOWN_CRASH: u32 = 3;
/// `DOMID_SELF`.
pub const DOMID_SELF: u16 = 0x7ff0;
/// PTE bits for a normal data page: present, writable, user (the PV kernel runs in ring 3),
/// accessed, dirty.
pub const PTE_DATA: u64 = 0x1 | 0x2 | 0x4 | 0x20 | 0x40;

/// Stack of the boot vCPU.
pub const STACK_BYTES: usize = 256 * 1024;

#[repr(C, align(16))]
pub struct Stack([u8; STACK_BYTES]);

/// The boot stack (in .bss).
#[unsafe(no_mangle)]
pub static mut BOOT_STACK: Stack = Stack([0; STACK_BYTES]);

// The entry point, the hypercall page and the ELF notes that tell the domain builder how to
// load us: ENTRY(1), HYPERCALL_PAGE(2), VIRT_BASE(3), PADDR_OFFSET(4), XEN_VERSION(5),
// GUEST_OS(6), GUEST_VERSION(7), LOADER(8). Xen enters `_start` in 64-bit mode with %rsi =
// the virtual address of start_info and upcalls masked; we switch to our own stack.
global_asm!(
    ".section .text.boot,\"ax\",@progbits",
    ".globl _start",
    "_start:",
    "lea rsp, [rip + {stack} + {stack_bytes}]",
    "xor ebp, ebp",
    "mov rdi, rsi",
    "call {main}",
    "ud2",
    "",
    ".section .text.hypercall_page,\"ax\",@progbits",
    ".balign 4096",
    ".globl hypercall_page",
    "hypercall_page:",
    ".fill 4096, 1, 0xcc",
    "",
    ".section .note.Xen,\"a\",@note",
    ".macro xennote type, desc_start, desc_end",
    ".balign 4",
    ".long 4",
    ".long \\desc_end - \\desc_start",
    ".long \\type",
    ".asciz \"Xen\"",
    ".balign 4",
    ".endm",
    "xennote 6, 60f, 61f",
    "60: .asciz \"xenblk\"",
    "61: .balign 4",
    "xennote 7, 62f, 63f",
    "62: .asciz \"0.1\"",
    "63: .balign 4",
    "xennote 5, 64f, 65f",
    "64: .asciz \"xen-3.0\"",
    "65: .balign 4",
    "xennote 8, 66f, 67f",
    "66: .asciz \"generic\"",
    "67: .balign 4",
    "xennote 3, 68f, 69f",
    "68: .quad 0",
    "69:",
    "xennote 4, 70f, 71f",
    "70: .quad 0",
    "71:",
    "xennote 1, 72f, 73f",
    "72: .quad _start",
    "73:",
    "xennote 2, 74f, 75f",
    "74: .quad hypercall_page",
    "75:",
    ".text",
    stack = sym BOOT_STACK,
    stack_bytes = const STACK_BYTES,
    main = sym crate::kmain,
);

unsafe extern "C" {
    static hypercall_page: [u8; 4096];
}

/// Calls hypercall `nr` with up to five arguments through the hypercall page.
///
/// # Safety
///
/// The arguments must be valid for the hypercall: any pointer among them must point to
/// memory of the layout the hypercall expects, valid for the access it makes.
unsafe fn hypercall(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    let entry = (&raw const hypercall_page as usize) + nr * 32;
    let ret: isize;
    // SAFETY: the hypercall page was filled by Xen at domain build time with one 32-byte
    // stub per hypercall; it takes its arguments in rdi, rsi, rdx, r10, r8, may clobber them
    // and rcx/r11 and returns in rax. The caller vouches for the arguments.
    unsafe {
        asm!("call {entry}", entry = in(reg) entry,
             inlateout("rdi") a1 => _, inlateout("rsi") a2 => _, inlateout("rdx") a3 => _,
             inlateout("r10") a4 => _, inlateout("r8") a5 => _,
             lateout("rax") ret, lateout("rcx") _, lateout("r11") _);
    }
    ret
}

/// `console_io(CONSOLEIO_write)`: Xen's own console. Only privileged (or debug-built Xen)
/// accepts it from a domU; used as a best-effort early trace.
pub fn console_io_write(s: &[u8]) -> isize {
    // SAFETY: Xen reads `s.len()` bytes from a valid slice.
    unsafe { hypercall(HC_CONSOLE_IO, CONSOLEIO_WRITE, s.len(), s.as_ptr() as usize, 0, 0) }
}

/// Remaps the page at virtual address `va` to the machine frame of `pte` (`update_va_mapping`).
///
/// # Safety
///
/// `va` must be a page of this image that no Rust reference points into; afterwards it
/// aliases the frame in `pte`.
pub unsafe fn update_va_mapping(va: usize, pte: u64) -> isize {
    // SAFETY: a plain value call; the caller vouches that replacing the mapping is sound.
    unsafe { hypercall(HC_UPDATE_VA_MAPPING, va, pte as usize, UVMF_INVLPG, 0, 0) }
}

/// One `mmu_update` request (`MMU_NORMAL_PT_UPDATE`: ptr = machine address of a PTE).
#[repr(C)]
pub struct MmuUpdate {
    pub ptr: u64,
    pub val: u64,
}

/// `mmu_update` on `reqs` for DOMID_SELF; returns the number done or a negative errno.
///
/// # Safety
///
/// The updates must keep every mapping that Rust code relies on valid.
#[allow(dead_code)]
pub unsafe fn mmu_update(reqs: &mut [MmuUpdate]) -> isize {
    let mut done: u32 = 0;
    // SAFETY: Xen reads `reqs.len()` entries and writes `done`.
    unsafe {
        hypercall(
            HC_MMU_UPDATE,
            reqs.as_mut_ptr() as usize,
            reqs.len(),
            (&raw mut done) as usize,
            DOMID_SELF as usize,
            0,
        )
    }
}

/// `sched_op(SCHEDOP_shutdown)`: never returns.
pub fn shutdown(reason: u32) -> ! {
    let arg = reason;
    loop {
        // SAFETY: Xen reads one u32.
        unsafe { hypercall(HC_SCHED_OP, SCHEDOP_SHUTDOWN, (&raw const arg) as usize, 0, 0, 0) };
    }
}

#[repr(C)]
struct SchedPoll {
    ports: *const u32,
    nr_ports: u32,
    timeout: u64,
}

/// `sched_op(SCHEDOP_poll)`: blocks until one of `ports` is pending or the system time
/// reaches `deadline_ns` (0 = no deadline). Returns at once if one is already pending.
pub fn poll(ports: &[u32], deadline_ns: u64) -> isize {
    let p = SchedPoll { ports: ports.as_ptr(), nr_ports: ports.len() as u32, timeout: deadline_ns };
    // SAFETY: Xen reads the struct and `nr_ports` ports from a valid slice.
    unsafe { hypercall(HC_SCHED_OP, SCHEDOP_POLL, (&raw const p) as usize, 0, 0, 0) }
}

/// `EVTCHNOP_alloc_unbound`: a port in this domain that `remote` may bind.
pub fn evtchn_alloc_unbound(remote: u16) -> Result<u32, isize> {
    #[repr(C)]
    struct AllocUnbound {
        dom: u16,
        remote_dom: u16,
        port: u32,
    }
    let mut a = AllocUnbound { dom: DOMID_SELF, remote_dom: remote, port: 0 };
    // SAFETY: Xen reads and writes the struct.
    let rc = unsafe { hypercall(HC_EVENT_CHANNEL_OP, EVTCHNOP_ALLOC_UNBOUND, (&raw mut a) as usize, 0, 0, 0) };
    if rc == 0 { Ok(a.port) } else { Err(rc) }
}

/// `EVTCHNOP_bind_interdomain`.
pub fn evtchn_bind_interdomain(remote: u16, remote_port: u32) -> Result<u32, isize> {
    #[repr(C)]
    struct Bind {
        remote_dom: u16,
        remote_port: u32,
        local_port: u32,
    }
    let mut b = Bind { remote_dom: remote, remote_port, local_port: 0 };
    // SAFETY: Xen reads and writes the struct.
    let rc = unsafe { hypercall(HC_EVENT_CHANNEL_OP, EVTCHNOP_BIND_INTERDOMAIN, (&raw mut b) as usize, 0, 0, 0) };
    if rc == 0 { Ok(b.local_port) } else { Err(rc) }
}

/// `EVTCHNOP_send`.
pub fn evtchn_send(port: u32) -> isize {
    let p = port;
    // SAFETY: Xen reads one u32.
    unsafe { hypercall(HC_EVENT_CHANNEL_OP, EVTCHNOP_SEND, (&raw const p) as usize, 0, 0, 0) }
}

/// `EVTCHNOP_close`.
pub fn evtchn_close(port: u32) -> isize {
    let p = port;
    // SAFETY: Xen reads one u32.
    unsafe { hypercall(HC_EVENT_CHANNEL_OP, EVTCHNOP_CLOSE, (&raw const p) as usize, 0, 0, 0) }
}

/// `GNTTABOP_setup_table` for DOMID_SELF: fills `frames` with the machine frames of the
/// first `frames.len()` grant-table frames. Returns the op's status (0 = GNTST_okay) or
/// the hypercall's error.
pub fn gnttab_setup_table(frames: &mut [u64]) -> isize {
    #[repr(C)]
    struct Setup {
        dom: u16,
        nr_frames: u32,
        status: i16,
        frame_list: *mut u64,
    }
    let mut s = Setup { dom: DOMID_SELF, nr_frames: frames.len() as u32, status: 0, frame_list: frames.as_mut_ptr() };
    // SAFETY: Xen reads the struct and writes `nr_frames` entries into `frames`.
    let rc = unsafe { hypercall(HC_GRANT_TABLE_OP, GNTTABOP_SETUP_TABLE, (&raw mut s) as usize, 1, 0, 0) };
    if rc != 0 { rc } else { s.status as isize }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the counter (Xen lets PV guests execute it).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    ((hi as u64) << 32) | lo as u64
}
