//! Hostile backends against our [`Frontend`] on the sim board.
//!
//! The backend runs in a driver domain and is a [`RawBackend`] bent out of shape: it takes
//! the frontend's requests off the ring itself and answers what it likes (unknown or
//! repeated ids, the wrong operation, garbage status, `rsp_prod` past the ring), keeps grants
//! mapped it must let go of, vanishes mid-I/O, storms the event channel, or publishes
//! out-of-range xenstore values. Every case asserts the exact outcome: the affected requests
//! or the device fail cleanly, a page the backend still maps is never freed or reused, and no
//! page is granted with stale data (the granted page is read from the backend's side).
//!
//! Section 6 of docs/blkif-protocol.md: the frontend-side rules (2021 blkfront hardening,
//! XSA-391, XSA-396, XSA-403, id-as-pointer) each have cases here.
#![cfg(feature = "frontend")]

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use xenblk::modes::frontend::{FailReason, Frontend, FrontendConfig, Io, Phase, Status, SubmitError};
use xenblk::platform::{EventChannels, GrantMapper, Grants, MapRequest, Mapping, Pages, XenStore};
use xenblk::proto::blkif::{OP_INDIRECT, OP_READ, OP_WRITE, RSP_ERROR, RSP_OKAY, ReqKind, Request, Response};
use xenblk::proto::grant::{GTF_READING, GTF_WRITING, GntStatus, GrantRef, RevokeError};
use xenblk::proto::shmem::SharedMem;
use xenblk_sim::peers::RawBackend;
use xenblk_sim::{Dom, Hypervisor, RamDisk, VbdSpec};

const DISK_SECTORS: u64 = 2048;

struct Rig {
    hv: Hypervisor,
    bdom: Dom,
    guest: Dom,
    spec: VbdSpec,
    front: Frontend,
    back: RawBackend,
    disk: RamDisk,
}

/// (tag, status, read data)
type Done = Vec<(u64, Status, Vec<u8>)>;

fn pattern(tag: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (tag.wrapping_mul(37).wrapping_add(i as u64 * 13) % 253) as u8 ^ 0xa5).collect()
}

impl Rig {
    /// A guest with a frontend, a driver domain with a raw backend, up to the frontend's
    /// Initialised (the backend has not connected yet).
    fn start(front_persistent: bool, back_persistent: bool) -> Rig {
        let hv = Hypervisor::new();
        let mut bdom = hv.create_domain(512);
        let mut guest = hv.create_domain(1024);
        let spec = VbdSpec::new(guest.id(), bdom.id(), 51712);
        hv.add_vbd(&spec).unwrap();
        let disk = RamDisk::new(DISK_SECTORS);
        disk.write_at(0, &pattern(1, DISK_SECTORS as usize * 512)).unwrap();
        let back = RawBackend::new(&mut bdom, &spec.backend_path(), disk.clone(), back_persistent);
        let cfg = FrontendConfig { persistent: front_persistent, ..FrontendConfig::default() };
        let front = Frontend::attach(&mut guest, &spec.frontend_path(), cfg, 1).unwrap();
        let mut r = Rig { hv, bdom, guest, spec, front, back, disk };
        for _ in 0..5 {
            r.front.on_xenstore(&mut r.guest);
        }
        assert_eq!(r.front.phase(), Phase::Initialised);
        r
    }

    fn new(front_persistent: bool, back_persistent: bool) -> Rig {
        let mut r = Self::start(front_persistent, back_persistent);
        r.connect();
        r
    }

    fn connect(&mut self) {
        for _ in 0..10 {
            self.back.step(&mut self.bdom);
            self.front.on_xenstore(&mut self.guest);
        }
        assert_eq!(self.front.phase(), Phase::Connected);
    }

    fn read(&mut self, sector: u64, sectors: u32, tag: u64) {
        self.front.submit(&mut self.guest, Io::Read { sector, sectors }, tag).unwrap();
        self.front.kick(&mut self.guest);
    }

    fn write(&mut self, sector: u64, data: &[u8], tag: u64) {
        self.front.submit(&mut self.guest, Io::Write { sector, data }, tag).unwrap();
        self.front.kick(&mut self.guest);
    }

    fn poll(&mut self) -> Done {
        let mut out = Vec::new();
        self.front.poll(&mut self.guest, |c| {
            let mut d = vec![0u8; c.bytes as usize];
            c.read_data(&mut d);
            out.push((c.tag, c.status, d));
        });
        out.sort_by_key(|x| x.0);
        out
    }

