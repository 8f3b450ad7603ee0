//! `simrun`: N guests doing verified random I/O against one backend on the sim.
//!
//! ```text
//! simrun --guests N --ops N --mode map|persistent|copy|zerocopy [--verify] [--depth N]
//!        [--max-kib N] [--disk-mib N] [--seed N] [--workload read|write|mixed]
//! ```
//! Prints one line per guest, then `total: ops=… verified_bytes=… maps=… unmaps=…
//! copies=… errors=… mismatches=…`. Exits 1 if anything failed or mismatched.

use std::process::ExitCode;

use xenblk_sim::harness::{Mode, RunConfig, Workload, run};

fn usage(msg: &str) -> ExitCode {
    eprintln!("simrun: {msg}");
    eprintln!(
        "usage: simrun --guests N --ops N --mode map|persistent|copy|zerocopy [--verify] [--depth N] \
         [--max-kib N] [--disk-mib N] [--seed N] [--workload read|write|mixed]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut cfg = RunConfig { guests: 15, ops: 20000, verify: false, disk_sectors: 16 * 2048, ..RunConfig::default() };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |s: Result<String, String>| -> Result<u64, String> {
            let s = s?;
            s.parse::<u64>().map_err(|_| format!("not a number: {s}"))
        };
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--guests" => cfg.guests = num(val("--guests"))?.clamp(0, 512) as usize,
                "--ops" => cfg.ops = num(val("--ops"))?,
                "--mode" => {
                    let m = val("--mode")?;
                    cfg.mode = Mode::parse(&m).ok_or(format!("unknown mode {m}"))?
                }
                "--verify" => cfg.verify = true,
                "--depth" => cfg.depth = num(val("--depth"))?.max(1) as usize,
                "--max-kib" => cfg.max_bytes = (num(val("--max-kib"))?.clamp(1, 16 * 1024) * 1024) as usize,
                "--disk-mib" => cfg.disk_sectors = num(val("--disk-mib"))?.clamp(1, 1024) * 2048,
                "--seed" => cfg.seed = num(val("--seed"))?,
                "--workload" => {
                    cfg.workload = match val("--workload")?.as_str() {
                        "read" => Workload::Read,
                        "write" => Workload::Write,
                        "mixed" => Workload::Mixed,
                        w => return Err(format!("unknown workload {w}")),
                    }
                }
                "-h" | "--help" => return Err("help".into()),
                other => return Err(format!("unknown argument {other}")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            return usage(&e);
        }
    }
    if cfg.guests == 0 {
        return usage("--guests must be at least 1");
    }
    eprintln!(
        "simrun: {} guests x {} ops, mode {}, depth {}, requests up to {} KiB{}",
        cfg.guests,
        cfg.ops,
        cfg.mode.name(),
        cfg.depth,
        cfg.max_bytes / 1024,
        if cfg.verify { ", verifying" } else { "" }
    );
    let r = run(&cfg);
    for g in &r.guests {
        println!(
            "guest {:>3}: ops={} verified_bytes={} errors={} mismatches={} persistent={} grants={} revokes={} closed={}{}",
            g.domid,
            g.ops,
            g.verified_bytes,
            g.errors,
            g.mismatches,
            g.persistent,
            g.grants,
            g.revokes,
            g.closed,
            g.failure.as_ref().map(|f| format!(" FAILED: {f}")).unwrap_or_default()
        );
    }
    eprintln!(
        "simrun: {:.0} IOPS over {:.2} s; backend still held {} mappings after close",
        r.iops(),
        r.elapsed.as_secs_f64(),
        r.live_mappings_at_end
    );
    println!("{}", r.total_line());
    if r.errors() > 0 || r.mismatches() > 0 || r.guests.iter().any(|g| g.ops < cfg.ops) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
