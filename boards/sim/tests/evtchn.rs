//! Event channels and the domain wait loop.

use std::thread;
use std::time::{Duration, Instant};

use xenblk::platform::{EventChannels, PlatformError, Port};
use xenblk::proto::grant::DomId;
use xenblk_sim::{Dom, FaultPlan, Hypervisor, Trigger};

/// A connected pair: (guest, guest port, backend, backend port). The backend's bind leaves
/// its own port pending once (Xen does this); it is drained here.
fn pair() -> (Hypervisor, Dom, Port, Dom, Port) {
    let hv = Hypervisor::new();
    let mut back = hv.take_dom0().unwrap();
    let mut guest = hv.create_domain(16);
    let gp = guest.alloc_unbound(back.id()).unwrap();
    let bp = back.bind_interdomain(guest.id(), gp).unwrap();
    let r = back.poll_pending();
    assert!(r.ports.contains(bp), "bind sets the new port pending");
    assert_eq!(r.ports.len(), 1);
    (hv, guest, gp, back, bp)
}

#[test]
fn notify_wakes_a_blocked_thread() {
    let (_hv, guest, gp, mut back, bp) = pair();
    let t = thread::spawn(move || {
        let r = guest.wait(Some(Duration::from_secs(20)));
        (r, guest)
    });
    // Let it block.
    thread::sleep(Duration::from_millis(50));
    back.notify(bp).unwrap();
    let (r, guest) = t.join().unwrap();
    assert!(!r.timed_out);
    assert!(r.ports.contains(gp));
    assert_eq!(r.ports.iter().collect::<Vec<_>>(), vec![gp]);
    let g = guest.stats();
    assert_eq!(g.events, 1);
    assert!(g.blocks >= 1 && g.wakeups >= 1, "{g:?}");
    assert_eq!(back.stats().notifies, 1);
}

#[test]
fn notifies_coalesce_into_one_pending_bit_and_count_each() {
    let (_hv, guest, gp, mut back, bp) = pair();
    for _ in 0..3 {
        back.notify(bp).unwrap();
    }
    let r = guest.poll_pending();
    assert_eq!(r.ports.iter().collect::<Vec<_>>(), vec![gp]);
    assert!(guest.poll_pending().is_empty(), "consumed");
    assert_eq!(guest.stats().events, 3);
    assert_eq!(guest.stats().blocks, 0, "nobody blocked, nobody woken");
    // Both directions.
    let mut guest = guest;
    guest.notify(gp).unwrap();
    assert!(back.poll_pending().ports.contains(bp));
}

#[test]
fn wait_times_out() {
    let (_hv, guest, _gp, _back, _bp) = pair();
    let t0 = Instant::now();
    let r = guest.wait(Some(Duration::from_millis(30)));
    assert!(r.timed_out && r.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(30));
}

#[test]
fn unbind_and_bad_ports() {
    let (_hv, mut guest, gp, mut back, bp) = pair();
    assert_eq!(back.notify(Port(999)), Err(PlatformError::NotFound));
    assert_eq!(back.notify(Port(0)), Err(PlatformError::NotFound));
    guest.unbind(gp);
    // The backend's end is unbound now: notify is a silent no-op, as in Xen.
    assert_eq!(back.notify(bp), Ok(()));
    assert_eq!(back.stats().notifies_unbound, 1);
    assert!(guest.poll_pending().is_empty());
    assert_eq!(guest.notify(gp), Err(PlatformError::NotFound));
    // Binding: only the named remote may bind, only an unbound port.
    let hv = guest.hypervisor();
    let mut other = hv.create_domain(4);
    let p = guest.alloc_unbound(back.id()).unwrap();
    assert_eq!(other.bind_interdomain(guest.id(), p), Err(PlatformError::Denied));
    assert_eq!(back.bind_interdomain(guest.id(), Port(77)), Err(PlatformError::NotFound));
    assert_eq!(back.bind_interdomain(DomId(99), p), Err(PlatformError::NotFound));
    let bp2 = back.bind_interdomain(guest.id(), p).unwrap();
    assert_eq!(back.bind_interdomain(guest.id(), p), Err(PlatformError::Invalid));
    back.notify(bp2).unwrap();
    assert!(guest.poll_pending().ports.contains(p));
}

