//! [`Dom`]: the owner handle of one domain, implementing the driver's platform traits.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xenblk::platform::{
    CopyOp, CopyPtr, EventChannels, GrantMapper, Grants, MapRequest, Mapping, Page, Pages, PlatformError, Port, Result,
    Tx, XenStore,
};
use xenblk::proto::grant::{DomId, GntStatus, GrantRef, GrantTableV1, NR_RESERVED_ENTRIES, RevokeError};
use xenblk::proto::shmem::SharedMem;

use crate::domain::Domain;
use crate::evtchn::{self, WakeReason};
use crate::fault::{FaultKind, FaultPlan};
use crate::hv::{HvInner, Hypervisor};
use crate::shm::{MappedRegion, PAGE_SIZE};
use crate::stats::{DomStats, bump, bump_n};
use crate::xenstore::{Perms, count_request};

/// Most pages `map_ring` and `alloc_pages_contiguous` accept (Xen's 16-page ring limit).
pub const MAX_RING_PAGES: usize = 16;

#[derive(Debug)]
enum MapKind {
    Page { granter: Arc<Domain>, gref: GrantRef, write: bool, region: MappedRegion },
    Ring { granter: Arc<Domain>, grefs: Vec<GrantRef>, region: MappedRegion },
}

/// A grant entry pinned for a copy: released after it.
type Pin = Option<(Arc<Domain>, GrantRef)>;

#[derive(Debug, Default)]
struct Slot {
    seq: u32,
    m: Option<MapKind>,
}

/// Wakes a domain's [`Dom::wait`] from any thread (`WakeReason::kicked`).
#[derive(Clone, Debug)]
pub struct Kicker(Arc<Domain>);

impl Kicker {
    /// Wakes the domain.
    pub fn kick(&self) {
        self.0.kick();
    }
}

/// The owner handle of a domain: its vCPU, so to speak. `Send`, owned by one thread; it
/// implements [`Pages`], [`Grants`], [`GrantMapper`], [`EventChannels`] and [`XenStore`].
///
/// Dropping it releases every grant mapping it still holds (as Xen does for a dying
/// domain), so the granters can revoke; the domain itself stays until
/// [`Hypervisor::destroy_domain`].
#[derive(Debug)]
pub struct Dom {
    d: Arc<Domain>,
    hv: Arc<HvInner>,
    free_pages: Vec<u32>,
    allocated: Vec<bool>,
    free_refs: VecDeque<u32>,
    ref_used: Vec<bool>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    live_maps: usize,
    vmaps: HashMap<usize, (MappedRegion, Vec<u32>)>,
    peers: HashMap<u16, Arc<Domain>>,
    /// Play a board that cannot see the grantee's mappings (Linux gntalloc).
    opaque_grants: bool,
}

impl Dom {
    pub(crate) fn new(hv: Arc<HvInner>, d: Arc<Domain>) -> Dom {
        let n = d.npages;
        let nrefs = d.gnt.len();
        Dom {
            free_pages: (0..n as u32).rev().collect(),
            allocated: vec![false; n],
            free_refs: (NR_RESERVED_ENTRIES..nrefs).collect(),
            ref_used: vec![false; nrefs as usize],
            slots: Vec::new(),
            free_slots: Vec::new(),
            live_maps: 0,
            vmaps: HashMap::new(),
            peers: HashMap::new(),
            d,
            hv,
            opaque_grants: false,
        }
    }

    pub(crate) fn domain(&self) -> &Arc<Domain> {
        &self.d
    }

    /// This domain's id.
    pub fn id(&self) -> DomId {
        self.d.id
    }

    /// The hypervisor this domain runs on.
    pub fn hypervisor(&self) -> Hypervisor {
        Hypervisor { inner: self.hv.clone() }
    }

    /// Memory size in pages.
    pub fn npages(&self) -> usize {
        self.d.npages
    }

