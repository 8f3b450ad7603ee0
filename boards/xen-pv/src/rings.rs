//! The two text rings a PV guest shares with dom0, written against [`SharedMem`] so that
//! they run on the host too (unit tests with an in-process peer):
//!
//! * the console ring (`xencons_interface`: `in[1024]`, `out[2048]`, then the four u32
//!   indices `in_cons, in_prod, out_cons, out_prod` at 3072..3088), read by xenconsoled;
//! * the xenstore ring (`xenstore_domain_interface`: `req[1024]`, `rsp[1024]`, then
//!   `req_cons, req_prod, rsp_cons, rsp_prod` at 2048..2064) carrying `xsd_sockmsg`
//!   messages: a 16-byte header (type, req_id, tx_id, len as native u32) and `len` ≤ 4096
//!   payload bytes.
//!
//! Indices are free-running u32 counters; a ring position is `index % size`.

use core::sync::atomic::{Ordering, fence};

use xenblk::platform::{PlatformError, Result};
use xenblk::proto::shmem::SharedMem;

/// A doorbell: notify the peer, and block until the peer notified us.
pub trait Bell {
    /// Signals the peer (an event-channel send).
    fn notify(&mut self);
    /// Waits for the peer's next signal (may return spuriously).
    fn wait(&mut self);
}

// ------------------------------------------------------------------------ console

const CONS_OUT: usize = 1024;
const CONS_OUT_SIZE: u32 = 2048;
const CONS_OUT_CONS: usize = 3080;
const CONS_OUT_PROD: usize = 3084;

/// Writer side of the console ring's `out` half.
pub struct ConsoleRing {
    mem: SharedMem,
}

impl ConsoleRing {
    /// Wraps the console page (4096 bytes).
    pub fn new(mem: SharedMem) -> ConsoleRing {
        assert!(mem.len() >= 4096);
        ConsoleRing { mem }
    }

    /// Writes all of `data`, waiting on `bell` while the ring is full. Notifies once per
    /// call (and before each wait).
    pub fn write(&self, data: &[u8], bell: &mut impl Bell) {
        let mut done = 0;
        while done < data.len() {
            let cons = self.mem.load_u32(CONS_OUT_CONS, Ordering::Acquire);
            let prod = self.mem.load_u32(CONS_OUT_PROD, Ordering::Relaxed);
            let used = prod.wrapping_sub(cons);
            if used >= CONS_OUT_SIZE {
                // Full, or a corrupt index from the peer: either way, let it drain.
                bell.notify();
                bell.wait();
                continue;
            }
            let space = (CONS_OUT_SIZE - used) as usize;
            let n = space.min(data.len() - done);
            let mut p = prod;
            for &b in &data[done..done + n] {
                self.mem.write_bytes(CONS_OUT + (p % CONS_OUT_SIZE) as usize, &[b]);
                p = p.wrapping_add(1);
            }
            // The bytes before the index that publishes them.
            fence(Ordering::Release);
            self.mem.store_u32(CONS_OUT_PROD, p, Ordering::Release);
            done += n;
        }
        bell.notify();
    }
}

// ------------------------------------------------------------------------ xenstore

const XS_RING: u32 = 1024;
const XS_REQ: usize = 0;
const XS_RSP: usize = 1024;
const XS_REQ_CONS: usize = 2048;
const XS_REQ_PROD: usize = 2052;
const XS_RSP_CONS: usize = 2056;
const XS_RSP_PROD: usize = 2060;
/// Largest payload of one message.
pub const XS_PAYLOAD_MAX: usize = 4096;
const HDR: usize = 16;

/// `xsd_sockmsg_type` values used here.
pub mod ty {
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const WATCH: u32 = 4;
    pub const UNWATCH: u32 = 5;
    pub const TRANSACTION_START: u32 = 6;
    pub const TRANSACTION_END: u32 = 7;
    pub const WRITE: u32 = 11;
    pub const RM: u32 = 13;
    pub const WATCH_EVENT: u32 = 15;
    pub const ERROR: u32 = 16;
}

