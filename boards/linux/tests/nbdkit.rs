//! The NBD client ([`xenblk_linux::nbd::NbdStorage`]) against a real server, `nbdkit memory`
//! (Debian package `nbdkit`; `.ci/run` installs it). Outside CI the test is skipped with a
//! message when `nbdkit` is not on PATH; in CI (`CI` set) a missing nbdkit fails the test.
#![cfg(feature = "backend")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xenblk::modes::storage::{Storage, StorageError};
use xenblk::proto::shmem::SharedMem;
use xenblk_linux::nbd::{Addr, NbdStorage, Target};

struct Server {
    child: Child,
    sock: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn nbdkit(tag: &str, extra: &[&str], plugin: &[&str]) -> Option<Server> {
    if Command::new("nbdkit").arg("--version").stdout(Stdio::null()).status().is_err() {
        assert!(std::env::var_os("CI").is_none(), "nbdkit missing in CI (apt-get install nbdkit)");
        eprintln!("SKIP: nbdkit not installed (apt-get install nbdkit)");
        return None;
    }
    let sock = std::env::temp_dir().join(format!("xenblk-nbdkit-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let child =
        Command::new("nbdkit").arg("-f").arg("-U").arg(&sock).args(extra).args(plugin).spawn().expect("spawn nbdkit");
    let s = Server { child, sock };
    let t0 = Instant::now();
    while !s.sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "nbdkit did not create its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(s)
}

fn target(s: &Server) -> Target {
    Target { addr: Addr::Unix(s.sock.to_string_lossy().into()), export: String::new() }
}

/// xorshift: deterministic "random" data.
fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn memory_export_read_write_flush_trim() {
    let Some(srv) = nbdkit("rw", &[], &["memory", "64M"]) else { return };
    let mut st = NbdStorage::connect(target(&srv), false).expect("connect");
    let info = st.info();
    assert_eq!(info.sectors, 64 * 2048);
    assert!(!info.read_only);
    assert!(info.discard, "nbdkit memory offers trim");
    let ei = st.export_info();
    assert!(ei.via_go, "nbdkit speaks NBD_OPT_GO");
    eprintln!("nbdkit memory: {ei:?}");

    // 8 MiB in 2 MiB pieces (each split into MAX_CHUNK commands), spread over the disk.
    let len = 2 << 20;
    let mut words = vec![0u64; len / 8];
    // SAFETY: `words` outlives `m` and is only accessed through it.
    let m = unsafe { SharedMem::new(words.as_mut_ptr().cast(), len) };
    let offsets = [0u64, 9 * 2048, 40 * 2048 + 1, 64 * 2048 - 4096];
    for (i, &sec) in offsets.iter().enumerate() {
        m.copy_from_private(0, &pattern(i as u64 + 1, len));
        st.write(sec, m).expect("write");
    }
    st.flush().expect("flush");
    let mut back = vec![0u8; len];
    for (i, &sec) in offsets.iter().enumerate() {
        m.zero(0, len);
        st.read(sec, m).expect("read");
        m.copy_to_private(0, &mut back);
        assert!(back == pattern(i as u64 + 1, len), "readback at sector {sec}");
    }
    // Past the end: refused locally, nothing sent.
    assert_eq!(st.read(64 * 2048 - 1, m), Err(StorageError::OutOfRange));
    // Trim 1 MiB in the first piece; nbdkit's memory plugin reads trimmed bytes as zero.
    st.discard(2048, 2048, false).expect("trim");
    m.zero(0, len);
    st.read(0, m).expect("read after trim");
    m.copy_to_private(0, &mut back);
    let p = pattern(1, len);
    assert_eq!(&back[..1 << 20], &p[..1 << 20]);
    assert!(back[1 << 20..].iter().all(|&b| b == 0), "trimmed range not zero");
    assert_eq!(st.failures, 0);
}

#[test]
fn read_only_export() {
    let Some(srv) = nbdkit("ro", &["-r"], &["pattern", "1M"]) else { return };
    let mut st = NbdStorage::connect(target(&srv), false).expect("connect");
    assert!(st.info().read_only, "nbdkit -r exports read-only");
    let mut words = vec![0u64; 512];
    // SAFETY: as above.
    let m = unsafe { SharedMem::new(words.as_mut_ptr().cast(), 4096) };
    assert_eq!(st.write(0, m), Err(StorageError::ReadOnly));
    st.read(8, m).expect("read");
    // The pattern plugin: every 8-byte big-endian word holds its own byte offset.
    let mut b = [0u8; 4096];
    m.copy_to_private(0, &mut b);
    assert_eq!(u64::from_be_bytes(b[0..8].try_into().unwrap()), 4096);
    assert_eq!(u64::from_be_bytes(b[4088..4096].try_into().unwrap()), 8184);
}

#[test]
fn server_restart_reconnects() {
    let Some(mut srv) = nbdkit("re", &[], &["memory", "1M"]) else { return };
    let mut st = NbdStorage::connect(target(&srv), false).expect("connect");
    let mut words = vec![0u64; 512];
    // SAFETY: as above.
    let m = unsafe { SharedMem::new(words.as_mut_ptr().cast(), 4096) };
    st.read(0, m).expect("read");
    // Kill the server: the next operation fails (and drops the connection) ...
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    let _ = std::fs::remove_file(&srv.sock);
    assert_eq!(st.read(0, m), Err(StorageError::Io));
    // ... a new server on the same socket: the one after reconnects and works.
    let Some(srv2) = nbdkit("re", &[], &["memory", "1M"]) else { return };
    st.read(0, m).expect("read after reconnect");
    assert_eq!(st.reconnects, 1);
    drop(srv2);
}
