//! `m87 <device> status`: is it up and healthy, for people and scripts.
//!
//! Exit codes: 0 healthy; 1 degraded (a check failed) or offline; 2 error (unknown device, no
//! access, the device could not be reached or answered badly).

use m87_events::api::{DeviceStatus, DeviceSummary, Health};
use m87_events::token::Operation;
use m87_events::tunnel::status::{Check, RoundTrip, StatusReport, checks, human_bytes};
use m87_events::tunnel::{Channel, Frame};

use crate::output::Output;
use crate::remote::{ChannelOpener, OpenError};
use crate::session::QuicSession;

/// `status` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Exit code: healthy.
const HEALTHY: i32 = 0;
/// Exit code: degraded or offline.
const DEGRADED: i32 = 1;
/// Exit code: the status could not be had.
const ERROR: i32 = 2;

/// Runs it; returns the exit code.
pub async fn run(
    client: &m87_transport::http::ApiClient,
    device: &str,
    _args: Args,
    output: Output,
) -> anyhow::Result<i32> {
    match status(client, device, output).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ERROR)
        }
    }
}

/// What `status` found.
pub(crate) enum Found {
    /// The device is not connected.
    Offline(DeviceSummary),
    /// The device answered.
    Online {
        /// The device.
        device: DeviceSummary,
        /// Its report.
        report: Box<StatusReport>,
        /// The checks made of it.
        checks: Vec<Check>,
    },
}

impl Found {
    /// Every check passed (an offline device is not healthy).
    pub(crate) fn healthy(&self) -> bool {
        match self {
            Found::Offline(_) => false,
            Found::Online { checks, .. } => checks.iter().all(|c| c.ok),
        }
    }

    /// What `status -o json` prints.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            Found::Offline(d) => serde_json::json!({
                "device": d.name,
                "online": false,
                "healthy": false,
                "last_seen": d.last_seen,
            }),
            Found::Online {
                device,
                report,
                checks,
            } => serde_json::json!({
                "device": device.name,
                "online": true,
                "healthy": self.healthy(),
                "report": report,
                "checks": checks,
            }),
        }
    }
}

/// The status operation on `device` (name, id or unique prefix): its report and checks, or
/// that it is offline (then without a session).
pub(crate) async fn find(
    client: &m87_transport::http::ApiClient,
    device: &str,
) -> anyhow::Result<Found> {
    let devices: Vec<DeviceSummary> = client.get("/v1/devices").await?;
    let approved: Vec<DeviceSummary> = devices
        .into_iter()
        .filter(|d| d.status == DeviceStatus::Approved)
        .collect();
    let Some(d) = crate::commands::devices::resolve(&approved, device)?.cloned() else {
        anyhow::bail!("device {device:?} not found (see m87 devices list)");
    };
    if !d.online {
        return Ok(Found::Offline(d));
    }
    let server_version = client
        .get::<Health>("/v1/health")
        .await
        .ok()
        .map(|h| h.version);
    let session = QuicSession::open(
        client,
        d.id.as_str(),
        Operation::Status,
        serde_json::Value::Null,
    )
    .await?;
    let fetched = fetch(&session).await;
    session.close().await;
    let (report, round_trip) = fetched?;
    let checks = checks(&report, round_trip, server_version.as_deref());
    Ok(Found::Online {
        device: d,
        report: Box::new(report),
        checks,
    })
}

async fn status(
    client: &m87_transport::http::ApiClient,
    device: &str,
    output: Output,
) -> anyhow::Result<i32> {
    let found = find(client, device).await?;
    let healthy = found.healthy();
    match (&found, output) {
        (_, Output::Json) => crate::output::print_json(&found.to_json())?,
        (Found::Offline(d), Output::Table) => print_offline(d),
        (
            Found::Online {
                device,
                report,
                checks,
            },
            Output::Table,
        ) => print_report(device, report, checks, healthy),
    }
    Ok(if healthy { HEALTHY } else { DEGRADED })
}

