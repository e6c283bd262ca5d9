//! Exponential backoff with full jitter, shared by registration, enrolment and the tunnel's
//! reconnect loop.

use std::time::Duration;

use rand::RngCore;

/// Exponential backoff with full jitter: first retry within a second, capped at a minute.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let cap_ms = (1000u64 << self.attempt.min(6)).min(60_000);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = rand::rng().next_u64() % cap_ms.max(1);
        Duration::from_millis(jitter.max(100))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_small_and_is_capped() {
        let mut b = Backoff::new();
        assert!(b.next_wait() <= Duration::from_secs(1));
        for _ in 0..20 {
            assert!(b.next_wait() <= Duration::from_secs(60));
        }
    }
}
