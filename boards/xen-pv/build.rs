//! With `XENBLK_XEN_PV=1` (set by `build.sh`), builds the guest kernel: `cfg(xenblk_xen_pv)`
//! selects the `no_std`/`no_main` kernel, and the link uses no start files, no default
//! libraries, a static non-PIE image and `xen-pv.ld` (load address 0, Xen ELF notes kept).

fn main() {
    println!("cargo::rerun-if-env-changed=XENBLK_XEN_PV");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=xen-pv.ld");
    if std::env::var_os("XENBLK_XEN_PV").is_some_and(|v| v == "1") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo::rustc-cfg=xenblk_xen_pv");
        for arg in [
            "-nostartfiles",
            "-nodefaultlibs",
            "-static",
            "-no-pie",
            "-Wl,--gc-sections",
            "-Wl,--build-id=none",
            "-Wl,-z,max-page-size=4096",
            "-Wl,-z,noexecstack",
        ] {
            println!("cargo::rustc-link-arg-bins={arg}");
        }
        println!("cargo::rustc-link-arg-bins=-Wl,-T,{dir}/xen-pv.ld");
    }
}
