//! A small NBD client as the backend's [`Storage`]: the disk lives in an NBD export
//! (`nbdkit`, `qemu-nbd`, `nbd-server`, ...) reached over TCP or a Unix socket.
//!
//! Protocol subset (from the NBD protocol specification): fixed newstyle handshake, the
//! export chosen with `NBD_OPT_GO` (falling back to `NBD_OPT_EXPORT_NAME` when a server
//! answers `NBD_REP_ERR_UNSUP`), simple replies only (no structured replies, no TLS), and
//! the commands READ, WRITE, FLUSH, TRIM and DISC. One request is in flight at a time (the
//! driver's `Storage` is synchronous); every reply is checked against the request's cookie.
//!
//! A server that breaks the protocol (bad magic, wrong cookie, oversize reply, short read,
//! a stalled connection past the timeout) makes the operation fail with
//! [`StorageError::Io`]; the connection is then dropped and the next operation reconnects
//! once. Nothing here panics on server input, and no allocation is sized by the server
//! beyond [`MAX_OPTION_REPLY`].

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use xenblk::modes::storage::{Storage, StorageError, StorageInfo};
use xenblk::proto::shmem::SharedMem;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const FLAG_C_NO_ZEROES: u32 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags (`NBD_FLAG_*`), as the server sent them.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// The server accepts `NBD_CMD_FLUSH`.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// The server accepts `NBD_CMD_TRIM`.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;

/// Longest option reply payload accepted (the spec's replies are tiny; this bounds memory).
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Largest single command sent; longer reads/writes are split.
pub const MAX_CHUNK: usize = 1 << 20;
/// Socket read/write timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the export is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// `host:port` over TCP.
    Tcp(String),
    /// A Unix socket path.
    Unix(String),
}

/// An NBD export: address and export name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Server address.
    pub addr: Addr,
    /// Export name (may be empty: the default export).
    pub export: String,
}

impl Target {
    /// Parses the NBD URI forms `nbd://HOST[:PORT][/EXPORT]` (port 10809 by default) and
    /// `nbd+unix:///[EXPORT]?socket=PATH`. Returns `None` for anything else.
    pub fn parse(s: &str) -> Option<Target> {
        if let Some(rest) = s.strip_prefix("nbd://") {
            let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
            if hostport.is_empty() || export.contains('?') {
                return None;
            }
            let addr = if hostport.starts_with('[') {
                // [v6]:port or [v6]
                let close = hostport.find(']')?;
                match &hostport[close + 1..] {
                    "" => format!("{hostport}:10809"),
                    p if p.starts_with(':') && p[1..].parse::<u16>().is_ok() => hostport.to_string(),
                    _ => return None,
                }
            } else {
                match hostport.split_once(':') {
                    None => format!("{hostport}:10809"),
                    Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => hostport.to_string(),
                    _ => return None,
                }
            };
            return Some(Target { addr: Addr::Tcp(addr), export: export.to_string() });
        }
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let rest = rest.strip_prefix('/')?; // empty authority
            let (export, query) = rest.split_once('?')?;
            let path = query.strip_prefix("socket=")?;
            if path.is_empty() || path.contains('&') {
                return None;
            }
            return Some(Target { addr: Addr::Unix(path.to_string()), export: export.to_string() });
        }
        None
    }
}

/// What the handshake established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Minimum block size (1 if the server did not say).
    pub min_block: u32,
    /// Whether `NBD_OPT_GO` was used (else `NBD_OPT_EXPORT_NAME`).
    pub via_go: bool,
}

/// Why connecting failed.
#[derive(Debug)]
pub enum NbdError {
    /// Socket error.
    Io(io::Error),
    /// The server broke the protocol, or refused.
    Protocol(String),
}

impl std::fmt::Display for NbdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdError::Io(e) => write!(f, "i/o: {e}"),
            NbdError::Protocol(s) => write!(f, "protocol: {s}"),
        }
    }
}

impl From<io::Error> for NbdError {
    fn from(e: io::Error) -> Self {
        NbdError::Io(e)
    }
}

