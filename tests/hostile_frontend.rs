//! Hostile frontends against our [`Backend`] on the sim board.
//!
//! One dom0 runs a backend per guest. Guest 0 is the attacker: it speaks the protocol on
//! the wire (a [`RawFrontend`] bent out of shape: raw slot bytes, raw ring indices, a raw
//! grant table, writes into its own ring page while the backend works). The other guests are
//! victims doing verified I/O through well-behaved raw frontends before and after each
//! attack. Every case asserts
//!
//! * the exact outcome for the attacker (`BLKIF_RSP_ERROR`, `BLKIF_RSP_EOPNOTSUPP`, or its
//!   ring shut down),
//! * that the victims' data is intact and their I/O still works, and
//! * that dom0's memory stays bounded: persistent grants mapped <= the per-ring limit (and
//!   the shared budget), and dom0's live grant mappings (counted by the sim) are exactly the
//!   cached grants plus one ring per connection: nothing transient survives a request.
//!
//! Section 6 of docs/blkif-protocol.md lists the advisories; the backend-side rule of each has
//! a case here named after it (the frontend-side ones are in tests/hostile_backend.rs).
#![cfg(feature = "backend")]

use std::cell::RefCell;
use std::rc::Rc;

use xenblk::modes::backend::{
    BackPhase, Backend, BackendConfig, DataPath, FailCause, HaltReason, MAX_BACKEND_SEGMENTS,
};
use xenblk::modes::storage::{Storage, StorageError, StorageInfo};
use xenblk::platform::{EventChannels, Grants, Page, Pages, Tx, XenStore};
use xenblk::pool::back::GrantBudget;
use xenblk::proto::blkif::{
    self, Abi, OP_DISCARD, OP_FLUSH_DISKCACHE, OP_INDIRECT, OP_READ, OP_WRITE, Protocol, RSP_EOPNOTSUPP, RSP_ERROR,
    RSP_OKAY, RejectReason, ReqKind, Request, Response, RwOp, SegList, Segment,
};
use xenblk::proto::grant::{DomId, GntStatus, GrantRef, RevokeError};
use xenblk::proto::shmem::SharedMem;
use xenblk_sim::peers::RawFrontend;
use xenblk_sim::{Dom, FaultPlan, Hypervisor, RamDisk, Trigger, VbdSpec};

const DISK_SECTORS: u64 = 1024;
const VICTIMS: usize = 2;

type Hook = Rc<RefCell<Option<Box<dyn FnMut(bool, u64)>>>>;

/// A RAM disk whose reads and writes first call a hook: the attacker acts while the
/// backend is in the middle of a request.
struct Hooked {
    disk: RamDisk,
    hook: Hook,
}

impl Hooked {
    fn call(&mut self, write: bool, sector: u64) {
        let mut h = self.hook.borrow_mut();
        if let Some(f) = h.as_mut() {
            f(write, sector);
        }
    }
}

impl Storage for Hooked {
    fn info(&self) -> StorageInfo {
        Storage::info(&self.disk)
    }
    fn read(&mut self, sector: u64, dst: SharedMem) -> Result<(), StorageError> {
        self.call(false, sector);
        Storage::read(&mut self.disk, sector, dst)
    }
    fn write(&mut self, sector: u64, src: SharedMem) -> Result<(), StorageError> {
        self.call(true, sector);
        Storage::write(&mut self.disk, sector, src)
    }
    fn flush(&mut self) -> Result<(), StorageError> {
        Storage::flush(&mut self.disk)
    }
    fn discard(&mut self, sector: u64, n: u64, secure: bool) -> Result<(), StorageError> {
        Storage::discard(&mut self.disk, sector, n, secure)
    }
}

fn abi() -> Abi {
    Protocol::native().abi()
}

fn seg(gref: GrantRef, first: u8, last: u8) -> Segment {
    Segment { gref: gref.0, first_sect: first, last_sect: last }
}

fn rw_req(id: u64, op: RwOp, sector: u64, segs: &[Segment]) -> Request {
    let mut l = SegList::new();
    for s in segs {
        l.push(*s).unwrap();
    }
    Request { id, handle: 0, sector, kind: ReqKind::Rw { op, segs: l } }
}

fn slot(req: &Request) -> Vec<u8> {
    blkif::encode_request(abi(), req).as_bytes().to_vec()
}

fn indirect_req(id: u64, op: RwOp, sector: u64, n: u16, pages: &[GrantRef]) -> Request {
    Request {
        id,
        handle: 0,
        sector,
        kind: ReqKind::Indirect { op, nr_segments: n, pages: pages.iter().map(|g| g.0).collect() },
    }
}

fn pattern(tag: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (tag.wrapping_mul(131).wrapping_add(i as u64 * 7) % 251) as u8 ^ 0x5a).collect()
}

fn indirect_cfg() -> usize {
    const { assert!(MAX_BACKEND_SEGMENTS > blkif::MAX_SEGMENTS_PER_REQUEST, "this build's backend offers no indirect") };
    32.min(MAX_BACKEND_SEGMENTS)
}

struct Rig {
    hv: Hypervisor,
    dom0: Dom,
    guests: Vec<Dom>,
    fronts: Vec<RawFrontend>,
    backs: Vec<Backend<Hooked>>,
    disks: Vec<RamDisk>,
    specs: Vec<VbdSpec>,
    hooks: Vec<Hook>,
    cfg: BackendConfig,
    round: u64,
    /// Each victim's disk content between rounds.
    reference: Vec<Vec<u8>>,
}

impl Rig {
    /// Dom0 with one backend per guest; guest 0 (the attacker) and the victims connected.
    fn new(cfg: BackendConfig, attacker_persistent: bool) -> Rig {
        Self::build(cfg, attacker_persistent, true, |d| d)
    }

    fn build(
        cfg: BackendConfig,
        attacker_persistent: bool,
        connect_attacker: bool,
        disk0: impl FnOnce(RamDisk) -> RamDisk,
    ) -> Rig {
        let hv = Hypervisor::new();
        let dom0 = hv.take_dom0().unwrap();
        let mut r = Rig {
            dom0,
            hv,
            guests: Vec::new(),
            fronts: Vec::new(),
            backs: Vec::new(),
            disks: Vec::new(),
            specs: Vec::new(),
            hooks: Vec::new(),
            cfg,
            round: 0,
            reference: (0..=VICTIMS).map(|g| pattern(1000 + g as u64, DISK_SECTORS as usize * 512)).collect(),
        };
        let mut disk0 = Some(disk0);
        for g in 0..=VICTIMS {
            let mut guest = r.hv.create_domain(512);
            let spec = VbdSpec::new(guest.id(), DomId::DOM0, 51712);
            r.hv.add_vbd(&spec).unwrap();
            let mut disk = RamDisk::new(DISK_SECTORS);
            if g == 0 {
                disk = (disk0.take().unwrap())(disk);
            } else {
                // Victims' disks start with known content.
                disk.write_at(0, &r.reference[g]).unwrap();
            }
            let hook: Hook = Rc::new(RefCell::new(None));
            let st = Hooked { disk: disk.clone(), hook: hook.clone() };
            let back = Backend::probe(&mut r.dom0, &spec.backend_path(), cfg, st, g as u32 + 1).unwrap();
            let front = RawFrontend::new(&mut guest, &spec.frontend_path(), g != 0 || attacker_persistent);
            r.guests.push(guest);
            r.fronts.push(front);
            r.backs.push(back);
            r.disks.push(disk);
            r.specs.push(spec);
            r.hooks.push(hook);
        }
        for _ in 0..10 {
            for g in 0..=VICTIMS {
                if g != 0 || connect_attacker {
                    r.fronts[g].step(&mut r.guests[g]);
                }
            }
            r.xenstore();
        }
        for g in 0..=VICTIMS {
            if g != 0 || connect_attacker {
                assert!(r.fronts[g].step(&mut r.guests[g]), "guest {g} did not connect");
                assert_eq!(r.backs[g].phase(), BackPhase::Connected);
            }
        }
        r.check_bounded();
        r.victims_ok();
        r
    }

