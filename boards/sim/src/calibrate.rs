//! Calibration: the physical costs the seed benchmark's limits are computed from, measured in
//! the same run on the same machine (docs/perf-limits.md has the long-form study).
//!
//! Every figure is the median of `reps` timed loops (after one warm-up loop), except the
//! cross-core copy, which is the minimum of `reps` such medians (see [`measure`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use xenblk::platform::{EventChannels, GrantMapper, Grants, MapRequest, Pages};
use xenblk::proto::blkif::{Abi, ReqKind, Request, Response, RwOp, SegList, Segment};
use xenblk::proto::grant::{DomId, GntStatus};
use xenblk::proto::ring::{BackRing, FrontRing};
use xenblk::proto::shmem::SharedMem;

use crate::shm::{MappedRegion, PAGE_SIZE};
use crate::{Dom, Hypervisor};

/// The measured costs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Calibration {
    /// Copy of 4 KiB that the other core has just written (ns per copy).
    pub copy_4k_ns: f64,
    /// Copy of 4 KiB hot in the own cache (ns).
    pub copy_4k_hot_ns: f64,
    /// Sim grant map + one-byte touch + unmap of one page, the other core idle (ns).
    pub map_unmap_ns: f64,
    /// The same with another thread of the process spinning on the other core (ns): the
    /// unmap's TLB shootdown has to interrupt it.
    pub map_unmap_busy_ns: f64,
    /// One-way cross-thread wake-up: `notify` to a peer blocked in `Dom::wait` (ns, RTT/2).
    pub wakeup_ns: f64,
    /// CPU cost of a `notify` to a peer that is not blocked (ns).
    pub notify_ns: f64,
    /// One request through the ring: put + push + take on the request, put + push + take on
    /// its response, one thread (ns per request).
    pub ring_ns: f64,
    /// Host CPUs available.
    pub cores: usize,
    /// `copy_4k_ns` as the start-up calibration measured it, before the run's probes could
    /// lower it (0 if not measured).
    pub copy_4k_startup_ns: f64,
    /// Random 4 KiB read from the run's RAM disks ([`disk_read`]; 0 if not measured).
    pub disk_read_4k_ns: f64,
    /// Requests per second of the copies alone at the run's largest footprint
    /// ([`copy_pipeline`]; 0 if not measured).
    pub pipeline_iops: f64,
    /// The cross-core copy probe around that [`copy_pipeline`] run (ns; the cheaper of one
    /// before and one after), so the ceiling can be set against the bound of the same
    /// machine state.
    pub pipeline_probe_ns: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Runs `f` (which returns ns per operation) `reps + 1` times and gives the median of the
/// last `reps`.
fn med(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    let _ = f();
    median((0..reps.max(1)).map(|_| f()).collect())
}

/// The calling thread's CPU set.
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        (libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

/// Restricts the calling thread to `set`.
fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    unsafe {
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), set);
    }
}

