//! Proof against Xen's own definitions.
//!
//! 1. **Layouts and constants.** `tests/c/xen_layout.c` is compiled with gcc against Debian
//!    `libxen-dev`'s `xen/io/blkif.h`, `xen/io/ring.h` and `xen/grant_table.h`, once with
//!    `-m64` (x86_64 layout) and once with `-m32` (x86_32 layout), and prints `sizeof`,
//!    `offsetof` and constant values. Every printed value is compared with what this crate
//!    claims: the `Layout` tables, where the encoders actually put each field, where the
//!    rings actually keep their indices, `ring_size`/`slots_for_order`, and the constants of
//!    `proto::blkif` and `proto::grant`. A value the probe prints but this test does not check
//!    is itself a failure.
//! 2. **Live interop.** `tests/c/xen_ring_peer.c` is a blkif peer made of Xen's `RING_*`
//!    macros, driven line by line over stdin/stdout. It maps the same memfd page(s) as the
//!    test, so one shared ring has Xen's macros on one end and `FrontRing`/`BackRing` on the
//!    other. A seeded scenario is run with the C/C, C/Rust, Rust/C and Rust/Rust pairings (and,
//!    starting at index 0xFFFF_FFF0 so that the 32-bit indices wrap, C/C and C/Rust); every
//!    request and response is checked field by field on the receiving side, every request slot
//!    byte for byte against `encode_request`, and the traces of decisions (push notifications,
//!    final checks, free and unconsumed counts, ring-full refusals, header values) of all
//!    pairings must be identical. Fixed cases cover literal notify sequences, rejected requests
//!    and hostile indices.
//!
//! Needs gcc with 32-bit support and the Xen headers; when they are missing the test installs
//! `libxen-dev gcc-multilib` with apt-get (as root) or fails saying what to install.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};

use xenblk::proto::blkif::{
    self, Abi, RejectReason, Rejected, ReqKind, Request, Response, RwOp, SegList, Segment, encode_request,
    encode_response,
};
use xenblk::proto::grant::{self, DomId, GntStatus, GrantRef, GrantTableV1};
use xenblk::proto::ring::{self, BackRing, FrontRing, RingError};
use xenblk::proto::shmem::SharedMem;
use xenblk_sim::shm::{MappedRegion, Memfd};

// Ring header offsets as io/ring.h lays them out (checked by the layout test against gcc).
const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// Start index of the wrap-around runs: 16 before the 32-bit indices wrap.
const WRAP_START: u32 = 0xFFFF_FFF0;

const ABIS: [(Abi, u32); 2] = [(Abi::X86_64, 64), (Abi::X86_32, 32)];

// ---------------------------------------------------------------------------------------
// Toolchain: gcc (-m64 and -m32) and the Xen headers.

const XEN_HEADERS: [&str; 3] =
    ["/usr/include/xen/io/blkif.h", "/usr/include/xen/io/ring.h", "/usr/include/xen/grant_table.h"];

fn work_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xen_headers");
    std::fs::create_dir_all(&d).expect("create the test's temp dir under target/");
    d
}

fn c_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(name)
}

