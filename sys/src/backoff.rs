//! Pacing of retries: exponential backoff from a base to a cap, with jitter so a fleet that lost its server at the
//! same moment does not come back in lockstep.

use std::time::Duration;

/// Exponential backoff with "equal jitter": each wait is drawn from `[d/2, d]` where `d` doubles from `base` up to
/// `max` after every failure, and returns to `base` on [`Backoff::reset`].
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `base` and never waiting longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        let base = base.min(max);
        Self { base, max, current: base }
    }

    /// The next wait (jittered), and doubles the step for the one after.
    pub fn next_wait(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        jittered(d)
    }

    /// The next wait without jitter (the step itself), and doubles the step; for schedules kept in a database.
    pub fn next_step(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }

    /// Back to the base step after a success.
    pub fn reset(&mut self) {
        self.current = self.base;
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// The step after `failures` failures in a row (`base * 2^failures`, capped at `max`), without jitter.
pub fn step(base: Duration, max: Duration, failures: u32) -> Duration {
    base.checked_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX)).unwrap_or(max).min(max)
}

/// A duration drawn uniformly from `[d/2, d]`.
pub fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    let span = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(random_below(span.saturating_add(1)))
}

/// A random number in `[0, n)` (0 when `n` is 0); falls back to the clock's nanoseconds if the OS has no randomness.
pub fn random_below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    let x = match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0),
    };
    x % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_then_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let waits: Vec<_> = (0..6).map(|_| b.next_wait()).collect();
        let steps = [1, 2, 4, 8, 8, 8];
        for (w, s) in waits.iter().zip(steps) {
            let s = Duration::from_secs(s);
            assert!(*w >= s / 2 && *w <= s, "{w:?} not in [{:?}, {s:?}]", s / 2);
        }
        b.reset();
        assert_eq!(b.next_step(), Duration::from_secs(1));
        assert_eq!(b.next_step(), Duration::from_secs(2));
    }

    #[test]
    fn step_caps_without_overflow() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(step(base, max, 0), base);
        assert_eq!(step(base, max, 3), Duration::from_secs(8));
        assert_eq!(step(base, max, 50), max);
        assert_eq!(step(base, max, u32::MAX), max);
    }

    #[test]
    fn random_below_stays_in_range() {
        assert_eq!(random_below(0), 0);
        assert!((0..1000).all(|_| random_below(7) < 7));
    }
}