    /// The requests on the ring, taken by the backend without answering.
    fn take(&mut self) -> Vec<Request> {
        let ring = self.back.ring().unwrap();
        let mut v = Vec::new();
        while let Some(r) = ring.take_request(0).unwrap() {
            v.push(r.expect("our frontend sent a malformed request"));
        }
        v
    }

    /// Publishes `rsps` (the backend must have taken as many requests) and notifies.
    fn answer(&mut self, rsps: &[Response]) {
        let ring = self.back.ring().unwrap();
        for r in rsps {
            assert!(ring.put_response(r), "more responses than requests taken");
        }
        ring.push_responses();
        let p = self.back.port().unwrap();
        self.bdom.notify(p).unwrap();
    }

    /// Honest service: serves and answers everything.
    fn serve(&mut self) -> usize {
        self.back.process(&mut self.bdom)
    }

    /// A new backend instance in the same domain (the old one's watch goes first).
    fn restart_backend(&mut self) {
        let front_state = format!("{}/state", self.spec.frontend_path());
        self.bdom.unwatch(&front_state, 0x5157).unwrap();
        self.back = RawBackend::new(&mut self.bdom, &self.spec.backend_path(), self.disk.clone(), true);
    }

    /// Verified I/O through the frontend (write, read back).
    fn io_ok(&mut self, sector: u64, tag: u64) {
        let data = pattern(tag, 8192);
        self.write(sector, &data, tag);
        self.serve();
        let d = self.poll();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].0, d[0].1), (tag, Status::Ok));
        self.read(sector, 16, tag + 1);
        self.serve();
        let d = self.poll();
        assert_eq!((d.len(), d[0].0, d[0].1), (1, tag + 1, Status::Ok));
        assert!(d[0].2 == data, "read back wrong data");
        let mut on_disk = vec![0u8; 8192];
        self.disk.read_at(sector * 512, &mut on_disk).unwrap();
        assert!(on_disk == data);
    }

    /// Maps a grant of the guest from the backend domain.
    fn map(&mut self, g: u32, readonly: bool) -> Mapping {
        let mut out = [Err(GntStatus::GeneralError)];
        self.bdom.map_batch(self.guest.id(), &[MapRequest { gref: GrantRef(g), readonly }], &mut out);
        out[0].expect("map")
    }

    fn unmap(&mut self, m: Mapping) {
        let mut st = [GntStatus::GeneralError];
        self.bdom.unmap_batch(&[m], &mut st);
        assert_eq!(st[0], GntStatus::Okay);
    }

    fn frame_of(&self, g: u32) -> u64 {
        self.guest.grant_table().read(GrantRef(g)).unwrap().frame as u64
    }

    /// Asserts the device failed for `why` and every request completed with an error.
    fn assert_failed(&mut self, why: FailReason, done: &Done, submitted: usize) {
        assert_eq!(self.front.phase(), Phase::Failed(why));
        assert_eq!(self.front.in_flight(), 0, "requests left hanging after the failure");
        assert_eq!(done.len(), submitted, "not every request completed: {done:?}");
        let sub = self.front.submit(&mut self.guest, Io::Read { sector: 0, sectors: 1 }, 9);
        assert_eq!(sub, Err(SubmitError::Failed));
        assert_eq!(self.hv.xs_read_string(&format!("{}/state", self.spec.frontend_path())).unwrap(), "6");
    }

    /// Shuts the frontend down and takes every page the guest has left: none of `frames`
    /// (pages the backend still maps) may be among them.
    fn shutdown_and_check_never_freed(mut self, frames: &HashSet<u64>) -> (Dom, Dom) {
        self.front.shutdown(&mut self.guest);
        let mut got = Vec::new();
        while let Ok(p) = self.guest.alloc_page() {
            got.push(p.frame);
        }
        for f in &got {
            assert!(!frames.contains(f), "frame {f} was freed while the backend still maps it");
        }
        assert!(!got.is_empty());
        (self.guest, self.bdom)
    }
}

fn ring_of(r: &Rig) -> SharedMem {
    r.back.ring_mem().unwrap()
}

// ------------------------------------------------------------------ 2021 blkfront hardening: ids