/// A decoded message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    fn encode(&self) -> [u8; HDR] {
        let mut h = [0u8; HDR];
        h[0..4].copy_from_slice(&self.ty.to_le_bytes());
        h[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        h[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        h[12..16].copy_from_slice(&self.len.to_le_bytes());
        h
    }
    fn decode(h: &[u8; HDR]) -> Header {
        let w = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        Header { ty: w(0), req_id: w(4), tx_id: w(8), len: w(12) }
    }
}

/// One direction of the xenstore ring, seen from the side that produces (`prod`/`cons`
/// offsets and data offset chosen by the constructor).
#[derive(Clone, Copy)]
struct Half {
    mem: SharedMem,
    data: usize,
    cons: usize,
    prod: usize,
}

impl Half {
    /// Copies as much of `src` as fits; returns the bytes written.
    fn put(&self, src: &[u8]) -> usize {
        let cons = self.mem.load_u32(self.cons, Ordering::Acquire);
        let prod = self.mem.load_u32(self.prod, Ordering::Relaxed);
        let used = prod.wrapping_sub(cons);
        if used > XS_RING {
            return 0;
        }
        let n = ((XS_RING - used) as usize).min(src.len());
        let mut p = prod;
        let mut i = 0;
        while i < n {
            let pos = (p % XS_RING) as usize;
            let k = (XS_RING as usize - pos).min(n - i);
            self.mem.write_bytes(self.data + pos, &src[i..i + k]);
            i += k;
            p = p.wrapping_add(k as u32);
        }
        fence(Ordering::Release);
        self.mem.store_u32(self.prod, p, Ordering::Release);
        n
    }

    /// Bytes readable, or `None` if the peer's indices are corrupt.
    fn avail(&self) -> Option<usize> {
        let prod = self.mem.load_u32(self.prod, Ordering::Acquire);
        let cons = self.mem.load_u32(self.cons, Ordering::Relaxed);
        let n = prod.wrapping_sub(cons);
        (n <= XS_RING).then_some(n as usize)
    }

    /// Copies `dst.len()` bytes starting `skip` bytes past the consumer index.
    fn peek(&self, skip: usize, dst: &mut [u8]) {
        let cons = self.mem.load_u32(self.cons, Ordering::Relaxed).wrapping_add(skip as u32);
        let mut i = 0;
        let mut c = cons;
        while i < dst.len() {
            let pos = (c % XS_RING) as usize;
            let k = (XS_RING as usize - pos).min(dst.len() - i);
            self.mem.read_bytes(self.data + pos, &mut dst[i..i + k]);
            i += k;
            c = c.wrapping_add(k as u32);
        }
    }

    fn consume(&self, n: usize) {
        let cons = self.mem.load_u32(self.cons, Ordering::Relaxed);
        // Reads of the data before the index that frees it.
        fence(Ordering::AcqRel);
        self.mem.store_u32(self.cons, cons.wrapping_add(n as u32), Ordering::Release);
    }
}

/// The guest's xenstore client: synchronous requests (one at a time, matched by `req_id`),
/// watch events noted as they pass by (coalesced into one flag: the frontend re-reads the
/// state it watches anyway).
pub struct XsClient<B: Bell> {
    req: Half,
    rsp: Half,
    bell: B,
    next_id: u32,
    watch_fired: bool,
    /// Payload of the last message read.
    buf: [u8; XS_PAYLOAD_MAX],
    /// Set when the ring's indices were found corrupt: every later request fails.
    broken: bool,
}

/// Maps a xenstored `XS_ERROR` payload (an errno name) to a platform error.
pub fn error_from_name(name: &[u8]) -> PlatformError {
    let name = name.strip_suffix(&[0]).unwrap_or(name);
    match name {
        b"ENOENT" => PlatformError::NotFound,
        b"EACCES" | b"EPERM" => PlatformError::Denied,
        b"EAGAIN" => PlatformError::Again,
        b"ENOMEM" | b"ENOSPC" | b"EQUOTA" => PlatformError::NoSpace,
        b"EINVAL" | b"E2BIG" => PlatformError::Invalid,
        b"EEXIST" => PlatformError::Errno(17),
        b"EBUSY" => PlatformError::Errno(16),
        b"EISDIR" => PlatformError::Errno(21),
        b"EROFS" => PlatformError::Errno(30),
        _ => PlatformError::Errno(5),
    }
}

