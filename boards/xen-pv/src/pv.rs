//! The PV guest proper: start of day, the platform traits over hypercalls, and the disk
//! test the rig runs.
//!
//! Memory map (all inside the image, so the domain builder's initial page tables already
//! cover it; pseudo-physical frame = virtual address / 4096 because VIRT_BASE is 0):
//! * `HOLES`: pages whose mapping is replaced (`update_va_mapping`) by the shared-info
//!   page, the console ring, the xenstore ring and the grant-table frames;
//! * `POOL`: the pages the frontend may allocate (ring + persistent-grant pool), sized from
//!   the build config; granted to the backend by their machine frame (`mfn_list[pfn]`);
//! * `IO`: the private test buffers.

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use md5::{Digest, Md5};
use xenblk::config;
use xenblk::modes::frontend::{Frontend, FrontendConfig, Io as BlkIo, Phase, Status, SubmitError};
use xenblk::platform::{EventChannels, Grants, Page, Pages, PlatformError, Port, Result, Tx, Wait, Wake, XenStore};
use xenblk::proto::grant::{DomId, ENTRIES_PER_FRAME, GrantRef, GrantTableV1, NR_RESERVED_ENTRIES, RevokeError};
use xenblk::proto::shmem::SharedMem;

use crate::hyp;
use crate::pattern::{Pattern, hex};
use crate::rings::{Bell, ConsoleRing, XsClient, fmt_u32, parse_u32, ty};

const PAGE: usize = 4096;

/// Pages the frontend can allocate: the persistent-grant pool, the ring(s), a few spare.
pub const POOL_PAGES: usize = config::FRONTEND_POOL_GRANTS + config::RING_PAGES * config::RING_QUEUES + 4;
/// Grant-table frames: the pool plus the reserved entries, rounded up.
const GNT_FRAMES: usize = (POOL_PAGES + NR_RESERVED_ENTRIES as usize).div_ceil(ENTRIES_PER_FRAME);
const HOLE_SHARED: usize = 0;
const HOLE_CONSOLE: usize = 1;
const HOLE_XENSTORE: usize = 2;
const HOLE_GNTTAB: usize = 3;
const HOLE_PAGES: usize = HOLE_GNTTAB + GNT_FRAMES;

/// Test data: this many MiB at 1 MiB into the disk (the rig's dom0 checks the same range).
const TEST_MIB: u64 = 8;
/// Bytes per write/read call.
const CHUNK: usize = 64 * 1024;
/// Queued phase: this many MiB at 16 MiB, in requests of QD_REQ bytes, as many in flight
/// as the ring and the pool allow.
const QD_MIB: u64 = 4;
const QD_REQ: usize = 32 * 1024;

#[repr(C, align(4096))]
struct Frames<const N: usize>([[u8; PAGE]; N]);

static mut HOLES: Frames<HOLE_PAGES> = Frames([[0; PAGE]; HOLE_PAGES]);
static mut POOL: Frames<POOL_PAGES> = Frames([[0; PAGE]; POOL_PAGES]);
#[repr(C, align(4096))]
struct Io {
    data: [u8; CHUNK],
    back: [u8; CHUNK],
}
static mut IO: Io = Io { data: [0; CHUNK], back: [0; CHUNK] };

/// Virtual address of the shared-info page once mapped (0 before).
static SHARED_VA: AtomicUsize = AtomicUsize::new(0);
/// Virtual address of the console ring once mapped, and its port.
static CONS_VA: AtomicUsize = AtomicUsize::new(0);
static CONS_PORT: AtomicUsize = AtomicUsize::new(0);

fn hole(i: usize) -> usize {
    // SAFETY: only the address is taken; the holes are never accessed as a Rust object.
    unsafe { (&raw mut HOLES.0[i]) as usize }
}

// ------------------------------------------------------------------ shared info, time

fn shared() -> SharedMem {
    let va = SHARED_VA.load(Ordering::Relaxed);
    assert!(va != 0, "shared info not mapped");
    // SAFETY: `va` is the page-aligned hole that maps the shared-info page (4096 bytes),
    // mapped for the rest of the guest's life; all accesses go through SharedMem.
    unsafe { SharedMem::new(va as *mut u8, PAGE) }
}

