//! Shared bodies of the fuzz targets (each target in `fuzz_targets/` is one call into here),
//! so that the same code also runs over the seed corpora in a plain `cargo test`-free
//! replay (`cargo fuzz run T corpus/T -- -runs=0`).

use xenblk::proto::blkif::{
    Abi, MAX_INDIRECT_SEGMENTS, ReqKind, decode_indirect_segment, decode_request, decode_response, encode_request,
    encode_response,
};

/// Request and response decoding for one ABI, with the invariants the backend relies on:
/// never a panic, a rejected request still names the slot's id and op (so it can be
/// answered), an accepted one re-encodes to a slot that decodes to the same request, and
/// every limit holds (segment counts, page counts).
pub fn blkif(abi: Abi, data: &[u8]) {
    let Some((&sel, slot)) = data.split_first() else { return };
    // The first byte picks how many indirect segments the "backend" offers.
    let max_indirect = match sel % 4 {
        0 => 0,
        1 => 32,
        2 => 256,
        _ => MAX_INDIRECT_SEGMENTS + (sel as usize),
    };
    let len = abi.layout().request;
    match decode_request(abi, slot, max_indirect) {
        Ok(req) => {
            assert!(slot.len() >= len);
            assert_eq!(req.op_code(), slot[0]);
            match &req.kind {
                ReqKind::Rw { segs, .. } => {
                    assert!(segs.len() <= 11);
                    for s in segs {
                        assert!(s.first_sect <= s.last_sect && s.last_sect <= 7);
                    }
                }
                ReqKind::Indirect { nr_segments, pages, .. } => {
                    assert!(max_indirect > 0);
                    assert!(*nr_segments as usize <= max_indirect.min(MAX_INDIRECT_SEGMENTS));
                    assert!(*nr_segments > 0);
                    assert_eq!(pages.len(), (*nr_segments as usize).div_ceil(512));
                }
                ReqKind::Discard { .. } => {}
            }
            let img = encode_request(abi, &req);
            assert_eq!(img.as_bytes().len(), len);
            let again = decode_request(abi, img.as_bytes(), max_indirect).expect("re-encoded request rejected");
            assert_eq!(again, req, "decode(encode(decode(slot))) != decode(slot)");
        }
        Err(rej) => {
            if slot.len() >= len {
                let l = abi.layout();
                let mut id = [0u8; 8];
                id.copy_from_slice(&slot[l.req_id..l.req_id + 8]);
                assert_eq!(rej.id, u64::from_le_bytes(id), "a rejection must echo the slot's id");
                assert_eq!(rej.op, slot[0], "a rejection must echo the slot's op");
            }
            let st = rej.status();
            assert!(st == -1 || st == -2);
        }
    }
    // Responses: any bytes decode (or are too short); a decoded response re-encodes to the
    // same fields.
    if let Some(rsp) = decode_response(abi, slot) {
        let img = encode_response(abi, &rsp);
        assert_eq!(decode_response(abi, img.as_bytes()), Some(rsp));
    } else {
        assert!(slot.len() < abi.layout().response);
    }
    // Indirect segments at every index of this "page", including out of range ones.
    for i in 0..(slot.len() / 8 + 2) {
        if let Some(s) = decode_indirect_segment(slot, i) {
            assert!(s.first_sect <= s.last_sect && s.last_sect <= 7);
        }
    }
}

pub mod backend_ring;
pub mod frontend_responses;

/// A cursor over the fuzzer's bytes that yields zeros once they run out.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    /// Whether all bytes were used.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// One byte (0 at the end).
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&x, rest)) => {
                self.0 = rest;
                x
            }
            None => 0,
        }
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// The xenstore wire decoder fed the fuzzer's bytes in fuzzer-chosen chunks: no panic, every
/// message it returns is exactly the bytes it was fed (header re-encodes, payload at most
/// `PAYLOAD_MAX`), nothing is lost or invented (consumed + buffered = fed), and the payload
/// helpers accept any payload.
pub fn xs_wire(data: &[u8]) {
    use xenblk_linux::xs_wire::{
        Decoder, HEADER_LEN, PAYLOAD_MAX, error_from_payload, parse_directory, parse_watch_event, request, strip_nul,
    };
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = (chunk as usize % 61) + 1;
    let mut dec = Decoder::default();
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut broken = false;
    for piece in stream.chunks(chunk) {
        dec.feed(piece);
        fed += piece.len();
        loop {
            match dec.next_msg() {
                Ok(Some(m)) => {
                    assert_eq!(m.header.len as usize, m.payload.len());
                    assert!(m.payload.len() <= PAYLOAD_MAX);
                    let start = consumed;
                    assert_eq!(&stream[start..start + HEADER_LEN], &m.header.encode());
                    assert_eq!(&stream[start + HEADER_LEN..start + HEADER_LEN + m.payload.len()], &m.payload[..]);
                    consumed += HEADER_LEN + m.payload.len();
                    let _ = error_from_payload(&m.payload);
                    if let Some((p, t)) = parse_watch_event(&m.payload) {
                        assert!(!p.contains(&0) && !t.contains(&0));
                    }
                    for n in parse_directory(&m.payload) {
                        assert!(!n.is_empty() && !n.contains(&0));
                    }
                    assert!(strip_nul(&m.payload).len() + 1 >= m.payload.len());
                }
                Ok(None) => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            break;
        }
        assert_eq!(consumed + dec.buffered(), fed, "bytes lost or invented");
        assert!(dec.buffered() <= HEADER_LEN + PAYLOAD_MAX + chunk, "decoder buffers without bound");
    }
    // Requests built from the same bytes decode back to themselves.
    let parts: Vec<(&[u8], bool)> = stream.split(|&b| b == 0xff).take(4).map(|p| (p, p.len() % 2 == 0)).collect();
    if let Ok(msg) = request(chunk as u32, 7, 9, &parts) {
        let mut d = Decoder::default();
        d.feed(&msg);
        let m = d.next_msg().expect("own request is valid").expect("own request is whole");
        assert_eq!((m.header.ty, m.header.req_id, m.header.tx_id), (chunk as u32, 7, 9));
        assert_eq!(d.buffered(), 0);
    } else {
        assert!(parts.iter().any(|(p, _)| p.contains(&0)) || stream.len() > PAYLOAD_MAX - 8);
    }
}

/// The config language on arbitrary bytes, for both ring profiles: no panic; a valid config
/// renders (Rust constants and the explain table); an invalid one yields at least one and at
/// most `MAX_DIAGNOSTICS` diagnostics, each located inside the input.
pub fn config(data: &[u8]) {
    use xenblk_config::{MAX_DIAGNOSTICS, Profile, explain, parse_bytes, render_rust};
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    for profile in Profile::ALL {
        match parse_bytes("fuzz.cfg", data, profile) {
            Ok(cfg) => {
                let rs = render_rust(&cfg);
                assert!(rs.contains("pub const"));
                let _ = explain(&cfg);
            }
            Err(d) => {
                assert!(!d.is_empty(), "an error without a diagnostic");
                assert!(d.items.len() <= MAX_DIAGNOSTICS);
                for item in &d.items {
                    if let Some(loc) = &item.location {
                        assert!(loc.line >= 1 && loc.line <= lines, "line {} of {lines}", loc.line);
                        assert!(loc.col >= 1, "column 0");
                    }
                    let mut out = String::new();
                    item.render("fuzz.cfg", &mut out);
                    assert!(!out.is_empty());
                }
                let _ = d.headline();
            }
        }
    }
}
