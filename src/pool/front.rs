//! The frontend's pool of granted pages.
//!
//! Pages are granted once and reused for the whole connection (persistent grants), handed
//! out LIFO so that a hot subset stays mapped by the backend. At completion each page's grant
//! is ended with one atomic compare-exchange ([`Grants::end_access`]): if the backend still
//! maps it, it kept the grant persistently and the page goes back to the **head** of the free
//! list, still granted; if the revoke succeeds, the page goes to the **tail** and is granted
//! again when next used. Without persistence a still-mapped page is a protocol violation:
//! the page is parked (never freed or reused while mapped, XSA-396) and the caller fails the
//! device.
//!
//! Pages come zeroed from the platform and are zeroed again whenever they are released from
//! a connection, so no backend ever sees data from another (XSA-403).
//!
//! With `pool-static` the bookkeeping lives in `heapless` storage sized by
//! [`config::FRONTEND_POOL_GRANTS`]; with `pool-dynamic` it grows on demand up to the limit
//! and [`FrontPool::shrink`] gives idle pages back.

use crate::config;
use crate::platform::{FrontendPlatform, Page, PlatformError};
use crate::proto::grant::{DomId, GrantRef, RevokeError};
use crate::proto::shmem::SharedMem;

cfg_if::cfg_if! {
    if #[cfg(feature = "pool-dynamic")] {
        type Entries = alloc::vec::Vec<Entry>;
        type FreeList = alloc::collections::VecDeque<u16>;
        type Parked = alloc::vec::Vec<u16>;
        type Orphans = alloc::vec::Vec<(Page, GrantRef)>;
        fn new_orphans() -> Orphans { alloc::vec::Vec::new() }
        fn orphan(v: &mut Orphans, o: (Page, GrantRef)) -> bool { v.push(o); true }
        fn new_entries() -> Entries { alloc::vec::Vec::new() }
        fn new_free() -> FreeList { alloc::collections::VecDeque::new() }
        fn new_parked() -> Parked { alloc::vec::Vec::new() }
        fn push_entry(v: &mut Entries, e: Entry) -> bool { v.push(e); true }
        #[inline] fn push_back(v: &mut FreeList, i: u16) { v.push_back(i) }
        #[inline] fn push_front(v: &mut FreeList, i: u16) { v.push_front(i) }
        #[inline] fn park(v: &mut Parked, i: u16) { v.push(i) }
    } else {
        type Entries = heapless::Vec<Entry, { config::FRONTEND_POOL_GRANTS }>;
        type FreeList = heapless::Deque<u16, { config::FRONTEND_POOL_GRANTS }>;
        type Parked = heapless::Vec<u16, { config::FRONTEND_POOL_GRANTS }>;
        type Orphans = heapless::Vec<(Page, GrantRef), { config::FRONTEND_POOL_GRANTS }>;
        fn new_orphans() -> Orphans { heapless::Vec::new() }
        fn orphan(v: &mut Orphans, o: (Page, GrantRef)) -> bool { v.push(o).is_ok() }
        fn new_entries() -> Entries { heapless::Vec::new() }
        fn new_free() -> FreeList { heapless::Deque::new() }
        fn new_parked() -> Parked { heapless::Vec::new() }
        fn push_entry(v: &mut Entries, e: Entry) -> bool { v.push(e).is_ok() }
        // The free list and the parked list hold at most CAPACITY distinct indices, so
        // these pushes cannot overflow.
        #[inline] fn push_back(v: &mut FreeList, i: u16) { let _ = v.push_back(i); }
        #[inline] fn push_front(v: &mut FreeList, i: u16) { let _ = v.push_front(i); }
        #[inline] fn park(v: &mut Parked, i: u16) { let _ = v.push(i); }
    }
}

/// Capacity of the pool (pages), fixed by the config.
pub const CAPACITY: usize = config::FRONTEND_POOL_GRANTS;

#[derive(Clone, Copy, Debug)]
struct Entry {
    page: Option<Page>,
    gref: Option<GrantRef>,
    /// The domain `gref` grants to.
    peer: DomId,
    readonly: bool,
    /// Handed out (to a request or a lent buffer) and not yet returned.
    busy: bool,
}