#[test]
fn unknown_response_id_fails_the_device() {
    let mut r = Rig::new(true, true);
    r.read(0, 8, 1);
    r.read(8, 8, 2);
    let reqs = r.take();
    assert_eq!(reqs.len(), 2);
    r.answer(&[Response { id: 999, op: OP_READ, status: RSP_OKAY }]);
    let done = r.poll();
    assert!(done.iter().all(|d| d.1 == Status::Error), "{done:?}");
    r.assert_failed(FailReason::BadResponseId, &done, 2);
}

#[test]
fn response_id_out_of_any_range_fails_the_device() {
    for id in [32u64, 1 << 16, 1 << 40, u64::MAX] {
        let mut r = Rig::new(true, true);
        r.read(0, 8, 1);
        assert_eq!(r.take().len(), 1);
        r.answer(&[Response { id, op: OP_READ, status: RSP_OKAY }]);
        let done = r.poll();
        assert_eq!(done, vec![(1, Status::Error, vec![0u8; 4096])], "id {id}");
        r.assert_failed(FailReason::BadResponseId, &done, 1);
    }
}

#[test]
fn repeated_response_id_fails_the_device() {
    let mut r = Rig::new(true, true);
    r.write(0, &pattern(5, 4096), 1);
    r.read(8, 8, 2);
    let reqs = r.take();
    assert_eq!(reqs.len(), 2);
    let st = r.back.serve_request(&mut r.bdom, &reqs[0]);
    assert_eq!(st, RSP_OKAY);
    let first = Response { id: reqs[0].id, op: OP_WRITE, status: RSP_OKAY };
    r.answer(&[first, first]);
    let done = r.poll();
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].0, done[0].1), (1, Status::Ok), "the genuine answer");
    assert_eq!((done[1].0, done[1].1), (2, Status::Error), "the other request fails with the device");
    r.assert_failed(FailReason::BadResponseId, &done, 2);
}

#[test]
fn wrong_operation_fails_the_device() {
    for (what, op) in [("write for a read", OP_WRITE), ("indirect for a direct read", OP_INDIRECT), ("garbage", 0xee)] {
        let mut r = Rig::new(true, true);
        r.read(0, 8, 1);
        let reqs = r.take();
        r.answer(&[Response { id: reqs[0].id, op, status: RSP_OKAY }]);
        let done = r.poll();
        assert_eq!(done.len(), 1, "{what}");
        assert_eq!(done[0].1, Status::Error, "{what}: a mismatched answer was accepted");
        r.assert_failed(FailReason::WrongOperation, &done, 1);
    }
}

#[test]
fn rsp_prod_past_the_ring_fails_the_device() {
    for extra in [2u32, 33, 1000, u32::MAX] {
        let mut r = Rig::new(true, true);
        r.read(0, 8, 1);
        let reqs = r.take();
        assert_eq!(reqs.len(), 1);
        // One genuine response is written; rsp_prod claims more.
        let ring = r.back.ring().unwrap();
        ring.put_response(&Response { id: reqs[0].id, op: OP_READ, status: RSP_OKAY });
        ring.push_responses();
        let mem = ring_of(&r);
        let prod = mem.load_u32(8, Ordering::Acquire);
        mem.store_u32(8, prod.wrapping_add(extra - 1), Ordering::Release);
        r.bdom.notify(r.back.port().unwrap()).unwrap();
        let done = r.poll();
        assert_eq!(done.len(), 1, "+{extra}");
        assert_eq!(done[0].1, Status::Error, "+{extra}: a response from an overflowing ring was used");
        r.assert_failed(FailReason::ResponseOverflow, &done, 1);
    }
}

#[test]
fn garbage_status_fails_only_that_request() {
    let mut r = Rig::new(true, true);
    for (k, status) in [1i16, 77, -3, -100, i16::MIN, i16::MAX].into_iter().enumerate() {
        r.read(0, 8, k as u64);
        let reqs = r.take();
        r.answer(&[Response { id: reqs[0].id, op: OP_READ, status }]);
        let done = r.poll();
        assert_eq!((done.len(), done[0].1), (1, Status::Error), "status {status}");
        assert_eq!(r.front.phase(), Phase::Connected);
    }
    // The device still works.
    r.io_ok(64, 100);
    assert_eq!(r.front.stats().errors, 6);
}

