//! Protocol completeness (issue 7): everything Linux blkfront/blkback and NetBSD xbd/xbdback
//! negotiate, each item proven on the sim board, in both ABIs and both profiles.
//!
//! Tests that need both roles are gated on both features; the others drive one role of the
//! crate against the sim's wire-level reference peers (`xenblk_sim::peers`), bent into the
//! other dialect where a test says so (NetBSD's read-only write grants, its early Connected,
//! its 16-segment indirect offer, a frontend that writes no `protocol`). Several tests read
//! the build config (`xenblk::config`) and assert what that geometry must give: tests/run.sh
//! runs this file under the default config in every feature combination, and again under
//! `configs/protocol.cfg` (16-page rings, 4 queues, 520-segment requests, 8 indirect pages)
//! and `configs/netbsd-indirect.cfg` (profile netbsd, 17-segment requests).
#![allow(dead_code)]

#[cfg(feature = "backend")]
use xenblk::modes::backend::{BackPhase, Backend, BackendConfig, HaltReason};
#[cfg(all(feature = "frontend", feature = "backend"))]
use xenblk::modes::frontend::SubmitError;
#[cfg(feature = "frontend")]
use xenblk::modes::frontend::{Completion, Frontend, FrontendConfig, Io, Phase, Status};
use xenblk::proto::blkif::Protocol;
#[cfg(feature = "backend")]
use xenblk::proto::blkif::{RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY, RwOp};
use xenblk::proto::grant::DomId;
#[cfg(feature = "frontend")]
use xenblk_sim::peers::RawBackend;
#[cfg(feature = "backend")]
use xenblk_sim::peers::RawFrontend;
use xenblk_sim::{Dom, Hypervisor, RamDisk, VbdSpec};

const DEVID: u32 = 51712;

/// Runs `f` on a thread with a large stack: under the wide test configs a frontend holds
/// thousands of request shadows by value.
fn big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(256 << 20).spawn(f).unwrap().join().unwrap();
}

fn pattern(tag: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ tag ^ (i >> 12) as u8).collect()
}

fn xs(hv: &Hypervisor, path: &str) -> Option<String> {
    hv.xs_read_string(path).ok()
}

// ------------------------------------------------------------------ both roles: a pair

#[cfg(all(feature = "frontend", feature = "backend"))]
struct Pair {
    hv: Hypervisor,
    dom0: Dom,
    guest: Dom,
    spec: VbdSpec,
    front: Box<Frontend>,
    back: Option<Box<Backend<RamDisk>>>,
    disk: RamDisk,
    done: Vec<(u64, Status, Vec<u8>)>,
}

#[cfg(all(feature = "frontend", feature = "backend"))]
impl Pair {
    fn new(disk: RamDisk, fcfg: FrontendConfig, bcfg: BackendConfig) -> Pair {
        Self::with_vbd(disk, fcfg, bcfg, |_| {})
    }

    fn with_vbd(disk: RamDisk, fcfg: FrontendConfig, bcfg: BackendConfig, tweak: impl FnOnce(&Hypervisor)) -> Pair {
        let hv = Hypervisor::new();
        let mut dom0 = hv.take_dom0().unwrap();
        let mut guest = hv.create_domain(8192);
        let spec = VbdSpec::new(guest.id(), DomId::DOM0, DEVID);
        hv.add_vbd(&spec).unwrap();
        tweak(&hv);
        let back = Box::new(Backend::probe(&mut dom0, &spec.backend_path(), bcfg, disk.clone(), 9).unwrap());
        let front = Box::new(Frontend::attach(&mut guest, &spec.frontend_path(), fcfg, 1).unwrap());
        let mut p = Pair { hv, dom0, guest, spec, front, back: Some(back), disk, done: Vec::new() };
        p.pump();
        p
    }

    /// Delivers watches and events on both sides until nothing changes.
    fn pump(&mut self) {
        for _ in 0..30 {
            if self.dom0.poll_pending().watches {
                self.dom0.take_watch_events();
            }
            if let Some(b) = self.back.as_mut() {
                b.on_xenstore(&mut self.dom0);
                b.process(&mut self.dom0);
            }
            if self.guest.poll_pending().watches {
                self.guest.take_watch_events();
            }
            self.front.on_xenstore(&mut self.guest);
            let done = &mut self.done;
            self.front.poll(&mut self.guest, |c: &mut Completion<'_>| {
                let mut d = vec![0u8; c.bytes as usize];
                c.read_data(&mut d);
                done.push((c.tag, c.status, d));
            });
        }
    }

    fn back(&self) -> &Backend<RamDisk> {
        self.back.as_ref().unwrap()
    }
    fn fe(&self, key: &str) -> Option<String> {
        xs(&self.hv, &format!("{}/{key}", self.spec.frontend_path()))
    }
    fn be(&self, key: &str) -> Option<String> {
        xs(&self.hv, &format!("{}/{key}", self.spec.backend_path()))
    }
    fn status(&self, tag: u64) -> Status {
        self.done.iter().find(|d| d.0 == tag).unwrap_or_else(|| panic!("request {tag} did not complete")).1
    }
    fn data(&self, tag: u64) -> &[u8] {
        &self.done.iter().find(|d| d.0 == tag).unwrap().2
    }
    fn write(&mut self, sector: u64, data: &[u8], tag: u64) {
        self.front.submit(&mut self.guest, Io::Write { sector, data }, tag).unwrap();
        self.pump();
        assert_eq!(self.status(tag), Status::Ok, "write {tag}");
    }
    fn read(&mut self, sector: u64, bytes: usize, tag: u64) -> Vec<u8> {
        self.front.submit(&mut self.guest, Io::Read { sector, sectors: (bytes / 512) as u32 }, tag).unwrap();
        self.pump();
        assert_eq!(self.status(tag), Status::Ok, "read {tag}");
        self.data(tag).to_vec()
    }
}

// ------------------------------------------------------ backend alone: a raw frontend

#[cfg(feature = "backend")]
struct WireB {
    hv: Hypervisor,
    dom0: Dom,
    guest: Dom,
    spec: VbdSpec,
    disk: RamDisk,
    back: Box<Backend<RamDisk>>,
    front: RawFrontend,
}

#[cfg(feature = "backend")]
impl WireB {
    fn new(disk: RamDisk, bcfg: BackendConfig, persistent: bool, tweak: impl FnOnce(&mut RawFrontend)) -> WireB {
        let hv = Hypervisor::new();
        let mut dom0 = hv.take_dom0().unwrap();
        let mut guest = hv.create_domain(8192);
        let spec = VbdSpec::new(guest.id(), DomId::DOM0, DEVID);
        hv.add_vbd(&spec).unwrap();
        let back = Box::new(Backend::probe(&mut dom0, &spec.backend_path(), bcfg, disk.clone(), 1).unwrap());
        let mut front = RawFrontend::new(&mut guest, &spec.frontend_path(), persistent);
        tweak(&mut front);
        let mut w = WireB { hv, dom0, guest, spec, disk, back, front };
        for _ in 0..10 {
            w.front.step(&mut w.guest);
            w.back.on_xenstore(&mut w.dom0);
        }
        w
    }

    fn connected(&mut self) -> bool {
        self.front.step(&mut self.guest)
    }

    /// Publishes what was queued, lets the backend serve, and collects the completions.
    fn run(&mut self) -> Vec<xenblk_sim::peers::RawCompletion> {
        self.front.kick(&mut self.guest);
        self.back.process(&mut self.dom0);
        self.front.poll(&mut self.guest)
    }

    fn one(&mut self) -> xenblk_sim::peers::RawCompletion {
        let mut v = self.run();
        assert_eq!(v.len(), 1, "expected one completion");
        v.pop().unwrap()
    }