/// Why the C programs cannot be built here, or `None` when they can.
fn toolchain_problem() -> Option<String> {
    if let Some(h) = XEN_HEADERS.iter().find(|h| !Path::new(h).exists()) {
        return Some(format!("{h} is missing (Debian package libxen-dev)"));
    }
    let probe = work_dir().join(format!("probe-{}.c", std::process::id()));
    std::fs::write(&probe, "#include <stdio.h>\n#include <stdint.h>\nint main(void) { return 0; }\n")
        .expect("write probe source");
    let mut problem = None;
    for bits in [64, 32] {
        let out = probe.with_extension(format!("m{bits}"));
        match Command::new("gcc").arg(format!("-m{bits}")).arg(&probe).arg("-o").arg(&out).output() {
            Err(e) => problem = Some(format!("cannot run gcc: {e} (Debian package gcc)")),
            Ok(o) if !o.status.success() => {
                problem = Some(format!(
                    "gcc -m{bits} cannot build a C program (Debian package gcc-multilib): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Ok(_) => {}
        }
        let _ = std::fs::remove_file(&out);
        if problem.is_some() {
            break;
        }
    }
    let _ = std::fs::remove_file(&probe);
    problem
}

fn apt_get(args: &[&str]) -> bool {
    eprintln!("xen_headers: apt-get {}", args.join(" "));
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure gcc, gcc-multilib and libxen-dev are usable, installing them if needed.
fn ensure_toolchain() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(|| {
        let Some(first) = toolchain_problem() else { return Ok(()) };
        eprintln!("xen_headers: {first}; installing libxen-dev gcc-multilib");
        let install = ["install", "-y", "-q", "libxen-dev", "gcc-multilib"];
        if !apt_get(&install) {
            apt_get(&["update", "-q"]);
            apt_get(&install);
        }
        match toolchain_problem() {
            None => Ok(()),
            Some(p) => Err(format!(
                "xen_headers needs gcc with 32-bit support and the Xen public headers: {p}. \
                 Installing them failed; run `apt-get install -y libxen-dev gcc-multilib` as root."
            )),
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Compiles `tests/c/<name>.c` for `-m<bits>` (once per test process) and returns the binary.
fn c_program(name: &str, bits: u32) -> PathBuf {
    static BUILT: Mutex<BTreeMap<(String, u32), PathBuf>> = Mutex::new(BTreeMap::new());
    ensure_toolchain();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(&(name.to_string(), bits)) {
        return p.clone();
    }
    let dir = work_dir();
    let exe = dir.join(format!("{name}-m{bits}"));
    // Build under a private name and rename: concurrent test processes may share the dir.
    let tmp = dir.join(format!("{name}-m{bits}.{}.tmp", std::process::id()));
    let src = c_source(&format!("{name}.c"));
    let out = Command::new("gcc")
        .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-m{bits}"))
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .output()
        .expect("run gcc");
    assert!(out.status.success(), "gcc -m{bits} {} failed:\n{}", src.display(), String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&tmp, &exe).expect("rename the C binary into place");
    built.insert((name.to_string(), bits), exe.clone());
    exe
}

// ---------------------------------------------------------------------------------------
// 1. Layouts and constants.

/// The probe's output: `key -> value`, with every key that a check looked at remembered.
struct Probe {
    abi: Abi,
    values: BTreeMap<String, i64>,
    used: BTreeSet<String>,
    failures: Vec<String>,
    checks: usize,
}

impl Probe {
    fn run(abi: Abi, bits: u32) -> Probe {
        let out = Command::new(c_program("xen_layout", bits)).output().expect("run the layout probe");
        assert!(out.status.success(), "layout probe -m{bits} failed");
        let text = String::from_utf8(out.stdout).expect("probe output is UTF-8");
        let mut values = BTreeMap::new();
        let mut lines = text.lines();
        let expected_abi = if abi == Abi::X86_64 { "abi x86_64" } else { "abi x86_32" };
        assert_eq!(lines.next(), Some(expected_abi), "the -m{bits} probe reports another ABI");
        let mut ended = false;
        for line in lines {
            if line == "end" {
                ended = true;
                break;
            }
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad probe line {line:?}"));
            let key = key.replace("struct ", "").replace("union ", "");
            let value: i64 = value.parse().unwrap_or_else(|_| panic!("bad probe value in {line:?}"));
            assert!(values.insert(key.clone(), value).is_none(), "duplicate probe key {key}");
        }
        assert!(ended, "layout probe output is truncated");
        Probe { abi, values, used: BTreeSet::new(), failures: Vec::new(), checks: 0 }
    }

    fn get(&mut self, key: &str) -> i64 {
        self.used.insert(key.to_string());
        *self.values.get(key).unwrap_or_else(|| panic!("the probe printed no {key}"))
    }

    fn off(&mut self, key: &str) -> usize {
        self.get(key) as usize
    }

    /// Records a failure unless the header's `key` equals the crate's `ours`.
    fn eq(&mut self, key: &str, ours: i64, what: &str) {
        let xen = self.get(key);
        self.checks += 1;
        if xen != ours {
            self.failures.push(format!("{:?}: {key} is {xen} in Xen's header but {ours} in xenblk ({what})", self.abi));
        }
    }

    /// Records a failure unless the byte of `img` at the header's offset `key` is `want`.
    fn byte(&mut self, key: &str, img: &[u8], want: u8, what: &str) {
        let off = self.off(key);
        self.checks += 1;
        if img.get(off) != Some(&want) {
            self.failures.push(format!("{:?}: byte {off} ({key}) of the {what} is not {want}: {img:02x?}", self.abi));
        }
    }

    /// Records a failure unless `needle` occurs in `img` exactly once, at the offset `key`.
    fn pattern(&mut self, key: &str, img: &[u8], needle: &[u8], what: &str) {
        self.eq(key, find_unique(img, needle) as i64, what);
    }

    fn finish(self) -> usize {
        let unchecked: Vec<_> = self.values.keys().filter(|k| !self.used.contains(*k)).collect();
        assert!(unchecked.is_empty(), "{:?}: probe values nobody checks: {unchecked:?}", self.abi);
        assert!(self.failures.is_empty(), "layout mismatches:\n{}", self.failures.join("\n"));
        self.checks
    }
}

/// The only offset at which `needle` occurs in `hay`.
fn find_unique(hay: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> =
        hay.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "pattern {needle:02x?} found at {hits:?} in {hay:02x?}");
    hits[0]
}

fn segs(list: &[(u32, u8, u8)]) -> SegList {
    list.iter().map(|&(gref, first_sect, last_sect)| Segment { gref, first_sect, last_sect }).collect()
}

fn anon(bytes: usize) -> MappedRegion {
    MappedRegion::anonymous(bytes).expect("anonymous shared mapping")
}

fn check_blkif(p: &mut Probe) {
    let abi = p.abi;
    let l = abi.layout();

    // Segment: the encoder's bytes.
    let s = Segment { gref: 0xA1B2_C3D4, first_sect: 3, last_sect: 6 };
    let b = s.encode();
    p.eq("sizeof.blkif_request_segment", b.len() as i64, "Segment::encode length");
    p.eq(
        "offsetof.blkif_request_segment.gref",
        find_unique(&b, &0xA1B2_C3D4u32.to_le_bytes()) as i64,
        "Segment::encode gref",
    );
    p.eq("offsetof.blkif_request_segment.first_sect", find_unique(&b, &[3]) as i64, "Segment::encode first_sect");
    p.eq("offsetof.blkif_request_segment.last_sect", find_unique(&b, &[6]) as i64, "Segment::encode last_sect");
    assert_eq!(Segment::decode(&b), s);

    // Read/write request: where encode_request puts each field.
    let id = 0x1122_3344_5566_7788u64;
    let sector = 0x99AA_BBCC_DDEE_F0F1u64;
    let req = Request {
        id,
        handle: 0xC3A5,
        sector,
        kind: ReqKind::Rw { op: RwOp::Write, segs: segs(&[(0x0BAD_F00D, 1, 5), (0x0DEA_DBEE, 2, 4)]) },
    };
    let img = encode_request(abi, &req);
    let b = img.as_bytes();
    p.eq("sizeof.blkif_request", l.request as i64, "Layout::request");
    p.eq("sizeof.blkif_request", b.len() as i64, "encode_request image length");
    p.eq("sizeof.blkif_sring_entry", abi.entry_size() as i64, "Abi::entry_size");
    p.byte("offsetof.blkif_request.operation", b, blkif::OP_WRITE, "encoder operation byte");
    p.byte("offsetof.blkif_request.nr_segments", b, 2, "encoder nr_segments byte");
    p.pattern("offsetof.blkif_request.handle", b, &0xC3A5u16.to_le_bytes(), "encoder handle");
    p.eq("offsetof.blkif_request.id", l.req_id as i64, "Layout::req_id");
    p.pattern("offsetof.blkif_request.id", b, &id.to_le_bytes(), "encoder id");
    p.eq("offsetof.blkif_request.sector_number", l.req_sector as i64, "Layout::req_sector");
    p.pattern("offsetof.blkif_request.sector_number", b, &sector.to_le_bytes(), "encoder sector");
    p.eq("offsetof.blkif_request.seg[0]", l.req_seg as i64, "Layout::req_seg");
    p.pattern("offsetof.blkif_request.seg[0]", b, &0x0BAD_F00Du32.to_le_bytes(), "encoder seg[0]");
    p.pattern("offsetof.blkif_request.seg[1]", b, &0x0DEA_DBEEu32.to_le_bytes(), "encoder seg[1]");
    p.eq(
        "fieldsize.blkif_request.seg",
        (8 * blkif::MAX_SEGMENTS_PER_REQUEST) as i64,
        "MAX_SEGMENTS_PER_REQUEST segments",
    );
    let seg0 = p.off("offsetof.blkif_request.seg[0]");
    let first = p.off("offsetof.blkif_request_segment.first_sect");
    assert_eq!(b[seg0 + first], 1, "{abi:?}: seg[0].first_sect not where the header has it");

    // Discard.
    let nr = 0x0102_0304_0506_0708u64;
    let req = Request { id, handle: 0x5AA5, sector, kind: ReqKind::Discard { secure: true, nr_sectors: nr } };
    let img = encode_request(abi, &req);
    let b = img.as_bytes();
    p.eq("sizeof.blkif_request_discard", l.discard as i64, "Layout::discard");
    p.byte("offsetof.blkif_request_discard.operation", b, blkif::OP_DISCARD, "encoder operation byte");
    p.byte("offsetof.blkif_request_discard.flag", b, blkif::DISCARD_FLAG_SECURE, "encoder secure flag");
    p.pattern("offsetof.blkif_request_discard.handle", b, &0x5AA5u16.to_le_bytes(), "encoder handle");
    p.pattern("offsetof.blkif_request_discard.id", b, &id.to_le_bytes(), "encoder id");
    p.pattern("offsetof.blkif_request_discard.sector_number", b, &sector.to_le_bytes(), "encoder sector");
    p.eq("offsetof.blkif_request_discard.nr_sectors", l.discard_nr_sectors as i64, "Layout::discard_nr_sectors");
    p.pattern("offsetof.blkif_request_discard.nr_sectors", b, &nr.to_le_bytes(), "encoder nr_sectors");
    assert!(b[l.discard..].iter().all(|&x| x == 0), "{abi:?}: discard image not zero past the struct");

    // Indirect: 1029 segments need 3 indirect pages.
    let pages = [0x7101_0101u32, 0x7202_0202, 0x7303_0303];
    let req = Request {
        id,
        handle: 0x6EE6,
        sector,
        kind: ReqKind::Indirect { op: RwOp::Write, nr_segments: 0x0405, pages: pages.iter().copied().collect() },
    };
    let img = encode_request(abi, &req);
    let b = img.as_bytes();
    p.eq("sizeof.blkif_request_indirect", l.indirect as i64, "Layout::indirect");
    p.byte("offsetof.blkif_request_indirect.operation", b, blkif::OP_INDIRECT, "encoder operation byte");
    p.byte("offsetof.blkif_request_indirect.indirect_op", b, blkif::OP_WRITE, "encoder indirect_op byte");
    p.pattern("offsetof.blkif_request_indirect.nr_segments", b, &0x0405u16.to_le_bytes(), "encoder nr_segments");
    p.pattern("offsetof.blkif_request_indirect.id", b, &id.to_le_bytes(), "encoder id");
    p.pattern("offsetof.blkif_request_indirect.sector_number", b, &sector.to_le_bytes(), "encoder sector");
    p.eq("offsetof.blkif_request_indirect.handle", l.indirect_handle as i64, "Layout::indirect_handle");
    p.pattern("offsetof.blkif_request_indirect.handle", b, &0x6EE6u16.to_le_bytes(), "encoder handle");
    p.eq("offsetof.blkif_request_indirect.indirect_grefs", l.indirect_grefs as i64, "Layout::indirect_grefs");
    p.pattern(
        "offsetof.blkif_request_indirect.indirect_grefs",
        b,
        &pages[0].to_le_bytes(),
        "encoder indirect_grefs[0]",
    );
    let grefs = l.indirect_grefs;
    assert_eq!(find_unique(b, &pages[2].to_le_bytes()), grefs + 8, "{abi:?}: indirect_grefs[2]");
    p.eq(
        "fieldsize.blkif_request_indirect.indirect_grefs",
        (4 * blkif::MAX_INDIRECT_PAGES_PER_REQUEST) as i64,
        "MAX_INDIRECT_PAGES_PER_REQUEST grefs",
    );
    assert!(b[grefs + 12..].iter().all(|&x| x == 0), "{abi:?}: unused indirect grefs and padding must be zero");

    // Response.
    let img = encode_response(abi, &Response { id, op: 0x5A, status: blkif::RSP_EOPNOTSUPP });
    let b = img.as_bytes();
    p.eq("sizeof.blkif_response", l.response as i64, "Layout::response");
    p.eq("sizeof.blkif_response", b.len() as i64, "encode_response image length");
    p.pattern("offsetof.blkif_response.id", b, &id.to_le_bytes(), "encoder id");
    p.pattern("offsetof.blkif_response.operation", b, &[0x5A], "encoder operation");
    p.pattern("offsetof.blkif_response.status", b, &blkif::RSP_EOPNOTSUPP.to_le_bytes(), "encoder status");
    p.eq("sizeof.blkif_request", blkif::MAX_SLOT_BYTES.min(l.request) as i64, "MAX_SLOT_BYTES covers the slot");

    // Constants.
    for (key, ours) in [
        ("const.BLKIF_OP_READ", blkif::OP_READ as i64),
        ("const.BLKIF_OP_WRITE", blkif::OP_WRITE as i64),
        ("const.BLKIF_OP_WRITE_BARRIER", blkif::OP_WRITE_BARRIER as i64),
        ("const.BLKIF_OP_FLUSH_DISKCACHE", blkif::OP_FLUSH_DISKCACHE as i64),
        ("const.BLKIF_OP_RESERVED_1", blkif::OP_RESERVED_1 as i64),
        ("const.BLKIF_OP_DISCARD", blkif::OP_DISCARD as i64),
        ("const.BLKIF_OP_INDIRECT", blkif::OP_INDIRECT as i64),
        ("const.BLKIF_RSP_OKAY", blkif::RSP_OKAY as i64),
        ("const.BLKIF_RSP_ERROR", blkif::RSP_ERROR as i64),
        ("const.BLKIF_RSP_EOPNOTSUPP", blkif::RSP_EOPNOTSUPP as i64),
        ("const.BLKIF_MAX_SEGMENTS_PER_REQUEST", blkif::MAX_SEGMENTS_PER_REQUEST as i64),
        ("const.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST", blkif::MAX_INDIRECT_PAGES_PER_REQUEST as i64),
        ("const.BLKIF_DISCARD_SECURE", blkif::DISCARD_FLAG_SECURE as i64),
        ("const.VDISK_CDROM", blkif::VDISK_CDROM as i64),
        ("const.VDISK_REMOVABLE", blkif::VDISK_REMOVABLE as i64),
        ("const.VDISK_READONLY", blkif::VDISK_READONLY as i64),
    ] {
        p.eq(key, ours, "proto::blkif constant");
    }
    let seg = p.get("sizeof.blkif_request_segment") as usize;
    assert_eq!(blkif::SEGMENTS_PER_INDIRECT_PAGE, ring::PAGE_SIZE / seg, "segments per indirect page");
    assert_eq!(
        blkif::MAX_INDIRECT_SEGMENTS,
        blkif::MAX_INDIRECT_PAGES_PER_REQUEST * ring::PAGE_SIZE / seg,
        "MAX_INDIRECT_SEGMENTS"
    );
    // The response status of the rejected-request paths are the header's codes.
    let rej = |reason| Rejected { id: 0, op: 0, reason }.status() as i64;
    p.eq("const.BLKIF_RSP_EOPNOTSUPP", rej(RejectReason::UnknownOp), "Rejected::status(UnknownOp)");
    p.eq("const.BLKIF_RSP_ERROR", rej(RejectReason::BadSegment), "Rejected::status(BadSegment)");
}

fn check_ring(p: &mut Probe) {
    let abi = p.abi;
    p.eq("offsetof.blkif_sring.ring[0]", ring::HEADER_SIZE as i64, "ring::HEADER_SIZE");
    let r0 = p.off("offsetof.blkif_sring.ring[0]");
    let r1 = p.off("offsetof.blkif_sring.ring[1]");
    p.eq("offsetof.blkif_sring.ring[1]", (ring::HEADER_SIZE + abi.entry_size()) as i64, "entry stride");
    p.eq("fieldsize.blkif_sring.req_prod", 4, "RING_IDX is a u32");

    // Where FrontRing/BackRing really keep their indices: watch the header change.
    let region = anon(ring::PAGE_SIZE);
    let mem = region.shared();
    mem.write_bytes(0, &[0xFF; 64]);
    let mut front = FrontRing::init(mem, abi).expect("front init");
    let [rp, re, sp, se] =
        ["req_prod", "req_event", "rsp_prod", "rsp_event"].map(|f| p.off(&format!("offsetof.blkif_sring.{f}")));
    let u32_at = |off: usize| mem.load_u32(off, Ordering::SeqCst);
    let mut pad = [0u8; 48];
    mem.read_bytes(16, &mut pad);
    assert!(pad.iter().all(|&x| x == 0), "{abi:?}: init must zero the header padding (SHARED_RING_INIT)");
    assert_eq!((u32_at(rp), u32_at(re), u32_at(sp), u32_at(se)), (0, 1, 0, 1), "{abi:?}: header after init");
    let req = Request { id: 7, handle: 1, sector: 9, kind: ReqKind::Rw { op: RwOp::Read, segs: segs(&[(5, 0, 7)]) } };
    assert!(front.put_request(&req));
    assert!(front.put_request(&req));
    front.push_requests();
    p.eq(
        "offsetof.blkif_sring.req_prod",
        if u32_at(rp) == 2 { rp as i64 } else { -1 },
        "FrontRing::push_requests publishes req_prod",
    );
    let mut slot = vec![0u8; abi.entry_size()];
    mem.read_bytes(r1, &mut slot);
    assert_eq!(slot, encode_request(abi, &req).as_bytes(), "{abi:?}: second request not at ring[1]");
    let mut back = BackRing::attach(mem, abi).expect("back attach");
    back.take_request(0).unwrap().unwrap().unwrap();
    back.take_request(0).unwrap().unwrap().unwrap();
    assert!(back.put_response(&Response { id: 7, op: 0, status: 0 }));
    back.push_responses();
    p.eq(
        "offsetof.blkif_sring.rsp_prod",
        if u32_at(sp) == 1 { sp as i64 } else { -1 },
        "BackRing::push_responses publishes rsp_prod",
    );
    let mut rsp = vec![0u8; abi.layout().response];
    mem.read_bytes(r0, &mut rsp);
    assert_eq!(
        rsp,
        encode_response(abi, &Response { id: 7, op: 0, status: 0 }).as_bytes(),
        "{abi:?}: response not at ring[0]"
    );
    assert!(!back.final_check_for_requests().unwrap());
    p.eq(
        "offsetof.blkif_sring.req_event",
        if u32_at(re) == 3 { re as i64 } else { -1 },
        "final_check_for_requests arms req_event",
    );
    front.take_response().unwrap().unwrap();
    assert!(!front.final_check_for_responses().unwrap());
    p.eq(
        "offsetof.blkif_sring.rsp_event",
        if u32_at(se) == 2 { se as i64 } else { -1 },
        "final_check_for_responses arms rsp_event",
    );
    assert_eq!([rp, re, sp, se], [REQ_PROD, REQ_EVENT, RSP_PROD, RSP_EVENT], "this test's own offsets");

    // __RING_SIZE for 1..16 pages.
    for order in 0..=ring::MAX_RING_ORDER {
        let pages = 1usize << order;
        let key = format!("ring_size.{pages}");
        p.eq(&key, ring::slots_for_order(order) as i64, "ring::slots_for_order");
        p.eq(&key, ring::ring_size(pages * ring::PAGE_SIZE, abi.entry_size()) as i64, "ring::ring_size(bytes, entry)");
        p.eq(&key, ring::ring_size(pages * ring::PAGE_SIZE, 108) as i64, "ring::ring_size(bytes, 108)");
        let region = anon(pages * ring::PAGE_SIZE);
        p.eq(&key, FrontRing::init(region.shared(), abi).unwrap().size() as i64, "FrontRing::size");
        p.eq(&key, BackRing::attach(region.shared(), abi).unwrap().size() as i64, "BackRing::size");
    }
}

fn check_grant(p: &mut Probe) {
    // v1 entry: where GrantTableV1::grant writes.
    p.eq("sizeof.grant_entry_v1_t", grant::ENTRY_SIZE as i64, "grant::ENTRY_SIZE");
    let size = p.get("sizeof.grant_entry_v1_t") as usize;
    assert_eq!(grant::ENTRIES_PER_FRAME, ring::PAGE_SIZE / size, "entries per frame");
    let region = anon(ring::PAGE_SIZE);
    let t = GrantTableV1::new(region.shared());
    assert!(t.grant(GrantRef(5), DomId(0xBEEF), 0x1234_5678, true));
    let mut e = [0u8; 8];
    region.shared().read_bytes(5 * size, &mut e);
    let flags = (p.get("const.GTF_permit_access") | p.get("const.GTF_readonly")) as u16;
    let foff = p.off("offsetof.grant_entry_v1_t.flags");
    p.eq(
        "offsetof.grant_entry_v1_t.flags",
        if e[foff..foff + 2] == flags.to_le_bytes() { foff as i64 } else { -1 },
        "GrantTableV1::grant flags",
    );
    p.eq(
        "offsetof.grant_entry_v1_t.domid",
        find_unique(&e, &0xBEEFu16.to_le_bytes()) as i64,
        "GrantTableV1::grant domid",
    );
    p.eq(
        "offsetof.grant_entry_v1_t.frame",
        find_unique(&e, &0x1234_5678u32.to_le_bytes()) as i64,
        "GrantTableV1::grant frame",
    );

    for (key, ours) in [
        ("const.GNTTAB_NR_RESERVED_ENTRIES", grant::NR_RESERVED_ENTRIES as i64),
        ("const.GTF_invalid", grant::GTF_INVALID as i64),
        ("const.GTF_permit_access", grant::GTF_PERMIT_ACCESS as i64),
        ("const.GTF_accept_transfer", grant::GTF_ACCEPT_TRANSFER as i64),
        ("const.GTF_transitive", grant::GTF_TRANSITIVE as i64),
        ("const.GTF_type_mask", grant::GTF_TYPE_MASK as i64),
        ("const.GTF_readonly", grant::GTF_READONLY as i64),
        ("const.GTF_reading", grant::GTF_READING as i64),
        ("const.GTF_writing", grant::GTF_WRITING as i64),
        ("const.GTF_PWT", grant::GTF_PWT as i64),
        ("const.GTF_PCD", grant::GTF_PCD as i64),
        ("const.GTF_PAT", grant::GTF_PAT as i64),
        ("const.GTF_sub_page", grant::GTF_SUB_PAGE as i64),
        ("const.GNTMAP_device_map", grant::GNTMAP_DEVICE_MAP as i64),
        ("const.GNTMAP_host_map", grant::GNTMAP_HOST_MAP as i64),
        ("const.GNTMAP_readonly", grant::GNTMAP_READONLY as i64),
        ("const.GNTMAP_application_map", grant::GNTMAP_APPLICATION_MAP as i64),
        ("const.GNTMAP_contains_pte", grant::GNTMAP_CONTAINS_PTE as i64),
        ("const.GNTCOPY_source_gref", grant::GNTCOPY_SOURCE_GREF as i64),
        ("const.GNTCOPY_dest_gref", grant::GNTCOPY_DEST_GREF as i64),
        ("const.GNTTABOP_map_grant_ref", grant::op::MAP_GRANT_REF as i64),
        ("const.GNTTABOP_unmap_grant_ref", grant::op::UNMAP_GRANT_REF as i64),
        ("const.GNTTABOP_setup_table", grant::op::SETUP_TABLE as i64),
        ("const.GNTTABOP_copy", grant::op::COPY as i64),
        ("const.GNTTABOP_query_size", grant::op::QUERY_SIZE as i64),
        ("const.GNTTABOP_set_version", grant::op::SET_VERSION as i64),
    ] {
        p.eq(key, ours, "proto::grant constant");
    }
    use GntStatus::*;
    for (key, st) in [
        ("const.GNTST_okay", Okay),
        ("const.GNTST_general_error", GeneralError),
        ("const.GNTST_bad_domain", BadDomain),
        ("const.GNTST_bad_gntref", BadGntref),
        ("const.GNTST_bad_handle", BadHandle),
        ("const.GNTST_bad_virt_addr", BadVirtAddr),
        ("const.GNTST_bad_dev_addr", BadDevAddr),
        ("const.GNTST_no_device_space", NoDeviceSpace),
        ("const.GNTST_permission_denied", PermissionDenied),
        ("const.GNTST_bad_page", BadPage),
        ("const.GNTST_bad_copy_arg", BadCopyArg),
        ("const.GNTST_address_too_big", AddressTooBig),
        ("const.GNTST_eagain", Eagain),
        ("const.GNTST_no_space", NoSpace),
    ] {
        p.eq(key, st as i16 as i64, "GntStatus discriminant");
        let xen = p.get(key) as i16;
        assert_eq!(GntStatus::from_i16(xen), st, "GntStatus::from_i16({xen})");
    }

    // Hypercall argument structures. xenblk has no definitions of them yet (boards build
    // them), so they are checked against the values of docs/blkif-protocol.md §5.2.
    let x64 = p.abi == Abi::X86_64;
    let pfn = if x64 { 8 } else { 4 };
    let ptr = if x64 { 16 } else { 8 };
    for (key, doc) in [
        ("sizeof.gnttab_map_grant_ref", 32),
        ("offsetof.gnttab_map_grant_ref.host_addr", 0),
        ("offsetof.gnttab_map_grant_ref.flags", 8),
        ("offsetof.gnttab_map_grant_ref.ref", 12),
        ("offsetof.gnttab_map_grant_ref.dom", 16),
        ("offsetof.gnttab_map_grant_ref.status", 18),
        ("offsetof.gnttab_map_grant_ref.handle", 20),
        ("offsetof.gnttab_map_grant_ref.dev_bus_addr", 24),
        ("sizeof.gnttab_unmap_grant_ref", 24),
        ("offsetof.gnttab_unmap_grant_ref.host_addr", 0),
        ("offsetof.gnttab_unmap_grant_ref.dev_bus_addr", 8),
        ("offsetof.gnttab_unmap_grant_ref.handle", 16),
        ("offsetof.gnttab_unmap_grant_ref.status", 20),
        // On x86_32 xen_pfn_t is 32 bits, which shrinks gnttab_copy from 40 to 24 bytes.
        ("sizeof.xen_pfn_t", pfn),
        ("sizeof.gnttab_copy", if x64 { 40 } else { 24 }),
        ("offsetof.gnttab_copy.source.u.ref", 0),
        ("offsetof.gnttab_copy.source.u.gmfn", 0),
        ("offsetof.gnttab_copy.source.domid", pfn),
        ("offsetof.gnttab_copy.source.offset", pfn + 2),
        ("offsetof.gnttab_copy.dest.u.ref", ptr),
        ("offsetof.gnttab_copy.dest.domid", ptr + pfn),
        ("offsetof.gnttab_copy.dest.offset", ptr + pfn + 2),
        ("offsetof.gnttab_copy.len", 2 * ptr),
        ("offsetof.gnttab_copy.flags", 2 * ptr + 2),
        ("offsetof.gnttab_copy.status", 2 * ptr + 4),
    ] {
        p.eq(key, doc, "docs/blkif-protocol.md 5.2");
    }
}

#[test]
fn layouts_and_constants_match_xen_headers() {
    let mut total = 0;
    for (abi, bits) in ABIS {
        let mut p = Probe::run(abi, bits);
        check_blkif(&mut p);
        check_ring(&mut p);
        check_grant(&mut p);
        let n = p.finish();
        println!("xen_headers layout: {abi:?} (gcc -m{bits}): {n} values equal to Xen 4.17's headers");
        total += n;
    }
    assert!(total > 300, "suspiciously few checks: {total}");
}

// ---------------------------------------------------------------------------------------
// 2. Live interop over one shared ring.

/// A shared ring region: a memfd mapped here and, by path, in the C peer.
struct Shm {
    memfd: Memfd,
    region: MappedRegion,
}

impl Shm {
    fn new(pages: usize) -> Shm {
        let memfd = Memfd::new(c"xenblk-interop-ring", pages * ring::PAGE_SIZE).expect("memfd");
        let region = MappedRegion::map_fd(memfd.as_fd(), 0, pages * ring::PAGE_SIZE, true).expect("map memfd");
        Shm { memfd, region }
    }
    fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.memfd.as_fd().as_raw_fd())
    }
    fn mem(&self) -> SharedMem {
        self.region.shared()
    }
}

/// The C peer process.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    recent: VecDeque<String>,
    commands: u64,
}

impl Peer {
    fn spawn(abi: Abi, bits: u32, shm: &Shm, pages: usize) -> Peer {
        let mut child = Command::new(c_program("xen_ring_peer", bits))
            .arg(shm.path())
            .arg(pages.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the C ring peer");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut peer = Peer { child, stdin, stdout, recent: VecDeque::new(), commands: 0 };
        let ready = peer.read_line();
        let want = format!(
            "ready {} {} {}",
            if abi == Abi::X86_64 { "x86_64" } else { "x86_32" },
            ring::ring_size(pages * ring::PAGE_SIZE, abi.entry_size()),
            abi.entry_size()
        );
        assert_eq!(ready, want, "C peer -m{bits} disagrees about ABI, ring size or entry size");
        peer
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read from the C peer");
        assert!(n > 0, "the C peer exited; last commands: {:?}", self.recent);
        line.trim_end().to_string()
    }

    fn cmd(&mut self, c: &str) -> String {
        self.commands += 1;
        if self.recent.len() == 8 {
            self.recent.pop_front();
        }
        self.recent.push_back(c.to_string());
        writeln!(self.stdin, "{c}").expect("write to the C peer");
        self.stdin.flush().expect("flush to the C peer");
        let r = self.read_line();
        assert!(!r.starts_with("err"), "C peer refused {c:?}: {r}");
        r
    }

    /// A command answered by `ok N`.
    fn num(&mut self, c: &str) -> u32 {
        let r = self.cmd(c);
        r.strip_prefix("ok ").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{c:?}: unexpected reply {r:?}"))
    }

    fn flag(&mut self, c: &str) -> bool {
        match self.num(c) {
            0 => false,
            1 => true,
            v => panic!("{c:?}: flag {v}"),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

type SharedPeer = Rc<RefCell<Peer>>;

/// What a backend saw in a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Taken {
    Ok(Request),
    /// Not a valid request: id and operation to answer, and the reason when the backend
    /// validated it (the C peer does not).
    Rejected {
        id: u64,
        op: u8,
        reason: Option<RejectReason>,
    },
}

/// The frontend's end, either Xen's macros or [`FrontRing`].
trait Front {
    fn name(&self) -> &'static str;
    /// Puts a request; `Some(free slots after)` or `None` when the ring is full.
    fn put(&mut self, r: &Request) -> Option<u32>;
    fn push(&mut self) -> bool;
    /// `Err(rsp_prod)` when the backend's index is bogus.
    fn take(&mut self) -> Result<Option<Response>, u32>;
    fn final_check(&mut self) -> bool;
    /// Ask for a notification only after `n` more responses.
    fn arm(&mut self, n: u32);
    fn free(&mut self) -> u32;
}

/// The backend's end.
trait Back {
    fn name(&self) -> &'static str;
    /// `Err(req_prod)` when the frontend's index is bogus.
    fn unconsumed(&mut self) -> Result<u32, u32>;
    fn take(&mut self) -> Result<Option<Taken>, u32>;
    fn put(&mut self, r: &Response);
    fn push(&mut self) -> bool;
    fn final_check(&mut self) -> bool;
}

fn fput_line(r: &Request) -> String {
    match &r.kind {
        ReqKind::Rw { op, segs } => {
            let mut s = format!("fput rw {} {} {} {} {}", op.code(), r.id, r.sector, r.handle, segs.len());
            for g in segs {
                s += &format!(" {}:{}:{}", g.gref, g.first_sect, g.last_sect);
            }
            s
        }
        ReqKind::Discard { secure, nr_sectors } => {
            format!("fput discard {} {} {} {} {}", r.id, r.sector, r.handle, u8::from(*secure), nr_sectors)
        }
        ReqKind::Indirect { op, nr_segments, pages } => {
            let mut s = format!("fput indirect {} {} {} {} {}", op.code(), r.id, r.sector, r.handle, nr_segments);
            for i in 0..blkif::MAX_INDIRECT_PAGES_PER_REQUEST {
                s += &format!(" {}", pages.get(i).copied().unwrap_or(0));
            }
            s
        }
    }
}

struct CFront(SharedPeer);

impl CFront {
    /// Puts an arbitrary `fput` command (possibly an invalid request).
    fn put_raw(&mut self, line: &str) -> Option<u32> {
        let r = self.0.borrow_mut().cmd(line);
        if r == "full" {
            return None;
        }
        Some(r.strip_prefix("ok ").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("fput: {r:?}")))
    }
}

impl Front for CFront {
    fn name(&self) -> &'static str {
        "C"
    }
    fn put(&mut self, r: &Request) -> Option<u32> {
        self.put_raw(&fput_line(r))
    }
    fn push(&mut self) -> bool {
        self.0.borrow_mut().flag("fpush")
    }
    fn take(&mut self) -> Result<Option<Response>, u32> {
        let r = self.0.borrow_mut().cmd("ftake");
        let w: Vec<&str> = r.split(' ').collect();
        match w.as_slice() {
            ["none"] => Ok(None),
            ["overflow", prod] => Err(prod.parse().unwrap()),
            ["rsp", id, op, status] => {
                Ok(Some(Response { id: id.parse().unwrap(), op: op.parse().unwrap(), status: status.parse().unwrap() }))
            }
            _ => panic!("ftake: {r:?}"),
        }
    }
    fn final_check(&mut self) -> bool {
        self.0.borrow_mut().flag("ffinal")
    }
    fn arm(&mut self, n: u32) {
        assert_eq!(self.0.borrow_mut().cmd(&format!("farm {n}")), "ok");
    }
    fn free(&mut self) -> u32 {
        self.0.borrow_mut().num("ffree")
    }
}

struct CBack(SharedPeer);

fn parse_req(r: &str) -> Taken {
    let w: Vec<&str> = r.split(' ').collect();
    let n = |i: usize| -> u64 { w[i].parse().unwrap_or_else(|_| panic!("btake field {i} of {r:?}")) };
    match w.get(1).copied() {
        Some("rw") => {
            let op = match n(2) as u8 {
                blkif::OP_READ => RwOp::Read,
                blkif::OP_WRITE => RwOp::Write,
                blkif::OP_WRITE_BARRIER => RwOp::WriteBarrier,
                _ => RwOp::Flush,
            };
            let count = n(6) as usize;
            assert_eq!(w.len(), 7 + count.min(blkif::MAX_SEGMENTS_PER_REQUEST), "btake: {r:?}");
            let segs = w[7..]
                .iter()
                .map(|s| {
                    let f: Vec<u32> = s.split(':').map(|x| x.parse().unwrap()).collect();
                    Segment { gref: f[0], first_sect: f[1] as u8, last_sect: f[2] as u8 }
                })
                .collect();
            Taken::Ok(Request { id: n(3), sector: n(4), handle: n(5) as u16, kind: ReqKind::Rw { op, segs } })
        }
        Some("discard") => {
            let flag = n(5);
            assert!(flag <= 1, "discard flag {flag} in {r:?}");
            Taken::Ok(Request {
                id: n(2),
                sector: n(3),
                handle: n(4) as u16,
                kind: ReqKind::Discard { secure: flag == 1, nr_sectors: n(6) },
            })
        }
        Some("indirect") => {
            let op = if n(2) as u8 == blkif::OP_WRITE { RwOp::Write } else { RwOp::Read };
            let nseg = n(6) as u16;
            let used = (nseg as usize).div_ceil(blkif::SEGMENTS_PER_INDIRECT_PAGE);
            let grefs: Vec<u32> = (0..blkif::MAX_INDIRECT_PAGES_PER_REQUEST).map(|i| n(7 + i) as u32).collect();
            assert!(grefs[used..].iter().all(|&g| g == 0), "unused indirect grefs must arrive as zero: {r:?}");
            Taken::Ok(Request {
                id: n(3),
                sector: n(4),
                handle: n(5) as u16,
                kind: ReqKind::Indirect { op, nr_segments: nseg, pages: grefs[..used].iter().copied().collect() },
            })
        }
        Some("other") => Taken::Rejected { op: n(2) as u8, id: n(3), reason: None },
        _ => panic!("btake: {r:?}"),
    }
}

impl Back for CBack {
    fn name(&self) -> &'static str {
        "C"
    }
    fn unconsumed(&mut self) -> Result<u32, u32> {
        let r = self.0.borrow_mut().cmd("bunconsumed");
        match r.split_once(' ') {
            Some(("ok", n)) => Ok(n.parse().unwrap()),
            Some(("overflow", p)) => Err(p.parse().unwrap()),
            _ => panic!("bunconsumed: {r:?}"),
        }
    }
    fn take(&mut self) -> Result<Option<Taken>, u32> {
        let r = self.0.borrow_mut().cmd("btake");
        if r == "none" {
            return Ok(None);
        }
        if let Some(p) = r.strip_prefix("overflow ") {
            return Err(p.parse().unwrap());
        }
        Ok(Some(parse_req(&r)))
    }
    fn put(&mut self, r: &Response) {
        assert_eq!(self.0.borrow_mut().cmd(&format!("bput {} {} {}", r.id, r.op, r.status)), "ok");
    }
    fn push(&mut self) -> bool {
        self.0.borrow_mut().flag("bpush")
    }
    fn final_check(&mut self) -> bool {
        self.0.borrow_mut().flag("bfinal")
    }
}

struct RustFront(FrontRing);

impl Front for RustFront {
    fn name(&self) -> &'static str {
        "Rust"
    }
    fn put(&mut self, r: &Request) -> Option<u32> {
        self.0.put_request(r).then(|| self.0.free_requests())
    }
    fn push(&mut self) -> bool {
        self.0.push_requests()
    }
    fn take(&mut self) -> Result<Option<Response>, u32> {
        self.0.take_response().map_err(|e| match e {
            RingError::ResponseProdOverflow { rsp_prod } => rsp_prod,
            e => panic!("take_response: {e:?}"),
        })
    }
    fn final_check(&mut self) -> bool {
        self.0.final_check_for_responses().expect("final_check_for_responses")
    }
    fn arm(&mut self, n: u32) {
        self.0.set_response_event(n)
    }
    fn free(&mut self) -> u32 {
        self.0.free_requests()
    }
}

struct RustBack {
    ring: BackRing,
    max_indirect: usize,
}

fn req_overflow(e: RingError) -> u32 {
    match e {
        RingError::RequestProdOverflow { req_prod } => req_prod,
        e => panic!("backend ring error {e:?}"),
    }
}

impl Back for RustBack {
    fn name(&self) -> &'static str {
        "Rust"
    }
    fn unconsumed(&mut self) -> Result<u32, u32> {
        self.ring.unconsumed_requests().map_err(req_overflow)
    }
    fn take(&mut self) -> Result<Option<Taken>, u32> {
        let t = self.ring.take_request(self.max_indirect).map_err(req_overflow)?;
        Ok(t.map(|r| match r {
            Ok(req) => Taken::Ok(req),
            Err(Rejected { id, op, reason }) => Taken::Rejected { id, op, reason: Some(reason) },
        }))
    }
    fn put(&mut self, r: &Response) {
        assert!(self.ring.put_response(r), "put_response refused");
    }
    fn push(&mut self) -> bool {
        self.ring.push_responses()
    }
    fn final_check(&mut self) -> bool {
        self.ring.final_check_for_requests().expect("final_check_for_requests")
    }
}

/// Deterministic pseudo-random numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

fn gen_request(rng: &mut Rng, serial: u64) -> Request {
    // Ids are unique (serial in the low bits) and use all 64 bits.
    let id = (rng.next() << 20) | (serial & 0xF_FFFF);
    let sector = rng.next();
    let handle = rng.next() as u16;
    let rw = |op: RwOp, min: u64, rng: &mut Rng| {
        let n = min + rng.below(blkif::MAX_SEGMENTS_PER_REQUEST as u64 + 1 - min);
        let segs = (0..n)
            .map(|_| {
                let first = rng.below(8) as u8;
                let last = first + rng.below(8 - first as u64) as u8;
                Segment { gref: rng.next() as u32, first_sect: first, last_sect: last }
            })
            .collect();
        ReqKind::Rw { op, segs }
    };
    let kind = match rng.below(10) {
        0..=2 => rw(RwOp::Read, 1, rng),
        3..=4 => rw(RwOp::Write, 1, rng),
        5 => rw(RwOp::WriteBarrier, 0, rng),
        6 => rw(RwOp::Flush, 0, rng),
        7 => ReqKind::Discard { secure: rng.chance(2), nr_sectors: rng.next() },
        _ => {
            let n = 1 + rng.below(blkif::MAX_INDIRECT_SEGMENTS as u64) as u16;
            let pages =
                (0..(n as usize).div_ceil(blkif::SEGMENTS_PER_INDIRECT_PAGE)).map(|_| rng.next() as u32 | 1).collect();
            let op = if rng.chance(2) { RwOp::Read } else { RwOp::Write };
            ReqKind::Indirect { op, nr_segments: n, pages }
        }
    };
    Request { id, handle, sector, kind }
}

/// Statistics of one or more runs.
#[derive(Default, Clone, Copy)]
struct Stats {
    runs: u64,
    requests: u64,
    responses: u64,
    wraps: u64,
    full: u64,
    notify: [u64; 2],
    no_notify: [u64; 2],
    final_work: u64,
    final_idle: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.runs += o.runs;
        self.requests += o.requests;
        self.responses += o.responses;
        self.wraps += o.wraps;
        self.full += o.full;
        for i in 0..2 {
            self.notify[i] += o.notify[i];
            self.no_notify[i] += o.no_notify[i];
        }
        self.final_work += o.final_work;
        self.final_idle += o.final_idle;
    }
}

