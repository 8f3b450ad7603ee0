//! Xenstore: values, permissions, transactions, watches, quotas; toolstack helpers.

use xenblk::platform::{PlatformError, Tx, XenStore};
use xenblk::proto::grant::DomId;
use xenblk_sim::{Hypervisor, Perm, Perms, VbdSpec, XsLimits};

fn rd(d: &mut xenblk_sim::Dom, p: &str) -> Result<String, PlatformError> {
    d.read_string(Tx::NONE, p)
}

#[test]
fn read_write_directory_and_permissions() {
    let hv = Hypervisor::new();
    let mut a = hv.create_domain(4);
    let mut b = hv.create_domain(4);
    let ah = format!("/local/domain/{}", a.id().0);
    // Relative and absolute paths name the same node.
    a.write(Tx::NONE, "data/x", b"1").unwrap();
    assert_eq!(rd(&mut a, &format!("{ah}/data/x")).unwrap(), "1");
    let mut buf = [0u8; 8];
    assert_eq!(a.read(Tx::NONE, "data/x", &mut buf), Ok(1));
    assert_eq!(&buf[..1], b"1");
    assert_eq!(a.read(Tx::NONE, "data/x", &mut [0u8; 0]), Err(PlatformError::Invalid), "buffer too small");
    assert_eq!(a.read(Tx::NONE, "data/missing", &mut buf), Err(PlatformError::NotFound));
    // The home dir itself is dom0's: a guest can read, not write there.
    assert_eq!(a.write(Tx::NONE, "newkey", b"v"), Err(PlatformError::Denied));
    assert_eq!(rd(&mut a, "domid").unwrap(), a.id().0.to_string());
    // Another guest sees nothing of it; dom0 sees everything.
    assert_eq!(rd(&mut b, &format!("{ah}/data/x")), Err(PlatformError::Denied));
    assert_eq!(b.write(Tx::NONE, &format!("{ah}/data/y"), b"v"), Err(PlatformError::Denied));
    assert_eq!(hv.xs_read_string(&format!("{ah}/data/x")).unwrap(), "1");
    assert_eq!(rd(&mut a, "/local/domain/0/name"), Err(PlatformError::Denied));
    // The owner shares the node.
    let p = Perms::owned_by(a.id()).with(b.id(), Perm::Read);
    a.set_perms(Tx::NONE, "data/x", &p).unwrap();
    assert_eq!(rd(&mut b, &format!("{ah}/data/x")).unwrap(), "1");
    assert_eq!(b.write(Tx::NONE, &format!("{ah}/data/x"), b"2"), Err(PlatformError::Denied));
    assert_eq!(b.set_perms(Tx::NONE, &format!("{ah}/data/x"), &Perms::owned_by(b.id())), Err(PlatformError::Denied));
    // Children inherit at creation; a guest owns what it creates.
    a.write(Tx::NONE, "data/x/child", b"c").unwrap();
    assert_eq!(rd(&mut b, &format!("{ah}/data/x/child")).unwrap(), "c");
    assert_eq!(a.get_perms(Tx::NONE, "data/x/child").unwrap(), p);
    // Intermediate nodes are created empty.
    a.write(Tx::NONE, "data/p/q/r", b"deep").unwrap();
    assert_eq!(rd(&mut a, "data/p/q").unwrap(), "");
    assert_eq!(a.directory(Tx::NONE, "data").unwrap(), vec!["p".to_owned(), "x".to_owned()]);
    // Remove is recursive; removing a missing child of an existing node is fine.
    a.remove(Tx::NONE, "data/p").unwrap();
    assert_eq!(rd(&mut a, "data/p/q/r"), Err(PlatformError::NotFound));
    assert_eq!(a.remove(Tx::NONE, "data/p"), Ok(()));
    assert_eq!(a.remove(Tx::NONE, "data/p/q"), Err(PlatformError::NotFound));
    assert_eq!(a.write(Tx::NONE, "data/bad key", b""), Err(PlatformError::Invalid));
    assert_eq!(a.own_domid(), a.id());
}

