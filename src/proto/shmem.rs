//! The one accessor for memory shared with a peer domain.
//!
//! Shared memory is hostile memory: the peer may change any byte at any time. Everything the
//! driver reads from a ring slot, an indirect page or a data page goes through [`SharedMem`],
//! which copies once (volatile) into private memory; validation then runs on the private copy.
//! Writes go field by field or as one copy of a private, fully initialised byte buffer, so no
//! padding byte of a Rust struct can ever leak to the peer (XSA-216).
//!
//! This module holds the only `unsafe` code of the protocol layer. [`SharedMem::new`] is the
//! single point where a board vouches for a region; every other method is safe and bounds
//! checked against the region's length.
//!
//! With `--cfg loom` (the model checker's build, `tests/loom.rs`), [`SharedMem`] is instead
//! a region of loom atomics and [`fence`] is loom's, so that the ring code of
//! [`ring`](super::ring) runs unchanged under the model checker (see the `loom_model`
//! module at the end of this file).

#[cfg(not(loom))]
use core::ptr::NonNull;
#[cfg(not(loom))]
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

/// The memory fence the ring uses between index stores and loads (`core`'s, or loom's in a
/// loom build).
#[cfg(not(loom))]
pub use core::sync::atomic::fence;
#[cfg(loom)]
pub use loom_model::{SharedMem, fence, planted};

/// A region of memory shared with another domain (a ring, a granted page, a mapped grant).
///
/// Copies of `SharedMem` alias the same memory; that is intended (the peer aliases it too).
/// Accessors never hand out Rust references to the shared bytes.
#[cfg(not(loom))]
#[derive(Clone, Copy, Debug)]
pub struct SharedMem {
    ptr: NonNull<u8>,
    len: usize,
}

#[cfg(not(loom))]
// SAFETY: a SharedMem is a raw view of memory that is already shared with another domain and
// is only accessed through volatile or atomic operations; moving the view to another thread
// adds no aliasing that the peer does not already have.
unsafe impl Send for SharedMem {}
#[cfg(not(loom))]
// SAFETY: as above: all accesses are volatile/atomic, never through references.
unsafe impl Sync for SharedMem {}

/// Out-of-range offset into a [`SharedMem`] region (a driver bug, never peer input: peer
/// indices are masked before use).
#[track_caller]
#[cold]
#[cfg_attr(loom, allow(dead_code))]
fn out_of_range(off: usize, size: usize, len: usize) -> ! {
    panic!("shared memory access {off}+{size} outside region of {len} bytes")
}

/// The largest piece a bulk copy ([`SharedMem::copy_to_private`],
/// [`SharedMem::copy_from_private`]) hands to one `memcpy`. Measured on the development
/// machine (Zen, glibc 2.36): one 4 KiB `memcpy` whose destination sits 1-31 bytes past the
/// source's offset in a page takes 1.6-3.7 µs with both hot (up to 0.5 µs at 48-63; glibc's
/// `rep movsb` path, we believe), where two 2 KiB copies take 45-120 ns at every offset. A
/// caller's `Vec<u8>` of 128 KiB or more starts 16 bytes past a page boundary, so its 4 KiB
/// copies to and from a pool page hit exactly that. Aligned copies are no slower split.
pub const BULK_CHUNK: usize = 2048;