#[test]
fn error_status_fails_only_that_request() {
    let mut r = Rig::new(true, true);
    r.write(0, &pattern(9, 4096), 1);
    let reqs = r.take();
    r.answer(&[Response { id: reqs[0].id, op: OP_WRITE, status: RSP_ERROR }]);
    let done = r.poll();
    assert_eq!((done.len(), done[0].1), (1, Status::Error));
    r.io_ok(0, 10);
}

// ------------------------------------------------------------------ XSA-396: still-mapped pages

#[test]
fn xsa396_backend_keeping_a_grant_without_persistence_fails_the_device_and_the_page_is_never_freed() {
    let mut r = Rig::new(false, false);
    assert!(!r.front.negotiated().persistent);
    r.write(0, &pattern(3, 8192), 1);
    let reqs = r.take();
    let ReqKind::Rw { segs, .. } = &reqs[0].kind else { panic!("not a rw request") };
    // The backend maps both pages, does the write, unmaps only the first and says OK.
    let mut kept = HashSet::new();
    let m0 = r.map(segs[0].gref, true);
    let _m1 = r.map(segs[1].gref, true);
    kept.insert(r.frame_of(segs[1].gref));
    r.unmap(m0);
    r.answer(&[Response { id: reqs[0].id, op: OP_WRITE, status: RSP_OKAY }]);
    let done = r.poll();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1, Status::Error, "a request whose page the backend kept was reported Ok");
    assert_eq!(r.front.phase(), Phase::Failed(FailReason::GrantStillMapped));
    assert_eq!(r.front.pool_stats().parked, 1, "the still-mapped page was not parked");
    assert_eq!(r.guest.end_access(GrantRef(segs[1].gref)), Err(RevokeError::InUse));
    let (_g, b) = r.shutdown_and_check_never_freed(&kept);
    assert_eq!(b.live_mappings(), 2, "ring + the kept page");
}

#[test]
fn xsa396_backend_that_never_unmaps_its_ring_never_gets_the_page_reused() {
    let mut r = Rig::new(true, true);
    r.io_ok(0, 1);
    let ring_ref: u32 = r.hv.xs_read_string(&format!("{}/ring-ref", r.spec.frontend_path())).unwrap().parse().unwrap();
    let ring_frame = r.frame_of(ring_ref);
    // The frontend closes; the backend says Closed but keeps everything mapped.
    r.front.close(&mut r.guest);
    r.back.abandon();
    r.hv.xs_write(&format!("{}/state", r.spec.backend_path()), "6").unwrap();
    r.front.on_xenstore(&mut r.guest);
    assert_eq!(r.front.phase(), Phase::Closed);
    assert_eq!(r.guest.end_access(GrantRef(ring_ref)), Err(RevokeError::InUse));
    assert!(r.bdom.live_mappings() >= 1);
    let mut kept = HashSet::new();
    kept.insert(ring_frame);
    let _ = r.shutdown_and_check_never_freed(&kept);
}

#[test]
fn xsa396_persistent_pages_kept_by_a_dead_connection_are_not_reused_by_the_next() {
    let mut r = Rig::new(true, true);
    assert!(r.front.negotiated().persistent);
    // Some I/O so the backend caches grants persistently.
    for k in 0..4 {
        r.io_ok(k * 32, 10 + k * 2);
    }
    let mut old = HashSet::new();
    let mapped_before = r.bdom.live_mappings();
    assert!(mapped_before > 1);
    for g in 8..r.guest.grant_table().len() {
        if r.guest.grant_table().read(GrantRef(g)).is_some_and(|e| e.flags & (GTF_READING | GTF_WRITING) != 0) {
            old.insert(r.frame_of(g));
        }
    }
    assert_eq!(old.len(), mapped_before, "ring + cached grants");
    // The backend restarts without letting go of anything.
    r.back.abandon();
    r.hv.xs_write(&format!("{}/state", r.spec.backend_path()), "6").unwrap();
    r.front.on_xenstore(&mut r.guest);
    assert_eq!(r.front.phase(), Phase::Closed);
    assert!(r.front.pool_stats().parked as usize >= mapped_before - 1);
    r.restart_backend();
    r.front.on_xenstore(&mut r.guest);
    r.connect();
    // Every page of the new connection is a different frame.
    for k in 0..4 {
        r.write(k * 16, &pattern(k, 4 * 4096), k);
        for req in r.take() {
            let ReqKind::Rw { segs, .. } = &req.kind else { panic!() };
            for s in segs {
                assert!(!old.contains(&r.frame_of(s.gref)), "a page still mapped by the old backend was reused");
            }
            let st = r.back.serve_request(&mut r.bdom, &req);
            r.answer(&[Response { id: req.id, op: OP_WRITE, status: st }]);
        }
        let done = r.poll();
        assert_eq!((done.len(), done[0].1), (1, Status::Ok));
    }
    r.io_ok(200, 50);
}

