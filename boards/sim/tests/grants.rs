//! Grant table, grant mapping and grant copy.

use std::sync::atomic::Ordering;

use xenblk::platform::{CopyOp, CopyPtr, GrantMapper, Grants, MapRequest, Mapping, Pages};
use xenblk::proto::grant::{
    DomId, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING, GntStatus, GrantRef, RevokeError,
};
use xenblk_sim::{Dom, FaultPlan, Hypervisor, Trigger};

fn setup() -> (Hypervisor, Dom, Dom) {
    let hv = Hypervisor::new();
    let back = hv.take_dom0().unwrap();
    let guest = hv.create_domain(256);
    (hv, back, guest)
}

fn flags(d: &Dom, r: GrantRef) -> u16 {
    d.grant_table().read(r).unwrap().flags
}

fn map1(b: &mut Dom, dom: DomId, gref: GrantRef, readonly: bool) -> Result<Mapping, GntStatus> {
    let mut out = [Err(GntStatus::GeneralError)];
    b.map_batch(dom, &[MapRequest { gref, readonly }], &mut out);
    out[0]
}

fn unmap1(b: &mut Dom, m: Mapping) -> GntStatus {
    let mut st = [GntStatus::GeneralError];
    b.unmap_batch(&[m], &mut st);
    st[0]
}

#[test]
fn grant_map_data_both_ways_unmap_revoke() {
    let (_hv, mut back, mut guest) = setup();
    let page = guest.alloc_page().unwrap();
    page.mem.write_bytes(100, b"from the guest");
    let r = guest.grant(page.frame, back.id(), false).unwrap();
    assert!(r.0 >= 8, "refs 0..8 are reserved");
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS);
    assert!(!guest.is_mapped(r));

    let m = map1(&mut back, guest.id(), r, false).unwrap();
    assert_eq!(m.mem.len(), 4096);
    let mut b = [0u8; 14];
    m.mem.read_bytes(100, &mut b);
    assert_eq!(&b, b"from the guest");
    m.mem.write_bytes(0, b"from the backend");
    let mut c = [0u8; 16];
    page.mem.read_bytes(0, &mut c);
    assert_eq!(&c, b"from the backend");
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
    assert!(guest.is_mapped(r));

    // XSA-396: revocation fails while mapped, and the entry stays granted.
    assert_eq!(guest.end_access(r), Err(RevokeError::InUse));
    assert_eq!(flags(&guest, r) & GTF_PERMIT_ACCESS, GTF_PERMIT_ACCESS);

    assert_eq!(unmap1(&mut back, m), GntStatus::Okay);
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS);
    assert_eq!(guest.end_access(r), Ok(()));
    assert_eq!(guest.end_access(r), Err(RevokeError::NotGranted));
    guest.free_page(page);

    let s = back.stats();
    assert_eq!((s.maps, s.unmaps, s.map_failures), (1, 1, 0));
    let g = guest.stats();
    assert_eq!((g.grants, g.revokes, g.revokes_busy), (1, 1, 1));
    assert_eq!(back.live_mappings(), 0);
}

#[test]
fn flags_clear_only_with_the_last_mapping() {
    let (_hv, mut back, mut guest) = setup();
    let page = guest.alloc_page().unwrap();
    let r = guest.grant(page.frame, back.id(), false).unwrap();
    let ro = map1(&mut back, guest.id(), r, true).unwrap();
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS | GTF_READING);
    let rw = map1(&mut back, guest.id(), r, false).unwrap();
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
    assert_eq!(unmap1(&mut back, rw), GntStatus::Okay);
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS | GTF_READING, "writing clears with the last RW map");
    assert_eq!(guest.end_access(r), Err(RevokeError::InUse));
    assert_eq!(unmap1(&mut back, ro), GntStatus::Okay);
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS);
    assert_eq!(guest.end_access(r), Ok(()));
}

