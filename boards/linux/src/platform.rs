//! The xenblk platform traits on Linux userspace in a Xen domain.
//!
//! [`LinuxBackend`] (dom0 or a driver domain): [`Pages`] from anonymous `mmap`,
//! [`GrantMapper`] over gntdev, [`EventChannels`] over evtchn, [`XenStore`] over the wire
//! client, [`Wait`] by `poll(2)` on the evtchn and xenstore fds. It implements everything
//! `Backend` needs; it has not yet been run against a real frontend (see NOTES.md).

use std::collections::HashMap;
use std::os::fd::RawFd;

use xenblk::platform::{
    CopyOp, CopyPtr, EventChannels, GrantMapper, MapRequest, Mapping, Page, Pages, PlatformError, Port, Result, Tx,
    Wait, Wake, XenStore,
};
use xenblk::proto::grant::{DomId, GntStatus, GrantRef};
use xenblk::proto::shmem::SharedMem;

use crate::evtchn::{Evtchn, last_err};
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

impl EventChannels for LinuxBackend {
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

impl XenStore for LinuxBackend {
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
