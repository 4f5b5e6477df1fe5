//! Counters of what the endpoint refused or stored, and a log limiter so a hostile peer cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the endpoint counts. Exposed in the shutdown summary and to tests through the log.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub auth_rejected: AtomicU64,
    pub requests_refused: AtomicU64,
    pub bad_frames: AtomicU64,
    pub bad_tags: AtomicU64,
    pub bad_messages: AtomicU64,
    pub bad_reports: AtomicU64,
    pub reports_stored: AtomicU64,
    pub reports_duplicate: AtomicU64,
    pub timeouts: AtomicU64,
}

impl Counters {
    /// Adds one to `counter` and says whether this occurrence should be logged: the 1st, 2nd, 4th, 8th, ... so a
    /// flood costs a logarithmic number of lines while every count stays exact.
    pub fn bump(counter: &AtomicU64) -> Option<u64> {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        n.is_power_of_two().then_some(n)
    }

    /// One line with every counter.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "connections={} auth_rejected={} requests_refused={} bad_frames={} bad_tags={} bad_messages={} \
             bad_reports={} reports_stored={} reports_duplicate={} timeouts={}",
            g(&self.connections),
            g(&self.auth_rejected),
            g(&self.requests_refused),
            g(&self.bad_frames),
            g(&self.bad_tags),
            g(&self.bad_messages),
            g(&self.bad_reports),
            g(&self.reports_stored),
            g(&self.reports_duplicate),
            g(&self.timeouts),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_logs_at_powers_of_two() {
        let c = AtomicU64::new(0);
        let logged: Vec<u64> = (0..100).filter_map(|_| Counters::bump(&c)).collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(c.load(Ordering::Relaxed), 100);
    }
}
