//! The seed benchmark's engine moves correct amounts of I/O in every mode (no timing here).
#![cfg(all(feature = "frontend", feature = "backend"))]

use xenblk_sim::bench::{self, BenchConfig};
use xenblk_sim::harness::{Mode, Workload};

#[test]
fn fixed_ops_complete_in_every_mode() {
    let disks = bench::make_disks(3, 2048);
    for mode in [Mode::Map, Mode::Persistent, Mode::Copy, Mode::ZeroCopy] {
        for workload in [Workload::Read, Workload::Write, Workload::Mixed] {
            let cfg = BenchConfig { guests: 3, mode, workload, fixed_ops: Some(301), ..BenchConfig::default() };
            let r = bench::run(&cfg, &disks);
            assert_eq!(r.ops, 301, "{mode:?} {workload:?}");
            assert_eq!(r.errors, 0, "{mode:?} {workload:?}");
            match mode {
                Mode::Map => assert_eq!(r.maps, 301, "one map per request"),
                Mode::Copy => assert_eq!(r.copies, 301, "one grant copy per request"),
                // Persistent paths map each pool page at most once.
                _ => assert!(r.maps <= 3 * 32, "{mode:?}: {} maps", r.maps),
            }
            assert_eq!(r.persistent, matches!(mode, Mode::Persistent | Mode::ZeroCopy), "{mode:?}");
        }
    }
}

#[test]
fn two_workers_run_for_a_duration() {
    let disks = bench::make_disks(2, 2048);
    let cfg = BenchConfig {
        guests: 2,
        mode: Mode::Persistent,
        duration: std::time::Duration::from_millis(50),
        ..BenchConfig::default()
    };
    let r = bench::run(&cfg, &disks);
    assert!(r.ops > 0);
    assert_eq!(r.errors, 0);
}
