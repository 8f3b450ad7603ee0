//! The test data: a deterministic pseudo-random byte stream (xorshift64*) that can be
//! regenerated chunk by chunk for the read-back comparison, and hex formatting of digests.

/// A xorshift64* generator.
#[derive(Clone, Copy, Debug)]
pub struct Pattern {
    s: u64,
}

impl Pattern {
    /// A generator for chunk `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Pattern {
        Pattern { s: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1 }
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.s ^= self.s >> 12;
            self.s ^= self.s << 25;
            self.s ^= self.s >> 27;
            let v = self.s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Lower-case hex of `bytes` into `out` (twice as long).
pub fn hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const D: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = D[(b >> 4) as usize];
        out[2 * i + 1] = D[(b & 15) as usize];
    }
    core::str::from_utf8(&out[..2 * bytes.len()]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    #[test]
    fn chunks_regenerate_identically_and_differ_between_seeds() {
        let (mut a, mut b, mut c) = ([0u8; 4096], [0u8; 4096], [0u8; 4096]);
        Pattern::new(7).fill(&mut a);
        Pattern::new(7).fill(&mut b);
        Pattern::new(8).fill(&mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Not a constant stream.
        assert!(a.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn md5_hex_matches_the_rfc_1321_test_vector() {
        let d = Md5::digest(b"abc");
        let mut out = [0u8; 32];
        assert_eq!(hex(&d, &mut out), "900150983cd24fb0d6963f7d28e17f72");
    }
}