// ------------------------------------------------------------------ the backend goes away

#[test]
fn backend_domain_destroyed_mid_io_closes_the_device_and_frees_nothing_mapped() {
    let mut r = Rig::new(false, false);
    r.write(0, &pattern(3, 4096), 1);
    r.read(8, 8, 2);
    let reqs = r.take();
    assert_eq!(reqs.len(), 2);
    let mut kept = HashSet::new();
    for q in &reqs {
        let ReqKind::Rw { segs, .. } = &q.kind else { panic!() };
        // (ring-netbsd grants write data read-only without persistence.)
        let _m = r.map(segs[0].gref, q.op_code() == OP_WRITE);
        kept.insert(r.frame_of(segs[0].gref));
    }
    assert!(r.hv.destroy_domain(r.bdom.id()));
    r.front.on_xenstore(&mut r.guest);
    assert_eq!(r.front.phase(), Phase::Closed);
    assert_eq!(r.poll().len(), 0, "a request completed without an answer");
    assert_eq!(r.front.in_flight(), 2, "in-flight requests were lost");
    assert_eq!(r.front.submit(&mut r.guest, Io::Read { sector: 0, sectors: 1 }, 3), Err(SubmitError::NotConnected));
    // The dead domain's handle still holds the mappings: the pages stay allocated.
    let (_g, b) = r.shutdown_and_check_never_freed(&kept);
    assert_eq!(b.live_mappings(), 3, "ring + 2 data pages");
}

#[test]
fn backend_closing_mid_io_then_returning_gets_every_request_again() {
    let mut r = Rig::new(true, true);
    let data = pattern(8, 8192);
    r.write(100, &data, 1);
    r.read(0, 16, 2);
    assert_eq!(r.take().len(), 2);
    // The backend drops everything and goes Closed without answering.
    r.back.shutdown(&mut r.bdom);
    r.hv.xs_write(&format!("{}/state", r.spec.backend_path()), "6").unwrap();
    r.front.on_xenstore(&mut r.guest);
    assert_eq!(r.front.phase(), Phase::Closed);
    assert_eq!(r.front.in_flight(), 2);
    assert_eq!(r.bdom.live_mappings(), 0);
    // It comes back: both requests are re-issued and complete with the right data.
    r.restart_backend();
    r.front.on_xenstore(&mut r.guest);
    r.connect();
    r.serve();
    let done = r.poll();
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].0, done[0].1), (1, Status::Ok));
    assert_eq!((done[1].0, done[1].1), (2, Status::Ok));
    assert!(done[1].2 == pattern(1, DISK_SECTORS as usize * 512)[..8192], "re-issued read returned wrong data");
    let mut d = vec![0u8; 8192];
    r.disk.read_at(100 * 512, &mut d).unwrap();
    assert!(d == data);
    assert_eq!(r.front.stats().reissued, 2);
}

// ------------------------------------------------------------------ XSA-391 event storm

#[test]
fn xsa391_event_storm_is_counted_spurious_and_changes_nothing() {
    let mut r = Rig::new(true, true);
    let port = r.back.port().unwrap();
    let before = r.front.stats();
    for _ in 0..10_000 {
        r.bdom.notify(port).unwrap();
        assert_eq!(r.poll().len(), 0);
    }
    let s = r.front.stats();
    assert_eq!(s.spurious - before.spurious, 10_000);
    assert_eq!((s.completed, s.notifies), (before.completed, before.notifies), "the storm made the frontend act");
    assert_eq!(r.front.phase(), Phase::Connected);
    r.io_ok(0, 1);
}

// ------------------------------------------------------------------ backend's ring writes

