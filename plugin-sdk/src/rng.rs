//! Small, fast random numbers for balancing decisions (not for cryptography).

use std::hash::{BuildHasher, Hasher};

/// xorshift64* generator. Seeded from the host's random source (through the standard
/// library's hash seeding, which asks WASI `random`), so two instances draw differently.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded from the host's random source.
    pub fn from_entropy() -> Self {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x5157_4954_4348_5944);
        Rng::with_seed(hasher.finish())
    }

    /// A generator with a fixed seed, for reproducible tests.
    pub fn with_seed(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        Rng { state: seed | 1 }
    }

    /// Next raw 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; `n` must be non-zero).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Two distinct positions in `0..n` for power-of-two-choices, uniformly over pairs.
    ///
    /// The second is drawn from the `n − 1` remaining positions and skips past the
    /// first; drawing both from `n` and retrying or clamping biases the choice. `None`
    /// when `n < 2`.
    pub fn two_distinct(&mut self, n: usize) -> Option<(usize, usize)> {
        if n < 2 {
            return None;
        }
        let first = self.below(n);
        let mut second = self.below(n - 1);
        if second >= first {
            second += 1;
        }
        Some((first, second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_distinct_and_every_position_is_drawn_equally() {
        let mut rng = Rng::with_seed(7);
        let n = 4;
        let mut hits = vec![0u32; n];
        for _ in 0..40_000 {
            let (a, b) = rng.two_distinct(n).unwrap();
            assert_ne!(a, b);
            hits[a] += 1;
            hits[b] += 1;
        }
        // Each position is in a pair half the time: 20,000 expected, ±3 %.
        for h in hits {
            assert!((19_400..=20_600).contains(&h), "{h}");
        }
        assert_eq!(rng.two_distinct(1), None);
    }
}
