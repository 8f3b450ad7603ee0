//! `xenblk-front`: the xenblk frontend as a domU tool. It attaches to a vbd from userspace
//! (gntalloc grants, evtchn, xenstore over `/dev/xen/xenbus`: `LinuxFrontend`), logs what
//! was negotiated as read from xenstore on both sides, and runs commands in order:
//!
//! - `verify`: writes a pseudo-random pattern (many requests in flight), flushes if offered,
//!   reads it back, compares, and prints the md5 of what it wrote (so that dom0 can check
//!   its image file);
//! - `iops`: 4 KiB random reads, as many in flight as the ring allows, for some seconds;
//!   reads inside the region `verify` wrote are checked against the pattern too.
//!
//! Result lines go to stdout, starting with `NEGOTIATED`, `XS`, `VERIFY`, `IOPS`, `STATS`;
//! exit 0 only if every command passed. The kernel's xen-blkfront must not drive the same
//! vbd (do not load it, see boards/linux/NOTES.md).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use xenblk::modes::frontend::{Completion, Frontend, FrontendConfig, Io, Phase, Status, SubmitError};
use xenblk::platform::{Tx, Wait};
use xenblk_linux::md5::Md5;
use xenblk_linux::platform::LinuxFrontend;

const USAGE: &str = "usage: xenblk-front [--vdev N] [--timeout S] [--no-persistent] CMD...
  --vdev N          virtual device number (default 51712 = xvda; 51728 = xvdb)
  --timeout S       give up connecting or on a stall after S seconds (default 120)
  --no-persistent   do not offer persistent grants
commands (run in order):
  info                            connect, print what was negotiated
  verify [--mib N] [--seed X]     write N MiB (default 64) at offset 1 MiB, read back, compare
  iops [--seconds N] [--depth D]  4 KiB random reads for N s (default 10), D in flight (ring)
Run in a domU without xen-blkfront loaded, with /dev/xen/{xenbus,evtchn,gntalloc}.";

const SECTOR: u64 = 512;
/// Where `verify` writes (as the rig's shell test does): 1 MiB into the disk.
const OFFSET: u64 = 1 << 20;

#[derive(Debug, PartialEq, Eq, Clone)]
enum Cmd {
    Info,
    Verify { mib: u64, seed: Option<u64> },
    Iops { seconds: u64, depth: Option<usize> },
}

#[derive(Debug, PartialEq, Eq)]
struct Args {
    vdev: u32,
    timeout: u64,
    persistent: bool,
    cmds: Vec<Cmd>,
}

fn parse(it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args { vdev: 51712, timeout: 120, persistent: true, cmds: Vec::new() };
    let mut it = it.peekable();
    let num = |v: Option<String>, what: &str| -> Result<u64, String> {
        let v = v.ok_or(format!("{what} needs a value"))?;
        let r = if let Some(h) = v.strip_prefix("0x") { u64::from_str_radix(h, 16) } else { v.parse() };
        r.map_err(|_| format!("bad {what} '{v}'"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--vdev" | "--vbd" => {
                let v = num(it.next(), "--vdev")?;
                a.vdev = u32::try_from(v).map_err(|_| "bad --vdev".to_string())?;
            }
            "--timeout" => a.timeout = num(it.next(), "--timeout")?.max(1),
            "--no-persistent" => a.persistent = false,
            "info" => a.cmds.push(Cmd::Info),
            "verify" => {
                let (mut mib, mut seed) = (64, None);
                while let Some(o) = it.next_if(|s| s == "--mib" || s == "--seed") {
                    match o.as_str() {
                        "--mib" => mib = num(it.next(), "--mib")?,
                        "--seed" => seed = Some(num(it.next(), "--seed")?),
                        _ => return Err(format!("unknown verify option {o}")),
                    }
                }
                if mib == 0 || mib > 1 << 20 {
                    return Err("--mib must be 1..=1048576".into());
                }
                a.cmds.push(Cmd::Verify { mib, seed });
            }
            "iops" => {
                let (mut seconds, mut depth) = (10, None);
                while let Some(o) = it.next_if(|s| s == "--seconds" || s == "--depth") {
                    match o.as_str() {
                        "--seconds" => seconds = num(it.next(), "--seconds")?,
                        "--depth" => depth = Some(num(it.next(), "--depth")?.max(1) as usize),
                        _ => return Err(format!("unknown iops option {o}")),
                    }
                }
                a.cmds.push(Cmd::Iops { seconds: seconds.max(1), depth });
            }
            // Old spellings of the stub.
            "--verify" => a.cmds.push(Cmd::Verify { mib: num(it.next(), "--verify")?.max(1), seed: None }),
            "--iops" => a.cmds.push(Cmd::Iops { seconds: num(it.next(), "--iops")?.max(1), depth: None }),
            "-h" | "--help" => return Err(String::new()),
            o => return Err(format!("unknown argument {o}")),
        }
    }
    if a.cmds.is_empty() {
        a.cmds.push(Cmd::Info);
    }
    Ok(a)
}