#[test]
fn backend_scribbling_on_the_request_side_changes_nothing() {
    let mut r = Rig::new(true, true);
    r.io_ok(0, 1);
    let mem = ring_of(&r);
    // req_prod, req_event and every slot: the frontend never reads them back.
    mem.store_u32(0, 0xdead_beef, Ordering::Release);
    mem.store_u32(4, 0x1234_5678, Ordering::Release);
    for s in 0..32 {
        mem.write_bytes(64 + s * 112, &[0xcc; 112]);
    }
    // Requests are built privately and published from the private producer index.
    let ring = r.back.ring().unwrap();
    let expected_prod = ring.req_cons();
    r.write(40, &pattern(4, 4096), 4);
    assert_eq!(mem.load_u32(0, Ordering::Acquire), expected_prod.wrapping_add(1), "req_prod not restored");
    r.serve();
    let done = r.poll();
    assert_eq!((done.len(), done[0].1), (1, Status::Ok));
    let mut d = vec![0u8; 4096];
    r.disk.read_at(40 * 512, &mut d).unwrap();
    assert!(d == pattern(4, 4096));
    r.io_ok(80, 7);
}

// ------------------------------------------------------------------ xenstore values

#[test]
fn out_of_range_backend_values_fail_the_device() {
    let cases: &[(&str, Option<&str>)] = &[
        ("sectors", None),
        ("sectors", Some("lots")),
        ("sectors", Some("-1")),
        ("sectors", Some("18446744073709551616")),
        ("sector-size", Some("0")),
        ("sector-size", Some("3")),
        ("sector-size", Some("256")),
        ("sector-size", Some("1000")),
        ("sector-size", Some("131072")),
        ("physical-sector-size", Some("256")),
        ("physical-sector-size", Some("768")),
        ("physical-sector-size", Some("4194304")),
        ("info", Some("x")),
        ("feature-persistent", Some("2")),
        ("feature-flush-cache", Some("yes")),
        ("feature-barrier", Some("-1")),
        ("feature-discard", Some("7")),
        ("feature-max-indirect-segments", Some("many")),
    ];
    for (key, value) in cases {
        let mut r = Rig::start(true, true);
        r.back.step(&mut r.bdom);
        let path = format!("{}/{key}", r.spec.backend_path());
        match value {
            Some(v) => r.hv.xs_write(&path, v).unwrap(),
            None => r.hv.xs_remove(&path).unwrap(),
        }
        r.front.on_xenstore(&mut r.guest);
        assert_eq!(r.front.phase(), Phase::Failed(FailReason::BadBackendValue), "{key} = {value:?}");
        let sub = r.front.submit(&mut r.guest, Io::Read { sector: 0, sectors: 1 }, 1);
        assert_eq!(sub, Err(SubmitError::Failed), "{key} = {value:?}");
        assert_eq!(r.hv.xs_read_string(&format!("{}/state", r.spec.frontend_path())).unwrap(), "6");
    }
}

#[test]
fn oversized_backend_offers_are_clamped_and_work() {
    let hv_keys: &[(&str, &str)] = &[
        ("max-ring-page-order", "99"),
        ("multi-queue-max-queues", "65536"),
        ("feature-max-indirect-segments", "1099511627776"),
        ("discard-granularity", "18446744073709551615"),
    ];
    // The offers are in place before the frontend publishes its ring.
    let mut r2 = {
        let hv = Hypervisor::new();
        let mut bdom = hv.create_domain(512);
        let mut guest = hv.create_domain(1024);
        let spec = VbdSpec::new(guest.id(), bdom.id(), 51712);
        hv.add_vbd(&spec).unwrap();
        let disk = RamDisk::new(DISK_SECTORS);
        let back = RawBackend::new(&mut bdom, &spec.backend_path(), disk.clone(), true);
        for (k, v) in hv_keys {
            hv.xs_write(&format!("{}/{k}", spec.backend_path()), v).unwrap();
        }
        let front = Frontend::attach(&mut guest, &spec.frontend_path(), FrontendConfig::default(), 1).unwrap();
        Rig { hv, bdom, guest, spec, front, back, disk }
    };
    r2.connect();
    let n = *r2.front.negotiated();
    assert_eq!(n.ring_order, 0, "ring order not clamped");
    assert!(n.indirect_segments as usize <= xenblk::proto::blkif::MAX_INDIRECT_SEGMENTS);
    assert!(r2.front.max_request_bytes() <= xenblk::modes::frontend::MAX_DATA_PAGES * 4096);
    r2.io_ok(0, 1);
    r2.io_ok(DISK_SECTORS - 16, 3);
}

