//! Generates `$OUT_DIR/config.rs` (included as `xenblk::config`) from the
//! build-time config file.
//!
//! The file is `$XENBLK_CONFIG` (absolute, or relative to the workspace
//! root), by default `configs/default.cfg`. It is validated against the ring
//! profile chosen by the cargo features: `ring-netbsd` → `netbsd`, otherwise
//! `linux`. An invalid config fails the build with `FILE:LINE:COL: message`
//! errors. See `configs/REFERENCE.md` and
//! `cargo run -p xenblk-config -- explain FILE`.

use std::path::PathBuf;
use std::{env, fs};

use xenblk_config::Profile;

const DEFAULT_CONFIG: &str = "configs/default.cfg";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=XENBLK_CONFIG");

    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let (name, path) = match env::var("XENBLK_CONFIG") {
        Ok(v) if !v.is_empty() => {
            let p = PathBuf::from(&v);
            let path = if p.is_absolute() { p } else { root.join(p) };
            (v, path)
        }
        Ok(_) | Err(env::VarError::NotPresent) => (DEFAULT_CONFIG.to_string(), root.join(DEFAULT_CONFIG)),
        Err(env::VarError::NotUnicode(v)) => {
            fail(&[format!("XENBLK_CONFIG is not valid UTF-8: {v:?}")], "");
        }
    };
    println!("cargo::rerun-if-changed={}", path.display());

    let profile = if env::var_os("CARGO_FEATURE_RING_NETBSD").is_some() { Profile::Netbsd } else { Profile::Linux };

    let config = match xenblk_config::load_as(&path, &name, profile) {
        Ok(c) => c,
        Err(diags) => {
            let full = diags.to_string();
            let mut headlines = diags.headlines();
            headlines.push(format!(
                "invalid xenblk config `{name}` (profile {profile}); check it with `cargo run -p xenblk-config -- explain {name} --profile {profile}`"
            ));
            fail(&headlines, &full);
        }
    };

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("config.rs");
    let code = xenblk_config::render_rust(&config);
    // Leave the file alone when nothing changed, so its mtime stays put.
    if fs::read_to_string(&out).ok().as_deref() != Some(code.as_str())
        && let Err(e) = fs::write(&out, code)
    {
        fail(&[format!("cannot write {}: {e}", out.display())], "");
    }
}

/// Fails the build: each headline as a cargo error (shown as
/// `error: FILE:LINE:COL: message` in cargo's output), the full diagnostics
/// with source lines and carets on stderr (cargo shows it under
/// `--- stderr`), then a non-zero exit.
fn fail(headlines: &[String], full: &str) -> ! {
    for h in headlines {
        // One directive per line: keep stray line breaks out of it.
        println!("cargo::error={}", h.replace(['\n', '\r'], " "));
    }
    if !full.is_empty() {
        eprintln!("{full}");
    }
    std::process::exit(1);
}