/// Pool statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Grants made.
    pub grants: u64,
    /// Grants ended successfully.
    pub revokes: u64,
    /// Pages returned with their grant kept (persistence at work).
    pub kept_granted: u64,
    /// Pages currently parked because a revoke failed when it must not.
    pub parked: u64,
    /// Pages currently allocated.
    pub pages: u64,
}

/// Why the pool could not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PoolError {
    /// Every page is in use.
    Exhausted,
    /// The platform failed (allocation or grant).
    Platform(PlatformError),
    /// The backend kept mapping a page it was not allowed to keep.
    StillMapped,
}

/// The frontend's pool of granted pages.
#[derive(Debug)]
pub struct FrontPool {
    entries: Entries,
    free: FreeList,
    parked: Parked,
    /// Pages taken out of the pool because an old peer still maps them while their data
    /// had to move on (a migrated request): freed once that grant ends.
    orphans: Orphans,
    limit: usize,
    peer: DomId,
    stats: PoolStats,
}

impl FrontPool {
    /// An empty pool that may hold up to `limit` pages (clamped to [`CAPACITY`]), granting
    /// to `peer`.
    pub fn new(limit: usize, peer: DomId) -> FrontPool {
        FrontPool {
            entries: new_entries(),
            free: new_free(),
            parked: new_parked(),
            orphans: new_orphans(),
            limit: limit.clamp(1, CAPACITY),
            peer,
            stats: PoolStats::default(),
        }
    }

    /// The page limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Statistics.
    pub fn stats(&self) -> PoolStats {
        PoolStats { parked: self.parked.len() as u64, ..self.stats }
    }

    /// Pages that could be handed out now without exceeding the limit.
    #[inline]
    pub fn available(&self) -> usize {
        self.free.len() + (self.limit.saturating_sub(self.entries.len()))
    }

    /// Takes a page granted to the peer (read-only if `readonly`), LIFO.
    #[inline(always)]
    pub fn get<P: FrontendPlatform>(&mut self, plat: &mut P, readonly: bool) -> Result<u16, PoolError> {
        let idx = self.free.pop_front();
        // The common case (the head of the free list kept granted to this peer with this
        // permission): nothing to prepare.
        if let Some(i) = idx
            && self.is_ready(plat, i, readonly)
        {
            self.entries[i as usize].busy = true;
            return Ok(i);
        }
        self.get_slow(plat, idx, readonly)
    }

    /// [`get`](Self::get) of `idx` (already taken off the free list) when it needs
    /// preparing, or of a new entry when the free list was empty (`idx` None).
    #[inline(never)]
    fn get_slow<P: FrontendPlatform>(
        &mut self,
        plat: &mut P,
        idx: Option<u16>,
        readonly: bool,
    ) -> Result<u16, PoolError> {
        let idx = match idx {
            Some(i) => i,
            None => {
                if self.entries.len() >= self.limit {
                    return Err(PoolError::Exhausted);
                }
                let i = self.entries.len() as u16;
                if !push_entry(
                    &mut self.entries,
                    Entry { page: None, gref: None, peer: self.peer, readonly, busy: false },
                ) {
                    return Err(PoolError::Exhausted);
                }
                i
            }
        };
        match self.prepare(plat, idx, readonly) {
            Ok(()) => {
                self.entries[idx as usize].busy = true;
                Ok(idx)
            }
            Err(e) => {
                // Put it back at the tail so that nothing is lost.
                push_back(&mut self.free, idx);
                Err(e)
            }
        }
    }

    /// Whether [`prepare`](Self::prepare) has nothing to do for `idx`: the page exists and
    /// is granted to the current peer with the permission `prepare` would choose.
    #[inline]
    fn is_ready<P: FrontendPlatform>(&self, plat: &P, idx: u16, readonly: bool) -> bool {
        let readonly = readonly && plat.observes_mappings();
        self.entries
            .get(idx as usize)
            .is_some_and(|e| e.page.is_some() && e.gref.is_some() && e.peer == self.peer && e.readonly == readonly)
    }

