//! Hashing for the consistent-hash policy, shared by the data plane, the
//! reference model and user space. 32-bit multiplies by constants only,
//! and tables whose lengths are powers of two, indexed by a mask: the NFP
//! has no modulo and multiplies only 32-bit operands.

/// murmur3's 32-bit finalizer: every input bit affects every output bit.
#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The hash of a request's affinity key (FaaS header `key`, when not 0).
#[inline(always)]
pub const fn key_hash(key: u64) -> u32 {
    fmix32((key as u32) ^ fmix32((key >> 32) as u32))
}

/// The hash of a client's address (IPv6, or IPv4-mapped) and port, for
/// requests whose key is 0. `words` are the address's four big-endian
/// 32-bit words, XOR-ed together by the caller.
#[inline(always)]
pub const fn client_hash(address_words_xor: u32, port: u16) -> u32 {
    fmix32(address_words_xor ^ fmix32(port as u32))
}

/// XOR of the four big-endian words of an IPv6 (or IPv4-mapped) address.
#[inline(always)]
pub const fn fold_address(a: &[u8; 16]) -> u32 {
    u32::from_be_bytes([a[0], a[1], a[2], a[3]])
        ^ u32::from_be_bytes([a[4], a[5], a[6], a[7]])
        ^ u32::from_be_bytes([a[8], a[9], a[10], a[11]])
        ^ u32::from_be_bytes([a[12], a[13], a[14], a[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The low bits index the power-of-two tables: they must spread.
    #[test]
    fn low_bits_spread() {
        let mut buckets = [0u32; 16];
        for i in 0..100_000u32 {
            buckets[(key_hash(i as u64) & 15) as usize] += 1;
            buckets[(client_hash(i, 9000) & 15) as usize] += 1;
        }
        for b in buckets {
            assert!((11_500..13_500).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn ipv4_mapped_fold_is_ffff_xor_address() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(fold_address(&a), 0xffff ^ u32::from_be_bytes([10, 0, 0, 2]));
    }
}