    fn be(&self, key: &str) -> Option<String> {
        xs(&self.hv, &format!("{}/{key}", self.spec.backend_path()))
    }
}

// ----------------------------------------------------- frontend alone: a raw backend

#[cfg(feature = "frontend")]
struct WireF {
    hv: Hypervisor,
    dom0: Dom,
    guest: Dom,
    spec: VbdSpec,
    disk: RamDisk,
    back: RawBackend,
    front: Box<Frontend>,
    done: Vec<(u64, Status, Vec<u8>)>,
}

#[cfg(feature = "frontend")]
impl WireF {
    fn new(disk: RamDisk, make: impl FnOnce(&mut Dom, &str, RamDisk) -> RawBackend) -> WireF {
        let hv = Hypervisor::new();
        let mut dom0 = hv.take_dom0().unwrap();
        let mut guest = hv.create_domain(8192);
        let spec = VbdSpec::new(guest.id(), DomId::DOM0, DEVID);
        hv.add_vbd(&spec).unwrap();
        let back = make(&mut dom0, &spec.backend_path(), disk.clone());
        let front =
            Box::new(Frontend::attach(&mut guest, &spec.frontend_path(), FrontendConfig::default(), 1).unwrap());
        let mut w = WireF { hv, dom0, guest, spec, disk, back, front, done: Vec::new() };
        w.pump();
        w
    }

    fn pump(&mut self) {
        for _ in 0..20 {
            self.back.step(&mut self.dom0);
            self.back.process(&mut self.dom0);
            if self.guest.poll_pending().watches {
                self.guest.take_watch_events();
            }
            self.front.on_xenstore(&mut self.guest);
            let done = &mut self.done;
            self.front.poll(&mut self.guest, |c: &mut Completion<'_>| {
                let mut d = vec![0u8; c.bytes as usize];
                c.read_data(&mut d);
                done.push((c.tag, c.status, d));
            });
        }
    }

    fn status(&self, tag: u64) -> Status {
        self.done.iter().find(|d| d.0 == tag).unwrap_or_else(|| panic!("request {tag} did not complete")).1
    }
}

// =========================================================== 1. indirect descriptors

/// The frontend sends requests as large as the config and the backend's offer allow, in
/// indirect descriptors when that is more than 11 segments; the indirect pages are
/// persistent grants like the data pages (no map on a repeated request).
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn indirect_descriptors_carry_max_segments_end_to_end_with_persistent_indirect_pages() {
    big_stack(|| {
        let mut p = Pair::new(RamDisk::new(16384), FrontendConfig::default(), BackendConfig::default());
        assert_eq!(p.front.phase(), Phase::Connected);
        let offered: usize = p.be("feature-max-indirect-segments").unwrap().parse().unwrap();
        assert_eq!(offered, xenblk::config::BACKEND_MAX_INDIRECT_SEGMENTS);
        let want = xenblk::config::MAX_SEGMENTS.min(offered).max(11);
        assert_eq!(p.front.max_request_bytes(), want * 4096, "request size is not min(config, offer)");
        assert_eq!(p.front.negotiated().indirect_segments as usize, offered);
        // One request of the largest size, written and read back.
        let data = pattern(7, want * 4096);
        let submitted = p.front.stats().submitted;
        p.write(8, &data, 1);
        assert_eq!(p.front.stats().submitted - submitted, 1, "the write was split");
        if want <= 11 {
            // No indirect without a config that asks for it: one page more is refused.
            assert_eq!(
                p.front.submit(&mut p.guest, Io::Write { sector: 0, data: &pattern(1, 12 * 4096) }, 9),
                Err(SubmitError::TooLarge)
            );
        }
        let back_data = p.read(8, want * 4096, 2);
        assert!(back_data == data, "indirect read returned other data");
        let mut disk = vec![0u8; data.len()];
        p.disk.read_at(8 * 512, &mut disk).unwrap();
        assert!(disk == data, "indirect write did not reach the disk");
        // Persistence: once every queue has carried one such request, more of them map
        // nothing new (data pages and indirect pages both stayed mapped, each queue's
        // pages in that queue's cache).
        assert!(p.front.negotiated().persistent);
        let queues = p.front.negotiated().queues as u64;
        let indirect_pages = if want > 11 { want.div_ceil(512) } else { 0 };
        for t in 0..queues {
            p.write(8, &data, 10 + t);
        }
        let warm = p.back().stats().maps;
        let ring_pages = queues << p.front.negotiated().ring_order;
        assert!(warm <= queues * (want + indirect_pages) as u64 + ring_pages, "{warm} maps for {queues} queues");
        for t in 0..2 * queues {
            p.write(8, &data, 20 + t);
        }
        assert_eq!(p.back().stats().maps, warm, "a repeated request mapped grants again");
        assert!(p.back().cache().1 >= want + indirect_pages, "cache holds {} grants", p.back().cache().1);
        assert_eq!(p.back().stats().errors, 0);
    });
}

/// A wire-level frontend sends as many indirect segments as our backend offers (8 pages
/// of 512 under configs/protocol.cfg); the backend serves them all.
#[cfg(feature = "backend")]
#[test]
fn backend_serves_indirect_requests_up_to_its_offer_in_up_to_eight_pages() {
    big_stack(|| {
        let mut w = WireB::new(RamDisk::new(65536), BackendConfig::default(), true, |_| {});
        assert!(w.connected());
        let offered: usize = w.be("feature-max-indirect-segments").unwrap().parse().unwrap();
        assert!(offered >= 17, "NetBSD frontends need an offer of at least 17");
        let n = offered.min(xenblk::proto::blkif::MAX_INDIRECT_SEGMENTS);
        let data = pattern(3, n * 4096);
        w.front.submit_indirect(&mut w.guest, 16, n * 4096, Some(&data));
        assert_eq!(w.one().status, RSP_OKAY);
        w.front.submit_indirect(&mut w.guest, 16, n * 4096, None);
        let c = w.one();
        assert_eq!(c.status, RSP_OKAY);
        assert!(c.data == data, "indirect read of {n} segments returned other data");
        if xenblk::config::BACKEND_MAX_INDIRECT_SEGMENTS >= 4096 {
            assert_eq!(n.div_ceil(512), 8, "the widest config must exercise 8 indirect pages");
        }
    });
}

#[cfg(feature = "backend")]
#[test]
fn backend_rejects_indirect_requests_beyond_its_offer() {
    big_stack(|| {
        let bcfg = BackendConfig { max_indirect_segments: 17, ..Default::default() };
        let mut w = WireB::new(RamDisk::new(4096), bcfg, false, |_| {});
        assert!(w.connected());
        assert_eq!(w.be("feature-max-indirect-segments").as_deref(), Some("17"));
        w.front.submit_indirect(&mut w.guest, 0, 17 * 4096, Some(&pattern(1, 17 * 4096)));
        assert_eq!(w.one().status, RSP_OKAY);
        w.front.submit_indirect(&mut w.guest, 0, 18 * 4096, Some(&pattern(2, 18 * 4096)));
        assert_eq!(w.one().status, RSP_ERROR, "18 segments accepted with an offer of 17");
        let mut b = vec![0u8; 17 * 4096];
        w.disk.read_at(0, &mut b).unwrap();
        assert!(b == pattern(1, 17 * 4096), "the refused request touched the disk");
    });
}

