//! The shared request/response ring of `io/ring.h`, for one or more contiguous pages.
//!
//! Header (identical for every ABI): `req_prod` @0, `req_event` @4, `rsp_prod` @8,
//! `rsp_event` @12, 48 bytes of padding, entries from offset 64. Indices are free-running
//! `u32`s, wrapping modulo 2^32; a slot is `index & (size - 1)`.
//!
//! Memory ordering, mapped from Xen's barriers: the producer publishes its index with
//! `Release` (entries visible before the index), then a `SeqCst` fence before reading the
//! peer's event index (the full barrier of `PUSH_*_AND_CHECK_NOTIFY`); the consumer loads the
//! producer index with `Acquire` (read barrier before reading entries); the final check
//! stores the event index, fences `SeqCst`, and re-reads the producer index.
//!
//! Both sides treat every index written by the peer as hostile: the overflow guards of
//! `RING_REQUEST_PROD_OVERFLOW` / `RING_RESPONSE_PROD_OVERFLOW` turn a bogus index into
//! [`RingError`], and the backend never consumes a request for which no response slot is free.

use core::sync::atomic::Ordering;

use super::blkif::{
    Abi, Rejected, Request, Response, RwOp, Segment, decode_request, decode_response, encode_request_into,
    encode_rw_request_into,
};
use super::shmem::{SharedMem, fence};

/// Byte size of a ring page.
pub const PAGE_SIZE: usize = 4096;
/// Offset of the first entry.
pub const HEADER_SIZE: usize = 64;
const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// The largest ring order Xen and Linux support (16 pages).
pub const MAX_RING_ORDER: u32 = 4;

/// Number of slots of a ring of `bytes` with entries of `entry` bytes: the largest power of
/// two not above `(bytes - 64) / entry` (`__RING_SIZE`). 0 if nothing fits.
pub const fn ring_size(bytes: usize, entry: usize) -> u32 {
    if bytes <= HEADER_SIZE || entry == 0 {
        return 0;
    }
    let raw = (bytes - HEADER_SIZE) / entry;
    if raw == 0 {
        return 0;
    }
    1u32 << (usize::BITS - 1 - raw.leading_zeros())
}

/// Slots of a ring of `1 << order` pages (32, 64, 128, 256, 512 for both ABIs).
pub const fn slots_for_order(order: u32) -> u32 {
    ring_size(PAGE_SIZE << order, 112)
}

/// A peer broke the ring protocol; the ring must be shut down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RingError {
    /// The frontend's `req_prod` claims more requests than the ring holds.
    RequestProdOverflow {
        /// The bogus value.
        req_prod: u32,
    },
    /// The backend's `rsp_prod` claims more responses than requests outstanding.
    ResponseProdOverflow {
        /// The bogus value.
        rsp_prod: u32,
    },
    /// The region is too small for even one entry.
    TooSmall,
}

fn check_region(mem: &SharedMem, abi: Abi) -> Result<u32, RingError> {
    let size = ring_size(mem.len(), abi.entry_size());
    if size == 0 { Err(RingError::TooSmall) } else { Ok(size) }
}

#[inline]
fn slot_off(size: u32, entry: usize, idx: u32) -> usize {
    HEADER_SIZE + (idx & (size - 1)) as usize * entry
}

/// The frontend's end of a ring.
#[derive(Debug)]
pub struct FrontRing {
    mem: SharedMem,
    abi: Abi,
    size: u32,
    req_prod_pvt: u32,
    rsp_cons: u32,
    /// The backend's `rsp_prod` as last read and validated: responses up to it are taken
    /// without reading the shared index again (`RING_FOR_EACH`-style), so the index line is
    /// not pulled over from the producing core once per response.
    rsp_seen: u32,
}