#[test]
fn transactions_snapshot_and_conflict() {
    let hv = Hypervisor::new();
    let mut a = hv.create_domain(4);
    a.write(Tx::NONE, "data/k", b"0").unwrap();
    let t1 = a.transaction_start().unwrap();
    let t2 = a.transaction_start().unwrap();
    assert_ne!(t1, t2);
    // Both read and write the same node.
    assert_eq!(a.read_string(t1, "data/k").unwrap(), "0");
    assert_eq!(a.read_string(t2, "data/k").unwrap(), "0");
    a.write(t1, "data/k", b"1").unwrap();
    a.write(t2, "data/k", b"2").unwrap();
    // Uncommitted writes are invisible outside.
    assert_eq!(rd(&mut a, "data/k").unwrap(), "0");
    assert_eq!(a.read_string(t1, "data/k").unwrap(), "1");
    a.transaction_end(t1, true).unwrap();
    assert_eq!(a.transaction_end(t2, true), Err(PlatformError::Again));
    assert_eq!(rd(&mut a, "data/k").unwrap(), "1");
    // A snapshot does not see later outside writes; disjoint transactions both commit.
    a.write(Tx::NONE, "data/m", b"0").unwrap();
    let t3 = a.transaction_start().unwrap();
    let t4 = a.transaction_start().unwrap();
    hv.xs_write(&format!("/local/domain/{}/data/k", a.id().0), "outside").unwrap();
    assert_eq!(a.read_string(t3, "data/k").unwrap(), "1");
    assert_eq!(a.transaction_end(t3, true), Err(PlatformError::Again), "t3 read a node changed since its start");
    a.write(t4, "data/m", b"4").unwrap();
    a.transaction_end(t4, true).unwrap();
    assert_eq!(rd(&mut a, "data/m").unwrap(), "4");
    // Abort discards; unknown and foreign ids are refused.
    let t5 = a.transaction_start().unwrap();
    a.write(t5, "data/m", b"5").unwrap();
    a.remove(t5, "data/k").unwrap();
    a.transaction_end(t5, false).unwrap();
    assert_eq!(rd(&mut a, "data/m").unwrap(), "4");
    assert_eq!(a.transaction_end(t5, true), Err(PlatformError::NotFound));
    let mut b = hv.create_domain(4);
    let t6 = a.transaction_start().unwrap();
    assert_eq!(b.transaction_end(t6, true), Err(PlatformError::NotFound));
    assert_eq!(b.read_string(t6, "data"), Err(PlatformError::NotFound));
    // Creating and removing in one transaction commits as a whole.
    a.write(t6, "data/new/a", b"x").unwrap();
    a.remove(t6, "data/m").unwrap();
    a.transaction_end(t6, true).unwrap();
    assert_eq!(rd(&mut a, "data/new/a").unwrap(), "x");
    assert_eq!(rd(&mut a, "data/m"), Err(PlatformError::NotFound));
    assert!(a.directory(Tx::NONE, "data").unwrap().contains(&"new".to_owned()));
}

#[test]
fn watches_fire_at_registration_and_coalesce() {
    let hv = Hypervisor::new();
    let mut a = hv.create_domain(4);
    let mut back = hv.take_dom0().unwrap();
    let path = format!("/local/domain/{}/data/state", a.id().0);
    back.watch(&path, 7).unwrap();
    let r = back.poll_pending();
    assert!(r.watches);
    assert_eq!(back.take_watch_events(), vec![(path.clone(), 7)]);
    assert!(!back.poll_pending().watches);
    // Ten writes, one pending event.
    for i in 0..10 {
        a.write(Tx::NONE, "data/state", i.to_string().as_bytes()).unwrap();
    }
    assert_eq!(back.take_watch_events(), vec![(path.clone(), 7)]);
    let s = back.stats();
    assert_eq!((s.watch_events, s.watch_coalesced), (2, 9));
    // Changes below the path fire; siblings do not.
    a.write(Tx::NONE, "data/state/sub", b"x").unwrap();
    a.write(Tx::NONE, "data/statex", b"x").unwrap();
    assert_eq!(back.take_watch_events(), vec![(format!("{path}/sub"), 7)]);
    // A second token on the same path is a separate watch.
    back.watch(&path, 8).unwrap();
    a.write(Tx::NONE, "data/state", b"z").unwrap();
    let mut ev = back.take_watch_events();
    ev.sort_by_key(|e| e.1);
    assert_eq!(ev, vec![(path.clone(), 7), (path.clone(), 8)]);
    assert_eq!(back.watch(&path, 8), Err(PlatformError::Invalid), "duplicate");
    back.unwatch(&path, 8).unwrap();
    assert_eq!(back.unwatch(&path, 8), Err(PlatformError::NotFound));
    // Removing a parent fires the watch set below it.
    // (The guest owns `data`: removal needs write on the node only.)
    a.remove(Tx::NONE, "data").unwrap();
    assert_eq!(back.take_watch_events(), vec![(path.clone(), 7)]);
    // Transactions fire at commit only.
    hv.xs_write(&format!("/local/domain/{}/data", a.id().0), "").unwrap();
    hv.xs_set_perms(&format!("/local/domain/{}/data", a.id().0), &Perms::owned_by(a.id())).unwrap();
    back.take_watch_events();
    let t = a.transaction_start().unwrap();
    a.write(t, "data/state", b"t").unwrap();
    assert!(back.take_watch_events().is_empty());
    a.transaction_end(t, true).unwrap();
    assert_eq!(back.take_watch_events(), vec![(path.clone(), 7)]);
    // A guest's relative watch reports relative paths, and only for nodes it may read.
    a.watch("data", 1).unwrap();
    assert_eq!(a.take_watch_events(), vec![("data".to_owned(), 1)]);
    a.write(Tx::NONE, "data/q", b"1").unwrap();
    assert_eq!(a.take_watch_events(), vec![("data/q".to_owned(), 1)]);
    let mut other = hv.create_domain(4);
    other.watch(&path, 3).unwrap();
    other.take_watch_events();
    a.write(Tx::NONE, "data/state", b"secret").unwrap();
    assert!(other.take_watch_events().is_empty(), "no event for an unreadable node");
}

