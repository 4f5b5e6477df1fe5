//! [`Rng`]: deterministic pseudo-random numbers for tests that make random choices (edits, kill moments), so a
//! failing run replays from the seed it printed.

/// xorshift64. The state must not be 0 ([`Rng::new`] makes sure).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by 1, a fixed point of xorshift).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers_within_bounds() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        assert_eq!(xs, (0..100).map(|_| b.below(10)).collect::<Vec<_>>());
        assert!(xs.iter().all(|x| *x < 10));
        assert!(xs.iter().collect::<std::collections::BTreeSet<_>>().len() > 5, "{xs:?}");
        assert_eq!(Rng::new(0).below(0), 0);
    }
}