#[test]
fn huge_disk_size_and_sector_numbers_give_errors_not_panics() {
    let mut r = Rig::start(true, true);
    r.back.step(&mut r.bdom);
    r.hv.xs_write(&format!("{}/sectors", r.spec.backend_path()), u64::MAX.to_string()).unwrap();
    r.front.on_xenstore(&mut r.guest);
    assert_eq!(r.front.phase(), Phase::Connected);
    assert_eq!(r.front.negotiated().sectors, u64::MAX);
    // The user asks for sectors the backend does not have (or that overflow a byte offset).
    for (k, sector) in [DISK_SECTORS, 1 << 54, 1 << 60, u64::MAX - 7, u64::MAX].into_iter().enumerate() {
        let res = r.front.submit(&mut r.guest, Io::Read { sector, sectors: 8 }, k as u64);
        match res {
            Ok(()) => {
                r.front.kick(&mut r.guest);
                r.serve();
                let done = r.poll();
                assert_eq!((done.len(), done[0].1), (1, Status::Error), "sector {sector}");
            }
            Err(e) => assert_eq!(e, SubmitError::BadLength, "sector {sector}"),
        }
        assert_eq!(r.front.phase(), Phase::Connected);
    }
    r.io_ok(0, 100);
}

// ------------------------------------------------------------------ XSA-403 zeroed pages

#[test]
fn xsa403_pages_are_zero_before_their_first_grant() {
    for persistent in [false, true] {
        let mut r = Rig::new(persistent, persistent);
        // A 512-byte write and a 512-byte read: the rest of each granted page is zero.
        r.write(0, &[0xab; 512], 1);
        r.read(8, 1, 2);
        let reqs = r.take();
        for q in &reqs {
            let ReqKind::Rw { segs, .. } = &q.kind else { panic!() };
            assert_eq!(segs.len(), 1);
            let m = r.map(segs[0].gref, true);
            let mut page = vec![0u8; 4096];
            m.mem.read_bytes(0, &mut page);
            if q.id == reqs[0].id {
                assert!(page[..512].iter().all(|&b| b == 0xab));
                assert!(page[512..].iter().all(|&b| b == 0), "stale bytes after the write data");
            } else {
                assert!(page.iter().all(|&b| b == 0), "stale bytes in a read page");
            }
            r.unmap(m);
        }
        // The ring page: nothing but the two requests.
        let mem = ring_of(&r);
        let mut ring = vec![0u8; 4096];
        mem.read_bytes(0, &mut ring);
        assert!(ring[64 + 2 * 112..].iter().all(|&b| b == 0), "stale bytes in the ring page");
        for q in &reqs {
            let st = r.back.serve_request(&mut r.bdom, q);
            r.answer(&[Response { id: q.id, op: q.op_code(), status: st }]);
        }
        assert_eq!(r.poll().len(), 2);
    }
}

#[test]
fn xsa403_no_data_from_a_previous_connection_is_granted_again() {
    let mut r = Rig::new(true, true);
    // Fill many pool pages with data.
    for k in 0..6u64 {
        r.write(k * 88, &pattern(k + 50, 11 * 4096), k);
        r.serve();
        assert_eq!(r.poll().len(), 1);
    }
    // Backend restart (it lets go of everything).
    r.back.shutdown(&mut r.bdom);
    r.hv.xs_write(&format!("{}/state", r.spec.backend_path()), "6").unwrap();
    r.front.on_xenstore(&mut r.guest);
    assert_eq!(r.front.phase(), Phase::Closed);
    r.restart_backend();
    r.front.on_xenstore(&mut r.guest);
    r.connect();
    // The new connection's 512-byte requests show nothing beyond their own data.
    for k in 0..20u64 {
        r.write(k * 8, &[0x11; 512], k);
        let reqs = r.take();
        let ReqKind::Rw { segs, .. } = &reqs[0].kind else { panic!() };
        let m = r.map(segs[0].gref, false);
        let mut page = vec![0u8; 4096];
        m.mem.read_bytes(0, &mut page);
        r.unmap(m);
        assert!(page[512..].iter().all(|&b| b == 0), "request {k}: data of the old connection granted again");
        let st = r.back.serve_request(&mut r.bdom, &reqs[0]);
        r.answer(&[Response { id: reqs[0].id, op: OP_WRITE, status: st }]);
        assert_eq!(r.poll().len(), 1);
    }
}

