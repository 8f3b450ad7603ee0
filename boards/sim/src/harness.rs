//! Many guests doing verified random I/O against one backend domain, on the sim.
//!
//! This file is shared: the `xenblk-sim` crate compiles it (for `simrun` and the benchmark)
//! and the driver's integration tests include it with `#[path]`, so that it is compiled
//! against exactly the feature combination under test. It therefore names everything by
//! absolute paths (`xenblk::…`, `xenblk_sim::…`) and gates each role on
//! `feature = "frontend"` / `feature = "backend"`: where a role is not compiled in, the
//! reference peer of [`xenblk_sim::peers`] plays it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use xenblk::proto::grant::DomId;
use xenblk_sim::{Dom, Hypervisor, VbdSpec};

/// How data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No persistence: the backend maps and unmaps every segment.
    Map,
    /// Persistent grants; the frontend copies through its pool.
    Persistent,
    /// The backend uses grant copy (no mapping).
    Copy,
    /// Persistent grants; the caller fills pooled pages itself (no copy).
    ZeroCopy,
}

impl Mode {
    /// Parses `map|persistent|copy|zerocopy`.
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "map" => Mode::Map,
            "persistent" => Mode::Persistent,
            "copy" => Mode::Copy,
            "zerocopy" | "zero-copy" => Mode::ZeroCopy,
            _ => return None,
        })
    }
    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Map => "map",
            Mode::Persistent => "persistent",
            Mode::Copy => "copy",
            Mode::ZeroCopy => "zerocopy",
        }
    }
}

/// The I/O mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Reads only.
    Read,
    /// Writes only.
    Write,
    /// Half and half.
    Mixed,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Guest domains.
    pub guests: usize,
    /// Requests per guest.
    pub ops: u64,
    /// Run for this long instead of `ops` (benchmarks).
    pub duration: Option<Duration>,
    /// Data path.
    pub mode: Mode,
    /// Frontends offer persistence (ignored by `Map`, which turns it off).
    pub front_persistent: bool,
    /// Backend offers persistence.
    pub back_persistent: bool,
    /// Requests each guest keeps in flight (capped by its ring).
    pub depth: usize,
    /// Size of each guest's disk in sectors.
    pub disk_sectors: u64,
    /// Largest request in bytes (requests are random multiples of 512 up to this; with
    /// `fixed_size` all are this size).
    pub max_bytes: usize,
    /// All requests of `max_bytes` (the 4 KiB benchmark).
    pub fixed_size: bool,
    /// The mix.
    pub workload: Workload,
    /// Check every read against a model of the disk.
    pub verify: bool,
    /// PRNG seed.
    pub seed: u64,
    /// Close every device at the end and check that all mappings are gone.
    pub close_at_end: bool,
    /// Guests play a board that cannot see mappings (Linux gntalloc; see
    /// `Grants::observes_mappings`).
    pub front_opaque_grants: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            guests: 2,
            ops: 1000,
            duration: None,
            mode: Mode::Persistent,
            front_persistent: true,
            back_persistent: true,
            depth: 32,
            disk_sectors: 4096,
            max_bytes: 11 * 4096,
            fixed_size: false,
            workload: Workload::Mixed,
            verify: true,
            seed: 1,
            close_at_end: true,
            front_opaque_grants: false,
        }
    }
}

/// One guest's results.
#[derive(Clone, Debug, Default)]
pub struct GuestResult {
    /// Domain.
    pub domid: u16,
    /// Requests completed.
    pub ops: u64,
    /// Bytes checked against the model.
    pub verified_bytes: u64,
    /// Requests that completed with an error.
    pub errors: u64,
    /// Reads whose data differed from the model.
    pub mismatches: u64,
    /// Completions for a tag not in flight (a duplicate, or never submitted).
    pub unexpected: u64,
    /// Whether persistence was negotiated.
    pub persistent: bool,
    /// Grant-table grants made by the guest.
    pub grants: u64,
    /// Grants ended.
    pub revokes: u64,
    /// Whether the guest ended Closed cleanly.
    pub closed: bool,
    /// A message if the guest failed.
    pub failure: Option<String>,
}

