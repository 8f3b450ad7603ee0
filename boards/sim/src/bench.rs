//! The seed benchmark's engine: G guests doing 4 KiB I/O against RAM disks, each guest keeping
//! its ring full, with the real drivers on the sim.
//!
//! # Thread layout
//!
//! The machine has few cores (2 here), so the run uses `workers` host threads (default: the
//! number of cores, at most 2 for the default run) and multiplexes domains on them, the way a
//! hypervisor multiplexes vCPUs on physical CPUs:
//!
//! * worker `w` runs the frontends of guests `g` with `g % W == w`, and
//! * one **backend domain** per worker (a driver domain: "dom0's vCPU w") serving the disks
//!   of guests `g` with `(g + 1) % W == w`.
//!
//! So with two workers every request crosses cores (the guest on one core, its backend on
//! the other, as in the seed where dom0 and the guests ran on different CPUs), both cores do
//! guest work and backend work, and the two backend threads share one address space, so a
//! grant unmap pays the TLB shootdown to the other (busy) core, as a multi-vCPU dom0 does.
//! With one worker (the `--fixed-ops` mode) everything runs in one thread, deterministically.
//!
//! Nothing is short-circuited: every request is encoded into the shared ring, published
//! with the event-index protocol, notified through the sim's event channels, decoded by the
//! backend, served through the `Storage` trait from a [`RamDisk`], and the data moves as the
//! mode says (`map`: a real `mmap`/`munmap` of the guest page per request; `persistent`: the
//! backend keeps its mappings and the frontend copies 4 KiB through its pool; `copy`: grant
//! copy through the hypervisor; `zerocopy`: the guest reads and writes the pooled granted page
//! itself, the frontend copies nothing).
//!
//! A backend serves at most one ring's worth of requests per turn (`BACKEND_BUDGET`) before
//! its worker turns to its other domains, as `xenblk-back` does.
//!
//! A worker with nothing to do spins on `pause` for a few µs, then yields its core until
//! `spin` (50 µs by default) has passed, then blocks in a
//! [`WaitGroup`] shared by its domains (a real futex wait; a notification to any of them
//! wakes it).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use xenblk::modes::backend::{Backend, BackendConfig, DataPath};
use xenblk::modes::frontend::{Buffer, Frontend, FrontendConfig, Io, Phase, Status, SubmitError};
use xenblk::proto::grant::DomId;

use crate::harness::{Mode, Rng, Workload, fill_pattern};
use crate::{Dom, Hypervisor, RamDisk, VbdSpec, WaitGroup};

/// How long an idle worker spins on `pause` before it starts yielding its core.
const PAUSE_SPIN: Duration = Duration::from_micros(4);

/// Bytes per request (the seed's 4 KiB I/O).
pub const IO_BYTES: usize = 4096;

/// Caller buffers per guest on the copying paths: one per ring slot (the zero-copy path
/// lends one pooled buffer per slot), so the frontend's copy lands in distinct memory as a
/// guest's page cache would, not in one always-hot buffer.
const SLOT_BUFFERS: usize = 32;

/// One benchmark run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Guest domains.
    pub guests: usize,
    /// Data path.
    pub mode: Mode,
    /// Reads, writes or both (half and half).
    pub workload: Workload,
    /// How long to run (ignored with `fixed_ops`).
    pub duration: Duration,
    /// Run exactly this many requests in total instead (spread evenly over the guests).
    pub fixed_ops: Option<u64>,
    /// Host threads the domains are multiplexed on.
    pub workers: usize,
    /// Spin this long with nothing to do before blocking.
    pub spin: Duration,
    /// PRNG seed for the request addresses.
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            guests: 1,
            mode: Mode::Persistent,
            workload: Workload::Read,
            duration: Duration::from_millis(500),
            fixed_ops: None,
            workers: 2,
            spin: Duration::from_micros(50),
            seed: 1,
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct BenchResult {
    /// Requests completed in the measured interval.
    pub ops: u64,
    /// The measured interval.
    pub elapsed: Duration,
    /// Requests that completed with an error (must be 0).
    pub errors: u64,
    /// Single-page grant maps done by the backend domains (rings excluded).
    pub maps: u64,
    /// Single-page grant unmaps done by the backend domains.
    pub unmaps: u64,
    /// Grant-copy elements done by the backend domains.
    pub copies: u64,
    /// Event-channel notifications sent (all domains).
    pub notifies: u64,
    /// Times a worker thread went to sleep.
    pub blocks: u64,
    /// Whether every guest negotiated persistence.
    pub persistent: bool,
}