    /// Pages not allocated.
    pub fn free_page_count(&self) -> usize {
        self.free_pages.len()
    }

    /// Grant references not allocated.
    pub fn free_ref_count(&self) -> usize {
        self.free_refs.len()
    }

    /// Grant mappings (single pages and rings) this domain holds now.
    pub fn live_mappings(&self) -> usize {
        self.live_maps
    }

    /// Whether the domain has been destroyed.
    pub fn is_destroyed(&self) -> bool {
        self.d.is_dead()
    }

    /// This domain's counters.
    pub fn stats(&self) -> DomStats {
        self.d.stats.snapshot()
    }

    /// Zeroes this domain's counters.
    pub fn reset_stats(&self) {
        self.d.stats.reset()
    }

    /// Installs a fault plan (this domain as the caller of grant and event operations).
    pub fn set_fault_plan(&self, plan: FaultPlan) {
        self.d.faults.set(plan)
    }

    /// The installed fault plan.
    pub fn fault_plan(&self) -> FaultPlan {
        self.d.faults.plan()
    }

    /// A handle other threads can use to wake this domain's `wait`.
    pub fn kicker(&self) -> Kicker {
        Kicker(self.d.clone())
    }

    /// Blocks until a port is notified, a watch fires, the domain is kicked or destroyed, or
    /// `timeout` passes (`None`: no timeout). Consumes and returns what happened.
    pub fn wait(&self, timeout: Option<Duration>) -> WakeReason {
        self.d.wait(timeout.map(|t| Instant::now() + t))
    }

    /// Like [`wait`](Self::wait) without blocking (the result may be empty).
    pub fn poll_pending(&self) -> WakeReason {
        self.d.poll()
    }

    /// Takes the pending watch events, oldest first: `(path, token)`. The path is the node
    /// that changed (relative to the domain's home if the watch was registered relative).
    pub fn take_watch_events(&self) -> Vec<(String, u32)> {
        self.d.take_watch_events()
    }

    /// Raw view of one of this domain's frames, allocated or not (tests playing a hostile
    /// peer). Panics if `frame` is out of range.
    pub fn raw_page(&self, frame: u64) -> SharedMem {
        self.d.page(frame)
    }

    /// Raw access to this domain's grant table.
    pub fn grant_table(&self) -> GrantTableV1 {
        self.d.gnt
    }

    // ---- xenstore conveniences ----

    fn xs_alive(&self) -> Result<()> {
        count_request(&self.d);
        if self.d.is_dead() { Err(PlatformError::NotFound) } else { Ok(()) }
    }

    /// Reads a node's value.
    pub fn read_vec(&mut self, tx: Tx, path: &str) -> Result<Vec<u8>> {
        self.xs_alive()?;
        self.hv.store().read(self.d.id, tx, path)
    }

