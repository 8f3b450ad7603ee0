//! `xenblk-back`: the xenblk backend as a dom0 (or driver-domain) daemon, plus the admin
//! commands that attach a disk to a running guest.
//!
//! `serve` (the default) watches `/local/domain/<me>/backend/<type>/`, and for every
//! `<frontend-domid>/<devid>` directory the toolstack creates, serves what its `params` key
//! names (a QEMU-style `aio:`/`raw:` prefix is stripped): a file, a block device, or an NBD
//! export (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`).
//!
//! `attach DOMID TARGET` makes sure a daemon runs (starting one if not), registers it as the
//! guest's "device model" (libxl only lets a qdisk vbd be added when
//! `/local/domain/<id>/image/device-model-pid` exists), runs `xl block-attach ...
//! backendtype=qdisk,target=TARGET` and waits for the vbd to connect.

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use xenblk::modes::backend::{BackPhase, Backend, BackendConfig, DataPath};
use xenblk::modes::storage::{Storage, StorageError, StorageInfo};
use xenblk::platform::{Tx, Wait, XenStore};
use xenblk::proto::shmem::SharedMem;
use xenblk_linux::nbd::{NbdStorage, Target};
use xenblk_linux::platform::LinuxBackend;
use xenblk_linux::storage::FileStorage;
use xenblk_linux::xenstore::XsClient;