#[cfg(not(loom))]
impl SharedMem {
    /// Wraps `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// For as long as this value or any copy of it is used: `ptr..ptr+len` must be mapped,
    /// readable and writable, and must not be deallocated or unmapped; `ptr` must be 4-byte
    /// aligned (ring indices and grant flags are accessed atomically). Concurrent access by
    /// the peer is expected and fine; concurrent access by this program through Rust
    /// references is not.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        let ptr = NonNull::new(ptr).expect("SharedMem::new: null pointer");
        debug_assert!((ptr.as_ptr() as usize).is_multiple_of(4));
        SharedMem { ptr, len }
    }

    /// Wraps memory that is handed over for good (static storage on an embedded board, or a
    /// leaked allocation): the exclusive reference is consumed, so no other Rust reference
    /// to these bytes can exist afterwards.
    pub fn from_static_words(words: &'static mut [u64]) -> Self {
        let len = core::mem::size_of_val(words);
        // SAFETY: the memory is 'static (never freed), 8-byte aligned by type, and the only
        // reference to it was moved into this call.
        unsafe { SharedMem::new(words.as_mut_ptr() as *mut u8, len) }
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base address (for boards that must name the region to a hypercall or an ioctl).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A sub-region `off..off+len`.
    #[inline]
    #[track_caller]
    pub fn slice(&self, off: usize, len: usize) -> SharedMem {
        self.check(off, len);
        // The sub-range lies inside the region, so the invariants of `new` carry over.
        SharedMem { ptr: self.at(off), len }
    }

    #[inline(always)]
    #[track_caller]
    fn check(&self, off: usize, size: usize) {
        match off.checked_add(size) {
            Some(end) if end <= self.len => {}
            _ => out_of_range(off, size, self.len),
        }
    }

    #[inline(always)]
    fn at(&self, off: usize) -> NonNull<u8> {
        // SAFETY: callers checked `off <= len`, so the result stays inside (or one past) the
        // region described to `new`.
        unsafe { self.ptr.add(off) }
    }

    /// Copies `dst.len()` bytes starting at `off` into private memory, with volatile reads.
    #[inline]
    #[track_caller]
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        let src = self.at(off).as_ptr();
        let mut i = 0;
        if (src as usize).is_multiple_of(8) {
            // Fast path (ring slots): aligned, so every whole word is one volatile load.
            let words = dst.len() / 8;
            for (k, chunk) in dst[..words * 8].chunks_exact_mut(8).enumerate() {
                // SAFETY: in bounds (checked above: k * 8 + 8 <= dst.len()) and 8-byte aligned.
                let w = unsafe { core::ptr::read_volatile(src.add(k * 8) as *const u64) };
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            i = words * 8;
        }
        // Word-sized volatile reads where alignment allows, bytes for the rest.
        while i + 8 <= dst.len() {
            if (src as usize + i).is_multiple_of(8) {
                // SAFETY: in bounds and 8-byte aligned.
                let w = unsafe { core::ptr::read_volatile(src.add(i) as *const u64) };
                dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: in bounds.
                dst[i] = unsafe { core::ptr::read_volatile(src.add(i)) };
                i += 1;
            }
        }
        while i < dst.len() {
            // SAFETY: in bounds.
            dst[i] = unsafe { core::ptr::read_volatile(src.add(i)) };
            i += 1;
        }
    }

    /// Copies the `N` bytes at `off` into the private array `dst`, with volatile reads: the
    /// same copy as [`read_bytes`](Self::read_bytes) (every byte read exactly once), for small
    /// fields of a size known at compile time (a ring slot's header, a segment), done with the
    /// widest aligned loads the address allows and no loop left at run time.
    #[inline(always)]
    #[track_caller]
    pub fn read_into<const N: usize>(&self, off: usize, dst: &mut [u8; N]) {
        self.check(off, N);
        let src = self.at(off).as_ptr();
        let mut i = 0;
        if (src as usize).is_multiple_of(8) {
            while i + 8 <= N {
                // SAFETY: in bounds (checked above: i + 8 <= N) and 8-byte aligned.
                let w = unsafe { core::ptr::read_volatile(src.add(i) as *const u64) };
                dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                i += 8;
            }
        }
        if (src as usize + i).is_multiple_of(4) {
            while i + 4 <= N {
                // SAFETY: in bounds and 4-byte aligned.
                let w = unsafe { core::ptr::read_volatile(src.add(i) as *const u32) };
                dst[i..i + 4].copy_from_slice(&w.to_ne_bytes());
                i += 4;
            }
        }
        while i < N {
            // SAFETY: in bounds.
            dst[i] = unsafe { core::ptr::read_volatile(src.add(i)) };
            i += 1;
        }
    }

    /// Copies the `N` bytes of `src` into the region at `off`, with volatile writes: the same
    /// copy as [`write_bytes`](Self::write_bytes), for small images of a size known at compile
    /// time (a response), with the widest aligned stores the address allows.
    #[inline(always)]
    #[track_caller]
    pub fn write_array<const N: usize>(&self, off: usize, src: &[u8; N]) {
        self.check(off, N);
        let dst = self.at(off).as_ptr();
        let mut i = 0;
        if (dst as usize).is_multiple_of(8) {
            while i + 8 <= N {
                let mut w = [0u8; 8];
                w.copy_from_slice(&src[i..i + 8]);
                // SAFETY: in bounds (checked above: i + 8 <= N) and 8-byte aligned.
                unsafe { core::ptr::write_volatile(dst.add(i) as *mut u64, u64::from_ne_bytes(w)) };
                i += 8;
            }
        }
        if (dst as usize + i).is_multiple_of(4) {
            while i + 4 <= N {
                let mut w = [0u8; 4];
                w.copy_from_slice(&src[i..i + 4]);
                // SAFETY: in bounds and 4-byte aligned.
                unsafe { core::ptr::write_volatile(dst.add(i) as *mut u32, u32::from_ne_bytes(w)) };
                i += 4;
            }
        }
        while i < N {
            // SAFETY: in bounds.
            unsafe { core::ptr::write_volatile(dst.add(i), src[i]) };
            i += 1;
        }
    }

    /// Copies `src` into the region at `off`, with volatile writes.
    #[inline]
    #[track_caller]
    pub fn write_bytes(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        let dst = self.at(off).as_ptr();
        let mut i = 0;
        if (dst as usize).is_multiple_of(8) {
            // Fast path (ring slots): aligned, so every whole word is one volatile store.
            let words = src.len() / 8;
            for (k, chunk) in src[..words * 8].chunks_exact(8).enumerate() {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                // SAFETY: in bounds (checked above: k * 8 + 8 <= src.len()) and 8-byte aligned.
                unsafe { core::ptr::write_volatile(dst.add(k * 8) as *mut u64, u64::from_ne_bytes(w)) };
            }
            i = words * 8;
        }
        while i + 8 <= src.len() {
            if (dst as usize + i).is_multiple_of(8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(&src[i..i + 8]);
                // SAFETY: in bounds and 8-byte aligned.
                unsafe { core::ptr::write_volatile(dst.add(i) as *mut u64, u64::from_ne_bytes(w)) };
                i += 8;
            } else {
                // SAFETY: in bounds.
                unsafe { core::ptr::write_volatile(dst.add(i), src[i]) };
                i += 1;
            }
        }
        while i < src.len() {
            // SAFETY: in bounds.
            unsafe { core::ptr::write_volatile(dst.add(i), src[i]) };
            i += 1;
        }
    }

    /// Bulk copy out of shared memory (data pages), in pieces of at most [`BULK_CHUNK`]: the data
    /// is opaque payload that is never validated, so a torn read by a racing peer only hurts
    /// that peer's own I/O.
    #[inline]
    #[track_caller]
    pub fn copy_to_private(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        let src = self.at(off).as_ptr() as *const u8;
        let mut done = 0;
        while done < dst.len() {
            let n = (dst.len() - done).min(BULK_CHUNK);
            // SAFETY: `done + n <= dst.len()`, which is in bounds of the region (checked
            // above); `dst` is private memory that cannot overlap the shared region (a
            // `&mut [u8]` to the shared region cannot exist: this type never creates one).
            unsafe { core::ptr::copy_nonoverlapping(src.add(done), dst.as_mut_ptr().add(done), n) }
            done += n;
        }
    }

    /// Bulk copy of private payload into shared memory (data pages).
    #[inline]
    #[track_caller]
    pub fn copy_from_private(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        let dst = self.at(off).as_ptr();
        let mut done = 0;
        while done < src.len() {
            let n = (src.len() - done).min(BULK_CHUNK);
            // SAFETY: `done + n <= src.len()`, in bounds of the region (checked above); `src`
            // is private memory (see `copy_to_private`).
            unsafe { core::ptr::copy_nonoverlapping(src.as_ptr().add(done), dst.add(done), n) }
            done += n;
        }
    }

    /// Copies between two shared regions (backend data path: mapped grant <-> storage page).
    #[inline]
    #[track_caller]
    pub fn copy_within_shared(src: &SharedMem, src_off: usize, dst: &SharedMem, dst_off: usize, len: usize) {
        src.check(src_off, len);
        dst.check(dst_off, len);
        // SAFETY: both ranges are in bounds; `copy` tolerates overlap should a board map the
        // same frame twice.
        unsafe { core::ptr::copy(src.at(src_off).as_ptr(), dst.at(dst_off).as_ptr(), len) }
    }

    /// Fills `len` bytes at `off` with zero.
    #[inline]
    #[track_caller]
    pub fn zero(&self, off: usize, len: usize) {
        self.check(off, len);
        // SAFETY: in bounds.
        unsafe { core::ptr::write_bytes(self.at(off).as_ptr(), 0, len) }
    }

    #[inline(always)]
    #[track_caller]
    fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4);
        assert!(off.is_multiple_of(4), "unaligned atomic u32 at {off}");
        // SAFETY: in bounds, 4-byte aligned (region base is 4-aligned per `new`); AtomicU32
        // has the layout of u32 and all accesses to this word (ours and the peer's) are
        // atomic-width stores and loads. The reference does not outlive this call's user.
        unsafe { &*(self.at(off).as_ptr() as *const AtomicU32) }
    }

    /// Atomically loads the u32 at `off` (ring indices).
    #[inline]
    #[track_caller]
    pub fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.atomic_u32(off).load(order)
    }

    /// Atomically stores the u32 at `off` (ring indices).
    #[inline]
    #[track_caller]
    pub fn store_u32(&self, off: usize, v: u32, order: Ordering) {
        self.atomic_u32(off).store(v, order)
    }

    #[inline(always)]
    #[track_caller]
    fn atomic_u16(&self, off: usize) -> &AtomicU16 {
        self.check(off, 2);
        assert!(off.is_multiple_of(2), "unaligned atomic u16 at {off}");
        // SAFETY: in bounds and 2-byte aligned; AtomicU16 has the layout of u16. Grant flags
        // are only ever accessed atomically by us, the peer and the hypervisor.
        unsafe { &*(self.at(off).as_ptr() as *const AtomicU16) }
    }

    /// Atomically loads the u16 at `off` (grant entry flags).
    #[inline]
    #[track_caller]
    pub fn load_u16(&self, off: usize, order: Ordering) -> u16 {
        self.atomic_u16(off).load(order)
    }

    /// Atomically stores the u16 at `off` (grant entry flags).
    #[inline]
    #[track_caller]
    pub fn store_u16(&self, off: usize, v: u16, order: Ordering) {
        self.atomic_u16(off).store(v, order)
    }

    /// Compare-exchange on the u16 at `off` (grant revocation); returns the value seen.
    #[inline]
    #[track_caller]
    pub fn cmpxchg_u16(&self, off: usize, current: u16, new: u16) -> Result<u16, u16> {
        self.atomic_u16(off).compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
    }

    /// Atomic fetch-or on the u16 at `off` (hypervisor side: setting GTF_reading/writing).
    #[inline]
    #[track_caller]
    pub fn fetch_or_u16(&self, off: usize, bits: u16) -> u16 {
        self.atomic_u16(off).fetch_or(bits, Ordering::SeqCst)
    }

    /// Atomic fetch-and on the u16 at `off`.
    #[inline]
    #[track_caller]
    pub fn fetch_and_u16(&self, off: usize, bits: u16) -> u16 {
        self.atomic_u16(off).fetch_and(bits, Ordering::SeqCst)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn copies_round_trip_at_every_alignment() {
        let mut backing = [0u64; 64];
        // SAFETY: `backing` outlives `m`, is 8-aligned and only accessed through `m`.
        let m = unsafe { SharedMem::new(backing.as_mut_ptr() as *mut u8, 512) };
        let src: [u8; 37] = core::array::from_fn(|i| i as u8 + 1);
        for off in 0..16 {
            m.zero(0, 512);
            m.write_bytes(off, &src);
            let mut back = [0u8; 37];
            m.read_bytes(off, &mut back);
            assert_eq!(back, src);
            let mut before = [1u8; 1];
            if off > 0 {
                m.read_bytes(off - 1, &mut before);
                assert_eq!(before[0], 0);
            }
        }
    }

    #[test]
    fn arrays_round_trip_at_every_alignment() {
        let mut backing = [0u64; 64];
        // SAFETY: `backing` outlives `m`, is 8-aligned and only accessed through `m`.
        let m = unsafe { SharedMem::new(backing.as_mut_ptr() as *mut u8, 512) };
        let src: [u8; 37] = core::array::from_fn(|i| i as u8 + 1);
        let small: [u8; 12] = core::array::from_fn(|i| 0xa0 + i as u8);
        for off in 0..16 {
            m.zero(0, 512);
            m.write_array(off, &src);
            let mut back = [0u8; 37];
            m.read_bytes(off, &mut back);
            assert_eq!(back, src);
            let mut a37 = [0u8; 37];
            m.read_into(off, &mut a37);
            assert_eq!(a37, src);
            let mut a8 = [0u8; 8];
            m.read_into(off + 3, &mut a8);
            assert_eq!(a8[..], src[3..11]);
            // Neighbours untouched.
            let mut a1 = [9u8; 1];
            if off > 0 {
                m.read_into(off - 1, &mut a1);
                assert_eq!(a1, [0]);
            }
            m.read_into(off + 37, &mut a1);
            assert_eq!(a1, [0]);
            m.write_array(off + 40, &small);
            let mut a12 = [0u8; 12];
            m.read_into(off + 40, &mut a12);
            assert_eq!(a12, small);
            let mut a4 = [9u8; 4];
            m.read_into(off + 52, &mut a4);
            assert_eq!(a4, [0; 4]);
        }
    }

    #[test]
    fn bulk_copies_split_into_chunks_move_every_byte_and_no_other() {
        // 3 pages of shared memory; lengths and offsets around the chunk boundaries.
        let mut backing = [0u64; 3 * 4096 / 8];
        // SAFETY: `backing` outlives `m`, is 8-aligned and only accessed through `m`.
        let m = unsafe { SharedMem::new(backing.as_mut_ptr() as *mut u8, 3 * 4096) };
        let src: [u8; 2 * 4096 + 7] = core::array::from_fn(|i| (i % 251) as u8 + 1);
        for len in [0, 1, BULK_CHUNK - 1, BULK_CHUNK, BULK_CHUNK + 1, 4095, 4096, 4097, 2 * 4096 + 7] {
            for off in [0, 1, 16, 63, BULK_CHUNK - 1, 4096 - 7] {
                if off + len > m.len() {
                    continue;
                }
                m.zero(0, m.len());
                m.copy_from_private(off, &src[..len]);
                let mut whole = [0u8; 3 * 4096];
                m.copy_to_private(0, &mut whole);
                assert_eq!(&whole[off..off + len], &src[..len], "len {len} off {off}");
                assert!(
                    whole[..off].iter().chain(&whole[off + len..]).all(|&b| b == 0),
                    "len {len} off {off}: stray bytes"
                );
                let mut back = [0u8; 2 * 4096 + 7];
                m.copy_to_private(off, &mut back[..len]);
                assert_eq!(&back[..len], &src[..len], "len {len} off {off}");
            }
        }
    }

    #[test]
    fn atomics_and_cmpxchg() {
        let mut backing = [0u32; 4];
        // SAFETY: as above.
        let m = unsafe { SharedMem::new(backing.as_mut_ptr() as *mut u8, 16) };
        m.store_u32(4, 0xdead_beef, Ordering::Release);
        assert_eq!(m.load_u32(4, Ordering::Acquire), 0xdead_beef);
        m.store_u16(8, 5, Ordering::SeqCst);
        assert_eq!(m.cmpxchg_u16(8, 4, 0), Err(5));
        assert_eq!(m.cmpxchg_u16(8, 5, 0), Ok(5));
        assert_eq!(m.fetch_or_u16(8, 0x18), 0);
        assert_eq!(m.load_u16(8, Ordering::SeqCst), 0x18);
    }

    #[test]
    #[should_panic(expected = "outside region")]
    fn out_of_bounds_is_caught() {
        let mut backing = [0u32; 4];
        // SAFETY: as above.
        let m = unsafe { SharedMem::new(backing.as_mut_ptr() as *mut u8, 16) };
        let mut b = [0u8; 4];
        m.read_bytes(14, &mut b);
    }
}