    /// Reads a node's value as UTF-8 (lossy).
    pub fn read_string(&mut self, tx: Tx, path: &str) -> Result<String> {
        self.read_vec(tx, path).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Lists a node's children (sorted).
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>> {
        self.xs_alive()?;
        self.hv.store().directory(self.d.id, tx, path)
    }

    /// A node's permissions (needs read access).
    pub fn get_perms(&mut self, tx: Tx, path: &str) -> Result<Perms> {
        self.xs_alive()?;
        self.hv.store().get_perms(self.d.id, tx, path)
    }

    /// Sets a node's permissions (owner or dom0 only).
    pub fn set_perms(&mut self, tx: Tx, path: &str, perms: &Perms) -> Result<()> {
        self.xs_alive()?;
        self.hv.store().set_perms(self.d.id, tx, path, perms)
    }

    // ---- internals ----

    fn peer(&mut self, id: DomId) -> Option<Arc<Domain>> {
        let id = if id == DomId::SELF { self.d.id } else { id };
        if id == self.d.id {
            return Some(self.d.clone());
        }
        if let Some(p) = self.peers.get(&id.0) {
            return Some(p.clone());
        }
        let p = self.hv.domain(id)?;
        self.peers.insert(id.0, p.clone());
        Some(p)
    }

    fn slot_insert(&mut self, m: MapKind) -> u64 {
        let i = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { seq: 0, m: None });
                self.slots.len() as u32 - 1
            }
        };
        let s = &mut self.slots[i as usize];
        s.seq = s.seq.wrapping_add(1).max(1);
        s.m = Some(m);
        self.live_maps += 1;
        ((s.seq as u64) << 32) | i as u64
    }

    /// Takes the mapping named by `handle` if it is of the wanted kind.
    fn slot_take(&mut self, handle: u64, ring: bool) -> Option<MapKind> {
        let (seq, i) = ((handle >> 32) as u32, handle as u32);
        let s = self.slots.get_mut(i as usize)?;
        if s.seq != seq
            || seq == 0
            || !matches!((&s.m, ring), (Some(MapKind::Page { .. }), false) | (Some(MapKind::Ring { .. }), true))
        {
            return None;
        }
        let m = s.m.take();
        self.free_slots.push(i);
        self.live_maps -= 1;
        m
    }

    fn map_one(&mut self, domid: DomId, req: MapRequest) -> core::result::Result<Mapping, GntStatus> {
        if self.d.is_dead() {
            return Err(GntStatus::GeneralError);
        }
        if let Some(st) = self.d.faults.check(FaultKind::Map) {
            bump(&self.d.stats.faults_injected);
            return Err(st);
        }
        let granter = self.peer(domid).ok_or(GntStatus::BadDomain)?;
        let write = !req.readonly;
        let frame = granter.pin(req.gref, self.d.id, write)?;
        let region = match MappedRegion::map_fd(granter.fd(), frame as u64 * PAGE_SIZE as u64, PAGE_SIZE, write) {
            Ok(r) => r,
            Err(_) => {
                granter.unpin(req.gref, write);
                return Err(GntStatus::NoSpace);
            }
        };
        let mem = region.shared();
        let handle = self.slot_insert(MapKind::Page { granter, gref: req.gref, write, region });
        Ok(Mapping { mem, handle })
    }

    fn release(m: MapKind) -> usize {
        match m {
            MapKind::Page { granter, gref, write, region } => {
                // munmap first: the flags may only clear once the page is unreachable.
                drop(region);
                granter.unpin(gref, write);
                1
            }
            MapKind::Ring { granter, grefs, region } => {
                drop(region);
                for g in &grefs {
                    granter.unpin(*g, true);
                }
                grefs.len()
            }
        }
    }

    /// Resolves one side of a copy to a (pinned) region of exactly `len` bytes.
    fn copy_side(&mut self, p: &CopyPtr, len: usize, write: bool) -> core::result::Result<(SharedMem, Pin), GntStatus> {
        match *p {
            CopyPtr::Foreign { domid, gref, offset } => {
                if offset as usize + len > PAGE_SIZE {
                    return Err(GntStatus::BadCopyArg);
                }
                let g = self.peer(domid).ok_or(GntStatus::BadDomain)?;
                let frame = g.pin(gref, self.d.id, write)?;
                let mem = g.page(frame as u64).slice(offset as usize, len);
                Ok((mem, Some((g, gref))))
            }
            CopyPtr::Local { mem, offset } => {
                let off = offset as usize;
                if off + len > mem.len() {
                    return Err(GntStatus::BadCopyArg);
                }
                let a = mem.as_ptr() as usize + off;
                if len > 0 && a / PAGE_SIZE != (a + len - 1) / PAGE_SIZE {
                    return Err(GntStatus::BadCopyArg);
                }
                Ok((mem.slice(off, len), None))
            }
        }
    }

    fn copy_one(&mut self, op: &CopyOp) -> core::result::Result<(), GntStatus> {
        if self.d.is_dead() {
            return Err(GntStatus::GeneralError);
        }
        if let Some(st) = self.d.faults.check(FaultKind::Copy) {
            bump(&self.d.stats.faults_injected);
            return Err(st);
        }
        let len = op.len as usize;
        let (src, spin) = self.copy_side(&op.src, len, false)?;
        let (dst, dpin) = match self.copy_side(&op.dst, len, true) {
            Ok(v) => v,
            Err(e) => {
                if let Some((g, r)) = spin {
                    g.unpin(r, false);
                }
                return Err(e);
            }
        };
        SharedMem::copy_within_shared(&src, 0, &dst, 0, len);
        if let Some((g, r)) = spin {
            g.unpin(r, false);
        }
        if let Some((g, r)) = dpin {
            g.unpin(r, true);
        }
        Ok(())
    }
}