/// The 64-bit word of `evtchn_pending` (offset 2048 of shared info) holding `port`.
fn pending_word(port: u32) -> &'static AtomicU64 {
    let va = SHARED_VA.load(Ordering::Relaxed) + 2048 + (port as usize / 64) * 8;
    // SAFETY: the bitmap is 4096 bits (512 bytes) at offset 2048 of the mapped shared-info
    // page; ports here are < 4096 (Xen's 2-level ABI limit for 64-bit guests), the word is
    // 8-byte aligned, and Xen updates it only with atomic bit operations.
    unsafe { &*(va as *const AtomicU64) }
}

fn test_and_clear_pending(port: u32) -> bool {
    if port >= 4096 {
        return false;
    }
    let bit = 1u64 << (port % 64);
    pending_word(port).fetch_and(!bit, Ordering::AcqRel) & bit != 0
}

/// Xen system time in ns (vCPU 0's `vcpu_time_info` at offset 32 of shared info).
fn now_ns() -> u64 {
    let s = shared();
    loop {
        let v0 = s.load_u32(32, Ordering::Acquire);
        let mut b = [0u8; 24];
        s.read_bytes(40, &mut b);
        fence(Ordering::Acquire);
        let v1 = s.load_u32(32, Ordering::Acquire);
        if v0 & 1 != 0 || v0 != v1 {
            continue;
        }
        let tsc_ts = u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8]));
        let sys = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
        let mul = u32::from_le_bytes(b[16..20].try_into().unwrap_or([0; 4]));
        let shift = b[20] as i8;
        let mut d = hyp::rdtsc().wrapping_sub(tsc_ts);
        if shift < 0 {
            d >>= (-shift) as u32;
        } else {
            d <<= shift as u32;
        }
        return sys.wrapping_add(((d as u128 * mul as u128) >> 32) as u64);
    }
}

/// Polls `port` for at most `ms` milliseconds and consumes its pending bit.
fn poll_one(port: u32, ms: u64) {
    if !test_and_clear_pending(port) {
        hyp::poll(&[port], now_ns() + ms * 1_000_000);
        test_and_clear_pending(port);
    }
}

// ------------------------------------------------------------------ console

struct PortBell(u32);

impl Bell for PortBell {
    fn notify(&mut self) {
        hyp::evtchn_send(self.0);
    }
    fn wait(&mut self) {
        poll_one(self.0, 100);
    }
}

/// Console output: the console ring once mapped, Xen's debug console before.
pub struct Con;

impl Write for Con {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let va = CONS_VA.load(Ordering::Relaxed);
        if va == 0 {
            hyp::console_io_write(s.as_bytes());
            return Ok(());
        }
        // SAFETY: `va` is the hole mapping the console page for the guest's life.
        let ring = ConsoleRing::new(unsafe { SharedMem::new(va as *mut u8, PAGE) });
        ring.write(s.as_bytes(), &mut PortBell(CONS_PORT.load(Ordering::Relaxed) as u32));
        Ok(())
    }
}

macro_rules! say {
    ($($t:tt)*) => {{ let _ = writeln!(Con, $($t)*); }};
}

/// The panic handler's body: report on the console, then crash the domain.
pub fn panic_report(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("XENBLK: RESULT FAIL panic: {info}");
    hyp::shutdown(hyp::SHUTDOWN_CRASH)
}

// ------------------------------------------------------------------ the platform

/// xenblk's platform traits over hypercalls.
pub struct Pv {
    xs: XsClient<PortBell>,
    xs_port: u32,
    domid: DomId,
    gnt: GrantTableV1,
    gnt_used: [u64; GNT_FRAMES * ENTRIES_PER_FRAME / 64],
    gnt_next: u32,
    pool_used: [bool; POOL_PAGES],
    p2m: *const u64,
    nr_pages: u64,
    ports: [u32; 8],
    nports: usize,
    /// Counters printed at the end.
    pub grants: u64,
    pub revokes: u64,
    /// Revokes refused because the backend still mapped the page.
    pub revoke_in_use: u64,
    pub polls: u64,
}

