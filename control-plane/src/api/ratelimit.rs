//! A fixed-window rate limiter per source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `limit` events per `window` for each address.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    slots: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Most addresses tracked before stale entries are swept.
const SWEEP_AT: usize = 10_000;

impl RateLimiter {
    /// A limiter of `limit` per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event for `addr`; returns `Err(seconds until allowed)` when over the limit.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= SWEEP_AT {
            let window = self.window;
            slots.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let slot = slots.entry(addr).or_insert((now, 0));
        if now.duration_since(slot.0) >= self.window {
            *slot = (now, 0);
        }
        if slot.1 >= self.limit {
            let wait = self.window.saturating_sub(now.duration_since(slot.0));
            return Err(wait.as_secs().max(1));
        }
        slot.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_window() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(a, t).is_ok());
        assert!(limiter.check(a, t).is_ok());
        assert_eq!(limiter.check(a, t + Duration::from_secs(10)), Err(50));
        assert!(limiter.check(b, t).is_ok());
        assert!(limiter.check(a, t + Duration::from_secs(60)).is_ok());
    }
}