impl<B: Bell> XsClient<B> {
    /// Wraps the xenstore page (the guest side: writes `req`, reads `rsp`).
    pub fn new(mem: SharedMem, bell: B) -> XsClient<B> {
        assert!(mem.len() >= 4096);
        XsClient {
            req: Half { mem, data: XS_REQ, cons: XS_REQ_CONS, prod: XS_REQ_PROD },
            rsp: Half { mem, data: XS_RSP, cons: XS_RSP_CONS, prod: XS_RSP_PROD },
            bell,
            next_id: 1,
            watch_fired: false,
            buf: [0; XS_PAYLOAD_MAX],
            broken: false,
        }
    }

    /// Takes the "a watch fired" flag.
    pub fn take_watch(&mut self) -> bool {
        core::mem::take(&mut self.watch_fired)
    }

    fn put_all(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.req.put(data);
            data = &data[n..];
            if !data.is_empty() {
                self.bell.notify();
                self.bell.wait();
            }
        }
    }

    /// Reads one complete message if it is all in the ring; `Ok(None)` if not yet.
    fn try_read(&mut self) -> Result<Option<Header>> {
        let Some(avail) = self.rsp.avail() else {
            self.broken = true;
            return Err(PlatformError::Errno(5));
        };
        if avail < HDR {
            return Ok(None);
        }
        let mut h = [0u8; HDR];
        self.rsp.peek(0, &mut h);
        let hdr = Header::decode(&h);
        if hdr.len as usize > XS_PAYLOAD_MAX || hdr.len as usize > XS_RING as usize - HDR {
            // xenstored never sends more than 4096 (and a message must fit the ring to be
            // read whole here; replies to our small requests always do).
            self.broken = true;
            return Err(PlatformError::Errno(5));
        }
        if avail < HDR + hdr.len as usize {
            return Ok(None);
        }
        let len = hdr.len as usize;
        let mut tmp = [0u8; XS_PAYLOAD_MAX];
        self.rsp.peek(HDR, &mut tmp[..len]);
        self.buf[..len].copy_from_slice(&tmp[..len]);
        self.rsp.consume(HDR + len);
        // Tell xenstored there is room again.
        self.bell.notify();
        if hdr.ty == ty::WATCH_EVENT {
            self.watch_fired = true;
        }
        Ok(Some(hdr))
    }

    /// Drains complete messages without blocking: notes watch events, drops stray replies.
    pub fn pump(&mut self) {
        while let Ok(Some(_)) = self.try_read() {}
    }

    /// Sends one request made of `parts` and waits for its reply. On success returns the
    /// reply's payload length (payload in [`payload`](Self::payload)); an `XS_ERROR` reply
    /// becomes the mapped error.
    pub fn request(&mut self, ty: u32, tx: u32, parts: &[&[u8]]) -> Result<usize> {
        if self.broken {
            return Err(PlatformError::Errno(5));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > XS_PAYLOAD_MAX {
            return Err(PlatformError::Invalid);
        }
        let req_id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let h = Header { ty, req_id, tx_id: tx, len: len as u32 }.encode();
        self.put_all(&h);
        for p in parts {
            self.put_all(p);
        }
        self.bell.notify();
        loop {
            match self.try_read()? {
                Some(r) if r.ty == ty::WATCH_EVENT => {}
                Some(r) if r.req_id == req_id => {
                    if r.ty == ty::ERROR {
                        return Err(error_from_name(&self.buf[..r.len as usize]));
                    }
                    return Ok(r.len as usize);
                }
                // A reply to nothing we asked: skip it.
                Some(_) => {}
                None => self.bell.wait(),
            }
        }
    }

    /// The payload of the last reply.
    pub fn payload(&self, len: usize) -> &[u8] {
        &self.buf[..len.min(XS_PAYLOAD_MAX)]
    }
}

