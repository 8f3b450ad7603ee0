//! The xenbus life of a device, both roles driven step by step in one thread on the sim:
//! connect, negotiation, close from either side, front-driven re-init, and a backend
//! restart with in-flight requests re-issued.
#![cfg(all(feature = "frontend", feature = "backend"))]

use xenblk::modes::backend::{BackPhase, Backend, BackendConfig};
use xenblk::modes::frontend::{Completion, Frontend, FrontendConfig, Io, Phase, Status};
use xenblk::proto::grant::DomId;
use xenblk::proto::xenbus::XenbusState;
use xenblk_sim::{Dom, Hypervisor, RamDisk, VbdSpec};

struct Pair {
    hv: Hypervisor,
    dom0: Dom,
    guest: Dom,
    spec: VbdSpec,
    front: Frontend,
    back: Option<Backend<RamDisk>>,
    disk: RamDisk,
    done: Vec<(u64, Status, Vec<u8>)>,
}

impl Pair {
    fn new(fcfg: FrontendConfig, bcfg: BackendConfig) -> Pair {
        let hv = Hypervisor::new();
        let mut dom0 = hv.take_dom0().unwrap();
        let mut guest = hv.create_domain(1024);
        let spec = VbdSpec::new(guest.id(), DomId::DOM0, 51712);
        hv.add_vbd(&spec).unwrap();
        let disk = RamDisk::new(2048);
        let back = Backend::probe(&mut dom0, &spec.backend_path(), bcfg, disk.clone(), 9).unwrap();
        let front = Frontend::attach(&mut guest, &spec.frontend_path(), fcfg, 1).unwrap();
        let mut p = Pair { hv, dom0, guest, spec, front, back: Some(back), disk, done: Vec::new() };
        p.pump();
        p
    }

