//! The backend's cache of persistently mapped grants, keyed by grant reference.
//!
//! A frontend that negotiated persistence reuses a bounded set of grants; the backend keeps
//! each one mapped after its first use, up to a per-ring limit (and a budget shared by all
//! rings, [`GrantBudget`]). Past the limit new grants are mapped as ordinary mappings and
//! unmapped on completion, and the overflow is remembered so that the next
//! [`purge`](GrantCache::purge) evicts least-recently-used entries. Idle entries expire.
//! [`clear`](GrantCache::clear) unmaps everything (before the backend reports Closed).
//!
//! Lookup is an open-addressing hash index over the frontend-chosen 32-bit references; the
//! entries live in `heapless` storage sized by [`config::BACKEND_MAX_GRANTS`]
//! (`pool-static`) or in vectors that grow to the limit and shrink again (`pool-dynamic`).

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::config;
use crate::platform::{GrantMapper, Mapping};
use crate::proto::grant::{GntStatus, GrantRef};

/// Capacity (entries) of one ring's cache, fixed by the config.
pub const CAPACITY: usize = config::BACKEND_MAX_GRANTS;
#[cfg_attr(feature = "pool-dynamic", allow(dead_code))]
const INDEX_CAP: usize = if CAPACITY == 0 { 1 } else { (CAPACITY * 2).next_power_of_two() };
const EMPTY: u32 = u32::MAX;

cfg_if::cfg_if! {
    if #[cfg(feature = "pool-dynamic")] {
        type Slots = alloc::vec::Vec<Option<Cached>>;
        type Index = alloc::vec::Vec<u32>;
        fn new_slots() -> Slots { alloc::vec::Vec::new() }
        fn new_index(cap: usize) -> Index { alloc::vec![EMPTY; cap] }
        const fn initial_index_cap() -> usize { 16 }
        fn push_slot(v: &mut Slots, e: Option<Cached>) -> bool { v.push(e); true }
    } else {
        type Slots = heapless::Vec<Option<Cached>, CAPACITY>;
        type Index = [u32; INDEX_CAP];
        fn new_slots() -> Slots { heapless::Vec::new() }
        fn new_index(_cap: usize) -> Index { [EMPTY; INDEX_CAP] }
        const fn initial_index_cap() -> usize { INDEX_CAP }
        fn push_slot(v: &mut Slots, e: Option<Cached>) -> bool { v.push(e).is_ok() }
    }
}

/// A budget of persistent mappings shared by every ring of a backend (config
/// `backend.total_grants`). Lock-free: one atomic counter.
#[derive(Debug)]
pub struct GrantBudget {
    left: AtomicUsize,
    total: usize,
}

impl GrantBudget {
    /// A budget of `total` mappings.
    pub const fn new(total: usize) -> GrantBudget {
        GrantBudget { left: AtomicUsize::new(total), total }
    }
    /// The configured total.
    pub fn total(&self) -> usize {
        self.total
    }
    /// Mappings still available.
    pub fn left(&self) -> usize {
        self.left.load(Ordering::Relaxed)
    }
    fn take(&self) -> bool {
        self.left.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| v.checked_sub(1)).is_ok()
    }
    fn give(&self, n: usize) {
        self.left.fetch_add(n, Ordering::AcqRel);
    }
}

#[derive(Clone, Copy, Debug)]
struct Cached {
    gref: u32,
    map: Mapping,
    last_used: u64,
    active: u32,
}

/// Cache statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a mapping.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Mappings inserted.
    pub inserted: u64,
    /// Insertions refused (limit or budget reached).
    pub overflows: u64,
    /// Entries evicted (LRU or idle).
    pub evicted: u64,
}

/// One ring's persistent-grant cache.
#[derive(Debug)]
pub struct GrantCache {
    slots: Slots,
    free_slots: u32,
    index: Index,
    index_cap: usize,
    len: usize,
    limit: usize,
    overflow: bool,
    stats: CacheStats,
}

/// Handle to a cached entry, valid until the entry is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u32);

/// The home slot of `gref`: its low bits (with the high half folded in). Frontends hand out
/// grant references from dense ranges, so the references of a ring's hot pages land in a few
/// adjacent index lines instead of one line each (the index is up to 16 KiB per ring, and
/// the lookup's cache miss was a quarter of the backend's own time in the seed benchmark). A
/// scrambling hash buys nothing against a hostile frontend, which can compute collisions for
/// any fixed hash: linear probing over an index at most half full bounds the damage to that
/// frontend's own lookups.
#[inline]
fn hash(gref: u32, cap: usize) -> usize {
    ((gref ^ (gref >> 16)) as usize) & (cap - 1)
}