    #[inline(never)]
    fn prepare<P: FrontendPlatform>(&mut self, plat: &mut P, idx: u16, readonly: bool) -> Result<(), PoolError> {
        // A board that cannot see mappings grants read-write only: a permission change would
        // end a grant the backend may still cache.
        let readonly = readonly && plat.observes_mappings();
        let e = &mut self.entries[idx as usize];
        if e.page.is_none() {
            e.page = Some(plat.alloc_page().map_err(PoolError::Platform)?);
            self.stats.pages += 1;
        }
        if let Some(g) = e.gref
            && e.peer != self.peer
        {
            // Granted to an earlier backend (the guest moved to another backend domain). The
            // old grant must end; if the old backend still maps the page, the page cannot be
            // reused: its contents move to a fresh page and the old one is set aside.
            match plat.end_access(g) {
                Ok(()) => {
                    self.stats.revokes += 1;
                    e.gref = None;
                }
                Err(RevokeError::NotGranted) => e.gref = None,
                Err(RevokeError::InUse) => {
                    let fresh = plat.alloc_page().map_err(PoolError::Platform)?;
                    let Some(old) = e.page else { return Err(PoolError::StillMapped) };
                    let mut tmp = [0u8; crate::proto::ring::PAGE_SIZE];
                    old.mem.copy_to_private(0, &mut tmp);
                    fresh.mem.copy_from_private(0, &tmp);
                    if !orphan(&mut self.orphans, (old, g)) {
                        plat.free_page(fresh);
                        return Err(PoolError::StillMapped);
                    }
                    e.page = Some(fresh);
                    e.gref = None;
                    self.stats.pages += 1;
                }
            }
        }
        if let Some(g) = e.gref {
            if e.readonly == readonly {
                return Ok(());
            }
            // Permission change: the old grant must end first.
            match plat.end_access(g) {
                Ok(()) => {
                    self.stats.revokes += 1;
                    e.gref = None;
                }
                Err(RevokeError::NotGranted) => e.gref = None,
                Err(RevokeError::InUse) => {
                    // Still mapped with the old permission: keep it as it is. A read-write
                    // grant serves a read-only use; a read-only one cannot serve a read.
                    if !e.readonly {
                        return Ok(());
                    }
                    return Err(PoolError::StillMapped);
                }
            }
        }
        let frame = e.page.map(|p| p.frame).unwrap_or(0);
        let g = plat.grant(frame, self.peer, readonly).map_err(PoolError::Platform)?;
        e.gref = Some(g);
        e.peer = self.peer;
        e.readonly = readonly;
        self.stats.grants += 1;
        Ok(())
    }

    /// The page behind `idx`.
    #[inline]
    pub fn page(&self, idx: u16) -> SharedMem {
        match self.entries.get(idx as usize).and_then(|e| e.page) {
            Some(p) => p.mem,
            None => panic!("pool index {idx} has no page"),
        }
    }

    /// The grant of `idx` (valid between [`get`](Self::get) and [`put`](Self::put)).
    #[inline]
    pub fn gref(&self, idx: u16) -> GrantRef {
        self.entries.get(idx as usize).and_then(|e| e.gref).unwrap_or(GrantRef(u32::MAX))
    }

    /// Returns a page after its request completed. `persistent` says whether persistence
    /// was negotiated with the backend: then the grant stays as it is (mapped by the backend
    /// or not, the page only ever goes to this backend again until [`release_all`]) and the
    /// page goes to the head of the free list without touching the grant table. Without
    /// persistence the grant is ended, and a page the backend still maps is parked.
    ///
    /// [`release_all`]: Self::release_all
    #[inline]
    pub fn put<P: FrontendPlatform>(&mut self, plat: &mut P, idx: u16, persistent: bool) -> Result<(), PoolError> {
        // The common case (persistence, a granted page handed out): the path of `put_slow`
        // for it, inline.
        if persistent
            && let Some(e) = self.entries.get_mut(idx as usize)
            && e.busy
            && e.gref.is_some()
        {
            e.busy = false;
            self.stats.kept_granted += 1;
            push_front(&mut self.free, idx);
            return Ok(());
        }
        self.put_slow(plat, idx, persistent)
    }