/// One pairing on a ring of `size` slots whose indices start at `start`.
struct Harness<'a> {
    front: &'a mut dyn Front,
    back: &'a mut dyn Back,
    mem: SharedMem,
    abi: Abi,
    size: u32,
    start: u32,
    trace: Vec<String>,
    stats: Stats,
    // Model of the ring, for checking contents and counts.
    produced: u32,
    pushed: u32,
    consumed: u32,
    answered: u32,
    rsp_pushed: u32,
    rsp_taken: u32,
    in_ring: VecDeque<Request>,
    pending: Vec<Request>,
    expected_rsps: VecDeque<Response>,
    last_hdr: [u32; 4],
}

impl<'a> Harness<'a> {
    fn new(front: &'a mut dyn Front, back: &'a mut dyn Back, mem: SharedMem, abi: Abi, size: u32, start: u32) -> Self {
        let last_hdr = [start; 4];
        Harness {
            front,
            back,
            mem,
            abi,
            size,
            start,
            trace: Vec::new(),
            stats: Stats { runs: 1, ..Stats::default() },
            produced: 0,
            pushed: 0,
            consumed: 0,
            answered: 0,
            rsp_pushed: 0,
            rsp_taken: 0,
            in_ring: VecDeque::new(),
            pending: Vec::new(),
            expected_rsps: VecDeque::new(),
            last_hdr,
        }
    }