/// The loom build of [`SharedMem`]: the region is an array of loom `AtomicU32` words (one per
/// 4 bytes), so that loom sees every access the ring makes. Slot bytes are Relaxed word
/// accesses (what volatile copies are on x86: no ordering of their own); ring indices keep the
/// orderings the ring code asks for. Regions are leaked (a model iteration is short-lived and
/// small). `new` and `from_static_words` (raw memory) exist so that dependants compile, and
/// panic if called.
///
/// [`planted`] deliberately weakens the orderings, to show that the model checker catches
/// the bugs they would cause (`tests/loom.rs`).
#[cfg(loom)]
mod loom_model {
    extern crate std;
    use core::sync::atomic::Ordering;
    use loom::sync::atomic::AtomicU32;
    use std::boxed::Box;
    use std::vec::Vec;

    /// Deliberately planted weaknesses (process-wide; tests set one, run a model, clear it).
    pub mod planted {
        use core::sync::atomic::{AtomicU8, Ordering};
        static PLANTED: AtomicU8 = AtomicU8::new(0);
        /// No weakness: the orderings of the ring code.
        pub const NONE: u8 = 0;
        /// SeqCst fences are skipped (push-and-check-notify and final checks lose their full
        /// barrier: the lost wake-up of the store-buffering race).
        pub const NO_SEQCST_FENCE: u8 = 1;
        /// Release stores and Acquire loads of indices become Relaxed (entries may be read
        /// before they were written).
        pub const RELAXED_INDICES: u8 = 2;
        /// Plants `bug` (one of the constants).
        pub fn set(bug: u8) {
            PLANTED.store(bug, Ordering::SeqCst)
        }
        /// The planted bug.
        pub fn get() -> u8 {
            PLANTED.load(Ordering::SeqCst)
        }
    }

