//! MD5 (RFC 1321), streaming. Only for comparing what `xenblk-front` wrote with what dom0's
//! `md5sum` sees in the image file; not for anything that needs a secure hash.

/// Streaming MD5 state.
#[derive(Clone, Debug)]
pub struct Md5 {
    s: [u32; 4],
    buf: [u8; 64],
    used: usize,
    len: u64,
}

/// Per-round left rotations.
const R: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15,
    21,
];

/// `K[i] = floor(abs(sin(i + 1)) * 2^32)`, computed once.
fn k() -> &'static [u32; 64] {
    static K: std::sync::OnceLock<[u32; 64]> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let mut k = [0u32; 64];
        for (i, v) in k.iter_mut().enumerate() {
            *v = (((i + 1) as f64).sin().abs() * 4_294_967_296.0) as u32;
        }
        k
    })
}

impl Default for Md5 {
    fn default() -> Self {
        Md5::new()
    }
}

impl Md5 {
    /// A fresh state.
    pub fn new() -> Md5 {
        Md5 { s: [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476], buf: [0; 64], used: 0, len: 0 }
    }

    fn block(s: &mut [u32; 4], b: &[u8]) {
        let k = k();
        let mut m = [0u32; 16];
        for (i, w) in m.iter_mut().enumerate() {
            *w = u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        let [mut a, mut bb, mut c, mut d] = *s;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((bb & c) | (!bb & d), i),
                1 => ((d & bb) | (!d & c), (5 * i + 1) % 16),
                2 => (bb ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (bb | !d), (7 * i) % 16),
            };
            let t = d;
            d = c;
            c = bb;
            bb = bb.wrapping_add(a.wrapping_add(f).wrapping_add(k[i]).wrapping_add(m[g]).rotate_left(R[i]));
            a = t;
        }
        s[0] = s[0].wrapping_add(a);
        s[1] = s[1].wrapping_add(bb);
        s[2] = s[2].wrapping_add(c);
        s[3] = s[3].wrapping_add(d);
    }

    /// Feeds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.used > 0 {
            let n = (64 - self.used).min(data.len());
            self.buf[self.used..self.used + n].copy_from_slice(&data[..n]);
            self.used += n;
            data = &data[n..];
            if self.used < 64 {
                return;
            }
            let b = self.buf;
            Md5::block(&mut self.s, &b);
            self.used = 0;
        }
        let mut chunks = data.chunks_exact(64);
        for c in &mut chunks {
            Md5::block(&mut self.s, c);
        }
        let rest = chunks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.used = rest.len();
    }

    /// The digest as 32 lowercase hex digits.
    pub fn hex(mut self) -> String {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        let fill = (119 - (self.len % 64) as usize) % 64;
        pad.extend(std::iter::repeat_n(0u8, fill));
        pad.extend_from_slice(&bits.to_le_bytes());
        self.update(&pad);
        debug_assert_eq!(self.used, 0);
        self.s.iter().flat_map(|w| w.to_le_bytes()).map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(d: &[u8]) -> String {
        let mut m = Md5::new();
        m.update(d);
        m.hex()
    }

    #[test]
    fn rfc1321_vectors() {
        assert_eq!(md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5(b"a"), "0cc175b9c0f1b6a831c399e269772661");
        assert_eq!(md5(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(md5(b"message digest"), "f96b697d7cb7938d525a2f31aaf161d0");
        assert_eq!(md5(b"abcdefghijklmnopqrstuvwxyz"), "c3fcd3d76192e4007dfb496cca67e13b");
        assert_eq!(
            md5(b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn streaming_equals_one_shot_at_every_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = md5(&data);
        for cut in [0, 1, 55, 56, 63, 64, 65, 128, 299, 300] {
            let mut m = Md5::new();
            m.update(&data[..cut]);
            m.update(&data[cut..]);
            assert_eq!(m.hex(), whole, "split at {cut}");
        }
    }
}
