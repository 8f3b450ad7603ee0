//! A bounded soak: 15 guests against one backend domain on the sim, just over a million
//! requests in all, across the four data paths (persistent grants, map/unmap, grant copy,
//! zero-copy), random mixed reads and writes of 512 B to 44 KiB. Every read is checked
//! against a model of its disk, and at the end every disk must equal its model. Zero lost
//! (each guest completes exactly what it issued), zero duplicated or unknown completions,
//! zero errors, zero mismatches, the backend served exactly as many requests as were
//! issued, and no mapping is left behind.
//!
//! Release only: `cargo test --release --test soak -- --nocapture` (a tests/run.sh step).
//! In debug builds (the feature matrix) the code compiles but the test is not built.

#[path = "../boards/sim/src/harness.rs"]
mod harness;

use std::time::Instant;

use harness::{Mode, RunConfig, Workload, run_with_disks};

const GUESTS: usize = 15;
/// Requests per guest per data path: 4 x 15 x 16_700 = 1_002_000 in all.
const OPS_PER_GUEST: u64 = 16_700;

#[allow(dead_code)]
fn soak_one(mode: Mode, seed: u64) -> u64 {
    let cfg = RunConfig {
        guests: GUESTS,
        ops: OPS_PER_GUEST,
        mode,
        depth: 32,
        disk_sectors: 4096,
        max_bytes: 11 * 4096,
        fixed_size: false,
        workload: Workload::Mixed,
        verify: true,
        seed,
        close_at_end: true,
        ..RunConfig::default()
    };
    let t0 = Instant::now();
    let (r, gens, disks) = run_with_disks(&cfg);
    for g in &r.guests {
        assert_eq!(g.failure, None, "{}: guest {} failed", mode.name(), g.domid);
        assert_eq!(g.ops, cfg.ops, "{}: guest {} completed {} of {} requests", mode.name(), g.domid, g.ops, cfg.ops);
        assert_eq!(g.unexpected, 0, "{}: guest {} saw duplicated or unknown completions", mode.name(), g.domid);
        assert!(g.closed, "{}: guest {} did not close cleanly", mode.name(), g.domid);
    }
    assert_eq!(r.errors(), 0, "{}: {}", mode.name(), r.total_line());
    assert_eq!(r.mismatches(), 0, "{}: {}", mode.name(), r.total_line());
    assert_eq!(
        r.backend_requests,
        r.ops(),
        "{}: backend served {} for {} issued",
        mode.name(),
        r.backend_requests,
        r.ops()
    );
    assert_eq!(r.live_mappings_at_end, 0, "{}: mappings left behind", mode.name());
    for (wg, disk) in gens.iter().zip(&disks.0) {
        let mut img = vec![0u8; wg.model().len()];
        disk.read_at(0, &mut img).unwrap();
        assert!(img == wg.model(), "{}: a disk differs from its model", mode.name());
    }
    println!(
        "soak {}: {} guests, {} requests, {} verified bytes, {:.2} s ({:.0} req/s)",
        mode.name(),
        GUESTS,
        r.ops(),
        r.verified_bytes(),
        t0.elapsed().as_secs_f64(),
        r.iops()
    );
    r.ops()
}

#[cfg(not(debug_assertions))]
#[test]
fn fifteen_guests_a_million_requests_nothing_lost() {
    let t0 = Instant::now();
    let mut total = 0;
    for (i, mode) in [Mode::Persistent, Mode::Map, Mode::Copy, Mode::ZeroCopy].into_iter().enumerate() {
        total += soak_one(mode, 1000 + i as u64);
    }
    println!("soak total: {total} requests in {:.1} s", t0.elapsed().as_secs_f64());
    assert!(total >= 1_000_000, "only {total} requests");
}
