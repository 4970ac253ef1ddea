//! The one hash function of balancing: the same value in every build, run and process, so a
//! key maps to the same server after a restart or on a second wsplice beside this one, and a
//! sticky cookie written by one process is read by the next. (std's `DefaultHasher` promises
//! none of that.) FNV-1a over the bytes, then murmur3's 64-bit finalizer, so inputs that differ
//! in one byte (10.0.0.1, 10.0.0.2) land far apart on the ring.

/// An incremental [`stable_hash`]: `write` the parts, then `finish`.
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl StableHasher {
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The stable hash of `bytes`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    StableHasher::default().write(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_fixed_forever() {
        // Sticky cookies and hash placements depend on these never changing.
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(b"chat/10.0.0.5:3000"), 0x6b8f_04da_ee6b_26d2);
    }

    #[test]
    fn parts_hash_as_their_concatenation() {
        let mut h = StableHasher::default();
        h.write(b"chat").write(b"/").write(b"10.0.0.1:3000");
        assert_eq!(h.finish(), stable_hash(b"chat/10.0.0.1:3000"));
    }
}