impl BenchResult {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Creates `n` RAM disks of `sectors` each, filled with a pattern (so reads touch real,
/// distinct memory rather than the kernel's zero page). Reused across runs, like the seed's
/// RAM disks.
pub fn make_disks(n: usize, sectors: u64) -> Vec<RamDisk> {
    (0..n)
        .map(|i| {
            let d = RamDisk::new(sectors);
            let mut chunk = vec![0u8; 1 << 20];
            let mut off = 0u64;
            while off < sectors * 512 {
                let len = ((sectors * 512 - off) as usize).min(chunk.len());
                fill_pattern(&mut chunk[..len], (i as u64) << 40 | off);
                d.write_at(off, &chunk[..len]).expect("fill ram disk");
                off += len as u64;
            }
            d
        })
        .collect()
}

/// A caller's I/O buffer: page-aligned, as a guest's page-cache pages and `O_DIRECT`
/// buffers are. (A `Vec<u8>` of 128 KiB comes from `mmap` 16 bytes past a page boundary;
/// see `xenblk::proto::shmem::BULK_CHUNK` for what one 4 KiB `memcpy` at that offset costs
/// on this machine.)
#[repr(C, align(4096))]
struct Page([u8; IO_BYTES]);

struct Guest {
    dom: Dom,
    f: Frontend,
    rng: Rng,
    zero: bool,
    workload: Workload,
    pages: u64,
    inflight: usize,
    depth: usize,
    issued: u64,
    quota: Option<u64>,
    done: u64,
    done_at_stop: Option<u64>,
    errors: u64,
    spare: Vec<Buffer>,
    rd: Vec<Page>,
    wr: Vec<Page>,
    finished: bool,
}

impl Guest {
    fn wants_more(&self, stop: bool) -> bool {
        match self.quota {
            Some(q) => self.issued < q,
            None => !stop,
        }
    }

    /// One pass: consume completions (if notified), refill the ring, publish. Returns the
    /// work done (completions + submissions).
    fn step(&mut self, stop: bool) -> usize {
        let mut work = 0;
        if stop && self.done_at_stop.is_none() {
            self.done_at_stop = Some(self.done);
        }
        let w = self.dom.poll_pending();
        if w.watches {
            self.dom.take_watch_events();
            self.f.on_xenstore(&mut self.dom);
        }
        if !w.ports.is_empty() && self.inflight > 0 {
            let (rd, spare) = (&mut self.rd, &mut self.spare);
            let (mut ok, mut bad) = (0u64, 0u64);
            let n = self.f.poll(&mut self.dom, |c| {
                if c.status == Status::Ok {
                    ok += 1;
                } else {
                    bad += 1;
                }
                match c.take_buffer() {
                    // Zero-copy: the guest would use the data in place; nothing is copied.
                    Some(b) => spare.push(b),
                    None => {
                        if c.tag & 1 == 0 {
                            // Persistent/map/copy read: the frontend's copy out of its pool
                            // into the caller's buffer (one per ring slot, as the zero-copy
                            // path has one lent buffer per slot).
                            c.read_data(&mut rd[(c.tag >> 1) as usize % SLOT_BUFFERS].0);
                        }
                    }
                }
            });
            self.inflight -= n;
            self.done += ok + bad;
            self.errors += bad;
            work += n;
        }
        let mut submitted = false;
        while self.inflight < self.depth && self.wants_more(stop) {
            let write = match self.workload {
                Workload::Read => false,
                Workload::Write => true,
                Workload::Mixed => self.rng.next_u64() & 1 == 1,
            };
            let sector = self.rng.below(self.pages) * (IO_BYTES as u64 / 512);
            let tag = (self.issued << 1) | write as u64;
            let r = if self.zero {
                let Some(buf) = self.spare.pop() else { break };
                if write {
                    // The guest produces its data in the granted page itself (a stamp here).
                    self.f.buffer_page(&buf, 0).write_bytes(0, &tag.to_le_bytes());
                }
                self.f.submit_buffer(&mut self.dom, write, sector, buf, IO_BYTES, tag).map_err(|(e, b)| {
                    self.spare.push(b);
                    e
                })
            } else if write {
                let data = &self.wr[self.issued as usize % SLOT_BUFFERS].0;
                self.f.submit(&mut self.dom, Io::Write { sector, data }, tag)
            } else {
                self.f.submit(&mut self.dom, Io::Read { sector, sectors: (IO_BYTES / 512) as u32 }, tag)
            };
            match r {
                Ok(()) => {
                    self.inflight += 1;
                    self.issued += 1;
                    submitted = true;
                    work += 1;
                }
                Err(SubmitError::Busy) => break,
                Err(_) => {
                    self.errors += 1;
                    break;
                }
            }
        }
        if submitted {
            self.f.kick(&mut self.dom);
        }
        work
    }
}

struct BackSide {
    dom: Dom,
    backs: Vec<Backend<RamDisk>>,
    /// Per backend: it stopped at its budget with requests left (serve again without an
    /// event).
    more: Vec<bool>,
}

/// Requests a backend serves per ring before the worker turns to its other domains: one
/// ring's worth, as `xenblk-back` does. Unbounded, a backend whose frontend keeps refilling
/// its ring from the other core never returns, and the guests that share its worker starve.
const BACKEND_BUDGET: usize = 32;

impl BackSide {
    fn step(&mut self) -> usize {
        let w = self.dom.poll_pending();
        if w.watches {
            self.dom.take_watch_events();
            for b in &mut self.backs {
                b.on_xenstore(&mut self.dom);
            }
        }
        let mut n = 0;
        for (b, more) in self.backs.iter_mut().zip(&mut self.more) {
            if *more || b.port().is_some_and(|p| w.ports.contains(p)) {
                let p = b.process_some(&mut self.dom, BACKEND_BUDGET);
                *more = p.more;
                n += p.done;
            }
        }
        n
    }
}

struct Worker {
    guests: Vec<Guest>,
    back: BackSide,
    group: Arc<WaitGroup>,
}

fn run_worker(w: &mut Worker, stop: &AtomicBool, active: &AtomicUsize, spin: Duration) {
    let mut idle_since: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let mut work = 0;
        for g in &mut w.guests {
            work += g.step(stopping);
            if !g.finished && g.inflight == 0 && !g.wants_more(stopping) {
                g.finished = true;
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
        work += w.back.step();
        if work > 0 {
            idle_since = None;
            continue;
        }
        if active.load(Ordering::SeqCst) == 0 {
            return;
        }
        let now = Instant::now();
        match idle_since {
            None => idle_since = Some(now),
            // The peer usually answers within a microsecond or two: a few `pause`s see it
            // sooner than a system call would return.
            Some(t) if now - t < PAUSE_SPIN.min(spin) => {
                for _ in 0..32 {
                    core::hint::spin_loop();
                }
            }
            // Then yield rather than burn the core: with more runnable threads than cores (the
            // other worker, other processes) a pure spin steals the time the peer needs.
            Some(t) if now - t < spin => std::thread::yield_now(),
            Some(_) => {
                let mut doms: Vec<&Dom> = w.guests.iter().map(|g| &g.dom).collect();
                doms.push(&w.back.dom);
                w.group.wait(&doms, Duration::from_millis(2));
                idle_since = None;
            }
        }
    }
}

/// Runs one benchmark cell with `disks` (at least `cfg.guests` of them).
pub fn run(cfg: &BenchConfig, disks: &[RamDisk]) -> BenchResult {
    assert!(disks.len() >= cfg.guests, "not enough disks");
    let nw = if cfg.fixed_ops.is_some() { 1 } else { cfg.workers.max(1) };
    let hv = Hypervisor::new();
    let groups: Vec<Arc<WaitGroup>> = (0..nw).map(|_| WaitGroup::new()).collect();
    let mut backs: Vec<BackSide> =
        (0..nw).map(|_| BackSide { dom: hv.create_domain(4096), backs: Vec::new(), more: Vec::new() }).collect();
    let persistent_front = cfg.mode != Mode::Map;
    let mut bcfg = BackendConfig { persistent: true, ..Default::default() };
    if cfg.mode == Mode::Copy {
        bcfg.data_path = DataPath::Copy;
    }
    let mut guests: Vec<(usize, Guest)> = Vec::new();
    for (g, disk) in disks.iter().enumerate().take(cfg.guests) {
        let mut dom = hv.create_domain(2048);
        let bw = (g + 1) % nw;
        let spec = VbdSpec::new(dom.id(), backs[bw].dom.id(), 51712);
        hv.add_vbd(&spec).expect("add_vbd");
        let fcfg = FrontendConfig { persistent: persistent_front, ..Default::default() };
        let f = Frontend::attach(&mut dom, &spec.frontend_path(), fcfg, 1).expect("frontend attach");
        let bs = &mut backs[bw];
        let b = Backend::probe(&mut bs.dom, &spec.backend_path(), bcfg, disk.clone(), 100 + g as u32)
            .expect("backend probe");
        bs.backs.push(b);
        bs.more.push(false);
        let quota = cfg.fixed_ops.map(|n| n / cfg.guests as u64 + ((g as u64) < n % cfg.guests as u64) as u64);
        let guest = Guest {
            dom,
            f,
            rng: Rng::new(cfg.seed ^ ((g as u64 + 1) << 32)),
            zero: cfg.mode == Mode::ZeroCopy,
            workload: cfg.workload,
            pages: (disk.sectors() / (IO_BYTES as u64 / 512)).max(1),
            inflight: 0,
            depth: 1,
            issued: 0,
            quota,
            done: 0,
            done_at_stop: None,
            errors: 0,
            spare: Vec::new(),
            rd: (0..SLOT_BUFFERS).map(|_| Page([0; IO_BYTES])).collect(),
            wr: (0..SLOT_BUFFERS)
                .map(|i| {
                    let mut p = Page([0; IO_BYTES]);
                    fill_pattern(&mut p.0, (g as u64) << 32 | i as u64);
                    p
                })
                .collect(),
            finished: false,
        };
        guests.push((g % nw, guest));
    }
    // Connect everything (single-threaded handshake).
    let t0 = Instant::now();
    loop {
        let mut quiet = true;
        for bs in &mut backs {
            let w = bs.dom.poll_pending();
            if w.watches {
                bs.dom.take_watch_events();
                quiet = false;
                for b in &mut bs.backs {
                    b.on_xenstore(&mut bs.dom);
                }
            }
        }
        let mut all = true;
        for (_, g) in &mut guests {
            let w = g.dom.poll_pending();
            if w.watches {
                g.dom.take_watch_events();
                quiet = false;
                g.f.on_xenstore(&mut g.dom);
            }
            all &= g.f.phase() == Phase::Connected;
        }
        if all {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "guests did not connect");
        if quiet {
            std::thread::yield_now();
        }
    }
    let mut persistent = true;
    for (_, g) in &mut guests {
        persistent &= g.f.negotiated().persistent;
        g.depth = g.f.ring_slots();
        if g.zero {
            for _ in 0..g.depth {
                let b = g.f.alloc_buffer(&mut g.dom, IO_BYTES).expect("zero-copy buffer");
                g.spare.push(b);
            }
        }
    }
    let stats_of = |bs: &[BackSide]| {
        bs.iter().fold((0u64, 0u64, 0u64), |a, b| {
            let s = b.dom.stats();
            (a.0 + s.maps, a.1 + s.unmaps, a.2 + s.copies)
        })
    };
    let before = stats_of(&backs);
    let notifies_of = |w: &[Worker]| -> u64 {
        w.iter()
            .map(|w| w.guests.iter().map(|g| g.dom.stats().notifies).sum::<u64>() + w.back.dom.stats().notifies)
            .sum()
    };
    // Distribute.
    let mut workers: Vec<Worker> = backs
        .into_iter()
        .zip(&groups)
        .map(|(back, group)| Worker { guests: Vec::new(), back, group: group.clone() })
        .collect();
    for (w, g) in guests {
        workers[w].guests.push(g);
    }
    for w in &workers {
        for g in &w.guests {
            g.dom.join_wait_group(&w.group);
        }
        w.back.dom.join_wait_group(&w.group);
    }
    let notifies_before = notifies_of(&workers);
    let stop = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(cfg.guests));
    let (elapsed, mut workers) = if cfg.fixed_ops.is_some() && nw == 1 {
        let start = Instant::now();
        run_worker(&mut workers[0], &stop, &active, cfg.spin);
        (start.elapsed(), workers)
    } else {
        let barrier = Arc::new(Barrier::new(nw + 1));
        let handles: Vec<_> = workers
            .into_iter()
            .map(|mut w| {
                let (stop, active, barrier, spin) = (stop.clone(), active.clone(), barrier.clone(), cfg.spin);
                std::thread::spawn(move || {
                    barrier.wait();
                    run_worker(&mut w, &stop, &active, spin);
                    w
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let elapsed = if cfg.fixed_ops.is_some() {
            None
        } else {
            std::thread::sleep(cfg.duration);
            stop.store(true, Ordering::SeqCst);
            Some(start.elapsed())
        };
        for g in &groups {
            g.wake_all();
        }
        let ws: Vec<Worker> = handles.into_iter().map(|h| h.join().expect("worker panicked")).collect();
        (elapsed.unwrap_or_else(|| start.elapsed()), ws)
    };
    let after = workers.iter().fold((0u64, 0u64, 0u64), |a, w| {
        let s = w.back.dom.stats();
        (a.0 + s.maps, a.1 + s.unmaps, a.2 + s.copies)
    });
    let notifies = notifies_of(&workers) - notifies_before;
    let mut res = BenchResult {
        ops: 0,
        elapsed,
        errors: 0,
        maps: after.0 - before.0,
        unmaps: after.1 - before.1,
        copies: after.2 - before.2,
        notifies,
        blocks: groups.iter().map(|g| g.blocks()).sum(),
        persistent,
    };
    for w in &workers {
        for g in &w.guests {
            res.ops += if cfg.fixed_ops.is_some() { g.done } else { g.done_at_stop.unwrap_or(g.done) };
            res.errors += g.errors;
        }
    }
    teardown(&hv, &mut workers);
    res
}

/// Closes every device cleanly and destroys the domains (so their memory goes away).
fn teardown(hv: &Hypervisor, workers: &mut [Worker]) {
    for w in workers.iter_mut() {
        for g in &mut w.guests {
            for b in g.spare.drain(..) {
                g.f.free_buffer(&mut g.dom, b);
            }
            g.f.close(&mut g.dom);
        }
    }
    let t0 = Instant::now();
    loop {
        let mut all = true;
        for w in workers.iter_mut() {
            let bs = &mut w.back;
            let bw = bs.dom.poll_pending();
            if bw.watches {
                bs.dom.take_watch_events();
            }
            for b in &mut bs.backs {
                if bw.watches {
                    b.on_xenstore(&mut bs.dom);
                }
                if b.port().is_some_and(|p| bw.ports.contains(p)) {
                    b.process(&mut bs.dom);
                }
            }
            for g in &mut w.guests {
                if g.dom.poll_pending().watches {
                    g.dom.take_watch_events();
                    g.f.on_xenstore(&mut g.dom);
                }
                all &= g.f.phase() == Phase::Closed;
            }
        }
        if all || t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::yield_now();
    }
    let mut ids: Vec<DomId> = Vec::new();
    for w in workers.iter_mut() {
        for b in &mut w.back.backs {
            b.shutdown(&mut w.back.dom);
        }
        ids.push(w.back.dom.id());
        ids.extend(w.guests.iter().map(|g| g.dom.id()));
    }
    for id in ids {
        hv.destroy_domain(id);
    }
}