impl Pv {
    fn pool_base() -> usize {
        // SAFETY: only the address is taken.
        unsafe { (&raw mut POOL.0[0]) as usize }
    }

    fn mfn(&self, va: usize) -> Result<u64> {
        let pfn = (va / PAGE) as u64;
        if pfn >= self.nr_pages {
            return Err(PlatformError::Invalid);
        }
        // SAFETY: `p2m` is start_info.mfn_list, an array of `nr_pages` machine frame numbers
        // mapped by the domain builder for the guest's life; `pfn < nr_pages`.
        Ok(unsafe { core::ptr::read_volatile(self.p2m.add(pfn as usize)) })
    }

    fn page_at(&self, idx: usize) -> Result<Page> {
        let va = Self::pool_base() + idx * PAGE;
        // SAFETY: page `idx` of POOL belongs to this allocation until freed; it is only
        // accessed through SharedMem (it is shared with the backend once granted).
        let mem = unsafe { SharedMem::new(va as *mut u8, PAGE) };
        mem.zero(0, PAGE);
        Ok(Page { mem, frame: self.mfn(va)? })
    }

    fn pool_index(mem: &SharedMem) -> Option<usize> {
        let off = (mem.as_ptr() as usize).checked_sub(Self::pool_base())?;
        (off % PAGE == 0 && off / PAGE < POOL_PAGES).then_some(off / PAGE)
    }

    /// Lists `path`'s children into `out` (NUL-separated); returns the payload length.
    pub fn directory(&mut self, path: &str, out: &mut [u8]) -> Result<usize> {
        let n = self.xs.request(ty::DIRECTORY, 0, &[path.as_bytes(), b"\0"])?;
        let p = self.xs.payload(n);
        if p.len() > out.len() {
            return Err(PlatformError::Invalid);
        }
        out[..p.len()].copy_from_slice(p);
        Ok(p.len())
    }

    fn gnt_is_used(&self, r: u32) -> bool {
        self.gnt_used[r as usize / 64] & (1 << (r % 64)) != 0
    }
    fn gnt_set(&mut self, r: u32, used: bool) {
        let w = &mut self.gnt_used[r as usize / 64];
        if used {
            *w |= 1 << (r % 64);
        } else {
            *w &= !(1 << (r % 64));
        }
    }
}

impl Pages for Pv {
    fn alloc_page(&mut self) -> Result<Page> {
        let idx = self.pool_used.iter().position(|u| !u).ok_or(PlatformError::NoSpace)?;
        let p = self.page_at(idx)?;
        self.pool_used[idx] = true;
        Ok(p)
    }

    fn alloc_pages_contiguous(&mut self, n: usize) -> Result<(SharedMem, [u64; 16])> {
        if n == 0 || n > 16 {
            return Err(PlatformError::Invalid);
        }
        let start = (0..=POOL_PAGES.saturating_sub(n))
            .find(|&s| self.pool_used[s..s + n].iter().all(|u| !u))
            .ok_or(PlatformError::NoSpace)?;
        let mut frames = [0u64; 16];
        for (i, f) in frames.iter_mut().enumerate().take(n) {
            *f = self.page_at(start + i)?.frame;
        }
        for u in &mut self.pool_used[start..start + n] {
            *u = true;
        }
        // SAFETY: pages start..start+n of POOL are contiguous and now owned by the caller.
        let mem = unsafe { SharedMem::new((Self::pool_base() + start * PAGE) as *mut u8, n * PAGE) };
        Ok((mem, frames))
    }

    fn free_page(&mut self, page: Page) {
        if let Some(i) = Self::pool_index(&page.mem) {
            self.pool_used[i] = false;
        }
    }

    fn free_pages_contiguous(&mut self, mem: SharedMem, frames: &[u64]) {
        if let Some(i) = Self::pool_index(&mem) {
            for u in self.pool_used.iter_mut().skip(i).take(frames.len()) {
                *u = false;
            }
        }
    }
}