/// Formats `v` in decimal into `buf`, returning the digits (the driver's formatter).
pub fn fmt_u32(v: u32, buf: &mut [u8; 20]) -> &[u8] {
    xenblk::proto::xenbus::fmt_u64(v as u64, buf)
}

/// Parses a decimal u32 (no sign, no spaces; a trailing NUL is allowed).
pub fn parse_u32(s: &[u8]) -> Option<u32> {
    let s = s.strip_suffix(&[0]).unwrap_or(s);
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u64;
    }
    u32::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    fn page() -> (SharedMem, Box<[u64]>) {
        let words = vec![0u64; 512].into_boxed_slice();
        let ptr = Box::into_raw(words);
        // SAFETY: a fresh 4096-byte allocation, owned by the returned box and only used
        // through the SharedMem while the box lives.
        let mem = unsafe { SharedMem::new(ptr as *mut u8, 4096) };
        // SAFETY: `ptr` came from Box::into_raw just above.
        (mem, unsafe { Box::from_raw(ptr) })
    }

    /// An in-process xenstored: serves whatever the guest queued whenever it rings.
    struct FakeStore {
        srv_req: Half,
        srv_rsp: Half,
        keys: HashMap<Vec<u8>, Vec<u8>>,
        /// Watch events to send before the next reply.
        events_first: usize,
        notifies: usize,
    }

    impl FakeStore {
        fn new(mem: SharedMem) -> FakeStore {
            FakeStore {
                // The server consumes `req` and produces `rsp`.
                srv_req: Half { mem, data: XS_REQ, cons: XS_REQ_CONS, prod: XS_REQ_PROD },
                srv_rsp: Half { mem, data: XS_RSP, cons: XS_RSP_CONS, prod: XS_RSP_PROD },
                keys: HashMap::new(),
                events_first: 0,
                notifies: 0,
            }
        }
        fn send(&self, ty: u32, req_id: u32, payload: &[u8]) {
            let h = Header { ty, req_id, tx_id: 0, len: payload.len() as u32 }.encode();
            let mut msg = h.to_vec();
            msg.extend_from_slice(payload);
            assert_eq!(self.srv_rsp.put(&msg), msg.len(), "test replies must fit the ring");
        }
        fn serve(&mut self) {
            loop {
                let avail = self.srv_req.avail().unwrap();
                if avail < HDR {
                    return;
                }
                let mut h = [0u8; HDR];
                self.srv_req.peek(0, &mut h);
                let hdr = Header::decode(&h);
                if avail < HDR + hdr.len as usize {
                    return;
                }
                let mut p = vec![0u8; hdr.len as usize];
                self.srv_req.peek(HDR, &mut p);
                self.srv_req.consume(HDR + p.len());
                while self.events_first > 0 {
                    self.send(ty::WATCH_EVENT, 0, b"/some/path\x001\x00");
                    self.events_first -= 1;
                }
                let parts: Vec<&[u8]> = p.splitn(2, |&b| b == 0).collect();
                match hdr.ty {
                    ty::READ => match self.keys.get(parts[0]) {
                        Some(v) => self.send(ty::READ, hdr.req_id, &v.clone()),
                        None => self.send(ty::ERROR, hdr.req_id, b"ENOENT\0"),
                    },
                    ty::WRITE => {
                        self.keys.insert(parts[0].to_vec(), parts[1].to_vec());
                        self.send(ty::WRITE, hdr.req_id, b"OK\0");
                    }
                    _ => self.send(ty::ERROR, hdr.req_id, b"EINVAL\0"),
                }
            }
        }
    }

    struct LoopBell(Rc<RefCell<FakeStore>>);
    impl Bell for LoopBell {
        fn notify(&mut self) {
            let mut s = self.0.borrow_mut();
            s.notifies += 1;
            s.serve();
        }
        fn wait(&mut self) {}
    }

    #[test]
    fn write_then_read_back_and_missing_key() {
        let (mem, _keep) = page();
        let store = Rc::new(RefCell::new(FakeStore::new(mem)));
        let mut c = XsClient::new(mem, LoopBell(store.clone()));
        c.request(ty::WRITE, 0, &[b"/a/b\0", b"hello"]).unwrap();
        let n = c.request(ty::READ, 0, &[b"/a/b\0"]).unwrap();
        assert_eq!(c.payload(n), b"hello");
        assert_eq!(c.request(ty::READ, 0, &[b"/nope\0"]), Err(PlatformError::NotFound));
        assert!(!c.take_watch());
    }

    #[test]
    fn watch_event_before_reply_is_noted_and_skipped() {
        let (mem, _keep) = page();
        let store = Rc::new(RefCell::new(FakeStore::new(mem)));
        store.borrow_mut().keys.insert(b"/k".to_vec(), b"v".to_vec());
        store.borrow_mut().events_first = 2;
        let mut c = XsClient::new(mem, LoopBell(store.clone()));
        let n = c.request(ty::READ, 0, &[b"/k\0"]).unwrap();
        assert_eq!(c.payload(n), b"v");
        assert!(c.take_watch());
        assert!(!c.take_watch());
    }

    #[test]
    fn many_requests_wrap_the_ring_indices() {
        let (mem, _keep) = page();
        let store = Rc::new(RefCell::new(FakeStore::new(mem)));
        let mut c = XsClient::new(mem, LoopBell(store.clone()));
        let value = vec![b'x'; 300];
        for i in 0..100u32 {
            let mut b = [0u8; 20];
            let mut path = b"/k/".to_vec();
            path.extend_from_slice(fmt_u32(i, &mut b));
            path.push(0);
            c.request(ty::WRITE, 0, &[&path, &value]).unwrap();
            let n = c.request(ty::READ, 0, &[&path]).unwrap();
            assert_eq!(c.payload(n), &value[..]);
        }
        // 200 messages of >300 bytes went through a 1024-byte ring.
        assert!(mem.load_u32(XS_REQ_PROD, Ordering::Relaxed) > 10 * XS_RING);
    }

    #[test]
    fn corrupt_indices_fail_instead_of_reading_garbage() {
        let (mem, _keep) = page();
        // The peer never answers; it only corrupted its producer index.
        let mut c = XsClient::new(mem, CountBell { notifies: 0, drain: None });
        mem.store_u32(XS_RSP_PROD, 5000, Ordering::Relaxed);
        assert!(c.request(ty::READ, 0, &[b"/k\0"]).is_err());
        assert!(c.request(ty::READ, 0, &[b"/k\0"]).is_err());
    }

    struct CountBell {
        notifies: usize,
        drain: Option<SharedMem>,
    }
    impl Bell for CountBell {
        fn notify(&mut self) {
            self.notifies += 1;
        }
        fn wait(&mut self) {
            // The console daemon: consume everything.
            if let Some(m) = self.drain {
                let p = m.load_u32(CONS_OUT_PROD, Ordering::Acquire);
                m.store_u32(CONS_OUT_CONS, p, Ordering::Release);
            }
        }
    }

    #[test]
    fn console_wraps_and_waits_when_full() {
        let (mem, _keep) = page();
        let ring = ConsoleRing::new(mem);
        let mut bell = CountBell { notifies: 0, drain: Some(mem) };
        let msg: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        ring.write(&msg, &mut bell);
        let prod = mem.load_u32(CONS_OUT_PROD, Ordering::Relaxed);
        assert_eq!(prod, 5000);
        // The last 5000 - 4096 = 904 bytes are still in the ring, in order.
        let cons = mem.load_u32(CONS_OUT_CONS, Ordering::Relaxed);
        assert_eq!(cons, 4096);
        for i in cons..prod {
            let mut b = [0u8];
            mem.read_bytes(CONS_OUT + (i % CONS_OUT_SIZE) as usize, &mut b);
            assert_eq!(b[0], msg[i as usize]);
        }
        assert!(bell.notifies >= 3);
    }

    #[test]
    fn decimal_helpers() {
        let mut b = [0u8; 20];
        assert_eq!(fmt_u32(0, &mut b), b"0");
        assert_eq!(fmt_u32(4294967295, &mut b), b"4294967295");
        assert_eq!(parse_u32(b"51712\0"), Some(51712));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"12a"), None);
        assert_eq!(parse_u32(b""), None);
    }
}