/// NetBSD xbd uses indirect descriptors only when offered at least 17 segments; Linux
/// blkfront uses any offer above 11. Our frontend follows its profile.
#[cfg(feature = "frontend")]
#[test]
fn frontend_uses_16_offered_indirect_segments_only_in_the_linux_profile() {
    big_stack(|| {
        let w = WireF::new(RamDisk::new(4096), |d, dir, disk| RawBackend::netbsd(d, dir, disk, 16));
        assert_eq!(w.front.phase(), Phase::Connected);
        let ind = w.front.negotiated().indirect_segments;
        if cfg!(feature = "ring-netbsd") {
            assert_eq!(ind, 0, "netbsd profile used an offer of 16");
            assert_eq!(w.front.max_request_bytes(), 11 * 4096);
        } else {
            assert_eq!(ind, 16);
            assert_eq!(w.front.max_request_bytes(), xenblk::config::MAX_SEGMENTS.clamp(11, 16) * 4096);
        }
    });
}

#[cfg(feature = "frontend")]
#[test]
fn frontend_sends_17_segment_indirect_requests_when_offered_17() {
    big_stack(|| {
        let mut w = WireF::new(RamDisk::new(4096), |d, dir, disk| RawBackend::netbsd(d, dir, disk, 17));
        assert_eq!(w.front.negotiated().indirect_segments, 17);
        let segs = xenblk::config::MAX_SEGMENTS.clamp(11, 17);
        assert_eq!(w.front.max_request_bytes(), segs * 4096);
        let data = pattern(5, segs * 4096);
        w.front.submit(&mut w.guest, Io::Write { sector: 0, data: &data }, 1).unwrap();
        w.pump();
        assert_eq!(w.status(1), Status::Ok);
        assert_eq!(w.back.max_segments_seen, segs);
        // Indirect exactly when the request needs more than 11 segments.
        assert_eq!(w.back.indirect_requests, u64::from(segs > 11));
        let mut b = vec![0u8; data.len()];
        w.disk.read_at(0, &mut b).unwrap();
        assert!(b == data);
    });
}

// ================================================= 2. multi-page rings, multi-queue

/// The frontend uses min(offer, config) pages and queues; one queue puts the keys at the
/// top level, more put them under `queue-N/`; `ring-page-order` is never 0.
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn multi_page_rings_and_queues_write_the_keys_linux_expects() {
    big_stack(|| {
        let p = Pair::new(RamDisk::new(4096), FrontendConfig::default(), BackendConfig::default());
        let order = xenblk::config::RING_ORDER;
        let queues = xenblk::config::RING_QUEUES;
        assert_eq!(p.be("max-ring-page-order"), (order > 0).then(|| order.to_string()));
        assert_eq!(p.be("multi-queue-max-queues"), (queues > 1).then(|| queues.to_string()));
        let neg = *p.front.negotiated();
        assert_eq!((neg.ring_order, neg.queues as usize), (order, queues));
        let bn = p.back().negotiated().unwrap();
        assert_eq!((bn.ring_order, bn.queues as usize, bn.slots as usize), (order, queues, 32 << order));
        assert_eq!(p.fe("ring-page-order"), (order > 0).then(|| order.to_string()), "ring-page-order=0 written");
        assert_eq!(p.fe("multi-queue-num-queues"), (queues > 1).then(|| queues.to_string()));
        let ring_dirs: Vec<String> = if queues > 1 {
            (0..queues).map(|q| format!("{}/queue-{q}", p.spec.frontend_path())).collect()
        } else {
            vec![p.spec.frontend_path()]
        };
        for d in &ring_dirs {
            assert!(p.hv.xs_exists(&format!("{d}/event-channel")), "{d}/event-channel missing");
            if order == 0 {
                assert!(p.hv.xs_exists(&format!("{d}/ring-ref")));
            } else {
                for i in 0..1 << order {
                    assert!(p.hv.xs_exists(&format!("{d}/ring-ref{i}")), "{d}/ring-ref{i} missing");
                }
                assert!(!p.hv.xs_exists(&format!("{d}/ring-ref")));
            }
        }
        if queues > 1 {
            assert!(!p.hv.xs_exists(&format!("{}/ring-ref", p.spec.frontend_path())), "top-level ring-ref");
            assert!(!p.hv.xs_exists(&format!("{}/event-channel", p.spec.frontend_path())));
        }
        assert_eq!(p.front.ports().len(), queues);
        assert_eq!(p.back().ports().len(), queues);
        assert_eq!(p.front.ring_slots(), queues * (32 << order));
    });
}

/// Requests go round robin over every queue; each queue is a ring with its own event
/// channel and the backend keeps a persistent-grant cache per queue.
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn multi_queue_spreads_requests_over_every_queue_each_with_its_own_grant_cache() {
    big_stack(|| {
        let mut p = Pair::new(RamDisk::new(8192), FrontendConfig::default(), BackendConfig::default());
        let queues = xenblk::config::RING_QUEUES;
        let n = 4 * queues as u64;
        for t in 0..n {
            p.front.submit(&mut p.guest, Io::Write { sector: t * 8, data: &pattern(t as u8, 4096) }, t).unwrap();
        }
        // Before the backend serves anything: every queue holds requests.
        let per_queue = p.front.queue_in_flight();
        assert_eq!(per_queue.len(), queues);
        assert!(per_queue.iter().all(|&k| k == 4), "uneven spread {per_queue:?}");
        p.pump();
        for t in 0..n {
            assert_eq!(p.status(t), Status::Ok);
            let mut b = vec![0u8; 4096];
            p.disk.read_at(t * 8 * 512, &mut b).unwrap();
            assert_eq!(b, pattern(t as u8, 4096));
        }
        for q in 0..queues {
            assert!(p.back().queue_cache_len(q) > 0, "queue {q} cached nothing");
        }
        // The backend counts what each queue carried (xenblk-back logs it at close).
        assert_eq!(p.back().queue_requests(), vec![4u64; queues].as_slice());
        assert_eq!(p.back().stats().errors, 0);
    });
}

/// Linux blkfront with one queue writes top-level keys even when the backend offers more;
/// the backend serves that as a single queue.
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn single_queue_frontend_uses_top_level_keys_when_backend_offers_more() {
    big_stack(|| {
        let fcfg = FrontendConfig { queues: 1, max_ring_order: 0, ..Default::default() };
        let mut p = Pair::new(RamDisk::new(4096), fcfg, BackendConfig::default());
        assert_eq!(p.front.phase(), Phase::Connected);
        assert!(p.fe("ring-ref").is_some() && p.fe("event-channel").is_some());
        assert!(p.fe("multi-queue-num-queues").is_none() && p.fe("ring-page-order").is_none());
        assert!(!p.hv.xs_exists(&format!("{}/queue-0", p.spec.frontend_path())));
        let bn = p.back().negotiated().unwrap();
        assert_eq!((bn.queues, bn.ring_order, bn.slots), (1, 0, 32));
        p.write(0, &pattern(2, 8192), 1);
        assert_eq!(p.read(0, 8192, 2), pattern(2, 8192));
    });
}

/// A frontend that comes back to a backend offering less (one page, one queue) leaves no
/// key of the wider connection behind (a backend reads `ring-page-order` and
/// `multi-queue-num-queues` first).
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn reconnect_to_a_narrower_backend_leaves_no_stale_ring_keys() {
    big_stack(|| {
        let mut p = Pair::new(RamDisk::new(4096), FrontendConfig::default(), BackendConfig::default());
        p.write(0, &pattern(1, 4096), 1);
        let mut old = p.back.take().unwrap();
        old.shutdown(&mut p.dom0);
        p.hv.xs_write(&format!("{}/state", p.spec.backend_path()), "6").unwrap();
        for k in ["max-ring-page-order", "max-ring-pages", "multi-queue-max-queues"] {
            let _ = p.hv.xs_remove(&format!("{}/{k}", p.spec.backend_path()));
        }
        p.pump();
        let narrow = BackendConfig { max_ring_order: 0, max_queues: 1, ..Default::default() };
        p.back =
            Some(Box::new(Backend::probe(&mut p.dom0, &p.spec.backend_path(), narrow, p.disk.clone(), 3).unwrap()));
        p.pump();
        assert_eq!(p.front.phase(), Phase::Connected);
        assert_eq!(p.front.stats().connects, 2);
        for k in ["ring-page-order", "num-ring-pages", "multi-queue-num-queues", "ring-ref0", "queue-0"] {
            assert!(p.fe(k).is_none() && !p.hv.xs_exists(&format!("{}/{k}", p.spec.frontend_path())), "stale {k}");
        }
        assert!(p.fe("ring-ref").is_some());
        assert_eq!(p.back().negotiated().unwrap().queues, 1);
        assert_eq!(p.read(0, 4096, 2), pattern(1, 4096));
    });
}

