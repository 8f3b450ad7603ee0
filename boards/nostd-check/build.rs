//! With `XENBLK_NOSTD_FREESTANDING=1` (set by `check.sh`), builds the binary freestanding:
//! `cfg(xenblk_freestanding)` selects the `no_std`/`no_main` entry point, and the link uses
//! no start files, no default libraries (no libc, no libgcc) and a static, non-PIE image.
//! Anything in the driver that needs std or libc then fails to build.

fn main() {
    println!("cargo::rerun-if-env-changed=XENBLK_NOSTD_FREESTANDING");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("XENBLK_NOSTD_FREESTANDING").is_some_and(|v| v == "1") {
        println!("cargo::rustc-cfg=xenblk_freestanding");
        for arg in ["-nostartfiles", "-nodefaultlibs", "-static", "-no-pie", "-Wl,--gc-sections", "-Wl,-e,_start"] {
            println!("cargo::rustc-link-arg-bins={arg}");
        }
    }
}
