//! Many guests doing random reads and writes of random sizes against one backend on the
//! sim, every read checked against a model of its disk; for the feature combination this
//! test binary is built with (a role that is not compiled in is played by the sim's
//! reference peer), and for all four combinations of persistence on the two sides.

#[path = "../boards/sim/src/harness.rs"]
mod harness;

use harness::{Mode, RunConfig, RunResult, Workload, run_with_disks};

fn check_clean(r: &RunResult, cfg: &RunConfig) {
    for g in &r.guests {
        assert_eq!(g.failure, None, "guest {} failed", g.domid);
        assert_eq!(g.ops, cfg.ops, "guest {} completed {} of {} requests", g.domid, g.ops, cfg.ops);
    }
    assert_eq!(r.errors(), 0, "{}", r.total_line());
    assert_eq!(r.mismatches(), 0, "{}", r.total_line());
    assert!(r.verified_bytes() > 0);
}

/// Every disk ends up holding exactly what the model says.
fn check_disks(gens: &[harness::Workgen], disks: &harness::Disks) {
    for (wg, disk) in gens.iter().zip(&disks.0) {
        let mut img = vec![0u8; wg.model().len()];
        disk.read_at(0, &mut img).unwrap();
        assert!(img == wg.model(), "disk contents differ from the model");
    }
}

fn cfg(mode: Mode, front: bool, back: bool) -> RunConfig {
    RunConfig {
        guests: 4,
        ops: 600,
        mode,
        front_persistent: front,
        back_persistent: back,
        depth: 16,
        disk_sectors: 2048,
        max_bytes: 11 * 4096,
        workload: Workload::Mixed,
        verify: true,
        seed: 7,
        close_at_end: false,
        ..RunConfig::default()
    }
}

#[test]
fn persistent_on_both_sides_keeps_mappings_and_never_unmaps_in_steady_state() {
    let c = cfg(Mode::Persistent, true, true);
    let (r, gens, disks) = run_with_disks(&c);
    check_clean(&r, &c);
    check_disks(&gens, &disks);
    assert!(r.guests.iter().all(|g| g.persistent), "persistence not negotiated");
    // Maps are bounded by the guests' pools; nothing is unmapped while the devices live.
    let pool = xenblk::config::FRONTEND_POOL_GRANTS as u64;
    assert!(r.maps > 0 && r.maps <= c.guests as u64 * pool, "maps {} above {} pools", r.maps, c.guests);
    assert_eq!(r.unmaps_before_shutdown, 0, "persistent grants were unmapped during I/O");
    assert_eq!(r.unmaps, r.maps, "shutdown left mappings behind");
    assert_eq!(r.live_mappings_at_end, 0);
    // And far fewer maps than segments moved.
    let segments: u64 = (r.verified_bytes() / 4096).max(1);
    assert!(r.maps * 10 < segments, "maps {} vs ~{} segments", r.maps, segments);
}

/// Without persistence on either side: one map and one unmap per segment.
fn check_map_per_segment(front: bool, back: bool) {
    let c = cfg(Mode::Persistent, front, back);
    let (r, gens, disks) = run_with_disks(&c);
    check_clean(&r, &c);
    check_disks(&gens, &disks);
    assert!(r.guests.iter().all(|g| !g.persistent), "persistence negotiated with front={front} back={back}");
    let granted: u64 = r.guests.iter().map(|g| g.grants).sum();
    if cfg!(feature = "frontend") {
        // Our frontend grants each data page once per request (ring pages are not counted).
        assert_eq!(r.maps, granted, "one map per granted segment");
        assert_eq!(r.guests.iter().map(|g| g.revokes).sum::<u64>(), granted, "every grant ended");
    }
    assert!(r.maps as f64 >= r.ops() as f64, "at least one map per request");
    assert_eq!(r.unmaps_before_shutdown, r.maps, "one unmap per map, at completion");
    assert_eq!(r.live_mappings_at_end, 0);
}

#[test]
fn frontend_persistent_backend_not_maps_per_segment() {
    check_map_per_segment(true, false);
}

#[test]
fn frontend_not_backend_persistent_maps_per_segment() {
    check_map_per_segment(false, true);
}

#[test]
fn neither_side_persistent_maps_per_segment() {
    check_map_per_segment(false, false);
}

#[test]
fn map_mode_turns_persistence_off() {
    let c = cfg(Mode::Map, true, true);
    let (r, _, _) = run_with_disks(&c);
    check_clean(&r, &c);
    assert!(r.guests.iter().all(|g| !g.persistent));
    assert!(r.unmaps >= r.ops(), "map mode: at least one unmap per request");
}

#[cfg(feature = "backend")]
#[test]
fn grant_copy_backend_never_maps_data() {
    let c = cfg(Mode::Copy, true, true);
    let (r, gens, disks) = run_with_disks(&c);
    check_clean(&r, &c);
    check_disks(&gens, &disks);
    assert_eq!(r.maps, 0, "the copy path mapped data pages");
    assert!(r.copies >= r.ops(), "one grant copy per segment");
    assert!(r.guests.iter().all(|g| !g.persistent), "a copying backend must not offer persistence");
}

