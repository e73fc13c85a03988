//! Internet checksum arithmetic (RFC 1071) and incremental update (RFC 1624).
//!
//! The data plane rewrites a few header words and must not re-sum the whole
//! packet, so it patches the checksum: `HC' = ~(~HC + ~m + m')` for each
//! changed 16-bit word `m -> m'`. All values here are host-order numbers read
//! from the packet with `from_be_bytes`; the caller writes the result back
//! with `to_be_bytes`.

/// Folds a 32-bit one's complement accumulator into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    // Two folds are enough for any sum of fewer than 65,536 16-bit words.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds the 16-bit words of `bytes` (big-endian) to `sum`.
#[inline(always)]
pub fn add_words<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// The one's complement change of a byte string from `old` to `new`
/// (`~m + m'` over its 16-bit words), folded once: ready to add to every
/// checksum that covers the string.
#[derive(Clone, Copy)]
pub struct Delta(u32);

impl Delta {
    /// Summed a 32-bit word at a time in memory order (one load per word in
    /// BPF, no byte assembly), folded, then turned to network order: a one's
    /// complement sum does not depend on byte order (RFC 1071, 2.(B)), so
    /// the byte-swapped sum of the swapped words is the sum of the words.
    #[inline(always)]
    pub fn of<const N: usize>(old: &[u8; N], new: &[u8; N]) -> Delta {
        // ~old + new over 32-bit words: the complement of a word is the
        // complement of both its 16-bit halves, and a 64-bit accumulator
        // cannot overflow (at most N/4 sums of two 32-bit words).
        let mut sum = 0u64;
        let mut i = 0;
        while i + 3 < N {
            let o = u32::from_ne_bytes([old[i], old[i + 1], old[i + 2], old[i + 3]]);
            let n = u32::from_ne_bytes([new[i], new[i + 1], new[i + 2], new[i + 3]]);
            sum += (!o) as u64 + n as u64;
            i += 4;
        }
        if i + 1 < N {
            let o = u16::from_ne_bytes([old[i], old[i + 1]]);
            let n = u16::from_ne_bytes([new[i], new[i + 1]]);
            sum += (!o) as u64 + n as u64;
        }
        // Fold to 16 bits (memory order), then to network order.
        let sum = (sum & 0xffff_ffff) + (sum >> 32);
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = ((sum & 0xffff) + (sum >> 16)) as u16;
        Delta(u16::from_be(sum) as u32)
    }
}

/// A checksum patch under construction: start from the field's current
/// value, replace words, then `finish`.
#[derive(Clone, Copy)]
pub struct Patch(u32);

impl Patch {
    /// Starts from the checksum currently in the header.
    #[inline(always)]
    pub fn new(check: u16) -> Self {
        Patch(!check as u32)
    }

    /// One 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn word(self, old: u16, new: u16) -> Self {
        Patch(self.0 + (!old as u32) + new as u32)
    }

    /// A byte string changed from `old` to `new` (an address).
    #[inline(always)]
    pub fn bytes<const N: usize>(self, old: &[u8; N], new: &[u8; N]) -> Self {
        self.apply(Delta::of(old, new))
    }

    /// A change measured once, applied here (an IPv4 address is in both
    /// the IP header's checksum and the UDP pseudo-header's).
    #[inline(always)]
    pub fn apply(self, delta: Delta) -> Self {
        // Both are below 2^17 (folded), so the sum cannot overflow.
        let sum = self.0 + delta.0;
        Patch((sum & 0xffff) + (sum >> 16))
    }

    /// The new checksum for an IPv4 header.
    #[inline(always)]
    pub fn finish(self) -> u16 {
        !fold(self.0)
    }

    /// The new checksum for UDP: 0 means "no checksum" on the wire, so a
    /// computed 0 is sent as 0xffff (RFC 768).
    #[inline(always)]
    pub fn finish_udp(self) -> u16 {
        match self.finish() {
            0 => 0xffff,
            c => c,
        }
    }
}

/// The full checksum of `data` (RFC 1071), starting from `sum` (for a
/// pseudo-header). For user space and tests; the data plane only patches.
pub fn checksum(sum: u32, data: &[u8]) -> u16 {
    let mut sum = sum as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so the test needs no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 16
        }
    }

    #[test]
    fn patch_equals_full_recompute() {
        let mut rng = Lcg(7);
        for _ in 0..20_000 {
            let mut hdr = [0u8; 20];
            for b in hdr.iter_mut() {
                *b = rng.next() as u8;
            }
            hdr[10] = 0;
            hdr[11] = 0;
            let check = checksum(0, &hdr);
            hdr[10..12].copy_from_slice(&check.to_be_bytes());
            assert_eq!(
                checksum(0, &hdr),
                0,
                "a header with its checksum sums to zero"
            );

            let old: [u8; 4] = hdr[16..20].try_into().unwrap();
            let new = (rng.next() as u32).to_be_bytes();
            let patched = Patch::new(check).bytes(&old, &new).finish();
            hdr[16..20].copy_from_slice(&new);
            hdr[10..12].copy_from_slice(&patched.to_be_bytes());
            assert_eq!(checksum(0, &hdr), 0, "patched header verifies");
        }
    }

    #[test]
    fn word_and_bytes_agree() {
        let c = 0x1c46;
        let a = Patch::new(c).word(0x1234, 0xabcd).finish();
        let b = Patch::new(c).bytes(&[0x12, 0x34], &[0xab, 0xcd]).finish();
        assert_eq!(a, b);
    }

    #[test]
    fn udp_zero_is_sent_as_ffff() {
        // A patch whose result is 0 must come out as 0xffff for UDP.
        let p = Patch(0xffff);
        assert_eq!(p.finish(), 0);
        assert_eq!(p.finish_udp(), 0xffff);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(0, &data), !0xddf2);
    }
}