/// The run's results.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Per guest.
    pub guests: Vec<GuestResult>,
    /// Grant maps done by the backend domain (hypervisor count, including ring maps).
    pub maps: u64,
    /// Grant unmaps done by the backend domain.
    pub unmaps: u64,
    /// Grant-copy elements done by the backend domain.
    pub copies: u64,
    /// Ring maps among `maps`.
    pub ring_maps: u64,
    /// Mappings the backend domain still holds at the end.
    pub live_mappings_at_end: usize,
    /// Grant unmaps by the backend domain before the final shutdown of its backends (with
    /// `close_at_end == false`: the unmaps of the I/O phase alone).
    pub unmaps_before_shutdown: u64,
    /// Wall time of the I/O phase.
    pub elapsed: Duration,
    /// Backend requests served.
    pub backend_requests: u64,
}

impl RunResult {
    /// Total requests.
    pub fn ops(&self) -> u64 {
        self.guests.iter().map(|g| g.ops).sum()
    }
    /// Total verified bytes.
    pub fn verified_bytes(&self) -> u64 {
        self.guests.iter().map(|g| g.verified_bytes).sum()
    }
    /// Total errors (including guests that failed outright).
    pub fn errors(&self) -> u64 {
        self.guests.iter().map(|g| g.errors + g.failure.is_some() as u64).sum()
    }
    /// Total mismatches.
    pub fn mismatches(&self) -> u64 {
        self.guests.iter().map(|g| g.mismatches).sum()
    }
    /// IOPS over the I/O phase.
    pub fn iops(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// The `total:` line of `simrun`.
    pub fn total_line(&self) -> String {
        format!(
            "total: ops={} verified_bytes={} maps={} unmaps={} copies={} errors={} mismatches={}",
            self.ops(),
            self.verified_bytes(),
            self.maps,
            self.unmaps,
            self.copies,
            self.errors(),
            self.mismatches()
        )
    }
}

/// xorshift64*: small, fast, deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is mapped to a fixed non-zero seed).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0): the high half of a 64 x 64-bit product, no division (a
    /// 64-bit `%` was 1% of the seed benchmark's time, one per request).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n.max(1) as u128) >> 64) as u64
    }
}