#[test]
fn destroy_wakes_the_domain_and_its_peers() {
    let (hv, guest, gp, back, bp) = pair();
    let gid = guest.id();
    let tg = thread::spawn(move || guest.wait(None));
    let tb = thread::spawn(move || {
        let r = back.wait(Some(Duration::from_secs(20)));
        (r, back)
    });
    thread::sleep(Duration::from_millis(50));
    assert!(hv.destroy_domain(gid));
    let rg = tg.join().unwrap();
    assert!(rg.destroyed);
    let (rb, mut back) = tb.join().unwrap();
    assert!(rb.closed.contains(bp), "{rb:?}");
    // The peer's port is unbound now.
    assert_eq!(back.notify(bp), Ok(()));
    assert_eq!(back.stats().notifies_unbound, 1);
    let _ = gp;
}

#[test]
fn dropped_notifications_and_kicks() {
    let (_hv, guest, _gp, mut back, bp) = pair();
    back.set_fault_plan(FaultPlan { drop_notify: Trigger::EveryNth(2), ..FaultPlan::none() });
    back.notify(bp).unwrap();
    assert!(!guest.poll_pending().ports.is_empty());
    back.notify(bp).unwrap();
    assert!(guest.poll_pending().ports.is_empty(), "the second notify was dropped");
    let s = back.stats();
    assert_eq!((s.notifies, s.notifies_dropped), (1, 1));
    let k = guest.kicker();
    let t = thread::spawn(move || guest.wait(None));
    thread::sleep(Duration::from_millis(20));
    k.kick();
    assert!(t.join().unwrap().kicked);
}

#[test]
fn many_pairs_ping_pong() {
    // 4 guests and one backend thread, streaming notifications both ways.
    let hv = Hypervisor::new();
    let mut back = hv.take_dom0().unwrap();
    let mut guests = Vec::new();
    let mut bports = Vec::new();
    for _ in 0..4 {
        let mut g = hv.create_domain(4);
        let gp = g.alloc_unbound(DomId::DOM0).unwrap();
        bports.push(back.bind_interdomain(g.id(), gp).unwrap());
        guests.push((g, gp));
    }
    back.poll_pending();
    const N: u32 = 2000;
    let handles: Vec<_> = guests
        .into_iter()
        .map(|(mut g, gp)| {
            thread::spawn(move || {
                for _ in 0..N {
                    g.notify(gp).unwrap();
                    loop {
                        let r = g.wait(Some(Duration::from_secs(20)));
                        assert!(!r.timed_out);
                        if r.ports.contains(gp) {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    let mut answered = 0;
    while answered < 4 * N {
        let r = back.wait(Some(Duration::from_secs(20)));
        assert!(!r.timed_out);
        for p in r.ports.iter() {
            back.notify(p).unwrap();
            answered += 1;
        }
    }
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn ports_in_different_words_are_all_reported_once() {
    // 150 channels from one guest to dom0: the guest's ports span three 64-port words of
    // its pending set (and of the selector word that summarises them).
    let hv = Hypervisor::new();
    let mut back = hv.take_dom0().unwrap();
    let mut guest = hv.create_domain(16);
    let mut pairs = Vec::new();
    for _ in 0..150 {
        let gp = guest.alloc_unbound(back.id()).unwrap();
        let bp = back.bind_interdomain(guest.id(), gp).unwrap();
        pairs.push((gp, bp));
    }
    back.poll_pending();
    assert!(pairs.iter().any(|p| p.0.0 >= 128), "ports reach a third word: {:?}", pairs.last());
    let picked: Vec<(Port, Port)> = pairs.iter().copied().step_by(37).collect();
    for &(_, bp) in &picked {
        back.notify(bp).unwrap();
    }
    let r = guest.poll_pending();
    let mut want: Vec<u32> = picked.iter().map(|p| p.0.0).collect();
    want.sort_unstable();
    assert_eq!(r.ports.iter().map(|p| p.0).collect::<Vec<_>>(), want);
    assert!(guest.poll_pending().is_empty(), "every word consumed, selector cleared");
    assert!(!guest.has_pending());
    // A notify after the poll is seen by the next one (and by has_pending before it).
    back.notify(picked[1].1).unwrap();
    assert!(guest.has_pending());
    assert_eq!(guest.poll_pending().ports.iter().collect::<Vec<_>>(), vec![picked[1].0]);
}