    #[inline(never)]
    fn put_slow<P: FrontendPlatform>(&mut self, plat: &mut P, idx: u16, persistent: bool) -> Result<(), PoolError> {
        let Some(e) = self.entries.get_mut(idx as usize) else { return Ok(()) };
        if !e.busy {
            // Returned twice: ignore rather than corrupt the free list.
            return Ok(());
        }
        e.busy = false;
        let Some(g) = e.gref else {
            push_back(&mut self.free, idx);
            return Ok(());
        };
        if persistent {
            self.stats.kept_granted += 1;
            push_front(&mut self.free, idx);
            return Ok(());
        }
        match plat.end_access(g) {
            Ok(()) => {
                e.gref = None;
                self.stats.revokes += 1;
                push_back(&mut self.free, idx);
                Ok(())
            }
            Err(RevokeError::NotGranted) => {
                e.gref = None;
                push_back(&mut self.free, idx);
                Ok(())
            }
            Err(RevokeError::InUse) => {
                park(&mut self.parked, idx);
                Err(PoolError::StillMapped)
            }
        }
    }

    /// Pages returned without ending their grants (the request never reached the backend).
    pub fn put_unused(&mut self, idx: u16) {
        if let Some(e) = self.entries.get_mut(idx as usize)
            && e.busy
        {
            e.busy = false;
            push_front(&mut self.free, idx);
        }
    }

    /// Makes sure a page that is handed out is granted with the wanted permission (after a
    /// reconnect its grant was ended).
    pub fn ensure_granted<P: FrontendPlatform>(
        &mut self,
        plat: &mut P,
        idx: u16,
        readonly: bool,
    ) -> Result<(), PoolError> {
        if self.is_ready(plat, idx, readonly) {
            return Ok(());
        }
        self.prepare(plat, idx, readonly)
    }

    /// Ends the grant of a page that stays handed out (a lent buffer after completion),
    /// unless persistence was negotiated (then the grant is kept, as in [`put`](Self::put)).
    /// `Err(StillMapped)` when the backend keeps it mapped without persistence.
    pub fn settle<P: FrontendPlatform>(&mut self, plat: &mut P, idx: u16, persistent: bool) -> Result<(), PoolError> {
        let Some(e) = self.entries.get_mut(idx as usize) else { return Ok(()) };
        let Some(g) = e.gref else { return Ok(()) };
        if persistent {
            self.stats.kept_granted += 1;
            return Ok(());
        }
        match plat.end_access(g) {
            Ok(()) => {
                e.gref = None;
                self.stats.revokes += 1;
                Ok(())
            }
            Err(RevokeError::NotGranted) => {
                e.gref = None;
                Ok(())
            }
            Err(RevokeError::InUse) => Err(PoolError::StillMapped),
        }
    }

    /// Ends every grant (disconnect). Free pages whose grant ends are zeroed, so a future
    /// backend sees nothing of this one's data; pages the backend still maps are parked.
    /// Pages still handed out (in-flight requests kept for re-issue, lent buffers) keep
    /// their data and lose only their grant; they are granted again when re-issued.
    /// Returns the number parked.
    pub fn release_all<P: FrontendPlatform>(&mut self, plat: &mut P) -> usize {
        self.free.clear();
        for i in 0..self.entries.len() {
            if self.parked.contains(&(i as u16)) {
                continue;
            }
            let e = &mut self.entries[i];
            let ended = match e.gref {
                None => true,
                Some(g) => match plat.end_access(g) {
                    Ok(()) => {
                        self.stats.revokes += 1;
                        true
                    }
                    Err(RevokeError::NotGranted) => true,
                    Err(RevokeError::InUse) => false,
                },
            };
            if ended {
                e.gref = None;
            }
            if e.busy {
                continue;
            }
            if ended {
                if let Some(p) = e.page {
                    p.mem.zero(0, p.mem.len());
                }
                push_back(&mut self.free, i as u16);
            } else {
                park(&mut self.parked, i as u16);
            }
        }
        self.parked.len()
    }

    /// Pages set aside because an earlier backend still maps them (see
    /// [`reap_parked`](Self::reap_parked)).
    pub fn orphans(&self) -> usize {
        self.orphans.len()
    }

