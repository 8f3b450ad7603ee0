//! A xenstore client speaking the wire protocol itself (no libxenstore), over the xenstored
//! unix socket (dom0) or `/dev/xen/xenbus` (any domain, including a domU).
//!
//! Requests are synchronous: one outstanding request at a time, its reply matched by
//! `req_id`. Watch events that arrive meanwhile (or when [`XsClient::pump`] is called after
//! `poll(2)` reports the fd readable) are queued, **coalesced per token**: a watch has at most
//! one pending event however often it fires (a peer that writes in a loop cannot grow our
//! memory; XSA-349). The driver re-reads what it needs on each firing, so nothing is lost.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use xenblk::platform::{PlatformError, Result, Tx, XenStore};
use xenblk::proto::grant::DomId;

use crate::xs_wire::{self, Decoder, Msg, ty};

/// Default xenstored socket in dom0.
pub const SOCKET_PATH: &str = "/var/run/xenstored/socket";
/// The xenbus device (works in dom0 and in a domU).
pub const XENBUS_PATH: &str = "/dev/xen/xenbus";

/// The byte stream to xenstored.
#[derive(Debug)]
pub enum Conn {
    /// The xenstored unix socket (or one end of a test socket pair).
    Socket(UnixStream),
    /// `/dev/xen/xenbus`.
    Device(File),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Socket(s) => s.read(buf),
            Conn::Device(f) => f.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Socket(s) => s.write(buf),
            Conn::Device(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Conn::Socket(s) => s.as_raw_fd(),
            Conn::Device(f) => f.as_raw_fd(),
        }
    }
}

/// A fired watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The token given to [`XenStore::watch`].
    pub token: u32,
    /// The path that changed (the first one, when several firings were coalesced).
    pub path: String,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XsStats {
    /// Requests sent.
    pub requests: u64,
    /// Watch events received.
    pub events: u64,
    /// Watch events dropped because the token already had one pending.
    pub coalesced: u64,
    /// Events with a token this client did not issue.
    pub foreign_events: u64,
}

/// The client.
#[derive(Debug)]
pub struct XsClient {
    conn: Conn,
    dec: Decoder,
    next_req: u32,
    pending: VecDeque<WatchEvent>,
    domid: Option<DomId>,
    stats: XsStats,
}

fn io_err(e: std::io::Error) -> PlatformError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => PlatformError::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) => PlatformError::Denied,
        Some(libc::EAGAIN) => PlatformError::Again,
        Some(n) => PlatformError::Errno(n),
        None => PlatformError::Errno(libc::EIO),
    }
}

/// Wire form of a numeric watch token.
fn token_str(token: u32) -> String {
    format!("xb{token}")
}

fn token_parse(s: &[u8]) -> Option<u32> {
    std::str::from_utf8(s.strip_prefix(b"xb")?).ok()?.parse().ok()
}

impl XsClient {
    /// Wraps an established connection.
    pub fn new(conn: Conn) -> XsClient {
        XsClient {
            conn,
            dec: Decoder::default(),
            next_req: 1,
            pending: VecDeque::new(),
            domid: None,
            stats: XsStats::default(),
        }
    }

    /// Connects to the xenstored unix socket.
    pub fn connect_socket(path: impl AsRef<Path>) -> Result<XsClient> {
        Ok(XsClient::new(Conn::Socket(UnixStream::connect(path).map_err(io_err)?)))
    }

    /// Opens `/dev/xen/xenbus` (or another xenbus device path).
    pub fn open_device(path: impl AsRef<Path>) -> Result<XsClient> {
        let f = OpenOptions::new().read(true).write(true).open(path).map_err(io_err)?;
        Ok(XsClient::new(Conn::Device(f)))
    }

    /// The socket if it exists (dom0 with xenstored), else `/dev/xen/xenbus`.
    pub fn connect_default() -> Result<XsClient> {
        if Path::new(SOCKET_PATH).exists()
            && let Ok(c) = XsClient::connect_socket(SOCKET_PATH)
        {
            return Ok(c);
        }
        XsClient::open_device(XENBUS_PATH)
    }

    /// The fd to `poll(2)` for watch events.
    pub fn fd(&self) -> RawFd {
        self.conn.as_raw_fd()
    }

    /// Counters.
    pub fn stats(&self) -> XsStats {
        self.stats
    }

    fn queue_event(&mut self, payload: &[u8]) {
        self.stats.events += 1;
        let Some((path, tok)) = xs_wire::parse_watch_event(payload) else { return };
        let Some(token) = token_parse(tok) else {
            self.stats.foreign_events += 1;
            return;
        };
        if self.pending.iter().any(|e| e.token == token) {
            self.stats.coalesced += 1;
            return;
        }
        self.pending.push_back(WatchEvent { token, path: String::from_utf8_lossy(path).into_owned() });
    }