impl Drop for Dom {
    fn drop(&mut self) {
        for s in &mut self.slots {
            if let Some(m) = s.m.take() {
                Self::release(m);
            }
        }
        self.vmaps.clear();
    }
}

impl Pages for Dom {
    fn alloc_page(&mut self) -> Result<Page> {
        let f = self.free_pages.pop().ok_or(PlatformError::NoSpace)?;
        self.allocated[f as usize] = true;
        let mem = self.d.page(f as u64);
        mem.zero(0, PAGE_SIZE);
        bump(&self.d.stats.pages_allocated);
        Ok(Page { mem, frame: f as u64 })
    }

    fn alloc_pages_contiguous(&mut self, n: usize) -> Result<(SharedMem, [u64; 16])> {
        if n == 0 || n > MAX_RING_PAGES {
            return Err(PlatformError::Invalid);
        }
        if self.free_pages.len() < n {
            return Err(PlatformError::NoSpace);
        }
        let region = MappedRegion::reserve(n).map_err(|e| PlatformError::Errno(e.raw_os_error().unwrap_or(0)))?;
        let frames: Vec<u32> = self.free_pages.split_off(self.free_pages.len() - n);
        for (i, &f) in frames.iter().enumerate() {
            if let Err(e) = region.map_fixed(i, self.d.fd(), f as u64 * PAGE_SIZE as u64, true) {
                self.free_pages.extend_from_slice(&frames);
                return Err(PlatformError::Errno(e.raw_os_error().unwrap_or(0)));
            }
        }
        let mem = region.shared();
        mem.zero(0, n * PAGE_SIZE);
        let mut out = [0u64; 16];
        for (o, &f) in out.iter_mut().zip(&frames) {
            *o = f as u64;
            self.allocated[f as usize] = true;
        }
        bump_n(&self.d.stats.pages_allocated, n as u64);
        self.vmaps.insert(region.as_ptr() as usize, (region, frames));
        Ok((mem, out))
    }

    fn free_page(&mut self, page: Page) {
        let f = page.frame as usize;
        assert!(
            f < self.allocated.len() && self.allocated[f],
            "xenblk-sim: dom{} frees frame {f} that is not allocated (double free?)",
            self.d.id.0
        );
        self.allocated[f] = false;
        self.free_pages.push(f as u32);
        bump(&self.d.stats.pages_freed);
    }

    fn free_pages_contiguous(&mut self, mem: SharedMem, frames: &[u64]) {
        let (region, fr) = self
            .vmaps
            .remove(&(mem.as_ptr() as usize))
            .unwrap_or_else(|| panic!("xenblk-sim: dom{} frees a contiguous region it did not allocate", self.d.id.0));
        debug_assert!(frames.iter().zip(&fr).all(|(a, b)| *a == *b as u64), "frames do not match the allocation");
        drop(region);
        for f in &fr {
            self.allocated[*f as usize] = false;
        }
        bump_n(&self.d.stats.pages_freed, fr.len() as u64);
        self.free_pages.extend_from_slice(&fr);
    }
}