    /// Retries parked pages; those the backend finally let go are zeroed and reusable.
    /// Orphaned pages whose old grant ends are freed. Returns the pages still parked.
    pub fn reap_parked<P: FrontendPlatform>(&mut self, plat: &mut P) -> usize {
        let mut k = 0;
        while k < self.orphans.len() {
            let (page, g) = self.orphans[k];
            if matches!(plat.end_access(g), Err(RevokeError::InUse)) {
                k += 1;
            } else {
                page.mem.zero(0, page.mem.len());
                plat.free_page(page);
                self.stats.pages -= 1;
                self.orphans.swap_remove(k);
            }
        }
        let mut i = 0;
        while i < self.parked.len() {
            let idx = self.parked[i];
            let e = &mut self.entries[idx as usize];
            let done = match e.gref {
                None => true,
                Some(g) => !matches!(plat.end_access(g), Err(RevokeError::InUse)),
            };
            if done {
                e.gref = None;
                if let Some(p) = e.page {
                    p.mem.zero(0, p.mem.len());
                }
                self.parked.swap_remove(i);
                push_back(&mut self.free, idx);
            } else {
                i += 1;
            }
        }
        self.parked.len()
    }

    /// Sets the peer for the next connection (after [`release_all`](Self::release_all)).
    pub fn set_peer(&mut self, peer: DomId) {
        self.peer = peer;
    }