/// A set holding only `cpu`.
fn only(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: zeroed cpu_set_t is the empty set; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// The first two CPUs this thread may run on.
fn two_cpus() -> Option<(usize, usize)> {
    let set = affinity()?;
    // SAFETY: CPU_ISSET reads the set for indices below CPU_SETSIZE.
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
    Some((cpus.next()?, cpus.next()?))
}

/// Copy of 4 KiB the other core just wrote: a writer thread fills 32 pages, a reader on the
/// other core copies them into private memory (timed), in lock-step rounds.
///
/// The two threads are pinned to two different CPUs for the measurement: unpinned, a loaded
/// machine may run both on one CPU by turns, and the reader then copies from its own cache
/// (about 100 ns here, close to the hot copy) instead of across cores.
pub fn copy_cross_core(rounds: usize) -> f64 {
    let cpus = two_cpus();
    let saved = affinity();
    if let Some((_, r)) = cpus {
        set_affinity(&only(r));
    }
    const PAGES: usize = 32;
    let region = Arc::new(MappedRegion::anonymous(PAGES * PAGE_SIZE).expect("anonymous region"));
    let seq = Arc::new(AtomicU32::new(0));
    let (r2, s2) = (region.clone(), seq.clone());
    let writer = std::thread::spawn(move || {
        if let Some((w, _)) = cpus {
            set_affinity(&only(w));
        }
        let mem = r2.shared();
        let mut src = vec![0u8; PAGE_SIZE];
        for r in 0..rounds as u32 {
            while s2.load(Ordering::Acquire) != 2 * r {
                core::hint::spin_loop();
            }
            src.fill(r as u8);
            for p in 0..PAGES {
                mem.copy_from_private(p * PAGE_SIZE, &src);
            }
            s2.store(2 * r + 1, Ordering::Release);
        }
    });
    let mem = region.shared();
    let mut dst = vec![0u8; PAGES * PAGE_SIZE];
    let mut per = Vec::with_capacity(rounds);
    for r in 0..rounds as u32 {
        let t0 = Instant::now();
        let mut spins = 0u64;
        while seq.load(Ordering::Acquire) != 2 * r + 1 {
            core::hint::spin_loop();
            spins += 1;
            if spins > 10_000_000 && t0.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        let t = Instant::now();
        for p in 0..PAGES {
            mem.copy_to_private(p * PAGE_SIZE, &mut dst[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]);
        }
        per.push(t.elapsed().as_nanos() as f64 / PAGES as f64);
        std::hint::black_box(&dst);
        seq.store(2 * r + 2, Ordering::Release);
    }
    writer.join().expect("writer");
    if let Some(s) = saved {
        set_affinity(&s);
    }
    median(per)
}

/// Copy of 4 KiB hot in cache.
pub fn copy_hot(iters: usize) -> f64 {
    let region = MappedRegion::anonymous(PAGE_SIZE).expect("anonymous region");
    let mem = region.shared();
    let mut dst = vec![1u8; PAGE_SIZE];
    mem.copy_from_private(0, &dst);
    let t = Instant::now();
    for _ in 0..iters {
        mem.copy_to_private(0, &mut dst);
        std::hint::black_box(&mut dst);
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// Sim grant map + touch + unmap of `n` scattered pages of a guest; with `busy`, a sibling
/// thread spins meanwhile.
pub fn map_unmap(n: usize, busy: bool) -> f64 {
    let hv = Hypervisor::new();
    let mut d0 = hv.take_dom0().expect("dom0");
    let mut g = hv.create_domain(n + 16);
    let mut grefs = Vec::with_capacity(n);
    for _ in 0..n {
        let p = g.alloc_page().expect("page");
        grefs.push(g.grant(p.frame, DomId::DOM0, false).expect("grant"));
    }
    let gid = g.id();
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = busy.then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = x.wrapping_add(1);
                core::hint::spin_loop();
            }
            x
        })
    });
    let t = Instant::now();
    let mut out = [Err(GntStatus::GeneralError)];
    let mut st = [GntStatus::Okay];
    for i in 0..n {
        // Scattered order, as guest pages are.
        let gref = grefs[(i * 7919) % n];
        d0.map_batch(gid, &[MapRequest { gref, readonly: false }], &mut out);
        let m = out[0].expect("map");
        let mut b = [0u8; 1];
        m.mem.read_bytes(0, &mut b);
        std::hint::black_box(b);
        d0.unmap_batch(&[m], &mut st);
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = spinner {
        let _ = h.join();
    }
    ns
}

fn channel(hv: &Hypervisor) -> (Dom, Dom, xenblk::platform::Port, xenblk::platform::Port) {
    let mut a = hv.create_domain(16);
    let mut b = hv.create_domain(16);
    let pa = a.alloc_unbound(b.id()).expect("alloc_unbound");
    let pb = b.bind_interdomain(a.id(), pa).expect("bind");
    // Consume the bind's initial pending bit.
    b.poll_pending();
    a.poll_pending();
    (a, b, pa, pb)
}

/// One-way cross-thread wake-up: ping-pong between two threads blocked in `Dom::wait`.
pub fn wakeup(rounds: usize) -> f64 {
    let hv = Hypervisor::new();
    let (mut a, mut b, pa, pb) = channel(&hv);
    let h = std::thread::spawn(move || {
        for _ in 0..rounds {
            while b.wait(Some(Duration::from_secs(2))).ports.is_empty() {}
            b.notify(pb).expect("notify");
        }
        b
    });
    let t = Instant::now();
    for _ in 0..rounds {
        a.notify(pa).expect("notify");
        while a.wait(Some(Duration::from_secs(2))).ports.is_empty() {}
    }
    let ns = t.elapsed().as_nanos() as f64 / rounds as f64 / 2.0;
    let _ = h.join();
    ns
}