fn proto<T>(s: impl Into<String>) -> Result<T, NbdError> {
    Err(NbdError::Protocol(s.into()))
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn connect_stream(addr: &Addr) -> io::Result<Stream> {
    match addr {
        Addr::Tcp(hp) => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{hp}: no address"));
            for sa in hp.to_socket_addrs()? {
                match TcpStream::connect_timeout(&sa, IO_TIMEOUT) {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.set_write_timeout(Some(IO_TIMEOUT))?;
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        Addr::Unix(p) => {
            let s = UnixStream::connect(p)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            Ok(Stream::Unix(s))
        }
    }
}

fn rd<const N: usize>(s: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}
fn rd16(s: &mut impl Read) -> io::Result<u16> {
    Ok(u16::from_be_bytes(rd(s)?))
}
fn rd32(s: &mut impl Read) -> io::Result<u32> {
    Ok(u32::from_be_bytes(rd(s)?))
}
fn rd64(s: &mut impl Read) -> io::Result<u64> {
    Ok(u64::from_be_bytes(rd(s)?))
}

fn send_option(s: &mut impl Write, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

/// Runs the fixed-newstyle handshake on `s` and selects `export`.
fn handshake(s: &mut (impl Read + Write), export: &str) -> Result<ExportInfo, NbdError> {
    if export.len() > 4096 {
        return proto("export name longer than 4096 bytes");
    }
    if rd64(s)? != NBDMAGIC {
        return proto("not an NBD server (no NBDMAGIC)");
    }
    let m = rd64(s)?;
    if m == OLDSTYLE_MAGIC {
        return proto("oldstyle server (not supported; use newstyle)");
    }
    if m != IHAVEOPT {
        return proto(format!("bad newstyle magic {m:#x}"));
    }
    let hflags = rd16(s)?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return proto("server does not offer fixed newstyle");
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
    s.write_all(&cflags.to_be_bytes())?;

    // NBD_OPT_GO: name length, name, one info request (block size).
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &d)?;
    let mut size = None;
    let mut flags = 0u16;
    let mut min_block = 1u32;
    loop {
        if rd64(s)? != OPT_REPLY_MAGIC {
            return proto("bad option reply magic");
        }
        let opt = rd32(s)?;
        let ty = rd32(s)?;
        let len = rd32(s)?;
        if opt != OPT_GO {
            return proto(format!("reply for option {opt}, expected {OPT_GO}"));
        }
        if len > MAX_OPTION_REPLY {
            return proto(format!("option reply of {len} bytes"));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match ty {
            REP_ACK => break,
            REP_INFO if data.len() >= 2 => {
                let info = u16::from_be_bytes([data[0], data[1]]);
                match info {
                    INFO_EXPORT if data.len() == 12 => {
                        size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap_or_default()));
                        flags = u16::from_be_bytes([data[10], data[11]]);
                    }
                    INFO_EXPORT => return proto("NBD_INFO_EXPORT of wrong length"),
                    INFO_BLOCK_SIZE if data.len() == 14 => {
                        min_block = u32::from_be_bytes(data[2..6].try_into().unwrap_or_default());
                    }
                    _ => {} // other information: ignored, as the spec allows
                }
            }
            REP_INFO => return proto("short NBD_REP_INFO"),
            REP_ERR_UNSUP => return export_name(s, export, no_zeroes),
            t if t & (1 << 31) != 0 => {
                let msg = String::from_utf8_lossy(&data).into_owned();
                return proto(format!("server refused export '{export}': error {:#x} {msg}", t));
            }
            t => return proto(format!("unexpected option reply type {t}")),
        }
    }
    let Some(size) = size else { return proto("NBD_REP_ACK without NBD_INFO_EXPORT") };
    check_min_block(min_block)?;
    Ok(ExportInfo { size, flags, min_block, via_go: true })
}

fn check_min_block(min_block: u32) -> Result<(), NbdError> {
    // Every request the driver makes is 512-byte aligned; a larger minimum cannot be honoured.
    if min_block == 0 || min_block > 512 || !min_block.is_power_of_two() {
        return proto(format!("minimum block size {min_block} not usable (need <= 512)"));
    }
    Ok(())
}

/// The old way to pick an export (servers without `NBD_OPT_GO`).
fn export_name(s: &mut (impl Read + Write), export: &str, no_zeroes: bool) -> Result<ExportInfo, NbdError> {
    send_option(s, OPT_EXPORT_NAME, export.as_bytes())?;
    let size = rd64(s)?;
    let flags = rd16(s)?;
    if !no_zeroes {
        let _: [u8; 124] = rd(s)?;
    }
    Ok(ExportInfo { size, flags, min_block: 1, via_go: false })
}

/// An NBD export as [`Storage`].
pub struct NbdStorage {
    target: Target,
    conn: Option<Stream>,
    info: ExportInfo,
    read_only: bool,
    cookie: u64,
    buf: Vec<u8>,
    /// Reconnects made after a failure.
    pub reconnects: u64,
    /// Operations that failed.
    pub failures: u64,
}

impl std::fmt::Debug for NbdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdStorage")
            .field("target", &self.target)
            .field("info", &self.info)
            .field("connected", &self.conn.is_some())
            .field("reconnects", &self.reconnects)
            .field("failures", &self.failures)
            .finish()
    }
}

