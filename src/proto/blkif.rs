//! Requests and responses of the blkif protocol, for both on-wire ABIs.
//!
//! A ring slot is copied once out of shared memory ([`crate::proto::shmem`]) into a private
//! byte buffer, and [`decode_request`] / [`decode_response`] turn that copy into one native
//! representation, validating every field. [`encode_request`] / [`encode_response`] build a
//! private, fully initialised byte image field by field (padding is zero), which the ring then
//! copies into the slot. No `repr(C)` struct is ever read from or written to shared memory.
//!
//! Layouts (bytes), measured against Xen 4.17's headers (see `tests/xen_headers.rs`):
//!
//! | item | x86_64 / arm | x86_32 |
//! |---|---|---|
//! | request (read/write/barrier/flush) | 112 | 108 |
//! | `id` offset | 8 | 4 |
//! | discard request | 32 | 28 |
//! | indirect request | 64 | 64 |
//! | response | 16 | 12 |
//! | segment | 8 | 8 |

/// `BLKIF_OP_READ`.
pub const OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`.
pub const OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`.
pub const OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1` (device-specific packets; always answered with EOPNOTSUPP).
pub const OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD`.
pub const OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`.
pub const OP_INDIRECT: u8 = 6;

/// `BLKIF_RSP_OKAY`.
pub const RSP_OKAY: i16 = 0;
/// `BLKIF_RSP_ERROR`.
pub const RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_EOPNOTSUPP`.
pub const RSP_EOPNOTSUPP: i16 = -2;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments that fit in a direct request.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
pub const MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segments per indirect page (4096 / 8).
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = 512;
/// The most segments one indirect request can describe.
pub const MAX_INDIRECT_SEGMENTS: usize = MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE;
/// The protocol's sector: 512 bytes, always, whatever the disk's logical sector size.
pub const SECTOR_SIZE: usize = 512;
/// Sectors per 4 KiB page.
pub const SECTORS_PER_PAGE: u8 = 8;
/// `BLKIF_DISCARD_SECURE` flag bit of a discard request.
pub const DISCARD_FLAG_SECURE: u8 = 1;

/// `VDISK_CDROM` bit of the `info` key.
pub const VDISK_CDROM: u32 = 1;
/// `VDISK_REMOVABLE` bit of the `info` key.
pub const VDISK_REMOVABLE: u32 = 2;
/// `VDISK_READONLY` bit of the `info` key.
pub const VDISK_READONLY: u32 = 4;

/// Size of the largest slot image (an x86_64 request).
pub const MAX_SLOT_BYTES: usize = 112;

/// The on-wire structure layout, chosen at runtime from the frontend's `protocol` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Abi {
    /// `x86_64-abi` (also `arm-abi`): 64-bit fields 8-byte aligned; `id` at offset 8.
    X86_64,
    /// `x86_32-abi`: i386 packing, 64-bit fields 4-byte aligned; `id` at offset 4.
    X86_32,
}

/// The value of the frontend's `protocol` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Protocol {
    /// `"x86_32-abi"`.
    X86_32,
    /// `"x86_64-abi"`.
    X86_64,
    /// `"arm-abi"` (same layout as x86_64).
    Arm,
}

impl Protocol {
    /// The xenstore string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::X86_32 => "x86_32-abi",
            Protocol::X86_64 => "x86_64-abi",
            Protocol::Arm => "arm-abi",
        }
    }

    /// Parses a `protocol` value; `None` for anything unknown (a backend must refuse it).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "x86_32-abi" => Some(Protocol::X86_32),
            "x86_64-abi" => Some(Protocol::X86_64),
            "arm-abi" => Some(Protocol::Arm),
            _ => None,
        }
    }

    /// The structure layout this protocol uses.
    pub const fn abi(self) -> Abi {
        match self {
            Protocol::X86_32 => Abi::X86_32,
            Protocol::X86_64 | Protocol::Arm => Abi::X86_64,
        }
    }

    /// The protocol native to the target this crate is compiled for.
    pub const fn native() -> Protocol {
        if cfg!(target_arch = "x86") {
            Protocol::X86_32
        } else if cfg!(any(target_arch = "arm", target_arch = "aarch64")) {
            Protocol::Arm
        } else {
            Protocol::X86_64
        }
    }
}