impl GrantCache {
    /// An empty cache holding at most `limit` mappings (clamped to [`CAPACITY`]).
    pub fn new(limit: usize) -> GrantCache {
        let cap = initial_index_cap();
        GrantCache {
            slots: new_slots(),
            free_slots: EMPTY,
            index: new_index(cap),
            index_cap: cap,
            len: 0,
            limit: limit.min(CAPACITY),
            overflow: false,
            stats: CacheStats::default(),
        }
    }

    /// Number of mappings held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no mapping is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
    /// Statistics.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    #[inline]
    fn find(&self, gref: u32) -> Option<usize> {
        let mut h = hash(gref, self.index_cap);
        loop {
            let s = self.index[h];
            if s == EMPTY {
                return None;
            }
            if let Some(Some(c)) = self.slots.get(s as usize)
                && c.gref == gref
            {
                return Some(h);
            }
            h = (h + 1) & (self.index_cap - 1);
        }
    }

    /// Looks `gref` up; on a hit marks the entry active at time `now` and returns it.
    #[inline]
    pub fn get(&mut self, gref: GrantRef, now: u64) -> Option<(Slot, Mapping)> {
        let Some(h) = self.find(gref.0) else {
            self.stats.misses += 1;
            return None;
        };
        let s = self.index[h];
        let c = self.slots[s as usize].as_mut()?;
        c.active += 1;
        c.last_used = now;
        self.stats.hits += 1;
        Some((Slot(s), c.map))
    }

    /// Adds a new mapping as active. Returns `None` (and remembers the overflow) when the
    /// limit or the shared budget is reached: the caller then treats the mapping as ordinary.
    pub fn insert(&mut self, gref: GrantRef, map: Mapping, now: u64, budget: Option<&GrantBudget>) -> Option<Slot> {
        if self.len >= self.limit || self.find(gref.0).is_some() {
            self.stats.overflows += 1;
            self.overflow = true;
            return None;
        }
        if let Some(b) = budget
            && !b.take()
        {
            self.stats.overflows += 1;
            self.overflow = true;
            return None;
        }
        #[cfg(feature = "pool-dynamic")]
        if (self.len + 1) * 2 > self.index_cap {
            self.rehash(self.index_cap * 2);
        }
        let entry = Some(Cached { gref: gref.0, map, last_used: now, active: 1 });
        let s = if self.free_slots != EMPTY {
            let s = self.free_slots;
            // A free slot stores the next free slot in its gref field of a `None`: we keep
            // the free list in a side chain instead (see `remove`).
            self.free_slots = self.next_free(s);
            self.slots[s as usize] = entry;
            s
        } else {
            let s = self.slots.len() as u32;
            if !push_slot(&mut self.slots, entry) {
                if let Some(b) = budget {
                    b.give(1);
                }
                self.stats.overflows += 1;
                self.overflow = true;
                return None;
            }
            s
        };
        let mut h = hash(gref.0, self.index_cap);
        while self.index[h] != EMPTY {
            h = (h + 1) & (self.index_cap - 1);
        }
        self.index[h] = s;
        self.len += 1;
        self.stats.inserted += 1;
        Some(Slot(s))
    }

    // Free slots are found by scanning for `None` entries lazily; to keep `insert` O(1) we
    // remember one hint and fall back to a scan.
    fn next_free(&self, after: u32) -> u32 {
        for (i, e) in self.slots.iter().enumerate().skip(after as usize + 1) {
            if e.is_none() {
                return i as u32;
            }
        }
        EMPTY
    }

    #[cfg(feature = "pool-dynamic")]
    fn rehash(&mut self, cap: usize) {
        self.index = new_index(cap);
        self.index_cap = cap;
        for (s, e) in self.slots.iter().enumerate() {
            if let Some(c) = e {
                let mut h = hash(c.gref, cap);
                while self.index[h] != EMPTY {
                    h = (h + 1) & (cap - 1);
                }
                self.index[h] = s as u32;
            }
        }
    }

    /// Marks the entry no longer used by one request.
    #[inline]
    pub fn release(&mut self, slot: Slot) {
        if let Some(Some(c)) = self.slots.get_mut(slot.0 as usize) {
            c.active = c.active.saturating_sub(1);
        }
    }

