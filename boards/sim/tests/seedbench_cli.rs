//! The README's main command, end to end on a tiny configuration: the table, the JSON and the
//! SVG it promises, and clear errors for bad options.

#![cfg(all(feature = "frontend", feature = "backend"))]

use std::process::Command;

fn seedbench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_seedbench")).args(args).output().expect("run seedbench")
}

/// The numbers of every `"key": N` in `json`, in order.
fn numbers(json: &str, key: &str) -> Vec<f64> {
    let pat = format!("\"{key}\": ");
    json.match_indices(&pat)
        .map(|(i, _)| {
            let rest = &json[i + pat.len()..];
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(rest.len());
            rest[..end].parse().unwrap_or_else(|_| panic!("{key}: not a number in {:?}", &rest[..end.max(8)]))
        })
        .collect()
}

#[test]
fn seedbench_prints_the_table_and_writes_json_and_svg() {
    let dir = std::env::temp_dir().join(format!("seedbench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("r.json"), dir.join("r.svg"));
    let out = seedbench(&[
        "--guests",
        "1,2",
        "--modes",
        "map,persistent",
        "--seconds",
        "0.05",
        "--repeats",
        "2",
        "--disk-kib",
        "256",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "seedbench failed: {stderr}");
    // The table: one row per guest count, both modes and their ratio.
    assert!(stdout.contains("| guests | map | persistent |"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("| 1 |")) && stdout.lines().any(|l| l.starts_with("| 2 |")));
    assert!(stdout.contains("copy_bound_iops = "), "{stdout}");
    // Progress went to stderr: 2 modes x 2 guest counts x 2 repeats.
    assert!(stderr.contains("[8/8]"), "{stderr}");
    let j = std::fs::read_to_string(&json).unwrap();
    let iops = numbers(&j, "iops");
    assert_eq!(iops.len(), 4, "one cell per mode and guest count: {j}");
    assert!(iops.iter().all(|&x| x > 0.0), "a cell with no I/O: {j}");
    // The modes at one guest count are neighbours, in the JSON and in time: each repeat runs
    // both modes at 1 guest, then both at 2.
    assert_eq!(numbers(&j, "guests"), vec![1.0, 1.0, 2.0, 2.0]);
    let order: Vec<(String, String)> = stderr
        .lines()
        .filter(|l| l.starts_with('[') && l.contains(" guests "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].to_string(), w[2].to_string())
        })
        .collect();
    let one: Vec<(String, String)> = [("map", "1"), ("persistent", "1"), ("map", "2"), ("persistent", "2")]
        .map(|(m, g)| (m.into(), g.into()))
        .into();
    assert_eq!(order, [one.clone(), one].concat(), "{stderr}");
    assert!(numbers(&j, "errors").iter().all(|&e| e == 0.0));
    assert_eq!(j.matches("\"copy_probe_ns\": [").count(), 4);
    let paired = numbers(&j, "fraction_of_limit_paired");
    assert!(paired.len() == 4 && paired.iter().all(|&f| f > 0.0), "{j}");
    assert!(stdout.contains("fraction, paired"), "{stdout}");
    let bound = numbers(&j, "copy_bound_iops");
    assert!(bound.len() == 1 && bound[0] > 0.0, "{j}");
    // The bound's copy is the cheapest the run saw: the start-up calibration or a run's probe
    // (each run is probed before and after).
    let (copy, startup) = (numbers(&j, "copy_4k_ns"), numbers(&j, "copy_4k_startup_ns"));
    let list = |key: &str| -> Vec<f64> {
        j.match_indices(&format!("\"{key}\": ["))
            .flat_map(|(i, m)| {
                let rest = &j[i + m.len()..];
                rest[..rest.find(']').unwrap()].split(", ").map(|p| p.parse::<f64>().unwrap()).collect::<Vec<_>>()
            })
            .collect()
    };
    let (before, after) = (list("copy_probe_ns"), list("copy_probe_after_ns"));
    assert_eq!((before.len(), after.len()), (8, 8), "{j}");
    assert!(after.iter().all(|&p| p > 0.0), "{j}");
    let probes: Vec<f64> = before.iter().chain(&after).copied().collect();
    // The paired fraction of a persistent cell: the median (upper, of two runs) of each run
    // against the bound at the cheaper of its two probes.
    let (runs, ring, notify, cores) =
        (list("runs"), numbers(&j, "ring_ns")[0], numbers(&j, "notify_ns")[0], numbers(&j, "cores")[0]);
    for k in [1, 3] {
        let f = (2 * k..2 * k + 2)
            .map(|i| runs[i] / (cores * 1e9 / (2.0 * before[i].min(after[i]) + ring + notify / 32.0)))
            .fold(0.0, f64::max);
        let got = paired[k];
        assert!((got - f).abs() <= 0.02 * f + 0.001, "cell {k}: paired {got}, expected {f}: {j}");
    }
    assert!(copy.len() == 1 && startup.len() == 1 && copy[0] > 0.0, "{j}");
    assert!(
        copy[0] <= startup[0] + 0.05 && probes.iter().all(|&p| copy[0] <= p + 0.5),
        "{copy:?} {startup:?} {probes:?}"
    );
    assert!(probes.iter().chain(&startup).any(|&p| (p - copy[0]).abs() <= 0.5), "the bound's copy is one of them");
    // The targets, in the JSON and on the table's lines, agree with the cells.
    let t = |key: &str| numbers(&j, key)[0];
    assert!((t("persistent_over_map") - iops[3] / iops[2]).abs() <= 1e-3 * t("persistent_over_map"), "{j}");
    assert!((t("persistent_fraction_paired") - paired[3]).abs() <= 1e-3, "{j}");
    assert!((t("persistent_fraction_of_copy_bound") - iops[3] / bound[0]).abs() <= 1e-3, "{j}");
    assert!(j.contains("\"persistent_at_least_map_everywhere\": true"), "{j}");
    assert!(j.contains("\"zerocopy_over_persistent\": null"), "zerocopy was not run: {j}");
    let line = stdout.lines().find(|l| l.starts_with("target persistent at 2 guests >= copy_bound/2")).expect(&stdout);
    let verdict = if t("persistent_fraction_paired") >= 0.5 { "(holds)" } else { "(MISSED)" };
    assert!(line.contains("each run against the bound at its own copy probes") && line.ends_with(verdict), "{line}");
    assert!(stdout.contains("against one bound for the whole run (its cheapest copy"), "{stdout}");
    // The footprint's own limits: the disks' read cost and the copies alone.
    assert_eq!(numbers(&j, "disk_kib"), vec![256.0]);
    let disk_read = numbers(&j, "disk_read_4k_ns");
    assert!(disk_read.len() == 1 && disk_read[0] > 0.0, "{j}");
    let pipeline = numbers(&j, "copy_pipeline_iops");
    assert!(pipeline.len() == 1 && pipeline[0] > 0.0, "{j}");
    assert!(stdout.contains("copies alone at 2 guests' footprint (256 KiB disks"), "{stdout}");
    let pipe_probe = numbers(&j, "copy_pipeline_probe_ns");
    assert!(pipe_probe.len() == 1 && pipe_probe[0] > 0.0, "the ceiling carries its own probe: {j}");
    assert!(stdout.contains("of the bound at its own copy probe"), "{stdout}");
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    assert!(s.contains("persistent") && s.contains("map"), "one line per mode, labelled");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_calibration_the_target_is_judged_against_the_one_bound() {
    let out =
        seedbench(&["--guests", "2", "--modes", "persistent", "--seconds", "0.05", "--repeats", "1", "--no-calibrate"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line =
        stdout.lines().find(|l| l.starts_with("target persistent at 2 guests >= copy_bound/2: ")).expect(&stdout);
    assert!(line.ends_with("(holds)") || line.ends_with("(MISSED)"), "{line}");
    assert!(!stdout.contains("each run against"), "no probes, no pairing: {stdout}");
}

#[test]
fn seedbench_rejects_bad_options_with_a_message() {
    for args in [
        &["--modes", "teleport"][..],
        &["--guests", "0"],
        &["--seconds", "x"],
        &["--frobnicate"],
        &["--disk-kib", "6"],
        &["--disk-kib", "0"],
    ] {
        let out = seedbench(args);
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty() && !err.contains("panicked"), "{args:?}: {err}");
    }
}
