//! Runs xenblk's real `build.rs` through cargo, in a scratch crate that
//! uses it as its build script and includes the generated `config.rs` the
//! way xenblk does, so this does not depend on the rest of xenblk compiling.
//!
//! Checked: a bad `XENBLK_CONFIG` fails `cargo build` with
//! `FILE:LINE:COL: message` in cargo's output; the shipped configs generate
//! code that compiles under `#![deny(warnings, missing_docs)]`; the
//! `ring-netbsd` feature selects the netbsd profile; relative paths resolve
//! against the package root; the default is `configs/default.cfg`; editing
//! the config file re-runs the build script.
//!
//! The scratch crate and its target dir live under `CARGO_TARGET_TMPDIR`
//! and are reused, so only the first run compiles nom.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let ws = workspace();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("buildrs-check");
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::create_dir_all(dir.join("configs")).unwrap();
        let manifest = format!(
            r#"[package]
name = "buildrs-check"
version = "0.0.0"
edition = "2024"
publish = false
build = {build:?}

[features]
ring-netbsd = []

[build-dependencies]
xenblk-config = {{ path = {cfg:?} }}

# Not part of the xenblk workspace.
[workspace]
"#,
            build = ws.join("build.rs").display().to_string(),
            cfg = ws.join("configs/xenblk-config").display().to_string(),
        );
        write_if_changed(&dir.join("Cargo.toml"), &manifest);
        // The library includes the generated file exactly as xenblk does,
        // under no_std and strict lints; the binary prints some values.
        write_if_changed(
            &dir.join("src/lib.rs"),
            r#"#![no_std]
#![deny(warnings, missing_docs)]
//! Includes the generated config like xenblk's lib.rs.

/// Build-time configuration.
pub mod config {
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}
"#,
        );
        write_if_changed(
            &dir.join("src/main.rs"),
            r#"use buildrs_check::config::*;

fn main() {
    println!(
        "{CONFIG_FILE} {PROFILE} guests={GUESTS} order={RING_ORDER} slots={RING_SLOTS} \
         pool={FRONTEND_POOL_GRANTS} total={BACKEND_TOTAL_GRANTS} fp={STATIC_FOOTPRINT_BYTES}"
    );
}
"#,
        );
        let lock = ws.join("Cargo.lock");
        if lock.exists() && !dir.join("Cargo.lock").exists() {
            std::fs::copy(lock, dir.join("Cargo.lock")).unwrap();
        }
        Scratch { dir }
    }

    fn cargo(&self, cmd: &str, config: Option<&str>, netbsd: bool) -> Output {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(cargo);
        c.arg(cmd)
            .arg("--offline")
            .arg("--quiet")
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", self.dir.join("target"))
            .env_remove("XENBLK_CONFIG")
            .env_remove("RUSTFLAGS");
        if netbsd {
            c.args(["--features", "ring-netbsd"]);
        }
        if let Some(cfg) = config {
            c.env("XENBLK_CONFIG", cfg);
        }
        c.output().expect("run cargo")
    }
}

fn write_if_changed(p: &Path, s: &str) {
    if std::fs::read_to_string(p).ok().as_deref() != Some(s) {
        std::fs::write(p, s).unwrap();
    }
}

#[track_caller]
fn ok_run(o: &Output) -> String {
    assert!(o.status.success(), "cargo failed:\nstdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

#[test]
fn xenblk_build_script() {
    let s = Scratch::new();
    let ws = workspace();

    // The shipped configs generate code that compiles, and the values land.
    for (file, netbsd, want) in [
        ("default.cfg", false, "linux guests=1 order=0 slots=32 pool=352 total=1056"),
        ("default.cfg", true, "netbsd guests=1 order=0 slots=32 pool=352 total=1056"),
        ("guests-15.cfg", false, "linux guests=15 order=0 slots=32 pool=352 total=5280"),
        ("netbsd.cfg", true, "netbsd guests=1 order=0"),
        ("embedded-small.cfg", false, "linux guests=1 order=0 slots=32 pool=11 total=11"),
    ] {
        let abs = ws.join("configs").join(file);
        let out = ok_run(&s.cargo("run", Some(abs.to_str().unwrap()), netbsd));
        assert!(out.starts_with(&format!("{} {want}", abs.display())), "{file}: {out}");
    }

    // A bad config fails the build with the located message.
    let bad = s.dir.join("bad.cfg");
    std::fs::write(&bad, "guests = 2\n[backend]\nmax_grant = 3\n").unwrap();
    let o = s.cargo("build", Some(bad.to_str().unwrap()), false);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    let headline =
        format!("{}:3:1: unknown key `backend.max_grant`; did you mean `backend.max_grants`?", bad.display());
    assert!(err.contains(&format!("error: buildrs-check@0.0.0: {headline}")), "{err}");
    // ... and the source line with its caret.
    assert!(err.contains("    max_grant = 3\n      ^"), "{err}");

    // The ring-netbsd feature selects the netbsd profile.
    let order1 = s.dir.join("configs/order1.cfg");
    write_if_changed(&order1, "ring.order = 1\n");
    let o = s.cargo("build", Some("configs/order1.cfg"), true);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("configs/order1.cfg:1:14: `ring.order` = 1 is not allowed with profile netbsd"), "{err}");
    // A relative path is relative to the package root (not the cwd).
    let out = ok_run(&s.cargo("run", Some("configs/order1.cfg"), false));
    assert!(out.starts_with("configs/order1.cfg linux guests=1 order=1 slots=64"), "{out}");

    // Without XENBLK_CONFIG: configs/default.cfg of the package.
    write_if_changed(&s.dir.join("configs/default.cfg"), "guests = 3\n");
    let out = ok_run(&s.cargo("run", None, false));
    assert!(out.starts_with("configs/default.cfg linux guests=3"), "{out}");

    // Editing the config file re-runs the build script.
    let edit = s.dir.join("configs/edit.cfg");
    std::fs::write(&edit, "guests = 4\n").unwrap();
    let out = ok_run(&s.cargo("run", Some("configs/edit.cfg"), false));
    assert!(out.contains("guests=4"), "{out}");
    // Make sure the mtime moves even on coarse-grained file systems.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(&edit, "guests = 5\n").unwrap();
    let out = ok_run(&s.cargo("run", Some("configs/edit.cfg"), false));
    assert!(out.contains("guests=5"), "{out}");
}