    /// Delivers xenstore changes to every backend.
    fn xenstore(&mut self) {
        let _ = self.dom0.take_watch_events();
        for b in &mut self.backs {
            b.on_xenstore(&mut self.dom0);
        }
    }

    /// Lets every backend serve what is on its ring. Returns what backend 0 answered.
    fn pump(&mut self) -> usize {
        let mut n0 = 0;
        for (i, b) in self.backs.iter_mut().enumerate() {
            let n = b.process(&mut self.dom0);
            if i == 0 {
                n0 = n;
            }
        }
        n0
    }

    fn attacker(&mut self) -> (&mut RawFrontend, &mut Dom) {
        (&mut self.fronts[0], &mut self.guests[0])
    }

    /// A page of the attacker filled with `fill`, granted read-write to dom0.
    fn page(&mut self, fill: u8) -> (Page, GrantRef) {
        let g = &mut self.guests[0];
        let p = g.alloc_page().unwrap();
        p.mem.copy_from_private(0, &[fill; 4096]);
        let r = g.grant(p.frame, DomId::DOM0, false).unwrap();
        (p, r)
    }

    fn read_page(p: &Page) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        p.mem.copy_to_private(0, &mut b);
        b
    }

    /// Sends raw slots from the attacker, lets the backends run, returns the attacker's responses.
    fn raw(&mut self, slots: &[Vec<u8>]) -> Vec<Response> {
        let (f, g) = self.attacker();
        for s in slots {
            f.put_raw(s).expect("attacker ring full");
        }
        f.kick(g);
        self.pump();
        self.fronts[0].take_raw().expect("backend overflowed the attacker's ring")
    }

    /// Serves what the attacker already queued; the number of its responses.
    fn one_pending(&mut self) -> usize {
        self.pump();
        self.fronts[0].take_raw().expect("backend overflowed the attacker's ring").len()
    }

    /// One raw request, one response: asserts its id and op are echoed, returns its status.
    fn one(&mut self, s: Vec<u8>) -> i16 {
        let id = u64::from_le_bytes(s[abi().layout().req_id..][..8].try_into().unwrap());
        let op = s[0];
        let r = self.raw(&[s]);
        assert_eq!(r.len(), 1, "expected exactly one response, got {r:?}");
        assert_eq!(r[0].id, id, "response id");
        let want_op = if op == OP_INDIRECT { self.indirect_op_of(&r[0]) } else { op };
        assert_eq!(r[0].op, want_op, "response op");
        self.check_bounded();
        r[0].status
    }

    fn indirect_op_of(&self, r: &Response) -> u8 {
        // An indirect request is answered with its inner op (read or write), or echoed as
        // indirect when refused before decoding.
        if r.op == OP_READ || r.op == OP_WRITE || r.op == OP_INDIRECT { r.op } else { u8::MAX }
    }

    /// Dom0's memory is bounded: cached persistent grants within the limits and nothing
    /// mapped beyond them and the rings.
    fn check_bounded(&self) {
        let mut expect = 0;
        let mut cached = 0;
        for (i, b) in self.backs.iter().enumerate() {
            let (_, n) = b.cache();
            assert!(n <= self.cfg.max_grants, "backend {i} caches {n} grants, limit {}", self.cfg.max_grants);
            cached += n;
            expect += n + usize::from(b.port().is_some());
        }
        if let Some(budget) = self.cfg.budget {
            assert!(cached <= budget.total(), "{cached} grants cached over a budget of {}", budget.total());
            assert_eq!(budget.left() + cached, budget.total(), "budget accounting drifted");
        }
        assert_eq!(self.dom0.live_mappings(), expect, "dom0 holds mappings beyond its caches and rings");
    }

    /// Every victim writes and reads back a fresh pattern; the rest of its disk is intact.
    fn victims_ok(&mut self) {
        self.round += 1;
        for v in 1..=VICTIMS {
            let sector = (self.round * 24) % (DISK_SECTORS - 24);
            let data = pattern(self.round * 10 + v as u64, 3 * 4096);
            let id = self.fronts[v].submit(&mut self.guests[v], sector, data.len(), Some(&data));
            self.fronts[v].kick(&mut self.guests[v]);
            self.pump();
            let c = self.fronts[v].poll(&mut self.guests[v]);
            assert_eq!(c.len(), 1, "victim {v} write not answered");
            assert_eq!((c[0].id, c[0].status), (id, RSP_OKAY), "victim {v} write failed");
            let id = self.fronts[v].submit(&mut self.guests[v], sector, data.len(), None);
            self.fronts[v].kick(&mut self.guests[v]);
            self.pump();
            let c = self.fronts[v].poll(&mut self.guests[v]);
            assert_eq!(c.len(), 1, "victim {v} read not answered");
            assert_eq!((c[0].id, c[0].status), (id, RSP_OKAY), "victim {v} read failed");
            assert!(c[0].data == data, "victim {v} read back wrong data");
            // Restore the reference content, then compare the whole disk.
            let reference = &self.reference[v];
            let mut disk = vec![0u8; reference.len()];
            self.disks[v].read_at(0, &mut disk).unwrap();
            let lo = sector as usize * 512;
            assert!(disk[lo..lo + data.len()] == data[..], "victim {v} data not on its disk");
            disk[lo..lo + data.len()].copy_from_slice(&reference[lo..lo + data.len()]);
            assert!(disk == *reference, "victim {v}'s disk was changed by someone else");
            self.disks[v].write_at(lo as u64, &reference[lo..lo + data.len()]).unwrap();
        }
        self.check_bounded();
    }

    /// The attacker closes; its backend lets go of everything.
    fn attacker_closes(&mut self) {
        for _ in 0..10 {
            let (f, g) = self.attacker();
            let done = f.close(g);
            self.xenstore();
            if done {
                break;
            }
        }
        assert!(self.backs[0].port().is_none(), "the attacker's ring is still mapped after its close");
        assert_eq!(self.backs[0].cache().1, 0);
        self.check_bounded();
    }

    fn ring_mem(&self) -> SharedMem {
        self.fronts[0].ring_page().unwrap().0
    }
}

fn map_cfg() -> BackendConfig {
    BackendConfig {
        persistent: true,
        data_path: DataPath::Map,
        max_grants: 64,
        max_indirect_segments: 0,
        max_ring_order: 0,
        max_queues: 1,
        grant_idle_ms: 0,
        budget: None,
    }
}

fn indirect_map_cfg() -> BackendConfig {
    BackendConfig { max_indirect_segments: indirect_cfg(), ..map_cfg() }
}

// ------------------------------------------------------------------ XSA-155 double fetch

#[test]
fn xsa155_request_rewritten_while_served_is_used_as_first_read() {
    let mut r = Rig::new(map_cfg(), false);
    let (a, ga) = r.page(0x11);
    let (b, gb) = r.page(0x22);
    let (c, gc) = r.page(0x33);
    let disk_before: Vec<u8> = {
        let mut d = vec![0u8; 512 * 16];
        r.disks[0].write_at(64 * 512, &pattern(7, 8192)).unwrap();
        r.disks[0].read_at(0, &mut d).unwrap();
        d
    };
    // While the backend reads the first segment, the attacker turns the slot into an
    // 11-segment write of page C to sector 0 with a new id.
    let mem = r.ring_mem();
    let off = r.fronts[0].slot_offset(r.fronts[0].ring.as_ref().unwrap().req_prod_pvt());
    let evil = slot(&rw_req(999, RwOp::Write, 0, &[seg(gc, 0, 7); 11]));
    let calls = Rc::new(RefCell::new(Vec::new()));
    let calls2 = calls.clone();
    *r.hooks[0].borrow_mut() = Some(Box::new(move |w, s| {
        calls2.borrow_mut().push((w, s));
        mem.write_bytes(off, &evil);
    }));
    let st = r.one(slot(&rw_req(5, RwOp::Read, 64, &[seg(ga, 0, 7), seg(gb, 0, 7)])));
    *r.hooks[0].borrow_mut() = None;
    assert_eq!(st, RSP_OKAY);
    assert_eq!(*calls.borrow(), vec![(false, 64), (false, 72)], "the backend re-read the rewritten slot");
    let p = pattern(7, 8192);
    assert!(Rig::read_page(&a) == p[..4096] && Rig::read_page(&b) == p[4096..], "data not where first asked");
    assert!(Rig::read_page(&c).iter().all(|&x| x == 0x33), "the rewritten segment was used");
    let mut d = vec![0u8; 512 * 16];
    r.disks[0].read_at(0, &mut d).unwrap();
    assert!(d == disk_before, "the rewritten write reached the disk");
    r.victims_ok();
}