/// Byte offsets of one ABI's structures.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Size of a read/write request (and of a ring slot).
    pub request: usize,
    /// Size of a response.
    pub response: usize,
    /// Offset of `id` in every request kind.
    pub req_id: usize,
    /// Offset of `sector_number`.
    pub req_sector: usize,
    /// Offset of `seg[0]` in a read/write request.
    pub req_seg: usize,
    /// Offset of `nr_sectors` in a discard request.
    pub discard_nr_sectors: usize,
    /// Size of a discard request.
    pub discard: usize,
    /// Offset of `handle` in an indirect request.
    pub indirect_handle: usize,
    /// Offset of `indirect_grefs[0]`.
    pub indirect_grefs: usize,
    /// Size of an indirect request.
    pub indirect: usize,
}

impl Abi {
    /// The layout table of this ABI.
    pub const fn layout(self) -> Layout {
        match self {
            Abi::X86_64 => Layout {
                request: 112,
                response: 16,
                req_id: 8,
                req_sector: 16,
                req_seg: 24,
                discard_nr_sectors: 24,
                discard: 32,
                indirect_handle: 24,
                indirect_grefs: 28,
                indirect: 64,
            },
            Abi::X86_32 => Layout {
                request: 108,
                response: 12,
                req_id: 4,
                req_sector: 12,
                req_seg: 20,
                discard_nr_sectors: 20,
                discard: 28,
                indirect_handle: 20,
                indirect_grefs: 24,
                indirect: 64,
            },
        }
    }

    /// Ring entry size: max(request, response).
    pub const fn entry_size(self) -> usize {
        self.layout().request
    }
}

/// One segment: a granted page and the inclusive range of 512-byte sectors used in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Segment {
    /// Grant reference of the data page.
    pub gref: u32,
    /// First sector within the page (0..=7).
    pub first_sect: u8,
    /// Last sector within the page, inclusive (first_sect..=7).
    pub last_sect: u8,
}

impl Segment {
    /// Whether `first_sect <= last_sect <= 7`.
    pub const fn is_valid(&self) -> bool {
        self.first_sect <= self.last_sect && self.last_sect < SECTORS_PER_PAGE
    }
    /// Number of sectors (only meaningful when valid).
    pub const fn sectors(&self) -> u32 {
        (self.last_sect as u32 + 1).saturating_sub(self.first_sect as u32)
    }
    /// Byte offset of the data within its page.
    pub const fn offset(&self) -> usize {
        self.first_sect as usize * SECTOR_SIZE
    }
    /// Byte length of the data.
    pub const fn len(&self) -> usize {
        self.sectors() as usize * SECTOR_SIZE
    }
    /// Whether the segment covers no data (never true for a valid segment).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Decodes the 8-byte on-wire form (identical in every ABI). No validation.
    pub fn decode(b: &[u8; 8]) -> Segment {
        Segment { gref: u32::from_le_bytes([b[0], b[1], b[2], b[3]]), first_sect: b[4], last_sect: b[5] }
    }
    /// Encodes the 8-byte on-wire form (padding zero).
    pub fn encode(&self) -> [u8; 8] {
        let g = self.gref.to_le_bytes();
        [g[0], g[1], g[2], g[3], self.first_sect, self.last_sect, 0, 0]
    }
}

/// The direct segments of a request (at most 11).
pub type SegList = heapless::Vec<Segment, MAX_SEGMENTS_PER_REQUEST>;

/// Operation of a read/write-class request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RwOp {
    /// `BLKIF_OP_READ`.
    Read,
    /// `BLKIF_OP_WRITE`.
    Write,
    /// `BLKIF_OP_WRITE_BARRIER`: earlier writes complete before it, later ones after.
    WriteBarrier,
    /// `BLKIF_OP_FLUSH_DISKCACHE`: commit the volatile cache; may carry data.
    Flush,
}

impl RwOp {
    /// The operation code.
    pub const fn code(self) -> u8 {
        match self {
            RwOp::Read => OP_READ,
            RwOp::Write => OP_WRITE,
            RwOp::WriteBarrier => OP_WRITE_BARRIER,
            RwOp::Flush => OP_FLUSH_DISKCACHE,
        }
    }
    /// Whether the request moves data from the frontend to the disk.
    pub const fn is_write(self) -> bool {
        !matches!(self, RwOp::Read)
    }
}