// ------------------------------------------------------------------ backend state flapping

#[test]
fn backend_state_flapping_keeps_memory_flat_and_the_request() {
    let mut r = Rig::new(true, true);
    r.io_ok(0, 1);
    // A request stays in flight through everything below.
    r.read(64, 8, 50);
    let path = format!("{}/state", r.spec.backend_path());
    let states = ["1", "2", "3", "4", "5", "6", "0", "7", "x", "4", "2", "6", "3", "4", "1", ""];
    let mut free = Vec::new();
    for _ in 0..60 {
        for s in states {
            r.hv.xs_write(&path, s).unwrap();
            r.front.on_xenstore(&mut r.guest);
            assert!(r.poll().is_empty(), "a request completed without an answer");
            assert!(!matches!(r.front.phase(), Phase::Failed(_)), "state {s:?} failed the device");
        }
        free.push(r.guest.free_page_count());
    }
    assert!(free[2..].iter().all(|&f| f == free[2]), "the guest's memory moved while flapping: {free:?}");
    assert_eq!(r.front.in_flight(), 1);
    // The backend finally restarts properly: the request completes with the right data.
    r.back.shutdown(&mut r.bdom);
    r.hv.xs_write(&path, "6").unwrap();
    r.front.on_xenstore(&mut r.guest);
    r.restart_backend();
    r.front.on_xenstore(&mut r.guest);
    r.connect();
    r.serve();
    let done = r.poll();
    assert_eq!((done.len(), done[0].0, done[0].1), (1, 50, Status::Ok));
    assert!(done[0].2 == pattern(1, DISK_SECTORS as usize * 512)[64 * 512..72 * 512]);
    r.io_ok(100, 60);
}

#[test]
fn xsa396_read_page_kept_mapped_is_never_read_as_ok() {
    let mut r = Rig::new(false, false);
    r.read(0, 8, 1);
    r.read(8, 8, 2);
    let reqs = r.take();
    let ReqKind::Rw { segs, .. } = &reqs[0].kind else { panic!() };
    // The backend fills the page, answers OK, keeps the mapping and scribbles afterwards.
    let m = r.map(segs[0].gref, false);
    m.mem.copy_from_private(0, &[0x77; 4096]);
    let mut kept = HashSet::new();
    kept.insert(r.frame_of(segs[0].gref));
    r.answer(&[Response { id: reqs[0].id, op: OP_READ, status: RSP_OKAY }]);
    let done = r.poll();
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].0, done[0].1), (1, Status::Error), "data from a page still mapped was handed out as Ok");
    assert_eq!((done[1].0, done[1].1), (2, Status::Error));
    assert_eq!(r.front.phase(), Phase::Failed(FailReason::GrantStillMapped));
    m.mem.copy_from_private(0, &[0x88; 4096]);
    let _ = r.shutdown_and_check_never_freed(&kept);
}

#[test]
fn xsa396_zero_copy_buffer_kept_mapped_is_parked_when_freed() {
    let mut r = Rig::new(false, false);
    let buf = r.front.alloc_buffer(&mut r.guest, 4096).unwrap();
    r.front.buffer_write(&buf, 0, &[0x42; 4096]);
    r.front.submit_buffer(&mut r.guest, true, 0, buf, 4096, 1).map_err(|e| e.0).unwrap();
    r.front.kick(&mut r.guest);
    let reqs = r.take();
    let ReqKind::Rw { segs, .. } = &reqs[0].kind else { panic!() };
    let _m = r.map(segs[0].gref, true);
    let mut kept = HashSet::new();
    kept.insert(r.frame_of(segs[0].gref));
    r.answer(&[Response { id: reqs[0].id, op: OP_WRITE, status: RSP_OKAY }]);
    let mut back = None;
    let mut status = None;
    r.front.poll(&mut r.guest, |c| {
        status = Some(c.status);
        back = c.take_buffer();
    });
    assert_eq!(status, Some(Status::Error));
    assert_eq!(r.front.phase(), Phase::Failed(FailReason::GrantStillMapped));
    // The caller gives the buffer back: its still-mapped page is parked, not reused.
    r.front.free_buffer(&mut r.guest, back.expect("the lent buffer did not come back"));
    assert_eq!(r.front.pool_stats().parked, 1);
    let _ = r.shutdown_and_check_never_freed(&kept);
}
