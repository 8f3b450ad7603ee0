//! The checks: real driver code, run against static memory and the stub platform. Each
//! failure returns its own number, which becomes the exit status.

use core::cell::UnsafeCell;
use core::hint::black_box;

use xenblk::proto::blkif::{
    self, Abi, Protocol, RejectReason, ReqKind, Request, Response, RwOp, SegList, Segment, decode_request,
    encode_request,
};
use xenblk::proto::ring::{BackRing, FrontRing, PAGE_SIZE, slots_for_order};
use xenblk::proto::shmem::SharedMem;

#[cfg(any(feature = "frontend", feature = "backend"))]
use crate::stub::Stub;

/// Printed on success.
pub const SUMMARY: &str =
    concat!("xenblk-nostd-check: ok:", " roles", roles!(), ", pool", pool!(), ", ring profile", profile!());

#[cfg(all(feature = "frontend", feature = "backend"))]
macro_rules! roles {
    () => {
        " frontend+backend"
    };
}
#[cfg(all(feature = "frontend", not(feature = "backend")))]
macro_rules! roles {
    () => {
        " frontend"
    };
}
#[cfg(all(feature = "backend", not(feature = "frontend")))]
macro_rules! roles {
    () => {
        " backend"
    };
}
#[cfg(not(any(feature = "frontend", feature = "backend")))]
macro_rules! roles {
    () => {
        " none"
    };
}
#[cfg(feature = "pool-dynamic")]
macro_rules! pool {
    () => {
        " dynamic"
    };
}
#[cfg(not(feature = "pool-dynamic"))]
macro_rules! pool {
    () => {
        " static"
    };
}
#[cfg(feature = "ring-netbsd")]
macro_rules! profile {
    () => {
        " netbsd"
    };
}
#[cfg(not(feature = "ring-netbsd"))]
macro_rules! profile {
    () => {
        " linux"
    };
}
use {pool, profile, roles};

#[repr(C, align(4096))]
struct RingPage(UnsafeCell<[u8; PAGE_SIZE]>);

// SAFETY: the page is only reached through `SharedMem` (volatile/atomic accesses) and the
// program is single-threaded.
unsafe impl Sync for RingPage {}

static RING: RingPage = RingPage(UnsafeCell::new([0; PAGE_SIZE]));

fn ring_mem() -> SharedMem {
    // SAFETY: a static, page-aligned page that lives forever and is never accessed through
    // Rust references.
    unsafe { SharedMem::new(RING.0.get() as *mut u8, PAGE_SIZE) }
}

fn ensure(ok: bool, code: i32) -> Result<(), i32> {
    if ok { Ok(()) } else { Err(code) }
}

