//! `xenblk-back`: the xenblk backend as a dom0 (or driver-domain) daemon.
//!
//! Watches `/local/domain/<me>/backend/<type>/`, and for every `<frontend-domid>/<devid>`
//! directory the toolstack creates, serves the file named by its `params` key (a QEMU-style
//! `aio:`/`raw:` prefix is stripped) or the `--image` given, with the driver's `Backend`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use xenblk::modes::backend::{BackPhase, Backend, BackendConfig, DataPath};
use xenblk::platform::{Tx, Wait, XenStore};
use xenblk_linux::platform::LinuxBackend;
use xenblk_linux::storage::FileStorage;

const USAGE: &str = "usage: xenblk-back [--type qdisk|vbd] [--image PATH] [--once] [--copy] [--no-persistent]
  --type T          backend directory type to serve (default qdisk: the kernel blkback owns vbd)
  --image PATH      serve PATH instead of the device's `params` key
  --once            exit after the first device closes
  --copy            grant-copy data path (no mapping, no persistent grants)
  --no-persistent   do not offer feature-persistent
Run in dom0 with xenstored (or /dev/xen/xenbus), /dev/xen/evtchn and /dev/xen/gntdev.";

#[derive(Debug, Default)]
struct Args {
    ty: String,
    image: Option<String>,
    once: bool,
    copy: bool,
    no_persistent: bool,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args { ty: "qdisk".into(), ..Args::default() };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--type" => a.ty = it.next().ok_or("--type needs a value")?,
            "--image" => a.image = Some(it.next().ok_or("--image needs a value")?),
            "--once" => a.once = true,
            "--copy" => a.copy = true,
            "--no-persistent" => a.no_persistent = true,
            "-h" | "--help" => return Err(String::new()),
            o => return Err(format!("unknown argument {o}")),
        }
    }
    if a.ty != "qdisk" && a.ty != "vbd" {
        return Err(format!("bad --type {}", a.ty));
    }
    Ok(a)
}

struct Dev {
    b: Backend<FileStorage>,
    connected: bool,
}

fn strip_format(params: &str) -> &str {
    for p in ["aio:", "raw:", "file:", "phy:"] {
        if let Some(s) = params.strip_prefix(p) {
            return s;
        }
    }
    params
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("xenblk-back: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    let mut plat = match LinuxBackend::open() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xenblk-back: cannot open xenstore/evtchn/gntdev: {e:?}");
            return ExitCode::from(1);
        }
    };
    let me = plat.own_domid();
    let base = format!("/local/domain/{}/backend/{}", me.0, args.ty);
    let mut cfg = BackendConfig::default();
    if args.copy {
        cfg.data_path = DataPath::Copy;
        cfg.persistent = false;
    }
    if args.no_persistent {
        cfg.persistent = false;
    }
    if let Err(e) = plat.watch(&base, 0) {
        eprintln!("xenblk-back: watch {base}: {e:?}");
        return ExitCode::from(1);
    }
    println!("xenblk-back: pid {} domid {} watching {base}", std::process::id(), me.0);
    let t0 = Instant::now();
    let mut devs: BTreeMap<String, Dev> = BTreeMap::new();
    let mut next_token = 1u32;
    let mut served_one = false;
    loop {
        let wake = plat.wait(Some(200));
        if wake.xenstore {
            // Rescan for new device directories (cheap; the toolstack adds them rarely).
            for fe in plat.xs.directory(Tx::NONE, &base).unwrap_or_default() {
                for devid in plat.xs.directory(Tx::NONE, &format!("{base}/{fe}")).unwrap_or_default() {
                    let dir = format!("{base}/{fe}/{devid}");
                    if devs.contains_key(&dir) {
                        continue;
                    }
                    let params = plat.xs.read_string(Tx::NONE, &format!("{dir}/params")).unwrap_or_default();
                    let mode = plat.xs.read_string(Tx::NONE, &format!("{dir}/mode")).unwrap_or_else(|_| "w".into());
                    let path = args.image.clone().unwrap_or_else(|| strip_format(&params).to_string());
                    if path.is_empty() {
                        continue; // params not written yet; the next firing retries
                    }
                    let storage = match FileStorage::open(&path, mode == "r") {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("xenblk-back: {dir}: open {path}: {e}");
                            devs.remove(&dir);
                            continue;
                        }
                    };
                    match Backend::probe(&mut plat, &dir, cfg, storage, next_token) {
                        Ok(b) => {
                            println!("xenblk-back: {dir}: serving {path} (mode {mode}), token {next_token}");
                            next_token += 1;
                            devs.insert(dir, Dev { b, connected: false });
                        }
                        Err(e) => eprintln!("xenblk-back: {dir}: probe: {e:?}"),
                    }
                }
            }
            for d in devs.values_mut() {
                d.b.on_xenstore(&mut plat);
            }
        }
        for d in devs.values_mut() {
            d.b.process(&mut plat);
            d.b.tick(&mut plat, t0.elapsed().as_millis() as u64);
        }
        let mut gone = Vec::new();
        for (dir, d) in devs.iter_mut() {
            match d.b.phase() {
                BackPhase::Connected if !d.connected => {
                    d.connected = true;
                    println!("xenblk-back: {dir}: connected {:?}", d.b.negotiated());
                }
                BackPhase::Closed | BackPhase::Removed if d.connected => {
                    println!("xenblk-back: {dir}: closed; stats {:?}; cache {:?}", d.b.stats(), d.b.cache());
                    gone.push(dir.clone());
                }
                BackPhase::Halted(why) if d.connected => {
                    println!("xenblk-back: {dir}: halted {why:?}");
                    d.connected = false;
                }
                _ => {}
            }
        }
        for dir in gone {
            if let Some(mut d) = devs.remove(&dir) {
                d.b.shutdown(&mut plat);
            }
            served_one = true;
        }
        if args.once && served_one {
            return ExitCode::SUCCESS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Args, String> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn args() {
        let a = p(&["--image", "/x", "--once", "--type", "vbd"]).unwrap();
        assert_eq!((a.ty.as_str(), a.image.as_deref(), a.once), ("vbd", Some("/x"), true));
        assert_eq!(p(&[]).unwrap().ty, "qdisk");
        assert!(p(&["--type", "nbd"]).is_err());
        assert!(p(&["--image"]).is_err());
        assert_eq!(p(&["-h"]).err(), Some(String::new()));
        assert_eq!(strip_format("aio:/dev/ram1"), "/dev/ram1");
        assert_eq!(strip_format("/img"), "/img");
    }
}