/// The pattern: the 8 bytes at disk byte offset `8 i` are `mix(seed, i)`, so any chunk can
/// be regenerated for checking in any order.
fn mix(seed: u64, i: u64) -> u64 {
    // splitmix64 finaliser over seed ^ index
    let mut z = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill(seed: u64, disk_off: u64, buf: &mut [u8]) {
    debug_assert!(disk_off.is_multiple_of(8) && buf.len().is_multiple_of(8));
    for (k, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&mix(seed, disk_off / 8 + k as u64).to_le_bytes());
    }
}

/// First byte offset in `got` (at `disk_off`) that differs from the pattern.
fn mismatch(seed: u64, disk_off: u64, got: &[u8]) -> Option<usize> {
    let mut want = vec![0u8; got.len()];
    fill(seed, disk_off, &mut want);
    got.iter().zip(&want).position(|(a, b)| a != b)
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    }
}

/// A tiny xorshift for the benchmark's offsets.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Dev {
    plat: LinuxFrontend,
    fe: Frontend,
    timeout: Duration,
    dir: String,
}

/// One in-flight job's completion, as seen by the command loops.
struct Done {
    tag: u64,
    status: Status,
    data: Option<Vec<u8>>,
}

impl Dev {
    /// Waits for an event or watch (at most `ms`), reacting to xenstore changes.
    fn wait(&mut self, ms: u64) {
        let w = self.plat.wait(Some(ms));
        if w.xenstore || w.timeout {
            self.fe.on_xenstore(&mut self.plat);
        }
    }

