//! A lock-free random number generator shared by the threads that pick.

use std::sync::atomic::{AtomicU64, Ordering};

use super::hash::{GOLDEN_GAMMA, mix64};

/// SplitMix64 with its state in an atomic: each draw is one `fetch_add` and a few multiplies.
///
/// SplitMix64's state is a counter stepped by a constant and its output a bijective mix of the counter,
/// so concurrent draws never tear the state: two threads always get two different counter values. It is
/// fast and statistically good enough to choose endpoints (it passes BigCrush); it is not for secrets.
#[derive(Debug)]
pub(crate) struct SplitMix {
    /// The counter. `Relaxed` is enough: draws need distinct values, not an order with other memory.
    state: AtomicU64,
}

impl SplitMix {
    /// A generator whose draws are fixed by `seed`, for tests and reproducible simulations.
    pub(crate) fn with_seed(seed: u64) -> Self {
        SplitMix { state: AtomicU64::new(seed) }
    }

    /// A generator seeded from the operating system's entropy.
    pub(crate) fn from_entropy() -> Self {
        Self::with_seed(rand::random())
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&self) -> u64 {
        mix64(self.state.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed).wrapping_add(GOLDEN_GAMMA))
    }

    /// A number in `0..bound` (`bound` > 0), by Lemire's multiply-shift: no division, and a bias below
    /// `bound / 2^64`, far under anything a balancer could notice.
    pub(crate) fn below(&self, bound: usize) -> usize {
        debug_assert!(bound > 0, "SplitMix::below(0)");
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_draws_the_same_sequence() {
        let (a, b) = (SplitMix::with_seed(7), SplitMix::with_seed(7));
        let first: Vec<_> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
    }

    #[test]
    fn seed_zero_draws_the_splitmix64_reference_sequence() {
        let rng = SplitMix::with_seed(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn below_stays_in_range_and_covers_it_evenly() {
        let rng = SplitMix::with_seed(1);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[rng.below(10)] += 1;
        }
        assert!(counts.iter().all(|&count| (9_500..=10_500).contains(&count)), "{counts:?}");
    }
}