impl Grants for Pv {
    fn grant(&mut self, frame: u64, domid: DomId, readonly: bool) -> Result<GrantRef> {
        let frame = u32::try_from(frame).map_err(|_| PlatformError::Invalid)?;
        let len = self.gnt.len();
        let first = NR_RESERVED_ENTRIES;
        let span = len - first;
        for k in 0..span {
            let r = first + (self.gnt_next + k) % span;
            if !self.gnt_is_used(r) && self.gnt.grant(GrantRef(r), domid, frame, readonly) {
                self.gnt_set(r, true);
                self.gnt_next = (r - first + 1) % span;
                self.grants += 1;
                return Ok(GrantRef(r));
            }
        }
        Err(PlatformError::NoSpace)
    }

    fn end_access(&mut self, gref: GrantRef) -> core::result::Result<(), RevokeError> {
        if gref.0 < NR_RESERVED_ENTRIES || gref.0 >= self.gnt.len() || !self.gnt_is_used(gref.0) {
            return Err(RevokeError::NotGranted);
        }
        if let Err(e) = self.gnt.revoke(gref) {
            self.revoke_in_use += u64::from(e == RevokeError::InUse);
            return Err(e);
        }
        self.gnt_set(gref.0, false);
        self.revokes += 1;
        Ok(())
    }

    fn is_mapped(&mut self, gref: GrantRef) -> bool {
        self.gnt.in_use(gref)
    }
}

fn errno(rc: isize) -> PlatformError {
    match -rc {
        2 => PlatformError::NotFound,
        1 | 13 => PlatformError::Denied,
        11 => PlatformError::Again,
        12 | 28 => PlatformError::NoSpace,
        22 => PlatformError::Invalid,
        e => PlatformError::Errno(e as i32),
    }
}

impl EventChannels for Pv {
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port> {
        if self.nports == self.ports.len() {
            return Err(PlatformError::NoSpace);
        }
        let p = hyp::evtchn_alloc_unbound(remote.0).map_err(errno)?;
        self.ports[self.nports] = p;
        self.nports += 1;
        Ok(Port(p))
    }

    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port> {
        if self.nports == self.ports.len() {
            return Err(PlatformError::NoSpace);
        }
        let p = hyp::evtchn_bind_interdomain(remote.0, remote_port.0).map_err(errno)?;
        self.ports[self.nports] = p;
        self.nports += 1;
        Ok(Port(p))
    }

    fn notify(&mut self, port: Port) -> Result<()> {
        match hyp::evtchn_send(port.0) {
            0 => Ok(()),
            rc => Err(errno(rc)),
        }
    }

    fn unbind(&mut self, port: Port) {
        hyp::evtchn_close(port.0);
        if let Some(i) = self.ports[..self.nports].iter().position(|&p| p == port.0) {
            self.ports.copy_within(i + 1..self.nports, i);
            self.nports -= 1;
        }
    }
}

impl XenStore for Pv {
    fn read(&mut self, tx: Tx, path: &str, buf: &mut [u8]) -> Result<usize> {
        let n = self.xs.request(ty::READ, tx.0, &[path.as_bytes(), b"\0"])?;
        let p = self.xs.payload(n);
        if p.len() > buf.len() {
            return Err(PlatformError::Invalid);
        }
        buf[..p.len()].copy_from_slice(p);
        Ok(p.len())
    }

    fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<()> {
        self.xs.request(ty::WRITE, tx.0, &[path.as_bytes(), b"\0", value]).map(|_| ())
    }

    fn remove(&mut self, tx: Tx, path: &str) -> Result<()> {
        self.xs.request(ty::RM, tx.0, &[path.as_bytes(), b"\0"]).map(|_| ())
    }

    fn transaction_start(&mut self) -> Result<Tx> {
        let n = self.xs.request(ty::TRANSACTION_START, 0, &[b"\0"])?;
        parse_u32(self.xs.payload(n)).map(Tx).ok_or(PlatformError::Invalid)
    }

    fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<()> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.xs.request(ty::TRANSACTION_END, tx.0, &[arg]).map(|_| ())
    }

    fn watch(&mut self, path: &str, token: u32) -> Result<()> {
        let mut b = [0u8; 20];
        let t = fmt_u32(token, &mut b);
        self.xs.request(ty::WATCH, 0, &[path.as_bytes(), b"\0", t, b"\0"]).map(|_| ())
    }

    fn unwatch(&mut self, path: &str, token: u32) -> Result<()> {
        let mut b = [0u8; 20];
        let t = fmt_u32(token, &mut b);
        self.xs.request(ty::UNWATCH, 0, &[path.as_bytes(), b"\0", t, b"\0"]).map(|_| ())
    }

    fn own_domid(&mut self) -> DomId {
        self.domid
    }
}