    /// Sets the page limit (at most [`CAPACITY`]); pages above it are not handed out again.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.clamp(1, CAPACITY);
    }

    /// Frees the pages of free, ungranted entries beyond `keep` (dynamic pools shrink; a
    /// static pool may call it too, to return pages to the platform). Returns pages freed.
    pub fn shrink<P: FrontendPlatform>(&mut self, plat: &mut P, keep: usize) -> usize {
        let mut freed = 0;
        let mut resident = self.stats.pages as usize;
        for &idx in self.free.iter().rev() {
            if resident <= keep {
                break;
            }
            let e = &mut self.entries[idx as usize];
            if e.gref.is_none()
                && let Some(p) = e.page.take()
            {
                plat.free_page(p);
                freed += 1;
                resident -= 1;
            }
        }
        self.stats.pages = resident as u64;
        freed
    }

    /// Frees every page that is not parked (the pool is dropped by its owner afterwards).
    /// Call after [`release_all`](Self::release_all).
    pub fn free_pages<P: FrontendPlatform>(&mut self, plat: &mut P) {
        for i in 0..self.entries.len() {
            if self.parked.contains(&(i as u16)) {
                continue;
            }
            let e = &mut self.entries[i];
            if e.gref.is_none()
                && let Some(p) = e.page.take()
            {
                plat.free_page(p);
                self.stats.pages -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::mock::Mock;

    #[test]
    fn lifo_reuse_and_persistence_rules() {
        let mut m = Mock::new();
        let mut pool = FrontPool::new(4, DomId(0));
        let a = pool.get(&mut m, false).unwrap();
        let b = pool.get(&mut m, false).unwrap();
        let (ga, gb) = (pool.gref(a), pool.gref(b));
        assert!(pool.page(a).len() == 4096);
        // Backend keeps `a` mapped persistently, not `b`: with persistence both keep their
        // grants and go to the head, last returned first; the grant table is not touched.
        m.set_mapped(ga, true);
        pool.put(&mut m, b, true).unwrap();
        pool.put(&mut m, a, true).unwrap();
        let st = pool.stats();
        assert_eq!((st.kept_granted, st.revokes), (2, 0));
        assert!(m.table.read(gb).is_some_and(|e| e.flags != 0), "persistent grant of b ended");
        let again = pool.get(&mut m, false).unwrap();
        assert_eq!((again, pool.gref(again)), (a, ga));
        let b2 = pool.get(&mut m, false).unwrap();
        assert_eq!((b2, pool.gref(b2)), (b, gb));
        // Without persistence an unmapped page loses its grant and goes to the tail.
        pool.put(&mut m, b2, false).unwrap();
        assert_eq!(pool.stats().revokes, 1);
        assert!(m.table.read(gb).is_none_or(|e| e.flags == 0));
        // Without persistence a still-mapped page is parked, never handed out again.
        assert_eq!(pool.put(&mut m, again, false), Err(PoolError::StillMapped));
        assert_eq!(pool.stats().parked, 1);
        let mut seen = std::vec::Vec::new();
        while let Ok(i) = pool.get(&mut m, false) {
            seen.push(i);
        }
        assert!(!seen.contains(&a), "a parked page was reused");
        assert_eq!(seen.len(), 3);
        // Once the backend lets go it is reclaimed.
        m.set_mapped(ga, false);
        assert_eq!(pool.reap_parked(&mut m), 0);
        assert_eq!(pool.get(&mut m, false), Ok(a));
    }

    #[test]
    fn release_zeroes_free_pages_and_keeps_busy_data() {
        let mut m = Mock::new();
        let mut pool = FrontPool::new(2, DomId(0));
        let a = pool.get(&mut m, false).unwrap();
        let b = pool.get(&mut m, false).unwrap();
        pool.page(a).write_bytes(0, &[0xaa; 16]);
        pool.page(b).write_bytes(0, &[0xbb; 16]);
        pool.put(&mut m, a, true).unwrap();
        assert_eq!(pool.release_all(&mut m), 0);
        let mut buf = [1u8; 16];
        pool.page(a).read_bytes(0, &mut buf);
        assert_eq!(buf, [0; 16], "free page not zeroed on release");
        pool.page(b).read_bytes(0, &mut buf);
        assert_eq!(buf, [0xbb; 16], "in-flight data lost on release");
        assert_eq!(pool.gref(b), GrantRef(u32::MAX), "busy page kept its grant");
        pool.ensure_granted(&mut m, b, false).unwrap();
        assert_ne!(pool.gref(b), GrantRef(u32::MAX));
    }

    #[test]
    fn limit_and_readonly_regrant() {
        let mut m = Mock::new();
        let mut pool = FrontPool::new(1, DomId(0));
        let a = pool.get(&mut m, true).unwrap();
        assert_eq!(pool.get(&mut m, true), Err(PoolError::Exhausted));
        let g = pool.gref(a);
        assert!(m.table.read(g).unwrap().flags & crate::proto::grant::GTF_READONLY != 0);
        pool.put_unused(a);
        let a2 = pool.get(&mut m, false).unwrap();
        assert_eq!(m.table.read(pool.gref(a2)).unwrap().flags & crate::proto::grant::GTF_READONLY, 0);
    }

    #[test]
    fn opaque_board_keeps_persistent_grants_and_grants_writable() {
        let mut m = Mock::new();
        m.opaque = true;
        let mut pool = FrontPool::new(2, DomId(0));
        // Read-only wanted, but a board that cannot see mappings grants read-write only.
        let a = pool.get(&mut m, true).unwrap();
        let ga = pool.gref(a);
        assert_eq!(m.table.read(ga).unwrap().flags & crate::proto::grant::GTF_READONLY, 0);
        // Persistent: no revoke is attempted, the grant stays and the page is reused first.
        pool.put(&mut m, a, true).unwrap();
        assert_eq!(m.end_calls, 0);
        assert_eq!(pool.stats().kept_granted, 1);
        let again = pool.get(&mut m, false).unwrap();
        assert_eq!((again, pool.gref(again)), (a, ga));
        pool.settle(&mut m, again, true).unwrap();
        assert_eq!((m.end_calls, pool.gref(again)), (0, ga));
        // Without persistence the grant is ended at completion.
        pool.put(&mut m, again, false).unwrap();
        assert_eq!(m.end_calls, 1);
        assert_eq!(pool.gref(again), GrantRef(u32::MAX));
        // Disconnect ends whatever is still granted.
        let b = pool.get(&mut m, false).unwrap();
        pool.put(&mut m, b, true).unwrap();
        assert_eq!(pool.release_all(&mut m), 0);
        assert!(m.end_calls >= 2);
        assert!(m.table.read(pool.gref(b)).is_none_or(|e| e.flags == 0));
    }
}