impl FrontRing {
    /// `SHARED_RING_INIT` + `FRONT_RING_INIT`: zeroes the header, sets both event indices
    /// to 1, and attaches at index 0. Done by the frontend before granting the ring.
    pub fn init(mem: SharedMem, abi: Abi) -> Result<FrontRing, RingError> {
        let size = check_region(&mem, abi)?;
        mem.zero(0, HEADER_SIZE);
        mem.store_u32(REQ_EVENT, 1, Ordering::Relaxed);
        mem.store_u32(RSP_EVENT, 1, Ordering::Relaxed);
        fence(Ordering::Release);
        Ok(FrontRing { mem, abi, size, req_prod_pvt: 0, rsp_cons: 0, rsp_seen: 0 })
    }

    /// `FRONT_RING_ATTACH`: attaches to an initialised, idle ring whose shared indices both
    /// stand at `idx` (a frontend taking over a ring, or a test starting near the wrap).
    pub fn attach_at(mem: SharedMem, abi: Abi, idx: u32) -> Result<FrontRing, RingError> {
        let size = check_region(&mem, abi)?;
        let req_prod = mem.load_u32(REQ_PROD, Ordering::Acquire);
        let rsp_prod = mem.load_u32(RSP_PROD, Ordering::Acquire);
        if req_prod != idx {
            return Err(RingError::RequestProdOverflow { req_prod });
        }
        if rsp_prod != idx {
            return Err(RingError::ResponseProdOverflow { rsp_prod });
        }
        Ok(FrontRing { mem, abi, size, req_prod_pvt: idx, rsp_cons: idx, rsp_seen: idx })
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }
    /// The ABI used to encode requests.
    pub fn abi(&self) -> Abi {
        self.abi
    }
    /// The private producer index (next slot to fill).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }
    /// The private consumer index (next response to read).
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }
    /// `RING_FREE_REQUESTS`.
    pub fn free_requests(&self) -> u32 {
        self.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }
    /// `RING_FULL`.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Writes `req` into the next free slot (not yet visible to the backend: see
    /// [`push_requests`](Self::push_requests)). Returns `false` when the ring is full.
    pub fn put_request(&mut self, req: &Request) -> bool {
        if self.is_full() {
            return false;
        }
        // One arm per ABI, so that the image's layout and length are constants there (the
        // encoding is unrolled, the copy is whole words).
        let mut img = [0u8; super::blkif::MAX_SLOT_BYTES];
        match self.abi {
            Abi::X86_64 => {
                const LEN: usize = Abi::X86_64.layout().request;
                let off = slot_off(self.size, LEN, self.req_prod_pvt);
                encode_request_into(Abi::X86_64, req, &mut img);
                self.mem.write_bytes(off, &img[..LEN]);
            }
            Abi::X86_32 => {
                const LEN: usize = Abi::X86_32.layout().request;
                let off = slot_off(self.size, LEN, self.req_prod_pvt);
                encode_request_into(Abi::X86_32, req, &mut img);
                self.mem.write_bytes(off, &img[..LEN]);
            }
        }
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        true
    }

    /// [`put_request`](Self::put_request) of a read, write, barrier or flush with direct
    /// segments (at most 11; more are cut off), from its fields: the same slot bytes as for
    /// the equivalent [`Request`], without building one.
    #[inline]
    pub fn put_rw_request(&mut self, id: u64, handle: u16, sector: u64, op: RwOp, segs: &[Segment]) -> bool {
        if self.is_full() {
            return false;
        }
        let mut img = [0u8; super::blkif::MAX_SLOT_BYTES];
        match self.abi {
            Abi::X86_64 => {
                const LEN: usize = Abi::X86_64.layout().request;
                let off = slot_off(self.size, LEN, self.req_prod_pvt);
                encode_rw_request_into(Abi::X86_64, id, handle, sector, op, segs, &mut img);
                self.mem.write_bytes(off, &img[..LEN]);
            }
            Abi::X86_32 => {
                const LEN: usize = Abi::X86_32.layout().request;
                let off = slot_off(self.size, LEN, self.req_prod_pvt);
                encode_rw_request_into(Abi::X86_32, id, handle, sector, op, segs, &mut img);
                self.mem.write_bytes(off, &img[..LEN]);
            }
        }
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        true
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes the written requests and says
    /// whether the backend asked to be notified.
    pub fn push_requests(&mut self) -> bool {
        let old = self.mem.load_u32(REQ_PROD, Ordering::Relaxed);
        let new = self.req_prod_pvt;
        self.mem.store_u32(REQ_PROD, new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.mem.load_u32(REQ_EVENT, Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Responses produced and not yet consumed, after the `RING_RESPONSE_PROD_OVERFLOW`
    /// check against the number of requests outstanding.
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        let prod = self.mem.load_u32(RSP_PROD, Ordering::Acquire);
        let n = prod.wrapping_sub(self.rsp_cons);
        if n > self.req_prod_pvt.wrapping_sub(self.rsp_cons) {
            return Err(RingError::ResponseProdOverflow { rsp_prod: prod });
        }
        Ok(n)
    }

    /// Copies the next response out of the ring (once) and decodes it.
    pub fn take_response(&mut self) -> Result<Option<Response>, RingError> {
        if self.rsp_cons == self.rsp_seen {
            let n = self.unconsumed_responses()?;
            if n == 0 {
                return Ok(None);
            }
            self.rsp_seen = self.rsp_cons.wrapping_add(n);
        }
        let mut buf = [0u8; 16];
        // One arm per ABI: constant offsets and lengths.
        let rsp = match self.abi {
            Abi::X86_64 => {
                const LEN: usize = Abi::X86_64.layout().response;
                let off = slot_off(self.size, Abi::X86_64.entry_size(), self.rsp_cons);
                self.mem.read_bytes(off, &mut buf[..LEN]);
                decode_response(Abi::X86_64, &buf[..LEN])
            }
            Abi::X86_32 => {
                const LEN: usize = Abi::X86_32.layout().response;
                let off = slot_off(self.size, Abi::X86_32.entry_size(), self.rsp_cons);
                self.mem.read_bytes(off, &mut buf[..LEN]);
                decode_response(Abi::X86_32, &buf[..LEN])
            }
        };
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(rsp)
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: if nothing is pending, asks to be notified of the
    /// next response and checks once more. `Ok(true)` means responses are pending.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.mem.store_u32(RSP_EVENT, self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses()? > 0)
    }

    /// Sets `rsp_event` explicitly (batching: ask to be woken only after `n` more responses).
    pub fn set_response_event(&mut self, n: u32) {
        self.mem.store_u32(RSP_EVENT, self.rsp_cons.wrapping_add(n.max(1)), Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod put_rw_tests {
    use super::super::blkif::{ReqKind, SegList, encode_request};
    use super::*;

    /// A ring page full of garbage, so that a byte the encoder forgets to write shows.
    fn garbage_ring(abi: Abi, page: &mut [u64; 512], start: u32) -> (FrontRing, SharedMem) {
        // SAFETY: `page` outlives the views, which are only used inside the caller's test.
        let mem = unsafe { SharedMem::new(page.as_mut_ptr() as *mut u8, PAGE_SIZE) };
        let mut ring = FrontRing::init(mem, abi).unwrap();
        mem.write_bytes(HEADER_SIZE, &[0xa5; PAGE_SIZE - HEADER_SIZE]);
        ring.req_prod_pvt = start;
        ring.rsp_cons = start;
        ring.rsp_seen = start;
        (ring, mem)
    }

    #[test]
    fn put_rw_request_writes_the_bytes_of_put_request() {
        let ops = [RwOp::Read, RwOp::Write, RwOp::WriteBarrier, RwOp::Flush];
        for abi in [Abi::X86_64, Abi::X86_32] {
            for n in 0..=13usize {
                for (k, &op) in ops.iter().enumerate() {
                    let segs: std::vec::Vec<Segment> = (0..n)
                        .map(|i| Segment {
                            gref: 0x0102_0304 * (i as u32 + 1) + k as u32,
                            first_sect: (i % 8) as u8,
                            last_sect: 7,
                        })
                        .collect();
                    let id = 0x1122_3344_5566_7700 + n as u64;
                    let sector = 0x0a0b_0c0d_0e0f_1011 ^ (k as u64) << 40;
                    let handle = 0xca00 + n as u16;
                    let list: SegList = segs.iter().copied().take(11).collect();
                    let req = Request { id, handle, sector, kind: ReqKind::Rw { op, segs: list } };
                    let start = (u32::MAX - 2).wrapping_add(n as u32);
                    let (mut pa, mut pb) = ([0u64; 512], [0u64; 512]);
                    let (mut a, ma) = garbage_ring(abi, &mut pa, start);
                    let (mut b, mb) = garbage_ring(abi, &mut pb, start);
                    assert!(a.put_request(&req));
                    assert!(b.put_rw_request(id, handle, sector, op, &segs));
                    assert_eq!(a.req_prod_pvt(), b.req_prod_pvt());
                    let (mut ba, mut bb) = ([0u8; PAGE_SIZE], [0u8; PAGE_SIZE]);
                    ma.read_bytes(0, &mut ba);
                    mb.read_bytes(0, &mut bb);
                    assert_eq!(ba, bb, "{abi:?} {op:?} {n} segments");
                    let off = slot_off(a.size(), abi.entry_size(), start);
                    let img = encode_request(abi, &req);
                    assert_eq!(&bb[off..off + abi.layout().request], img.as_bytes(), "{abi:?} {op:?} {n}");
                    assert_eq!(bb[off + 1] as usize, n.min(11));
                }
            }
        }
    }

    #[test]
    fn put_rw_request_refuses_a_full_ring() {
        let mut page = [0u64; 512];
        let (mut r, _) = garbage_ring(Abi::X86_64, &mut page, 7);
        let seg = [Segment { gref: 1, first_sect: 0, last_sect: 7 }];
        for i in 0..r.size() {
            assert!(r.put_rw_request(i as u64, 0, 0, RwOp::Read, &seg));
        }
        assert!(r.is_full());
        assert!(!r.put_rw_request(99, 0, 0, RwOp::Read, &seg));
        assert_eq!(r.req_prod_pvt(), 7 + r.size());
    }
}

/// The backend's end of a ring.
#[derive(Debug)]
pub struct BackRing {
    mem: SharedMem,
    abi: Abi,
    size: u32,
    rsp_prod_pvt: u32,
    req_cons: u32,
}

impl BackRing {
    /// `BACK_RING_ATTACH` at the current shared `rsp_prod` (so a backend re-binding to a
    /// live frontend resumes where the previous one stopped). Refuses a ring whose
    /// `req_prod` is more than a ring ahead. The backend never initialises the page.
    pub fn attach(mem: SharedMem, abi: Abi) -> Result<BackRing, RingError> {
        let size = check_region(&mem, abi)?;
        let rsp_prod = mem.load_u32(RSP_PROD, Ordering::Acquire);
        let req_prod = mem.load_u32(REQ_PROD, Ordering::Acquire);
        if req_prod.wrapping_sub(rsp_prod) > size {
            return Err(RingError::RequestProdOverflow { req_prod });
        }
        Ok(BackRing { mem, abi, size, rsp_prod_pvt: rsp_prod, req_cons: rsp_prod })
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }
    /// The ABI the frontend chose.
    pub fn abi(&self) -> Abi {
        self.abi
    }
    /// The private consumer index.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }
    /// The private response producer index.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Requests we may consume now: `RING_HAS_UNCONSUMED_REQUESTS` bounded so that every
    /// consumed request has a free response slot (`RING_REQUEST_CONS_OVERFLOW`), after the
    /// `RING_REQUEST_PROD_OVERFLOW` check.
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        let prod = self.mem.load_u32(REQ_PROD, Ordering::Acquire);
        if prod.wrapping_sub(self.rsp_prod_pvt) > self.size {
            return Err(RingError::RequestProdOverflow { req_prod: prod });
        }
        let reqs = prod.wrapping_sub(self.req_cons);
        let rsps = self.size - self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        Ok(reqs.min(rsps))
    }

    /// Copies the next request out of its slot exactly once and decodes it. The outer
    /// `Result` is a ring violation; the inner one a request to answer with an error.
    pub fn take_request(&mut self, max_indirect: usize) -> Result<Option<Result<Request, Rejected>>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        Ok(Some(self.take_request_unchecked(max_indirect)))
    }

    /// Like [`take_request`](Self::take_request) when the caller already knows from
    /// [`unconsumed_requests`](Self::unconsumed_requests) that a request is available.
    pub fn take_request_unchecked(&mut self, max_indirect: usize) -> Result<Request, Rejected> {
        let mut buf = [0u8; super::blkif::MAX_SLOT_BYTES];
        let len = self.copy_next_request(&mut buf);
        decode_request(self.abi, &buf[..len], max_indirect)
    }

    /// Like [`take_request_unchecked`](Self::take_request_unchecked) (same copy, same
    /// validation, same rejections), without building a [`Request`]: the direct segments go
    /// to `segs` (see [`decode_request_into`](super::blkif::decode_request_into)), the rest
    /// comes back as a [`RequestHead`](super::blkif::RequestHead).
    #[inline]
    pub fn take_request_into(
        &mut self,
        max_indirect: usize,
        segs: &mut [super::blkif::Segment],
    ) -> Result<super::blkif::RequestHead, Rejected> {
        let mut buf = [0u8; super::blkif::MAX_SLOT_BYTES];
        let len = self.copy_next_request(&mut buf);
        super::blkif::decode_request_into(self.abi, &buf[..len], max_indirect, segs)
    }

    /// Copies the next request slot into `buf` (each byte read once) and consumes it; returns
    /// the ABI's request size. Only the bytes the decoder looks at are copied
    /// ([`request_extent`](super::blkif::request_extent): the header, then as many segments as the header claims, or the
    /// discard/indirect body); the rest of `buf` stays as it was (zero), which does not change
    /// what the slot decodes to.
    #[inline]
    fn copy_next_request(&mut self, buf: &mut [u8; super::blkif::MAX_SLOT_BYTES]) -> usize {
        let l = self.abi.layout();
        let off = slot_off(self.size, self.abi.entry_size(), self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        // The header (operation, counts, handle, id, sector) is the same for every kind.
        let hdr = l.req_seg;
        let (head, rest) = buf.split_at_mut(hdr);
        let fixed = match self.abi {
            Abi::X86_64 => head.first_chunk_mut::<24>().map(|h| self.mem.read_into(off, h)),
            Abi::X86_32 => head.first_chunk_mut::<20>().map(|h| self.mem.read_into(off, h)),
        };
        if fixed.is_none() {
            self.mem.read_bytes(off, head);
        }
        // The bytes after the header are chosen from the private copy of it.
        let end = super::blkif::request_extent(self.abi, head[0], head[1]).min(l.request);
        let rest = &mut rest[..end - hdr];
        if let Ok(one) = <&mut [u8; 8]>::try_from(&mut *rest) {
            // One segment (the common 4 KiB request) or a discard body on x86_64.
            self.mem.read_into(off + hdr, one);
        } else {
            let mut chunks = rest.chunks_exact_mut(8);
            let mut o = off + hdr;
            for c in &mut chunks {
                if let Some(c) = c.first_chunk_mut::<8>() {
                    self.mem.read_into(o, c);
                }
                o += 8;
            }
            let tail = chunks.into_remainder();
            if !tail.is_empty() {
                self.mem.read_bytes(o, tail);
            }
        }
        l.request
    }

    /// Writes a response into the next response slot (visible after
    /// [`push_responses`](Self::push_responses)). Returns `false` if every consumed request
    /// has been answered already (a caller bug: more responses than requests).
    #[inline]
    pub fn put_response(&mut self, rsp: &Response) -> bool {
        if self.req_cons.wrapping_sub(self.rsp_prod_pvt) == 0 {
            return false;
        }
        let off = slot_off(self.size, self.abi.entry_size(), self.rsp_prod_pvt);
        // The bytes of `encode_response(self.abi, rsp)` (built from the same image), in
        // fixed-size stores.
        let img = super::blkif::response_image(rsp);
        match (self.abi, img.first_chunk::<12>()) {
            (Abi::X86_64, _) => self.mem.write_array(off, &img),
            (Abi::X86_32, Some(w)) => self.mem.write_array(off, w),
            (Abi::X86_32, None) => self.mem.write_bytes(off, &img[..self.abi.layout().response]),
        }
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        true
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`.
    #[inline]
    pub fn push_responses(&mut self) -> bool {
        let old = self.mem.load_u32(RSP_PROD, Ordering::Relaxed);
        let new = self.rsp_prod_pvt;
        self.mem.store_u32(RSP_PROD, new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.mem.load_u32(RSP_EVENT, Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`. `Ok(true)` means requests are pending.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.mem.store_u32(REQ_EVENT, self.req_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_requests()? > 0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::blkif::{ReqKind, RwOp, SegList, Segment};
    use super::*;

    #[test]
    fn sizes_match_ring_h() {
        for (order, slots) in [(0, 32), (1, 64), (2, 128), (3, 256), (4, 512)] {
            assert_eq!(slots_for_order(order), slots);
            assert_eq!(ring_size(PAGE_SIZE << order, 108), slots);
        }
        assert_eq!(ring_size(64, 112), 0);
        assert_eq!(ring_size(64 + 112, 112), 1);
    }

    fn req(id: u64) -> Request {
        let mut segs = SegList::new();
        segs.push(Segment { gref: id as u32, first_sect: 0, last_sect: 7 }).unwrap();
        Request { id, handle: 0, sector: id * 8, kind: ReqKind::Rw { op: RwOp::Read, segs } }
    }

    fn with_ring(abi: Abi, start: u32, f: impl FnOnce(FrontRing, BackRing, SharedMem)) {
        let mut page = [0u64; 512];
        // SAFETY: `page` outlives the views, which are only used inside `f`.
        let mem = unsafe { SharedMem::new(page.as_mut_ptr() as *mut u8, PAGE_SIZE) };
        let mut front = FrontRing::init(mem, abi).unwrap();
        // Start near the wrap to exercise modular arithmetic.
        mem.store_u32(REQ_PROD, start, Ordering::Relaxed);
        mem.store_u32(RSP_PROD, start, Ordering::Relaxed);
        front.req_prod_pvt = start;
        front.rsp_cons = start;
        front.rsp_seen = start;
        let back = BackRing::attach(mem, abi).unwrap();
        f(front, back, mem)
    }

    #[test]
    fn request_response_cycle_across_wrap() {
        for abi in [Abi::X86_64, Abi::X86_32] {
            with_ring(abi, u32::MAX - 40, |mut front, mut back, _| {
                let mut next = 0u64;
                let mut done = 0u64;
                for round in 0..10 {
                    while !front.is_full() && next < 100 {
                        assert!(front.put_request(&req(next)));
                        next += 1;
                    }
                    front.push_requests();
                    let n = back.unconsumed_requests().unwrap();
                    for _ in 0..n.min(round + 5) {
                        let r = back.take_request(0).unwrap().unwrap().unwrap();
                        assert!(back.put_response(&Response { id: r.id, op: r.op_code(), status: 0 }));
                    }
                    back.push_responses();
                    while let Some(rsp) = front.take_response().unwrap() {
                        assert_eq!(rsp.id, done);
                        done += 1;
                    }
                }
                assert!(done > 32);
            });
        }
    }

    #[test]
    fn notify_decisions_follow_event_indices() {
        with_ring(Abi::X86_64, 0, |mut front, mut back, _| {
            // Initial req_event = 1: the first push notifies.
            front.put_request(&req(1));
            assert!(front.push_requests());
            // Backend has not re-armed: later pushes are silent.
            front.put_request(&req(2));
            assert!(!front.push_requests());
            back.take_request(0).unwrap();
            back.take_request(0).unwrap();
            assert!(!back.final_check_for_requests().unwrap());
            front.put_request(&req(3));
            assert!(front.push_requests());
        });
    }

    #[test]
    fn hostile_indices_are_caught() {
        with_ring(Abi::X86_64, 5, |mut front, mut back, mem| {
            mem.store_u32(REQ_PROD, 5 + 33, Ordering::Relaxed);
            assert_eq!(back.unconsumed_requests(), Err(RingError::RequestProdOverflow { req_prod: 38 }));
            mem.store_u32(REQ_PROD, 5, Ordering::Relaxed);
            front.put_request(&req(1));
            front.push_requests();
            mem.store_u32(RSP_PROD, 7, Ordering::Relaxed);
            assert_eq!(front.take_response(), Err(RingError::ResponseProdOverflow { rsp_prod: 7 }));
            // A full ring of unanswered requests: the backend stops consuming.
            mem.store_u32(RSP_PROD, 5, Ordering::Relaxed);
            for i in 0..31 {
                front.put_request(&req(i));
            }
            front.push_requests();
            for _ in 0..32 {
                back.take_request(0).unwrap().unwrap().unwrap();
            }
            assert_eq!(back.take_request(0), Ok(None));
            assert_eq!(BackRing::attach(mem, Abi::X86_64).map(|b| b.req_cons()), Ok(5));
        });
    }

    #[test]
    fn responses_up_to_the_published_index_are_taken_without_reading_it_again() {
        with_ring(Abi::X86_64, u32::MAX - 1, |mut front, mut back, mem| {
            for i in 0..4 {
                front.put_request(&req(i));
            }
            front.push_requests();
            for _ in 0..4 {
                let r = back.take_request(0).unwrap().unwrap().unwrap();
                back.put_response(&Response { id: r.id, op: r.op_code(), status: 0 });
            }
            back.push_responses();
            assert_eq!(front.take_response().unwrap().map(|r| r.id), Some(0));
            // The backend scribbles on rsp_prod mid-batch: the batch already validated is
            // taken as published (as RING_FOR_EACH does), the garbage is caught at the
            // next read of the index.
            let bad = (u32::MAX - 1).wrapping_add(40);
            mem.store_u32(RSP_PROD, bad, Ordering::Relaxed);
            for id in 1..4 {
                assert_eq!(front.take_response().unwrap().map(|r| r.id), Some(id));
            }
            assert_eq!(front.take_response(), Err(RingError::ResponseProdOverflow { rsp_prod: bad }));
            // Back to the honest index: nothing more to take, and new responses are seen.
            mem.store_u32(RSP_PROD, (u32::MAX - 1).wrapping_add(4), Ordering::Relaxed);
            assert_eq!(front.take_response(), Ok(None));
            front.put_request(&req(9));
            front.push_requests();
            let r = back.take_request(0).unwrap().unwrap().unwrap();
            back.put_response(&Response { id: r.id, op: r.op_code(), status: 0 });
            back.push_responses();
            assert_eq!(front.take_response().unwrap().map(|r| r.id), Some(9));
        });
    }
}