impl Grants for Dom {
    fn grant(&mut self, frame: u64, domid: DomId, readonly: bool) -> Result<GrantRef> {
        if frame as usize >= self.d.npages {
            return Err(PlatformError::Invalid);
        }
        let r = self.free_refs.pop_front().ok_or(PlatformError::NoSpace)?;
        if !self.d.gnt.grant(GrantRef(r), domid, frame as u32, readonly) {
            // The entry is still live (a test wrote it behind our back): leave it alone.
            return Err(PlatformError::Again);
        }
        self.ref_used[r as usize] = true;
        bump(&self.d.stats.grants);
        Ok(GrantRef(r))
    }

    fn end_access(&mut self, gref: GrantRef) -> core::result::Result<(), RevokeError> {
        if !self.ref_used.get(gref.0 as usize).copied().unwrap_or(false) {
            return Err(RevokeError::NotGranted);
        }
        match self.d.gnt.revoke(gref) {
            Ok(()) => {
                self.ref_used[gref.0 as usize] = false;
                self.free_refs.push_back(gref.0);
                bump(&self.d.stats.revokes);
                Ok(())
            }
            Err(e) => {
                if e == RevokeError::InUse {
                    bump(&self.d.stats.revokes_busy);
                }
                Err(e)
            }
        }
    }

    fn is_mapped(&mut self, gref: GrantRef) -> bool {
        self.d.gnt.in_use(gref)
    }

    fn observes_mappings(&self) -> bool {
        !self.opaque_grants
    }
}

impl Dom {
    /// Makes this domain's `Grants::observes_mappings` false, as on Linux gntalloc: the
    /// frontend's pool then keeps persistent grants without trying to end them.
    pub fn set_opaque_grants(&mut self, on: bool) {
        self.opaque_grants = on;
    }
}

impl GrantMapper for Dom {
    fn map_batch(&mut self, domid: DomId, reqs: &[MapRequest], out: &mut [core::result::Result<Mapping, GntStatus>]) {
        assert!(out.len() >= reqs.len(), "map_batch: output shorter than the batch");
        for (req, o) in reqs.iter().zip(out.iter_mut()) {
            *o = self.map_one(domid, *req);
            match o {
                Ok(_) => bump(&self.d.stats.maps),
                Err(_) => bump(&self.d.stats.map_failures),
            }
        }
    }

    fn unmap_batch(&mut self, maps: &[Mapping], status: &mut [GntStatus]) {
        assert!(status.len() >= maps.len(), "unmap_batch: status shorter than the batch");
        for (m, st) in maps.iter().zip(status.iter_mut()) {
            *st = match self.slot_take(m.handle, false) {
                Some(k) => {
                    Self::release(k);
                    bump(&self.d.stats.unmaps);
                    GntStatus::Okay
                }
                None => {
                    bump(&self.d.stats.unmap_failures);
                    GntStatus::BadHandle
                }
            };
        }
    }

    fn map_ring(&mut self, domid: DomId, grefs: &[GrantRef]) -> Result<Mapping> {
        let r = self.map_ring_inner(domid, grefs);
        match &r {
            Ok(_) => bump_n(&self.d.stats.ring_maps, grefs.len() as u64),
            Err(_) => bump(&self.d.stats.ring_map_failures),
        }
        r
    }

    fn unmap_ring(&mut self, map: Mapping) {
        match self.slot_take(map.handle, true) {
            Some(k) => {
                let n = Self::release(k);
                bump_n(&self.d.stats.ring_unmaps, n as u64);
            }
            None => bump(&self.d.stats.unmap_failures),
        }
    }

    fn copy_batch(&mut self, ops: &[CopyOp], status: &mut [GntStatus]) {
        assert!(status.len() >= ops.len(), "copy_batch: status shorter than the batch");
        for (op, st) in ops.iter().zip(status.iter_mut()) {
            *st = match self.copy_one(op) {
                Ok(()) => {
                    bump(&self.d.stats.copies);
                    bump_n(&self.d.stats.copy_bytes, op.len as u64);
                    GntStatus::Okay
                }
                Err(e) => {
                    bump(&self.d.stats.copy_failures);
                    e
                }
            };
        }
    }
}

