//! The xenblk platform traits on Linux userspace in a Xen domain.
//!
//! [`LinuxBackend`] (dom0 or a driver domain): [`Pages`] from anonymous `mmap`,
//! [`GrantMapper`] over gntdev, [`EventChannels`] over evtchn, [`XenStore`] over the wire
//! client, [`Wait`] by `poll(2)` on the evtchn and xenstore fds. It implements everything
//! `Backend` needs; it serves the kernel's xen-blkfront in the rig (see NOTES.md).
//!
//! [`LinuxFrontend`] (a domU): [`Pages`] from anonymous `mmap`, [`Grants`] over gntalloc,
//! [`EventChannels`] over evtchn, [`XenStore`] over `/dev/xen/xenbus` (or the socket), and
//! [`Wait`] as above.
//!
//! ## Grant semantics on gntalloc
//!
//! gntalloc hands out a fresh kernel page already granted to one domain, and the grant
//! ends only when the page is both deallocated (ioctl) and unmapped; userspace cannot see
//! the grant entry's flags, and the kernel's revoke never fails: if the grantee still maps
//! the page, the kernel keeps that page out of circulation until the grantee lets go. So:
//!
//! - A [`Page`] is an anonymous page at a fixed address (`frame` = its slot number).
//! - [`Grants::grant`] allocates one gntalloc page for the domain (writable unless read-only
//!   is asked), copies the page's contents into it and maps it at the page's address with
//!   `MAP_FIXED`. The driver keeps using the same address.
//! - [`Grants::end_access`] is a real revoke: it copies the contents out, maps a fresh
//!   anonymous page over the address (the gntalloc mapping goes away), and deallocates the
//!   reference. It returns `Ok` (the kernel cannot say `InUse`); the physical page a backend
//!   might still map is never reused, neither by us (our address now has another page) nor
//!   by the kernel (deferred free). That keeps the frontend's rule "never free or reuse a
//!   page still mapped by the backend" true without seeing the mapping.
//! - [`Grants::is_mapped`] answers conservatively "the grant is live".
//! - [`Grants::observes_mappings`] is false, so the frontend's pool never ends a grant while
//!   persistence is negotiated (Linux blkback caches grant references; ending one would let
//!   the kernel hand the same reference out for another page) and asks for writable grants
//!   only (a read-only grant could not become writable without ending it). Without
//!   persistence every request's grants are ended at completion, as the protocol wants.

use std::collections::HashMap;
use std::os::fd::RawFd;

use xenblk::platform::{
    CopyOp, CopyPtr, EventChannels, GrantMapper, Grants, MapRequest, Mapping, Page, Pages, PlatformError, Port, Result,
    Tx, Wait, Wake, XenStore,
};
use xenblk::proto::grant::{DomId, GntStatus, GrantRef, RevokeError};
use xenblk::proto::shmem::SharedMem;

use crate::evtchn::{Evtchn, last_err};
use crate::gntalloc::Gntalloc;
use crate::gntdev::{CopySide, GntMap, Gntdev};
use crate::sys::PAGE;
use crate::xenstore::{WatchEvent, XsClient};

/// Anonymous, page-aligned, zeroed memory (pages that are never granted).
fn anon_pages(n: usize) -> Result<*mut u8> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            n * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED { Err(last_err()) } else { Ok(p.cast()) }
}

/// Local pages: anonymous memory, `frame` = the address (for bookkeeping only).
#[derive(Debug, Default)]
pub struct AnonPages {
    live: usize,
}

impl AnonPages {
    /// Pages currently allocated.
    pub fn live(&self) -> usize {
        self.live
    }
}