    /// Collects completions (copying read data out when `want_data`).
    fn reap(&mut self, want_data: bool, out: &mut Vec<Done>) -> usize {
        self.fe.poll(&mut self.plat, |c: &mut Completion<'_>| {
            let data = (want_data && c.status == Status::Ok).then(|| {
                let mut v = vec![0u8; c.bytes as usize];
                c.read_data(&mut v);
                v
            });
            out.push(Done { tag: c.tag, status: c.status, data });
        })
    }

    fn connect(&mut self) -> Result<(), String> {
        let end = Instant::now() + self.timeout;
        while self.fe.phase() != Phase::Connected {
            if let Phase::Failed(r) = self.fe.phase() {
                return Err(format!("device failed while connecting: {r:?}"));
            }
            if Instant::now() > end {
                return Err(format!("not connected after {:?} (phase {:?})", self.timeout, self.fe.phase()));
            }
            self.wait(200);
        }
        Ok(())
    }

    fn xs(&mut self, path: &str) -> String {
        self.plat.xs.read_string(Tx::NONE, path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "-".into())
    }

    /// What was negotiated, as the driver decided it and as xenstore shows it on both sides.
    fn report(&mut self) {
        let n = *self.fe.negotiated();
        println!(
            "NEGOTIATED persistent={} indirect_segments={} ring_order={} ring_slots={} max_request_kib={} flush={} \
             discard={} sectors={} sector_size={} read_only={} backend_id={}",
            n.persistent as u8,
            n.indirect_segments,
            n.ring_order,
            self.fe.ring_slots(),
            self.fe.max_request_bytes() / 1024,
            n.flush as u8,
            n.discard as u8,
            n.sectors,
            n.sector_size,
            n.read_only() as u8,
            self.fe.backend_id().0,
        );
        let dir = self.dir.clone();
        let be = self.xs(&format!("{dir}/backend"));
        let f: Vec<String> =
            ["state", "feature-persistent", "ring-ref", "ring-page-order", "event-channel", "protocol"]
                .iter()
                .map(|k| format!("{k}={}", self.xs(&format!("{dir}/{k}"))))
                .collect();
        let b: Vec<String> = [
            "state",
            "feature-persistent",
            "max-ring-page-order",
            "feature-max-indirect-segments",
            "feature-flush-cache",
            "feature-discard",
            "sectors",
            "sector-size",
        ]
        .iter()
        .map(|k| format!("{k}={}", self.xs(&format!("{be}/{k}"))))
        .collect();
        println!("XS front {dir} {}", f.join(" "));
        println!("XS back {be} {}", b.join(" "));
    }

    /// Submits `io`, reaping and waiting while the ring or pool is busy. Completions that
    /// arrive meanwhile go to `out`.
    fn submit(&mut self, io: Io<'_>, tag: u64, want_data: bool, out: &mut Vec<Done>) -> Result<(), String> {
        let mut last = Instant::now();
        loop {
            match self.fe.submit(&mut self.plat, io, tag) {
                Ok(()) => return Ok(()),
                Err(SubmitError::Busy) => {
                    self.fe.kick(&mut self.plat);
                    if self.reap(want_data, out) == 0 {
                        if last.elapsed() > self.timeout {
                            return Err(format!("stalled: no completion for {:?}", self.timeout));
                        }
                        self.wait(1000);
                    } else {
                        last = Instant::now();
                    }
                }
                Err(e) => return Err(format!("submit failed: {e:?} (phase {:?})", self.fe.phase())),
            }
        }
    }

    /// Waits until nothing is in flight.
    fn drain(&mut self, want_data: bool, out: &mut Vec<Done>) -> Result<(), String> {
        let mut last = Instant::now();
        self.fe.kick(&mut self.plat);
        while self.fe.in_flight() > 0 {
            if self.reap(want_data, out) == 0 {
                if last.elapsed() > self.timeout {
                    return Err(format!("stalled: {} requests in flight for {:?}", self.fe.in_flight(), self.timeout));
                }
                self.wait(1000);
            } else {
                last = Instant::now();
            }
        }
        Ok(())
    }

    fn chunk_bytes(&self) -> usize {
        // Whole pages, at most 128 KiB per request.
        (self.fe.max_request_bytes().min(128 << 10) / 4096).max(1) * 4096
    }

    fn verify(&mut self, mib: u64, seed: u64) -> Result<String, String> {
        let total = mib << 20;
        let n = self.fe.negotiated();
        if OFFSET + total > n.sectors * SECTOR {
            return Err(format!("disk too small: {} sectors for {} MiB at offset 1 MiB", n.sectors, mib));
        }
        let chunk = self.chunk_bytes() as u64;
        let chunks = total.div_ceil(chunk);
        let mut done = Vec::new();
        let mut errors = 0u64;
        let check = |done: &mut Vec<Done>, errors: &mut u64| {
            *errors += done.iter().filter(|d| d.status != Status::Ok).count() as u64;
            done.clear();
        };
        // Write the pattern, md5 over it in disk order.
        let mut md5 = Md5::new();
        let mut buf = vec![0u8; chunk as usize];
        let t0 = Instant::now();
        for i in 0..chunks {
            let off = i * chunk;
            let len = chunk.min(total - off) as usize;
            fill(seed, OFFSET + off, &mut buf[..len]);
            md5.update(&buf[..len]);
            self.submit(Io::Write { sector: (OFFSET + off) / SECTOR, data: &buf[..len] }, i, false, &mut done)?;
            check(&mut done, &mut errors);
        }
        self.drain(false, &mut done)?;
        check(&mut done, &mut errors);
        let mut flushed = false;
        if self.fe.negotiated().flush {
            self.submit(Io::Flush, u64::MAX, false, &mut done)?;
            self.drain(false, &mut done)?;
            check(&mut done, &mut errors);
            flushed = true;
        }
        let write_s = t0.elapsed().as_secs_f64();
        if errors > 0 {
            return Err(format!("{errors} write requests failed"));
        }
        let written = md5.hex();
        // Read back into one buffer (completions arrive in any order).
        let mut back = vec![0u8; total as usize];
        let t1 = Instant::now();
        let mut got = 0u64;
        let place = |done: &mut Vec<Done>, back: &mut [u8], errors: &mut u64, got: &mut u64| {
            for d in done.drain(..) {
                match d.data {
                    Some(v) if d.status == Status::Ok => {
                        let off = (d.tag * chunk) as usize;
                        back[off..off + v.len()].copy_from_slice(&v);
                        *got += 1;
                    }
                    _ => *errors += 1,
                }
            }
        };
        for i in 0..chunks {
            let off = i * chunk;
            let len = chunk.min(total - off);
            self.submit(
                Io::Read { sector: (OFFSET + off) / SECTOR, sectors: (len / SECTOR) as u32 },
                i,
                true,
                &mut done,
            )?;
            place(&mut done, &mut back, &mut errors, &mut got);
        }
        self.drain(true, &mut done)?;
        place(&mut done, &mut back, &mut errors, &mut got);
        let read_s = t1.elapsed().as_secs_f64();
        if errors > 0 || got != chunks {
            return Err(format!("{errors} read requests failed, {got}/{chunks} completed"));
        }
        let mut m2 = Md5::new();
        m2.update(&back);
        let read = m2.hex();
        if let Some(p) = mismatch(seed, OFFSET, &back) {
            return Err(format!(
                "readback mismatch at disk byte {} (md5 written={written} read={read})",
                OFFSET + p as u64
            ));
        }
        if read != written {
            return Err(format!("md5 written={written} read={read}"));
        }
        Ok(format!(
            "md5={written} mib={mib} requests={} chunk_kib={} flushed={} write_s={write_s:.2} read_s={read_s:.2} \
             write_mib_s={:.1} read_mib_s={:.1}",
            2 * chunks,
            chunk / 1024,
            flushed as u8,
            mib as f64 / write_s.max(1e-9),
            mib as f64 / read_s.max(1e-9)
        ))
    }

    fn iops(&mut self, seconds: u64, depth: Option<usize>, verified: Option<(u64, u64)>) -> Result<String, String> {
        let n = *self.fe.negotiated();
        let blocks = n.sectors * SECTOR / 4096;
        if blocks == 0 {
            return Err("disk smaller than 4 KiB".into());
        }
        // Inside the verified region when there is one: every read is then checked too.
        let (lo, nblk) = match verified {
            Some((_, mib)) => (OFFSET / 4096, (mib << 20) / 4096),
            None => (0, blocks),
        };
        let depth = depth.unwrap_or(usize::MAX).min(self.fe.ring_slots()).max(1);
        let mut rng = Rng(random_seed() | 1);
        let mut done = Vec::new();
        let (mut reads, mut errors, mut bad, mut inflight) = (0u64, 0u64, 0u64, 0usize);
        let want = verified.is_some();
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(seconds);
        let mut last = Instant::now();
        loop {
            let now = Instant::now();
            while now < end && inflight < depth {
                let blk = lo + rng.next() % nblk;
                match self.fe.submit(&mut self.plat, Io::Read { sector: blk * 8, sectors: 8 }, blk) {
                    Ok(()) => inflight += 1,
                    Err(SubmitError::Busy) => break,
                    Err(e) => return Err(format!("submit failed: {e:?}")),
                }
            }
            if inflight == 0 {
                break;
            }
            self.fe.kick(&mut self.plat);
            if self.reap(want, &mut done) == 0 {
                if last.elapsed() > self.timeout {
                    return Err(format!("stalled with {inflight} in flight"));
                }
                self.wait(100);
                continue;
            }
            last = Instant::now();
            for d in done.drain(..) {
                inflight -= 1;
                if d.status != Status::Ok {
                    errors += 1;
                    continue;
                }
                reads += 1;
                if let (Some((seed, _)), Some(v)) = (verified, d.data.as_ref())
                    && mismatch(seed, d.tag * 4096, v).is_some()
                {
                    bad += 1;
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        if errors > 0 || bad > 0 {
            return Err(format!("{errors} read errors, {bad} reads with wrong data out of {reads}"));
        }
        Ok(format!(
            "iops={:.0} reads={reads} seconds={secs:.1} depth={depth} verified={}",
            reads as f64 / secs.max(1e-9),
            if want { reads } else { 0 }
        ))
    }

    fn close(mut self) {
        self.fe.close(&mut self.plat);
        let end = Instant::now() + Duration::from_secs(30);
        while !matches!(self.fe.phase(), Phase::Closed | Phase::Failed(_)) && Instant::now() < end {
            self.wait(200);
        }
        let (fs, ps, gs) = (self.fe.stats(), self.fe.pool_stats(), self.plat.pages.stats());
        println!(
            "STATS phase={:?} submitted={} completed={} errors={} notifies={} spurious={} pool_grants={} \
             pool_revokes={} pool_kept={} pool_pages={} gntalloc_grants={} gntalloc_revokes={} gntalloc_peak={}",
            self.fe.phase(),
            fs.submitted,
            fs.completed,
            fs.errors,
            fs.notifies,
            fs.spurious,
            ps.grants,
            ps.revokes,
            ps.kept_granted,
            ps.pages,
            gs.grants,
            gs.revokes,
            gs.peak
        );
        self.fe.shutdown(&mut self.plat);
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let mut plat = LinuxFrontend::open().map_err(|e| format!("cannot open /dev/xen devices or xenstore: {e:?}"))?;
    let domid = plat.xs.domid().map_err(|e| format!("cannot read own domid: {e:?}"))?;
    let dir = format!("/local/domain/{}/device/vbd/{}", domid.0, args.vdev);
    let timeout = Duration::from_secs(args.timeout);
    // The toolstack writes the frontend directory before unpausing us; wait a little anyway.
    let t0 = Instant::now();
    while plat.xs.read_string(Tx::NONE, &format!("{dir}/backend-id")).is_err() {
        if t0.elapsed() > timeout {
            return Err(format!("no vbd at {dir}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cfg = FrontendConfig { persistent: args.persistent, ..FrontendConfig::default() };
    let fe = Frontend::attach(&mut plat, &dir, cfg, 1).map_err(|e| format!("attach {dir}: {e:?}"))?;
    let mut dev = Dev { plat, fe, timeout, dir };
    let t = Instant::now();
    if let Err(e) = dev.connect() {
        println!("CONNECT FAIL {e}");
        dev.report();
        dev.close();
        return Ok(false);
    }
    println!("CONNECT OK connect_s={:.2}", t.elapsed().as_secs_f64());
    dev.report();
    let mut ok = true;
    let mut verified = None;
    for c in &args.cmds {
        match c {
            Cmd::Info => {}
            Cmd::Verify { mib, seed } => {
                let seed = seed.unwrap_or_else(random_seed);
                match dev.verify(*mib, seed) {
                    Ok(s) => {
                        println!("VERIFY OK {s}");
                        verified = Some((seed, *mib));
                    }
                    Err(e) => {
                        println!("VERIFY FAIL {e}");
                        ok = false;
                    }
                }
            }
            Cmd::Iops { seconds, depth } => match dev.iops(*seconds, *depth, verified) {
                Ok(s) => println!("IOPS OK {s}"),
                Err(e) => {
                    println!("IOPS FAIL {e}");
                    ok = false;
                }
            },
        }
        if matches!(dev.fe.phase(), Phase::Failed(_)) {
            println!("FAILED device failed: {:?}", dev.fe.phase());
            ok = false;
            break;
        }
    }
    dev.close();
    Ok(ok)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("xenblk-front: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            println!("ERROR {e}");
            ExitCode::from(1)
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
        assert_eq!(p(&[]).unwrap(), Args { vdev: 51712, timeout: 120, persistent: true, cmds: vec![Cmd::Info] });
        let a = p(&["--vdev", "51728", "verify", "--mib", "64", "iops", "--seconds", "5", "--depth", "8"]).unwrap();
        assert_eq!(a.vdev, 51728);
        assert_eq!(a.cmds, vec![Cmd::Verify { mib: 64, seed: None }, Cmd::Iops { seconds: 5, depth: Some(8) }]);
        let a = p(&["verify", "--seed", "0x10", "--no-persistent"]).unwrap();
        assert_eq!((a.cmds[0].clone(), a.persistent), (Cmd::Verify { mib: 64, seed: Some(16) }, false));
        assert!(p(&["iops", "--seconds", "x"]).is_err());
        assert!(p(&["verify", "--mib", "0"]).is_err());
        assert!(p(&["verify", "--bogus"]).is_err(), "unknown options are errors, wherever they are");
        assert!(p(&["--vdev", "99999999999"]).is_err());
        assert!(p(&["frobnicate"]).is_err());
    }

    #[test]
    fn pattern_is_position_addressed_and_mismatch_finds_the_byte() {
        let mut a = vec![0u8; 8192];
        fill(7, 4096, &mut a);
        let mut b = vec![0u8; 4096];
        fill(7, 8192, &mut b);
        assert_eq!(&a[4096..], &b[..], "same disk offset, same bytes");
        assert_ne!(&a[..4096], &b[..]);
        assert_eq!(mismatch(7, 4096, &a), None);
        a[5000] ^= 1;
        assert_eq!(mismatch(7, 4096, &a), Some(5000));
        assert!(mismatch(8, 4096, &b).is_some(), "another seed, other data");
    }
}