#[test]
fn xsa155_indirect_descriptors_rewritten_while_served_are_used_as_first_read() {
    let mut r = Rig::new(indirect_map_cfg(), false);
    r.disks[0].write_at(128 * 512, &pattern(9, 8192)).unwrap();
    let (a, ga) = r.page(0x11);
    let (b, gb) = r.page(0x22);
    let (c, gc) = r.page(0x33);
    let (ind, gind) = r.page(0);
    ind.mem.write_bytes(0, &seg(ga, 0, 7).encode());
    ind.mem.write_bytes(8, &seg(gb, 0, 7).encode());
    let mem = r.ring_mem();
    let off = r.fronts[0].slot_offset(r.fronts[0].ring.as_ref().unwrap().req_prod_pvt());
    let imem = ind.mem;
    let hits = Rc::new(RefCell::new(0));
    let hits2 = hits.clone();
    *r.hooks[0].borrow_mut() = Some(Box::new(move |_, _| {
        *hits2.borrow_mut() += 1;
        // Second descriptor now points at C; the slot claims 300 segments.
        imem.write_bytes(8, &seg(gc, 0, 7).encode());
        mem.write_bytes(off + 2, &300u16.to_le_bytes());
    }));
    let st = r.one(slot(&indirect_req(6, RwOp::Read, 128, 2, &[gind])));
    *r.hooks[0].borrow_mut() = None;
    assert_eq!(st, RSP_OKAY);
    assert_eq!(*hits.borrow(), 2, "the backend served a different number of segments");
    let p = pattern(9, 8192);
    assert!(Rig::read_page(&a) == p[..4096] && Rig::read_page(&b) == p[4096..]);
    assert!(Rig::read_page(&c).iter().all(|&x| x == 0x33), "a rewritten indirect descriptor was used");
    r.victims_ok();
}

// ------------------------------------------------------------------ XSA-216 padding

#[test]
fn xsa216_responses_carry_no_stale_padding() {
    let mut r = Rig::new(map_cfg(), false);
    let (_a, ga) = r.page(0);
    // An id with no zero byte: the request's id lies under the response's padding.
    let id = 0xa5a5_a5a5_a5a5_a5a5u64;
    let mem = r.ring_mem();
    let idx = r.fronts[0].ring.as_ref().unwrap().req_prod_pvt();
    let off = r.fronts[0].slot_offset(idx);
    // Fill the whole slot with garbage first, then put the request over it.
    mem.write_bytes(off, &[0xee; 112][..abi().entry_size()]);
    assert_eq!(r.one(slot(&rw_req(id, RwOp::Read, 0, &[seg(ga, 0, 0)]))), RSP_OKAY);
    let l = abi().layout();
    let mut img = vec![0u8; l.response];
    mem.read_bytes(off, &mut img);
    let rsp = blkif::decode_response(abi(), &img).unwrap();
    assert_eq!(rsp, Response { id, op: OP_READ, status: RSP_OKAY });
    assert_eq!(img[9], 0, "padding byte 9 leaked");
    assert!(img[12..].iter().all(|&b| b == 0), "padding bytes 12.. leaked: {img:?}");
    r.victims_ok();
}

// ------------------------------------------------------------------ XSA-229 no merging

#[test]
fn xsa229_adjacent_grants_are_never_merged() {
    let mut r = Rig::new(map_cfg(), false);
    // Two pages whose frames are adjacent, used in reverse order, and sub-page segments.
    let (p1, g1) = r.page(0);
    let (p2, g2) = r.page(0);
    assert_eq!(p1.frame.abs_diff(p2.frame), 1, "the sim did not hand out adjacent frames");
    let (lo, glo, hi, ghi) = if p1.frame < p2.frame { (p1, g1, p2, g2) } else { (p2, g2, p1, g1) };
    hi.mem.copy_from_private(0, &pattern(1, 4096));
    lo.mem.copy_from_private(0, &pattern(2, 4096));
    // Write: hi[3..=7] then lo[0..=2]: 8 sectors at sector 200.
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, 200, &[seg(ghi, 3, 7), seg(glo, 0, 2)]))), RSP_OKAY);
    let mut d = vec![0u8; 4096];
    r.disks[0].read_at(200 * 512, &mut d).unwrap();
    assert!(d[..2560] == pattern(1, 4096)[1536..] && d[2560..] == pattern(2, 4096)[..1536]);
    // Read it back the other way round into fresh adjacent pages.
    hi.mem.zero(0, 4096);
    lo.mem.zero(0, 4096);
    assert_eq!(r.one(slot(&rw_req(2, RwOp::Read, 200, &[seg(glo, 5, 7), seg(ghi, 0, 4)]))), RSP_OKAY);
    let (l, h) = (Rig::read_page(&lo), Rig::read_page(&hi));
    assert!(l[2560..] == d[..1536] && h[..2560] == d[1536..], "segments merged across frames");
    assert!(l[..2560].iter().all(|&x| x == 0) && h[2560..].iter().all(|&x| x == 0), "bytes outside the segments");
    r.victims_ok();
}

// ------------------------------------------------------------------ XSA-332 event storm

#[test]
fn xsa332_event_storm_costs_one_empty_check_each_and_no_amplification() {
    let mut r = Rig::new(map_cfg(), false);
    let port = r.fronts[0].port.unwrap();
    let _ = r.guests[0].poll_pending();
    let before = (r.backs[0].stats(), r.dom0.stats());
    for _ in 0..10_000 {
        r.guests[0].notify(port).unwrap();
        assert_eq!(r.backs[0].process(&mut r.dom0), 0);
    }
    let (bs, ds) = (r.backs[0].stats(), r.dom0.stats());
    assert_eq!(bs.spurious - before.0.spurious, 10_000, "storm not counted as spurious");
    assert_eq!((bs.requests, bs.maps, bs.notifies), (before.0.requests, before.0.maps, before.0.notifies));
    assert_eq!(ds.maps, before.1.maps, "a spurious event mapped something");
    assert!(!r.guests[0].poll_pending().ports.contains(port), "the backend answered the storm with events");
    // The event is re-armed after each check: the next real request is still seen.
    let (_p, g) = r.page(0);
    assert_eq!(r.one(slot(&rw_req(3, RwOp::Read, 0, &[seg(g, 0, 7)]))), RSP_OKAY);
    r.victims_ok();
}

// ------------------------------------------------------------------ XSA-349 / 350 xenstore

#[test]
fn xsa349_xenstore_flood_queues_at_most_one_event_per_watch() {
    let mut r = Rig::new(map_cfg(), false);
    let _ = r.dom0.take_watch_events();
    let dir = r.fronts[0].dir.clone();
    for i in 0..3000u32 {
        // Keys the backend never reads, and its `state` rewritten to the same value.
        r.guests[0].write(Tx::NONE, &format!("{dir}/junk-{}", i % 50), i.to_string().as_bytes()).unwrap();
        r.guests[0].write(Tx::NONE, &format!("{dir}/state"), b"4").unwrap();
    }
    let ev = r.dom0.take_watch_events();
    assert!(ev.len() <= 1, "flood queued {} watch events in dom0 (one watch, coalesced): {ev:?}", ev.len());
    assert!(ev.iter().all(|(p, _)| p.ends_with("/state")), "the backend watches more than `state`: {ev:?}");
    r.xenstore();
    assert_eq!(r.backs[0].phase(), BackPhase::Connected);
    let (_p, g) = r.page(0);
    assert_eq!(r.one(slot(&rw_req(3, RwOp::Read, 0, &[seg(g, 0, 7)]))), RSP_OKAY);
    r.victims_ok();
}