    /// Delivers watches and events on both sides until nothing changes.
    fn pump(&mut self) {
        for _ in 0..20 {
            let wb = self.dom0.poll_pending();
            if wb.watches {
                self.dom0.take_watch_events();
            }
            if let Some(b) = self.back.as_mut() {
                b.on_xenstore(&mut self.dom0);
                b.process(&mut self.dom0);
            }
            let wf = self.guest.poll_pending();
            if wf.watches {
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

    fn back_state(&self) -> XenbusState {
        XenbusState::parse(&self.hv.xs_read(&format!("{}/state", self.spec.backend_path())).unwrap()).unwrap()
    }
    fn front_state(&self) -> XenbusState {
        XenbusState::parse(&self.hv.xs_read(&format!("{}/state", self.spec.frontend_path())).unwrap()).unwrap()
    }
}

fn pattern(tag: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

#[test]
fn connect_negotiates_and_writes_every_key() {
    let p = Pair::new(FrontendConfig::default(), BackendConfig::default());
    assert_eq!(p.front.phase(), Phase::Connected);
    assert_eq!(p.back.as_ref().unwrap().phase(), BackPhase::Connected);
    assert_eq!((p.front_state(), p.back_state()), (XenbusState::Connected, XenbusState::Connected));
    assert!(p.front.negotiated().persistent);
    assert_eq!(p.front.negotiated().sectors, 2048);
    let fe = p.spec.frontend_path();
    // Always `protocol`; a one-page ring as plain `ring-ref`, never `ring-page-order=0`.
    assert_eq!(p.hv.xs_read_string(&format!("{fe}/protocol")).unwrap(), xenblk::proto::Protocol::native().as_str());
    assert!(p.hv.xs_exists(&format!("{fe}/ring-ref")));
    assert!(!p.hv.xs_exists(&format!("{fe}/ring-page-order")));
    assert_eq!(p.hv.xs_read_string(&format!("{fe}/feature-persistent")).unwrap(), "1");
    let be = p.spec.backend_path();
    for k in ["sectors", "info", "sector-size", "physical-sector-size", "feature-persistent", "feature-flush-cache"] {
        assert!(p.hv.xs_exists(&format!("{be}/{k}")), "backend did not write {k}");
    }
}

#[test]
fn persistence_is_decided_locally_on_each_side() {
    for (f, b) in [(true, true), (true, false), (false, true), (false, false)] {
        let fcfg = FrontendConfig { persistent: f, ..Default::default() };
        let bcfg = BackendConfig { persistent: b, ..Default::default() };
        let p = Pair::new(fcfg, bcfg);
        // Each side advertises its own willingness, not the result.
        assert_eq!(
            p.hv.xs_read_string(&format!("{}/feature-persistent", p.spec.frontend_path())).unwrap(),
            if f { "1" } else { "0" }
        );
        assert_eq!(
            p.hv.xs_read_string(&format!("{}/feature-persistent", p.spec.backend_path())).unwrap(),
            if b { "1" } else { "0" }
        );
        assert_eq!(p.front.negotiated().persistent, f && b);
        assert_eq!(p.back.as_ref().unwrap().negotiated().unwrap().persistent, f && b);
    }
}

#[test]
fn frontend_close_unmaps_before_backend_reports_closed() {
    let mut p = Pair::new(FrontendConfig::default(), BackendConfig::default());
    p.front.submit(&mut p.guest, Io::Write { sector: 0, data: &pattern(1, 8192) }, 1).unwrap();
    p.pump();
    assert!(p.dom0.live_mappings() > 0);
    p.front.close(&mut p.guest);
    p.pump();
    assert_eq!(p.front.phase(), Phase::Closed);
    assert_eq!(p.back_state(), XenbusState::Closed);
    assert_eq!(p.dom0.live_mappings(), 0, "backend Closed with grants still mapped");
    // A user close is final until reopen.
    p.pump();
    assert_eq!(p.front.phase(), Phase::Closed);
    p.front.reopen(&mut p.guest);
    p.pump();
    assert_eq!(p.front.phase(), Phase::Connected, "front-driven re-init did not reconnect");
    p.front.submit(&mut p.guest, Io::Read { sector: 0, sectors: 16 }, 2).unwrap();
    p.pump();
    let r = p.done.iter().find(|d| d.0 == 2).expect("read after reconnect");
    assert_eq!((r.1, &r.2), (Status::Ok, &pattern(1, 8192)));
}

#[test]
fn toolstack_detach_closes_and_removes() {
    let mut p = Pair::new(FrontendConfig::default(), BackendConfig::default());
    p.hv.remove_vbd(p.guest.id(), DomId::DOM0, 51712).unwrap();
    p.pump();
    assert_eq!(p.front.phase(), Phase::Closed);
    assert_eq!(p.back.as_ref().unwrap().phase(), BackPhase::Removed);
    assert_eq!(p.dom0.live_mappings(), 0);
    assert_eq!(
        p.front.submit(&mut p.guest, Io::Read { sector: 0, sectors: 1 }, 3),
        Err(xenblk::modes::frontend::SubmitError::NotConnected)
    );
}

/// A guest destroyed without closing (xl destroy, crash): the toolstack removes both
/// directories. The backend must let go of the ring and every mapping (else the domain stays a
/// zombie and a userspace daemon keeps the disk open), and report Removed.
#[test]
fn guest_destroyed_without_close_releases_everything() {
    let mut p = Pair::new(FrontendConfig::default(), BackendConfig::default());
    p.front.submit(&mut p.guest, Io::Write { sector: 0, data: &pattern(3, 8192) }, 1).unwrap();
    p.pump();
    assert_eq!(p.back.as_ref().unwrap().phase(), BackPhase::Connected);
    assert!(p.dom0.live_mappings() > 0);
    p.hv.destroy_vbd(p.guest.id(), DomId::DOM0, 51712).unwrap();
    // Only the backend runs now: the frontend's domain is gone.
    for _ in 0..3 {
        p.dom0.poll_pending();
        p.dom0.take_watch_events();
        let b = p.back.as_mut().unwrap();
        b.on_xenstore(&mut p.dom0);
        b.process(&mut p.dom0);
    }
    assert_eq!(p.back.as_ref().unwrap().phase(), BackPhase::Removed);
    assert_eq!(p.dom0.live_mappings(), 0, "grants of a destroyed guest still mapped");
    // The removed backend directory was not recreated by a state write.
    assert!(p.hv.xs_read(&format!("{}/state", p.spec.backend_path())).is_err(), "backend dir recreated");
}

fn submit_five(p: &mut Pair) {
    for t in 0..5u8 {
        p.front.submit(&mut p.guest, Io::Write { sector: t as u64 * 16, data: &pattern(t, 4096) }, t as u64).unwrap();
    }
    p.front.kick(&mut p.guest);
    assert_eq!(p.front.in_flight(), 5);
}

fn check_five(p: &Pair) {
    assert_eq!(p.done.len(), 5);
    assert!(p.done.iter().all(|d| d.1 == Status::Ok));
    for t in 0..5u8 {
        let mut b = vec![0u8; 4096];
        p.disk.read_at(t as u64 * 16 * 512, &mut b).unwrap();
        assert_eq!(b, pattern(t, 4096), "write {t} lost across the restart");
    }
}

#[test]
fn backend_restart_reissues_in_flight_requests() {
    let mut p = Pair::new(FrontendConfig::default(), BackendConfig::default());
    // Requests reach the ring, but the backend dies before serving them; the toolstack
    // marks it Closed and starts a new instance on the same disk.
    submit_five(&mut p);
    let mut old = p.back.take().unwrap();
    old.shutdown(&mut p.dom0);
    drop(old);
    p.hv.xs_write(&format!("{}/state", p.spec.backend_path()), "6").unwrap();
    p.pump();
    assert_eq!(p.front.phase(), Phase::WaitBackend, "frontend should wait for the backend to come back");
    assert_eq!(p.front.in_flight(), 5, "in-flight requests dropped at disconnect");
    let nb = Backend::probe(&mut p.dom0, &p.spec.backend_path(), BackendConfig::default(), p.disk.clone(), 10).unwrap();
    p.back = Some(nb);
    p.pump();
    assert_eq!(p.front.phase(), Phase::Connected);
    assert_eq!(p.front.stats().connects, 2);
    assert_eq!(p.front.stats().reissued, 5, "in-flight requests were not re-issued");
    check_five(&p);
}

#[test]
fn backend_rebind_attaches_at_the_live_ring() {
    let mut p = Pair::new(FrontendConfig::default(), BackendConfig::default());
    submit_five(&mut p);
    let mut old = p.back.take().unwrap();
    old.shutdown(&mut p.dom0);
    drop(old);
    // A new instance while the frontend stays Connected: it re-reads the frontend's keys,
    // maps the same ring and serves what is waiting there.
    let nb = Backend::probe(&mut p.dom0, &p.spec.backend_path(), BackendConfig::default(), p.disk.clone(), 10).unwrap();
    p.back = Some(nb);
    p.pump();
    assert_eq!(p.front.phase(), Phase::Connected);
    check_five(&p);
}

#[test]
fn resize_is_picked_up_by_a_connected_frontend() {
    let mut p = Pair::new(FrontendConfig::default(), BackendConfig::default());
    p.disk.set_sectors(4096).unwrap();
    p.back.as_mut().unwrap().resize(&mut p.dom0).unwrap();
    p.pump();
    assert_eq!(p.front.negotiated().sectors, 4096);
    p.front.submit(&mut p.guest, Io::Write { sector: 4000, data: &pattern(9, 4096) }, 1).unwrap();
    p.pump();
    assert_eq!(p.done[0].1, Status::Ok);
}

#[test]
fn flush_and_barrier_reach_the_storage() {
    let mut p = Pair::new(FrontendConfig::default(), BackendConfig::default());
    assert!(p.front.negotiated().flush && p.front.negotiated().barrier);
    let before = p.disk.stats().flushes;
    p.front.submit(&mut p.guest, Io::Write { sector: 0, data: &pattern(3, 4096) }, 1).unwrap();
    p.front.submit(&mut p.guest, Io::Flush, 2).unwrap();
    p.front.submit(&mut p.guest, Io::Barrier { sector: 8, data: &pattern(4, 4096) }, 3).unwrap();
    p.pump();
    assert!(p.done.iter().all(|d| d.1 == Status::Ok));
    // One flush for FLUSH_DISKCACHE, one before and one after the barrier write.
    assert_eq!(p.disk.stats().flushes - before, 3);
}
