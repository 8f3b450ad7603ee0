//! Runs the `xenblk-config` binary: `explain` on every shipped config and on
//! bad ones, usage errors, and `reference`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_xenblk-config");

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> Output {
    run_in(&configs_dir(), args)
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(dir).output().expect("run xenblk-config")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
}

fn bad_file(name: &str, src: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("explain-test");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p
}

#[test]
fn explains_every_shipped_config() {
    let cases: &[(&str, &[&str])] = &[
        ("default.cfg", &["linux", "netbsd"]),
        ("guests-15.cfg", &["linux"]),
        ("netbsd.cfg", &["linux", "netbsd"]),
        ("embedded-small.cfg", &["linux"]),
    ];
    for (file, profiles) in cases {
        for profile in *profiles {
            let o = run(&["explain", file, "--profile", profile]);
            assert_exit(&o, 0);
            let out = text(&o.stdout);
            assert!(out.contains(&format!("config:  {file}")), "{out}");
            assert!(out.contains(&format!("profile: {profile}")), "{out}");
            for key in ["guests", "ring.order", "backend.max_indirect_segments"] {
                assert!(out.contains(key), "{key} missing:\n{out}");
            }
            for size in [
                "ring slots per queue",
                "grants per ring (backend cache)",
                "frontend pool pages",
                "static memory footprint (bytes)",
            ] {
                assert!(out.contains(size), "{size} missing:\n{out}");
            }
            // Values name their source line.
            assert!(out.contains(&format!("{file}:")), "{out}");
            assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
        }
    }
}

#[test]
fn explain_shows_values_and_sources() {
    let o = run(&["explain", "guests-15.cfg"]);
    assert_exit(&o, 0);
    let out = text(&o.stdout);
    let line = |key: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no line for {key}:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("guests")[1..], ["15", "guests-15.cfg:5"]);
    assert_eq!(line("backend.max_grants")[1], "352");
    assert_eq!(line("backend.total_grants")[1], "5280");
    assert_eq!(line("backend.grant_idle_secs")[1..], ["60", "default"]);
    assert_eq!(line("ring.slots")[1], "32");
    // The default profile is linux.
    assert!(out.contains("profile: linux"));
}

#[test]
fn explain_netbsd_profile_violation_exits_1() {
    let o = run(&["explain", "guests-15.cfg", "--profile=netbsd"]);
    assert_exit(&o, 0); // order 0 and one queue: fine under netbsd too
    let p = bad_file("netbsd-bad.cfg", "ring.order = 1\nring.queues = 2\n");
    let o = run(&["explain", p.to_str().unwrap(), "--profile", "netbsd"]);
    assert_exit(&o, 1);
    let err = text(&o.stderr);
    let f = p.display();
    assert!(
        err.contains(&format!(
            "{f}:1:14: `ring.order` = 1 is not allowed with profile netbsd: ring-netbsd offers a single-page ring only"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{f}:2:15: `ring.queues` = 2")), "{err}");
    assert!(o.stdout.is_empty());
    // The same file is fine under linux.
    assert_exit(&run(&["explain", p.to_str().unwrap()]), 0);
}

#[test]
fn explain_bad_config_prints_located_diagnostics() {
    let p = bad_file("bad.cfg", "guests = 2\n[backend]\nmax_grant = 3 # typo\n");
    let o = run(&["explain", p.to_str().unwrap()]);
    assert_exit(&o, 1);
    let err = text(&o.stderr);
    let want = format!(
        "{}:3:1: unknown key `backend.max_grant`; did you mean `backend.max_grants`?\n    max_grant = 3 # typo\n    ^\n",
        p.display()
    );
    assert_eq!(err, want);
    assert!(o.stdout.is_empty());
}

#[test]
fn explain_relative_path_is_relative_to_current_dir() {
    let o = run_in(&configs_dir().join("xenblk-config"), &["explain", "../default.cfg"]);
    assert_exit(&o, 0);
    assert!(text(&o.stdout).contains("config:  ../default.cfg"));
    let o = run_in(&configs_dir().join("xenblk-config"), &["explain", "default.cfg"]);
    assert_exit(&o, 1);
    assert!(text(&o.stderr).starts_with("default.cfg: cannot read config file:"), "{}", text(&o.stderr));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["explain"],
        &["explain", "default.cfg", "--profile"],
        &["explain", "default.cfg", "--profile", "freebsd"],
        &["explain", "default.cfg", "--bogus"],
        &["explain", "default.cfg", "netbsd.cfg"],
        &["reference", "extra"],
    ] {
        let o = run(args);
        assert_exit(&o, 2);
        let err = text(&o.stderr);
        assert!(err.contains("usage: xenblk-config explain FILE"), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    let o = run(&["help"]);
    assert_exit(&o, 0);
    assert!(text(&o.stdout).contains("usage:"));
}

#[test]
fn reference_matches_the_shipped_markdown() {
    let o = run(&["reference"]);
    assert_exit(&o, 0);
    let on_disk = std::fs::read_to_string(configs_dir().join("REFERENCE.md")).unwrap();
    assert!(
        text(&o.stdout) == on_disk,
        "configs/REFERENCE.md is stale: run `cargo run -p xenblk-config -- reference > configs/REFERENCE.md`"
    );
}