#[test]
fn watch_event_wakes_a_waiter() {
    let hv = Hypervisor::new();
    let mut a = hv.create_domain(4);
    let mut b = hv.create_domain(4);
    let p = format!("/local/domain/{}/data/flag", a.id().0);
    a.write(Tx::NONE, "data/flag", b"0").unwrap();
    a.set_perms(Tx::NONE, "data/flag", &Perms::owned_by(a.id()).with(b.id(), Perm::Read)).unwrap();
    b.watch(&p, 1).unwrap();
    b.take_watch_events();
    let t = std::thread::spawn(move || {
        let r = b.wait(Some(std::time::Duration::from_secs(20)));
        (r, b.take_watch_events())
    });
    std::thread::sleep(std::time::Duration::from_millis(30));
    a.write(Tx::NONE, "data/flag", b"1").unwrap();
    let (r, ev) = t.join().unwrap();
    assert!(r.watches && !r.timed_out);
    assert_eq!(ev, vec![(p, 1)]);
}

#[test]
fn quotas() {
    let hv = Hypervisor::with_config(xenblk_sim::HvConfig {
        xs_limits: XsLimits { nodes_per_domain: 50, ..XsLimits::default() },
        ..Default::default()
    })
    .unwrap();
    let mut a = hv.create_domain(4);
    let base = hv.xs_nodes_owned(a.id());
    let mut n = 0;
    let err = loop {
        match a.write(Tx::NONE, &format!("data/n{n}"), b"v") {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1000);
    };
    assert_eq!(err, PlatformError::NoSpace);
    assert_eq!(base + n, 50);
    // Removing gives quota back.
    a.remove(Tx::NONE, "data/n0").unwrap();
    a.write(Tx::NONE, "data/again", b"v").unwrap();
    // Values are capped.
    assert_eq!(a.write(Tx::NONE, "data/n1", &[b'x'; 4097]), Err(PlatformError::NoSpace));
    a.write(Tx::NONE, "data/n1", &[b'x'; 4096]).unwrap();
    // Watches and transactions per domain.
    for i in 0..128 {
        a.watch("data", i).unwrap();
    }
    assert_eq!(a.watch("data", 999), Err(PlatformError::NoSpace));
    let txs: Vec<_> = (0..10).map(|_| a.transaction_start().unwrap()).collect();
    assert_eq!(a.transaction_start(), Err(PlatformError::NoSpace));
    for t in txs {
        a.transaction_end(t, false).unwrap();
    }
    // Coalescing bounds the queue no matter how much is written.
    let ev = a.take_watch_events();
    assert_eq!(ev.len(), 128);
    for i in 0..1000 {
        a.write(Tx::NONE, "data/n1", i.to_string().as_bytes()).unwrap();
    }
    assert_eq!(a.take_watch_events().len(), 128);
}