#[test]
fn xsa350_state_flapping_tears_down_once_and_reconnects_cleanly() {
    let mut r = Rig::new(map_cfg(), true);
    // Give the backend persistent grants to tear down.
    let (_p, g) = r.page(0);
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, 0, &[seg(g, 0, 7)]))), RSP_OKAY);
    assert_eq!(r.backs[0].cache().1, 1);
    let dir = r.fronts[0].dir.clone();
    let seq: &[&[u8]] = &[b"5", b"6", b"5", b"1", b"3", b"4", b"6", b"6", b"2", b"7", b"0", b"99", b"x", b"4", b"5"];
    for round in 0..100 {
        for s in seq {
            r.guests[0].write(Tx::NONE, &format!("{dir}/state"), s).unwrap();
            r.xenstore();
            r.xenstore();
            r.check_bounded();
            assert!(r.backs[0].cache().1 <= 1);
        }
        if round == 0 {
            assert_eq!(r.backs[0].cache().1, 0, "teardown left persistent grants mapped");
        }
    }
    // Settle Closed: nothing of the attacker stays mapped.
    r.guests[0].write(Tx::NONE, &format!("{dir}/state"), b"6").unwrap();
    r.xenstore();
    assert!(r.backs[0].port().is_none());
    r.check_bounded();
    r.victims_ok();
    // A new frontend instance on the same device connects and does verified I/O.
    let mut f = RawFrontend::new(&mut r.guests[0], &dir, true);
    for _ in 0..10 {
        f.step(&mut r.guests[0]);
        r.xenstore();
    }
    assert!(f.step(&mut r.guests[0]), "no reconnect after flapping");
    let data = pattern(77, 8192);
    let id = f.submit(&mut r.guests[0], 40, data.len(), Some(&data));
    f.kick(&mut r.guests[0]);
    r.pump();
    let c = f.poll(&mut r.guests[0]);
    assert_eq!((c.len(), c[0].id, c[0].status), (1, id, RSP_OKAY));
    let mut d = vec![0u8; 8192];
    r.disks[0].read_at(40 * 512, &mut d).unwrap();
    assert!(d == data);
    r.check_bounded();
    r.victims_ok();
}

// ------------------------------------------------------------------ XSA-361/362/365 map failures

#[test]
fn xsa361_a_failed_map_fails_only_its_request() {
    let mut r = Rig::new(map_cfg(), false);
    let (_a, ga) = r.page(0x44);
    // The next map of dom0 fails (the attacker's request is the next one served).
    r.dom0.set_fault_plan(FaultPlan { map: Trigger::Nth(1), map_status: GntStatus::BadGntref, ..FaultPlan::none() });
    let before = r.backs[0].stats();
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, 8, &[seg(ga, 0, 7)]))), RSP_ERROR);
    assert_eq!(r.backs[0].stats().map_failures, before.map_failures + 1);
    let f = r.backs[0].last_failure().expect("a failure recorded");
    assert_eq!((f.op, f.sector, f.count, f.cause), (1, 8, 1, FailCause::GrantMap), "{f:?}");
    r.dom0.set_fault_plan(FaultPlan::none());
    let mut d = vec![0u8; 4096];
    r.disks[0].read_at(8 * 512, &mut d).unwrap();
    assert!(d.iter().all(|&x| x == 0), "a failed request wrote data");
    // The same grant works on the next request.
    assert_eq!(r.one(slot(&rw_req(2, RwOp::Write, 8, &[seg(ga, 0, 7)]))), RSP_OKAY);
    r.victims_ok();
}

#[test]
fn a_storage_error_on_a_cached_grant_fails_its_request_and_releases_the_grant() {
    // Persistent, one segment, grant already cached: the backend's fast path.
    let cfg = BackendConfig { grant_idle_ms: 1000, ..map_cfg() };
    let mut r = Rig::new(cfg, true);
    let (p, g) = r.page(0x44);
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, 8, &[seg(g, 0, 7)]))), RSP_OKAY);
    assert_eq!(r.backs[0].cache().1, 1);
    let hits = r.backs[0].cache().0.hits;
    for (id, op) in [(2, RwOp::Read), (3, RwOp::Write)] {
        r.disks[0].set_fault(Trigger::Always);
        p.mem.copy_from_private(0, &[0x55; 4096]);
        assert_eq!(r.one(slot(&rw_req(id, op, 16, &[seg(g, 0, 7)]))), RSP_ERROR, "{op:?}");
        r.disks[0].set_fault(Trigger::Never);
        let f = r.backs[0].last_failure().expect("a failure recorded");
        assert_eq!(
            (f.op, f.sector, f.count, f.status, f.cause),
            (op.code(), 16, 1, RSP_ERROR, FailCause::Storage(StorageError::Io)),
            "{f:?}"
        );
        assert!(Rig::read_page(&p).iter().all(|&x| x == 0x55), "a failed read wrote the page");
    }
    assert_eq!(r.backs[0].cache().0.hits, hits + 2, "the failed requests did not use the cached grant");
    let mut d = vec![0u8; 4096];
    r.disks[0].read_at(16 * 512, &mut d).unwrap();
    assert!(d.iter().all(|&x| x == 0), "a failed write reached the disk");
    // The grant was released by the failed requests: idle expiry (inactive entries only)
    // unmaps it, and the frontend can end its access.
    for b in r.backs.iter_mut() {
        b.tick(&mut r.dom0, 5000);
    }
    assert_eq!(r.backs[0].cache().1, 0, "a failed request left its grant in use");
    r.check_bounded();
    r.guests[0].end_access(g).expect("the grant is still mapped");
    r.victims_ok();
}

#[test]
fn xsa365_failure_in_the_middle_of_a_batch_unmaps_every_other_element() {
    let mut r = Rig::new(map_cfg(), false);
    let pages: Vec<(Page, GrantRef)> = (0..11).map(|i| r.page(i as u8)).collect();
    let segs: Vec<Segment> = pages.iter().map(|(_, g)| seg(*g, 0, 7)).collect();
    // Element 6 of the batch fails: the 10 others were mapped and must all be unmapped.
    r.dom0.set_fault_plan(FaultPlan { map: Trigger::Nth(6), ..FaultPlan::none() });
    let maps_before = r.dom0.stats();
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, 0, &segs))), RSP_ERROR);
    let d = r.dom0.stats() - maps_before;
    assert_eq!((d.maps, d.map_failures, d.unmaps), (10, 1, 10), "handles leaked or lost: {d:?}");
    r.dom0.set_fault_plan(FaultPlan::none());
    for (_, g) in &pages {
        r.guests[0].end_access(*g).expect("a grant stayed mapped after the failed request");
    }
    r.victims_ok();
}

#[test]
fn xsa361_persistent_batch_failure_caches_only_what_mapped() {
    let mut r = Rig::new(map_cfg(), true);
    let pages: Vec<(Page, GrantRef)> = (0..11).map(|i| r.page(i as u8)).collect();
    let segs: Vec<Segment> = pages.iter().map(|(_, g)| seg(*g, 0, 7)).collect();
    r.dom0.set_fault_plan(FaultPlan { map: Trigger::EveryNth(3), ..FaultPlan::none() });
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, 0, &segs))), RSP_ERROR);
    r.dom0.set_fault_plan(FaultPlan::none());
    // 8 of 11 mapped (and are cached persistently); the rest failed cleanly.
    assert_eq!(r.backs[0].cache().1, 8);
    assert_eq!(r.one(slot(&rw_req(2, RwOp::Write, 0, &segs))), RSP_OKAY);
    assert_eq!(r.backs[0].cache().1, 11);
    r.victims_ok();
    r.attacker_closes();
    for (_, g) in &pages {
        r.guests[0].end_access(*g).expect("a persistent grant survived the close");
    }
}