impl Pages for AnonPages {
    fn alloc_page(&mut self) -> Result<Page> {
        let p = anon_pages(1)?;
        self.live += 1;
        // SAFETY: `p` is a fresh 4 KiB mapping that lives until `free_page`.
        Ok(Page { mem: unsafe { SharedMem::new(p, PAGE) }, frame: p as u64 })
    }
    fn alloc_pages_contiguous(&mut self, n: usize) -> Result<(SharedMem, [u64; 16])> {
        if n == 0 || n > 16 {
            return Err(PlatformError::Invalid);
        }
        let p = anon_pages(n)?;
        self.live += n;
        let mut frames = [0u64; 16];
        for (i, f) in frames.iter_mut().take(n).enumerate() {
            *f = p as u64 + (i * PAGE) as u64;
        }
        // SAFETY: `p` is a fresh `n`-page mapping that lives until `free_pages_contiguous`.
        Ok((unsafe { SharedMem::new(p, n * PAGE) }, frames))
    }
    fn free_page(&mut self, page: Page) {
        // SAFETY: the page came from `alloc_page`; the driver no longer uses it.
        unsafe { libc::munmap(page.mem.as_ptr().cast(), PAGE) };
        self.live -= 1;
    }
    fn free_pages_contiguous(&mut self, mem: SharedMem, frames: &[u64]) {
        // SAFETY: the region came from `alloc_pages_contiguous`; the driver no longer uses it.
        unsafe { libc::munmap(mem.as_ptr().cast(), mem.len()) };
        self.live -= frames.len().min(self.live);
    }
}

/// The backend platform.
#[derive(Debug)]
pub struct LinuxBackend {
    /// Xenstore connection.
    pub xs: XsClient,
    /// Event channels.
    pub ev: Evtchn,
    gnt: Gntdev,
    pages: AnonPages,
    maps: HashMap<u64, GntMap>,
    /// Watch events consumed by the last [`Wait::wait`] (for the daemon's dispatch).
    pub events: Vec<WatchEvent>,
    /// Ports that fired in the last [`Wait::wait`].
    pub fired: Vec<Port>,
}

impl LinuxBackend {
    /// Opens xenstore (socket or xenbus), evtchn and gntdev.
    pub fn open() -> Result<LinuxBackend> {
        Ok(LinuxBackend {
            xs: XsClient::connect_default()?,
            ev: Evtchn::open()?,
            gnt: Gntdev::open()?,
            pages: AnonPages::default(),
            maps: HashMap::new(),
            events: Vec::new(),
            fired: Vec::new(),
        })
    }

    /// Grant mappings currently held.
    pub fn live_maps(&self) -> usize {
        self.maps.len()
    }
}

impl Pages for LinuxBackend {
    fn alloc_page(&mut self) -> Result<Page> {
        self.pages.alloc_page()
    }
    fn alloc_pages_contiguous(&mut self, n: usize) -> Result<(SharedMem, [u64; 16])> {
        self.pages.alloc_pages_contiguous(n)
    }
    fn free_page(&mut self, page: Page) {
        self.pages.free_page(page)
    }
    fn free_pages_contiguous(&mut self, mem: SharedMem, frames: &[u64]) {
        self.pages.free_pages_contiguous(mem, frames)
    }
}

