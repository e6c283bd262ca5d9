//! Fixed-window rate limits for unauthenticated registration: per client address, per address
//! prefix (IPv4 /24, IPv6 /64) and per requested owner scope, each with its own rate.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use m87_events::Scope;

use super::client_addr::prefix_of;

/// Allows `limit` events per `window` for each key.
#[derive(Debug)]
pub struct RateLimiter<K = IpAddr> {
    limit: u32,
    window: Duration,
    slots: Mutex<HashMap<K, (Instant, u32)>>,
}

/// Most keys tracked before stale entries are swept.
const SWEEP_AT: usize = 10_000;

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter of `limit` per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The limit per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// `Err(seconds until allowed)` when `key` is at its limit; counts nothing.
    pub fn peek(&self, key: &K, now: Instant) -> Result<(), u64> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(key) {
            Some(&(start, used))
                if now.duration_since(start) < self.window && used >= self.limit =>
            {
                let wait = self.window.saturating_sub(now.duration_since(start));
                Err(wait.as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts one event for `key`; returns `Err(seconds until allowed)` when over the limit.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= SWEEP_AT {
            let window = self.window;
            slots.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let slot = slots.entry(key.clone()).or_insert((now, 0));
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

/// Which registration limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Requests per client address.
    Address,
    /// Requests per address prefix (IPv4 /24, IPv6 /64).
    Prefix,
    /// Requests per requested owner scope.
    Scope,
}

impl Limit {
    /// Its name in answers (`address`, `prefix`, `scope`).
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Address => "address",
            Limit::Prefix => "prefix",
            Limit::Scope => "scope",
        }
    }
}

/// A registration refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The limit reached.
    pub limit: Limit,
    /// Requests it allows per window.
    pub per_window: u32,
    /// Seconds until it allows one again.
    pub retry_after: u64,
}

/// The three limits on `POST /v1/registrations`, per minute.
#[derive(Debug)]
pub struct RegistrationLimits {
    address: RateLimiter<IpAddr>,
    prefix: RateLimiter<IpAddr>,
    scope: RateLimiter<Scope>,
    // Held while checking and counting, so a request is counted by all three or none.
    gate: Mutex<()>,
}

impl RegistrationLimits {
    /// Limits per minute: per address, per prefix, per owner scope.
    pub fn per_minute(address: u32, prefix: u32, scope: u32) -> Self {
        let minute = Duration::from_secs(60);
        Self {
            address: RateLimiter::new(address, minute),
            prefix: RateLimiter::new(prefix, minute),
            scope: RateLimiter::new(scope, minute),
            gate: Mutex::new(()),
        }
    }

    /// Admits one registration from `client` for `scope`, or names the limit it reached. A
    /// refused request counts against no limit.
    pub fn admit(&self, client: IpAddr, scope: &Scope, now: Instant) -> Result<(), Refused> {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let client = client.to_canonical();
        let prefix = prefix_of(client);
        let refused = |limit, per_window| {
            move |retry_after| Refused {
                limit,
                per_window,
                retry_after,
            }
        };
        self.address
            .peek(&client, now)
            .map_err(refused(Limit::Address, self.address.limit()))?;
        self.prefix
            .peek(&prefix, now)
            .map_err(refused(Limit::Prefix, self.prefix.limit()))?;
        self.scope
            .peek(scope, now)
            .map_err(refused(Limit::Scope, self.scope.limit()))?;
        // Under the gate nothing moved since the peeks: these cannot fail.
        let _ = self.address.check(&client, now);
        let _ = self.prefix.check(&prefix, now);
        let _ = self.scope.check(scope, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_per_address_and_window() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        let t = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert!(limiter.check(&a, t).is_ok());
        assert!(limiter.check(&a, t).is_ok());
        assert_eq!(limiter.peek(&a, t + Duration::from_secs(10)), Err(50));
        assert_eq!(limiter.check(&a, t + Duration::from_secs(10)), Err(50));
        assert!(limiter.check(&b, t).is_ok());
        assert!(limiter.peek(&a, t + Duration::from_secs(60)).is_ok());
        assert!(limiter.check(&a, t + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn each_limit_is_named_and_a_refusal_counts_nowhere() {
        let limits = RegistrationLimits::per_minute(2, 3, 4);
        let t = Instant::now();
        let scope: Scope = "user:a@example.com".parse().unwrap();
        let other: Scope = "user:b@example.com".parse().unwrap();
        assert!(limits.admit(ip("192.0.2.1"), &scope, t).is_ok());
        assert!(limits.admit(ip("192.0.2.1"), &other, t).is_ok());
        let r = limits.admit(ip("192.0.2.1"), &scope, t).unwrap_err();
        assert_eq!(
            (r.limit, r.per_window, r.retry_after),
            (Limit::Address, 2, 60)
        );
        assert!(limits.admit(ip("192.0.2.2"), &scope, t).is_ok());
        let r = limits.admit(ip("192.0.2.3"), &scope, t).unwrap_err();
        assert_eq!(r.limit, Limit::Prefix);
        // 2001:db8::/64 is its own prefix; the scope has had 2 of its 4.
        assert!(limits.admit(ip("2001:db8::1"), &scope, t).is_ok());
        assert!(limits.admit(ip("2001:db8:0:1::1"), &scope, t).is_ok());
        let r = limits.admit(ip("2001:db8:0:2::1"), &scope, t).unwrap_err();
        assert_eq!(r.limit, Limit::Scope);
        assert!(limits.admit(ip("2001:db8:0:2::1"), &other, t).is_ok());
    }
}