/// Linux blkback treats `multi-queue-num-queues` = 0 or above its offer as fatal.
#[cfg(feature = "backend")]
#[test]
fn backend_refuses_zero_or_too_many_queues() {
    big_stack(|| {
        for bad in ["0", "99"] {
            let hv = Hypervisor::new();
            let mut dom0 = hv.take_dom0().unwrap();
            let mut guest = hv.create_domain(256);
            let spec = VbdSpec::new(guest.id(), DomId::DOM0, DEVID);
            hv.add_vbd(&spec).unwrap();
            let mut back =
                Backend::probe(&mut dom0, &spec.backend_path(), BackendConfig::default(), RamDisk::new(64), 1).unwrap();
            let mut front = RawFrontend::new(&mut guest, &spec.frontend_path(), false);
            front.step(&mut guest);
            hv.xs_write(&format!("{}/multi-queue-num-queues", spec.frontend_path()), bad).unwrap();
            back.on_xenstore(&mut dom0);
            assert_eq!(back.phase(), BackPhase::Halted(HaltReason::BadFrontendKeys), "num-queues {bad} accepted");
            assert_eq!(dom0.live_mappings(), 0, "a refused connection left the ring mapped");
        }
    });
}

// ================================================= 3. discard, barrier, flush, EOPNOTSUPP

#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn discard_offers_granularity_alignment_secure_and_reaches_the_storage() {
    big_stack(|| {
        let disk = RamDisk::new(4096);
        disk.set_discard(true);
        let mut p = Pair::new(disk, FrontendConfig::default(), BackendConfig::default());
        assert_eq!(p.be("feature-discard").as_deref(), Some("1"));
        assert_eq!(p.be("discard-granularity").as_deref(), Some("512"));
        assert_eq!(p.be("discard-alignment").as_deref(), Some("0"));
        assert_eq!(p.be("discard-secure").as_deref(), Some("0"));
        let neg = *p.front.negotiated();
        assert!(neg.discard && !neg.discard_secure);
        assert_eq!(neg.discard_granularity, 512);
        p.write(0, &pattern(4, 8192), 1);
        p.front.submit(&mut p.guest, Io::Discard { sector: 0, sectors: 8, secure: false }, 2).unwrap();
        p.pump();
        assert_eq!(p.status(2), Status::Ok);
        assert_eq!(p.disk.stats().discards, 1);
        let back = p.read(0, 8192, 3);
        assert!(back[..4096].iter().all(|&b| b == 0), "discarded range still holds data");
        assert_eq!(&back[4096..], &pattern(4, 8192)[4096..], "discard went past its range");
        // Secure discard is not offered: refused before it reaches the ring.
        assert_eq!(
            p.front.submit(&mut p.guest, Io::Discard { sector: 0, sectors: 8, secure: true }, 4),
            Err(SubmitError::Unsupported)
        );
    });
}

#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn secure_discard_is_negotiated_and_served_when_the_storage_offers_it() {
    big_stack(|| {
        let disk = RamDisk::new(4096);
        disk.set_discard(true);
        disk.set_discard_secure(true);
        let mut p = Pair::new(disk, FrontendConfig::default(), BackendConfig::default());
        assert_eq!(p.be("discard-secure").as_deref(), Some("1"));
        assert!(p.front.negotiated().discard_secure);
        p.write(16, &pattern(5, 4096), 1);
        p.front.submit(&mut p.guest, Io::Discard { sector: 16, sectors: 8, secure: true }, 2).unwrap();
        p.pump();
        assert_eq!(p.status(2), Status::Ok);
        assert_eq!(p.disk.stats().discards, 1);
        assert!(p.read(16, 4096, 3).iter().all(|&b| b == 0));
    });
}

#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn frontend_refuses_flush_and_discard_the_backend_did_not_offer() {
    big_stack(|| {
        let disk = RamDisk::new(4096);
        disk.set_flush(false);
        disk.set_discard(false);
        let mut p = Pair::new(disk, FrontendConfig::default(), BackendConfig::default());
        assert_eq!(p.be("feature-flush-cache").as_deref(), Some("0"));
        assert_eq!(p.be("feature-discard").as_deref(), Some("0"));
        assert!(p.be("discard-granularity").is_none());
        assert_eq!(p.front.submit(&mut p.guest, Io::Flush, 1), Err(SubmitError::Unsupported));
        assert_eq!(
            p.front.submit(&mut p.guest, Io::Discard { sector: 0, sectors: 8, secure: false }, 2),
            Err(SubmitError::Unsupported)
        );
        // Barrier is offered (the backend drains: it serves synchronously) and works.
        assert_eq!(p.be("feature-barrier").as_deref(), Some("1"));
        p.front.submit(&mut p.guest, Io::Barrier { sector: 0, data: &pattern(1, 4096) }, 3).unwrap();
        p.pump();
        assert_eq!(p.status(3), Status::Ok);
    });
}

/// What is not offered is answered EOPNOTSUPP on the wire: flush without a flushing disk,
/// discard without support or with `discard-enable` = 0, secure discard, unknown operations.
#[cfg(feature = "backend")]
#[test]
fn unoffered_operations_are_answered_eopnotsupp_on_the_wire() {
    big_stack(|| {
        let disk = RamDisk::new(4096);
        disk.set_flush(false);
        disk.set_discard(false);
        let mut w = WireB::new(disk, BackendConfig::default(), false, |_| {});
        assert!(w.connected());
        w.front.submit_kind(&mut w.guest, 0, RwOp::Flush, &[]);
        assert_eq!(w.one().status, RSP_EOPNOTSUPP, "flush without feature-flush-cache");
        w.front.submit_discard(0, 8, false);
        assert_eq!(w.one().status, RSP_EOPNOTSUPP, "discard without feature-discard");
        // An unknown operation: a valid read slot whose operation byte is rewritten to 4
        // (BLKIF_OP_RESERVED_1).
        w.front.submit(&mut w.guest, 0, 4096, None);
        let ring = w.front.ring.as_ref().unwrap();
        let slot = (ring.req_prod_pvt().wrapping_sub(1) % ring.size()) as usize;
        let off = 64 + slot * ring.abi().entry_size();
        w.front.ring_mem().unwrap().write_bytes(off, &[4]);
        assert_eq!(w.one().status, RSP_EOPNOTSUPP, "unknown operation");
        assert!(w.back.stats().unsupported >= 3);

        // Discard supported by the storage but forbidden by the toolstack.
        let disk = RamDisk::new(4096);
        disk.set_discard(true);
        let hv = Hypervisor::new();
        let mut dom0 = hv.take_dom0().unwrap();
        let mut guest = hv.create_domain(256);
        let mut spec = VbdSpec::new(guest.id(), DomId::DOM0, DEVID);
        spec.discard_enable = false;
        hv.add_vbd(&spec).unwrap();
        let mut back = Backend::probe(&mut dom0, &spec.backend_path(), BackendConfig::default(), disk, 1).unwrap();
        let mut front = RawFrontend::new(&mut guest, &spec.frontend_path(), false);
        for _ in 0..5 {
            front.step(&mut guest);
            back.on_xenstore(&mut dom0);
        }
        assert!(front.step(&mut guest));
        assert_eq!(hv.xs_read_string(&format!("{}/feature-discard", spec.backend_path())).unwrap(), "0");
        front.submit_discard(0, 8, false);
        front.kick(&mut guest);
        back.process(&mut dom0);
        assert_eq!(front.poll(&mut guest)[0].status, RSP_EOPNOTSUPP, "discard-enable=0 ignored");
    });
}