    fn who(&self) -> String {
        format!("{:?} {}-front/{}-back start {:#x}", self.abi, self.front.name(), self.back.name(), self.start)
    }

    fn hdr(&self) -> [u32; 4] {
        [REQ_PROD, REQ_EVENT, RSP_PROD, RSP_EVENT].map(|o| self.mem.load_u32(o, Ordering::SeqCst))
    }

    /// Appends the header (relative to the start index) to the trace and counts wraps.
    fn snapshot(&mut self) {
        let h = self.hdr();
        for i in [0, 2] {
            if h[i] < self.last_hdr[i] {
                self.stats.wraps += 1;
            }
        }
        self.last_hdr = h;
        let r = h.map(|v| v.wrapping_sub(self.start) as i32);
        self.trace.push(format!("hdr {} {} {} {}", r[0], r[1], r[2], r[3]));
    }

    fn put(&mut self, rng: &mut Rng) -> bool {
        let req = gen_request(rng, self.produced as u64);
        let outstanding = self.produced - self.rsp_taken;
        match self.front.put(&req) {
            None => {
                assert_eq!(outstanding, self.size, "{}: put refused with {outstanding} outstanding", self.who());
                self.stats.full += 1;
                self.trace.push("F.put full".into());
                false
            }
            Some(free) => {
                assert!(outstanding < self.size, "{}: put accepted on a full ring", self.who());
                assert_eq!(free, self.size - outstanding - 1, "{}: free slots after put", self.who());
                // The slot holds exactly the encoder's image, padding included.
                let idx = self.start.wrapping_add(self.produced);
                let off = ring::HEADER_SIZE + (idx & (self.size - 1)) as usize * self.abi.entry_size();
                let mut slot = vec![0u8; self.abi.entry_size()];
                self.mem.read_bytes(off, &mut slot);
                assert_eq!(slot, encode_request(self.abi, &req).as_bytes(), "{}: slot bytes of {req:?}", self.who());
                self.produced += 1;
                self.stats.requests += 1;
                self.in_ring.push_back(req);
                self.trace.push(format!("F.put free {free}"));
                true
            }
        }
    }