/// CPU cost of `notify` when the peer is not blocked.
pub fn notify_cost(iters: usize) -> f64 {
    let hv = Hypervisor::new();
    let (mut a, b, pa, _pb) = channel(&hv);
    let t = Instant::now();
    for _ in 0..iters {
        a.notify(pa).expect("notify");
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    b.poll_pending();
    ns
}

/// A 4 KiB read request with one segment.
pub fn sample_request(id: u64) -> Request {
    let mut segs = SegList::new();
    let _ = segs.push(Segment { gref: 8 + id as u32 % 32, first_sect: 0, last_sect: 7 });
    Request { id, handle: 0, sector: id * 8, kind: ReqKind::Rw { op: RwOp::Read, segs } }
}

/// Ring round trip per request in one thread, in batches of 32.
pub fn ring(iters: usize) -> f64 {
    let region = MappedRegion::anonymous(PAGE_SIZE).expect("ring page");
    let mem: SharedMem = region.shared();
    let mut f = FrontRing::init(mem, Abi::X86_64).expect("front ring");
    let mut b = BackRing::attach(mem, Abi::X86_64).expect("back ring");
    let batch = f.size() as usize;
    let req = sample_request(1);
    let t = Instant::now();
    let mut n = 0;
    while n < iters {
        for _ in 0..batch {
            f.put_request(&req);
        }
        f.push_requests();
        for _ in 0..batch {
            let r = b.take_request_unchecked(0).expect("request");
            b.put_response(&Response { id: r.id, op: r.op_code(), status: 0 });
        }
        b.push_responses();
        while let Ok(Some(r)) = f.take_response() {
            std::hint::black_box(r);
        }
        n += batch;
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Measures everything (`quick`: fewer iterations, for tests and `--fixed-ops`).
pub fn measure(quick: bool, reps: usize) -> Calibration {
    let k = if quick { 10 } else { 1 };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Calibration {
        // The cheapest of the repeats' medians (a bound takes the best case); the two threads
        // are pinned to different CPUs (see `copy_cross_core`).
        copy_4k_ns: (0..reps.max(1)).map(|_| med(1, || copy_cross_core(2000 / k))).fold(f64::MAX, f64::min),
        copy_4k_hot_ns: med(reps, || copy_hot(200_000 / k)),
        map_unmap_ns: med(reps, || map_unmap(2000 / k, false)),
        map_unmap_busy_ns: if cores > 1 { med(reps, || map_unmap(2000 / k, true)) } else { 0.0 },
        wakeup_ns: med(reps, || wakeup(1000 / k)),
        notify_ns: med(reps, || notify_cost(200_000 / k)),
        ring_ns: med(reps, || ring(320_000 / k)),
        cores,
        ..Default::default()
    }
}

/// Requests that share one notification when the ring is kept full (one ring of slots).
pub const NOTIFY_BATCH: f64 = 32.0;

/// The bound for a path that moves the data with `copies` 4 KiB copies per request: the
/// requests per second `cores` cores could serve if a request cost only its copies, its ring
/// round trip and a 1/32 share of one notification (no wake-ups, no driver or storage
/// bookkeeping):
/// `cores × 10⁹ / (copies × copy_4k_ns + ring_ns + notify_ns / 32)`.
pub fn copy_bound(c: &Calibration, copies: u32, cores: usize) -> f64 {
    cores as f64 * 1e9 / (copies as f64 * c.copy_4k_ns + c.ring_ns + c.notify_ns / NOTIFY_BATCH)
}

/// What the copies alone achieve with the benchmark's memory footprint and thread layout,
/// without any driver: one guest per disk of `disks` (the run's own RAM disks), each with
/// one ring's worth ([`PIPE_SLOTS`]) of pool pages and as many page-aligned caller buffers;
/// worker `w` (pinned to the first two CPUs) plays the frontends of the guests `g % 2 == w`
/// and the backends of the guests `(g + 1) % 2 == w`, as [`crate::bench`] lays them out. A
/// backend turn reads a random 4 KiB block of its disk into each pool page through the
/// disk's own read path (`RamDisk::read_sectors`, as the backend's storage call does); the
/// frontend's turn copies each pool page into its caller buffer, one 4 KiB copy each. The
/// hand-over is one atomic per ring's worth of requests. Returns requests (backend copy +
/// frontend copy) per second over `run`.
///
/// It is the ceiling any driver reaches on this machine for 4 KiB persistent reads at this
/// footprint: where the disks do not fit the caches, the backend's copy is a DRAM read and
/// the ceiling falls below the copy bound, whatever the driver does.
pub fn copy_pipeline(disks: &[crate::RamDisk], run: Duration) -> f64 {
    #[repr(C, align(4096))]
    struct Page([u8; PAGE_SIZE]);
    struct Guest {
        pool: MappedRegion,
        disk: crate::RamDisk,
        blocks: u64,
        turn: AtomicU32,
    }
    let gs: Arc<Vec<Guest>> = Arc::new(
        disks
            .iter()
            .enumerate()
            .map(|(g, d)| {
                let pool = MappedRegion::anonymous(PIPE_SLOTS * PAGE_SIZE).expect("pool pages");
                pool.shared().copy_from_private(0, &vec![g as u8; PIPE_SLOTS * PAGE_SIZE]);
                let blocks = (d.sectors() / (PAGE_SIZE as u64 / 512)).max(1);
                Guest { pool, disk: d.clone(), blocks, turn: AtomicU32::new(0) }
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = two_cpus();
    let saved = affinity();
    let workers: Vec<_> = (0..2usize)
        .map(|w| {
            let (gs, stop) = (gs.clone(), stop.clone());
            std::thread::spawn(move || {
                if let Some((a, b)) = cpus {
                    set_affinity(&only(if w == 0 { a } else { b }));
                }
                let mut bufs: Vec<Vec<Page>> =
                    gs.iter().map(|_| (0..PIPE_SLOTS).map(|_| Page([0; PAGE_SIZE])).collect()).collect();
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    for (g, q) in gs.iter().enumerate() {
                        let mem = q.pool.shared();
                        // Even turn: the backend's; odd: the frontend's.
                        let t = q.turn.load(Ordering::Acquire);
                        if (g + 1) % 2 == w && t % 2 == 0 {
                            for s in 0..PIPE_SLOTS {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                let sector = (x % q.blocks) * (PAGE_SIZE as u64 / 512);
                                let _ = q.disk.read_sectors(sector, mem.slice(s * PAGE_SIZE, PAGE_SIZE));
                            }
                            q.turn.store(t + 1, Ordering::Release);
                        } else if g % 2 == w && t % 2 == 1 {
                            for (s, b) in bufs[g].iter_mut().enumerate() {
                                mem.copy_to_private(s * PAGE_SIZE, &mut b.0);
                            }
                            q.turn.store(t + 1, Ordering::Release);
                        }
                    }
                }
                std::hint::black_box(&bufs);
            })
        })
        .collect();
    let served = |gs: &[Guest]| gs.iter().map(|q| u64::from(q.turn.load(Ordering::Acquire) / 2)).sum::<u64>();
    std::thread::sleep(run / 4);
    let (t0, n0) = (Instant::now(), served(&gs));
    std::thread::sleep(run);
    let (el, n1) = (t0.elapsed(), served(&gs));
    stop.store(true, Ordering::Relaxed);
    for h in workers {
        h.join().expect("pipeline worker");
    }
    if let Some(s) = saved {
        set_affinity(&s);
    }
    (n1 - n0) as f64 * PIPE_SLOTS as f64 / el.as_secs_f64()
}

/// Requests per guest and turn in [`copy_pipeline`]: one ring's worth.
pub const PIPE_SLOTS: usize = 32;

/// Random 4 KiB reads from `disks` into a hot buffer, one thread (ns per read): what the
/// backend's copy out of the storage costs when the disks' footprint does (not) fit the caches.
pub fn disk_read(disks: &[crate::RamDisk], reads: usize) -> f64 {
    if disks.is_empty() {
        return 0.0;
    }
    let mut buf = vec![0u8; PAGE_SIZE];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let t = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let d = &disks[x as usize % disks.len()];
        let blocks = (d.sectors() / 8).max(1);
        let _ = d.read_at((x >> 20) % blocks * PAGE_SIZE as u64, &mut buf);
        std::hint::black_box(&buf);
    }
    t.elapsed().as_nanos() as f64 / reads.max(1) as f64
}