#[cfg(feature = "backend")]
#[test]
fn secure_discard_is_eopnotsupp_unless_offered() {
    big_stack(|| {
        let disk = RamDisk::new(4096);
        disk.set_discard(true);
        let mut w = WireB::new(disk, BackendConfig::default(), false, |_| {});
        assert!(w.connected());
        assert_eq!(w.be("discard-secure").as_deref(), Some("0"));
        w.front.submit_discard(0, 8, true);
        assert_eq!(w.one().status, RSP_EOPNOTSUPP);
        w.front.submit_discard(0, 8, false);
        assert_eq!(w.one().status, RSP_OKAY);
        assert_eq!(w.disk.stats().discards, 1);
    });
}

/// FLUSH_DISKCACHE with segments writes its data and flushes (Linux blkback: a write with
/// a pre-flush); without segments it only flushes; WRITE_BARRIER with data flushes before
/// and after its write.
#[cfg(feature = "backend")]
#[test]
fn flush_with_and_without_data_and_barrier_with_data_on_the_wire() {
    big_stack(|| {
        let mut w = WireB::new(RamDisk::new(4096), BackendConfig::default(), false, |_| {});
        assert!(w.connected());
        let f0 = w.disk.stats().flushes;
        w.front.submit_kind(&mut w.guest, 0, RwOp::Flush, &[]);
        assert_eq!(w.one().status, RSP_OKAY);
        assert_eq!(w.disk.stats().flushes - f0, 1);
        let data = pattern(6, 8192);
        w.front.submit_kind(&mut w.guest, 16, RwOp::Flush, &data);
        assert_eq!(w.one().status, RSP_OKAY);
        assert_eq!(w.disk.stats().flushes - f0, 2);
        let mut b = vec![0u8; 8192];
        w.disk.read_at(16 * 512, &mut b).unwrap();
        assert_eq!(b, data, "flush with data did not write its data");
        let data2 = pattern(8, 4096);
        w.front.submit_kind(&mut w.guest, 64, RwOp::WriteBarrier, &data2);
        assert_eq!(w.one().status, RSP_OKAY);
        assert_eq!(w.disk.stats().flushes - f0, 4, "barrier: flush before and after");
        let mut b = vec![0u8; 4096];
        w.disk.read_at(64 * 512, &mut b).unwrap();
        assert_eq!(b, data2);
    });
}

/// Linux blkfront sends an empty flush with `sector_number` = u64::MAX (the block layer's
/// "no position"; ext4's journal does it on the rig). Without data the sector means nothing:
/// the flush is served, on a 512- and on a 4096-byte-sector disk. With data, a sector past
/// the end is still an error.
#[cfg(feature = "backend")]
#[test]
fn empty_flush_with_sector_u64_max_is_served() {
    big_stack(|| {
        for ss in [512u32, 4096] {
            let disk = RamDisk::new(4096);
            disk.set_sector_size(ss, 4096);
            let mut w = WireB::new(disk, BackendConfig::default(), false, |_| {});
            assert!(w.connected());
            let f0 = w.disk.stats().flushes;
            w.front.submit_kind(&mut w.guest, u64::MAX, RwOp::Flush, &[]);
            assert_eq!(w.one().status, RSP_OKAY, "sector size {ss}");
            assert_eq!(w.disk.stats().flushes - f0, 1);
            w.front.submit_kind(&mut w.guest, u64::MAX - 7, RwOp::Flush, &pattern(1, 4096));
            assert_eq!(w.one().status, RSP_ERROR, "a flush with data past the end");
            assert_eq!(w.disk.stats().flushes - f0, 1);
        }
    });
}

// ======================================================================= 4. sector sizes

/// A 4 KiB-logical disk: `sectors` and every request stay in 512-byte units; the frontend
/// aligns to the logical size and the backend refuses what is not aligned.
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn logical_4096_sector_size_keeps_512_byte_units_on_the_wire() {
    big_stack(|| {
        let disk = RamDisk::new(8192);
        disk.set_sector_size(4096, 4096);
        let mut p = Pair::new(disk, FrontendConfig::default(), BackendConfig::default());
        assert_eq!(p.be("sectors").as_deref(), Some("8192"), "sectors must be in 512-byte units");
        assert_eq!(p.be("sector-size").as_deref(), Some("4096"));
        assert_eq!(p.be("physical-sector-size").as_deref(), Some("4096"));
        let neg = *p.front.negotiated();
        assert_eq!((neg.sectors, neg.sector_size, neg.physical_sector_size), (8192, 4096, 4096));
        assert_eq!(
            p.front.submit(&mut p.guest, Io::Write { sector: 0, data: &pattern(1, 512) }, 1),
            Err(SubmitError::BadLength)
        );
        assert_eq!(
            p.front.submit(&mut p.guest, Io::Write { sector: 1, data: &pattern(1, 4096) }, 2),
            Err(SubmitError::BadLength)
        );
        // Sector 8 (512-byte units) = logical block 1.
        p.write(8, &pattern(3, 4096), 3);
        let mut b = vec![0u8; 4096];
        p.disk.read_at(8 * 512, &mut b).unwrap();
        assert_eq!(b, pattern(3, 4096));
        assert_eq!(p.read(8, 4096, 4), pattern(3, 4096));
    });
}

#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn physical_sector_size_larger_than_logical_is_published_and_read() {
    big_stack(|| {
        let disk = RamDisk::new(4096);
        disk.set_sector_size(512, 4096);
        let mut p = Pair::new(disk, FrontendConfig::default(), BackendConfig::default());
        assert_eq!(p.be("sector-size").as_deref(), Some("512"));
        assert_eq!(p.be("physical-sector-size").as_deref(), Some("4096"));
        let neg = *p.front.negotiated();
        assert_eq!((neg.sector_size, neg.physical_sector_size), (512, 4096));
        // 512-byte I/O is still allowed (logical size governs).
        p.write(1, &pattern(2, 512), 1);
    });
}

#[cfg(feature = "backend")]
#[test]
fn backend_refuses_requests_misaligned_to_the_logical_sector_size() {
    big_stack(|| {
        let disk = RamDisk::new(4096);
        disk.set_sector_size(4096, 4096);
        let mut w = WireB::new(disk, BackendConfig::default(), false, |_| {});
        assert!(w.connected());
        w.front.submit(&mut w.guest, 1, 4096, Some(&pattern(1, 4096)));
        assert_eq!(w.one().status, RSP_ERROR, "misaligned start accepted");
        w.front.submit(&mut w.guest, 8, 512, Some(&pattern(1, 512)));
        assert_eq!(w.one().status, RSP_ERROR, "sub-block length accepted");
        w.front.submit(&mut w.guest, 8, 4096, Some(&pattern(1, 4096)));
        assert_eq!(w.one().status, RSP_OKAY);
    });
}