impl Wait for Pv {
    fn wait(&mut self, timeout_ms: Option<u64>) -> Wake {
        let deadline = timeout_ms.map(|ms| now_ns().saturating_add(ms.saturating_mul(1_000_000)));
        loop {
            let mut w = Wake::default();
            // Consume the xenstore doorbell first, then drain: a later ring stays pending.
            test_and_clear_pending(self.xs_port);
            self.xs.pump();
            w.xenstore = self.xs.take_watch();
            for &p in &self.ports[..self.nports] {
                if test_and_clear_pending(p) {
                    w.event = true;
                }
            }
            if w.event || w.xenstore {
                return w;
            }
            if deadline.is_some_and(|d| now_ns() >= d) {
                w.timeout = true;
                return w;
            }
            let mut all = [0u32; 9];
            all[0] = self.xs_port;
            all[1..=self.nports].copy_from_slice(&self.ports[..self.nports]);
            self.polls += 1;
            hyp::poll(&all[..=self.nports], deadline.unwrap_or(0));
        }
    }
}

// ------------------------------------------------------------------ start of day

/// The fields of `start_info` (x86_64 layout) the guest uses.
struct StartInfo {
    nr_pages: u64,
    shared_info: u64,
    store_mfn: u64,
    store_evtchn: u32,
    console_mfn: u64,
    console_evtchn: u32,
    mfn_list: u64,
}

impl StartInfo {
    /// # Safety
    ///
    /// `si` must be the start_info pointer Xen passed to `_start`.
    unsafe fn read(si: *const u8) -> StartInfo {
        // SAFETY: start_info is mapped by the domain builder, at least 1168 bytes; the
        // offsets are those of the public x86_64 layout, all naturally aligned.
        unsafe {
            let q = |off: usize| core::ptr::read_volatile(si.add(off) as *const u64);
            let d = |off: usize| core::ptr::read_volatile(si.add(off) as *const u32);
            StartInfo {
                nr_pages: q(32),
                shared_info: q(40),
                store_mfn: q(56),
                store_evtchn: d(64),
                console_mfn: q(72),
                console_evtchn: d(80),
                mfn_list: q(104),
            }
        }
    }
}

/// Maps machine frame `mfn` at hole `i` and returns its virtual address.
fn map_hole(i: usize, mfn: u64) -> core::result::Result<usize, isize> {
    let va = hole(i);
    // SAFETY: the hole is a page of this image's .bss that no Rust reference points into;
    // from now on it is only accessed through SharedMem or atomics.
    let rc = unsafe { hyp::update_va_mapping(va, (mfn << 12) | hyp::PTE_DATA) };
    if rc == 0 { Ok(va) } else { Err(rc) }
}

fn fail(why: core::fmt::Arguments<'_>) -> ! {
    say!("XENBLK: RESULT FAIL {why}");
    hyp::shutdown(hyp::SHUTDOWN_POWEROFF)
}

