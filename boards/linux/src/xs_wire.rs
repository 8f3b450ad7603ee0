//! The xenstore wire protocol (`xen/io/xs_wire.h`): a 16-byte header of four native-endian
//! u32s (type, req_id, tx_id, len) followed by `len` payload bytes (at most 4096).
//!
//! Pure encoding and decoding, no I/O: the unit tests run anywhere.

use xenblk::platform::PlatformError;

/// Message types (`enum xsd_sockmsg_type`), checked against the header by the tests.
#[allow(missing_docs)]
pub mod ty {
    pub const CONTROL: u32 = 0;
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const GET_PERMS: u32 = 3;
    pub const WATCH: u32 = 4;
    pub const UNWATCH: u32 = 5;
    pub const TRANSACTION_START: u32 = 6;
    pub const TRANSACTION_END: u32 = 7;
    pub const INTRODUCE: u32 = 8;
    pub const RELEASE: u32 = 9;
    pub const GET_DOMAIN_PATH: u32 = 10;
    pub const WRITE: u32 = 11;
    pub const MKDIR: u32 = 12;
    pub const RM: u32 = 13;
    pub const SET_PERMS: u32 = 14;
    pub const WATCH_EVENT: u32 = 15;
    pub const ERROR: u32 = 16;
}

/// Header size.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`.
pub const PAYLOAD_MAX: usize = 4096;

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type (see [`ty`]).
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0: none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.ty.to_ne_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_ne_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_ne_bytes());
        b[12..16].copy_from_slice(&self.len.to_ne_bytes());
        b
    }
    /// Decodes a header; `Err(Invalid)` if `len` exceeds [`PAYLOAD_MAX`].
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, PlatformError> {
        let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Header { ty: w(0), req_id: w(4), tx_id: w(8), len: w(12) };
        if h.len as usize > PAYLOAD_MAX {
            return Err(PlatformError::Invalid);
        }
        Ok(h)
    }
}

/// A whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    /// Header (its `len` equals `payload.len()`).
    pub header: Header,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Builds a request: the payload is the concatenation of `parts`; parts marked `nul` get a
/// terminating NUL (paths and tokens do, a WRITE value does not).
pub fn request(ty: u32, req_id: u32, tx_id: u32, parts: &[(&[u8], bool)]) -> Result<Vec<u8>, PlatformError> {
    let len: usize = parts.iter().map(|(p, nul)| p.len() + usize::from(*nul)).sum();
    if len > PAYLOAD_MAX {
        return Err(PlatformError::Invalid);
    }
    for (p, _) in parts {
        if p.contains(&0) {
            return Err(PlatformError::Invalid);
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&Header { ty, req_id, tx_id, len: len as u32 }.encode());
    for (p, nul) in parts {
        out.extend_from_slice(p);
        if *nul {
            out.push(0);
        }
    }
    Ok(out)
}

/// Incremental decoder: feed it bytes in any chunking, take whole messages out.
#[derive(Default, Debug)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    /// The next complete message, `Ok(None)` if more bytes are needed, `Err` on a header
    /// that cannot be valid (the stream is then unusable).
    pub fn next_msg(&mut self) -> Result<Option<Msg>, PlatformError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&self.buf[..HEADER_LEN]);
        let header = Header::decode(&hb)?;
        let total = HEADER_LEN + header.len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Msg { header, payload }))
    }
    /// Bytes held that do not yet form a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Maps the errno name of an `XS_ERROR` reply (`"ENOENT\0"`) to a platform error.
pub fn error_from_payload(payload: &[u8]) -> PlatformError {
    let name = payload.split(|&b| b == 0).next().unwrap_or(&[]);
    match name {
        b"ENOENT" => PlatformError::NotFound,
        b"EACCES" | b"EPERM" => PlatformError::Denied,
        b"EAGAIN" => PlatformError::Again,
        b"ENOMEM" | b"ENOSPC" | b"EQUOTA" => PlatformError::NoSpace,
        b"EINVAL" | b"E2BIG" => PlatformError::Invalid,
        b"EEXIST" => PlatformError::Errno(libc::EEXIST),
        b"EISDIR" => PlatformError::Errno(libc::EISDIR),
        b"EIO" => PlatformError::Errno(libc::EIO),
        b"ENOTEMPTY" => PlatformError::Errno(libc::ENOTEMPTY),
        b"ENOSYS" => PlatformError::Unsupported,
        b"EROFS" => PlatformError::Errno(libc::EROFS),
        b"EBUSY" => PlatformError::Errno(libc::EBUSY),
        b"EISCONN" => PlatformError::Errno(libc::EISCONN),
        _ => PlatformError::Errno(libc::EIO),
    }
}

/// Splits a `XS_WATCH_EVENT` payload (`path\0token\0`) into path and token.
pub fn parse_watch_event(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut it = payload.split(|&b| b == 0);
    let path = it.next()?;
    let token = it.next()?;
    Some((path, token))
}

/// Splits a `XS_DIRECTORY` reply (NUL-terminated names) into names.
pub fn parse_directory(payload: &[u8]) -> Vec<&[u8]> {
    payload.split(|&b| b == 0).filter(|s| !s.is_empty()).collect()
}