/// Resize: the backend rewrites `sectors` and then `state`, which fires the frontend's
/// watch; a connected frontend picks up the new size, and I/O past the old end works.
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn resize_rewrites_sectors_and_state_and_the_connected_frontend_follows() {
    big_stack(|| {
        let mut p = Pair::new(RamDisk::new(2048), FrontendConfig::default(), BackendConfig::default());
        p.front.submit(&mut p.guest, Io::Write { sector: 3000, data: &pattern(1, 4096) }, 1).unwrap();
        p.pump();
        assert_eq!(p.status(1), Status::Error, "write past the end succeeded");
        p.disk.set_sectors(4096).unwrap();
        p.guest.take_watch_events();
        p.back.as_mut().unwrap().resize(&mut p.dom0).unwrap();
        assert_eq!(p.be("sectors").as_deref(), Some("4096"));
        assert!(p.guest.poll_pending().watches, "resize did not fire the frontend's state watch");
        p.pump();
        assert_eq!(p.front.negotiated().sectors, 4096);
        assert_eq!(p.front.phase(), Phase::Connected);
        p.write(3000, &pattern(2, 4096), 2);
    });
}

// ============================================================================ 5. ABIs

#[cfg(all(feature = "frontend", feature = "backend"))]
type AbiGuest = (Dom, VbdSpec, RamDisk, Box<Backend<RamDisk>>, Protocol);

/// One backend domain serves an x86_32-abi frontend and an x86_64-abi frontend at the
/// same time, each with its own layout.
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn one_backend_domain_serves_x86_32_and_x86_64_frontends_at_once() {
    big_stack(|| {
        let hv = Hypervisor::new();
        let mut dom0 = hv.take_dom0().unwrap();
        let mut guests = Vec::new();
        for (i, proto) in [Protocol::X86_32, Protocol::X86_64].into_iter().enumerate() {
            let guest = hv.create_domain(4096);
            let spec = VbdSpec::new(guest.id(), DomId::DOM0, DEVID);
            hv.add_vbd(&spec).unwrap();
            let disk = RamDisk::new(4096);
            let back = Box::new(
                Backend::probe(&mut dom0, &spec.backend_path(), BackendConfig::default(), disk.clone(), 10 + i as u32)
                    .unwrap(),
            );
            guests.push((guest, spec, disk, back, proto));
        }
        let mut fronts: Vec<Box<Frontend>> = guests
            .iter_mut()
            .map(|(g, spec, _, _, proto)| {
                let fcfg = FrontendConfig { protocol: *proto, ..Default::default() };
                Box::new(Frontend::attach(g, &spec.frontend_path(), fcfg, 1).unwrap())
            })
            .collect();
        let mut done: Vec<Vec<(u64, Status, Vec<u8>)>> = vec![Vec::new(), Vec::new()];
        let mut pump = |guests: &mut Vec<AbiGuest>, fronts: &mut Vec<Box<Frontend>>, dom0: &mut Dom| {
            for _ in 0..20 {
                if dom0.poll_pending().watches {
                    dom0.take_watch_events();
                }
                for (i, (g, _, _, b, _)) in guests.iter_mut().enumerate() {
                    b.on_xenstore(dom0);
                    b.process(dom0);
                    if g.poll_pending().watches {
                        g.take_watch_events();
                    }
                    fronts[i].on_xenstore(g);
                    let d = &mut done[i];
                    fronts[i].poll(g, |c: &mut Completion<'_>| {
                        let mut v = vec![0u8; c.bytes as usize];
                        c.read_data(&mut v);
                        d.push((c.tag, c.status, v));
                    });
                }
            }
        };
        pump(&mut guests, &mut fronts, &mut dom0);
        for (i, (g, spec, _, b, proto)) in guests.iter_mut().enumerate() {
            assert_eq!(fronts[i].phase(), Phase::Connected);
            assert_eq!(hv.xs_read_string(&format!("{}/protocol", spec.frontend_path())).unwrap(), proto.as_str());
            assert_eq!(b.negotiated().unwrap().protocol, *proto);
            // Interleaved I/O on both: a multi-segment write and a read with a large id.
            fronts[i]
                .submit(g, Io::Write { sector: 8, data: &pattern(i as u8, 3 * 4096) }, 0xfeed_0000 + i as u64)
                .unwrap();
        }
        pump(&mut guests, &mut fronts, &mut dom0);
        for (i, (g, _, _, _, _)) in guests.iter_mut().enumerate() {
            fronts[i].submit(g, Io::Read { sector: 8, sectors: 24 }, 7).unwrap();
        }
        pump(&mut guests, &mut fronts, &mut dom0);
        for (i, (_, _, disk, b, _)) in guests.iter().enumerate() {
            assert!(
                done[i].iter().all(|d| d.1 == Status::Ok),
                "guest {i}: {:?}",
                done[i].iter().map(|d| d.1).collect::<Vec<_>>()
            );
            assert_eq!(done[i].iter().find(|d| d.0 == 7).unwrap().2, pattern(i as u8, 3 * 4096));
            let mut img = vec![0u8; 3 * 4096];
            disk.read_at(8 * 512, &mut img).unwrap();
            assert_eq!(img, pattern(i as u8, 3 * 4096));
            assert_eq!(b.stats().errors, 0);
        }
    });
}

/// The backend with a wire-level frontend of each ABI (works in backend-only builds).
#[cfg(feature = "backend")]
#[test]
fn backend_speaks_both_abis_to_a_raw_frontend() {
    big_stack(|| {
        for proto in [Protocol::X86_32, Protocol::X86_64] {
            let mut w = WireB::new(RamDisk::new(4096), BackendConfig::default(), false, |f| f.ring_protocol = proto);
            assert!(w.connected());
            assert_eq!(w.back.negotiated().unwrap().protocol, proto);
            let data = pattern(9, 11 * 4096);
            w.front.submit(&mut w.guest, 24, data.len(), Some(&data));
            assert_eq!(w.one().status, RSP_OKAY);
            w.front.submit(&mut w.guest, 24, data.len(), None);
            let c = w.one();
            assert_eq!(c.status, RSP_OKAY);
            assert!(c.data == data, "{proto:?} read returned other data");
        }
    });
}

/// No `protocol` key: Linux blkback on x86 assumes x86_32 (the legacy default), NetBSD
/// xbdback assumes native; the backend follows its profile, and I/O in that layout works.
#[cfg(feature = "backend")]
#[test]
fn missing_protocol_key_means_x86_32_for_linux_and_native_for_netbsd() {
    big_stack(|| {
        let expected = if cfg!(feature = "ring-netbsd") { Protocol::native() } else { Protocol::X86_32 };
        let mut w = WireB::new(RamDisk::new(4096), BackendConfig::default(), false, |f| {
            f.write_protocol = false;
            f.ring_protocol = expected;
        });
        assert!(w.connected());
        assert!(!w.hv.xs_exists(&format!("{}/protocol", w.spec.frontend_path())));
        assert_eq!(w.back.negotiated().unwrap().protocol, expected);
        let data = pattern(2, 5 * 4096);
        w.front.submit(&mut w.guest, 0, data.len(), Some(&data));
        assert_eq!(w.one().status, RSP_OKAY);
        let mut b = vec![0u8; data.len()];
        w.disk.read_at(0, &mut b).unwrap();
        assert_eq!(b, data, "the default ABI was not the one assumed");
    });
}

/// Our frontend always writes `protocol`, so the backend's default never applies to it.
#[cfg(feature = "frontend")]
#[test]
fn frontend_always_writes_protocol() {
    big_stack(|| {
        let w = WireF::new(RamDisk::new(1024), |d, dir, disk| RawBackend::new(d, dir, disk, false));
        assert_eq!(w.front.phase(), Phase::Connected);
        assert_eq!(
            xs(&w.hv, &format!("{}/protocol", w.spec.frontend_path())).as_deref(),
            Some(Protocol::native().as_str())
        );
    });
}

// ============================================================ 6. NetBSD dialect quirks