/// The body of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReqKind {
    /// Read, write, barrier or flush with up to 11 direct segments.
    Rw {
        /// Operation.
        op: RwOp,
        /// Segments (validated: each `first_sect <= last_sect <= 7`).
        segs: SegList,
    },
    /// Discard `nr_sectors` sectors starting at the request's sector.
    Discard {
        /// `BLKIF_DISCARD_SECURE` was set.
        secure: bool,
        /// Number of 512-byte sectors.
        nr_sectors: u64,
    },
    /// Read or write whose segments live in indirect pages.
    Indirect {
        /// `indirect_op`: [`RwOp::Read`] or [`RwOp::Write`] only.
        op: RwOp,
        /// Number of segments across the indirect pages (1..=4096).
        nr_segments: u16,
        /// Grant references of the indirect pages; `ceil(nr_segments/512)` are meaningful.
        pages: heapless::Vec<u32, MAX_INDIRECT_PAGES_PER_REQUEST>,
    },
}

/// A request in native form.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Request {
    /// Opaque id echoed in the response.
    pub id: u64,
    /// Virtual device handle.
    pub handle: u16,
    /// Start sector (512-byte units).
    pub sector: u64,
    /// What to do.
    pub kind: ReqKind,
}

impl Request {
    /// The operation code as it appears on the wire.
    pub fn op_code(&self) -> u8 {
        match &self.kind {
            ReqKind::Rw { op, .. } => op.code(),
            ReqKind::Discard { .. } => OP_DISCARD,
            ReqKind::Indirect { .. } => OP_INDIRECT,
        }
    }
}

/// Why a request was refused. The backend answers with `status()` for `id`/`op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RejectReason {
    /// Unknown or reserved operation code.
    UnknownOp,
    /// `nr_segments` zero where data is required, or above the limit.
    BadSegmentCount,
    /// A segment with `first_sect > last_sect` or `last_sect > 7`.
    BadSegment,
    /// Indirect request whose `indirect_op` is not read or write.
    BadIndirectOp,
    /// The slot was shorter than the ABI's request (a driver bug, not peer input).
    Truncated,
}

/// A request that failed validation; enough to answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Rejected {
    /// The id to echo.
    pub id: u64,
    /// The operation code to echo.
    pub op: u8,
    /// What was wrong.
    pub reason: RejectReason,
}

impl Rejected {
    /// The response status for this rejection: EOPNOTSUPP for operations we do not know,
    /// ERROR for malformed requests.
    pub fn status(&self) -> i16 {
        match self.reason {
            RejectReason::UnknownOp => RSP_EOPNOTSUPP,
            _ => RSP_ERROR,
        }
    }
}

#[inline]
fn rd_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
#[inline]
fn rd_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
#[inline]
fn rd_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
#[inline]
fn wr(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// Decodes a private copy of a request slot. `max_indirect` is the number of indirect
/// segments this backend offered (0: indirect not offered, answered with EOPNOTSUPP).
///
/// Never panics: every field is validated on the copy.
pub fn decode_request(abi: Abi, slot: &[u8], max_indirect: usize) -> Result<Request, Rejected> {
    let mut segs = [Segment::default(); MAX_SEGMENTS_PER_REQUEST];
    let head = decode_request_into(abi, slot, max_indirect, &mut segs)?;
    Ok(head.into_request(&segs))
}

/// The fixed part of a request, as [`decode_request_into`] returns it: a [`Request`] whose
/// direct segments were written to the caller's buffer instead (the backend's hot path, which
/// builds no segment list only to copy it again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RequestHead {
    /// Opaque id echoed in the response.
    pub id: u64,
    /// Virtual device handle.
    pub handle: u16,
    /// Start sector (512-byte units).
    pub sector: u64,
    /// What to do.
    pub kind: HeadKind,
}