    fn push_requests(&mut self) {
        let [old, event, ..] = self.hdr();
        let new = self.start.wrapping_add(self.produced);
        let notify = self.front.push();
        let model = new.wrapping_sub(event) < new.wrapping_sub(old);
        assert_eq!(notify, model, "{}: request notify (old {old:#x} new {new:#x} event {event:#x})", self.who());
        assert_eq!(self.hdr()[0], new, "{}: req_prod after push", self.who());
        self.stats.notify[0] += u64::from(notify);
        self.stats.no_notify[0] += u64::from(!notify);
        self.pushed = self.produced;
        self.trace.push(format!("F.push {}", u8::from(notify)));
    }

    fn unconsumed(&mut self) -> u32 {
        let n = self.back.unconsumed().unwrap_or_else(|p| panic!("{}: bogus req_prod {p:#x}", self.who()));
        let model = (self.pushed - self.consumed).min(self.size - (self.consumed - self.answered));
        assert_eq!(n, model, "{}: unconsumed requests", self.who());
        self.trace.push(format!("B.unconsumed {n}"));
        n
    }

    fn take_request(&mut self) {
        let t = self.back.take().unwrap_or_else(|p| panic!("{}: bogus req_prod {p:#x}", self.who()));
        let Some(t) = t else { panic!("{}: no request although unconsumed > 0", self.who()) };
        let want = self.in_ring.pop_front().expect("model has a request");
        assert_eq!(t, Taken::Ok(want.clone()), "{}: request arrived changed", self.who());
        self.consumed += 1;
        self.pending.push(want);
        self.trace.push("B.take".into());
    }