/// NetBSD xbdback says Connected (with every key) before the frontend published its ring;
/// our frontend connects, publishes its ring, and its first request is served once the
/// backend maps the ring.
#[cfg(feature = "frontend")]
#[test]
fn netbsd_backend_connected_before_the_ring_is_published_is_served() {
    big_stack(|| {
        let hv = Hypervisor::new();
        let mut dom0 = hv.take_dom0().unwrap();
        let mut guest = hv.create_domain(1024);
        let spec = VbdSpec::new(guest.id(), DomId::DOM0, DEVID);
        hv.add_vbd(&spec).unwrap();
        let disk = RamDisk::new(2048);
        let mut back = RawBackend::netbsd(&mut dom0, &spec.backend_path(), disk.clone(), 16);
        assert_eq!(xs(&hv, &format!("{}/state", spec.backend_path())).as_deref(), Some("4"));
        assert!(!hv.xs_exists(&format!("{}/ring-ref", spec.frontend_path())));
        let mut front = Frontend::attach(&mut guest, &spec.frontend_path(), FrontendConfig::default(), 1).unwrap();
        // The frontend saw Connected at once: ring published and connected, backend not
        // yet attached to the ring.
        assert_eq!(front.phase(), Phase::Connected);
        assert!(hv.xs_exists(&format!("{}/ring-ref", spec.frontend_path())));
        assert!(back.port().is_none());
        assert!(!front.negotiated().persistent, "NetBSD never offers persistent grants");
        assert_eq!(front.negotiated().sectors, 2048);
        front.submit(&mut guest, Io::Write { sector: 0, data: &pattern(1, 8192) }, 1).unwrap();
        front.kick(&mut guest);
        // Now the backend sees Initialised/Connected and maps the ring; the request waiting
        // there is served.
        back.step(&mut dom0);
        back.process(&mut dom0);
        let mut st = None;
        front.poll(&mut guest, |c| st = Some(c.status));
        assert_eq!(st, Some(Status::Ok));
        let mut b = vec![0u8; 8192];
        disk.read_at(0, &mut b).unwrap();
        assert_eq!(b, pattern(1, 8192));
    });
}

/// NetBSD xbd reads `feature-flush-cache` and `feature-max-indirect-segments` at attach,
/// before the backend is Connected. Our backend publishes the indirect limit at probe in
/// both profiles; in the netbsd profile it also publishes the disk and flush keys then
/// (and goes Connected at once, as xbdback does); in the linux profile they come with
/// Connected, as Linux blkback does.
#[cfg(feature = "backend")]
#[test]
fn netbsd_frontend_reading_features_at_attach_sees_what_the_profile_publishes() {
    big_stack(|| {
        let hv = Hypervisor::new();
        let mut dom0 = hv.take_dom0().unwrap();
        let guest = hv.create_domain(256);
        let spec = VbdSpec::new(guest.id(), DomId::DOM0, DEVID);
        hv.add_vbd(&spec).unwrap();
        let _back =
            Backend::probe(&mut dom0, &spec.backend_path(), BackendConfig::default(), RamDisk::new(64), 1).unwrap();
        let be = |k: &str| xs(&hv, &format!("{}/{k}", spec.backend_path()));
        // What an attaching NetBSD frontend reads now.
        let ind: u32 = be("feature-max-indirect-segments").unwrap().parse().unwrap();
        assert!(ind >= 17, "NetBSD xbd would not use indirect with {ind}");
        if cfg!(feature = "ring-netbsd") {
            assert_eq!(be("feature-flush-cache").as_deref(), Some("1"));
            assert_eq!(be("sector-size").as_deref(), Some("512"));
            assert_eq!(be("state").as_deref(), Some("4"));
        } else {
            assert!(be("feature-flush-cache").is_none(), "linux profile published flush before Connected");
            assert_eq!(be("state").as_deref(), Some("2"));
        }
    });
}

/// NetBSD xbd grants write data read-only. A backend that negotiated persistence cannot
/// keep such a grant (persistent mappings are read-write): it maps it for the request only.
#[cfg(feature = "backend")]
#[test]
fn netbsd_readonly_write_grants_are_served_without_persistent_mappings() {
    big_stack(|| {
        for persistent in [false, true] {
            let mut w =
                WireB::new(RamDisk::new(4096), BackendConfig::default(), persistent, |f| f.readonly_writes = true);
            assert!(w.connected());
            assert_eq!(w.back.negotiated().unwrap().persistent, persistent);
            for t in 0..4u8 {
                w.front.submit(&mut w.guest, t as u64 * 8, 4096, Some(&pattern(t, 4096)));
                // The raw frontend ends every read-only grant at completion and panics if the
                // backend still maps one.
                assert_eq!(w.one().status, RSP_OKAY);
            }
            assert_eq!(w.back.cache().1, 0, "a read-only grant was cached persistently");
            assert_eq!(w.dom0.live_mappings(), 1, "only the ring may stay mapped");
            for t in 0..4u8 {
                let mut b = vec![0u8; 4096];
                w.disk.read_at(t as u64 * 8 * 512, &mut b).unwrap();
                assert_eq!(b, pattern(t, 4096));
            }
        }
    });
}

/// A NetBSD-like frontend: read-only write grants, no `feature-persistent`, 17 segments
/// in one read-only indirect page.
#[cfg(feature = "backend")]
#[test]
fn netbsd_style_17_segment_indirect_write_with_readonly_grants_is_served() {
    big_stack(|| {
        let mut w = WireB::new(RamDisk::new(4096), BackendConfig::default(), false, |f| f.readonly_writes = true);
        assert!(w.connected());
        let data = pattern(4, 17 * 4096);
        w.front.submit_indirect(&mut w.guest, 32, data.len(), Some(&data));
        assert_eq!(w.one().status, RSP_OKAY);
        let mut b = vec![0u8; data.len()];
        w.disk.read_at(32 * 512, &mut b).unwrap();
        assert!(b == data);
        assert_eq!(w.dom0.live_mappings(), 1);
    });
}

/// `physical-device` from the hotplug script: hex `MAJ:MIN` (Linux) or a decimal `dev_t`
/// (NetBSD's `stat -f %r`); both are understood, garbage is not.
#[cfg(feature = "backend")]
#[test]
fn physical_device_is_parsed_in_hex_and_decimal_dialects() {
    big_stack(|| {
        use xenblk::modes::backend::{PhysicalDevice, parse_physical_device};
        assert_eq!(parse_physical_device("fd:3"), Some(PhysicalDevice::MajorMinor(0xfd, 3)));
        assert_eq!(parse_physical_device("ca:10"), Some(PhysicalDevice::MajorMinor(0xca, 0x10)));
        assert_eq!(parse_physical_device("3588"), Some(PhysicalDevice::DevT(3588)));
        for bad in ["", "fd:", ":3", "xyz", "12:zz", "-1", "1:2:3"] {
            assert_eq!(parse_physical_device(bad), None, "{bad:?} accepted");
        }
        for (value, want) in [("2051", PhysicalDevice::DevT(2051)), ("8:3", PhysicalDevice::MajorMinor(8, 3))] {
            let hv = Hypervisor::new();
            let mut dom0 = hv.take_dom0().unwrap();
            let mut guest = hv.create_domain(256);
            let mut spec = VbdSpec::new(guest.id(), DomId::DOM0, DEVID);
            spec.physical_device = value.to_string();
            hv.add_vbd(&spec).unwrap();
            let mut back =
                Backend::probe(&mut dom0, &spec.backend_path(), BackendConfig::default(), RamDisk::new(64), 1).unwrap();
            let mut front = RawFrontend::new(&mut guest, &spec.frontend_path(), false);
            for _ in 0..5 {
                front.step(&mut guest);
                back.on_xenstore(&mut dom0);
            }
            assert_eq!(back.phase(), BackPhase::Connected);
            assert_eq!(back.physical_device(), Some(want), "{value}");
        }
    });
}

// ============================================================ 7. resume and migration