// ------------------------------------------------------------------ ring indices

#[test]
fn req_prod_past_the_ring_shuts_down_only_that_ring() {
    let mut r = Rig::new(map_cfg(), false);
    let mem = r.ring_mem();
    let rsp_prod = mem.load_u32(8, core::sync::atomic::Ordering::Acquire);
    mem.store_u32(0, rsp_prod.wrapping_add(33), core::sync::atomic::Ordering::Release);
    let port = r.fronts[0].port.unwrap();
    r.guests[0].notify(port).unwrap();
    assert_eq!(r.pump(), 0);
    assert_eq!(r.backs[0].phase(), BackPhase::Halted(HaltReason::RequestOverflow));
    assert_eq!(mem.load_u32(8, core::sync::atomic::Ordering::Acquire), rsp_prod, "a halted ring got responses");
    // Nothing more is served on that ring, even well-formed requests.
    mem.store_u32(0, rsp_prod, core::sync::atomic::Ordering::Release);
    r.guests[0].notify(port).unwrap();
    for _ in 0..3 {
        assert_eq!(r.pump(), 0);
    }
    r.check_bounded();
    r.victims_ok();
    r.attacker_closes();
    r.victims_ok();
}

#[test]
fn req_prod_behind_rsp_prod_is_an_overflow_too() {
    let mut r = Rig::new(map_cfg(), false);
    let mem = r.ring_mem();
    let rsp_prod = mem.load_u32(8, core::sync::atomic::Ordering::Acquire);
    mem.store_u32(0, rsp_prod.wrapping_sub(1), core::sync::atomic::Ordering::Release);
    r.guests[0].notify(r.fronts[0].port.unwrap()).unwrap();
    assert_eq!(r.pump(), 0);
    assert_eq!(r.backs[0].phase(), BackPhase::Halted(HaltReason::RequestOverflow));
    r.check_bounded();
    r.victims_ok();
    r.attacker_closes();
}

#[test]
fn full_ring_of_requests_is_served_within_the_ring() {
    // Exactly a ring's worth is legal: every request is answered, none twice.
    let mut r = Rig::new(map_cfg(), false);
    let (_p, g) = r.page(0);
    let slots: Vec<Vec<u8>> = (0..32).map(|i| slot(&rw_req(i, RwOp::Read, i, &[seg(g, 0, 0)]))).collect();
    let rsps = r.raw(&slots);
    let mut ids: Vec<u64> = rsps.iter().map(|x| x.id).collect();
    ids.sort();
    assert_eq!(ids, (0..32).collect::<Vec<_>>());
    assert!(rsps.iter().all(|x| x.status == RSP_OKAY && x.op == OP_READ));
    r.check_bounded();
    r.victims_ok();
}

// ------------------------------------------------------------------ malformed requests

#[test]
fn nr_segments_zero_is_an_error_for_reads_and_writes_only() {
    let mut r = Rig::new(map_cfg(), false);
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Read, 0, &[]))), RSP_ERROR);
    assert_eq!(r.one(slot(&rw_req(2, RwOp::Write, 0, &[]))), RSP_ERROR);
    // A flush carries no data: fine.
    assert_eq!(r.one(slot(&rw_req(3, RwOp::Flush, 0, &[]))), RSP_OKAY);
    r.victims_ok();
}

fn with_nr_segments(n: u8, op: RwOp, g: GrantRef) -> Vec<u8> {
    let mut s = slot(&rw_req(4, op, 0, &[seg(g, 0, 7); 11]));
    s[1] = n;
    s
}

#[test]
fn nr_segments_12_direct_is_an_error() {
    let mut r = Rig::new(map_cfg(), false);
    let (_p, g) = r.page(0);
    let before = r.dom0.stats();
    assert_eq!(r.one(with_nr_segments(12, RwOp::Read, g)), RSP_ERROR);
    assert_eq!(r.one(with_nr_segments(12, RwOp::Write, g)), RSP_ERROR);
    assert_eq!((r.dom0.stats() - before).maps, 0, "a rejected request was mapped");
    r.victims_ok();
}

#[test]
fn nr_segments_255_direct_is_an_error() {
    let mut r = Rig::new(map_cfg(), false);
    let (_p, g) = r.page(0);
    let mut s = with_nr_segments(255, RwOp::Write, g);
    // The bytes past the 11 segments are garbage too.
    let end = s.len();
    s[end - 4..].copy_from_slice(&[0xff; 4]);
    assert_eq!(r.one(s), RSP_ERROR);
    assert_eq!(r.one(with_nr_segments(255, RwOp::Read, g)), RSP_ERROR);
    r.victims_ok();
}

#[test]
fn first_sect_after_last_sect_is_an_error() {
    let mut r = Rig::new(map_cfg(), false);
    let (_p, g) = r.page(0);
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Read, 0, &[seg(g, 5, 4)]))), RSP_ERROR);
    assert_eq!(r.one(slot(&rw_req(2, RwOp::Write, 0, &[seg(g, 0, 7), seg(g, 7, 0)]))), RSP_ERROR);
    assert_eq!(r.one(slot(&rw_req(3, RwOp::Read, 0, &[seg(g, 3, 3)]))), RSP_OKAY);
    let f = r.backs[0].last_failure().expect("a failure recorded");
    assert_eq!((f.op, f.cause), (1, FailCause::Rejected(RejectReason::BadSegment)), "{f:?}");
    r.victims_ok();
}

#[test]
fn last_sect_past_the_page_is_an_error() {
    let mut r = Rig::new(map_cfg(), false);
    let (_p, g) = r.page(0);
    for (first, last) in [(0, 8), (7, 8), (8, 8), (0, 255), (200, 255)] {
        assert_eq!(r.one(slot(&rw_req(1, RwOp::Read, 0, &[seg(g, first, last)]))), RSP_ERROR, "{first}..={last}");
    }
    r.victims_ok();
}

#[test]
fn sectors_past_the_end_of_the_disk_are_an_error() {
    let mut r = Rig::new(map_cfg(), false);
    let (_p, g) = r.page(0x77);
    let end = DISK_SECTORS;
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, end - 7, &[seg(g, 0, 7)]))), RSP_ERROR);
    assert_eq!(r.one(slot(&rw_req(2, RwOp::Read, end, &[seg(g, 0, 0)]))), RSP_ERROR);
    assert_eq!(r.one(slot(&rw_req(3, RwOp::Write, u64::MAX - 3, &[seg(g, 0, 7)]))), RSP_ERROR);
    assert_eq!(r.one(slot(&rw_req(4, RwOp::Read, u64::MAX, &[seg(g, 0, 0)]))), RSP_ERROR);
    // The backend keeps what failed and why, for its log.
    let f = r.backs[0].last_failure().expect("a failure recorded");
    assert_eq!((f.op, f.sector, f.count, f.status, f.cause), (0, u64::MAX, 1, RSP_ERROR, FailCause::OutOfRange));
    // Discard too (the disk offers it for this case).
    r.disks[0].set_discard(true);
    let disc =
        |id, sector, n| Request { id, handle: 0, sector, kind: ReqKind::Discard { secure: false, nr_sectors: n } };
    assert_eq!(r.one(slot(&disc(5, end - 1, 2))), RSP_ERROR);
    assert_eq!(r.one(slot(&disc(6, 1, u64::MAX))), RSP_ERROR);
    let mut d = vec![0u8; 8 * 512];
    r.disks[0].read_at((end - 8) * 512, &mut d).unwrap();
    assert!(d.iter().all(|&x| x == 0), "an out-of-range write touched the disk");
    // The last sector itself is fine.
    assert_eq!(r.one(slot(&rw_req(7, RwOp::Write, end - 1, &[seg(g, 0, 0)]))), RSP_OKAY);
    r.victims_ok();
}