/// The device's report and when it was asked for and had, by this machine's clock.
pub async fn fetch(opener: &dyn ChannelOpener) -> anyhow::Result<(StatusReport, RoundTrip)> {
    let sent = chrono::Utc::now();
    let mut opened = match opener.open(Channel::Status).await {
        Ok(opened) => opened,
        Err(OpenError::Refused { message, .. }) => anyhow::bail!("{message}"),
        Err(e) => return Err(e.into()),
    };
    let frame = opened.reader.next().await;
    let received = chrono::Utc::now();
    match frame {
        Ok(Some(Frame::Data(json))) => {
            let report = serde_json::from_slice(&json).map_err(|e| {
                anyhow::anyhow!("the device sent a report this m87 cannot read: {e}")
            })?;
            Ok((report, RoundTrip { sent, received }))
        }
        Ok(Some(Frame::Error(message))) => anyhow::bail!("{message}"),
        Ok(other) => anyhow::bail!("the device sent no report (got {other:?})"),
        Err(e) => anyhow::bail!("the session broke: {e}"),
    }
}

fn print_offline(d: &DeviceSummary) {
    let seen = d
        .last_seen
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "never".to_owned());
    println!("{}: offline (last seen {seen})", d.name);
}

fn print_report(d: &DeviceSummary, r: &StatusReport, checks: &[Check], healthy: bool) {
    let verdict = if healthy { "healthy" } else { "degraded" };
    println!("{}: online, {verdict}", d.name);
    let mut rows = summary_rows(r);
    let disks: Vec<String> = r
        .disks
        .iter()
        .map(|d| {
            format!(
                "{} {} of {}",
                d.mount,
                human_bytes(d.used),
                human_bytes(d.total)
            )
        })
        .collect();
    rows.push(("disks".into(), disks.join(", ")));
    for (name, value) in rows {
        println!("  {name:<10} {value}");
    }
    println!();
    println!("CHECKS");
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        println!("  {mark} {:<width$} {}", c.name, c.detail);
    }
}

fn summary_rows(r: &StatusReport) -> Vec<(String, String)> {
    let unknown = || "?".to_owned();
    let os = format!(
        "{} {} (kernel {}, {})",
        r.os_name.clone().unwrap_or_else(unknown),
        r.os_version.clone().unwrap_or_default(),
        r.kernel.clone().unwrap_or_else(unknown),
        r.arch
    );
    let interfaces: Vec<String> = r
        .interfaces
        .iter()
        .map(|i| format!("{} {}", i.name, i.addresses.join(" ")))
        .collect();
    let relay = format!(
        "{} at {} (device seen as {})",
        r.relay_id.clone().unwrap_or_else(unknown),
        r.relay_addr,
        r.observed_addr.clone().unwrap_or_else(unknown)
    );
    vec![
        ("runtime".into(), r.runtime_version.clone()),
        ("os".into(), os),
        (
            "hostname".into(),
            r.hostname.clone().unwrap_or_else(unknown),
        ),
        ("uptime".into(), uptime(r.uptime_secs)),
        (
            "load".into(),
            format!("{:.2} {:.2} {:.2}", r.load[0], r.load[1], r.load[2]),
        ),
        (
            "memory".into(),
            format!(
                "{} of {}",
                human_bytes(r.memory_used),
                human_bytes(r.memory_total)
            ),
        ),
        ("interfaces".into(), interfaces.join(", ")),
        ("relay".into(), relay),
        (
            "clock".into(),
            r.time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        ),
    ]
}

/// `93784` → `1d 2h 3m`.
fn uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else {
        format!("{h}h {m}m")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn the_report_comes_from_the_agent_service_with_the_round_trip() {
        let opener = crate::remote::testing::LocalOpener::default();
        let (report, rt) = fetch(&opener).await.unwrap();
        assert_eq!(report.runtime_version, env!("CARGO_PKG_VERSION"));
        assert!(rt.sent <= report.time && report.time <= rt.received);
        let checks = checks(&report, rt, Some(env!("CARGO_PKG_VERSION")));
        let clock = checks.iter().find(|c| c.name == "clock").unwrap();
        assert!(clock.ok, "{clock:?}");
    }

    #[test]
    fn uptime_reads_in_days_hours_minutes() {
        assert_eq!(uptime(93_784), "1d 2h 3m");
        assert_eq!(uptime(3_660), "1h 1m");
    }
}