    fn read_some(&mut self) -> Result<()> {
        let mut buf = [0u8; xs_wire::HEADER_LEN + xs_wire::PAYLOAD_MAX];
        loop {
            match self.conn.read(&mut buf) {
                Ok(0) => return Err(PlatformError::Errno(libc::EPIPE)),
                Ok(n) => {
                    self.dec.feed(&buf[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
    }

    fn recv(&mut self) -> Result<Msg> {
        loop {
            if let Some(m) = self.dec.next_msg()? {
                return Ok(m);
            }
            self.read_some()?;
        }
    }

    /// Sends one request and returns the reply payload (`Err` for an `XS_ERROR` reply).
    pub fn request(&mut self, ty: u32, tx: Tx, parts: &[(&[u8], bool)]) -> Result<Vec<u8>> {
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let msg = xs_wire::request(ty, req_id, tx.0, parts)?;
        self.conn.write_all(&msg).map_err(io_err)?;
        self.stats.requests += 1;
        loop {
            let m = self.recv()?;
            if m.header.ty == ty::WATCH_EVENT {
                self.queue_event(&m.payload);
                continue;
            }
            if m.header.req_id != req_id {
                continue; // a stale reply (cannot happen with one request in flight)
            }
            if m.header.ty == ty::ERROR {
                return Err(xs_wire::error_from_payload(&m.payload));
            }
            return Ok(m.payload);
        }
    }

    /// Reads whatever is available without blocking (call when `poll(2)` reports [`fd`](Self::fd)
    /// readable) and queues the watch events in it. Returns whether any event is pending.
    pub fn pump(&mut self) -> Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read_some()?;
        }
        while let Some(m) = self.dec.next_msg()? {
            if m.header.ty == ty::WATCH_EVENT {
                self.queue_event(&m.payload);
            }
        }
        Ok(!self.pending.is_empty())
    }

    /// Whether a watch event is queued.
    pub fn has_events(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes the queued watch events (at most one per token), oldest first.
    pub fn take_events(&mut self) -> Vec<WatchEvent> {
        self.pending.drain(..).collect()
    }

    /// Reads a value as a string.
    pub fn read_string(&mut self, tx: Tx, path: &str) -> Result<String> {
        let v = self.request(ty::READ, tx, &[(path.as_bytes(), true)])?;
        String::from_utf8(v).map_err(|_| PlatformError::Invalid)
    }

    /// Lists the children of `path`.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>> {
        let v = self.request(ty::DIRECTORY, tx, &[(path.as_bytes(), true)])?;
        Ok(xs_wire::parse_directory(&v).into_iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
    }

    /// Creates a directory node.
    pub fn mkdir(&mut self, tx: Tx, path: &str) -> Result<()> {
        self.request(ty::MKDIR, tx, &[(path.as_bytes(), true)]).map(|_| ())
    }

    /// `/local/domain/<domid>`, as xenstored reports it.
    pub fn domain_path(&mut self, domid: DomId) -> Result<String> {
        let v = self.request(ty::GET_DOMAIN_PATH, Tx::NONE, &[(domid.0.to_string().as_bytes(), true)])?;
        String::from_utf8(xs_wire::strip_nul(&v).to_vec()).map_err(|_| PlatformError::Invalid)
    }

    /// This domain's id (the relative node `domid`, read once and cached).
    pub fn domid(&mut self) -> Result<DomId> {
        if let Some(d) = self.domid {
            return Ok(d);
        }
        let s = self.read_string(Tx::NONE, "domid")?;
        let d = DomId(s.trim().parse().map_err(|_| PlatformError::Invalid)?);
        self.domid = Some(d);
        Ok(d)
    }
}

impl XenStore for XsClient {
    fn read(&mut self, tx: Tx, path: &str, buf: &mut [u8]) -> Result<usize> {
        let v = self.request(ty::READ, tx, &[(path.as_bytes(), true)])?;
        if v.len() > buf.len() {
            return Err(PlatformError::Invalid);
        }
        buf[..v.len()].copy_from_slice(&v);
        Ok(v.len())
    }
    fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<()> {
        self.request(ty::WRITE, tx, &[(path.as_bytes(), true), (value, false)]).map(|_| ())
    }
    fn remove(&mut self, tx: Tx, path: &str) -> Result<()> {
        self.request(ty::RM, tx, &[(path.as_bytes(), true)]).map(|_| ())
    }
    fn transaction_start(&mut self) -> Result<Tx> {
        let v = self.request(ty::TRANSACTION_START, Tx::NONE, &[(b"", true)])?;
        let s = std::str::from_utf8(xs_wire::strip_nul(&v)).map_err(|_| PlatformError::Invalid)?;
        Ok(Tx(s.parse().map_err(|_| PlatformError::Invalid)?))
    }
    fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<()> {
        let arg: &[u8] = if commit { b"T" } else { b"F" };
        self.request(ty::TRANSACTION_END, tx, &[(arg, true)]).map(|_| ())
    }
    fn watch(&mut self, path: &str, token: u32) -> Result<()> {
        self.request(ty::WATCH, Tx::NONE, &[(path.as_bytes(), true), (token_str(token).as_bytes(), true)]).map(|_| ())
    }
    fn unwatch(&mut self, path: &str, token: u32) -> Result<()> {
        self.request(ty::UNWATCH, Tx::NONE, &[(path.as_bytes(), true), (token_str(token).as_bytes(), true)])?;
        self.pending.retain(|e| e.token != token);
        Ok(())
    }
    fn own_domid(&mut self) -> DomId {
        // The trait cannot fail; an unreachable xenstore makes every later call fail anyway.
        self.domid().unwrap_or(DomId::SELF)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A tiny in-memory xenstored on one end of a socket pair: enough of the protocol to
    //! exercise the client (reads, writes, rm, directory, watches with an initial firing and
    //! firings on writes below the watched path, transactions that commit at once).
    use super::*;
    use std::collections::BTreeMap;
    use std::thread::JoinHandle;

    /// Starts the server; returns the client end and the server thread.
    pub fn start(domid: u16) -> (XsClient, JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || serve(b, domid));
        (XsClient::new(Conn::Socket(a)), h)
    }

    fn reply(s: &mut UnixStream, ty: u32, req: u32, tx: u32, payload: &[u8]) {
        let mut m = xs_wire::Header { ty, req_id: req, tx_id: tx, len: payload.len() as u32 }.encode().to_vec();
        m.extend_from_slice(payload);
        // Dribble the bytes out in small pieces to exercise the client's reassembly.
        for c in m.chunks(5) {
            if s.write_all(c).is_err() {
                return;
            }
        }
    }

    fn serve(mut s: UnixStream, domid: u16) {
        let mut store: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        store.insert(format!("/local/domain/{domid}/domid"), domid.to_string().into_bytes());
        let mut watches: Vec<(String, Vec<u8>)> = Vec::new();
        let home = format!("/local/domain/{domid}");
        let abs = |p: &[u8]| {
            let p = String::from_utf8_lossy(p).into_owned();
            if p.starts_with('/') { p } else { format!("{home}/{p}") }
        };
        let mut dec = Decoder::default();
        let mut buf = [0u8; 1024];
        let mut next_tx = 1u32;
        loop {
            let m = loop {
                match dec.next_msg().unwrap() {
                    Some(m) => break m,
                    None => match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => dec.feed(&buf[..n]),
                    },
                }
            };
            let h = m.header;
            let args: Vec<&[u8]> = m.payload.split(|&b| b == 0).collect();
            let ok = |s: &mut UnixStream| reply(s, h.ty, h.req_id, h.tx_id, b"OK\0");
            let err = |s: &mut UnixStream, e: &str| reply(s, ty::ERROR, h.req_id, h.tx_id, format!("{e}\0").as_bytes());
            match h.ty {
                ty::READ => match store.get(&abs(args[0])) {
                    Some(v) => reply(&mut s, h.ty, h.req_id, h.tx_id, &v.clone()),
                    None => err(&mut s, "ENOENT"),
                },
                ty::WRITE => {
                    let p = abs(args[0]);
                    let nul = m.payload.iter().position(|&b| b == 0).unwrap();
                    store.insert(p.clone(), m.payload[nul + 1..].to_vec());
                    // Fire the matching watches *before* the reply, as xenstored may.
                    for (wp, tok) in &watches {
                        if p == *wp || p.starts_with(&format!("{wp}/")) {
                            let mut ev = p.clone().into_bytes();
                            ev.push(0);
                            ev.extend_from_slice(tok);
                            ev.push(0);
                            reply(&mut s, ty::WATCH_EVENT, 0, 0, &ev);
                        }
                    }
                    ok(&mut s);
                }
                ty::RM => {
                    let p = abs(args[0]);
                    let before = store.len();
                    store.retain(|k, _| k != &p && !k.starts_with(&format!("{p}/")));
                    if before == store.len() { err(&mut s, "ENOENT") } else { ok(&mut s) }
                }
                ty::DIRECTORY => {
                    let p = abs(args[0]);
                    let mut names: Vec<String> = store
                        .keys()
                        .filter_map(|k| k.strip_prefix(&format!("{p}/")))
                        .map(|r| r.split('/').next().unwrap().to_string())
                        .collect();
                    names.dedup();
                    let mut out = Vec::new();
                    for n in names {
                        out.extend_from_slice(n.as_bytes());
                        out.push(0);
                    }
                    reply(&mut s, h.ty, h.req_id, h.tx_id, &out);
                }
                ty::WATCH => {
                    let p = abs(args[0]);
                    watches.push((p.clone(), args[1].to_vec()));
                    ok(&mut s);
                    let mut ev = p.into_bytes();
                    ev.push(0);
                    ev.extend_from_slice(args[1]);
                    ev.push(0);
                    reply(&mut s, ty::WATCH_EVENT, 0, 0, &ev);
                }
                ty::UNWATCH => {
                    let p = abs(args[0]);
                    watches.retain(|(wp, t)| !(wp == &p && t == args[1]));
                    ok(&mut s);
                }
                ty::TRANSACTION_START => {
                    let id = next_tx;
                    next_tx += 1;
                    reply(&mut s, h.ty, h.req_id, 0, format!("{id}\0").as_bytes());
                }
                ty::TRANSACTION_END => {
                    if h.tx_id == 0 {
                        err(&mut s, "EINVAL")
                    } else {
                        ok(&mut s)
                    }
                }
                ty::GET_DOMAIN_PATH => reply(
                    &mut s,
                    h.ty,
                    h.req_id,
                    0,
                    format!("/local/domain/{}\0", String::from_utf8_lossy(args[0])).as_bytes(),
                ),
                _ => err(&mut s, "ENOSYS"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_rm_directory() {
        let (mut xs, h) = fake::start(3);
        assert_eq!(xs.own_domid(), DomId(3));
        xs.write(Tx::NONE, "/a/b", b"hello").unwrap();
        xs.write(Tx::NONE, "/a/c", b"").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(xs.read(Tx::NONE, "/a/b", &mut buf), Ok(5));
        assert_eq!(&buf[..5], b"hello");
        let mut small = [0u8; 2];
        assert_eq!(xs.read(Tx::NONE, "/a/b", &mut small), Err(PlatformError::Invalid));
        assert_eq!(xs.read(Tx::NONE, "/nope", &mut buf), Err(PlatformError::NotFound));
        assert_eq!(xs.directory(Tx::NONE, "/a").unwrap(), vec!["b".to_string(), "c".to_string()]);
        xs.remove(Tx::NONE, "/a").unwrap();
        assert_eq!(xs.read(Tx::NONE, "/a/b", &mut buf), Err(PlatformError::NotFound));
        assert_eq!(xs.remove(Tx::NONE, "/a"), Err(PlatformError::NotFound));
        assert_eq!(xs.domain_path(DomId(7)).unwrap(), "/local/domain/7");
        // relative paths resolve against the domain's home
        xs.write(Tx::NONE, "device/vbd/51712/state", b"1").unwrap();
        assert_eq!(xs.read_string(Tx::NONE, "/local/domain/3/device/vbd/51712/state").unwrap(), "1");
        drop(xs);
        h.join().unwrap();
    }

    #[test]
    fn transactions() {
        let (mut xs, h) = fake::start(0);
        let tx = xs.transaction_start().unwrap();
        assert_ne!(tx, Tx::NONE);
        xs.write(tx, "/t/x", b"1").unwrap();
        xs.transaction_end(tx, true).unwrap();
        assert_eq!(xs.transaction_end(Tx::NONE, true), Err(PlatformError::Invalid));
        drop(xs);
        h.join().unwrap();
    }

    #[test]
    fn watch_events_are_queued_and_coalesced() {
        let (mut xs, h) = fake::start(0);
        xs.watch("/be", 1).unwrap();
        xs.watch("/fe", 2).unwrap();
        // Firings for token 1 interleave with replies: all are queued, coalesced per token.
        for i in 0..10 {
            xs.write(Tx::NONE, "/be/state", i.to_string().as_bytes()).unwrap();
        }
        xs.write(Tx::NONE, "/fe/x", b"y").unwrap();
        xs.write(Tx::NONE, "/other", b"z").unwrap();
        // The initial firing of each watch may still be in flight: pump until both arrived.
        for _ in 0..100 {
            xs.pump().unwrap();
            if xs.pending.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let ev = xs.take_events();
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0], WatchEvent { token: 1, path: "/be".into() });
        assert_eq!(ev[1].token, 2);
        assert!(xs.stats().coalesced >= 10);
        assert!(!xs.has_events());
        xs.unwatch("/be", 1).unwrap();
        xs.write(Tx::NONE, "/be/state", b"5").unwrap();
        xs.pump().unwrap();
        assert!(xs.take_events().is_empty());
        drop(xs);
        h.join().unwrap();
    }

    #[test]
    fn token_roundtrip() {
        assert_eq!(token_parse(token_str(42).as_bytes()), Some(42));
        assert_eq!(token_parse(b"other"), None);
    }

    #[test]
    fn closed_connection_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut xs = XsClient::new(Conn::Socket(a));
        assert!(xs.read_string(Tx::NONE, "x").is_err());
    }
}