impl Dom {
    fn map_ring_inner(&mut self, domid: DomId, grefs: &[GrantRef]) -> Result<Mapping> {
        if grefs.is_empty() || grefs.len() > MAX_RING_PAGES {
            return Err(PlatformError::Invalid);
        }
        if self.d.is_dead() {
            return Err(PlatformError::Grant(GntStatus::GeneralError));
        }
        if let Some(st) = self.d.faults.check(FaultKind::RingMap) {
            bump(&self.d.stats.faults_injected);
            return Err(PlatformError::Grant(st));
        }
        let granter = self.peer(domid).ok_or(PlatformError::Grant(GntStatus::BadDomain))?;
        let region =
            MappedRegion::reserve(grefs.len()).map_err(|e| PlatformError::Errno(e.raw_os_error().unwrap_or(0)))?;
        for (i, &g) in grefs.iter().enumerate() {
            let res = granter.pin(g, self.d.id, true).and_then(|frame| {
                region.map_fixed(i, granter.fd(), frame as u64 * PAGE_SIZE as u64, true).map_err(|_| {
                    granter.unpin(g, true);
                    GntStatus::NoSpace
                })
            });
            if let Err(st) = res {
                drop(region);
                for &done in &grefs[..i] {
                    granter.unpin(done, true);
                }
                return Err(PlatformError::Grant(st));
            }
        }
        let mem = region.shared();
        let handle = self.slot_insert(MapKind::Ring { granter, grefs: grefs.to_vec(), region });
        Ok(Mapping { mem, handle })
    }
}

impl EventChannels for Dom {
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port> {
        if self.d.is_dead() {
            return Err(PlatformError::NotFound);
        }
        let remote = if remote == DomId::SELF { self.d.id } else { remote };
        evtchn::alloc_unbound(&self.d, remote)
    }

    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port> {
        if self.d.is_dead() {
            return Err(PlatformError::NotFound);
        }
        let r = self.peer(remote).filter(|r| !r.is_dead()).ok_or(PlatformError::NotFound)?;
        evtchn::bind_interdomain(&self.d, &r, remote_port.0)
    }

    #[inline]
    fn notify(&mut self, port: Port) -> Result<()> {
        if self.d.faults.check(FaultKind::Notify).is_some() {
            bump(&self.d.stats.faults_injected);
            bump(&self.d.stats.notifies_dropped);
            return Ok(());
        }
        evtchn::notify(&self.d, port.0)
    }

    fn unbind(&mut self, port: Port) {
        let _ = evtchn::close(&self.d, port.0, false);
    }
}

impl XenStore for Dom {
    fn read(&mut self, tx: Tx, path: &str, buf: &mut [u8]) -> Result<usize> {
        self.xs_alive()?;
        self.hv.store().read_into(self.d.id, tx, path, buf)
    }

    fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<()> {
        self.xs_alive()?;
        self.hv.store().write(self.d.id, tx, path, value)
    }

    fn remove(&mut self, tx: Tx, path: &str) -> Result<()> {
        self.xs_alive()?;
        self.hv.store().remove(self.d.id, tx, path)
    }

    fn transaction_start(&mut self) -> Result<Tx> {
        self.xs_alive()?;
        self.hv.store().transaction_start(self.d.id)
    }

    fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<()> {
        self.xs_alive()?;
        self.hv.store().transaction_end(self.d.id, tx, commit)
    }

    fn watch(&mut self, path: &str, token: u32) -> Result<()> {
        self.xs_alive()?;
        self.hv.store().watch(&self.d, path, token)
    }

    fn unwatch(&mut self, path: &str, token: u32) -> Result<()> {
        self.xs_alive()?;
        self.hv.store().unwatch(self.d.id, path, token)
    }

    fn own_domid(&mut self) -> DomId {
        self.d.id
    }
}