/// The body of a [`RequestHead`]: [`ReqKind`] without the segment list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HeadKind {
    /// Read, write, barrier or flush; its `nr_segments` (0..=11) validated segments are in
    /// the caller's buffer.
    Rw {
        /// Operation.
        op: RwOp,
        /// Number of direct segments.
        nr_segments: u8,
    },
    /// Discard `nr_sectors` sectors starting at the request's sector.
    Discard {
        /// `BLKIF_DISCARD_SECURE` was set.
        secure: bool,
        /// Number of 512-byte sectors.
        nr_sectors: u64,
    },
    /// Read or write whose segments live in indirect pages.
    Indirect {
        /// `indirect_op`: [`RwOp::Read`] or [`RwOp::Write`] only.
        op: RwOp,
        /// Number of segments across the indirect pages (1..=4096).
        nr_segments: u16,
        /// Grant references of the indirect pages; the first [`HeadKind::indirect_pages`] are
        /// meaningful, the rest are zero.
        pages: [u32; MAX_INDIRECT_PAGES_PER_REQUEST],
    },
}

impl HeadKind {
    /// The meaningful indirect page references (`ceil(nr_segments/512)`); empty for other kinds.
    pub fn indirect_pages(&self) -> &[u32] {
        match self {
            HeadKind::Indirect { nr_segments, pages, .. } => {
                &pages[..(*nr_segments as usize).div_ceil(SEGMENTS_PER_INDIRECT_PAGE).min(pages.len())]
            }
            _ => &[],
        }
    }
}

impl RequestHead {
    /// The operation code as it appears on the wire.
    pub fn op_code(&self) -> u8 {
        match &self.kind {
            HeadKind::Rw { op, .. } => op.code(),
            HeadKind::Discard { .. } => OP_DISCARD,
            HeadKind::Indirect { .. } => OP_INDIRECT,
        }
    }

    /// The full request, with the direct segments `segs` (the buffer given to
    /// [`decode_request_into`]; only its first `nr_segments` entries are used).
    pub fn into_request(self, segs: &[Segment]) -> Request {
        let kind = match self.kind {
            HeadKind::Rw { op, nr_segments } => {
                let n = (nr_segments as usize).min(segs.len());
                // Cannot drop any: n <= 11 by validation.
                ReqKind::Rw { op, segs: segs[..n].iter().copied().take(MAX_SEGMENTS_PER_REQUEST).collect() }
            }
            HeadKind::Discard { secure, nr_sectors } => ReqKind::Discard { secure, nr_sectors },
            HeadKind::Indirect { op, nr_segments, .. } => {
                ReqKind::Indirect { op, nr_segments, pages: self.kind.indirect_pages().iter().copied().collect() }
            }
        };
        Request { id: self.id, handle: self.handle, sector: self.sector, kind }
    }
}

/// How many leading bytes of a request slot [`decode_request`] (and [`decode_request_into`])
/// look at, given the slot's first two bytes (`operation` and `nr_segments` /
/// `indirect_op` / discard flags): the rest of the slot does not change the result, so a
/// backend need copy no more than this out of shared memory. Never more than the ABI's
/// request size.
#[inline]
pub const fn request_extent(abi: Abi, op: u8, byte1: u8) -> usize {
    let l = abi.layout();
    match op {
        OP_READ | OP_WRITE | OP_WRITE_BARRIER | OP_FLUSH_DISKCACHE => {
            // More than 11 is rejected before any segment is read.
            if byte1 as usize > MAX_SEGMENTS_PER_REQUEST { l.req_seg } else { l.req_seg + 8 * byte1 as usize }
        }
        OP_DISCARD => l.discard,
        OP_INDIRECT => l.indirect,
        // Unknown operations: only `id` (inside the header) is read.
        _ => l.req_seg,
    }
}