#[cfg(feature = "frontend")]
#[test]
fn zero_copy_buffers_round_trip() {
    let c = cfg(Mode::ZeroCopy, true, true);
    let (r, gens, disks) = run_with_disks(&c);
    check_clean(&r, &c);
    check_disks(&gens, &disks);
    assert!(r.guests.iter().all(|g| g.persistent));
    assert_eq!(r.unmaps_before_shutdown, 0);
}

#[test]
fn closing_every_device_unmaps_everything() {
    let c = RunConfig { close_at_end: true, ..cfg(Mode::Persistent, true, true) };
    let (r, _, _) = run_with_disks(&c);
    check_clean(&r, &c);
    assert_eq!(r.live_mappings_at_end, 0, "backend still mapped grants after the frontends closed");
    if cfg!(feature = "frontend") {
        assert!(r.guests.iter().all(|g| g.closed), "a frontend did not reach Closed");
    }
}

#[test]
fn full_page_requests_at_depth() {
    let c = RunConfig {
        fixed_size: true,
        max_bytes: 4096,
        depth: 32,
        workload: Workload::Mixed,
        ..cfg(Mode::Persistent, true, true)
    };
    let (r, gens, disks) = run_with_disks(&c);
    check_clean(&r, &c);
    check_disks(&gens, &disks);
}

/// A frontend board that cannot see the backend's mappings (Linux gntalloc,
/// `Grants::observes_mappings` = false), persistent: every pool page is granted once and
/// never revoked during I/O, and the data stays right.
#[cfg(feature = "frontend")]
#[test]
fn opaque_grants_frontend_keeps_persistent_grants_without_revoking() {
    let c = RunConfig { front_opaque_grants: true, ..cfg(Mode::Persistent, true, true) };
    let (r, gens, disks) = run_with_disks(&c);
    check_clean(&r, &c);
    check_disks(&gens, &disks);
    assert!(r.guests.iter().all(|g| g.persistent));
    let pool = xenblk::config::FRONTEND_POOL_GRANTS as u64;
    for g in &r.guests {
        assert!(g.grants <= pool, "guest {} granted {} pages, pool {}", g.domid, g.grants, pool);
    }
    assert_eq!(r.unmaps_before_shutdown, 0, "grants were ended during persistent I/O");
    assert_eq!(r.unmaps, r.maps, "shutdown left mappings behind");
    assert_eq!(r.live_mappings_at_end, 0);
}

/// The same board without persistence (backend refuses): the backend maps and unmaps every
/// segment per request, but the frontend keeps its pool granted for the connection (its
/// revoke could not prove the backend let go anyway, and on gntalloc each grant and revoke
/// is a page-table change): no grant ends during I/O, none outlives the close.
#[cfg(feature = "frontend")]
#[test]
fn opaque_grants_frontend_without_persistence_keeps_its_pool_granted() {
    let c = RunConfig { front_opaque_grants: true, ..cfg(Mode::Persistent, true, false) };
    let (r, gens, disks) = run_with_disks(&c);
    check_clean(&r, &c);
    check_disks(&gens, &disks);
    assert!(r.guests.iter().all(|g| !g.persistent));
    let pool = xenblk::config::FRONTEND_POOL_GRANTS as u64;
    let requests: u64 = r.guests.iter().map(|g| g.ops).sum();
    for g in &r.guests {
        assert!(g.grants <= pool, "guest {} granted {} pages, pool {}", g.domid, g.grants, pool);
        assert_eq!(g.revokes, 0, "guest {} ended grants during I/O", g.domid);
    }
    assert!(r.maps >= requests, "the backend must map per request: {} maps, {requests} requests", r.maps);
    assert_eq!(r.unmaps_before_shutdown, r.maps, "the backend kept a mapping without persistence");
    assert_eq!(r.live_mappings_at_end, 0);
}

/// Lent buffers are the caller's own pages: without persistence their grants end at every
/// completion even on that board (the pool's bounce pages are what stays granted).
#[cfg(feature = "frontend")]
#[test]
fn opaque_grants_frontend_without_persistence_still_ends_lent_buffer_grants() {
    let c = RunConfig { front_opaque_grants: true, ..cfg(Mode::ZeroCopy, true, false) };
    let (r, gens, disks) = run_with_disks(&c);
    check_clean(&r, &c);
    check_disks(&gens, &disks);
    assert!(r.guests.iter().all(|g| !g.persistent));
    for g in &r.guests {
        assert!(g.ops > 0);
        assert!(g.revokes >= g.ops, "guest {}: {} revokes for {} zero-copy requests", g.domid, g.revokes, g.ops);
    }
    assert_eq!(r.unmaps_before_shutdown, r.maps, "the backend kept a mapping without persistence");
}