impl NbdStorage {
    /// Connects to `target` and runs the handshake. `read_only` refuses writes even if the
    /// export allows them (a read-only export is always served read-only).
    pub fn connect(target: Target, read_only: bool) -> Result<NbdStorage, NbdError> {
        let mut s = connect_stream(&target.addr)?;
        let info = handshake(&mut s, &target.export)?;
        let read_only = read_only || info.flags & TFLAG_READ_ONLY != 0;
        Ok(NbdStorage {
            target,
            conn: Some(s),
            info,
            read_only,
            cookie: 0,
            buf: Vec::new(),
            reconnects: 0,
            failures: 0,
        })
    }

    /// What the handshake said.
    pub fn export_info(&self) -> ExportInfo {
        self.info
    }

    fn reconnect(&mut self) -> Result<(), StorageError> {
        let mut s = connect_stream(&self.target.addr).map_err(|_| StorageError::Io)?;
        let info = handshake(&mut s, &self.target.export).map_err(|_| StorageError::Io)?;
        if info.size != self.info.size {
            return Err(StorageError::Io); // a different disk now: refuse to carry on
        }
        self.reconnects += 1;
        self.conn = Some(s);
        Ok(())
    }

    /// Sends one command and reads its simple reply; `data_out` is the write payload,
    /// `read_len` the bytes of read data expected (stored in `self.buf`).
    fn command(&mut self, ty: u16, offset: u64, len: u32, write: bool, read_len: usize) -> Result<(), StorageError> {
        if self.conn.is_none() {
            self.reconnect()?;
        }
        let r = self.command_once(ty, offset, len, write, read_len);
        if r.is_err() {
            self.failures += 1;
        }
        r
    }