/// Decodes a private copy of a request slot like [`decode_request`] (same validation, same
/// rejections), writing the direct segments of a read/write-class request to `segs[..n]`
/// instead of into a [`Request`]. `segs` should hold [`MAX_SEGMENTS_PER_REQUEST`] entries: a
/// shorter buffer makes a request with more segments than it holds a `BadSegmentCount`.
/// Entries past `n` are left as they were; on a rejection, any entry may have been written.
///
/// Never panics: every field is validated on the copy.
#[inline]
pub fn decode_request_into(
    abi: Abi,
    slot: &[u8],
    max_indirect: usize,
    segs: &mut [Segment],
) -> Result<RequestHead, Rejected> {
    let l = abi.layout();
    if slot.len() < l.request {
        let id = if slot.len() >= l.req_id + 8 { rd_u64(slot, l.req_id) } else { 0 };
        let op = slot.first().copied().unwrap_or(0);
        return Err(Rejected { id, op, reason: RejectReason::Truncated });
    }
    let op = slot[0];
    let id = rd_u64(slot, l.req_id);
    let sector = rd_u64(slot, l.req_sector);
    let reject = |reason| Err(Rejected { id, op, reason });
    match op {
        OP_READ | OP_WRITE | OP_WRITE_BARRIER | OP_FLUSH_DISKCACHE => {
            let rw = match op {
                OP_READ => RwOp::Read,
                OP_WRITE => RwOp::Write,
                OP_WRITE_BARRIER => RwOp::WriteBarrier,
                _ => RwOp::Flush,
            };
            let n = slot[1] as usize;
            let handle = rd_u16(slot, 2);
            // Reads and writes carry data; a barrier or flush may be empty.
            if n > MAX_SEGMENTS_PER_REQUEST || (n == 0 && matches!(rw, RwOp::Read | RwOp::Write)) || n > segs.len() {
                return reject(RejectReason::BadSegmentCount);
            }
            for (i, out) in segs[..n].iter_mut().enumerate() {
                let o = l.req_seg + 8 * i;
                let mut sb = [0u8; 8];
                sb.copy_from_slice(&slot[o..o + 8]);
                let s = Segment::decode(&sb);
                if !s.is_valid() {
                    return reject(RejectReason::BadSegment);
                }
                *out = s;
            }
            Ok(RequestHead { id, handle, sector, kind: HeadKind::Rw { op: rw, nr_segments: n as u8 } })
        }
        OP_DISCARD => {
            let handle = rd_u16(slot, 2);
            let secure = slot[1] & DISCARD_FLAG_SECURE != 0;
            let nr_sectors = rd_u64(slot, l.discard_nr_sectors);
            Ok(RequestHead { id, handle, sector, kind: HeadKind::Discard { secure, nr_sectors } })
        }
        OP_INDIRECT => {
            if max_indirect == 0 {
                return reject(RejectReason::UnknownOp);
            }
            let iop = match slot[1] {
                OP_READ => RwOp::Read,
                OP_WRITE => RwOp::Write,
                _ => return reject(RejectReason::BadIndirectOp),
            };
            let n = rd_u16(slot, 2);
            if n == 0 || n as usize > max_indirect.min(MAX_INDIRECT_SEGMENTS) {
                return reject(RejectReason::BadSegmentCount);
            }
            let handle = rd_u16(slot, l.indirect_handle);
            let npages = (n as usize).div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
            let mut pages = [0u32; MAX_INDIRECT_PAGES_PER_REQUEST];
            // npages <= 8 because n <= 4096.
            for (i, p) in pages.iter_mut().enumerate().take(npages) {
                *p = rd_u32(slot, l.indirect_grefs + 4 * i);
            }
            Ok(RequestHead { id, handle, sector, kind: HeadKind::Indirect { op: iop, nr_segments: n, pages } })
        }
        _ => reject(RejectReason::UnknownOp),
    }
}

/// The image [`encode_response`] builds, as a fixed 16-byte array: the layout is the same in
/// both ABIs (`id` @0, `operation` @8, `status` @10, padding zero); an x86_32 response is its
/// first 12 bytes. For the backend's response path, which stores it with fixed-size writes.
#[inline]
pub fn response_image(rsp: &Response) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&rsp.id.to_le_bytes());
    b[8] = rsp.op;
    b[10..12].copy_from_slice(&rsp.status.to_le_bytes());
    b
}

/// Decodes and validates segment `index` of a private copy of an indirect page.
pub fn decode_indirect_segment(page: &[u8], index: usize) -> Option<Segment> {
    let o = index.checked_mul(8)?;
    let b: &[u8; 8] = page.get(o..o + 8)?.try_into().ok()?;
    let s = Segment::decode(b);
    s.is_valid().then_some(s)
}

/// A private, fully initialised image of a ring slot.
#[derive(Clone, Copy, Debug)]
pub struct SlotImage {
    bytes: [u8; MAX_SLOT_BYTES],
    len: usize,
}

