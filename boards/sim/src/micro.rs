//! Micro-benchmarks of the driver's hot-path pieces (a plain timing harness: median of 5
//! timed loops after a warm-up, ns per operation).

use std::time::Instant;

use xenblk::pool::front::FrontPool;
use xenblk::proto::blkif::{self, Abi};
use xenblk::proto::grant::DomId;

use crate::Hypervisor;
use crate::calibrate;

fn time(iters: u64, mut f: impl FnMut(u64)) -> f64 {
    let mut v: Vec<f64> = (0..6)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .skip(1)
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs every micro-benchmark; returns (name, ns/op).
pub fn run_all() -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    out.push(("ring: request + response round trip, batches of 32 (one thread)", {
        let mut v: Vec<f64> = (0..5).map(|_| calibrate::ring(320_000)).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[2]
    }));
    // Request encode/decode.
    let req = calibrate::sample_request(7);
    let img = blkif::encode_request(Abi::X86_64, &req);
    out.push((
        "blkif: encode_request (4 KiB read, 1 segment)",
        time(1_000_000, |i| {
            let mut r = req.clone();
            r.id = i;
            std::hint::black_box(blkif::encode_request(Abi::X86_64, std::hint::black_box(&r)));
        }),
    ));
    out.push((
        "blkif: decode_request (validating)",
        time(1_000_000, |_| {
            std::hint::black_box(
                blkif::decode_request(Abi::X86_64, std::hint::black_box(img.as_bytes()), 0).expect("decode"),
            );
        }),
    ));
    // Frontend pool get/put on the sim (persistent: pages stay granted).
    let hv = Hypervisor::new();
    let mut g = hv.create_domain(1024);
    let mut pool = FrontPool::new(352, DomId::DOM0);
    // Warm the pool: grant every page once.
    let mut idx = Vec::new();
    for _ in 0..32 {
        idx.push(pool.get(&mut g, false).expect("pool get"));
    }
    for &i in &idx {
        pool.put(&mut g, i, true).expect("pool put");
    }
    out.push((
        "pool: FrontPool get + put (persistent, page stays granted)",
        time(1_000_000, |_| {
            let i = pool.get(&mut g, false).expect("pool get");
            pool.put(&mut g, std::hint::black_box(i), true).expect("pool put");
        }),
    ));
    out.push((
        "pool: FrontPool 32 x get then 32 x put (per page)",
        time(50_000, |_| {
            for slot in idx.iter_mut() {
                *slot = pool.get(&mut g, false).expect("pool get");
            }
            for &i in &idx {
                pool.put(&mut g, i, true).expect("pool put");
            }
        }) / 32.0,
    ));
    out
}

/// Prints the micro-benchmark table.
pub fn print_table() {
    println!("| micro-benchmark | ns/op |");
    println!("|---|---:|");
    for (name, ns) in run_all() {
        println!("| {name} | {ns:.1} |");
    }
}