    fn remove_at(&mut self, h: usize) -> Option<Cached> {
        let s = self.index[h];
        let c = self.slots.get_mut(s as usize)?.take()?;
        // Backward-shift deletion keeps probe chains intact.
        let mask = self.index_cap - 1;
        let mut hole = h;
        let mut j = (h + 1) & mask;
        loop {
            let sj = self.index[j];
            if sj == EMPTY {
                break;
            }
            let g = self.slots[sj as usize].map(|c| c.gref).unwrap_or(0);
            let home = hash(g, self.index_cap);
            // Move j into the hole if its home is not in (hole, j].
            let dist_home = j.wrapping_sub(home) & mask;
            let dist_hole = j.wrapping_sub(hole) & mask;
            if dist_home >= dist_hole {
                self.index[hole] = sj;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.index[hole] = EMPTY;
        if self.free_slots == EMPTY || s < self.free_slots {
            self.free_slots = s;
        }
        self.len -= 1;
        Some(c)
    }

    /// Evicts up to `max` inactive entries chosen by `pick` and unmaps them in batches of
    /// 11. Returns how many were evicted.
    fn evict<M: GrantMapper>(
        &mut self,
        mapper: &mut M,
        budget: Option<&GrantBudget>,
        max: usize,
        mut pick: impl FnMut(&Cached) -> bool,
    ) -> usize {
        let mut batch: heapless::Vec<Mapping, 11> = heapless::Vec::new();
        let mut status = [GntStatus::Okay; 11];
        let mut n = 0;
        let mut h = 0;
        while h < self.index_cap && n < max {
            let s = self.index[h];
            let take =
                s != EMPTY && self.slots.get(s as usize).copied().flatten().is_some_and(|c| c.active == 0 && pick(&c));
            if !take {
                h += 1;
                continue;
            }
            if let Some(c) = self.remove_at(h) {
                let _ = batch.push(c.map);
                n += 1;
                if batch.is_full() {
                    mapper.unmap_batch(&batch, &mut status);
                    batch.clear();
                }
            }
            // Stay at h: backward shift may have moved another entry here.
        }
        if !batch.is_empty() {
            mapper.unmap_batch(&batch, &mut status[..batch.len()]);
        }
        if let Some(b) = budget {
            b.give(n);
        }
        self.stats.evicted += n as u64;
        n
    }

    /// Periodic purge (Linux blkback's policy): entries idle for at least `idle` ticks go,
    /// and after an overflow (or above the limit) enough least-recently-used inactive entries
    /// go to bring the cache 5 % under its limit. `idle == 0` disables expiry.
    pub fn purge<M: GrantMapper>(
        &mut self,
        mapper: &mut M,
        budget: Option<&GrantBudget>,
        now: u64,
        idle: u64,
    ) -> usize {
        let mut evicted = 0;
        if idle > 0 {
            evicted += self.evict(mapper, budget, usize::MAX, |c| now.saturating_sub(c.last_used) >= idle);
        }
        if self.overflow || self.len > self.limit {
            let target = (self.len + self.limit / 20).saturating_sub(self.limit).max(1).min(self.len);
            // LRU: find the age threshold by taking the oldest first, repeatedly.
            let mut left = target.saturating_sub(0);
            while left > 0 {
                let oldest = self.slots.iter().flatten().filter(|c| c.active == 0).map(|c| c.last_used).min();
                let Some(oldest) = oldest else { break };
                let got = self.evict(mapper, budget, left, |c| c.last_used == oldest);
                if got == 0 {
                    break;
                }
                left -= got;
                evicted += got;
            }
            self.overflow = false;
        }
        #[cfg(feature = "pool-dynamic")]
        if self.len == 0 && !self.slots.is_empty() {
            self.slots.clear();
            self.slots.shrink_to_fit();
            self.free_slots = EMPTY;
        }
        evicted
    }

    /// Unmaps every entry (disconnect). Entries still active are unmapped too: the caller
    /// calls this only once no request is in flight. Returns the number unmapped.
    pub fn clear<M: GrantMapper>(&mut self, mapper: &mut M, budget: Option<&GrantBudget>) -> usize {
        for c in self.slots.iter_mut().flatten() {
            c.active = 0;
        }
        let n = self.evict(mapper, budget, usize::MAX, |_| true);
        self.slots.clear();
        self.free_slots = EMPTY;
        self.overflow = false;
        n
    }

    /// Sets the limit (renegotiation); entries above it go at the next purge.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(CAPACITY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::mock::Mock;

    #[test]
    fn insert_lookup_remove_against_a_model() {
        // Dense references (the usual case: few collisions) ...
        against_a_model(|x| x % 400);
        // ... and more references than the limit that share their home slots (long probe
        // runs, evictions and deletions in the middle of them, runs wrapping at the end).
        against_a_model(|x| ((x % 100) << 12) | ((x >> 9) % 4));
        against_a_model(|x| ((x % 300) << 16) ^ (x % 300));
    }

    fn against_a_model(key: impl Fn(u32) -> u32) {
        let mut m = Mock::new();
        let limit = CAPACITY.min(200);
        let mut c = GrantCache::new(limit);
        let mut model = std::collections::BTreeMap::new();
        let mut x: u32 = 12345;
        for t in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let g = GrantRef(key(x));
            match c.get(g, t) {
                Some((slot, map)) => {
                    assert_eq!(model.get(&g.0), Some(&map.handle));
                    c.release(slot);
                }
                None => {
                    assert!(!model.contains_key(&g.0), "lost gref {}", g.0);
                    let map = m.fake_mapping(g.0 as u64);
                    match c.insert(g, map, t, None) {
                        Some(slot) => {
                            model.insert(g.0, map.handle);
                            c.release(slot);
                        }
                        None => assert_eq!(c.len(), limit),
                    }
                }
            }
            if t % 1000 == 999 {
                let before = c.len();
                let n = c.purge(&mut m, None, t, 0);
                assert_eq!(c.len(), before - n);
                model.retain(|g, _| c.find(*g).is_some());
                assert_eq!(model.len(), c.len());
            }
        }
        c.clear(&mut m, None);
        assert_eq!(c.len(), 0);
        // Every mapping the cache took was unmapped exactly once (refused ones stay the
        // caller's to unmap).
        assert_eq!(m.unmapped.len() as u64, c.stats().inserted);
    }

    #[test]
    fn lru_eviction_after_overflow_spares_active_entries() {
        let mut m = Mock::new();
        let limit = CAPACITY.min(20);
        let mut c = GrantCache::new(limit);
        let mut active = None;
        for i in 0..limit as u32 {
            let map = m.fake_mapping(i as u64);
            let s = c.insert(GrantRef(i), map, i as u64, None).unwrap();
            if i == 0 { active = Some(s) } else { c.release(s) }
        }
        let map = m.fake_mapping(999);
        assert!(c.insert(GrantRef(999), map, 100, None).is_none(), "over the limit");
        assert_eq!(c.stats().overflows, 1);
        let n = c.purge(&mut m, None, 101, 0);
        assert!(n >= 1);
        // The oldest inactive entry (1) went; the active oldest (0) stayed.
        assert!(c.find(0).is_some());
        assert!(c.find(1).is_none());
        c.release(active.unwrap());
    }

    #[test]
    fn idle_expiry_and_budget() {
        let mut m = Mock::new();
        static BUDGET: GrantBudget = GrantBudget::new(3);
        let mut c = GrantCache::new(CAPACITY.min(10));
        for i in 0..5u32 {
            let map = m.fake_mapping(i as u64);
            if let Some(s) = c.insert(GrantRef(i), map, i as u64 * 1000, Some(&BUDGET)) {
                c.release(s);
            }
        }
        assert_eq!((c.len(), BUDGET.left()), (3usize.min(CAPACITY), 3 - 3usize.min(CAPACITY)));
        if CAPACITY >= 3 {
            // At t=2500 with idle 1000: the entries used at 0 and 1000 expire; the budget
            // overflow (inserts 4 and 5 were refused) then evicts the oldest remaining one.
            let n = c.purge(&mut m, Some(&BUDGET), 2500, 1000);
            assert_eq!((n, c.len(), BUDGET.left()), (3, 0, 3));
            let map = m.fake_mapping(7);
            let s = c.insert(GrantRef(7), map, 3000, Some(&BUDGET)).unwrap();
            c.release(s);
            // No overflow now: only idle entries go.
            assert_eq!(c.purge(&mut m, Some(&BUDGET), 3500, 1000), 0);
            assert_eq!(c.purge(&mut m, Some(&BUDGET), 4000, 1000), 1);
        }
        c.clear(&mut m, Some(&BUDGET));
        assert_eq!(BUDGET.left(), 3);
    }
}
