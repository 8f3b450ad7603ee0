//! Small xenstore helpers shared by both roles: path joining without allocation and strict
//! reading of the decimal values peers write.

use crate::platform::{PlatformError, Tx, XenStore, XsPath};
use crate::proto::xenbus::{XenbusState, fmt_u64, keys, parse_u64};

/// A value read from xenstore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read<T> {
    /// Present and well formed.
    Ok(T),
    /// The node does not exist.
    Missing,
    /// The node exists but does not parse (a misbehaving peer).
    Malformed,
}

impl<T> Read<T> {
    /// The value, or `default` when missing; `None` when malformed.
    pub fn or_default(self, default: T) -> Option<T> {
        match self {
            Read::Ok(v) => Some(v),
            Read::Missing => Some(default),
            Read::Malformed => None,
        }
    }
    /// The value if present and well formed.
    pub fn ok(self) -> Option<T> {
        match self {
            Read::Ok(v) => Some(v),
            _ => None,
        }
    }
}

/// `dir/key` (or `dir` alone when `key` is empty). Over-long paths are truncated, which
/// makes the later xenstore operation fail cleanly rather than touch another node.
pub fn join(dir: &str, key: &str) -> XsPath {
    let mut p = XsPath::new();
    let _ = p.push_str(dir);
    if !key.is_empty() {
        let _ = p.push('/');
        let _ = p.push_str(key);
    }
    p
}

/// Reads a decimal value.
pub fn read_u64<X: XenStore + ?Sized>(xs: &mut X, tx: Tx, dir: &str, key: &str) -> Read<u64> {
    let mut buf = [0u8; 32];
    match xs.read(tx, &join(dir, key), &mut buf) {
        Ok(n) => match parse_u64(&buf[..n]) {
            Some(v) => Read::Ok(v),
            None => Read::Malformed,
        },
        Err(PlatformError::NotFound) => Read::Missing,
        Err(_) => Read::Malformed,
    }
}

/// Reads a boolean feature key (`"0"`/`"1"`).
pub fn read_bool<X: XenStore + ?Sized>(xs: &mut X, tx: Tx, dir: &str, key: &str) -> Read<bool> {
    match read_u64(xs, tx, dir, key) {
        Read::Ok(0) => Read::Ok(false),
        Read::Ok(1) => Read::Ok(true),
        Read::Ok(_) => Read::Malformed,
        Read::Missing => Read::Missing,
        Read::Malformed => Read::Malformed,
    }
}

/// Reads a xenbus state; missing or malformed reads as `Unknown`.
pub fn read_state<X: XenStore + ?Sized>(xs: &mut X, dir: &str) -> XenbusState {
    match read_u64(xs, Tx::NONE, dir, keys::STATE) {
        Read::Ok(v) => XenbusState::from_u64(v).unwrap_or(XenbusState::Unknown),
        _ => XenbusState::Unknown,
    }
}

/// Reads a string value into `out`.
pub fn read_str<X: XenStore + ?Sized, const N: usize>(
    xs: &mut X,
    tx: Tx,
    dir: &str,
    key: &str,
) -> Read<heapless::String<N>> {
    let mut buf = [0u8; N];
    match xs.read(tx, &join(dir, key), &mut buf) {
        Ok(n) => {
            let v = match &buf[..n] {
                [rest @ .., 0] => rest,
                b => b,
            };
            match core::str::from_utf8(v) {
                Ok(s) => {
                    let mut out = heapless::String::new();
                    match out.push_str(s) {
                        Ok(()) => Read::Ok(out),
                        Err(_) => Read::Malformed,
                    }
                }
                Err(_) => Read::Malformed,
            }
        }
        Err(PlatformError::NotFound) => Read::Missing,
        Err(_) => Read::Malformed,
    }
}

/// Writes a decimal value.
pub fn write_u64<X: XenStore + ?Sized>(xs: &mut X, tx: Tx, dir: &str, key: &str, v: u64) -> Result<(), PlatformError> {
    let mut d = [0u8; 20];
    xs.write(tx, &join(dir, key), fmt_u64(v, &mut d))
}

/// Writes a string value.
pub fn write_str<X: XenStore + ?Sized>(xs: &mut X, tx: Tx, dir: &str, key: &str, v: &str) -> Result<(), PlatformError> {
    xs.write(tx, &join(dir, key), v.as_bytes())
}

/// Writes a xenbus state.
pub fn write_state<X: XenStore + ?Sized>(xs: &mut X, dir: &str, s: XenbusState) -> Result<(), PlatformError> {
    write_str(xs, Tx::NONE, dir, keys::STATE, s.as_str())
}

/// Runs `f` in a transaction, retrying on conflict up to 16 times.
pub fn transaction<X: XenStore + ?Sized>(
    xs: &mut X,
    mut f: impl FnMut(&mut X, Tx) -> Result<(), PlatformError>,
) -> Result<(), PlatformError> {
    for _ in 0..16 {
        let tx = xs.transaction_start()?;
        match f(xs, tx) {
            Ok(()) => match xs.transaction_end(tx, true) {
                Ok(()) => return Ok(()),
                Err(PlatformError::Again) => continue,
                Err(e) => return Err(e),
            },
            Err(e) => {
                let _ = xs.transaction_end(tx, false);
                return Err(e);
            }
        }
    }
    Err(PlatformError::Again)
}