    fn answer(&mut self, rng: &mut Rng) {
        let i = rng.below(self.pending.len() as u64) as usize;
        let req = self.pending.swap_remove(i);
        let status = [blkif::RSP_OKAY, blkif::RSP_OKAY, blkif::RSP_ERROR, blkif::RSP_EOPNOTSUPP][rng.below(4) as usize];
        let rsp = Response { id: req.id, op: req.op_code(), status };
        self.back.put(&rsp);
        self.answered += 1;
        self.expected_rsps.push_back(rsp);
        self.trace.push("B.put".into());
    }

    fn push_responses(&mut self) {
        let [.., old, event] = self.hdr();
        let new = self.start.wrapping_add(self.answered);
        let notify = self.back.push();
        let model = new.wrapping_sub(event) < new.wrapping_sub(old);
        assert_eq!(notify, model, "{}: response notify (old {old:#x} new {new:#x} event {event:#x})", self.who());
        assert_eq!(self.hdr()[2], new, "{}: rsp_prod after push", self.who());
        self.stats.notify[1] += u64::from(notify);
        self.stats.no_notify[1] += u64::from(!notify);
        self.rsp_pushed = self.answered;
        self.trace.push(format!("B.push {}", u8::from(notify)));
    }

    fn back_final(&mut self) {
        let work = self.back.final_check();
        let model = (self.pushed - self.consumed).min(self.size - (self.consumed - self.answered)) > 0;
        assert_eq!(work, model, "{}: backend final check", self.who());
        self.count_final(work);
        self.trace.push(format!("B.final {}", u8::from(work)));
    }

    fn take_response(&mut self) -> bool {
        let r = self.front.take().unwrap_or_else(|p| panic!("{}: bogus rsp_prod {p:#x}", self.who()));
        match r {
            None => {
                assert_eq!(self.rsp_taken, self.rsp_pushed, "{}: response missing", self.who());
                self.trace.push("F.take none".into());
                false
            }
            Some(rsp) => {
                let want = self.expected_rsps.pop_front();
                assert_eq!(Some(rsp), want, "{}: response arrived changed", self.who());
                self.rsp_taken += 1;
                self.stats.responses += 1;
                self.trace.push("F.take".into());
                true
            }
        }
    }

    fn front_final(&mut self) {
        let work = self.front.final_check();
        assert_eq!(work, self.rsp_pushed > self.rsp_taken, "{}: frontend final check", self.who());
        self.count_final(work);
        self.trace.push(format!("F.final {}", u8::from(work)));
    }

    fn count_final(&mut self, work: bool) {
        self.stats.final_work += u64::from(work);
        self.stats.final_idle += u64::from(!work);
    }

    fn free(&mut self) {
        let f = self.front.free();
        assert_eq!(f, self.size - (self.produced - self.rsp_taken), "{}: free requests", self.who());
        self.trace.push(format!("F.free {f}"));
    }

    /// The seeded scenario: bursts of requests (sometimes past a full ring), partial
    /// consumption, out-of-order answers, batched and plain final checks, then a drain.
    fn scenario(&mut self, seed: u64, rounds: usize) {
        let mut rng = Rng(seed);
        let size = self.size as u64;
        for round in 0..rounds {
            // Round 0 fills the ring and tries two more: RING_FULL on both ends.
            let burst = if round == 0 || rng.chance(6) { size + 2 } else { rng.below(size / 2 + 3) };
            for _ in 0..burst {
                if !self.put(&mut rng) {
                    break;
                }
            }
            self.free();
            if burst > 0 || rng.chance(3) {
                self.push_requests();
            }
            self.snapshot();

            let n = self.unconsumed();
            let m = if round == 0 || rng.chance(2) { n } else { rng.below(n as u64 + 1) as u32 };
            for _ in 0..m {
                self.take_request();
            }
            if round == 0 {
                // Every slot is taken and none answered: nothing may be consumed now.
                assert_eq!(self.unconsumed(), 0, "{}: consumed requests without response slots", self.who());
            } else if m == n || rng.chance(3) {
                self.back_final();
            }
            let a = if round == 0 || self.pending.is_empty() {
                0
            } else if rng.chance(3) {
                self.pending.len()
            } else {
                rng.below(self.pending.len() as u64 + 1) as usize
            };
            for _ in 0..a {
                self.answer(&mut rng);
            }
            if a > 0 || rng.chance(4) {
                self.push_responses();
            }
            self.snapshot();

            let t = rng.below((self.rsp_pushed - self.rsp_taken) as u64 + 2);
            for _ in 0..t {
                if !self.take_response() {
                    break;
                }
            }
            if rng.chance(5) {
                let k = 1 + rng.below(4) as u32;
                self.front.arm(k);
                self.trace.push(format!("F.arm {k}"));
            } else if rng.chance(2) {
                self.front_final();
            }
            self.snapshot();
        }
        // Drain everything; both ends then go idle with their events armed.
        self.push_requests();
        while self.unconsumed() > 0 {
            self.take_request();
        }
        self.back_final();
        while !self.pending.is_empty() {
            self.answer(&mut rng);
        }
        self.push_responses();
        while self.take_response() {}
        self.front_final();
        self.back_final();
        self.snapshot();
        assert_eq!(self.rsp_taken, self.produced, "{}: not every request was answered", self.who());
    }
}

/// The four (or, at the wrap, two) pairings of one ring.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    C,
    Rust,
}