#[test]
fn readonly_grant_refuses_rw_map() {
    let (_hv, mut back, mut guest) = setup();
    let page = guest.alloc_page().unwrap();
    let r = guest.grant(page.frame, back.id(), true).unwrap();
    assert_eq!(map1(&mut back, guest.id(), r, false).unwrap_err(), GntStatus::PermissionDenied);
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS | GTF_READONLY, "a refused map leaves no flag behind");
    let m = map1(&mut back, guest.id(), r, true).unwrap();
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING);
    // And a RW map while a RO one exists is refused too.
    assert_eq!(map1(&mut back, guest.id(), r, false).unwrap_err(), GntStatus::PermissionDenied);
    assert_eq!(unmap1(&mut back, m), GntStatus::Okay);
    assert_eq!(back.stats().map_failures, 2);
}

#[test]
fn bad_refs_domains_and_handles() {
    let (hv, mut back, mut guest) = setup();
    let page = guest.alloc_page().unwrap();
    // Never granted.
    assert_eq!(map1(&mut back, guest.id(), GrantRef(20), false).unwrap_err(), GntStatus::BadGntref);
    // Reserved and out of range.
    assert_eq!(map1(&mut back, guest.id(), GrantRef(1), false).unwrap_err(), GntStatus::BadGntref);
    assert_eq!(map1(&mut back, guest.id(), GrantRef(1 << 20), false).unwrap_err(), GntStatus::BadGntref);
    // Revoked.
    let r = guest.grant(page.frame, back.id(), false).unwrap();
    guest.end_access(r).unwrap();
    assert_eq!(map1(&mut back, guest.id(), r, false).unwrap_err(), GntStatus::BadGntref);
    // Unknown domain.
    assert_eq!(map1(&mut back, DomId(77), GrantRef(8), false).unwrap_err(), GntStatus::BadDomain);
    // Granted to someone else.
    let other = hv.create_domain(16);
    let r2 = guest.grant(page.frame, other.id(), false).unwrap();
    assert_eq!(map1(&mut back, guest.id(), r2, false).unwrap_err(), GntStatus::BadGntref);
    // A granter that writes a frame it does not have.
    let t = guest.grant_table();
    assert!(t.grant(GrantRef(30), back.id(), 1 << 30, false));
    assert_eq!(map1(&mut back, guest.id(), GrantRef(30), false).unwrap_err(), GntStatus::BadPage);
    assert_eq!(flags(&guest, GrantRef(30)), GTF_PERMIT_ACCESS);
    // Handles.
    let r3 = guest.grant(page.frame, back.id(), false).unwrap();
    let m = map1(&mut back, guest.id(), r3, false).unwrap();
    let forged = Mapping { mem: m.mem, handle: m.handle ^ (1 << 40) };
    assert_eq!(unmap1(&mut back, forged), GntStatus::BadHandle);
    assert_eq!(unmap1(&mut back, Mapping { mem: m.mem, handle: 12345 }), GntStatus::BadHandle);
    assert_eq!(unmap1(&mut back, m), GntStatus::Okay);
    assert_eq!(unmap1(&mut back, m), GntStatus::BadHandle, "double unmap");
    assert_eq!(back.stats().unmap_failures, 3);
    // A batch: one bad element does not fail the others.
    let mut out = [Err(GntStatus::GeneralError); 3];
    back.map_batch(
        guest.id(),
        &[
            MapRequest { gref: r3, readonly: false },
            MapRequest { gref: GrantRef(21), readonly: false },
            MapRequest { gref: r3, readonly: true },
        ],
        &mut out,
    );
    assert!(out[0].is_ok() && out[2].is_ok());
    assert_eq!(out[1].unwrap_err(), GntStatus::BadGntref);
    let maps = [out[0].unwrap(), out[2].unwrap()];
    let mut st = [GntStatus::GeneralError; 2];
    back.unmap_batch(&maps, &mut st);
    assert_eq!(st, [GntStatus::Okay; 2]);
    assert_eq!(guest.end_access(r3), Ok(()));
}

