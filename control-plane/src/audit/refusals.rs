//! Refused authentication, aggregated: every request with a missing or bad credential is
//! counted per source address and minute, and each finished minute becomes one
//! `AuthenticationRefused` event per address — a flood of bad tokens is one record a minute
//! per address, not one per request. At most [`MAX_SOURCES`] addresses are kept a minute;
//! the rest are counted together as `other`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, DurationRound, Utc};
use m87_events::domain::AuthenticationRefused;

/// Most addresses counted apart in one minute.
pub const MAX_SOURCES: usize = 10_000;
/// Most distinct reasons kept per address and minute.
const MAX_REASONS: usize = 4;

#[derive(Debug, Default)]
struct Window {
    count: u64,
    reasons: Vec<String>,
}

/// The counts of the current and past minutes not yet recorded.
#[derive(Debug)]
pub struct AuthRefusals {
    windows: Mutex<Windows>,
    /// The aggregation window: a minute, unless `M87_AUTH_REFUSAL_WINDOW_SECS` says otherwise.
    window: chrono::Duration,
}

impl Default for AuthRefusals {
    fn default() -> Self {
        Self::with_window(chrono::Duration::minutes(1))
    }
}

#[derive(Debug, Default)]
struct Windows {
    by_source: BTreeMap<(DateTime<Utc>, String), Window>,
    sources_per_minute: BTreeMap<DateTime<Utc>, usize>,
}

impl AuthRefusals {
    /// Counts per `window` instead of per minute.
    pub fn with_window(window: chrono::Duration) -> Self {
        Self {
            windows: Mutex::default(),
            window,
        }
    }

    /// A minute, or `M87_AUTH_REFUSAL_WINDOW_SECS` seconds (1 to 3600).
    pub fn from_env() -> Self {
        match std::env::var("M87_AUTH_REFUSAL_WINDOW_SECS")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            Some(s) if (1..=3600).contains(&s) => Self::with_window(chrono::Duration::seconds(s)),
            _ => Self::default(),
        }
    }

    /// The aggregation window.
    pub fn window(&self) -> std::time::Duration {
        self.window
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(60))
    }

    fn minute_of(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        t.duration_trunc(self.window).unwrap_or(t)
    }

    /// Counts one refused request from `source` at `now`.
    pub fn note(&self, source: Option<IpAddr>, reason: &str, now: DateTime<Utc>) {
        let minute = self.minute_of(now);
        let mut guard = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let windows = &mut *guard;
        let mut key = source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        if !windows.by_source.contains_key(&(minute, key.clone())) {
            let seen = windows.sources_per_minute.entry(minute).or_default();
            if *seen >= MAX_SOURCES {
                key = "other".to_owned();
            } else {
                *seen += 1;
            }
        }
        let w = windows.by_source.entry((minute, key)).or_default();
        w.count += 1;
        let reason: String = reason.chars().take(200).collect();
        if w.reasons.len() < MAX_REASONS && !w.reasons.contains(&reason) {
            w.reasons.push(reason);
        }
    }

    /// Puts back counts that could not be recorded, to be taken again with the next ones.
    pub fn put_back(&self, refused: Vec<AuthenticationRefused>) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        for r in refused {
            let w = windows
                .by_source
                .entry((r.window_start, r.source))
                .or_default();
            w.count += r.count;
            for reason in r.reasons {
                if w.reasons.len() < MAX_REASONS && !w.reasons.contains(&reason) {
                    w.reasons.push(reason);
                }
            }
        }
    }

    /// Takes the counts of every minute that ended before `now`, as events to record.
    pub fn take_finished(&self, now: DateTime<Utc>) -> Vec<AuthenticationRefused> {
        let current = self.minute_of(now);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let keep = windows.by_source.split_off(&(current, String::new()));
        let done = std::mem::replace(&mut windows.by_source, keep);
        let counts = windows.sources_per_minute.split_off(&current);
        windows.sources_per_minute = counts;
        done.into_iter()
            .map(|((window_start, source), w)| AuthenticationRefused {
                source,
                window_start,
                count: w.count,
                reasons: w.reasons,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_flood_is_one_record_per_address_and_minute() {
        let r = AuthRefusals::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for i in 0..10_000 {
            let reason = if i % 2 == 0 {
                "invalid api key"
            } else {
                "expired token"
            };
            r.note(Some(ip), reason, at("2026-12-04T10:00:30Z"));
        }
        r.note(None, "missing api key", at("2026-12-04T10:00:59Z"));
        r.note(Some(ip), "invalid api key", at("2026-12-04T10:01:05Z"));
        assert!(
            r.take_finished(at("2026-12-04T10:00:59Z")).is_empty(),
            "minute not over"
        );
        let done = r.take_finished(at("2026-12-04T10:01:10Z"));
        assert_eq!(done.len(), 2);
        let flood = done.iter().find(|d| d.source == "192.0.2.9").unwrap();
        assert_eq!(flood.count, 10_000);
        assert_eq!(flood.reasons, ["invalid api key", "expired token"]);
        assert_eq!(flood.window_start, at("2026-12-04T10:00:00Z"));
        assert!(done.iter().any(|d| d.source == "unknown" && d.count == 1));
        // The next minute is kept until it ends.
        let next = r.take_finished(at("2026-12-04T10:02:00Z"));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].count, 1);
    }

    #[test]
    fn counts_put_back_are_taken_again() {
        let r = AuthRefusals::default();
        r.note(None, "missing api key", at("2026-12-04T10:00:10Z"));
        let taken = r.take_finished(at("2026-12-04T10:01:00Z"));
        r.put_back(taken);
        r.note(None, "missing api key", at("2026-12-04T10:01:10Z"));
        let again = r.take_finished(at("2026-12-04T10:02:00Z"));
        assert_eq!(again.iter().map(|a| a.count).sum::<u64>(), 2);
    }

    #[test]
    fn addresses_past_the_limit_are_counted_together() {
        let r = AuthRefusals::default();
        let now = at("2026-12-04T10:00:00Z");
        for i in 0..(MAX_SOURCES as u32 + 50) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            r.note(Some(ip), "invalid api key", now);
        }
        let done = r.take_finished(at("2026-12-04T10:01:00Z"));
        assert_eq!(done.len(), MAX_SOURCES + 1);
        assert_eq!(done.iter().find(|d| d.source == "other").unwrap().count, 50);
    }
}