/// Runs every check; 0 when all pass.
pub fn run() -> i32 {
    match checks() {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn checks() -> Result<(), i32> {
    ring_round_trip(Abi::X86_64, 10)?;
    ring_round_trip(Abi::X86_32, 20)?;
    codec(30)?;
    #[cfg(feature = "frontend")]
    frontend(40)?;
    #[cfg(feature = "backend")]
    backend(60)?;
    Ok(())
}

fn request(n: u64) -> Request {
    let kind = match n % 3 {
        0 => {
            let mut segs = SegList::new();
            let _ = segs.push(Segment { gref: n as u32 + 8, first_sect: 0, last_sect: 7 });
            ReqKind::Rw { op: if n.is_multiple_of(2) { RwOp::Read } else { RwOp::Write }, segs }
        }
        1 => ReqKind::Discard { secure: false, nr_sectors: n * 8 },
        _ => ReqKind::Indirect {
            op: RwOp::Write,
            nr_segments: 600,
            pages: [n as u32, n as u32 + 1].into_iter().collect(),
        },
    };
    Request { id: n << 40 | n, handle: 51712, sector: n * 8, kind }
}

/// A FrontRing and a BackRing on one static page, 40 requests (more than the 32 slots).
fn ring_round_trip(abi: Abi, code: i32) -> Result<(), i32> {
    let mem = ring_mem();
    let mut front = FrontRing::init(mem, abi).map_err(|_| code)?;
    let mut back = BackRing::attach(mem, abi).map_err(|_| code + 1)?;
    ensure(front.size() == slots_for_order(0) && back.size() == front.size(), code + 2)?;
    for n in 0..40u64 {
        let req = request(n);
        ensure(front.put_request(&req), code + 3)?;
        // The backend re-armed its event in the previous round: every push notifies.
        ensure(front.push_requests(), code + 4)?;
        let got = back.take_request(4096).map_err(|_| code + 5)?;
        ensure(got == Some(Ok(req.clone())), code + 5)?;
        ensure(back.put_response(&Response { id: req.id, op: req.op_code(), status: blkif::RSP_OKAY }), code + 6)?;
        ensure(back.push_responses(), code + 6)?;
        let rsp = front.take_response().map_err(|_| code + 7)?;
        ensure(rsp == Some(Response { id: req.id, op: req.op_code(), status: 0 }), code + 7)?;
        // Re-arm both ends as drivers do before they sleep.
        ensure(!back.final_check_for_requests().map_err(|_| code + 8)?, code + 8)?;
        ensure(!front.final_check_for_responses().map_err(|_| code + 9)?, code + 9)?;
    }
    Ok(())
}

/// Encoding and validation without a ring.
fn codec(code: i32) -> Result<(), i32> {
    for abi in [Abi::X86_64, Abi::X86_32] {
        let req = request(black_box(2));
        let img = encode_request(abi, &req);
        ensure(img.as_bytes().len() == abi.layout().request, code)?;
        ensure(decode_request(abi, img.as_bytes(), 4096) == Ok(req.clone()), code + 1)?;
        // Without indirect support the same request is refused as unsupported.
        let rej = decode_request(abi, img.as_bytes(), 0).err().ok_or(code + 2)?;
        ensure(rej.reason == RejectReason::UnknownOp && rej.status() == blkif::RSP_EOPNOTSUPP, code + 2)?;
    }
    ensure(Protocol::parse("x86_32-abi").map(Protocol::abi) == Some(Abi::X86_32), code + 3)?;
    ensure(Protocol::parse("sparc-abi").is_none(), code + 4)?;
    let s = Segment { gref: 77, first_sect: 1, last_sect: 6 };
    ensure(Segment::decode(&s.encode()) == s && s.len() == 6 * 512, code + 5)?;
    Ok(())
}

/// The xenstore both roles read: the toolstack keys of one vbd, with the peer in InitWait.
#[cfg(any(feature = "frontend", feature = "backend"))]
const STORE: &[(&str, &str)] = &[
    ("/backend", "/local/domain/0/backend/vbd/1/51712"),
    ("/backend-id", "0"),
    ("/frontend", "/local/domain/1/device/vbd/51712"),
    ("/frontend-id", "1"),
    ("/state", "2"),
    ("/sectors", "2048"),
    ("/sector-size", "512"),
    ("/info", "0"),
    ("/mode", "w"),
];

#[cfg(feature = "frontend")]
fn frontend(code: i32) -> Result<(), i32> {
    use xenblk::modes::frontend::{Completion, Frontend, FrontendConfig};
    use xenblk::pool::front::FrontPool;
    use xenblk::proto::grant::{DomId, GTF_READING};

    let mut stub = Stub::new(STORE);

    // The persistent-grant pool: grant, use, return with persistence (the grant stays and the
    // page is reused first), return without persistence (revoked), then a page the backend
    // maps is returned with persistence and released at disconnect once it lets go.
    let mut pool = FrontPool::new(4, DomId(0));
    let a = pool.get(&mut stub, false).map_err(|_| code)?;
    ensure(stub.grants_in_use() == 1 && stub.pages_in_use() == 1, code + 1)?;
    pool.page(a).write_bytes(0, b"payload");
    let gref = pool.gref(a);
    pool.put(&mut stub, a, true).map_err(|_| code + 2)?;
    ensure(stub.grants_in_use() == 1, code + 2)?;
    let b = pool.get(&mut stub, false).map_err(|_| code + 3)?;
    ensure(b == a && pool.gref(b) == gref, code + 3)?;
    pool.put(&mut stub, b, false).map_err(|_| code + 4)?;
    ensure(stub.grants_in_use() == 0, code + 4)?;
    let c = pool.get(&mut stub, false).map_err(|_| code + 5)?;
    let gref = pool.gref(c);
    // Pretend the backend maps it: Xen would set GTF_reading.
    stub_table_flags(&stub, gref.0, GTF_READING, true);
    pool.put(&mut stub, c, true).map_err(|_| code + 5)?;
    ensure(stub.grants_in_use() == 1, code + 5)?;
    stub_table_flags(&stub, gref.0, GTF_READING, false);
    ensure(pool.get(&mut stub, false) == Ok(c), code + 6)?;
    pool.put(&mut stub, c, true).map_err(|_| code + 6)?;
    pool.release_all(&mut stub);
    pool.free_pages(&mut stub);
    ensure(stub.grants_in_use() == 0 && stub.pages_in_use() == 0, code + 7)?;

    // The state machine: attach, react to the backend's InitWait (allocates and grants the
    // ring, an event channel, writes the keys), poll, and shut down again.
    let poll: fn(&mut Frontend, &mut Stub, fn(&mut Completion<'_>)) -> usize = Frontend::poll::<Stub>;
    let mut f = Frontend::attach(&mut stub, "/local/domain/1/device/vbd/51712", FrontendConfig::default(), 1)
        .map_err(|_| code + 8)?;
    f.on_xenstore(&mut stub);
    ensure(f.port().is_some() && stub.grants_in_use() >= 1, code + 9)?;
    let done = black_box(poll)(&mut f, &mut stub, |_| {});
    ensure(done == 0, code + 10)?;
    f.shutdown(&mut stub);
    ensure(stub.grants_in_use() == 0 && stub.pages_in_use() == 0, code + 11)?;
    Ok(())
}

/// Sets or clears `bits` in the flags of grant `r` of the stub's table (what Xen does while
/// a grantee maps a page).
#[cfg(feature = "frontend")]
fn stub_table_flags(stub: &Stub, r: u32, bits: u16, set: bool) {
    let off = r as usize * xenblk::proto::grant::ENTRY_SIZE;
    let mem = stub.table_memory();
    if set {
        mem.fetch_or_u16(off, bits);
    } else {
        mem.fetch_and_u16(off, !bits);
    }
}

#[cfg(feature = "backend")]
struct NullDisk;

#[cfg(feature = "backend")]
impl xenblk::modes::storage::Storage for NullDisk {
    fn info(&self) -> xenblk::modes::storage::StorageInfo {
        xenblk::modes::storage::StorageInfo {
            sectors: 2048,
            sector_size: 512,
            physical_sector_size: 512,
            read_only: false,
            flush: true,
            discard: false,
            discard_granularity: 0,
            discard_secure: false,
        }
    }
    fn read(&mut self, _sector: u64, dst: SharedMem) -> Result<(), xenblk::modes::storage::StorageError> {
        dst.zero(0, dst.len());
        Ok(())
    }
    fn write(&mut self, _sector: u64, _src: SharedMem) -> Result<(), xenblk::modes::storage::StorageError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), xenblk::modes::storage::StorageError> {
        Ok(())
    }
}

#[cfg(feature = "backend")]
fn backend(code: i32) -> Result<(), i32> {
    use xenblk::modes::backend::{Backend, BackendConfig};
    use xenblk::platform::Mapping;
    use xenblk::pool::back::GrantCache;
    use xenblk::proto::grant::GrantRef;

    let mut stub = Stub::new(STORE);

    // The persistent-mapping cache: insert, hit, release, clear (unmaps).
    let mut cache = GrantCache::new(8);
    let map = Mapping { mem: crate::stub::frames(0, 1), handle: 1 };
    let slot = cache.insert(GrantRef(9), map, 0, None).ok_or(code)?;
    ensure(cache.get(GrantRef(9), 1).is_some() && cache.get(GrantRef(10), 1).is_none(), code + 1)?;
    cache.release(slot);
    cache.release(slot);
    ensure(cache.len() == 1 && cache.stats().hits == 1 && cache.stats().misses == 1, code + 2)?;
    ensure(cache.clear(&mut stub, None) == 1 && cache.is_empty(), code + 3)?;

    // The state machine: probe (publishes limits, InitWait), react to the frontend, serve,
    // housekeeping, shut down.
    let process: fn(&mut Backend<NullDisk>, &mut Stub) -> usize = Backend::<NullDisk>::process::<Stub>;
    let mut b = Backend::probe(&mut stub, "/local/domain/0/backend/vbd/1/51712", BackendConfig::default(), NullDisk, 2)
        .map_err(|_| code + 4)?;
    b.on_xenstore(&mut stub);
    ensure(black_box(process)(&mut b, &mut stub) == 0, code + 5)?;
    b.tick(&mut stub, 1000);
    b.shutdown(&mut stub);
    ensure(stub.pages_in_use() == 0, code + 6)?;
    Ok(())
}