/// Fills `buf` with a pattern derived from `tag`.
pub fn fill_pattern(buf: &mut [u8], tag: u64) {
    let mut r = Rng::new(tag);
    for c in buf.chunks_mut(8) {
        let v = r.next_u64().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// What a guest's workload generator asks for next.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    /// Write or read.
    pub write: bool,
    /// Start sector.
    pub sector: u64,
    /// Bytes.
    pub bytes: usize,
    /// Tag (unique per guest).
    pub tag: u64,
}

/// The per-guest workload: random non-overlapping requests and a model of the disk.
pub struct Workgen {
    rng: Rng,
    cfg: RunConfig,
    model: Vec<u8>,
    inflight: Vec<(u64, u64, u64)>,
    next_tag: u64,
    /// Requests issued.
    pub issued: u64,
    /// Results so far.
    pub result: GuestResult,
    buf: Vec<u8>,
}

impl Workgen {
    /// For guest number `g`.
    pub fn new(cfg: &RunConfig, g: usize) -> Workgen {
        Workgen {
            rng: Rng::new(cfg.seed ^ ((g as u64 + 1) << 32)),
            cfg: cfg.clone(),
            model: if cfg.verify { vec![0; cfg.disk_sectors as usize * 512] } else { Vec::new() },
            inflight: Vec::new(),
            next_tag: 1,
            issued: 0,
            result: GuestResult::default(),
            buf: vec![0; cfg.max_bytes.max(512)],
        }
    }

    /// Whether more requests should be issued.
    pub fn wants_more(&self, started: Instant) -> bool {
        match self.cfg.duration {
            Some(d) => started.elapsed() < d,
            None => self.issued < self.cfg.ops,
        }
    }

    /// The next request (non-overlapping with those in flight), and its write data in
    /// [`data`](Self::data).
    pub fn next(&mut self, max_bytes: usize) -> Op {
        let max = max_bytes.min(self.cfg.max_bytes).max(512) / 512;
        let write = match self.cfg.workload {
            Workload::Read => false,
            Workload::Write => true,
            Workload::Mixed => self.rng.below(2) == 0,
        };
        let mut tries = 0;
        loop {
            let n = if self.cfg.fixed_size { max } else { 1 + self.rng.below(max as u64) as usize };
            let n = n.min(self.cfg.disk_sectors as usize);
            // Align 4 KiB requests to pages, like a filesystem would; others anywhere.
            let sector = if n % 8 == 0 {
                self.rng.below(self.cfg.disk_sectors / 8 - (n as u64 / 8) + 1) * 8
            } else {
                self.rng.below(self.cfg.disk_sectors - n as u64 + 1)
            };
            let end = sector + n as u64;
            tries += 1;
            if self.inflight.iter().any(|&(s, e, _)| sector < e && s < end) && tries < 64 {
                continue;
            }
            let tag = self.next_tag;
            self.next_tag += 1;
            self.inflight.push((sector, end, tag));
            self.issued += 1;
            if write {
                fill_pattern(&mut self.buf[..n * 512], tag ^ self.cfg.seed);
            }
            return Op { write, sector, bytes: n * 512, tag };
        }
    }

    /// Write data of the last [`next`](Self::next).
    pub fn data(&self, op: &Op) -> &[u8] {
        &self.buf[..op.bytes]
    }

    /// The request was not accepted: forget it.
    pub fn cancel(&mut self, op: &Op) {
        self.inflight.retain(|&(_, _, t)| t != op.tag);
        self.issued -= 1;
        self.next_tag -= 1;
    }

    /// Records a completion; `read` gives read data for verification.
    pub fn complete(&mut self, op: &Op, ok: bool, read: Option<&[u8]>) {
        self.inflight.retain(|&(_, _, t)| t != op.tag);
        self.result.ops += 1;
        if !ok {
            self.result.errors += 1;
            return;
        }
        if !self.cfg.verify {
            return;
        }
        let lo = op.sector as usize * 512;
        let hi = lo + op.bytes;
        if op.write {
            let mut d = vec![0u8; op.bytes];
            fill_pattern(&mut d, op.tag ^ self.cfg.seed);
            self.model[lo..hi].copy_from_slice(&d);
            self.result.verified_bytes += op.bytes as u64;
        } else if let Some(data) = read {
            if data.len() != op.bytes || data != &self.model[lo..hi] {
                self.result.mismatches += 1;
            } else {
                self.result.verified_bytes += op.bytes as u64;
            }
        }
    }

    /// The model (for a final comparison with the disk).
    pub fn model(&self) -> &[u8] {
        &self.model
    }
}

fn pump_watches(dom: &Dom) -> bool {
    let w = dom.poll_pending();
    let ev = w.watches;
    if ev {
        dom.take_watch_events();
    }
    ev
}

// ------------------------------------------------------------------ guest side

#[cfg(feature = "frontend")]
fn run_guest(
    mut dom: Dom,
    dir: String,
    cfg: RunConfig,
    g: usize,
    stop: Arc<AtomicBool>,
    started: Arc<(std::sync::Barrier, std::sync::Mutex<Option<Instant>>)>,
) -> (GuestResult, Workgen) {
    use xenblk::modes::frontend::{Frontend, FrontendConfig, Io, Phase, Status, SubmitError};
    let fcfg = FrontendConfig { persistent: cfg.front_persistent && cfg.mode != Mode::Map, ..Default::default() };
    let mut wg = Workgen::new(&cfg, g);
    wg.result.domid = dom.id().0;
    dom.set_opaque_grants(cfg.front_opaque_grants);
    let mut f = match Frontend::attach(&mut dom, &dir, fcfg, 1) {
        Ok(f) => f,
        Err(e) => {
            wg.result.failure = Some(format!("attach: {e:?}"));
            started.0.wait();
            return (wg.result.clone(), wg);
        }
    };
    let t0 = Instant::now();
    while f.phase() != Phase::Connected {
        let w = dom.wait(Some(Duration::from_millis(50)));
        if w.watches {
            dom.take_watch_events();
        }
        f.on_xenstore(&mut dom);
        if matches!(f.phase(), Phase::Failed(_)) || t0.elapsed() > Duration::from_secs(20) {
            wg.result.failure = Some(format!("connect: {:?}", f.phase()));
            started.0.wait();
            return (wg.result.clone(), wg);
        }
    }
    wg.result.persistent = f.negotiated().persistent;
    started.0.wait();
    let start = started.1.lock().unwrap().unwrap_or_else(Instant::now);
    let max_bytes = f.max_request_bytes();
    let depth = cfg.depth.min(f.ring_slots()).max(1);
    let zero = cfg.mode == Mode::ZeroCopy;
    // Zero-copy: one lent buffer per slot, reused.
    let mut spare: Vec<xenblk::modes::frontend::Buffer> = Vec::new();
    if zero {
        for _ in 0..depth {
            match f.alloc_buffer(&mut dom, cfg.max_bytes.min(max_bytes)) {
                Ok(b) => spare.push(b),
                Err(_) => break,
            }
        }
    }
    let mut ops: std::collections::HashMap<u64, Op> = std::collections::HashMap::new();
    let mut rd = vec![0u8; max_bytes.max(cfg.max_bytes)];
    let mut done: Vec<(Op, bool, xenblk::modes::frontend::Buffer)> = Vec::new();
    loop {
        // Fill the queue.
        let mut submitted = false;
        while ops.len() < depth && wg.wants_more(start) && !stop.load(Ordering::Relaxed) {
            let op = wg.next(max_bytes);
            let r = if zero {
                let Some(buf) = spare.pop() else {
                    wg.cancel(&op);
                    break;
                };
                if op.write {
                    f.buffer_write(&buf, 0, wg.data(&op));
                }
                f.submit_buffer(&mut dom, op.write, op.sector, buf, op.bytes, op.tag).map_err(|(e, b)| {
                    spare.push(b);
                    e
                })
            } else if op.write {
                f.submit(&mut dom, Io::Write { sector: op.sector, data: wg.data(&op) }, op.tag)
            } else {
                f.submit(&mut dom, Io::Read { sector: op.sector, sectors: (op.bytes / 512) as u32 }, op.tag)
            };
            match r {
                Ok(()) => {
                    ops.insert(op.tag, op);
                    submitted = true;
                }
                Err(SubmitError::Busy) => {
                    wg.cancel(&op);
                    break;
                }
                Err(e) => {
                    wg.cancel(&op);
                    wg.result.failure = Some(format!("submit: {e:?}"));
                    break;
                }
            }
        }
        if submitted {
            f.kick(&mut dom);
        }
        if ops.is_empty() && (!wg.wants_more(start) || stop.load(Ordering::Relaxed) || wg.result.failure.is_some()) {
            break;
        }
        let verify = cfg.verify;
        let n = f.poll(&mut dom, |c| {
            let ok = c.status == Status::Ok;
            let Some(op) = ops.remove(&c.tag) else {
                wg.result.unexpected += 1;
                return;
            };
            match c.take_buffer() {
                // Zero-copy: the data is in the lent pages; look at it after the poll.
                Some(b) => done.push((op, ok, b)),
                None if !op.write && ok => {
                    // The copy out of the pool is the persistent path's real cost: always do it.
                    let len = c.read_data(&mut rd[..op.bytes]);
                    wg.complete(&op, true, Some(&rd[..len]));
                }
                None => wg.complete(&op, ok, None),
            }
        });
        for (op, ok, b) in done.drain(..) {
            if verify && !op.write && ok {
                let len = f.buffer_read(&b, &mut rd[..op.bytes]);
                wg.complete(&op, true, Some(&rd[..len]));
            } else {
                wg.complete(&op, ok, None);
            }
            spare.push(b);
        }
        if let Phase::Failed(why) = f.phase() {
            wg.result.failure = Some(format!("device failed: {why:?}"));
            break;
        }
        if n == 0 && !submitted {
            let w = dom.wait(Some(Duration::from_millis(200)));
            if w.watches {
                dom.take_watch_events();
                f.on_xenstore(&mut dom);
            }
        }
    }
    for b in spare.drain(..) {
        f.free_buffer(&mut dom, b);
    }
    let ps = f.pool_stats();
    wg.result.grants = ps.grants;
    wg.result.revokes = ps.revokes;
    if cfg.close_at_end {
        f.close(&mut dom);
        let t0 = Instant::now();
        while f.phase() != Phase::Closed && t0.elapsed() < Duration::from_secs(20) {
            let w = dom.wait(Some(Duration::from_millis(50)));
            if w.watches {
                dom.take_watch_events();
            }
            f.on_xenstore(&mut dom);
        }
        wg.result.closed = f.phase() == Phase::Closed;
        f.shutdown(&mut dom);
    }
    (wg.result.clone(), wg)
}

#[cfg(not(feature = "frontend"))]
fn run_guest(
    mut dom: Dom,
    dir: String,
    cfg: RunConfig,
    g: usize,
    stop: Arc<AtomicBool>,
    started: Arc<(std::sync::Barrier, std::sync::Mutex<Option<Instant>>)>,
) -> (GuestResult, Workgen) {
    use xenblk_sim::peers::RawFrontend;
    let mut wg = Workgen::new(&cfg, g);
    wg.result.domid = dom.id().0;
    let persistent = cfg.front_persistent && cfg.mode != Mode::Map;
    let mut f = RawFrontend::new(&mut dom, &dir, persistent);
    let t0 = Instant::now();
    while !f.step(&mut dom) {
        dom.wait(Some(Duration::from_millis(50)));
        pump_watches(&dom);
        if t0.elapsed() > Duration::from_secs(20) {
            wg.result.failure = Some("connect timeout".into());
            started.0.wait();
            return (wg.result.clone(), wg);
        }
    }
    wg.result.persistent = f.negotiated_persistent;
    started.0.wait();
    let start = started.1.lock().unwrap().unwrap_or_else(Instant::now);
    let max_bytes = cfg.max_bytes.min(11 * 4096);
    let mut ops: std::collections::HashMap<u64, Op> = std::collections::HashMap::new();
    loop {
        let mut submitted = false;
        while ops.len() < cfg.depth.min(32) && f.can_submit() && wg.wants_more(start) && !stop.load(Ordering::Relaxed) {
            let op = wg.next(max_bytes);
            let id = f.submit(&mut dom, op.sector, op.bytes, if op.write { Some(wg.data(&op)) } else { None });
            ops.insert(id, op);
            submitted = true;
        }
        if submitted {
            f.kick(&mut dom);
        }
        if ops.is_empty() && (!wg.wants_more(start) || stop.load(Ordering::Relaxed)) {
            break;
        }
        let done = f.poll(&mut dom);
        let n = done.len();
        for c in done {
            let Some(op) = ops.remove(&c.id) else {
                wg.result.unexpected += 1;
                continue;
            };
            let ok = c.status == 0;
            wg.complete(&op, ok, if op.write { None } else { Some(&c.data) });
        }
        if n == 0 && !submitted {
            dom.wait(Some(Duration::from_millis(200)));
            pump_watches(&dom);
        }
    }
    if cfg.close_at_end {
        let t0 = Instant::now();
        while !f.close(&mut dom) && t0.elapsed() < Duration::from_secs(20) {
            dom.wait(Some(Duration::from_millis(20)));
            pump_watches(&dom);
        }
        wg.result.closed = t0.elapsed() < Duration::from_secs(20);
    }
    (wg.result.clone(), wg)
}

// ---------------------------------------------------------------- backend side

struct BackendSide {
    #[cfg(feature = "backend")]
    backs: Vec<xenblk::modes::backend::Backend<xenblk_sim::RamDisk>>,
    #[cfg(not(feature = "backend"))]
    backs: Vec<xenblk_sim::peers::RawBackend>,
}

#[cfg(feature = "backend")]
fn make_backends(dom: &mut Dom, dirs: &[String], cfg: &RunConfig, disks: &[xenblk_sim::RamDisk]) -> BackendSide {
    use xenblk::modes::backend::{Backend, BackendConfig, DataPath};
    let mut bcfg = BackendConfig { persistent: cfg.back_persistent, ..Default::default() };
    if cfg.mode == Mode::Copy {
        bcfg.data_path = DataPath::Copy;
    }
    let backs = dirs
        .iter()
        .zip(disks)
        .enumerate()
        .map(|(i, (d, disk))| Backend::probe(dom, d, bcfg, disk.clone(), 100 + i as u32).expect("backend probe"))
        .collect();
    BackendSide { backs }
}

#[cfg(not(feature = "backend"))]
fn make_backends(dom: &mut Dom, dirs: &[String], cfg: &RunConfig, disks: &[xenblk_sim::RamDisk]) -> BackendSide {
    let backs = dirs
        .iter()
        .zip(disks)
        .map(|(d, disk)| xenblk_sim::peers::RawBackend::new(dom, d, disk.clone(), cfg.back_persistent))
        .collect();
    BackendSide { backs }
}

impl BackendSide {
    #[cfg(feature = "backend")]
    fn on_xenstore(&mut self, dom: &mut Dom) {
        for b in &mut self.backs {
            b.on_xenstore(dom);
        }
    }
    #[cfg(not(feature = "backend"))]
    fn on_xenstore(&mut self, dom: &mut Dom) {
        for b in &mut self.backs {
            b.step(dom);
        }
    }
    fn serve(&mut self, dom: &mut Dom, ports: &xenblk_sim::PortSet) -> u64 {
        let mut n = 0;
        for b in &mut self.backs {
            // Any queue's event: `process` serves every queue.
            if b.ports().iter().any(|&p| ports.contains(p)) {
                n += b.process(dom) as u64;
            }
        }
        n
    }
    #[cfg(feature = "backend")]
    fn tick(&mut self, dom: &mut Dom, now_ms: u64) {
        for b in &mut self.backs {
            b.tick(dom, now_ms);
        }
    }
    #[cfg(not(feature = "backend"))]
    fn tick(&mut self, _dom: &mut Dom, _now_ms: u64) {}
    #[cfg(feature = "backend")]
    fn shutdown(&mut self, dom: &mut Dom) {
        for b in &mut self.backs {
            b.shutdown(dom);
        }
    }
    #[cfg(not(feature = "backend"))]
    fn shutdown(&mut self, dom: &mut Dom) {
        for b in &mut self.backs {
            b.shutdown(dom);
        }
    }
}

/// The disks of the last run (for tests that inspect them).
pub struct Disks(pub Vec<xenblk_sim::RamDisk>);

/// Runs the configured workload; returns results and each guest's final model and disk.
pub fn run_with_disks(cfg: &RunConfig) -> (RunResult, Vec<Workgen>, Disks) {
    let hv = Hypervisor::new();
    let mut dom0 = hv.take_dom0().expect("dom0");
    let disks: Vec<xenblk_sim::RamDisk> = (0..cfg.guests).map(|_| xenblk_sim::RamDisk::new(cfg.disk_sectors)).collect();
    let mut guests = Vec::new();
    let mut back_dirs = Vec::new();
    for _ in 0..cfg.guests {
        let d = hv.create_domain(2048);
        let spec = VbdSpec::new(d.id(), DomId::DOM0, 51712);
        hv.add_vbd(&spec).expect("add_vbd");
        back_dirs.push(spec.backend_path());
        guests.push((d, spec.frontend_path()));
    }
    let mut side = make_backends(&mut dom0, &back_dirs, cfg, &disks);
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let started = Arc::new((std::sync::Barrier::new(cfg.guests + 1), std::sync::Mutex::new(None)));
    let kick0 = dom0.kicker();
    let mut handles = Vec::new();
    for (g, (d, dir)) in guests.into_iter().enumerate() {
        let (cfg, stop, finished, started, kick0) =
            (cfg.clone(), stop.clone(), finished.clone(), started.clone(), kick0.clone());
        handles.push(std::thread::spawn(move || {
            let r = run_guest(d, dir, cfg, g, stop, started);
            finished.fetch_add(1, Ordering::SeqCst);
            kick0.kick();
            r
        }));
    }
    // Serve until every guest connected, then release them together.
    let t0 = Instant::now();
    let mut barrier_done = false;
    let mut start = Instant::now();
    let mut backend_requests = 0u64;
    let mut last_tick = Instant::now();
    let before = dom0.stats();
    loop {
        if !barrier_done {
            // Connect phase: keep serving xenstore until guests reach the barrier.
            let w = dom0.wait(Some(Duration::from_millis(5)));
            if w.watches {
                dom0.take_watch_events();
            }
            side.on_xenstore(&mut dom0);
            backend_requests += side.serve(&mut dom0, &w.ports);
            let connected = side_connected(&side);
            if connected == cfg.guests || finished.load(Ordering::SeqCst) > 0 || t0.elapsed() > Duration::from_secs(30)
            {
                // Let the guests pass the barrier (they reach it connected or failed).
                let st = started.clone();
                let h = std::thread::spawn(move || {
                    *st.1.lock().unwrap() = Some(Instant::now());
                    st.0.wait();
                });
                // Keep serving xenstore while the barrier fills.
                while !h.is_finished() {
                    let w = dom0.wait(Some(Duration::from_millis(5)));
                    if w.watches {
                        dom0.take_watch_events();
                    }
                    side.on_xenstore(&mut dom0);
                    backend_requests += side.serve(&mut dom0, &w.ports);
                }
                let _ = h.join();
                start = started.1.lock().unwrap().unwrap_or_else(Instant::now);
                barrier_done = true;
            }
            continue;
        }
        let w = dom0.wait(Some(Duration::from_millis(100)));
        if w.watches {
            dom0.take_watch_events();
            side.on_xenstore(&mut dom0);
        }
        backend_requests += side.serve(&mut dom0, &w.ports);
        if last_tick.elapsed() > Duration::from_millis(100) {
            side.tick(&mut dom0, t0.elapsed().as_millis() as u64);
            last_tick = Instant::now();
        }
        if finished.load(Ordering::SeqCst) == cfg.guests {
            break;
        }
    }
    let elapsed = start.elapsed();
    let mut results = Vec::new();
    let mut gens = Vec::new();
    for h in handles {
        let (r, wg) = h.join().expect("guest thread panicked");
        results.push(r);
        gens.push(wg);
    }
    // Closing guests were served above; make sure the backends saw the last state changes.
    side.on_xenstore(&mut dom0);
    let live_before_shutdown = dom0.live_mappings();
    let unmaps_before_shutdown = dom0.stats().unmaps - before.unmaps;
    side.shutdown(&mut dom0);
    let after = dom0.stats();
    let res = RunResult {
        guests: results,
        maps: after.maps - before.maps,
        unmaps: after.unmaps - before.unmaps,
        copies: after.copies - before.copies,
        ring_maps: after.ring_maps - before.ring_maps,
        live_mappings_at_end: if cfg.close_at_end { live_before_shutdown } else { dom0.live_mappings() },
        unmaps_before_shutdown,
        elapsed,
        backend_requests,
    };
    (res, gens, Disks(disks))
}

fn side_connected(side: &BackendSide) -> usize {
    side.backs.iter().filter(|b| b.port().is_some()).count()
}

/// Runs the configured workload.
pub fn run(cfg: &RunConfig) -> RunResult {
    run_with_disks(cfg).0
}

#[cfg(test)]
mod rng_tests {
    use super::Rng;

    #[test]
    fn below_stays_in_range_and_spreads_evenly() {
        let mut r = Rng::new(7);
        for n in [1u64, 2, 3, 10, 64, 1000, u64::MAX] {
            for _ in 0..1000 {
                assert!(r.below(n) < n, "below({n})");
            }
        }
        assert_eq!(r.below(0), 0, "n = 0 is read as 1");
        let mut hist = [0u32; 10];
        for _ in 0..100_000 {
            hist[r.below(10) as usize] += 1;
        }
        assert!(hist.iter().all(|&c| (9_000..11_000).contains(&c)), "{hist:?}");
    }
}