impl SlotImage {
    /// The bytes to copy into the slot.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Encodes a request for `abi` into a zero-padded private image of the whole slot.
///
/// Segment lists longer than the wire allows are a caller bug and are truncated to what fits
/// (the frontend never builds them).
pub fn encode_request(abi: Abi, req: &Request) -> SlotImage {
    let mut b = [0u8; MAX_SLOT_BYTES];
    let len = encode_request_into(abi, req, &mut b);
    SlotImage { bytes: b, len }
}

/// [`encode_request`] into a zeroed buffer the caller owns (the ring encodes in place, with
/// no image to move); returns the image's length (the ABI's request size).
#[inline]
pub(crate) fn encode_request_into(abi: Abi, req: &Request, b: &mut [u8; MAX_SLOT_BYTES]) -> usize {
    // Each arm sees its layout as constants (offsets folded, bounds checks gone).
    match abi {
        Abi::X86_64 => encode_request_as(Abi::X86_64.layout(), req, b),
        Abi::X86_32 => encode_request_as(Abi::X86_32.layout(), req, b),
    }
}

/// The read/write-class case of [`encode_request_into`] from its fields (no [`Request`] to
/// build): `segs` beyond 11 are cut off, as [`SegList`] cannot hold them anyway.
#[inline]
pub(crate) fn encode_rw_request_into(
    abi: Abi,
    id: u64,
    handle: u16,
    sector: u64,
    op: RwOp,
    segs: &[Segment],
    b: &mut [u8; MAX_SLOT_BYTES],
) -> usize {
    match abi {
        Abi::X86_64 => encode_rw_as(Abi::X86_64.layout(), id, handle, sector, op, segs, b),
        Abi::X86_32 => encode_rw_as(Abi::X86_32.layout(), id, handle, sector, op, segs, b),
    }
}

#[inline(always)]
fn encode_rw_as(
    l: Layout,
    id: u64,
    handle: u16,
    sector: u64,
    op: RwOp,
    segs: &[Segment],
    b: &mut [u8; MAX_SLOT_BYTES],
) -> usize {
    let segs = &segs[..segs.len().min(MAX_SEGMENTS_PER_REQUEST)];
    b[0] = op.code();
    b[1] = segs.len() as u8;
    wr(b, 2, &handle.to_le_bytes());
    wr(b, l.req_id, &id.to_le_bytes());
    wr(b, l.req_sector, &sector.to_le_bytes());
    for (i, s) in segs.iter().enumerate() {
        wr(b, l.req_seg + 8 * i, &s.encode());
    }
    l.request
}

#[inline(always)]
fn encode_request_as(l: Layout, req: &Request, b: &mut [u8; MAX_SLOT_BYTES]) -> usize {
    if let ReqKind::Rw { op, segs } = &req.kind {
        return encode_rw_as(l, req.id, req.handle, req.sector, *op, segs, b);
    }
    b[0] = req.op_code();
    wr(b, l.req_id, &req.id.to_le_bytes());
    wr(b, l.req_sector, &req.sector.to_le_bytes());
    match &req.kind {
        ReqKind::Rw { .. } => {}
        ReqKind::Discard { secure, nr_sectors } => {
            b[1] = if *secure { DISCARD_FLAG_SECURE } else { 0 };
            wr(b, 2, &req.handle.to_le_bytes());
            wr(b, l.discard_nr_sectors, &nr_sectors.to_le_bytes());
        }
        ReqKind::Indirect { op, nr_segments, pages } => {
            b[1] = op.code();
            wr(b, 2, &nr_segments.to_le_bytes());
            wr(b, l.indirect_handle, &req.handle.to_le_bytes());
            for (i, g) in pages.iter().enumerate() {
                wr(b, l.indirect_grefs + 4 * i, &g.to_le_bytes());
            }
        }
    }
    l.request
}

/// A response in native form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The request's operation code.
    pub op: u8,
    /// `RSP_OKAY`, `RSP_ERROR`, `RSP_EOPNOTSUPP` (anything else is a misbehaving backend).
    pub status: i16,
}

/// Encodes a response image (16 or 12 bytes, padding zero).
pub fn encode_response(abi: Abi, rsp: &Response) -> SlotImage {
    let mut b = [0u8; MAX_SLOT_BYTES];
    b[..16].copy_from_slice(&response_image(rsp));
    SlotImage { bytes: b, len: abi.layout().response }
}