#[test]
fn grant_copy_enforces_permissions_and_page_bounds() {
    let (_hv, mut back, mut guest) = setup();
    let src = guest.alloc_page().unwrap();
    let dst = guest.alloc_page().unwrap();
    src.mem.write_bytes(0, &[0xab; 4096]);
    let rs = guest.grant(src.frame, back.id(), true).unwrap();
    let rd = guest.grant(dst.frame, back.id(), false).unwrap();
    let local = back.alloc_page().unwrap();

    let foreign = |gref, offset| CopyPtr::Foreign { domid: guest.id(), gref, offset };
    let loc = |offset| CopyPtr::Local { mem: local.mem, offset };
    let ops = [
        // Guest RO page -> local.
        CopyOp { src: foreign(rs, 0), dst: loc(0), len: 4096 },
        // Local -> guest RW page.
        CopyOp { src: loc(16), dst: foreign(rd, 100), len: 200 },
        // Into the RO grant: refused.
        CopyOp { src: loc(0), dst: foreign(rs, 0), len: 8 },
        // Crossing the page end on the foreign side: refused.
        CopyOp { src: loc(0), dst: foreign(rd, 4000), len: 200 },
        // Crossing on the local side: refused.
        CopyOp { src: loc(4000), dst: foreign(rd, 0), len: 200 },
        // A ref never granted: refused.
        CopyOp { src: foreign(GrantRef(200), 0), dst: loc(0), len: 8 },
    ];
    let mut st = [GntStatus::GeneralError; 6];
    back.copy_batch(&ops, &mut st);
    assert_eq!(
        st,
        [
            GntStatus::Okay,
            GntStatus::Okay,
            GntStatus::PermissionDenied,
            GntStatus::BadCopyArg,
            GntStatus::BadCopyArg,
            GntStatus::BadGntref
        ]
    );
    let mut b = [0u8; 4096];
    local.mem.read_bytes(0, &mut b);
    assert!(b.iter().all(|&x| x == 0xab));
    let mut d = [0u8; 300];
    dst.mem.read_bytes(0, &mut d);
    assert!(d[..100].iter().all(|&x| x == 0) && d[100..300].iter().all(|&x| x == 0xab));
    // No flag left behind: both revoke.
    assert_eq!(flags(&guest, rs), GTF_PERMIT_ACCESS | GTF_READONLY);
    assert_eq!(flags(&guest, rd), GTF_PERMIT_ACCESS);
    assert_eq!(guest.end_access(rs), Ok(()));
    assert_eq!(guest.end_access(rd), Ok(()));
    let s = back.stats();
    assert_eq!((s.copies, s.copy_failures, s.copy_bytes), (2, 4, 4296));
    assert_eq!(s.maps, 0, "grant copy creates no mapping");
}

#[test]
fn ring_map_is_contiguous_in_ref_order() {
    let (_hv, mut back, mut guest) = setup();
    // Scattered frames: allocate with gaps.
    let mut pages = Vec::new();
    for i in 0..8 {
        let p = guest.alloc_page().unwrap();
        if i % 2 == 0 {
            pages.push(p);
        }
    }
    // Grant in reverse frame order so ref order differs from frame order.
    pages.reverse();
    let mut refs = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        p.mem.write_bytes(0, &[i as u8 + 1; 8]);
        refs.push(guest.grant(p.frame, back.id(), false).unwrap());
    }
    let m = back.map_ring(guest.id(), &refs).unwrap();
    assert_eq!(m.mem.len(), 4 * 4096);
    for i in 0..4 {
        let mut b = [0u8; 8];
        m.mem.read_bytes(i * 4096, &mut b);
        assert_eq!(b, [i as u8 + 1; 8], "page {i}");
    }
    // An entry straddling a page boundary lands in two guest pages.
    m.mem.write_bytes(4096 - 4, &[9, 9, 9, 9, 7, 7, 7, 7]);
    let mut a = [0u8; 4];
    pages[0].mem.read_bytes(4092, &mut a);
    assert_eq!(a, [9; 4]);
    pages[1].mem.read_bytes(0, &mut a);
    assert_eq!(a, [7; 4]);
    for &r in &refs {
        assert_eq!(guest.end_access(r), Err(RevokeError::InUse));
    }
    back.unmap_ring(m);
    for &r in &refs {
        assert_eq!(guest.end_access(r), Ok(()));
    }
    let s = back.stats();
    assert_eq!((s.ring_maps, s.ring_unmaps, s.maps), (4, 4, 0));

    // A failing element unwinds the whole ring.
    let r = guest.grant(pages[0].frame, back.id(), false).unwrap();
    let err = back.map_ring(guest.id(), &[r, GrantRef(300)]).unwrap_err();
    assert_eq!(err, xenblk::platform::PlatformError::Grant(GntStatus::BadGntref));
    assert_eq!(flags(&guest, r), GTF_PERMIT_ACCESS);
}