/// Sets up a fresh ring with the given implementations and runs `f` on it.
fn with_pairing<R>(
    abi: Abi,
    bits: u32,
    pages: usize,
    start: u32,
    front_impl: Impl,
    back_impl: Impl,
    f: impl FnOnce(&mut dyn Front, &mut dyn Back, SharedMem, u32) -> R,
) -> (R, u64) {
    let shm = Shm::new(pages);
    let mem = shm.mem();
    let peer: Option<SharedPeer> = (front_impl == Impl::C || back_impl == Impl::C)
        .then(|| Rc::new(RefCell::new(Peer::spawn(abi, bits, &shm, pages))));
    let size = ring::ring_size(pages * ring::PAGE_SIZE, abi.entry_size());
    if start != 0 {
        // A live ring near the wrap: the indices as a frontend that ran for a while would
        // have left them, with both ends waiting for the next message.
        for (off, v) in [
            (REQ_PROD, start),
            (REQ_EVENT, start.wrapping_add(1)),
            (RSP_PROD, start),
            (RSP_EVENT, start.wrapping_add(1)),
        ] {
            mem.store_u32(off, v, Ordering::SeqCst);
        }
    }
    let mut front: Box<dyn Front> = match front_impl {
        Impl::C => {
            let p = peer.clone().unwrap();
            let cmd = if start == 0 { "finit".to_string() } else { format!("fattach {start}") };
            assert_eq!(p.borrow_mut().num(&cmd), size, "C RING_SIZE");
            Box::new(CFront(p))
        }
        Impl::Rust => {
            let ring = if start == 0 {
                FrontRing::init(mem, abi).expect("FrontRing::init")
            } else {
                FrontRing::attach_at(mem, abi, start).expect("FrontRing::attach_at")
            };
            assert_eq!((ring.req_prod_pvt(), ring.rsp_cons(), ring.size()), (start, start, size), "FrontRing");
            Box::new(RustFront(ring))
        }
    };
    let mut back: Box<dyn Back> = match back_impl {
        Impl::C => {
            let p = peer.clone().unwrap();
            let got =
                if start == 0 { p.borrow_mut().num("binit") } else { p.borrow_mut().num(&format!("battach {start}")) };
            assert_eq!(got, size, "C RING_SIZE");
            Box::new(CBack(p))
        }
        Impl::Rust => {
            let ring = BackRing::attach(mem, abi).expect("BackRing::attach");
            assert_eq!((ring.req_cons(), ring.rsp_prod_pvt(), ring.size()), (start, start, size), "BackRing::attach");
            Box::new(RustBack { ring, max_indirect: blkif::MAX_INDIRECT_SEGMENTS })
        }
    };
    let r = f(front.as_mut(), back.as_mut(), mem, size);
    drop((front, back));
    let commands = peer.map(|p| p.borrow().commands).unwrap_or(0);
    (r, commands)
}

fn first_difference(a: &[String], b: &[String]) -> String {
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let lo = i.saturating_sub(6);
    format!(
        "traces differ at step {i} (lengths {} and {}):\n  reference: {:?}\n  this run:  {:?}",
        a.len(),
        b.len(),
        &a[lo..(i + 3).min(a.len())],
        &b[lo..(i + 3).min(b.len())]
    )
}

fn interop(abi: Abi, bits: u32) {
    let mut stats = Stats::default();
    let mut commands = 0;
    let mut cases = 0;
    let pairings_at_zero = [(Impl::C, Impl::C), (Impl::C, Impl::Rust), (Impl::Rust, Impl::C), (Impl::Rust, Impl::Rust)];
    let pairings_at_wrap = [(Impl::C, Impl::C), (Impl::C, Impl::Rust), (Impl::Rust, Impl::C), (Impl::Rust, Impl::Rust)];
    // (pages, seed, rounds): a single page with several seeds, then multi-page rings whose
    // entries straddle page boundaries.
    let plan = [(1, 1, 60), (1, 2, 60), (2, 3, 25), (4, 4, 12), (16, 5, 4)];
    for (pages, seed, rounds) in plan {
        let mut reference: Option<Vec<String>> = None;
        let runs = pairings_at_zero.iter().map(|&p| (0, p)).chain(pairings_at_wrap.iter().map(|&p| (WRAP_START, p)));
        for (start, (fi, bi)) in runs {
            let ((trace, st), n) = with_pairing(abi, bits, pages, start, fi, bi, |front, back, mem, size| {
                let mut h = Harness::new(front, back, mem, abi, size, start);
                h.scenario(seed, rounds);
                (h.trace, h.stats)
            });
            if start == WRAP_START {
                assert!(st.wraps >= 2, "{abi:?} {fi:?}/{bi:?}: the run did not cross the wrap");
            }
            match &reference {
                None => reference = Some(trace),
                Some(r) => assert!(
                    *r == trace,
                    "{abi:?} {pages}-page ring, seed {seed}: {fi:?}-front/{bi:?}-back from {start:#x} decides differently \
                     from C/C from 0: {}",
                    first_difference(r, &trace)
                ),
            }
            stats.add(&st);
            commands += n;
            cases += 1;
        }
    }
    // Every kind of decision was exercised both ways.
    assert!(stats.notify[0] > 0 && stats.no_notify[0] > 0, "request pushes never/always notified");
    assert!(stats.notify[1] > 0 && stats.no_notify[1] > 0, "response pushes never/always notified");
    assert!(stats.final_work > 0 && stats.final_idle > 0, "final checks one-sided");
    assert!(stats.full > 0 && stats.wraps > 0);
    println!(
        "xen_headers interop {abi:?} (gcc -m{bits}): {cases} runs over 1/2/4/16-page rings, pairings C/C, C/Rust, Rust/C, \
         Rust/Rust, each from index 0 and from {WRAP_START:#x}; identical traces; {} requests and {} responses \
         exchanged, {} index wraps crossed, {} ring-full refusals, request pushes {} notify / {} silent, response pushes \
         {} notify / {} silent, final checks {} busy / {} idle; {commands} commands to the C peer",
        stats.requests,
        stats.responses,
        stats.wraps,
        stats.full,
        stats.notify[0],
        stats.no_notify[0],
        stats.notify[1],
        stats.no_notify[1],
        stats.final_work,
        stats.final_idle
    );
}

#[test]
fn interop_x86_64() {
    interop(Abi::X86_64, 64);
}

#[test]
fn interop_x86_32() {
    interop(Abi::X86_32, 32);
}

/// A literal notify sequence, identical for every pairing and across the wrap.
fn literal_notify_sequence(front: &mut dyn Front, back: &mut dyn Back) -> Vec<bool> {
    let req = |id| Request {
        id,
        handle: 3,
        sector: id * 8,
        kind: ReqKind::Rw { op: RwOp::Read, segs: segs(&[(id as u32, 0, 7)]) },
    };
    let mut seen = Vec::new();
    // req_event starts one past the start: the first push notifies, the next does not.
    front.put(&req(1)).unwrap();
    seen.push(front.push());
    front.put(&req(2)).unwrap();
    seen.push(front.push());
    // The backend drains and re-arms: the following push notifies again.
    for _ in 0..2 {
        assert!(matches!(back.take(), Ok(Some(Taken::Ok(_)))));
    }
    seen.push(back.final_check());
    front.put(&req(3)).unwrap();
    front.put(&req(4)).unwrap();
    seen.push(front.push());
    // A push with nothing new never notifies.
    seen.push(front.push());
    // Final check with work pending returns at once, without re-arming.
    seen.push(back.final_check());
    for _ in 0..2 {
        assert!(matches!(back.take(), Ok(Some(Taken::Ok(_)))));
    }
    // Responses: rsp_event starts one past the start.
    for id in 1..=2 {
        back.put(&Response { id, op: blkif::OP_READ, status: 0 });
        seen.push(back.push());
    }
    for id in 1..=2 {
        assert_eq!(front.take(), Ok(Some(Response { id, op: blkif::OP_READ, status: 0 })));
    }
    seen.push(front.final_check());
    // Batching: ask to be woken only after two more responses.
    front.arm(2);
    back.put(&Response { id: 3, op: blkif::OP_READ, status: 0 });
    seen.push(back.push());
    back.put(&Response { id: 4, op: blkif::OP_READ, status: 0 });
    seen.push(back.push());
    assert_eq!(front.take().map(|r| r.map(|r| r.id)), Ok(Some(3)));
    assert_eq!(front.take().map(|r| r.map(|r| r.id)), Ok(Some(4)));
    assert_eq!(front.take(), Ok(None));
    seen.push(front.final_check());
    seen.push(back.final_check());
    seen
}