/// Decodes a private copy of a response. No validation beyond the layout: the frontend
/// checks id, operation and status against its own records.
pub fn decode_response(abi: Abi, slot: &[u8]) -> Option<Response> {
    if slot.len() < abi.layout().response {
        return None;
    }
    Some(Response { id: rd_u64(slot, 0), op: slot[8], status: i16::from_le_bytes([slot[10], slot[11]]) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(list: &[(u32, u8, u8)]) -> SegList {
        list.iter().map(|&(gref, first_sect, last_sect)| Segment { gref, first_sect, last_sect }).collect()
    }

    #[test]
    fn round_trip_every_kind_both_abis() {
        let reqs = [
            Request {
                id: 0x1122_3344_5566_7788,
                handle: 0xca00,
                sector: 0x0102_0304_0506_0708,
                kind: ReqKind::Rw { op: RwOp::Write, segs: segs(&[(9, 0, 7), (10, 2, 3)]) },
            },
            Request { id: 3, handle: 1, sector: 0, kind: ReqKind::Rw { op: RwOp::Flush, segs: SegList::new() } },
            Request { id: 4, handle: 1, sector: 8, kind: ReqKind::Discard { secure: true, nr_sectors: 1 << 40 } },
            Request {
                id: 5,
                handle: 2,
                sector: 16,
                kind: ReqKind::Indirect { op: RwOp::Read, nr_segments: 600, pages: [77, 78].into_iter().collect() },
            },
        ];
        for abi in [Abi::X86_64, Abi::X86_32] {
            for r in &reqs {
                let img = encode_request(abi, r);
                assert_eq!(img.as_bytes().len(), abi.layout().request);
                assert_eq!(decode_request(abi, img.as_bytes(), 4096).as_ref(), Ok(r));
            }
        }
    }

    #[test]
    fn id_offset_differs_by_abi() {
        let r =
            Request { id: 0xAB, handle: 0, sector: 0, kind: ReqKind::Rw { op: RwOp::Read, segs: segs(&[(8, 0, 0)]) } };
        assert_eq!(encode_request(Abi::X86_64, &r).as_bytes()[8], 0xAB);
        assert_eq!(encode_request(Abi::X86_32, &r).as_bytes()[4], 0xAB);
    }

    #[test]
    fn validation() {
        let l = Abi::X86_64.layout();
        let mut b = [0u8; 112];
        b[0] = OP_READ;
        b[l.req_id] = 42;
        assert_eq!(decode_request(Abi::X86_64, &b, 0).unwrap_err().reason, RejectReason::BadSegmentCount);
        b[1] = 12;
        assert_eq!(decode_request(Abi::X86_64, &b, 0).unwrap_err().reason, RejectReason::BadSegmentCount);
        b[1] = 1;
        b[l.req_seg + 4] = 3;
        b[l.req_seg + 5] = 2;
        let e = decode_request(Abi::X86_64, &b, 0).unwrap_err();
        assert_eq!((e.id, e.op, e.reason, e.status()), (42, OP_READ, RejectReason::BadSegment, RSP_ERROR));
        b[l.req_seg + 4] = 0;
        b[l.req_seg + 5] = 8;
        assert_eq!(decode_request(Abi::X86_64, &b, 0).unwrap_err().reason, RejectReason::BadSegment);
        b[0] = 77;
        assert_eq!(decode_request(Abi::X86_64, &b, 0).unwrap_err().status(), RSP_EOPNOTSUPP);
        b[0] = OP_RESERVED_1;
        assert_eq!(decode_request(Abi::X86_64, &b, 0).unwrap_err().status(), RSP_EOPNOTSUPP);
        b[0] = OP_INDIRECT;
        assert_eq!(decode_request(Abi::X86_64, &b, 0).unwrap_err().status(), RSP_EOPNOTSUPP);
        b[1] = OP_FLUSH_DISKCACHE;
        assert_eq!(decode_request(Abi::X86_64, &b, 256).unwrap_err().reason, RejectReason::BadIndirectOp);
        b[1] = OP_WRITE;
        b[2..4].copy_from_slice(&257u16.to_le_bytes());
        assert_eq!(decode_request(Abi::X86_64, &b, 256).unwrap_err().reason, RejectReason::BadSegmentCount);
        assert_eq!(decode_request(Abi::X86_64, &b[..50], 256).unwrap_err().reason, RejectReason::Truncated);
    }

    #[test]
    fn bytes_past_the_extent_do_not_change_a_decode() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut accepted = 0;
        for abi in [Abi::X86_64, Abi::X86_32] {
            let len = abi.layout().request;
            for t in 0..20_000u32 {
                let mut slot = [0u8; MAX_SLOT_BYTES];
                for b in slot.iter_mut() {
                    *b = rnd() as u8;
                }
                slot[0] = (t % 8) as u8;
                // Mostly plausible counts and segments, so that most requests are accepted.
                slot[1] = match slot[0] {
                    OP_INDIRECT => (rnd() % 3) as u8,
                    _ => (rnd() % 13) as u8,
                };
                if slot[0] == OP_INDIRECT {
                    slot[2..4].copy_from_slice(&((rnd() % 5000) as u16).to_le_bytes());
                }
                let l = abi.layout();
                for i in 0..11 {
                    let o = l.req_seg + 8 * i;
                    if o + 8 <= len && rnd() % 16 != 0 {
                        let f = (rnd() % 8) as u8;
                        slot[o + 4] = f;
                        slot[o + 5] = f + (rnd() % (8 - f as u64)) as u8;
                    }
                }
                let ext = request_extent(abi, slot[0], slot[1]);
                assert!(ext <= len);
                let mut other = slot;
                for b in other[ext..].iter_mut() {
                    *b = rnd() as u8;
                }
                for max_indirect in [0, 32, 4096] {
                    let a = decode_request(abi, &slot[..len], max_indirect);
                    let b = decode_request(abi, &other[..len], max_indirect);
                    assert_eq!(a, b, "{abi:?} op {} byte1 {} extent {ext}", slot[0], slot[1]);
                    accepted += a.is_ok() as u32;
                    // The head decoder agrees, and fills exactly the segments the request has.
                    let mut segs = [Segment { gref: 0xdead, first_sect: 9, last_sect: 9 }; MAX_SEGMENTS_PER_REQUEST];
                    let h = decode_request_into(abi, &slot[..len], max_indirect, &mut segs);
                    assert_eq!(h.map(|h| h.into_request(&segs)), a);
                    if let Ok(Request { kind: ReqKind::Rw { segs: list, .. }, .. }) = &a {
                        assert!(segs[list.len()..].iter().all(|s| s.gref == 0xdead));
                    }
                }
            }
        }
        // Every kind is exercised, most requests accepted.
        assert!(accepted > 40_000, "only {accepted} accepted");
    }

    #[test]
    fn a_short_segment_buffer_rejects_instead_of_overflowing() {
        let r = Request {
            id: 9,
            handle: 0,
            sector: 0,
            kind: ReqKind::Rw { op: RwOp::Read, segs: segs(&[(1, 0, 7), (2, 0, 7), (3, 0, 7)]) },
        };
        let img = encode_request(Abi::X86_64, &r);
        let mut two = [Segment::default(); 2];
        let e = decode_request_into(Abi::X86_64, img.as_bytes(), 0, &mut two).unwrap_err();
        assert_eq!((e.id, e.reason), (9, RejectReason::BadSegmentCount));
        let mut three = [Segment::default(); 3];
        let h = decode_request_into(Abi::X86_64, img.as_bytes(), 0, &mut three).unwrap();
        assert_eq!(h.into_request(&three), r);
    }

    #[test]
    fn response_image_is_the_encoded_response() {
        for rsp in [
            Response { id: u64::MAX, op: 1, status: -1 },
            Response { id: 0x0102_0304_0506_0708, op: 6, status: -2 },
            Response { id: 0, op: 0, status: 0 },
        ] {
            for abi in [Abi::X86_64, Abi::X86_32] {
                let n = abi.layout().response;
                assert_eq!(&response_image(&rsp)[..n], encode_response(abi, &rsp).as_bytes());
            }
        }
    }

    #[test]
    fn response_padding_is_zero() {
        let img = encode_response(Abi::X86_64, &Response { id: u64::MAX, op: 1, status: -1 });
        assert_eq!(img.as_bytes(), &[255, 255, 255, 255, 255, 255, 255, 255, 1, 0, 255, 255, 0, 0, 0, 0]);
        let img = encode_response(Abi::X86_32, &Response { id: 7, op: 0, status: 0 });
        assert_eq!(img.as_bytes().len(), 12);
        assert_eq!(decode_response(Abi::X86_32, img.as_bytes()), Some(Response { id: 7, op: 0, status: 0 }));
    }
}