impl GrantMapper for LinuxBackend {
    fn map_batch(&mut self, domid: DomId, reqs: &[MapRequest], out: &mut [core::result::Result<Mapping, GntStatus>]) {
        // One map per element so that each gets its own status (gntdev maps a batch
        // all-or-nothing at mmap time). TODO: batch when all succeed, fall back on failure.
        for (r, o) in reqs.iter().zip(out.iter_mut()) {
            *o = match self.gnt.map(domid, &[r.gref], !r.readonly) {
                Ok(m) => {
                    let mem = Gntdev::shared(&m);
                    let handle = m.index;
                    self.maps.insert(handle, m);
                    Ok(Mapping { mem, handle })
                }
                Err(_) => Err(GntStatus::GeneralError),
            };
        }
    }
    fn unmap_batch(&mut self, maps: &[Mapping], status: &mut [GntStatus]) {
        for (m, s) in maps.iter().zip(status.iter_mut()) {
            *s = match self.maps.remove(&m.handle) {
                // SAFETY: the driver unmaps only mappings it no longer uses.
                Some(g) => match unsafe { self.gnt.unmap(g) } {
                    Ok(()) => GntStatus::Okay,
                    Err(_) => GntStatus::GeneralError,
                },
                None => GntStatus::BadHandle,
            };
        }
    }
    fn map_ring(&mut self, domid: DomId, grefs: &[GrantRef]) -> Result<Mapping> {
        let m = self.gnt.map(domid, grefs, true)?;
        let mem = Gntdev::shared(&m);
        let handle = m.index;
        self.maps.insert(handle, m);
        Ok(Mapping { mem, handle })
    }
    fn unmap_ring(&mut self, map: Mapping) {
        if let Some(g) = self.maps.remove(&map.handle) {
            // SAFETY: the driver unmaps the ring only after it stopped using it.
            let _ = unsafe { self.gnt.unmap(g) };
        }
    }
    fn copy_batch(&mut self, ops: &[CopyOp], status: &mut [GntStatus]) {
        let side = |p: &CopyPtr| match *p {
            CopyPtr::Foreign { domid, gref, offset } => CopySide::Foreign { domid, gref, offset },
            // SAFETY (of the pointer arithmetic): `offset` lies within `mem` by the CopyOp
            // contract; the pointer is only handed to the kernel.
            CopyPtr::Local { mem, offset } => CopySide::Local(mem.as_ptr().wrapping_add(offset as usize)),
        };
        let v: Vec<_> = ops.iter().map(|o| (side(&o.src), side(&o.dst), o.len)).collect();
        if self.gnt.copy(&v, status).is_err() {
            status.iter_mut().for_each(|s| *s = GntStatus::GeneralError);
        }
    }
}

/// Event channels and xenstore are the same for both roles: `ev` and `xs` fields.
macro_rules! evtchn_and_xenstore {
    ($t:ty) => {
        impl EventChannels for $t {
            fn alloc_unbound(&mut self, remote: DomId) -> Result<Port> {
                self.ev.bind_unbound(remote)
            }
            fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port> {
                self.ev.bind_interdomain(remote, remote_port)
            }
            fn notify(&mut self, port: Port) -> Result<()> {
                self.ev.notify(port)
            }
            fn unbind(&mut self, port: Port) {
                let _ = self.ev.unbind(port);
            }
        }

        impl XenStore for $t {
            fn read(&mut self, tx: Tx, path: &str, buf: &mut [u8]) -> Result<usize> {
                self.xs.read(tx, path, buf)
            }
            fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<()> {
                self.xs.write(tx, path, value)
            }
            fn remove(&mut self, tx: Tx, path: &str) -> Result<()> {
                self.xs.remove(tx, path)
            }
            fn transaction_start(&mut self) -> Result<Tx> {
                self.xs.transaction_start()
            }
            fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<()> {
                self.xs.transaction_end(tx, commit)
            }
            fn watch(&mut self, path: &str, token: u32) -> Result<()> {
                self.xs.watch(path, token)
            }
            fn unwatch(&mut self, path: &str, token: u32) -> Result<()> {
                self.xs.unwatch(path, token)
            }
            fn own_domid(&mut self) -> DomId {
                self.xs.own_domid()
            }
        }
    };
}

evtchn_and_xenstore!(LinuxBackend);

/// Something that can put a granted page at a fixed address and take it away again: gntalloc
/// in a domain, a fake in the host tests.
pub trait GrantDevice {
    /// Replaces the page at `addr` by a new page granted to `domid`; returns the reference
    /// and a handle for [`revoke_at`](Self::revoke_at). The old contents are not kept.
    ///
    /// # Safety
    /// `addr` is one page-aligned page of a mapping the caller owns.
    unsafe fn grant_at(&mut self, domid: DomId, writable: bool, addr: *mut u8) -> Result<(GrantRef, u64)>;
    /// Ends the grant `handle` whose page is mapped at `addr`, leaving a fresh zeroed
    /// private page at `addr`. The old contents are not kept.
    ///
    /// # Safety
    /// As for [`grant_at`](Self::grant_at); `addr` holds the page granted as `handle`.
    unsafe fn revoke_at(&mut self, handle: u64, addr: *mut u8) -> Result<()>;
}