/// Rust entry, called by `_start` with the start_info pointer.
///
/// # Safety
///
/// Called once, by `_start`, with the pointer Xen passed.
pub unsafe extern "C" fn kmain(si: *const u8) -> ! {
    hyp::console_io_write(b"xenblk-xen-pv: entered\n");
    // SAFETY: the caller passes Xen's start_info pointer.
    let si = unsafe { StartInfo::read(si) };
    let Ok(sva) = map_hole(HOLE_SHARED, si.shared_info >> 12) else { hyp::shutdown(hyp::SHUTDOWN_CRASH) };
    SHARED_VA.store(sva, Ordering::Relaxed);
    // No event upcalls: we never register a callback and wait with SCHEDOP_poll.
    shared().write_bytes(1, &[1]);
    let Ok(cva) = map_hole(HOLE_CONSOLE, si.console_mfn) else { hyp::shutdown(hyp::SHUTDOWN_CRASH) };
    CONS_PORT.store(si.console_evtchn as usize, Ordering::Relaxed);
    CONS_VA.store(cva, Ordering::Relaxed);
    say!(
        "XENBLK: hello from the xenblk PV guest: nr_pages={} console evtchn={} store evtchn={} config={} pool_pages={} image_end={:#x}",
        si.nr_pages,
        si.console_evtchn,
        si.store_evtchn,
        config::CONFIG_FILE,
        POOL_PAGES,
        end_of_image()
    );

    let xva = match map_hole(HOLE_XENSTORE, si.store_mfn) {
        Ok(v) => v,
        Err(rc) => fail(format_args!("mapping the xenstore ring: {rc}")),
    };
    // SAFETY: the hole maps the xenstore page for the guest's life.
    let xmem = unsafe { SharedMem::new(xva as *mut u8, PAGE) };
    let mut xs = XsClient::new(xmem, PortBell(si.store_evtchn));
    let domid = match xs.request(ty::READ, 0, &[b"domid\0"]) {
        Ok(n) => parse_u32(xs.payload(n)).unwrap_or(0x7ff0) as u16,
        Err(e) => fail(format_args!("xenstore read domid: {e:?}")),
    };
    say!("XENBLK: xenstore ring up, domid={domid}");

    let mut frames = [0u64; GNT_FRAMES];
    let rc = hyp::gnttab_setup_table(&mut frames);
    if rc != 0 {
        fail(format_args!("GNTTABOP_setup_table({GNT_FRAMES}): {rc}"));
    }
    for (i, &f) in frames.iter().enumerate() {
        if let Err(rc) = map_hole(HOLE_GNTTAB + i, f) {
            fail(format_args!("mapping grant frame {i} (mfn {f:#x}): {rc}"));
        }
    }
    // SAFETY: holes HOLE_GNTTAB.. are contiguous and map the grant-table frames for the
    // guest's life; Xen and we access the entries only atomically / through SharedMem.
    let gmem = unsafe { SharedMem::new(hole(HOLE_GNTTAB) as *mut u8, GNT_FRAMES * PAGE) };
    say!("XENBLK: grant table: {GNT_FRAMES} frame(s), {} entries", GNT_FRAMES * ENTRIES_PER_FRAME);

    let mut plat = Pv {
        xs,
        xs_port: si.store_evtchn,
        domid: DomId(domid),
        gnt: GrantTableV1::new(gmem),
        gnt_used: [0; GNT_FRAMES * ENTRIES_PER_FRAME / 64],
        gnt_next: 0,
        pool_used: [false; POOL_PAGES],
        p2m: si.mfn_list as *const u64,
        nr_pages: si.nr_pages,
        ports: [0; 8],
        nports: 0,
        grants: 0,
        revokes: 0,
        revoke_in_use: 0,
        polls: 0,
    };
    // SAFETY: IO is used only here, by this single thread, once.
    #[allow(static_mut_refs)]
    let io = unsafe { &mut IO };
    disk_test(&mut plat, io);
    hyp::shutdown(hyp::SHUTDOWN_POWEROFF)
}

fn end_of_image() -> usize {
    unsafe extern "C" {
        static _end: u8;
    }
    (&raw const _end) as usize
}

/// Seconds between two system times, printed with two decimals (no float formatting in
/// the image).
struct Secs(u64);

impl core::fmt::Display for Secs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let cs = self.0 / 10_000_000;
        write!(f, "{}.{:02}", cs / 100, cs % 100)
    }
}

fn secs(t0: u64, t1: u64) -> Secs {
    Secs(t1.saturating_sub(t0))
}

/// Bytes of the boot stack ever used: it starts zeroed (.bss) and grows down, so the
/// lowest non-zero byte marks the deepest point reached so far.
fn stack_high_water() -> usize {
    let base = (&raw const hyp::BOOT_STACK) as *const u8;
    let mut i = 0;
    while i < hyp::STACK_BYTES {
        // SAFETY: `base + i` lies inside BOOT_STACK; a volatile byte read of memory the
        // single vCPU's stack may also use (below the current frame nothing is live).
        if unsafe { core::ptr::read_volatile(base.add(i)) } != 0 {
            break;
        }
        i += 1;
    }
    hyp::STACK_BYTES - i
}