/// A payload with one trailing NUL removed (replies to TRANSACTION_START and
/// GET_DOMAIN_PATH carry one).
pub fn strip_nul(p: &[u8]) -> &[u8] {
    p.strip_suffix(&[0]).unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = Header { ty: ty::WRITE, req_id: 7, tx_id: 3, len: 11 };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        let big = Header { len: PAYLOAD_MAX as u32 + 1, ..h };
        assert_eq!(Header::decode(&big.encode()), Err(PlatformError::Invalid));
    }

    #[test]
    fn request_layout() {
        let r = request(ty::WRITE, 1, 0, &[(b"a/b", true), (b"val", false)]).unwrap();
        assert_eq!(r.len(), HEADER_LEN + 7);
        assert_eq!(&r[0..4], &11u32.to_ne_bytes());
        assert_eq!(&r[4..8], &1u32.to_ne_bytes());
        assert_eq!(&r[12..16], &7u32.to_ne_bytes());
        assert_eq!(&r[16..], b"a/b\0val");
        assert_eq!(request(ty::READ, 1, 0, &[(b"a\0b", true)]), Err(PlatformError::Invalid));
        let long = vec![b'x'; PAYLOAD_MAX];
        assert_eq!(request(ty::READ, 1, 0, &[(&long, true)]), Err(PlatformError::Invalid));
    }

    #[test]
    fn decoder_handles_any_chunking() {
        let mut stream = request(ty::READ, 5, 0, &[(b"x", true)]).unwrap();
        stream.extend(request(ty::WATCH_EVENT, 0, 0, &[(b"p", true), (b"t", true)]).unwrap());
        for chunk in 1..stream.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                d.feed(c);
                while let Some(m) = d.next_msg().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 2, "chunk {chunk}");
            assert_eq!(got[0].header.req_id, 5);
            assert_eq!(got[0].payload, b"x\0");
            assert_eq!(parse_watch_event(&got[1].payload), Some((&b"p"[..], &b"t"[..])));
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn errors_and_helpers() {
        assert_eq!(error_from_payload(b"ENOENT\0"), PlatformError::NotFound);
        assert_eq!(error_from_payload(b"EAGAIN\0"), PlatformError::Again);
        assert_eq!(error_from_payload(b"EACCES\0"), PlatformError::Denied);
        assert_eq!(error_from_payload(b"E2BIG\0"), PlatformError::Invalid);
        assert_eq!(error_from_payload(b"WHAT"), PlatformError::Errno(libc::EIO));
        assert_eq!(parse_directory(b"a\0bb\0"), vec![&b"a"[..], &b"bb"[..]]);
        assert!(parse_directory(b"").is_empty());
        assert_eq!(strip_nul(b"12\0"), b"12");
        assert_eq!(parse_watch_event(b"only"), None);
    }

    #[test]
    fn types_match_xs_wire_h() {
        let Some(m) = crate::sys::ctest::probe(
            "xswire",
            &["xen/io/xs_wire.h"],
            r#"P("CONTROL", XS_CONTROL); P("DIRECTORY", XS_DIRECTORY); P("READ", XS_READ);
               P("GET_PERMS", XS_GET_PERMS); P("WATCH", XS_WATCH); P("UNWATCH", XS_UNWATCH);
               P("TRANSACTION_START", XS_TRANSACTION_START); P("TRANSACTION_END", XS_TRANSACTION_END);
               P("INTRODUCE", XS_INTRODUCE); P("RELEASE", XS_RELEASE);
               P("GET_DOMAIN_PATH", XS_GET_DOMAIN_PATH); P("WRITE", XS_WRITE); P("MKDIR", XS_MKDIR);
               P("RM", XS_RM); P("SET_PERMS", XS_SET_PERMS); P("WATCH_EVENT", XS_WATCH_EVENT);
               P("ERROR", XS_ERROR); P("hdr", sizeof(struct xsd_sockmsg));
               P("off_len", offsetof(struct xsd_sockmsg, len)); P("max", XENSTORE_PAYLOAD_MAX);"#,
        ) else {
            return;
        };
        let ours = [
            ("CONTROL", ty::CONTROL),
            ("DIRECTORY", ty::DIRECTORY),
            ("READ", ty::READ),
            ("GET_PERMS", ty::GET_PERMS),
            ("WATCH", ty::WATCH),
            ("UNWATCH", ty::UNWATCH),
            ("TRANSACTION_START", ty::TRANSACTION_START),
            ("TRANSACTION_END", ty::TRANSACTION_END),
            ("INTRODUCE", ty::INTRODUCE),
            ("RELEASE", ty::RELEASE),
            ("GET_DOMAIN_PATH", ty::GET_DOMAIN_PATH),
            ("WRITE", ty::WRITE),
            ("MKDIR", ty::MKDIR),
            ("RM", ty::RM),
            ("SET_PERMS", ty::SET_PERMS),
            ("WATCH_EVENT", ty::WATCH_EVENT),
            ("ERROR", ty::ERROR),
        ];
        for (name, v) in ours {
            assert_eq!(m[name], u64::from(v), "{name}");
        }
        assert_eq!(m["hdr"], HEADER_LEN as u64);
        assert_eq!(m["off_len"], 12);
        assert_eq!(m["max"], PAYLOAD_MAX as u64);
    }
}