    fn command_once(
        &mut self,
        ty: u16,
        offset: u64,
        len: u32,
        write: bool,
        read_len: usize,
    ) -> Result<(), StorageError> {
        self.cookie = self.cookie.wrapping_add(1);
        let cookie = self.cookie;
        let mut hdr = [0u8; 28];
        hdr[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        hdr[4..6].copy_from_slice(&0u16.to_be_bytes());
        hdr[6..8].copy_from_slice(&ty.to_be_bytes());
        hdr[8..16].copy_from_slice(&cookie.to_be_bytes());
        hdr[16..24].copy_from_slice(&offset.to_be_bytes());
        hdr[24..28].copy_from_slice(&len.to_be_bytes());
        let Some(s) = self.conn.as_mut() else { return Err(StorageError::Io) };
        let res = (|| -> Result<Result<(), u32>, io::Error> {
            if write {
                let mut m = Vec::with_capacity(28 + self.buf.len());
                m.extend_from_slice(&hdr);
                m.extend_from_slice(&self.buf);
                s.write_all(&m)?;
            } else {
                s.write_all(&hdr)?;
            }
            if rd32(s)? != SIMPLE_REPLY_MAGIC {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad reply magic"));
            }
            let err = rd32(s)?;
            if rd64(s)? != cookie {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply cookie mismatch"));
            }
            if err != 0 {
                return Ok(Err(err)); // no payload follows an error reply
            }
            if read_len > 0 {
                self.buf.resize(read_len, 0);
                s.read_exact(&mut self.buf)?;
            }
            Ok(Ok(()))
        })();
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(errno)) => Err(match errno {
                1 | 30 => StorageError::ReadOnly,         // EPERM, EROFS
                95 | 38 => StorageError::Unsupported,     // ENOTSUP, ENOSYS
                22 | 28 | 75 => StorageError::OutOfRange, // EINVAL, ENOSPC, EOVERFLOW
                _ => StorageError::Io,
            }),
            Err(_) => {
                // The stream is now in an unknown state: drop it, reconnect next time.
                self.conn = None;
                Err(StorageError::Io)
            }
        }
    }

    fn range(&self, sector: u64, len: usize) -> Result<u64, StorageError> {
        let off = sector.checked_mul(512).ok_or(StorageError::OutOfRange)?;
        let end = off.checked_add(len as u64).ok_or(StorageError::OutOfRange)?;
        if end > self.info.size {
            return Err(StorageError::OutOfRange);
        }
        Ok(off)
    }

    /// Sends `NBD_CMD_DISC` and closes the connection.
    pub fn disconnect(&mut self) {
        if let Some(mut s) = self.conn.take() {
            let mut hdr = [0u8; 28];
            hdr[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            hdr[6..8].copy_from_slice(&CMD_DISC.to_be_bytes());
            let _ = s.write_all(&hdr);
        }
    }
}

impl Drop for NbdStorage {
    fn drop(&mut self) {
        self.disconnect();
    }
}

impl Storage for NbdStorage {
    fn info(&self) -> StorageInfo {
        StorageInfo {
            sectors: self.info.size / 512,
            sector_size: 512,
            physical_sector_size: 4096,
            read_only: self.read_only,
            flush: self.info.flags & TFLAG_SEND_FLUSH != 0,
            discard: self.info.flags & TFLAG_SEND_TRIM != 0,
            discard_granularity: if self.info.flags & TFLAG_SEND_TRIM != 0 { 4096 } else { 0 },
            discard_secure: false,
        }
    }

    fn read(&mut self, sector: u64, dst: SharedMem) -> Result<(), StorageError> {
        let off = self.range(sector, dst.len())?;
        let mut done = 0;
        while done < dst.len() {
            let n = (dst.len() - done).min(MAX_CHUNK);
            self.command(CMD_READ, off + done as u64, n as u32, false, n)?;
            dst.copy_from_private(done, &self.buf[..n]);
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, sector: u64, src: SharedMem) -> Result<(), StorageError> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        let off = self.range(sector, src.len())?;
        let mut done = 0;
        while done < src.len() {
            let n = (src.len() - done).min(MAX_CHUNK);
            self.buf.resize(n, 0);
            src.copy_to_private(done, &mut self.buf[..n]);
            self.command(CMD_WRITE, off + done as u64, n as u32, true, 0)?;
            done += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        if self.info.flags & TFLAG_SEND_FLUSH == 0 {
            return Ok(()); // the server has no volatile cache to commit (it did not offer flush)
        }
        self.command(CMD_FLUSH, 0, 0, false, 0)
    }

    fn discard(&mut self, sector: u64, nr_sectors: u64, _secure: bool) -> Result<(), StorageError> {
        if self.info.flags & TFLAG_SEND_TRIM == 0 {
            return Err(StorageError::Unsupported);
        }
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        let bytes = nr_sectors.checked_mul(512).ok_or(StorageError::OutOfRange)?;
        let mut off = self.range(sector, 0)?;
        let end = off.checked_add(bytes).ok_or(StorageError::OutOfRange)?;
        if end > self.info.size {
            return Err(StorageError::OutOfRange);
        }
        while off < end {
            let n = (end - off).min(1 << 30) as u32;
            self.command(CMD_TRIM, off, n, false, 0)?;
            off += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parse_targets() {
        let t = Target::parse("nbd://127.0.0.1:10810/disk").unwrap();
        assert_eq!(t, Target { addr: Addr::Tcp("127.0.0.1:10810".into()), export: "disk".into() });
        assert_eq!(Target::parse("nbd://host").unwrap().addr, Addr::Tcp("host:10809".into()));
        assert_eq!(Target::parse("nbd://[::1]:99/x").unwrap().addr, Addr::Tcp("[::1]:99".into()));
        assert_eq!(Target::parse("nbd://[::1]").unwrap().addr, Addr::Tcp("[::1]:10809".into()));
        let u = Target::parse("nbd+unix:///e?socket=/run/n.sock").unwrap();
        assert_eq!(u, Target { addr: Addr::Unix("/run/n.sock".into()), export: "e".into() });
        assert_eq!(Target::parse("nbd+unix:///?socket=/s").unwrap().export, "");
        for bad in [
            "/img",
            "nbd://",
            "nbd://h:x/e",
            "nbd://h:99999",
            "nbd+unix:///e",
            "nbd+unix://h/e?socket=/s",
            "nbd://:1/e",
        ] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
    }

    /// A scripted server: `f` gets the accepted stream.
    fn serve(f: impl FnOnce(UnixStream) + Send + 'static) -> (Target, std::thread::JoinHandle<()>, std::path::PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("xenblk-nbd-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let l = UnixListener::bind(&p).unwrap();
        let h = std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                f(s)
            }
        });
        (Target { addr: Addr::Unix(p.to_string_lossy().into()), export: "e".into() }, h, p)
    }

