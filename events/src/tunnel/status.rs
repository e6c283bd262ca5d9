//! The status channel: the device's health report.
//!
//! The device answers `ChannelAccepted`, sends one `Data` frame with its JSON-encoded
//! [`StatusReport`], and finishes the stream. The client judges the report with [`checks`]:
//! disks and memory under [`USE_LIMIT_PERCENT`], the device's clock within [`SKEW_LIMIT`] of the
//! client's (the round trip taken into account), and a runtime no older than the server.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// Disks and memory used above this share make the device degraded.
pub const USE_LIMIT_PERCENT: f64 = 90.0;
/// A device clock further off than this (beyond what the round trip explains) is degraded.
pub const SKEW_LIMIT: TimeDelta = TimeDelta::seconds(5);

/// What a device tells about its health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The m87 runtime's version.
    pub runtime_version: String,
    /// The operating system's name (`Debian GNU/Linux`).
    #[serde(default)]
    pub os_name: Option<String>,
    /// Its version (`12`).
    #[serde(default)]
    pub os_version: Option<String>,
    /// The kernel's version.
    #[serde(default)]
    pub kernel: Option<String>,
    /// The CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// The host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Memory in bytes.
    pub memory_total: u64,
    /// Memory used, in bytes.
    pub memory_used: u64,
    /// Use of each mounted file system (at least the root).
    #[serde(default)]
    pub disks: Vec<DiskUse>,
    /// The device's network interfaces and their addresses.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// The tunnel: the relay's address as the device dialled it.
    #[serde(default)]
    pub relay_addr: String,
    /// The relay's id.
    #[serde(default)]
    pub relay_id: Option<String>,
    /// The device's address as the relay sees it (after NAT).
    #[serde(default)]
    pub observed_addr: Option<String>,
    /// Since when the tunnel is connected.
    #[serde(default)]
    pub connected_at: Option<DateTime<Utc>>,
    /// The device's clock when it made the report.
    pub time: DateTime<Utc>,
}

/// One mounted file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUse {
    /// Where it is mounted.
    pub mount: String,
    /// Its size in bytes.
    pub total: u64,
    /// Bytes used (size minus free blocks).
    pub used: u64,
    /// Bytes available to unprivileged users (what is free minus the blocks reserved for
    /// root); `used` over `used + available` is the share `df` shows.
    #[serde(default)]
    pub available: u64,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name (`eth0`).
    pub name: String,
    /// Its addresses with prefix length (`192.168.1.7/24`).
    pub addresses: Vec<String>,
}

/// One health check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked (`disk /`, `memory`, `clock`, `runtime version`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, for people.
    pub detail: String,
}

/// When the client asked for the report and when it had it, by its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrip {
    /// When the request was sent.
    pub sent: DateTime<Utc>,
    /// When the report arrived.
    pub received: DateTime<Utc>,
}