/// Writes QD_MIB MiB with many requests in flight (submit until Busy, kick, poll), then
/// reads it back and compares. Returns the most requests seen in flight and the seconds
/// the queued writes took.
fn queued_test(plat: &mut Pv, f: &mut Frontend, io: &mut Io) -> (usize, Secs) {
    let n = (QD_MIB as usize * 1024 * 1024) / QD_REQ;
    let base = 16 * 2048u64;
    let secs_per = (QD_REQ / 512) as u64;
    let (mut next, mut done, mut bad, mut max_in_flight) = (0usize, 0usize, 0usize, 0usize);
    let t0 = now_ns();
    while done < n {
        while next < n {
            Pattern::new(10_000 + next as u64).fill(&mut io.data[..QD_REQ]);
            let w = BlkIo::Write { sector: base + next as u64 * secs_per, data: &io.data[..QD_REQ] };
            match f.submit(plat, w, next as u64) {
                Ok(()) => next += 1,
                Err(SubmitError::Busy) => break,
                Err(e) => fail(format_args!("queued write {next}: {e:?}")),
            }
        }
        f.kick(plat);
        max_in_flight = max_in_flight.max(f.in_flight());
        let got = f.poll(plat, |c| {
            done += 1;
            bad += usize::from(c.status != Status::Ok);
        });
        if got == 0 {
            if matches!(f.phase(), Phase::Failed(_)) {
                fail(format_args!("device failed during queued writes: {:?}", f.phase()));
            }
            let w = plat.wait(Some(1000));
            if w.xenstore || w.timeout {
                f.on_xenstore(plat);
            }
        }
    }
    let t1 = now_ns();
    if bad != 0 {
        fail(format_args!("{bad} queued writes failed"));
    }
    for c in 0..n {
        let back = &mut io.back[..QD_REQ];
        if let Err(s) = f.read_blocking(plat, base + c as u64 * secs_per, back) {
            fail(format_args!("read of queued chunk {c}: {s:?}"));
        }
        Pattern::new(10_000 + c as u64).fill(&mut io.data[..QD_REQ]);
        if io.back[..QD_REQ] != io.data[..QD_REQ] {
            fail(format_args!("queued chunk {c} read back different"));
        }
    }
    say!(
        "XENBLK: queued: {n} writes of {QD_REQ} B, at most {max_in_flight} in flight, {} s; read back OK",
        secs(t0, t1)
    );
    (max_in_flight, secs(t0, t1))
}