/// Maps a fresh private zeroed page at `addr` (replacing what was there).
///
/// # Safety
/// `addr` is one page-aligned page of a mapping the caller owns.
unsafe fn anon_at(addr: *mut u8) -> Result<()> {
    // SAFETY: the caller owns the page at `addr`; MAP_FIXED replaces exactly that page.
    let p = unsafe {
        libc::mmap(
            addr.cast(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p.cast::<u8>() != addr { Err(last_err()) } else { Ok(()) }
}

impl GrantDevice for Gntalloc {
    unsafe fn grant_at(&mut self, domid: DomId, writable: bool, addr: *mut u8) -> Result<(GrantRef, u64)> {
        // SAFETY: forwarded contract.
        unsafe { self.alloc_at(domid, writable, addr) }
    }
    unsafe fn revoke_at(&mut self, handle: u64, addr: *mut u8) -> Result<()> {
        // Unmap first (the anonymous page replaces the gntalloc one), then drop the file's
        // reference: the kernel ends the grant when both are gone, deferring the page's
        // release while the grantee still maps it.
        // SAFETY: forwarded contract.
        unsafe { anon_at(addr)? };
        self.dealloc(handle, 1);
        Ok(())
    }
}

/// Grant counters of a [`GrantedPages`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantStats {
    /// Grants made (gntalloc allocations).
    pub grants: u64,
    /// Grants ended.
    pub revokes: u64,
    /// Grants live now.
    pub live: u64,
    /// Largest number live at once.
    pub peak: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    addr: *mut u8,
    /// (reference, device handle, grantee)
    grant: Option<(GrantRef, u64, DomId)>,
}

/// [`Pages`] + [`Grants`] over a [`GrantDevice`]: pages live at fixed addresses; granting
/// swaps a granted page in under the same address, ending the grant swaps a private one
/// back (contents preserved both ways). See the module documentation.
#[derive(Debug)]
pub struct GrantedPages<D: GrantDevice> {
    dev: D,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    by_gref: HashMap<u32, usize>,
    stats: GrantStats,
}

impl<D: GrantDevice> GrantedPages<D> {
    /// Pages and grants on `dev`.
    pub fn new(dev: D) -> GrantedPages<D> {
        GrantedPages {
            dev,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_gref: HashMap::new(),
            stats: GrantStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> GrantStats {
        self.stats
    }

    /// Pages allocated now.
    pub fn pages(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    fn new_slot(&mut self, addr: *mut u8) -> u64 {
        let s = Some(Slot { addr, grant: None });
        match self.free_slots.pop() {
            Some(i) => {
                self.slots[i] = s;
                i as u64
            }
            None => {
                self.slots.push(s);
                (self.slots.len() - 1) as u64
            }
        }
    }

    fn slot(&self, frame: u64) -> Option<Slot> {
        self.slots.get(frame as usize).copied().flatten()
    }

    /// Ends the grant of slot `i` (contents preserved).
    fn revoke_slot(&mut self, i: usize) -> core::result::Result<(), RevokeError> {
        let Some(Slot { addr, grant: Some((gref, handle, _)) }) = self.slot(i as u64) else {
            return Err(RevokeError::NotGranted);
        };
        let mut keep = [0u8; PAGE];
        // SAFETY: `addr` is one page we own (the slot's), readable.
        unsafe { core::ptr::copy_nonoverlapping(addr, keep.as_mut_ptr(), PAGE) };
        // SAFETY: `addr` is the slot's page and holds the grant `handle`.
        if unsafe { self.dev.revoke_at(handle, addr) }.is_err() {
            // Still granted (the swap failed): the pool must treat it as kept.
            return Err(RevokeError::InUse);
        }
        // SAFETY: `addr` is now a fresh private page of ours.
        unsafe { core::ptr::copy_nonoverlapping(keep.as_ptr(), addr, PAGE) };
        self.by_gref.remove(&gref.0);
        if let Some(Some(s)) = self.slots.get_mut(i) {
            s.grant = None;
        }
        self.stats.revokes += 1;
        self.stats.live -= 1;
        Ok(())
    }

    fn release_slot(&mut self, frame: u64) -> Option<Slot> {
        let s = self.slot(frame)?;
        if s.grant.is_some() {
            // Freed while granted (the driver should not): end the grant first; if that
            // fails, leak the page rather than reuse it.
            if self.revoke_slot(frame as usize).is_err() {
                return None;
            }
        }
        self.slots[frame as usize] = None;
        self.free_slots.push(frame as usize);
        Some(s)
    }
}

impl<D: GrantDevice> Pages for GrantedPages<D> {
    fn alloc_page(&mut self) -> Result<Page> {
        let p = anon_pages(1)?;
        let frame = self.new_slot(p);
        // SAFETY: `p` is a fresh 4 KiB mapping that lives until `free_page`.
        Ok(Page { mem: unsafe { SharedMem::new(p, PAGE) }, frame })
    }
    fn alloc_pages_contiguous(&mut self, n: usize) -> Result<(SharedMem, [u64; 16])> {
        if n == 0 || n > 16 {
            return Err(PlatformError::Invalid);
        }
        let p = anon_pages(n)?;
        let mut frames = [0u64; 16];
        for (i, f) in frames.iter_mut().take(n).enumerate() {
            *f = self.new_slot(p.wrapping_add(i * PAGE));
        }
        // SAFETY: `p` is a fresh `n`-page mapping that lives until `free_pages_contiguous`.
        Ok((unsafe { SharedMem::new(p, n * PAGE) }, frames))
    }
    fn free_page(&mut self, page: Page) {
        if let Some(s) = self.release_slot(page.frame) {
            // SAFETY: the slot's page, no longer granted and no longer used by the driver.
            unsafe { libc::munmap(s.addr.cast(), PAGE) };
        }
    }
    fn free_pages_contiguous(&mut self, mem: SharedMem, frames: &[u64]) {
        let mut all = true;
        for &f in frames {
            all &= self.release_slot(f).is_some();
        }
        if all {
            // SAFETY: the region from `alloc_pages_contiguous`; none of it is granted.
            unsafe { libc::munmap(mem.as_ptr().cast(), mem.len()) };
        }
    }
}

impl<D: GrantDevice> Grants for GrantedPages<D> {
    fn grant(&mut self, frame: u64, domid: DomId, readonly: bool) -> Result<GrantRef> {
        let Some(s) = self.slot(frame) else { return Err(PlatformError::Invalid) };
        if s.grant.is_some() {
            return Err(PlatformError::Invalid);
        }
        let mut keep = [0u8; PAGE];
        // SAFETY: `s.addr` is one page we own, readable.
        unsafe { core::ptr::copy_nonoverlapping(s.addr, keep.as_mut_ptr(), PAGE) };
        // SAFETY: `s.addr` is the slot's page; its old contents are saved in `keep`.
        let (gref, handle) = match unsafe { self.dev.grant_at(domid, !readonly, s.addr) } {
            Ok(v) => v,
            Err(e) => {
                // The page at `addr` may be gone: put a private one back with the contents.
                // SAFETY: as above.
                if unsafe { anon_at(s.addr) }.is_ok() {
                    // SAFETY: a fresh private page of ours.
                    unsafe { core::ptr::copy_nonoverlapping(keep.as_ptr(), s.addr, PAGE) };
                }
                return Err(e);
            }
        };
        // SAFETY: `s.addr` now maps the granted page, writable by us.
        unsafe { core::ptr::copy_nonoverlapping(keep.as_ptr(), s.addr, PAGE) };
        if let Some(Some(sl)) = self.slots.get_mut(frame as usize) {
            sl.grant = Some((gref, handle, domid));
        }
        self.by_gref.insert(gref.0, frame as usize);
        self.stats.grants += 1;
        self.stats.live += 1;
        self.stats.peak = self.stats.peak.max(self.stats.live);
        Ok(gref)
    }
    fn end_access(&mut self, gref: GrantRef) -> core::result::Result<(), RevokeError> {
        match self.by_gref.get(&gref.0) {
            Some(&i) => self.revoke_slot(i),
            None => Err(RevokeError::NotGranted),
        }
    }
    fn is_mapped(&mut self, gref: GrantRef) -> bool {
        // Unknowable here: "may be", as long as the grant is live.
        self.by_gref.contains_key(&gref.0)
    }
    fn observes_mappings(&self) -> bool {
        false
    }
}

/// The frontend platform in a domU.
#[derive(Debug)]
pub struct LinuxFrontend {
    /// Xenstore connection (`/dev/xen/xenbus` in a domU).
    pub xs: XsClient,
    /// Event channels.
    pub ev: Evtchn,
    /// Pages and grants (gntalloc).
    pub pages: GrantedPages<Gntalloc>,
    /// Watch events consumed by the last [`Wait::wait`].
    pub events: Vec<WatchEvent>,
    /// Ports that fired in the last [`Wait::wait`].
    pub fired: Vec<Port>,
}

impl LinuxFrontend {
    /// Opens xenstore, evtchn and gntalloc.
    pub fn open() -> Result<LinuxFrontend> {
        Ok(LinuxFrontend {
            xs: XsClient::connect_default()?,
            ev: Evtchn::open()?,
            pages: GrantedPages::new(Gntalloc::open()?),
            events: Vec::new(),
            fired: Vec::new(),
        })
    }
}

impl Pages for LinuxFrontend {
    fn alloc_page(&mut self) -> Result<Page> {
        self.pages.alloc_page()
    }
    fn alloc_pages_contiguous(&mut self, n: usize) -> Result<(SharedMem, [u64; 16])> {
        self.pages.alloc_pages_contiguous(n)
    }
    fn free_page(&mut self, page: Page) {
        self.pages.free_page(page)
    }
    fn free_pages_contiguous(&mut self, mem: SharedMem, frames: &[u64]) {
        self.pages.free_pages_contiguous(mem, frames)
    }
}

impl Grants for LinuxFrontend {
    fn grant(&mut self, frame: u64, domid: DomId, readonly: bool) -> Result<GrantRef> {
        self.pages.grant(frame, domid, readonly)
    }
    fn end_access(&mut self, gref: GrantRef) -> core::result::Result<(), RevokeError> {
        self.pages.end_access(gref)
    }
    fn is_mapped(&mut self, gref: GrantRef) -> bool {
        self.pages.is_mapped(gref)
    }
    fn observes_mappings(&self) -> bool {
        self.pages.observes_mappings()
    }
}

evtchn_and_xenstore!(LinuxFrontend);

impl Wait for LinuxFrontend {
    fn wait(&mut self, timeout_ms: Option<u64>) -> Wake {
        wait_on(Some(&mut self.ev), &mut self.xs, timeout_ms, &mut self.events, &mut self.fired)
    }
}

/// Waits on an evtchn fd and a xenstore client: the shared core of the boards' [`Wait`].
/// Fired ports are unmasked before returning (the driver re-checks its rings after a wake,
/// so an event arriving in between is not lost).
pub fn wait_on(
    ev: Option<&mut Evtchn>,
    xs: &mut XsClient,
    timeout_ms: Option<u64>,
    events: &mut Vec<WatchEvent>,
    fired: &mut Vec<Port>,
) -> Wake {
    events.clear();
    fired.clear();
    let mut wake = Wake::default();
    // Messages may already sit in the client's buffer (read along with a reply), where
    // poll(2) cannot see them: decode those first.
    let _ = xs.pump();
    if xs.has_events() {
        wake.xenstore = true;
        events.extend(xs.take_events());
        return wake;
    }
    let ev_fd: RawFd = ev.as_ref().map_or(-1, |e| e.fd());
    let mut fds = [
        libc::pollfd { fd: xs.fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: ev_fd, events: libc::POLLIN, revents: 0 },
    ];
    let t = timeout_ms.map_or(-1, |t| t.min(i32::MAX as u64) as i32);
    // SAFETY: `fds` is a valid array of two pollfds (a negative fd is ignored by poll).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, t) };
    if n <= 0 {
        wake.timeout = true;
        return wake;
    }
    if fds[0].revents != 0 && xs.pump().unwrap_or(false) {
        wake.xenstore = true;
        events.extend(xs.take_events());
    }
    if let Some(ev) = ev
        && fds[1].revents != 0
    {
        let mut ports = [Port(0); 64];
        if let Ok(k) = ev.pending(&mut ports)
            && k > 0
        {
            wake.event = true;
            fired.extend_from_slice(&ports[..k]);
            let _ = ev.unmask(&ports[..k]);
        }
    }
    wake
}

impl Wait for LinuxBackend {
    fn wait(&mut self, timeout_ms: Option<u64>) -> Wake {
        wait_on(Some(&mut self.ev), &mut self.xs, timeout_ms, &mut self.events, &mut self.fired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anon_pages_are_zeroed_and_freed() {
        let mut p = AnonPages::default();
        let a = p.alloc_page().unwrap();
        let mut b = [1u8; 16];
        a.mem.read_bytes(0, &mut b);
        assert_eq!(b, [0; 16]);
        a.mem.write_bytes(4000, &[7; 96]);
        let (m, frames) = p.alloc_pages_contiguous(4).unwrap();
        assert_eq!(m.len(), 4 * PAGE);
        assert_eq!(frames[1] - frames[0], PAGE as u64);
        assert_eq!(p.live(), 5);
        p.free_pages_contiguous(m, &frames[..4]);
        p.free_page(a);
        assert_eq!(p.live(), 0);
        assert_eq!(p.alloc_pages_contiguous(17).err(), Some(PlatformError::Invalid));
    }

    /// A grant "device" on a memfd: each grant is a new page of the file mapped at the
    /// address; the "backend" maps the same file page elsewhere to see what it would see.
    struct FakeDev {
        fd: i32,
        pages: u64,
        revoked: Vec<u64>,
        fail_next: bool,
    }

    impl FakeDev {
        fn new() -> FakeDev {
            // SAFETY: plain syscall with a valid NUL-terminated name.
            let fd = unsafe { libc::memfd_create(c"fakegnt".as_ptr(), 0) };
            assert!(fd >= 0);
            FakeDev { fd, pages: 0, revoked: Vec::new(), fail_next: false }
        }
        /// The backend's view of grant `handle`.
        fn backend_view(&self, handle: u64) -> SharedMem {
            // SAFETY: maps one page of our memfd, kept for the test's life.
            let p = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.fd,
                    (handle * PAGE as u64) as libc::off_t,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            // SAFETY: a fresh one-page mapping, never unmapped in the test.
            unsafe { SharedMem::new(p.cast(), PAGE) }
        }
    }

    impl GrantDevice for FakeDev {
        unsafe fn grant_at(&mut self, _domid: DomId, _writable: bool, addr: *mut u8) -> Result<(GrantRef, u64)> {
            if std::mem::take(&mut self.fail_next) {
                return Err(PlatformError::NoSpace);
            }
            let h = self.pages;
            self.pages += 1;
            // SAFETY: growing our own memfd.
            assert_eq!(unsafe { libc::ftruncate(self.fd, (self.pages * PAGE as u64) as libc::off_t) }, 0);
            // SAFETY: the caller owns the page at `addr`.
            let p = unsafe {
                libc::mmap(
                    addr.cast(),
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    self.fd,
                    (h * PAGE as u64) as libc::off_t,
                )
            };
            assert_eq!(p.cast::<u8>(), addr);
            Ok((GrantRef(h as u32 + 8), h))
        }
        unsafe fn revoke_at(&mut self, handle: u64, addr: *mut u8) -> Result<()> {
            // SAFETY: forwarded contract.
            unsafe { anon_at(addr)? };
            self.revoked.push(handle);
            Ok(())
        }
    }

    #[test]
    fn granted_pages_keep_contents_and_never_alias_after_revoke() {
        let mut gp = GrantedPages::new(FakeDev::new());
        assert!(!gp.observes_mappings());
        let a = gp.alloc_page().unwrap();
        a.mem.write_bytes(10, b"ring header");
        let g = gp.grant(a.frame, DomId(0), false).unwrap();
        // Same address, same contents, and now shared with the grantee.
        let mut b = [0u8; 11];
        a.mem.read_bytes(10, &mut b);
        assert_eq!(&b, b"ring header");
        let be = gp.dev.backend_view(0);
        be.read_bytes(10, &mut b);
        assert_eq!(&b, b"ring header", "grantee does not see the page");
        be.write_bytes(100, b"from backend");
        let mut c = [0u8; 12];
        a.mem.read_bytes(100, &mut c);
        assert_eq!(&c, b"from backend");
        assert!(gp.is_mapped(g));
        assert_eq!(gp.grant(a.frame, DomId(0), false), Err(PlatformError::Invalid), "granted twice");
        assert_eq!(gp.stats().live, 1);
        // Revoke: contents stay at our address, but our page is no longer the grantee's.
        assert_eq!(gp.end_access(g), Ok(()));
        assert_eq!(gp.end_access(g), Err(RevokeError::NotGranted));
        assert!(!gp.is_mapped(g));
        a.mem.read_bytes(100, &mut c);
        assert_eq!(&c, b"from backend");
        a.mem.write_bytes(200, b"secret");
        let mut d = [0u8; 6];
        be.read_bytes(200, &mut d);
        assert_eq!(d, [0; 6], "a page the grantee still maps was reused");
        be.write_bytes(300, b"late");
        a.mem.read_bytes(300, &mut d[..4]);
        assert_eq!(&d[..4], &[0; 4], "a stale mapping reaches our page");
        assert_eq!(gp.dev.revoked, vec![0]);
        // Grant again: a new reference, contents carried over.
        let g2 = gp.grant(a.frame, DomId(0), true).unwrap();
        assert_ne!(g2, g);
        gp.dev.backend_view(1).read_bytes(200, &mut d);
        assert_eq!(&d, b"secret");
        // Freeing a granted page ends the grant first.
        gp.free_page(a);
        assert_eq!(gp.dev.revoked, vec![0, 1]);
        assert_eq!((gp.pages(), gp.stats().live, gp.stats().grants, gp.stats().revokes), (0, 0, 2, 2));
    }

    #[test]
    fn granted_pages_contiguous_ring_and_failed_grant() {
        let mut gp = GrantedPages::new(FakeDev::new());
        let (mem, frames) = gp.alloc_pages_contiguous(4).unwrap();
        for i in 0..4 {
            mem.write_bytes(i * PAGE + 1, &[i as u8 + 1]);
        }
        let grefs: Vec<_> = frames[..4].iter().map(|&f| gp.grant(f, DomId(0), false).unwrap()).collect();
        for i in 0..4u64 {
            let mut b = [0u8];
            gp.dev.backend_view(i).read_bytes(1, &mut b);
            assert_eq!(b[0], i as u8 + 1);
        }
        // A grant that fails leaves the page private with its contents.
        let p = gp.alloc_page().unwrap();
        p.mem.write_bytes(0, &[9]);
        gp.dev.fail_next = true;
        assert_eq!(gp.grant(p.frame, DomId(0), false), Err(PlatformError::NoSpace));
        let mut b = [0u8];
        p.mem.read_bytes(0, &mut b);
        assert_eq!(b[0], 9);
        for g in grefs {
            gp.end_access(g).unwrap();
        }
        gp.free_pages_contiguous(mem, &frames[..4]);
        gp.free_page(p);
        assert_eq!(gp.pages(), 0);
        assert_eq!(gp.stats().peak, 4);
    }

    #[test]
    fn wait_reports_watch_and_timeout() {
        let (mut xs, h) = crate::xenstore::fake::start(0);
        let (mut evs, mut fired) = (Vec::new(), Vec::new());
        xs.watch("/w", 9).unwrap();
        let mut got = false;
        for _ in 0..50 {
            let w = wait_on(None, &mut xs, Some(100), &mut evs, &mut fired);
            if w.xenstore {
                assert_eq!(evs[0].token, 9);
                got = true;
                break;
            }
        }
        assert!(got);
        let w = wait_on(None, &mut xs, Some(10), &mut evs, &mut fired);
        assert!(w.timeout && !w.xenstore && !w.event);
        drop(xs);
        h.join().unwrap();
    }
}