/// Judges `report`: disks, memory, clock skew against the client's clock over `round_trip`, and
/// the runtime's version against `server_version` (when known).
pub fn checks(
    report: &StatusReport,
    round_trip: RoundTrip,
    server_version: Option<&str>,
) -> Vec<Check> {
    let mut out: Vec<Check> = report
        .disks
        .iter()
        .map(|d| {
            let name = format!("disk {}", d.mount);
            use_check(&name, d.used, d.used.saturating_add(d.available), d.total)
        })
        .collect();
    let memory = (report.memory_used, report.memory_total);
    out.push(use_check("memory", memory.0, memory.1, memory.1));
    out.push(clock_check(report.time, round_trip));
    if let Some(server) = server_version {
        out.push(version_check(&report.runtime_version, server));
    }
    out
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

/// `used` of `usable` (the base of the share), with `total` shown.
fn use_check(name: &str, used: u64, usable: u64, total: u64) -> Check {
    let p = percent(used, usable);
    Check {
        name: name.to_owned(),
        ok: p <= USE_LIMIT_PERCENT,
        detail: format!(
            "{p:.0} % used ({} of {})",
            human_bytes(used),
            human_bytes(total)
        ),
    }
}

/// The device clock's offset from ours: the report was made somewhere between `sent` and
/// `received`, so only what lies beyond half the round trip from its midpoint is skew.
fn clock_check(device: DateTime<Utc>, rt: RoundTrip) -> Check {
    let rtt = (rt.received - rt.sent).max(TimeDelta::zero());
    let midpoint = rt.sent + rtt / 2;
    let offset = device - midpoint;
    let excess = (offset.abs() - rtt / 2).max(TimeDelta::zero());
    let seconds = offset.num_milliseconds() as f64 / 1000.0;
    Check {
        name: "clock".to_owned(),
        ok: excess <= SKEW_LIMIT,
        detail: format!(
            "{seconds:+.1} s from this machine (round trip {} ms)",
            rtt.num_milliseconds()
        ),
    }
}

fn version_check(runtime: &str, server: &str) -> Check {
    let (ok, detail) = match (version_numbers(runtime), version_numbers(server)) {
        (Some(r), Some(s)) if r < s => (
            false,
            format!("{runtime}, older than the server's {server}: update the runtime"),
        ),
        (Some(_), Some(_)) => (true, format!("{runtime} (server {server})")),
        _ => (true, format!("{runtime} (server {server}; not comparable)")),
    };
    Check {
        name: "runtime version".to_owned(),
        ok,
        detail,
    }
}

/// `1.2.3` (or `1.2.3-rc1`, `v1.2`) as numbers, for comparing.
fn version_numbers(v: &str) -> Option<Vec<u64>> {
    let core = v.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    core.split('.').map(|p| p.parse().ok()).collect()
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn report() -> StatusReport {
        StatusReport {
            runtime_version: "0.3.0".into(),
            os_name: Some("Debian GNU/Linux".into()),
            os_version: Some("12".into()),
            kernel: Some("6.1.0".into()),
            arch: "x86_64".into(),
            hostname: Some("robot-1".into()),
            uptime_secs: 3600,
            load: [0.1, 0.2, 0.3],
            memory_total: 1000,
            memory_used: 500,
            disks: vec![DiskUse {
                mount: "/".into(),
                total: 1100,
                used: 100,
                available: 900,
            }],
            interfaces: vec![],
            relay_addr: "127.0.0.1:4433".into(),
            relay_id: None,
            observed_addr: None,
            connected_at: None,
            time: at(0),
        }
    }

    fn quick() -> RoundTrip {
        RoundTrip {
            sent: at(0),
            received: at(0),
        }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn a_healthy_report_passes_every_check() {
        let c = checks(&report(), quick(), Some("0.3.0"));
        assert_eq!(failed(&c), Vec::<&str>::new());
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["disk /", "memory", "clock", "runtime version"]);
    }

    #[test]
    fn a_full_disk_and_full_memory_fail_above_90_percent() {
        let mut r = report();
        // As df counts it: used over used + available (blocks reserved for root left out).
        r.disks[0].used = 901;
        r.disks[0].available = 99;
        r.memory_used = 950;
        assert_eq!(failed(&checks(&r, quick(), None)), ["disk /", "memory"]);
        r.disks[0].used = 900;
        r.disks[0].available = 100;
        r.memory_used = 900;
        assert!(failed(&checks(&r, quick(), None)).is_empty());
    }

    #[test]
    fn clock_skew_counts_only_what_the_round_trip_does_not_explain() {
        let mut r = report();
        r.time = at(6);
        assert_eq!(failed(&checks(&r, quick(), None)), ["clock"]);
        // Asked at 0, answered at 4: the report was made between 0 and 4; 6 is 2 s past that.
        let slow = RoundTrip {
            sent: at(0),
            received: at(4),
        };
        assert!(failed(&checks(&r, slow, None)).is_empty());
        r.time = at(-6);
        assert_eq!(failed(&checks(&r, quick(), None)), ["clock"]);
        r.time = at(-5);
        assert!(failed(&checks(&r, quick(), None)).is_empty());
    }

    #[test]
    fn an_older_runtime_than_the_server_fails() {
        let r = report();
        let c = checks(&r, quick(), Some("0.10.0"));
        assert_eq!(failed(&c), ["runtime version"]);
        assert!(c[3].detail.contains("update the runtime"), "{:?}", c[3]);
        assert!(failed(&checks(&r, quick(), Some("0.2.9"))).is_empty());
        assert!(failed(&checks(&r, quick(), Some("dev"))).is_empty());
    }

    #[test]
    fn the_report_round_trips_as_json() {
        let r = report();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&json).unwrap(), r);
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