#[test]
fn writes_to_a_read_only_disk_are_an_error() {
    let mut r = Rig::build(map_cfg(), false, true, |d| {
        d.write_at(0, &[0x99; 8192]).unwrap();
        d.set_discard(true);
        d.read_only()
    });
    assert_eq!(r.hv.xs_read_string(&format!("{}/info", r.specs[0].backend_path())).unwrap(), "4");
    let (p, g) = r.page(0x55);
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, 0, &[seg(g, 0, 7)]))), RSP_ERROR);
    assert_eq!(r.one(slot(&rw_req(2, RwOp::WriteBarrier, 0, &[seg(g, 0, 7)]))), RSP_ERROR);
    let disc = Request { id: 3, handle: 0, sector: 0, kind: ReqKind::Discard { secure: false, nr_sectors: 8 } };
    assert_eq!(r.one(slot(&disc)), RSP_ERROR);
    let f = r.backs[0].last_failure().expect("a failure recorded");
    assert_eq!((f.op, f.count, f.cause), (5, 8, FailCause::ReadOnly), "{f:?}");
    let mut d = vec![0u8; 8192];
    r.disks[0].read_at(0, &mut d).unwrap();
    assert!(d.iter().all(|&x| x == 0x99), "a read-only disk was written");
    // Reads work.
    assert_eq!(r.one(slot(&rw_req(4, RwOp::Read, 0, &[seg(g, 0, 7)]))), RSP_OKAY);
    assert!(Rig::read_page(&p).iter().all(|&x| x == 0x99));
    r.victims_ok();
}

#[test]
fn unknown_operations_are_not_supported_and_echoed() {
    let mut r = Rig::new(map_cfg(), false);
    let (_p, g) = r.page(0);
    for op in [4u8, 7, 8, 100, 200, 255] {
        let mut s = slot(&rw_req(op as u64, RwOp::Read, 0, &[seg(g, 0, 7)]));
        s[0] = op;
        let rs = r.raw(&[s]);
        assert_eq!(rs, vec![Response { id: op as u64, op, status: RSP_EOPNOTSUPP }]);
    }
    // Indirect when the backend did not offer it.
    let s = slot(&indirect_req(9, RwOp::Read, 0, 12, &[g]));
    assert_eq!(r.raw(&[s]), vec![Response { id: 9, op: OP_INDIRECT, status: RSP_EOPNOTSUPP }]);
    // Discard on a disk without it.
    r.disks[0].set_discard(false);
    let disc = Request { id: 10, handle: 0, sector: 0, kind: ReqKind::Discard { secure: false, nr_sectors: 8 } };
    assert_eq!(r.raw(&[slot(&disc)]), vec![Response { id: 10, op: OP_DISCARD, status: RSP_EOPNOTSUPP }]);
    assert!(r.backs[0].stats().unsupported >= 8);
    r.check_bounded();
    r.victims_ok();
}

#[test]
fn duplicate_ids_are_each_answered_once() {
    let mut r = Rig::new(map_cfg(), false);
    let (_a, ga) = r.page(0xa1);
    let (_b, gb) = r.page(0xb2);
    let rs = r.raw(&[
        slot(&rw_req(7, RwOp::Write, 16, &[seg(ga, 0, 7)])),
        slot(&rw_req(7, RwOp::Write, 24, &[seg(gb, 0, 7)])),
        slot(&rw_req(7, RwOp::Flush, 0, &[])),
    ]);
    assert_eq!(
        rs,
        vec![
            Response { id: 7, op: OP_WRITE, status: RSP_OKAY },
            Response { id: 7, op: OP_WRITE, status: RSP_OKAY },
            Response { id: 7, op: OP_FLUSH_DISKCACHE, status: RSP_OKAY },
        ]
    );
    let mut d = vec![0u8; 8192];
    r.disks[0].read_at(16 * 512, &mut d).unwrap();
    assert!(d[..4096].iter().all(|&x| x == 0xa1) && d[4096..].iter().all(|&x| x == 0xb2));
    r.check_bounded();
    r.victims_ok();
}

// ------------------------------------------------------------------ grants

#[test]
fn bad_grant_references_are_an_error() {
    let mut r = Rig::new(map_cfg(), false);
    let other = r.hv.create_domain(16);
    let (p, _) = r.page(0);
    // Granted to another domain, not to dom0.
    let to_other = r.guests[0].grant(p.frame, other.id(), false).unwrap();
    let never = GrantRef(r.guests[0].grant_table().len() - 1);
    for (what, g) in [
        ("reserved", GrantRef(0)),
        ("never granted", never),
        ("out of the table", GrantRef(r.guests[0].grant_table().len())),
        ("huge", GrantRef(u32::MAX)),
        ("granted to someone else", to_other),
    ] {
        assert_eq!(r.one(slot(&rw_req(1, RwOp::Read, 0, &[seg(g, 0, 7)]))), RSP_ERROR, "{what} (read)");
        assert_eq!(r.one(slot(&rw_req(2, RwOp::Write, 0, &[seg(g, 0, 7)]))), RSP_ERROR, "{what} (write)");
    }
    r.victims_ok();
}

#[test]
fn revoked_grants_are_an_error() {
    let mut r = Rig::new(map_cfg(), true);
    let (_p, g) = r.page(0);
    let (_q, h) = r.page(0);
    r.guests[0].end_access(g).unwrap();
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Read, 0, &[seg(g, 0, 7)]))), RSP_ERROR);
    // A persistently mapped grant cannot be revoked under the backend...
    assert_eq!(r.one(slot(&rw_req(2, RwOp::Read, 0, &[seg(h, 0, 7)]))), RSP_OKAY);
    assert_eq!(r.guests[0].end_access(h), Err(RevokeError::InUse));
    assert_eq!(r.one(slot(&rw_req(3, RwOp::Read, 0, &[seg(h, 0, 7)]))), RSP_OKAY);
    r.victims_ok();
}

#[test]
fn grants_revoked_mid_io_fail_the_request_and_leak_nothing() {
    let mut r = Rig::new(indirect_map_cfg(), false);
    let n = 20;
    let pages: Vec<(Page, GrantRef)> = (0..n).map(|i| r.page(i as u8 + 1)).collect();
    let (ind, gind) = r.page(0);
    for (i, (_, g)) in pages.iter().enumerate() {
        ind.mem.write_bytes(i * 8, &seg(*g, 0, 7).encode());
    }
    let table = r.guests[0].grant_table();
    let (g0, g17) = (pages[0].1, pages[17].1);
    let results = Rc::new(RefCell::new(None));
    let res2 = results.clone();
    *r.hooks[0].borrow_mut() = Some(Box::new(move |_, _| {
        let mut slot = res2.borrow_mut();
        if slot.is_none() {
            // Mapped now: revoking must fail. Not mapped yet (second batch): it succeeds.
            *slot = Some((table.revoke(g0), table.revoke(g17)));
        }
    }));
    let before = r.dom0.stats();
    assert_eq!(r.one(slot(&indirect_req(1, RwOp::Write, 0, n as u16, &[gind]))), RSP_ERROR);
    *r.hooks[0].borrow_mut() = None;
    assert_eq!(*results.borrow(), Some((Err(RevokeError::InUse), Ok(()))));
    let d = r.dom0.stats() - before;
    assert_eq!(d.maps + d.ring_maps, d.unmaps, "mappings leaked: {d:?}");
    assert!(d.map_failures >= 1);
    r.victims_ok();
}