const USAGE: &str = "usage:
  xenblk-back [serve] [--type qdisk|vbd] [--image PATH] [--once] [--copy] [--no-persistent]
                      [--pidfile FILE]
      run the backend daemon (foreground; logs to stdout)
      --type T          backend directory type to serve (default qdisk: the kernel blkback owns vbd)
      --image PATH      serve PATH for every device instead of the device's `params` key
      --once            exit after the first device closes
      --copy            grant-copy data path (no mapping, no persistent grants)
      --no-persistent   do not offer feature-persistent
      --pidfile FILE    write the daemon's pid there
  xenblk-back attach DOMID TARGET [--vdev xvdb] [--ro] [--no-wait] [--log FILE] [-- SERVE-ARGS]
      attach TARGET (image file, block device, nbd://HOST[:PORT]/EXPORT or
      nbd+unix:///EXPORT?socket=PATH) to the running guest DOMID (id or name) as a qdisk vbd
      served by xenblk-back; starts the daemon (log FILE, default /var/log/xenblk-back.log,
      pidfile /run/xenblk-back.pid) if none runs; waits until the vbd is connected (30 s)
  xenblk-back detach DOMID VDEV
      xl block-detach DOMID VDEV
Run in dom0 (or a driver domain) with xenstored, /dev/xen/evtchn and /dev/xen/gntdev.";

const PIDFILE: &str = "/run/xenblk-back.pid";
const LOGFILE: &str = "/var/log/xenblk-back.log";

#[derive(Debug, Default, PartialEq)]
struct ServeArgs {
    ty: String,
    image: Option<String>,
    once: bool,
    copy: bool,
    no_persistent: bool,
    pidfile: Option<String>,
}

#[derive(Debug, PartialEq)]
struct AttachArgs {
    dom: String,
    target: String,
    vdev: String,
    ro: bool,
    wait: bool,
    log: String,
    serve: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum Cmd {
    Serve(ServeArgs),
    Attach(AttachArgs),
    Detach(String, String),
}

fn parse_serve(mut it: impl Iterator<Item = String>) -> Result<ServeArgs, String> {
    let mut a = ServeArgs { ty: "qdisk".into(), ..ServeArgs::default() };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--type" => a.ty = it.next().ok_or("--type needs a value")?,
            "--image" => a.image = Some(it.next().ok_or("--image needs a value")?),
            "--pidfile" => a.pidfile = Some(it.next().ok_or("--pidfile needs a value")?),
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

fn parse(args: Vec<String>) -> Result<Cmd, String> {
    let mut it = args.into_iter().peekable();
    match it.peek().map(String::as_str) {
        Some("serve") => {
            it.next();
            parse_serve(it).map(Cmd::Serve)
        }
        Some("attach") => {
            it.next();
            let mut pos = Vec::new();
            let mut a = AttachArgs {
                dom: String::new(),
                target: String::new(),
                vdev: "xvdb".into(),
                ro: false,
                wait: true,
                log: LOGFILE.into(),
                serve: Vec::new(),
            };
            while let Some(arg) = it.next() {
                match arg.as_str() {
                    "--vdev" => a.vdev = it.next().ok_or("--vdev needs a value")?,
                    "--log" => a.log = it.next().ok_or("--log needs a value")?,
                    "--ro" => a.ro = true,
                    "--no-wait" => a.wait = false,
                    "--" => {
                        a.serve = it.by_ref().collect();
                        parse_serve(a.serve.iter().cloned())?;
                    }
                    "-h" | "--help" => return Err(String::new()),
                    o if o.starts_with("--") => return Err(format!("unknown argument {o}")),
                    _ => pos.push(arg),
                }
            }
            let [dom, target]: [String; 2] = pos.try_into().map_err(|_| "attach needs DOMID and TARGET".to_string())?;
            if target.contains(',') || a.vdev.contains(',') {
                return Err("TARGET and --vdev may not contain ',' (xl disk syntax)".into());
            }
            a.dom = dom;
            a.target = target;
            Ok(Cmd::Attach(a))
        }
        Some("detach") => {
            it.next();
            let v: Vec<String> = it.collect();
            let [dom, vdev]: [String; 2] = v.try_into().map_err(|_| "detach needs DOMID and VDEV".to_string())?;
            Ok(Cmd::Detach(dom, vdev))
        }
        _ => parse_serve(it).map(Cmd::Serve),
    }
}

fn strip_format(params: &str) -> &str {
    for p in ["aio:", "raw:", "file:", "phy:"] {
        if let Some(s) = params.strip_prefix(p) {
            return s;
        }
    }
    params
}

/// What a device is served from.
enum Disk {
    File(FileStorage),
    Nbd(Box<NbdStorage>),
}

impl Disk {
    fn open(path: &str, read_only: bool) -> Result<Disk, String> {
        if path.starts_with("nbd:") || path.starts_with("nbd+") {
            let t = Target::parse(path).ok_or_else(|| format!("bad NBD URI {path}"))?;
            let s = NbdStorage::connect(t, read_only).map_err(|e| e.to_string())?;
            return Ok(Disk::Nbd(Box::new(s)));
        }
        FileStorage::open(path, read_only).map(Disk::File).map_err(|e| e.to_string())
    }
    fn describe(&self) -> String {
        match self {
            Disk::File(_) => "file".into(),
            Disk::Nbd(n) => format!("nbd {:?}", n.export_info()),
        }
    }
}

impl Storage for Disk {
    fn info(&self) -> StorageInfo {
        match self {
            Disk::File(s) => s.info(),
            Disk::Nbd(s) => s.info(),
        }
    }
    fn read(&mut self, sector: u64, dst: SharedMem) -> Result<(), StorageError> {
        match self {
            Disk::File(s) => s.read(sector, dst),
            Disk::Nbd(s) => s.read(sector, dst),
        }
    }
    fn write(&mut self, sector: u64, src: SharedMem) -> Result<(), StorageError> {
        match self {
            Disk::File(s) => s.write(sector, src),
            Disk::Nbd(s) => s.write(sector, src),
        }
    }
    fn flush(&mut self) -> Result<(), StorageError> {
        match self {
            Disk::File(s) => s.flush(),
            Disk::Nbd(s) => s.flush(),
        }
    }
    fn discard(&mut self, sector: u64, n: u64, secure: bool) -> Result<(), StorageError> {
        match self {
            Disk::File(s) => s.discard(sector, n, secure),
            Disk::Nbd(s) => s.discard(sector, n, secure),
        }
    }
}

struct Dev {
    b: Backend<Disk>,
    connected: bool,
    halted: bool,
    /// Error responses already reported in the log.
    errors_logged: u64,
}

/// Requests served per device (and queue) before the daemon turns to the next device.
const PROCESS_BUDGET: usize = 32;

/// Failed requests logged per device (each with its cause); later ones are only counted.
const FAILURES_LOGGED: u64 = 20;

/// The keys both sides wrote, for the log (what was negotiated, as xenstore shows it).
fn xs_features(xs: &mut XsClient, dir: &str, keys: &[&str]) -> String {
    let mut out = Vec::new();
    for k in keys {
        if let Ok(v) = xs.read_string(Tx::NONE, &format!("{dir}/{k}")) {
            out.push(format!("{k}={v}"));
        }
    }
    out.join(" ")
}

const BACK_KEYS: &[&str] = &[
    "feature-persistent",
    "max-ring-page-order",
    "feature-max-indirect-segments",
    "multi-queue-max-queues",
    "feature-flush-cache",
    "feature-discard",
    "sectors",
    "sector-size",
    "mode",
];
const FRONT_KEYS: &[&str] =
    &["protocol", "feature-persistent", "ring-page-order", "multi-queue-num-queues", "ring-ref", "event-channel"];

fn serve(args: ServeArgs) -> ExitCode {
    // libxl sends SIGHUP to the guest's "device model" pid when it destroys the guest; one
    // daemon serves many guests, so that must not end it.
    // SAFETY: installing SIG_IGN has no handler code to be unsafe about; no other thread
    // exists yet.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
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
    if let Some(pf) = &args.pidfile
        && let Err(e) = std::fs::write(pf, format!("{}\n", std::process::id()))
    {
        eprintln!("xenblk-back: pidfile {pf}: {e}");
        return ExitCode::from(1);
    }
    println!(
        "xenblk-back: pid {} domid {} watching {base}; offers persistent={} data_path={:?} max_ring_order={} max_indirect_segments={} max_grants={}",
        std::process::id(),
        me.0,
        cfg.persistent,
        cfg.data_path,
        xenblk::config::RING_ORDER,
        cfg.max_indirect_segments,
        cfg.max_grants
    );
    let t0 = Instant::now();
    let mut devs: BTreeMap<String, Dev> = BTreeMap::new();
    // Directories that failed to open: not retried until they disappear (no log storm).
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut next_token = 1u32;
    let mut served_one = false;
    // Some device stopped at its budget last round: serve again before sleeping.
    let mut more = false;
    loop {
        let wake = plat.wait(Some(if more { 0 } else { 200 }));
        if wake.xenstore {
            // Rescan for new device directories (cheap; the toolstack adds them rarely).
            let mut seen = Vec::new();
            for fe in plat.xs.directory(Tx::NONE, &base).unwrap_or_default() {
                for devid in plat.xs.directory(Tx::NONE, &format!("{base}/{fe}")).unwrap_or_default() {
                    let dir = format!("{base}/{fe}/{devid}");
                    seen.push(dir.clone());
                    if devs.contains_key(&dir) || failed.contains_key(&dir) {
                        continue;
                    }
                    // Only a fresh device (state 1 = Initialising; libxl writes it last).
                    let st = plat.xs.read_string(Tx::NONE, &format!("{dir}/state")).unwrap_or_default();
                    if st != "1" && st != "2" {
                        continue;
                    }
                    let params = plat.xs.read_string(Tx::NONE, &format!("{dir}/params")).unwrap_or_default();
                    let mode = plat.xs.read_string(Tx::NONE, &format!("{dir}/mode")).unwrap_or_else(|_| "w".into());
                    let path = args.image.clone().unwrap_or_else(|| strip_format(&params).to_string());
                    if path.is_empty() {
                        continue; // params not written yet; the next firing retries
                    }
                    let disk = match Disk::open(&path, mode == "r") {
                        Ok(s) => s,
                        Err(e) => {
                            println!("xenblk-back: {dir}: cannot open {path}: {e}");
                            // Tell the toolstack: state 5 (Closing) with an error node.
                            let _ = plat.xs.write(
                                Tx::NONE,
                                &format!("{dir}/hotplug-error"),
                                format!("open {path}: {e}").as_bytes(),
                            );
                            let _ = plat.xs.write(Tx::NONE, &format!("{dir}/state"), b"5");
                            failed.insert(dir, e);
                            continue;
                        }
                    };
                    let what = disk.describe();
                    let info = disk.info();
                    match Backend::probe(&mut plat, &dir, cfg, disk, next_token) {
                        Ok(b) => {
                            println!(
                                "xenblk-back: {dir}: serving {path} ({what}, {} sectors, mode {mode}), token {next_token}",
                                info.sectors
                            );
                            next_token += 1;
                            devs.insert(dir, Dev { b, connected: false, halted: false, errors_logged: 0 });
                        }
                        Err(e) => println!("xenblk-back: {dir}: probe: {e:?}"),
                    }
                }
            }
            failed.retain(|d, _| seen.contains(d));
            for d in devs.values_mut() {
                d.b.on_xenstore(&mut plat);
            }
        }
        more = false;
        for (dir, d) in devs.iter_mut() {
            // Round robin: at most a ring's worth per device and round, so a guest that
            // keeps its ring full cannot starve the others.
            more |= d.b.process_some(&mut plat, PROCESS_BUDGET).more;
            d.b.tick(&mut plat, t0.elapsed().as_millis() as u64);
            let errors = d.b.stats().errors;
            if errors > d.errors_logged && d.errors_logged < FAILURES_LOGGED {
                if let Some(f) = d.b.last_failure() {
                    println!("xenblk-back: {dir}: error response ({errors} so far): {f:?}");
                }
                if errors >= FAILURES_LOGGED {
                    println!("xenblk-back: {dir}: {FAILURES_LOGGED} errors logged; further ones only counted");
                }
            }
            d.errors_logged = errors;
        }
        let mut gone = Vec::new();
        for (dir, d) in devs.iter_mut() {
            match d.b.phase() {
                BackPhase::Connected if !d.connected => {
                    d.connected = true;
                    d.halted = false;
                    let fe = plat.xs.read_string(Tx::NONE, &format!("{dir}/frontend")).unwrap_or_default();
                    println!("xenblk-back: {dir}: connected {:?}", d.b.negotiated());
                    println!("xenblk-back: {dir}: backend keys: {}", xs_features(&mut plat.xs, dir, BACK_KEYS));
                    println!("xenblk-back: {dir}: frontend keys: {}", xs_features(&mut plat.xs, &fe, FRONT_KEYS));
                }
                BackPhase::Closed | BackPhase::Removed => {
                    println!(
                        "xenblk-back: {dir}: closed ({:?}); stats {:?}; cache {:?}; per-queue requests {:?}",
                        d.b.phase(),
                        d.b.stats(),
                        d.b.cache(),
                        d.b.queue_requests()
                    );
                    gone.push(dir.clone());
                }
                BackPhase::Halted(why) if !d.halted => {
                    // A misbehaving frontend: its ring is shut, the daemon carries on.
                    println!("xenblk-back: {dir}: halted {why:?}; stats {:?}", d.b.stats());
                    d.halted = true;
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

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "xenblk-back")
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn attach(a: AttachArgs) -> Result<(), String> {
    let domid: u32 = match a.dom.parse() {
        Ok(d) => d,
        Err(_) => {
            run(Command::new("xl").args(["domid", &a.dom]))?.parse().map_err(|_| format!("no domain {}", a.dom))?
        }
    };
    let mut xs = XsClient::connect_default().map_err(|e| format!("xenstore: {e:?}"))?;
    let dmkey = format!("/local/domain/{domid}/image/device-model-pid");
    // 1. A daemon: the one in the pidfile if alive, else start one.
    let pid = match std::fs::read_to_string(PIDFILE).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
        Some(p) if pid_alive(p) => p,
        _ => {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&a.log)
                .map_err(|e| format!("log {}: {e}", a.log))?;
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let child = Command::new(exe)
                .arg("serve")
                .args(["--pidfile", PIDFILE])
                .args(&a.serve)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("start daemon: {e}"))?;
            let pid = child.id();
            // Wait until it watches (it writes the pidfile after the watch is set).
            let t0 = Instant::now();
            while std::fs::read_to_string(PIDFILE).ok().and_then(|s| s.trim().parse::<u32>().ok()) != Some(pid) {
                if t0.elapsed() > Duration::from_secs(10) || !pid_alive(pid) {
                    return Err(format!("daemon did not start; see {}", a.log));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            println!("xenblk-back: started daemon pid {pid}, log {}", a.log);
            pid
        }
    };
    // 2. Pose as the guest's device model unless a live one is registered.
    match xs.read_string(Tx::NONE, &dmkey).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
        Some(p) if p == pid => {}
        Some(p) if std::path::Path::new(&format!("/proc/{p}")).exists() && !pid_alive(p) => {
            return Err(format!("domain {domid} has a device model (pid {p}) that serves qdisk itself; not attaching"));
        }
        _ => xs.write(Tx::NONE, &dmkey, pid.to_string().as_bytes()).map_err(|e| format!("write {dmkey}: {e:?}"))?,
    }
    // 3. The toolstack creates the vbd (frontend and backend directories, permissions).
    let access = if a.ro { "ro" } else { "rw" };
    let spec = format!("format=raw,vdev={},access={access},backendtype=qdisk,target={}", a.vdev, a.target);
    run(Command::new("xl").args(["block-attach", &domid.to_string(), &spec]))?;
    println!("xenblk-back: xl block-attach {domid} '{spec}' done");
    if !a.wait {
        return Ok(());
    }
    // 4. Wait for the connection (state 4 on both sides).
    let list = run(Command::new("xl").args(["block-list", &domid.to_string()]))?;
    let be = list
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|p| p.contains("/backend/qdisk/"))
        .find(|p| xs.read_string(Tx::NONE, &format!("{p}/dev")).is_ok_and(|d| d == a.vdev))
        .map(str::to_string)
        .ok_or_else(|| format!("vdev {} not in xl block-list", a.vdev))?;
    let fe = xs.read_string(Tx::NONE, &format!("{be}/frontend")).unwrap_or_default();
    let t0 = Instant::now();
    loop {
        let bs = xs.read_string(Tx::NONE, &format!("{be}/state")).unwrap_or_default();
        let fs = xs.read_string(Tx::NONE, &format!("{fe}/state")).unwrap_or_default();
        if bs == "4" && fs == "4" {
            println!("xenblk-back: {be}: connected");
            println!("  backend:  {}", xs_features(&mut xs, &be, BACK_KEYS));
            println!("  frontend: {}", xs_features(&mut xs, &fe, FRONT_KEYS));
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let err = xs.read_string(Tx::NONE, &format!("{be}/hotplug-error")).unwrap_or_default();
            return Err(format!(
                "{be}: not connected after 30 s (backend state {bs}, frontend state {fs}{}); daemon log {}",
                if err.is_empty() { String::new() } else { format!(", {err}") },
                a.log
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() -> ExitCode {
    let cmd = match parse(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("xenblk-back: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    match cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Attach(a) => match attach(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xenblk-back: attach: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Detach(dom, vdev) => match run(Command::new("xl").args(["block-detach", &dom, &vdev])) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xenblk-back: detach: {e}");
                ExitCode::from(1)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Cmd, String> {
        parse(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn args() {
        let Cmd::Serve(a) = p(&["--image", "/x", "--once", "--type", "vbd"]).unwrap() else { panic!() };
        assert_eq!((a.ty.as_str(), a.image.as_deref(), a.once), ("vbd", Some("/x"), true));
        let Cmd::Serve(a) = p(&["serve", "--no-persistent", "--pidfile", "/p"]).unwrap() else { panic!() };
        assert!(a.no_persistent && a.pidfile.as_deref() == Some("/p") && a.ty == "qdisk");
        assert!(matches!(p(&[]).unwrap(), Cmd::Serve(ServeArgs { once: false, .. })));
        assert!(p(&["--type", "nbd"]).is_err());
        assert!(p(&["--image"]).is_err());
        assert_eq!(p(&["-h"]).err(), Some(String::new()));
        let Cmd::Attach(a) = p(&["attach", "3", "/img", "--ro", "--vdev", "xvdc", "--", "--no-persistent"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (a.dom.as_str(), a.target.as_str(), a.vdev.as_str(), a.ro, a.wait),
            ("3", "/img", "xvdc", true, true)
        );
        assert_eq!(a.serve, vec!["--no-persistent".to_string()]);
        let Cmd::Attach(a) = p(&["attach", "g", "nbd://h:1/e", "--no-wait"]).unwrap() else { panic!() };
        assert_eq!((a.vdev.as_str(), a.wait, a.log.as_str()), ("xvdb", false, LOGFILE));
        assert!(p(&["attach", "3"]).is_err());
        assert!(p(&["attach", "3", "/a,b"]).is_err());
        assert!(p(&["attach", "3", "/a", "--", "--bogus"]).is_err());
        assert_eq!(p(&["detach", "3", "xvdb"]).unwrap(), Cmd::Detach("3".into(), "xvdb".into()));
        assert!(p(&["detach", "3"]).is_err());
        assert_eq!(strip_format("aio:/dev/ram1"), "/dev/ram1");
        assert_eq!(strip_format("aio:nbd://h/e"), "nbd://h/e");
        assert_eq!(strip_format("/img"), "/img");
    }
}