fn disk_test(plat: &mut Pv, io: &mut Io) {
    let mut path: heapless::String<64> = heapless::String::new();
    let _ = write!(path, "/local/domain/{}/device/vbd", plat.domid.0);
    let mut names = [0u8; 256];
    let n = match plat.directory(&path, &mut names) {
        Ok(n) => n,
        Err(e) => fail(format_args!("no vbd: directory {path}: {e:?}")),
    };
    let first = names[..n].split(|&b| b == 0).find(|s| !s.is_empty());
    let Some(dev) = first.and_then(|s| core::str::from_utf8(s).ok()) else { fail(format_args!("no vbd under {path}")) };
    let mut dir: heapless::String<96> = heapless::String::new();
    let _ = write!(dir, "{path}/{dev}");
    say!(
        "XENBLK: attaching {dir} (size_of Frontend={} B, platform={} B)",
        core::mem::size_of::<Frontend>(),
        core::mem::size_of::<Pv>()
    );

    let t_attach = now_ns();
    let mut f = match Frontend::attach(plat, &dir, FrontendConfig::default(), 1) {
        Ok(f) => f,
        Err(e) => fail(format_args!("attach {dir}: {e:?}")),
    };
    if !f.wait_connected(plat, 1200) {
        fail(format_args!("not connected after waiting: phase {:?}", f.phase()));
    }
    let neg = *f.negotiated();
    say!(
        "XENBLK: connected in {} s: backend dom{} sectors={} sector_size={} persistent={} ring_order={} slots={} indirect={} flush={} max_request={} B",
        secs(t_attach, now_ns()),
        f.backend_id().0,
        neg.sectors,
        neg.sector_size,
        neg.persistent,
        neg.ring_order,
        f.ring_slots(),
        neg.indirect_segments,
        neg.flush,
        f.max_request_bytes()
    );
    let need = (16 + QD_MIB) * 2048;
    if neg.sectors < need {
        fail(format_args!("disk too small: {} sectors < {need}", neg.sectors));
    }
    if neg.read_only() {
        fail(format_args!("disk is read-only"));
    }

    let chunks = (TEST_MIB as usize * 1024 * 1024) / CHUNK;
    let base = 2048u64; // 1 MiB
    let sec_per_chunk = (CHUNK / 512) as u64;
    let mut md_w = Md5::new();
    let t0 = now_ns();
    for c in 0..chunks {
        Pattern::new(c as u64 + 1).fill(&mut io.data);
        md_w.update(io.data);
        if let Err(s) = f.write_blocking(plat, base + c as u64 * sec_per_chunk, &io.data) {
            fail(format_args!("write of chunk {c}: {s:?}"));
        }
    }
    if neg.flush
        && let Err(s) = f.flush_blocking(plat)
    {
        fail(format_args!("flush: {s:?}"));
    }
    let t1 = now_ns();
    let mut md_r = Md5::new();
    for c in 0..chunks {
        if let Err(s) = f.read_blocking(plat, base + c as u64 * sec_per_chunk, &mut io.back) {
            fail(format_args!("read of chunk {c}: {s:?}"));
        }
        Pattern::new(c as u64 + 1).fill(&mut io.data);
        if io.back != io.data {
            let at = io.back.iter().zip(io.data.iter()).position(|(a, b)| a != b).unwrap_or(0);
            fail(format_args!("read-back mismatch in chunk {c} at byte {at}"));
        }
        md_r.update(io.back);
    }
    let t2 = now_ns();
    let (dw, dr) = (md_w.finalize(), md_r.finalize());
    let mut hw = [0u8; 32];
    let mut hr = [0u8; 32];
    let (sw, sr) = (hex(&dw, &mut hw), hex(&dr, &mut hr));
    if sw != sr {
        fail(format_args!("md5 written {sw} != read {sr}"));
    }
    let (qd_max, qd_s) = queued_test(plat, &mut f, io);
    let st = f.stats();
    let ps = f.pool_stats();
    say!(
        "XENBLK: frontend stats: submitted={} completed={} errors={} notifies={} pool grants={} revokes={} pages={}; platform grants={} revokes={} polls={}",
        st.submitted,
        st.completed,
        st.errors,
        st.notifies,
        ps.grants,
        ps.revokes,
        ps.pages,
        plat.grants,
        plat.revokes,
        plat.polls
    );

    // Close the device properly before powering off.
    f.close(plat);
    // Closed comes before the backend lets go of its mappings (Linux blkback unmaps when
    // it sees our Closed): wait for that too, so that no grant outlives the connection.
    for _ in 0..100 {
        if matches!(f.phase(), Phase::Failed(_)) || (f.phase() == Phase::Closed && f.parked_pages() == 0) {
            break;
        }
        plat.wait(Some(100));
        f.on_xenstore(plat);
    }
    let (closed, parked) = (f.phase(), f.parked_pages());
    f.shutdown(plat);
    let live = plat.grants - plat.revokes;
    say!(
        "XENBLK: closed ({closed:?}, {parked} pages still mapped by the backend at the end); grants live after shutdown={live} (revokes refused as still mapped: {})",
        plat.revoke_in_use
    );
    say!(
        "XENBLK: RESULT OK md5={sw} mib={TEST_MIB} write_s={} read_s={} requests={} guest_persistent={} pool_grants={} ring_order={} indirect={} grants_live_at_exit={live} stack_used={} qd_bytes={} qd_max_in_flight={qd_max} qd_s={qd_s}",
        secs(t0, t1),
        secs(t1, t2),
        st.submitted,
        u8::from(neg.persistent),
        ps.grants,
        neg.ring_order,
        neg.indirect_segments,
        stack_high_water(),
        QD_MIB * 1024 * 1024
    );
}
