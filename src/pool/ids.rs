//! In-flight request ids: a bitmap over the ring's slots.
//!
//! An id is an index into the owner's shadow table, never a pointer: an id echoed by a
//! hostile peer is bounds-checked and must be in flight, or it is rejected.

use bitvec::BitArr;
use bitvec::order::Lsb0;

use crate::config::{RING_QUEUES, RING_SLOTS};

/// Ids one frontend can have in flight: every slot of every queue.
pub const MAX_IDS: usize = RING_SLOTS * RING_QUEUES;

/// Which of up to [`MAX_IDS`] ids are in flight.
#[derive(Clone, Debug)]
pub struct IdTable {
    bits: BitArr!(for MAX_IDS, in u32, Lsb0),
    limit: usize,
    used: usize,
}

impl IdTable {
    /// A table of `limit` ids (clamped to the configured ring size).
    pub fn new(limit: usize) -> IdTable {
        IdTable { bits: Default::default(), limit: limit.min(MAX_IDS), used: 0 }
    }

    /// Number of ids.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Ids in flight.
    pub fn in_flight(&self) -> usize {
        self.used
    }

    /// Takes the lowest free id (a word at a time: this runs once per request).
    #[inline]
    pub fn alloc(&mut self) -> Option<u16> {
        if self.used >= self.limit {
            return None;
        }
        let i = self
            .bits
            .as_raw_slice()
            .iter()
            .enumerate()
            .find_map(|(w, &word)| (word != u32::MAX).then(|| w * 32 + (!word).trailing_zeros() as usize))?;
        if i >= self.limit {
            return None;
        }
        // Lsb0 over u32 words: bit `i` is bit `i % 32` of word `i / 32`.
        self.bits.as_raw_mut_slice()[i / 32] |= 1 << (i % 32);
        self.used += 1;
        Some(i as u16)
    }

    /// Whether `id` (as echoed by a peer) is a valid in-flight id.
    #[inline]
    pub fn is_in_flight(&self, id: u64) -> bool {
        // `limit <= MAX_IDS`, so a valid id indexes the bitmap; compared as u64 so that no
        // high bits are cut off on a 32-bit target.
        id < self.limit as u64 && self.bits.as_raw_slice()[id as usize / 32] & (1 << (id % 32)) != 0
    }

    /// Releases `id`; `false` if it was not in flight (a duplicate or unknown response).
    #[inline]
    pub fn free(&mut self, id: u64) -> bool {
        if !self.is_in_flight(id) {
            return false;
        }
        self.bits.as_raw_mut_slice()[id as usize / 32] &= !(1 << (id % 32));
        self.used -= 1;
        true
    }

    /// Changes the number of ids (a reconnect to a ring of another size), keeping the ids
    /// in flight: the limit never drops below the highest of them.
    pub fn set_limit(&mut self, limit: usize) {
        let highest = self.bits.iter_ones().last().map_or(0, |i| i + 1);
        self.limit = limit.max(highest).min(MAX_IDS);
    }

    /// Iterates the ids in flight, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.bits[..self.limit].iter_ones().map(|i| i as u16)
    }

    /// Forgets every id.
    pub fn clear(&mut self) {
        self.bits.fill(false);
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_and_hostile_ids() {
        let mut t = IdTable::new(4);
        let ids: [u16; 4] = core::array::from_fn(|_| t.alloc().unwrap());
        assert_eq!(ids, [0, 1, 2, 3]);
        assert_eq!(t.alloc(), None);
        assert!(t.free(2));
        assert!(!t.free(2), "duplicate completion");
        assert!(!t.free(4), "beyond the limit");
        assert!(!t.free(u64::MAX));
        assert_eq!(t.alloc(), Some(2));
        assert_eq!(t.iter().count(), 4);
        t.clear();
        assert_eq!(t.in_flight(), 0);
    }
}