#[test]
fn contiguous_pages_are_one_view() {
    let (_hv, _back, mut guest) = setup();
    let (mem, frames) = guest.alloc_pages_contiguous(4).unwrap();
    assert_eq!(mem.len(), 4 * 4096);
    mem.write_bytes(4096 - 2, &[1, 2, 3, 4]);
    let mut b = [0u8; 2];
    guest.raw_page(frames[0]).read_bytes(4094, &mut b);
    assert_eq!(b, [1, 2]);
    guest.raw_page(frames[1]).read_bytes(0, &mut b);
    assert_eq!(b, [3, 4]);
    let before = guest.free_page_count();
    guest.free_pages_contiguous(mem, &frames[..4]);
    assert_eq!(guest.free_page_count(), before + 4);
    // Pages come back zeroed.
    let (mem2, _) = guest.alloc_pages_contiguous(4).unwrap();
    let mut all = vec![0xffu8; 4 * 4096];
    mem2.read_bytes(0, &mut all);
    assert!(all.iter().all(|&x| x == 0));
}

#[test]
fn destroyed_granter_keeps_existing_mappings_refuses_new() {
    let (hv, mut back, mut guest) = setup();
    let p = guest.alloc_page().unwrap();
    p.mem.write_bytes(0, b"alive");
    let r = guest.grant(p.frame, back.id(), false).unwrap();
    let r2 = guest.grant(p.frame, back.id(), false).unwrap();
    let m = map1(&mut back, guest.id(), r, false).unwrap();
    assert!(hv.destroy_domain(guest.id()));
    assert!(!hv.destroy_domain(guest.id()));
    assert!(!hv.domain_exists(guest.id()));
    let mut b = [0u8; 5];
    m.mem.read_bytes(0, &mut b);
    assert_eq!(&b, b"alive");
    assert_eq!(map1(&mut back, guest.id(), r2, false).unwrap_err(), GntStatus::BadDomain);
    assert_eq!(unmap1(&mut back, m), GntStatus::Okay);
    drop(guest);
}

#[test]
fn dropping_the_mapper_releases_its_mappings() {
    let hv = Hypervisor::new();
    let mut guest = hv.create_domain(64);
    let mut drv = hv.create_domain(64);
    let p = guest.alloc_page().unwrap();
    let r = guest.grant(p.frame, drv.id(), false).unwrap();
    let _m = map1(&mut drv, guest.id(), r, false).unwrap();
    assert_eq!(guest.end_access(r), Err(RevokeError::InUse));
    drop(drv);
    assert_eq!(guest.end_access(r), Ok(()));
}