#[test]
fn add_vbd_writes_the_toolstack_keys() {
    let hv = Hypervisor::new();
    let mut back = hv.take_dom0().unwrap();
    let mut guest = hv.create_domain(4);
    let spec = VbdSpec::new(guest.id(), back.id(), 51712);
    hv.add_vbd(&spec).unwrap();
    let fe = spec.frontend_path();
    let be = spec.backend_path();
    assert_eq!(fe, format!("/local/domain/{}/device/vbd/51712", guest.id().0));
    assert_eq!(be, format!("/local/domain/0/backend/vbd/{}/51712", guest.id().0));
    let r = |k: &str| hv.xs_read_string(k).unwrap();
    assert_eq!(r(&format!("{fe}/backend")), be);
    assert_eq!(r(&format!("{fe}/backend-id")), "0");
    assert_eq!(r(&format!("{fe}/state")), "1");
    assert_eq!(r(&format!("{fe}/virtual-device")), "51712");
    assert_eq!(r(&format!("{fe}/device-type")), "disk");
    assert_eq!(r(&format!("{fe}/trusted")), "1");
    for (k, v) in [
        ("frontend", fe.as_str()),
        ("frontend-id", &guest.id().0.to_string()),
        ("online", "1"),
        ("removable", "0"),
        ("bootable", "1"),
        ("state", "1"),
        ("dev", "xvda"),
        ("type", "phy"),
        ("mode", "w"),
        ("hotplug-status", "connected"),
        ("discard-enable", "1"),
    ] {
        assert_eq!(r(&format!("{be}/{k}")), v, "{k}");
    }
    assert!(hv.xs_exists(&format!("{be}/params")));
    assert!(hv.xs_exists(&format!("{be}/physical-device")));
    assert!(hv.xs_exists(&format!("{be}/physical-device-path")));
    // Permissions: the frontend owns its dir and may write its state; it reads the backend's.
    assert_eq!(hv.xs_get_perms(&fe).unwrap(), Perms::owned_by(guest.id()).with(back.id(), Perm::Read));
    assert_eq!(hv.xs_get_perms(&be).unwrap(), Perms::owned_by(back.id()).with(guest.id(), Perm::Read));
    guest.write(Tx::NONE, &format!("{fe}/state"), b"3").unwrap();
    assert_eq!(guest.read_string(Tx::NONE, &format!("{be}/state")).unwrap(), "1");
    assert_eq!(guest.write(Tx::NONE, &format!("{be}/state"), b"4"), Err(PlatformError::Denied));
    back.write(Tx::NONE, &format!("{be}/state"), b"2").unwrap();
    // A third domain sees neither.
    let mut other = hv.create_domain(4);
    assert_eq!(other.read_string(Tx::NONE, &format!("{fe}/state")), Err(PlatformError::Denied));
    assert_eq!(other.read_string(Tx::NONE, &format!("{be}/state")), Err(PlatformError::Denied));
    // Detach.
    hv.remove_vbd(guest.id(), back.id(), 51712).unwrap();
    assert_eq!(r(&format!("{be}/online")), "0");
    assert_eq!(r(&format!("{be}/state")), "5");
    hv.destroy_vbd(guest.id(), back.id(), 51712).unwrap();
    assert!(!hv.xs_exists(&fe) && !hv.xs_exists(&be));
    // Driver domain backend: the backend dir belongs to it, the parents to dom0.
    let mut drv = hv.create_domain(4);
    let spec = VbdSpec { mode: "r".into(), hotplug: false, ..VbdSpec::new(guest.id(), drv.id(), 51728) };
    hv.add_vbd(&spec).unwrap();
    let be = spec.backend_path();
    assert!(!hv.xs_exists(&format!("{be}/hotplug-status")));
    drv.write(Tx::NONE, &format!("{be}/feature-persistent"), b"1").unwrap();
    assert_eq!(drv.directory(Tx::NONE, "backend/vbd").unwrap(), vec![guest.id().0.to_string()]);
    hv.run_hotplug(&spec).unwrap();
    assert_eq!(r(&format!("{be}/hotplug-status")), "connected");
    assert_eq!(r(&format!("{be}/mode")), "r");
}

#[test]
fn destroy_removes_the_domains_tree_and_fires_watches() {
    let hv = Hypervisor::new();
    let mut back = hv.take_dom0().unwrap();
    let mut guest = hv.create_domain(4);
    let spec = VbdSpec::new(guest.id(), DomId::DOM0, 51712);
    hv.add_vbd(&spec).unwrap();
    let st = format!("{}/state", spec.frontend_path());
    back.watch(&st, 1).unwrap();
    back.watch("@releaseDomain", 2).unwrap();
    back.take_watch_events();
    guest.watch("data", 5).unwrap();
    assert!(hv.destroy_domain(guest.id()));
    let mut ev = back.take_watch_events();
    ev.sort_by_key(|e| e.1);
    assert_eq!(ev, vec![(st.clone(), 1), ("@releaseDomain".to_owned(), 2)]);
    assert!(!hv.xs_exists(&format!("/local/domain/{}", guest.id().0)));
    assert_eq!(guest.write(Tx::NONE, "data/x", b"1"), Err(PlatformError::NotFound));
    // The backend dir stays for the backend to clean up.
    assert!(hv.xs_exists(&spec.backend_path()));
}