#[test]
fn more_persistent_grants_than_the_budget_stay_within_it() {
    let budget: &'static GrantBudget = Box::leak(Box::new(GrantBudget::new(12)));
    let cfg = BackendConfig { max_grants: 8, budget: Some(budget), ..map_cfg() };
    let mut r = Rig::new(cfg, true);
    assert!(r.backs[0].negotiated().unwrap().persistent);
    let pages: Vec<(Page, GrantRef)> = (0..66).map(|i| r.page(i as u8)).collect();
    for round in 0..3 {
        for (k, chunk) in pages.chunks(11).enumerate() {
            let segs: Vec<Segment> = chunk.iter().map(|(_, g)| seg(*g, 0, 7)).collect();
            let op = if round == 0 { RwOp::Write } else { RwOp::Read };
            assert_eq!(r.one(slot(&rw_req(k as u64, op, k as u64 * 88, &segs))), RSP_OKAY);
            assert!(r.backs[0].cache().1 <= 8);
        }
        r.victims_ok();
    }
    // Every page came back with its own data: the overflow fallback is correct.
    for (i, (p, _)) in pages.iter().enumerate() {
        assert!(Rig::read_page(p).iter().all(|&x| x == i as u8), "page {i} read back wrong");
    }
    let cached: usize = r.backs.iter().map(|b| b.cache().1).sum();
    // The budget, not the per-ring limit, is what bound the attacker (the victims hold the rest).
    assert_eq!(cached, 12, "the shared budget was not used up");
    assert!(r.backs[0].cache().1 < 8, "the attacker got past the shared budget");
    r.attacker_closes();
    assert_eq!(budget.left() + r.backs.iter().map(|b| b.cache().1).sum::<usize>(), 12);
    r.victims_ok();
}

// ------------------------------------------------------------------ indirect

#[test]
fn indirect_pages_full_of_garbage_are_an_error() {
    let mut r = Rig::new(indirect_map_cfg(), false);
    let (ind, gind) = r.page(0);
    let mut x = 0x1234_5678u64;
    for seed in 0..20u64 {
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        ind.mem.copy_from_private(0, &bytes);
        let n = 12 + (seed as u16 * 7) % 20;
        assert_eq!(r.one(slot(&indirect_req(seed, RwOp::Write, 0, n, &[gind]))), RSP_ERROR, "seed {seed}");
        assert_eq!(r.one(slot(&indirect_req(seed, RwOp::Read, 0, n, &[gind]))), RSP_ERROR, "seed {seed}");
    }
    // All ones: every descriptor is invalid.
    ind.mem.copy_from_private(0, &[0xff; 4096]);
    assert_eq!(r.one(slot(&indirect_req(99, RwOp::Read, 0, 32, &[gind]))), RSP_ERROR);
    let mut d = vec![0u8; 64 * 512];
    r.disks[0].read_at(0, &mut d).unwrap();
    assert!(d.iter().all(|&b| b == 0), "garbage descriptors wrote to the disk");
    r.victims_ok();
}

#[test]
fn indirect_headers_out_of_range_are_an_error() {
    let mut r = Rig::new(indirect_map_cfg(), false);
    let (_a, ga) = r.page(0);
    let (ind, gind) = r.page(0);
    for i in 0..512 {
        ind.mem.write_bytes(i * 8, &seg(ga, 0, 7).encode());
    }
    let max = indirect_cfg() as u16;
    // Segment count zero, one over the offer, the u16 maximum.
    for n in [0u16, max + 1, u16::MAX] {
        assert_eq!(r.one(slot(&indirect_req(1, RwOp::Read, 0, n, &[gind]))), RSP_ERROR, "nr_segments {n}");
    }
    // indirect_op not read/write.
    for iop in [OP_FLUSH_DISKCACHE, OP_DISCARD, OP_INDIRECT, 0x7f] {
        let mut s = slot(&indirect_req(2, RwOp::Read, 0, 12, &[gind]));
        s[1] = iop;
        assert_eq!(r.one(s), RSP_ERROR, "indirect_op {iop}");
    }
    // The indirect page's grant itself is bad.
    assert_eq!(r.one(slot(&indirect_req(3, RwOp::Read, 0, 12, &[GrantRef(u32::MAX)]))), RSP_ERROR);
    // A valid one for contrast.
    assert_eq!(r.one(slot(&indirect_req(4, RwOp::Read, 0, 12, &[gind]))), RSP_OKAY);
    r.victims_ok();
}

// ------------------------------------------------------------------ grant copy path

#[test]
fn copy_data_path_refuses_bad_grants_and_segments() {
    let cfg = BackendConfig { data_path: DataPath::Copy, persistent: false, ..indirect_map_cfg() };
    let mut r = Rig::new(cfg, false);
    let (p, g) = r.page(0x42);
    let before = r.dom0.stats();
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Read, 0, &[seg(GrantRef(u32::MAX), 0, 7)]))), RSP_ERROR);
    assert_eq!(r.one(slot(&rw_req(2, RwOp::Write, 0, &[seg(g, 0, 7), seg(GrantRef(7), 0, 7)]))), RSP_ERROR);
    assert_eq!(r.one(with_nr_segments(12, RwOp::Write, g)), RSP_ERROR);
    assert_eq!(r.one(slot(&indirect_req(3, RwOp::Write, 0, 12, &[GrantRef(u32::MAX)]))), RSP_ERROR);
    assert_eq!(r.one(slot(&rw_req(4, RwOp::Write, 0, &[seg(g, 0, 7)]))), RSP_OKAY);
    assert_eq!((r.dom0.stats() - before).maps, 0, "the copy path mapped a grant");
    let mut d = vec![0u8; 4096];
    r.disks[0].read_at(0, &mut d).unwrap();
    assert!(d.iter().all(|&x| x == 0x42));
    let _ = p;
    r.victims_ok();
}

// ------------------------------------------------------------------ frontend keys

#[test]
fn bad_ring_keys_halt_the_connection_and_map_nothing() {
    type Setup = fn(&mut Rig, &str, GrantRef, u32);
    let cases: &[(&str, Setup)] = &[
        ("ring-ref not a number", |r, d, _, p| keys(r, d, &[("ring-ref", "12abc"), ("event-channel", &p.to_string())])),
        ("ring-ref past u32", |r, d, _, p| {
            keys(r, d, &[("ring-ref", "4294967296"), ("event-channel", &p.to_string())])
        }),
        ("ring-ref not granted", |r, d, _, p| keys(r, d, &[("ring-ref", "4000"), ("event-channel", &p.to_string())])),
        ("event-channel missing", |r, d, g, _| keys(r, d, &[("ring-ref", &g.0.to_string())])),
        ("event-channel bogus", |r, d, g, _| keys(r, d, &[("ring-ref", &g.0.to_string()), ("event-channel", "777")])),
        ("ring-page-order 9", |r, d, g, p| {
            keys(r, d, &[("ring-page-order", "9"), ("ring-ref0", &g.0.to_string()), ("event-channel", &p.to_string())])
        }),
        ("protocol unknown", |r, d, g, p| {
            keys(r, d, &[("ring-ref", &g.0.to_string()), ("event-channel", &p.to_string()), ("protocol", "x86_99-abi")])
        }),
    ];
    fn keys(r: &mut Rig, dir: &str, kv: &[(&str, &str)]) {
        for (k, v) in kv {
            r.guests[0].write(Tx::NONE, &format!("{dir}/{k}"), v.as_bytes()).unwrap();
        }
        r.guests[0].write(Tx::NONE, &format!("{dir}/state"), b"3").unwrap();
    }
    for (what, setup) in cases {
        let mut r = Rig::build(map_cfg(), false, false, |d| d);
        let dir = r.specs[0].frontend_path();
        let ring = r.guests[0].alloc_page().unwrap();
        let g = r.guests[0].grant(ring.frame, DomId::DOM0, false).unwrap();
        let port = r.guests[0].alloc_unbound(DomId::DOM0).unwrap();
        setup(&mut r, &dir, g, port.0);
        r.xenstore();
        assert!(
            matches!(r.backs[0].phase(), BackPhase::Halted(HaltReason::BadFrontendKeys | HaltReason::Platform(_))),
            "{what}: {:?}",
            r.backs[0].phase()
        );
        assert!(r.backs[0].port().is_none(), "{what}: connected anyway");
        r.check_bounded();
        r.guests[0].end_access(g).unwrap_or_else(|e| panic!("{what}: ring left mapped ({e:?})"));
        r.victims_ok();
    }
}

// ------------------------------------------------------------------ more attacker tricks