    fn greet(s: &mut UnixStream, hflags: u16) {
        s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
        s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
        s.write_all(&hflags.to_be_bytes()).unwrap();
        let _cflags = rd32(s).unwrap();
    }
    fn read_option(s: &mut UnixStream) -> (u32, Vec<u8>) {
        assert_eq!(rd64(s).unwrap(), IHAVEOPT);
        let opt = rd32(s).unwrap();
        let len = rd32(s).unwrap();
        let mut d = vec![0; len as usize];
        s.read_exact(&mut d).unwrap();
        (opt, d)
    }
    fn reply(s: &mut UnixStream, opt: u32, ty: u32, data: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&ty.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        s.write_all(&m).unwrap();
    }
    fn go_ok(s: &mut UnixStream, size: u64, flags: u16) {
        let (opt, d) = read_option(s);
        assert_eq!(opt, OPT_GO);
        assert_eq!(&d[0..4], &1u32.to_be_bytes());
        assert_eq!(&d[4..5], b"e");
        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&flags.to_be_bytes());
        reply(s, OPT_GO, REP_INFO, &info);
        reply(s, OPT_GO, REP_ACK, &[]);
    }
    struct Req {
        ty: u16,
        cookie: u64,
        off: u64,
        len: u32,
    }
    fn read_req(s: &mut UnixStream) -> Req {
        assert_eq!(rd32(s).unwrap(), REQUEST_MAGIC);
        let _f = rd16(s).unwrap();
        Req { ty: rd16(s).unwrap(), cookie: rd64(s).unwrap(), off: rd64(s).unwrap(), len: rd32(s).unwrap() }
    }
    fn simple(s: &mut UnixStream, err: u32, cookie: u64) {
        s.write_all(&SIMPLE_REPLY_MAGIC.to_be_bytes()).unwrap();
        s.write_all(&err.to_be_bytes()).unwrap();
        s.write_all(&cookie.to_be_bytes()).unwrap();
    }

    fn mem(words: &mut [u64]) -> SharedMem {
        // SAFETY: the caller keeps `words` alive and untouched while the view is used.
        unsafe { SharedMem::new(words.as_mut_ptr().cast(), words.len() * 8) }
    }

    #[test]
    fn go_read_write_flush_trim_against_scripted_server() {
        let (t, h, p) = serve(|mut s| {
            greet(&mut s, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
            go_ok(&mut s, 1 << 20, TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_TRIM);
            let mut disk = vec![0u8; 1 << 20];
            loop {
                let r = read_req(&mut s);
                match r.ty {
                    CMD_READ => {
                        simple(&mut s, 0, r.cookie);
                        s.write_all(&disk[r.off as usize..][..r.len as usize]).unwrap();
                    }
                    CMD_WRITE => {
                        s.read_exact(&mut disk[r.off as usize..][..r.len as usize]).unwrap();
                        simple(&mut s, 0, r.cookie);
                    }
                    CMD_FLUSH | CMD_TRIM => simple(&mut s, 0, r.cookie),
                    CMD_DISC => return,
                    _ => simple(&mut s, 22, r.cookie),
                }
            }
        });
        let mut st = NbdStorage::connect(t, false).unwrap();
        let i = st.info();
        assert_eq!((i.sectors, i.flush, i.discard, i.read_only), (2048, true, true, false));
        assert!(st.export_info().via_go);
        let mut w = vec![0u64; 512];
        let m = mem(&mut w);
        let pat: Vec<u8> = (0..4096u32).map(|x| (x * 7 + 3) as u8).collect();
        m.copy_from_private(0, &pat);
        st.write(8, m).unwrap();
        m.zero(0, 4096);
        st.read(8, m).unwrap();
        let mut back = vec![0u8; 4096];
        m.copy_to_private(0, &mut back);
        assert_eq!(back, pat);
        st.flush().unwrap();
        st.discard(0, 8, false).unwrap();
        assert_eq!(st.read(2047, m), Err(StorageError::OutOfRange)); // 4 KiB past the end
        assert_eq!(st.discard(2040, 16, false), Err(StorageError::OutOfRange));
        drop(st); // sends DISC: the server thread returns
        h.join().unwrap();
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn falls_back_to_export_name_and_honours_read_only() {
        let (t, h, p) = serve(|mut s| {
            greet(&mut s, FLAG_FIXED_NEWSTYLE); // no NO_ZEROES: 124 zero bytes follow
            let (opt, _) = read_option(&mut s);
            assert_eq!(opt, OPT_GO);
            reply(&mut s, OPT_GO, REP_ERR_UNSUP, b"no go");
            let (opt, name) = read_option(&mut s);
            assert_eq!((opt, name.as_slice()), (OPT_EXPORT_NAME, &b"e"[..]));
            s.write_all(&(4096u64).to_be_bytes()).unwrap();
            s.write_all(&(TFLAG_HAS_FLAGS | TFLAG_READ_ONLY).to_be_bytes()).unwrap();
            s.write_all(&[0u8; 124]).unwrap();
            let r = read_req(&mut s);
            assert_eq!(r.ty, CMD_READ);
            simple(&mut s, 5, r.cookie); // EIO
            let _ = read_req(&mut s); // DISC
        });
        let mut st = NbdStorage::connect(t, false).unwrap();
        assert!(!st.export_info().via_go);
        assert!(st.info().read_only);
        assert!(!st.info().flush);
        let mut w = vec![0u64; 64];
        let m = mem(&mut w);
        assert_eq!(st.write(0, m), Err(StorageError::ReadOnly));
        assert_eq!(st.read(0, m), Err(StorageError::Io));
        assert_eq!(st.flush(), Ok(())); // no flush offered: nothing to commit
        assert_eq!(st.discard(0, 1, false), Err(StorageError::Unsupported));
        drop(st);
        h.join().unwrap();
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn hostile_servers_give_errors_not_panics() {
        // (name, server script, expected: connect error text fragment or None = later op fails)
        type Script = fn(UnixStream);
        let cases: Vec<(&str, Script, Option<&str>)> = vec![
            ("not nbd", |mut s| s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap(), Some("NBDMAGIC")),
            (
                "oldstyle",
                |mut s| {
                    s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
                    s.write_all(&OLDSTYLE_MAGIC.to_be_bytes()).unwrap();
                },
                Some("oldstyle"),
            ),
            ("not fixed", |mut s| greet(&mut s, 0), Some("fixed newstyle")),
            (
                "huge option reply",
                |mut s| {
                    greet(&mut s, FLAG_FIXED_NEWSTYLE);
                    let _ = read_option(&mut s);
                    let mut m = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
                    m.extend_from_slice(&OPT_GO.to_be_bytes());
                    m.extend_from_slice(&REP_INFO.to_be_bytes());
                    m.extend_from_slice(&u32::MAX.to_be_bytes());
                    s.write_all(&m).unwrap();
                },
                Some("bytes"),
            ),
            (
                "refused",
                |mut s| {
                    greet(&mut s, FLAG_FIXED_NEWSTYLE);
                    let _ = read_option(&mut s);
                    reply(&mut s, OPT_GO, (1 << 31) + 6, b"no such export");
                },
                Some("no such export"),
            ),
            (
                "ack without export info",
                |mut s| {
                    greet(&mut s, FLAG_FIXED_NEWSTYLE);
                    let _ = read_option(&mut s);
                    reply(&mut s, OPT_GO, REP_ACK, &[]);
                },
                Some("without NBD_INFO_EXPORT"),
            ),
            (
                "block size 4096",
                |mut s| {
                    greet(&mut s, FLAG_FIXED_NEWSTYLE);
                    let _ = read_option(&mut s);
                    let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [4096u32, 4096, 1 << 20] {
                        b.extend_from_slice(&v.to_be_bytes());
                    }
                    reply(&mut s, OPT_GO, REP_INFO, &b);
                    let mut e = INFO_EXPORT.to_be_bytes().to_vec();
                    e.extend_from_slice(&4096u64.to_be_bytes());
                    e.extend_from_slice(&1u16.to_be_bytes());
                    reply(&mut s, OPT_GO, REP_INFO, &e);
                    reply(&mut s, OPT_GO, REP_ACK, &[]);
                },
                Some("minimum block size"),
            ),
            ("closes mid-greeting", |mut s| s.write_all(&NBDMAGIC.to_be_bytes()[..5]).unwrap(), Some("i/o")),
            (
                "wrong cookie",
                |mut s| {
                    greet(&mut s, FLAG_FIXED_NEWSTYLE);
                    go_ok(&mut s, 1 << 16, 1);
                    let r = read_req(&mut s);
                    simple(&mut s, 0, r.cookie ^ 1);
                },
                None,
            ),
            (
                "bad reply magic",
                |mut s| {
                    greet(&mut s, FLAG_FIXED_NEWSTYLE);
                    go_ok(&mut s, 1 << 16, 1);
                    let _ = read_req(&mut s);
                    s.write_all(&[0xff; 16]).unwrap();
                },
                None,
            ),
            (
                "short read data",
                |mut s| {
                    greet(&mut s, FLAG_FIXED_NEWSTYLE);
                    go_ok(&mut s, 1 << 16, 1);
                    let r = read_req(&mut s);
                    simple(&mut s, 0, r.cookie);
                    s.write_all(&[1; 100]).unwrap(); // then hang up
                },
                None,
            ),
        ];
        for (name, script, want) in cases {
            let (t, h, p) = serve(script);
            match (NbdStorage::connect(t, false), want) {
                (Err(e), Some(frag)) => assert!(e.to_string().contains(frag), "{name}: {e}"),
                (Ok(_), Some(_)) => panic!("{name}: connect should fail"),
                (Err(e), None) => panic!("{name}: connect failed: {e}"),
                (Ok(mut st), None) => {
                    let mut w = vec![0u64; 512];
                    let m = mem(&mut w);
                    assert_eq!(st.read(0, m), Err(StorageError::Io), "{name}");
                    assert_eq!(st.failures, 1, "{name}");
                    // The server is gone: the reconnect attempt fails cleanly too.
                    let _ = h.join(); // the script may panic when the client hangs up first
                    let _ = std::fs::remove_file(&p);
                    assert_eq!(st.read(0, m), Err(StorageError::Io), "{name}");
                    continue;
                }
            }
            let _ = h.join(); // the script may panic when the client hangs up first
            let _ = std::fs::remove_file(&p);
        }
    }
}
