//! Waiting for conditions with a deadline, polling with a short backoff. Tests wait for what they need instead of
//! sleeping a fixed time.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Polls `cond` until it returns true (then true) or `timeout` passes (then false, after one last try).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Like [`wait_until`], but an error naming `what` when the time runs out.
pub fn wait_for(timeout: Duration, what: &str, cond: impl FnMut() -> bool) -> Result<()> {
    if wait_until(timeout, cond) { Ok(()) } else { bail!("timed out after {timeout:?} waiting for {what}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_true_once_the_condition_holds() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
        assert_eq!(n, 3);
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(start.elapsed() >= Duration::from_millis(50));
        let err = wait_for(Duration::from_millis(10), "nothing", || false).unwrap_err().to_string();
        assert!(err.contains("waiting for nothing"), "{err}");
    }
}