/// Requests no backend may accept, put by Xen's macros and judged by `BackRing`.
fn rejects(abi: Abi, bits: u32) -> usize {
    let shm = Shm::new(1);
    let mem = shm.mem();
    let peer = Rc::new(RefCell::new(Peer::spawn(abi, bits, &shm, 1)));
    for (off, v) in
        [(REQ_PROD, WRAP_START), (REQ_EVENT, WRAP_START + 1), (RSP_PROD, WRAP_START), (RSP_EVENT, WRAP_START + 1)]
    {
        mem.store_u32(off, v, Ordering::SeqCst);
    }
    peer.borrow_mut().num(&format!("fattach {WRAP_START}"));
    let mut front = CFront(peer.clone());
    let mut back = BackRing::attach(mem, abi).expect("attach");
    let id = |n: u64| 0xF00D_0000_0000_0000 | n;
    use RejectReason::*;
    let eleven = " 1:0:7".repeat(11);
    let cases: Vec<(String, usize, Result<(), RejectReason>)> = vec![
        (format!("fput rw 77 {} 0 0 0", id(1)), 4096, Err(UnknownOp)),
        (format!("fput rw {} {} 0 0 1 5:0:7", blkif::OP_RESERVED_1, id(2)), 4096, Err(UnknownOp)),
        (format!("fput rw 0 {} 8 1 0", id(3)), 4096, Err(BadSegmentCount)),
        (format!("fput rw 1 {} 8 1 12{eleven}", id(4)), 4096, Err(BadSegmentCount)),
        (format!("fput rw 0 {} 8 1 1 5:3:2", id(5)), 4096, Err(BadSegment)),
        (format!("fput rw 1 {} 8 1 2 5:0:7 6:0:8", id(6)), 4096, Err(BadSegment)),
        (format!("fput rw 3 {} 0 1 0", id(7)), 4096, Ok(())),
        (format!("fput rw 2 {} 0 1 0", id(8)), 4096, Ok(())),
        (format!("fput indirect 3 {} 0 1 8 9 0 0 0 0 0 0 0", id(9)), 4096, Err(BadIndirectOp)),
        (format!("fput indirect 0 {} 0 1 0 9 0 0 0 0 0 0 0", id(10)), 4096, Err(BadSegmentCount)),
        (format!("fput indirect 1 {} 0 1 4097 1 2 3 4 5 6 7 8", id(11)), 4096, Err(BadSegmentCount)),
        (format!("fput indirect 1 {} 0 1 300 1 0 0 0 0 0 0 0", id(12)), 256, Err(BadSegmentCount)),
        (format!("fput indirect 0 {} 0 1 8 9 0 0 0 0 0 0 0", id(13)), 0, Err(UnknownOp)),
        (format!("fput indirect 0 {} 0 1 8 9 0 0 0 0 0 0 0", id(14)), 8, Ok(())),
    ];
    for (line, max_indirect, want) in &cases {
        front.put_raw(line).expect("ring has room");
        front.push();
        let got = back.take_request(*max_indirect).expect("ring ok").expect("a request");
        let (rid, op, status) = match (&got, want) {
            (Err(r), Err(reason)) => {
                assert_eq!(r.reason, *reason, "{abi:?}: {line} (max_indirect {max_indirect})");
                (r.id, r.op, r.status())
            }
            (Ok(req), Ok(())) => (req.id, req.op_code(), blkif::RSP_OKAY),
            _ => panic!("{abi:?}: {line} (max_indirect {max_indirect}): got {got:?}, want {want:?}"),
        };
        let wire_op: u8 = line.split(' ').nth(2).and_then(|o| o.parse().ok()).unwrap_or(0);
        let wire_op = if line.starts_with("fput indirect") { blkif::OP_INDIRECT } else { wire_op };
        assert_eq!(op, wire_op, "{abi:?}: echoed operation of {line}");
        assert_eq!(
            rid & 0xFFFF_0000_0000_0000,
            0xF00D_0000_0000_0000,
            "{abi:?}: id of {line} read at the wrong offset"
        );
        assert!(back.put_response(&Response { id: rid, op, status }));
        back.push_responses();
        assert_eq!(front.take(), Ok(Some(Response { id: rid, op, status })), "{abi:?}: answer to {line}");
    }
    cases.len()
}

/// Bogus producer indices: Xen's overflow macros and `FrontRing`/`BackRing` agree.
fn hostile_indices(abi: Abi, bits: u32) -> usize {
    let mut checked = 0;
    let shm = Shm::new(1);
    let mem = shm.mem();
    let peer = Rc::new(RefCell::new(Peer::spawn(abi, bits, &shm, 1)));
    let size = ring::ring_size(ring::PAGE_SIZE, abi.entry_size());
    let s = WRAP_START;
    for (off, v) in [(REQ_PROD, s), (REQ_EVENT, s + 1), (RSP_PROD, s), (RSP_EVENT, s + 1)] {
        mem.store_u32(off, v, Ordering::SeqCst);
    }
    peer.borrow_mut().num(&format!("battach {s}"));
    let mut cback = CBack(peer.clone());
    let mut rback = BackRing::attach(mem, abi).expect("attach");
    for req_prod in [
        s,
        s.wrapping_add(1),
        s.wrapping_add(size),
        s.wrapping_add(size + 1),
        s.wrapping_sub(1),
        s.wrapping_add(0x8000_0000),
    ] {
        mem.store_u32(REQ_PROD, req_prod, Ordering::SeqCst);
        let c = cback.unconsumed();
        let r = rback.unconsumed_requests().map_err(req_overflow);
        assert_eq!(r, c, "{abi:?}: req_prod {req_prod:#x}: Rust and RING_REQUEST_PROD_OVERFLOW disagree");
        let model = req_prod.wrapping_sub(s);
        assert_eq!(r.is_err(), model > size, "{abi:?}: req_prod {req_prod:#x}");
        // BackRing::attach refuses exactly the rings whose first access would overflow.
        assert_eq!(BackRing::attach(mem, abi).is_err(), c.is_err(), "{abi:?}: attach with req_prod {req_prod:#x}");
        checked += 2;
    }
    // Both backends consume five (zeroed, hence invalid) requests and answer none. A
    // frontend that then moves req_prod backwards, between rsp_prod_pvt and req_cons, passes
    // the overflow check; the number of requests either backend may still consume is bounded
    // by the free response slots (RING_REQUEST_CONS_OVERFLOW), never the wrapped difference.
    mem.store_u32(REQ_PROD, s.wrapping_add(5), Ordering::SeqCst);
    for _ in 0..5 {
        assert!(matches!(cback.take(), Ok(Some(Taken::Ok(_)))));
        let t = rback.take_request(0).expect("ring ok").expect("a request");
        assert_eq!(t.map_err(|r| r.reason), Err(RejectReason::BadSegmentCount), "{abi:?}: a zeroed slot");
    }
    for (req_prod, want) in [
        (s.wrapping_add(5), Ok(0)),
        (s.wrapping_add(2), Ok(size - 5)),
        (s, Ok(size - 5)),
        (s.wrapping_add(size), Ok(size - 5)),
        (s.wrapping_add(size + 1), Err(s.wrapping_add(size + 1))),
    ] {
        mem.store_u32(REQ_PROD, req_prod, Ordering::SeqCst);
        let c = cback.unconsumed();
        let r = rback.unconsumed_requests().map_err(req_overflow);
        assert_eq!((r, c), (want, want), "{abi:?}: req_prod {req_prod:#x} with 5 requests unanswered");
        checked += 2;
    }
    drop(cback);
    drop(peer);

    // Frontend side: the C peer observes a Rust frontend's ring. RING_RESPONSE_PROD_OVERFLOW
    // only bounds rsp_prod by the ring size; FrontRing also bounds it by the requests
    // outstanding, so it must reject everything Xen's check rejects, and more.
    let shm = Shm::new(1);
    let mem = shm.mem();
    let mut rfront = FrontRing::init(mem, abi).expect("init");
    let peer = Rc::new(RefCell::new(Peer::spawn(abi, bits, &shm, 1)));
    peer.borrow_mut().num("fattach 0");
    let req = Request { id: 1, handle: 0, sector: 0, kind: ReqKind::Rw { op: RwOp::Read, segs: segs(&[(1, 0, 7)]) } };
    for _ in 0..3 {
        assert!(rfront.put_request(&req));
    }
    rfront.push_requests();
    for rsp_prod in [0u32, 3, 4, size, size + 1, u32::MAX] {
        mem.store_u32(RSP_PROD, rsp_prod, Ordering::SeqCst);
        let r = rfront.unconsumed_responses();
        // Ask Xen's check without consuming: only bogus values reach `ftake`'s overflow path.
        let xen_bogus = rsp_prod > size;
        if xen_bogus {
            assert_eq!(
                peer.borrow_mut().cmd("ftake"),
                format!("overflow {rsp_prod}"),
                "{abi:?}: RING_RESPONSE_PROD_OVERFLOW({rsp_prod})"
            );
            assert!(r.is_err(), "{abi:?}: FrontRing accepts rsp_prod {rsp_prod} that Xen's check rejects");
        }
        assert_eq!(r.is_err(), rsp_prod > 3, "{abi:?}: FrontRing with 3 outstanding and rsp_prod {rsp_prod}");
        checked += 1;
    }
    checked
}

#[test]
fn interop_fixed_cases() {
    for (abi, bits) in ABIS {
        let mut sequences = Vec::new();
        for (start, fi, bi) in [
            (0, Impl::C, Impl::C),
            (0, Impl::C, Impl::Rust),
            (0, Impl::Rust, Impl::C),
            (0, Impl::Rust, Impl::Rust),
            (WRAP_START + 14, Impl::C, Impl::C),
            (WRAP_START + 14, Impl::C, Impl::Rust),
            (WRAP_START + 14, Impl::Rust, Impl::C),
            (WRAP_START + 14, Impl::Rust, Impl::Rust),
        ] {
            let (seq, _) = with_pairing(abi, bits, 1, start, fi, bi, |f, b, _, _| literal_notify_sequence(f, b));
            assert_eq!(
                seq,
                [true, false, false, true, false, true, true, false, false, false, true, false, false],
                "{abi:?} {fi:?}-front/{bi:?}-back from {start:#x}: notify/final-check sequence"
            );
            sequences.push(seq);
        }
        let r = rejects(abi, bits);
        let h = hostile_indices(abi, bits);
        println!(
            "xen_headers fixed cases {abi:?}: literal notify sequence in 8 pairings ({} decisions each), \
             {r} rejected/edge requests from Xen's macros judged by BackRing, {h} hostile-index checks",
            sequences[0].len()
        );
    }
}

/// The scenario generator itself: unique ids, and only requests a backend must accept.
#[test]
fn generated_ids_are_unique() {
    let mut rng = Rng(99);
    let mut seen = HashMap::new();
    for n in 0..10_000u64 {
        let r = gen_request(&mut rng, n);
        assert!(seen.insert(r.id, n).is_none(), "id repeated");
        let img = encode_request(Abi::X86_32, &r);
        assert_eq!(blkif::decode_request(Abi::X86_32, img.as_bytes(), blkif::MAX_INDIRECT_SEGMENTS), Ok(r));
    }
}
