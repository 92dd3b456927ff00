//! Stable hashing: the same bytes give the same number in every process, version and platform.
//!
//! `std::hash` makes no such promise (SipHash keys are random per process), and a consistent-hash ring
//! must place a key on the same endpoint in every host of a fleet and after every restart. So the hash
//! is written down here: FNV-1a 64 over the bytes, then the SplitMix64 finalizer, whose avalanche makes
//! short, similar strings (`user-1`, `user-2`) land far apart on the ring, which FNV-1a alone does not.

/// SplitMix64's increment, the golden ratio in 64 bits.
pub(crate) const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

/// SplitMix64's finalizer: a bijection on `u64` in which every input bit flips about half the output bits.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stable hash of a string: where a hash key lands on the ring.
pub(crate) fn stable_hash(text: &str) -> u64 {
    mix64(fnv1a64(text.as_bytes()))
}

/// The stable identity of an endpoint, from its configured address (e.g. `10.0.0.7:9000`), for
/// [`EndpointView::id`](super::EndpointView::id). Compute it once, when the endpoint is configured.
pub fn endpoint_id(address: &str) -> u64 {
    stable_hash(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn mix64_matches_splitmix64_reference_output() {
        // The first output of SplitMix64 seeded with 0 is mix64(0 + gamma).
        assert_eq!(mix64(GOLDEN_GAMMA), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn endpoint_id_is_pinned_so_rings_agree_across_versions() {
        assert_eq!(endpoint_id("10.0.0.7:9000"), 0x815f_2f6d_9d4a_ebc3);
        assert_ne!(endpoint_id("10.0.0.7:9000"), endpoint_id("10.0.0.7:9001"));
    }
}