#[test]
fn fault_plan_fails_chosen_maps() {
    let (hv, mut back, mut guest) = setup();
    let p = guest.alloc_page().unwrap();
    let r = guest.grant(p.frame, back.id(), false).unwrap();
    back.set_fault_plan(FaultPlan { map: Trigger::Nth(2), map_status: GntStatus::Eagain, ..FaultPlan::none() });
    let mut out = [Err(GntStatus::GeneralError); 3];
    let reqs = [MapRequest { gref: r, readonly: false }; 3];
    back.map_batch(guest.id(), &reqs, &mut out);
    assert!(out[0].is_ok() && out[2].is_ok());
    assert_eq!(out[1].unwrap_err(), GntStatus::Eagain);
    let s = back.stats();
    assert_eq!((s.maps, s.map_failures, s.faults_injected), (2, 1, 1));
    let maps = [out[0].unwrap(), out[2].unwrap()];
    back.unmap_batch(&maps, &mut [GntStatus::GeneralError; 2]);
    // Every map fails; set through the hypervisor handle.
    assert!(hv.set_fault_plan(back.id(), FaultPlan { map: Trigger::Always, ..FaultPlan::none() }));
    assert_eq!(map1(&mut back, guest.id(), r, false).unwrap_err(), GntStatus::GeneralError);
    back.set_fault_plan(FaultPlan::none());
    let m = map1(&mut back, guest.id(), r, false).unwrap();
    unmap1(&mut back, m);
    // Fractions are deterministic per seed.
    back.set_fault_plan(FaultPlan {
        map: Trigger::Fraction { per_million: 500_000, seed: 7 },
        map_status: GntStatus::NoSpace,
        ..FaultPlan::none()
    });
    let mut fails = 0;
    for _ in 0..200 {
        match map1(&mut back, guest.id(), r, false) {
            Ok(m) => assert_eq!(unmap1(&mut back, m), GntStatus::Okay),
            Err(e) => {
                assert_eq!(e, GntStatus::NoSpace);
                fails += 1;
            }
        }
    }
    assert!((50..150).contains(&fails), "{fails}");
}

#[test]
fn hostile_granter_through_raw_access() {
    let (hv, mut back, mut guest) = setup();
    let p = guest.alloc_page().unwrap();
    let r = guest.grant(p.frame, back.id(), false).unwrap();
    let m = map1(&mut back, guest.id(), r, false).unwrap();
    // The guest clears the flags behind Xen's back and points the entry elsewhere: the
    // existing mapping keeps the original frame (Xen caches the active entry).
    let t = hv.grant_table(guest.id()).unwrap();
    t.memory().store_u16(r.0 as usize * 8, GTF_PERMIT_ACCESS, Ordering::SeqCst);
    t.memory().write_bytes(r.0 as usize * 8 + 4, &5u32.to_le_bytes());
    m.mem.write_bytes(0, b"x");
    let mut b = [0u8; 1];
    p.mem.read_bytes(0, &mut b);
    assert_eq!(&b, b"x");
    assert_eq!(unmap1(&mut back, m), GntStatus::Okay);
}

#[test]
fn concurrent_revoke_never_succeeds_while_mapped() {
    let hv = Hypervisor::new();
    let mut back = hv.take_dom0().unwrap();
    let mut guest = hv.create_domain(16);
    let p = guest.alloc_page().unwrap();
    let gid = guest.id();
    let (tx, rx) = std::sync::mpsc::channel::<GrantRef>();
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<bool>();
    let table = guest.grant_table();
    let mapper = std::thread::spawn(move || {
        let mut mapped_ok = 0;
        while let Ok(r) = rx.recv() {
            // Race the revocation: map, check the page is still granted, unmap.
            let mut ok = false;
            for _ in 0..20 {
                if let Ok(m) = map1(&mut back, gid, r, false) {
                    ok = true;
                    mapped_ok += 1;
                    let f = table.read(r).unwrap().flags;
                    assert_eq!(f & GTF_PERMIT_ACCESS, GTF_PERMIT_ACCESS, "revoked while mapped");
                    assert_ne!(f & GTF_READING, 0);
                    assert_eq!(unmap1(&mut back, m), GntStatus::Okay);
                }
            }
            ack_tx.send(ok).unwrap();
        }
        mapped_ok
    });
    let mut revoked_while = 0;
    for _ in 0..300 {
        let r = guest.grant(p.frame, DomId::DOM0, false).unwrap();
        tx.send(r).unwrap();
        // Spin on revocation while the mapper works.
        loop {
            match guest.end_access(r) {
                Ok(()) => break,
                Err(RevokeError::InUse) => revoked_while += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        // Once revoked, nothing maps it any more.
        assert_eq!(guest.grant_table().read(r).unwrap().flags & (GTF_READING | GTF_WRITING), 0);
        ack_rx.recv().unwrap();
    }
    drop(tx);
    let n = mapper.join().unwrap();
    assert!(n > 0);
    let _ = revoked_while;
}