    /// loom's fence, unless [`planted::NO_SEQCST_FENCE`] drops SeqCst fences.
    pub fn fence(order: Ordering) {
        if order == Ordering::SeqCst && planted::get() == planted::NO_SEQCST_FENCE {
            return;
        }
        loom::sync::atomic::fence(order)
    }

    fn weaken(order: Ordering) -> Ordering {
        if planted::get() == planted::RELAXED_INDICES && matches!(order, Ordering::Release | Ordering::Acquire) {
            Ordering::Relaxed
        } else {
            order
        }
    }

    /// A region of loom atomics (see the module documentation).
    #[derive(Clone, Copy, Debug)]
    pub struct SharedMem {
        words: &'static [AtomicU32],
        off: usize,
        len: usize,
    }

    impl SharedMem {
        /// A zeroed region of `len` bytes (rounded up to whole words), for loom models.
        pub fn loom_region(len: usize) -> SharedMem {
            let words: Vec<AtomicU32> = (0..len.div_ceil(4)).map(|_| AtomicU32::new(0)).collect();
            SharedMem { words: Box::leak(words.into_boxed_slice()), off: 0, len }
        }
        /// Raw memory is not available in a loom build.
        ///
        /// # Safety
        ///
        /// None needed: it always panics.
        pub unsafe fn new(_ptr: *mut u8, _len: usize) -> Self {
            panic!("SharedMem::new: raw memory is not available in a loom build")
        }
        /// Raw memory is not available in a loom build.
        pub fn from_static_words(_words: &'static mut [u64]) -> Self {
            panic!("SharedMem::from_static_words: raw memory is not available in a loom build")
        }
        /// Length in bytes.
        pub fn len(&self) -> usize {
            self.len
        }
        /// Whether empty.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }
        /// No address in a loom build.
        pub fn as_ptr(&self) -> *mut u8 {
            core::ptr::null_mut()
        }
        #[track_caller]
        fn check(&self, off: usize, size: usize) {
            match off.checked_add(size) {
                Some(end) if end <= self.len => {}
                _ => super::out_of_range(off, size, self.len),
            }
        }
        /// A sub-region.
        #[track_caller]
        pub fn slice(&self, off: usize, len: usize) -> SharedMem {
            self.check(off, len);
            SharedMem { words: self.words, off: self.off + off, len }
        }
        fn get(&self, off: usize) -> u8 {
            let a = self.off + off;
            (self.words[a / 4].load(Ordering::Relaxed) >> (8 * (a % 4))) as u8
        }
        fn put(&self, off: usize, v: u8) {
            let a = self.off + off;
            let w = &self.words[a / 4];
            let sh = 8 * (a % 4);
            let old = w.load(Ordering::Relaxed);
            w.store((old & !(0xff << sh)) | ((v as u32) << sh), Ordering::Relaxed);
        }
        fn word(&self, off: usize) -> &AtomicU32 {
            let a = self.off + off;
            assert!(a.is_multiple_of(4), "unaligned atomic u32 at {off}");
            &self.words[a / 4]
        }
        /// Copies bytes out (whole words where aligned).
        #[track_caller]
        pub fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            self.check(off, dst.len());
            let mut i = 0;
            while i < dst.len() {
                if (self.off + off + i).is_multiple_of(4) && i + 4 <= dst.len() {
                    let w = self.words[(self.off + off + i) / 4].load(Ordering::Relaxed);
                    dst[i..i + 4].copy_from_slice(&w.to_le_bytes());
                    i += 4;
                } else {
                    dst[i] = self.get(off + i);
                    i += 1;
                }
            }
        }
        /// Copies bytes in (whole words where aligned).
        #[track_caller]
        pub fn write_bytes(&self, off: usize, src: &[u8]) {
            self.check(off, src.len());
            let mut i = 0;
            while i < src.len() {
                if (self.off + off + i).is_multiple_of(4) && i + 4 <= src.len() {
                    let w = u32::from_le_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]);
                    self.words[(self.off + off + i) / 4].store(w, Ordering::Relaxed);
                    i += 4;
                } else {
                    self.put(off + i, src[i]);
                    i += 1;
                }
            }
        }
        /// As `read_bytes`, into an array.
        #[track_caller]
        pub fn read_into<const N: usize>(&self, off: usize, dst: &mut [u8; N]) {
            self.read_bytes(off, dst)
        }
        /// As `write_bytes`, from an array.
        #[track_caller]
        pub fn write_array<const N: usize>(&self, off: usize, src: &[u8; N]) {
            self.write_bytes(off, src)
        }
        /// As `read_bytes`.
        #[track_caller]
        pub fn copy_to_private(&self, off: usize, dst: &mut [u8]) {
            self.read_bytes(off, dst)
        }
        /// As `write_bytes`.
        #[track_caller]
        pub fn copy_from_private(&self, off: usize, src: &[u8]) {
            self.write_bytes(off, src)
        }
        /// Byte by byte.
        #[track_caller]
        pub fn copy_within_shared(src: &SharedMem, src_off: usize, dst: &SharedMem, dst_off: usize, len: usize) {
            src.check(src_off, len);
            dst.check(dst_off, len);
            for i in 0..len {
                dst.put(dst_off + i, src.get(src_off + i));
            }
        }
        /// Zeroes a range.
        #[track_caller]
        pub fn zero(&self, off: usize, len: usize) {
            self.check(off, len);
            for i in 0..len {
                self.put(off + i, 0);
            }
        }
        /// Atomic load of a u32 (ring indices).
        #[track_caller]
        pub fn load_u32(&self, off: usize, order: Ordering) -> u32 {
            self.check(off, 4);
            self.word(off).load(weaken(order))
        }
        /// Atomic store of a u32 (ring indices).
        #[track_caller]
        pub fn store_u32(&self, off: usize, v: u32, order: Ordering) {
            self.check(off, 4);
            self.word(off).store(v, weaken(order))
        }
        fn half(&self, off: usize) -> (&AtomicU32, u32) {
            self.check(off, 2);
            let a = self.off + off;
            assert!(a.is_multiple_of(2), "unaligned atomic u16 at {off}");
            (&self.words[a / 4], 8 * (a as u32 % 4))
        }
        /// Atomic load of a u16.
        pub fn load_u16(&self, off: usize, order: Ordering) -> u16 {
            let (w, sh) = self.half(off);
            (w.load(order) >> sh) as u16
        }
        /// Atomic store of a u16 (a compare-exchange loop on the containing word).
        pub fn store_u16(&self, off: usize, v: u16, _order: Ordering) {
            let (w, sh) = self.half(off);
            let mut cur = w.load(Ordering::SeqCst);
            loop {
                let new = (cur & !(0xffff << sh)) | ((v as u32) << sh);
                match w.compare_exchange(cur, new, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return,
                    Err(x) => cur = x,
                }
            }
        }
        /// Compare-exchange on a u16.
        pub fn cmpxchg_u16(&self, off: usize, current: u16, new: u16) -> Result<u16, u16> {
            let (w, sh) = self.half(off);
            let mut cur = w.load(Ordering::SeqCst);
            loop {
                let seen = (cur >> sh) as u16;
                if seen != current {
                    return Err(seen);
                }
                let nw = (cur & !(0xffff << sh)) | ((new as u32) << sh);
                match w.compare_exchange(cur, nw, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return Ok(seen),
                    Err(x) => cur = x,
                }
            }
        }
        /// Fetch-or on a u16.
        pub fn fetch_or_u16(&self, off: usize, bits: u16) -> u16 {
            let (w, sh) = self.half(off);
            (w.fetch_or((bits as u32) << sh, Ordering::SeqCst) >> sh) as u16
        }
        /// Fetch-and on a u16.
        pub fn fetch_and_u16(&self, off: usize, bits: u16) -> u16 {
            let (w, sh) = self.half(off);
            (w.fetch_and(!(0xffff << sh) | ((bits as u32) << sh), Ordering::SeqCst) >> sh) as u16
        }
    }
}