#[test]
fn attacker_domain_destroyed_while_connected_releases_all_its_mappings() {
    let mut r = Rig::new(map_cfg(), true);
    let pages: Vec<(Page, GrantRef)> = (0..11).map(|i| r.page(i as u8)).collect();
    let segs: Vec<Segment> = pages.iter().map(|(_, g)| seg(*g, 0, 7)).collect();
    assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, 0, &segs))), RSP_OKAY);
    assert_eq!(r.backs[0].cache().1, 11);
    let before = r.dom0.live_mappings();
    // The guest dies without closing: its xenstore home goes away.
    assert!(r.hv.destroy_domain(r.guests[0].id()));
    r.xenstore();
    assert!(r.backs[0].port().is_none(), "the backend still maps a dead guest's ring");
    assert_eq!(r.backs[0].cache().1, 0, "the backend still maps a dead guest's pages");
    assert_eq!(r.dom0.live_mappings(), before - 12);
    assert!(matches!(r.backs[0].phase(), BackPhase::Closed | BackPhase::Removed));
    r.check_bounded();
    r.victims_ok();
}

#[test]
fn the_same_grant_in_every_segment_is_mapped_and_released_consistently() {
    for persistent in [false, true] {
        let mut r = Rig::new(map_cfg(), persistent);
        let (p, g) = r.page(0x3c);
        let before = r.dom0.stats();
        assert_eq!(r.one(slot(&rw_req(1, RwOp::Write, 0, &[seg(g, 0, 7); 11]))), RSP_OKAY);
        let mut d = vec![0u8; 11 * 4096];
        r.disks[0].read_at(0, &mut d).unwrap();
        assert!(d.iter().all(|&x| x == 0x3c));
        p.mem.zero(0, 4096);
        // A read of 11 different sectors into the one page: the last segment's data wins.
        r.disks[0].write_at(0, &pattern(3, 11 * 4096)).unwrap();
        assert_eq!(r.one(slot(&rw_req(2, RwOp::Read, 0, &[seg(g, 0, 7); 11]))), RSP_OKAY);
        assert!(Rig::read_page(&p) == pattern(3, 11 * 4096)[10 * 4096..]);
        let dm = r.dom0.stats() - before;
        if persistent {
            // Repeats within one batch are mapped as ordinary mappings and dropped (Linux
            // blkback does the same); one mapping stays, cached.
            assert_eq!((dm.maps - dm.unmaps, r.backs[0].cache().1), (1, 1), "one grant, one persistent mapping");
            assert_eq!(r.guests[0].end_access(g), Err(RevokeError::InUse));
        } else {
            assert_eq!(dm.maps, dm.unmaps);
            r.guests[0].end_access(g).unwrap();
        }
        r.victims_ok();
    }
}

#[test]
fn ring_page_granted_as_a_data_segment_only_hurts_the_attacker() {
    let mut r = Rig::new(map_cfg(), false);
    // Reading 0xff bytes over its own ring header makes req_prod absurd.
    r.disks[0].write_at(0, &[0xff; 4096]).unwrap();
    let (_, _, ring_gref) = r.fronts[0].ring_page().unwrap();
    let s = slot(&rw_req(1, RwOp::Read, 0, &[seg(ring_gref, 0, 0)]));
    r.fronts[0].put_raw(&s).unwrap();
    let (f, g) = r.attacker();
    f.kick(g);
    r.pump();
    assert_eq!(r.backs[0].phase(), BackPhase::Halted(HaltReason::RequestOverflow));
    assert_eq!(r.backs[0].stats().requests, 1, "the request was answered once");
    r.check_bounded();
    r.victims_ok();
    r.attacker_closes();
    r.victims_ok();
}

#[test]
fn idle_persistent_grants_expire_and_can_be_revoked() {
    let cfg = BackendConfig { grant_idle_ms: 1000, ..map_cfg() };
    let mut r = Rig::new(cfg, true);
    let pages: Vec<(Page, GrantRef)> = (0..22).map(|i| r.page(i as u8)).collect();
    for (k, c) in pages.chunks(11).enumerate() {
        let segs: Vec<Segment> = c.iter().map(|(_, g)| seg(*g, 0, 7)).collect();
        assert_eq!(r.one(slot(&rw_req(k as u64, RwOp::Write, k as u64 * 88, &segs))), RSP_OKAY);
    }
    assert_eq!(r.backs[0].cache().1, 22);
    for b in r.backs.iter_mut() {
        b.tick(&mut r.dom0, 500);
    }
    assert_eq!(r.backs[0].cache().1, 22, "expired too early");
    for b in r.backs.iter_mut() {
        b.tick(&mut r.dom0, 5000);
    }
    assert_eq!(r.backs[0].cache().1, 0, "idle grants were kept");
    r.check_bounded();
    for (_, g) in &pages {
        r.guests[0].end_access(*g).expect("an expired grant is still mapped");
    }
    r.victims_ok();
}

#[test]
fn attacker_closing_its_event_channel_changes_nothing_for_others() {
    let mut r = Rig::new(map_cfg(), false);
    let port = r.fronts[0].port.unwrap();
    r.guests[0].unbind(port);
    let (_p, g) = r.page(0);
    // The attacker cannot notify any more; the board polls the backend anyway. Its
    // notifications go nowhere; it serves and does not fail.
    r.fronts[0].put_raw(&slot(&rw_req(1, RwOp::Read, 0, &[seg(g, 0, 7)]))).unwrap();
    r.fronts[0].ring.as_mut().unwrap().push_requests();
    assert_eq!(r.backs[0].process(&mut r.dom0), 1);
    assert_eq!(r.fronts[0].take_raw().unwrap(), vec![Response { id: 1, op: OP_READ, status: RSP_OKAY }]);
    assert_eq!(r.backs[0].phase(), BackPhase::Connected);
    r.check_bounded();
    r.victims_ok();
}

#[test]
fn a_frontend_keeping_its_ring_full_cannot_starve_another_with_process_some() {
    let mut r = Rig::new(map_cfg(), false);
    let (_p, g) = r.page(0x21);
    let slots: u64 = 32; // one page of the x86_64 ABI
    // The attacker fills its ring; victim 1 has one read queued.
    for id in 0..slots {
        let (f, _) = r.attacker();
        f.put_raw(&slot(&rw_req(id, RwOp::Read, 0, &[seg(g, 0, 7)]))).expect("ring has room");
    }
    let (f, gd) = r.attacker();
    f.kick(gd);
    let vid = r.fronts[1].submit(&mut r.guests[1], 0, 4096, None);
    r.fronts[1].kick(&mut r.guests[1]);
    // One round robin round with a budget of 8: the attacker gets 8 answers, the victim its one.
    let a = r.backs[0].process_some(&mut r.dom0, 8);
    assert_eq!((a.done, a.more), (8, true), "budget not kept");
    let v = r.backs[1].process_some(&mut r.dom0, 8);
    assert_eq!((v.done, v.more), (1, false));
    let c = r.fronts[1].poll(&mut r.guests[1]);
    assert_eq!((c.len(), c[0].id, c[0].status), (1, vid, RSP_OKAY), "victim not served in the first round");
    assert_eq!(r.fronts[0].take_raw().unwrap().len(), 8);
    // The rest comes in later rounds; `more` clears exactly when the ring is empty.
    let mut rounds = 1;
    loop {
        let a = r.backs[0].process_some(&mut r.dom0, 8);
        rounds += 1;
        assert_eq!(r.fronts[0].take_raw().unwrap().len(), a.done);
        if !a.more {
            break;
        }
        assert!(rounds < 10, "process_some never finished");
    }
    // The round that takes the last 8 sees the ring empty, re-arms and says so.
    assert_eq!(rounds, slots as usize / 8, "one round per 8 requests");
    // Re-armed: the next request notifies the backend again (no lost wake-up after a budget stop).
    let before = r.guests[0].stats().notifies;
    let (f, gd) = r.attacker();
    f.put_raw(&slot(&rw_req(99, RwOp::Read, 0, &[seg(g, 0, 7)]))).unwrap();
    f.kick(gd);
    assert_eq!(r.guests[0].stats().notifies, before + 1, "the event was left disarmed");
    assert_eq!(r.one_pending(), 1);
    r.victims_ok();
}