/// Migration to another backend domain with requests in flight whose pages the old
/// backend still maps (persistently): the frontend re-reads `backend`/`backend-id`, builds
/// new rings against the new domain, re-reads every feature (this host offers neither
/// persistence nor indirect), moves the data of still-mapped busy pages to fresh pages, and
/// re-issues every request. The old pages are freed once the old backend lets go.
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn migration_to_another_backend_domain_rebuilds_rereads_features_and_reissues() {
    big_stack(|| {
        let mut p = Pair::new(RamDisk::new(4096), FrontendConfig::default(), BackendConfig::default());
        assert!(p.front.negotiated().persistent);
        // Warm up: pages become persistently mapped by the old backend.
        for t in 0..4u64 {
            p.write(t * 8, &pattern(t as u8, 4096), 100 + t);
        }
        assert!(p.dom0.live_mappings() > 1);
        // Requests that reach the old ring but are never served: the old host freezes.
        for t in 0..4u64 {
            p.front
                .submit(&mut p.guest, Io::Write { sector: 64 + t * 8, data: &pattern(0x40 + t as u8, 4096) }, t)
                .unwrap();
        }
        p.front.kick(&mut p.guest);
        assert_eq!(p.front.in_flight(), 4);
        let old = p.back.take().unwrap();
        // The toolstack on the new host: fresh xenstore directories, a backend in another
        // domain, the same storage.
        p.hv.destroy_vbd(p.guest.id(), DomId::DOM0, DEVID).unwrap();
        let mut dom2 = p.hv.create_domain(1024);
        let spec2 = VbdSpec::new(p.guest.id(), dom2.id(), DEVID);
        p.hv.add_vbd(&spec2).unwrap();
        let bcfg2 = BackendConfig { persistent: false, max_indirect_segments: 0, ..Default::default() };
        let mut back2 = Box::new(Backend::probe(&mut dom2, &spec2.backend_path(), bcfg2, p.disk.clone(), 4).unwrap());
        p.front.resume(&mut p.guest).unwrap();
        assert_eq!(p.front.backend_id(), dom2.id());
        for _ in 0..20 {
            if dom2.poll_pending().watches {
                dom2.take_watch_events();
            }
            back2.on_xenstore(&mut dom2);
            back2.process(&mut dom2);
            if p.guest.poll_pending().watches {
                p.guest.take_watch_events();
            }
            p.front.on_xenstore(&mut p.guest);
            let done = &mut p.done;
            p.front.poll(&mut p.guest, |c| done.push((c.tag, c.status, Vec::new())));
        }
        assert_eq!(p.front.phase(), Phase::Connected);
        let neg = *p.front.negotiated();
        assert!(!neg.persistent, "persistence kept from the old host");
        assert_eq!(neg.indirect_segments, 0, "indirect limit kept from the old host");
        assert_eq!(p.front.stats().reissued, 4);
        for t in 0..4u64 {
            assert_eq!(p.status(t), Status::Ok, "request {t} after migration");
            let mut b = vec![0u8; 4096];
            p.disk.read_at((64 + t * 8) * 512, &mut b).unwrap();
            assert_eq!(b, pattern(0x40 + t as u8, 4096), "request {t} lost in migration");
        }
        assert_eq!(back2.stats().map_failures, 0, "the new backend was handed grants of the old one");
        assert!(p.front.reap(&mut p.guest) > 0, "the old backend's mappings should still pin pages");
        // The old host finally goes away: every page it pinned is released.
        let mut old = old;
        old.shutdown(&mut p.dom0);
        assert_eq!(p.dom0.live_mappings(), 0);
        assert_eq!(p.front.reap(&mut p.guest), 0, "pages still pinned after the old backend let go");
        // I/O keeps working against the new backend.
        p.front.submit(&mut p.guest, Io::Read { sector: 64, sectors: 8 }, 50).unwrap();
        p.front.kick(&mut p.guest);
        back2.process(&mut dom2);
        let mut got = None;
        p.front.poll(&mut p.guest, |c| {
            let mut d = vec![0u8; 4096];
            c.read_data(&mut d);
            got = Some((c.status, d));
        });
        assert_eq!(got, Some((Status::Ok, pattern(0x40, 4096))));
    });
}

/// Suspend/resume on the same host against a fresh backend instance with other features:
/// new rings, new event channel, every feature re-read.
#[cfg(all(feature = "frontend", feature = "backend"))]
#[test]
fn resume_against_a_fresh_backend_rereads_every_feature() {
    big_stack(|| {
        let disk = RamDisk::new(4096);
        disk.set_discard(true);
        let mut p = Pair::new(disk, FrontendConfig::default(), BackendConfig::default());
        let old_neg = *p.front.negotiated();
        assert!(old_neg.persistent && old_neg.discard);
        p.write(0, &pattern(1, 4096), 1);
        let mut old = p.back.take().unwrap();
        old.shutdown(&mut p.dom0);
        p.disk.set_discard(false);
        p.disk.set_flush(false);
        p.hv.add_vbd(&p.spec).unwrap();
        let bcfg = BackendConfig { persistent: false, ..Default::default() };
        p.back = Some(Box::new(Backend::probe(&mut p.dom0, &p.spec.backend_path(), bcfg, p.disk.clone(), 5).unwrap()));
        p.front.resume(&mut p.guest).unwrap();
        p.pump();
        assert_eq!(p.front.phase(), Phase::Connected);
        let neg = *p.front.negotiated();
        assert!(!neg.persistent && !neg.discard && !neg.flush, "features kept from before the resume: {neg:?}");
        assert_eq!(p.front.stats().connects, 2);
        assert_eq!(p.back().stats().connects, 1, "the fresh backend did not connect");
        assert_eq!(p.read(0, 4096, 2), pattern(1, 4096));
    });
}

/// NetBSD xbd grants the pages of write requests read-only (no persistence); Linux
/// blkfront grants them read-write. Our frontend follows its profile when persistence is
/// off: the grant table entries of a queued write show it.
#[cfg(feature = "frontend")]
#[test]
fn frontend_write_grants_are_readonly_only_in_the_netbsd_profile() {
    big_stack(|| {
        use xenblk::proto::grant::{GTF_PERMIT_ACCESS, GTF_READONLY, GTF_TYPE_MASK, GrantRef};
        let mut w = WireF::new(RamDisk::new(1024), |d, dir, disk| RawBackend::new(d, dir, disk, false));
        assert_eq!(w.front.phase(), Phase::Connected);
        assert!(!w.front.negotiated().persistent);
        let count = |w: &WireF| {
            let gt = w.guest.grant_table();
            let (mut ro, mut rw) = (0, 0);
            for r in 0..gt.len() {
                if let Some(e) = gt.read(GrantRef(r))
                    && e.flags & GTF_TYPE_MASK == GTF_PERMIT_ACCESS
                {
                    if e.flags & GTF_READONLY != 0 { ro += 1 } else { rw += 1 }
                }
            }
            (ro, rw)
        };
        let before = count(&w);
        w.front.submit(&mut w.guest, Io::Write { sector: 0, data: &pattern(1, 3 * 4096) }, 1).unwrap();
        let after = count(&w);
        let (ro, rw) = (after.0 - before.0, after.1 - before.1);
        if cfg!(feature = "ring-netbsd") {
            assert_eq!((ro, rw), (3, 0), "netbsd profile: write data must be granted read-only");
        } else {
            assert_eq!((ro, rw), (0, 3), "linux profile: write data is granted read-write");
        }
        w.pump();
        assert_eq!(w.status(1), Status::Ok);
        let mut b = vec![0u8; 3 * 4096];
        w.disk.read_at(0, &mut b).unwrap();
        assert_eq!(b, pattern(1, 3 * 4096));
    });
}
