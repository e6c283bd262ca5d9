//! `m87 audit …` and `m87 <device> audit …`: who did what, when, and how it ended.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use m87_events::audit::{ACTIONS, AuditPage, AuditRecord, MAX_PAGE, Outcome};
use m87_transport::http::ApiClient;

use crate::commands::devices::{encode, resolve};
use crate::context::user_client;
use crate::output::{Output, print_json, print_table};

/// The filters both audit commands take.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuditFilters {
    /// Only records at or after this time: a duration back from now (`30m`, `2h`, `7d`) or
    /// a time (`2026-12-01T10:00Z`, `2026-12-01`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only records before this time (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only what this user did.
    #[arg(long, value_name = "EMAIL")]
    pub user: Option<String>,
    /// Only these actions (repeatable or comma-separated): exec, shell, cp, sync, forward,
    /// register, approve, reject, expire, remove, access, api_key, org, connect, disconnect.
    #[arg(long, value_name = "ACTION", value_delimiter = ',')]
    pub action: Vec<String>,
    /// Only this outcome: ok, failed, refused or open.
    #[arg(long)]
    pub outcome: Option<String>,
    /// At most this many records (newest first; at most 1000).
    #[arg(long, default_value_t = 50)]
    pub max: usize,
    /// Also show one line per channel: each command run, file copied, connection forwarded.
    #[arg(long)]
    pub details: bool,
    /// Keep printing new records (and sessions as they end) until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// Parses `--since`/`--until`: a duration back from `now` or a time.
pub fn parse_when(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let t = text.trim();
    if let Some(unit) = t.chars().last().filter(|c| c.is_ascii_alphabetic())
        && let Ok(n) = t[..t.len() - 1].parse::<i64>()
    {
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => bail!("{text:?}: a duration ends in s, m, h, d or w (for example 2h)"),
        };
        if n < 0 {
            bail!("{text:?}: a duration back from now cannot be negative");
        }
        return Ok(now - chrono::Duration::seconds(n.saturating_mul(secs)));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(t) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%MZ",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(t, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    bail!(
        "{text:?} is not a time: use a duration back from now (30m, 2h, 7d) or a time \
         (2026-12-01T10:00Z, 2026-12-01)"
    )
}

/// The query string of `GET /v1/audit` for these filters (without paging).
fn query(
    filters: &AuditFilters,
    device: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<String>> {
    let mut q = Vec::new();
    if filters.max == 0 || filters.max > MAX_PAGE {
        bail!("--max must be between 1 and {MAX_PAGE}");
    }
    if let Some(d) = device {
        q.push(format!("device={}", encode(d)));
    }
    let since = filters
        .since
        .as_deref()
        .map(|s| parse_when(s, now))
        .transpose()?;
    let until = filters
        .until
        .as_deref()
        .map(|s| parse_when(s, now))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        bail!("--since must be before --until");
    }
    for (key, t) in [("since", since), ("until", until)] {
        if let Some(t) = t {
            q.push(format!("{key}={}", encode(&t.to_rfc3339())));
        }
    }
    if let Some(u) = &filters.user {
        q.push(format!("user={}", encode(u)));
    }
    let actions: BTreeSet<&str> = filters.action.iter().map(|a| a.trim()).collect();
    if let Some(bad) = actions.iter().find(|a| !ACTIONS.contains(a)) {
        bail!(
            "unknown action {bad:?}; known actions: {}",
            ACTIONS.join(", ")
        );
    }
    if !actions.is_empty() {
        let list: Vec<&str> = actions.into_iter().collect();
        q.push(format!("action={}", encode(&list.join(","))));
    }
    if let Some(o) = &filters.outcome {
        let o: Outcome = o.parse().map_err(anyhow::Error::msg)?;
        q.push(format!("outcome={}", o.as_str()));
    }
    Ok(q)
}

fn path(q: &[String], extra: &[String]) -> String {
    let all: Vec<&String> = q.iter().chain(extra).collect();
    if all.is_empty() {
        "/v1/audit".into()
    } else {
        format!(
            "/v1/audit?{}",
            all.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("&")
        )
    }
}

/// What the record did, in a few words: the command line, the path, the targets.
fn what(r: &AuditRecord) -> String {
    let a = &r.args;
    let s = |k: &str| {
        a.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    match r.action.as_str() {
        "exec" => a
            .get("argv")
            .and_then(|v| v.as_array())
            .map(|argv| {
                argv.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
        "cp" => match s("direction").as_str() {
            "to_device" => format!("{} -> {}", s("local"), s("path")),
            "from_device" => format!("{} <- {}", s("local"), s("path")),
            _ => s("path"),
        },
        "sync" => s("path"),
        "forward" => a
            .get("targets")
            .and_then(|v| v.as_array())
            .map(|t| {
                t.iter()
                    .map(|t| match t.get("proto").and_then(|v| v.as_str()) {
                        Some("unix") => {
                            let path = t.get("path").and_then(|v| v.as_str()).unwrap_or("?");
                            format!("{path} (unix)")
                        }
                        proto => format!(
                            "{}:{}/{}",
                            t.get("host").and_then(|v| v.as_str()).unwrap_or("?"),
                            t.get("port").and_then(|v| v.as_u64()).unwrap_or(0),
                            proto.unwrap_or("tcp")
                        ),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        "docker" => a
            .get("argv")
            .and_then(|v| v.as_array())
            .map(|argv| {
                let words: Vec<&str> = argv.iter().filter_map(|w| w.as_str()).collect();
                format!("docker {}", words.join(" "))
            })
            .unwrap_or_default(),
        "shell" if r.recorded => "(recorded)".into(),
        "shell" => String::new(),
        _ => match a.as_object() {
            Some(map) => map
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "device_id" | "session_id"))
                .map(|(k, v)| match v.as_str() {
                    Some(s) => format!("{k}={s}"),
                    None => format!("{k}={v}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
            None => String::new(),
        },
    }
}

/// How it ended, in a few words: `ok`, `exit 2`, `signal 9`, `refused: forbidden`.
fn outcome(r: &AuditRecord) -> String {
    match r.outcome {
        Outcome::Refused => format!("refused: {}", r.reason.as_deref().unwrap_or("?")),
        Outcome::Open => "open".into(),
        o => {
            let mut s = o.as_str().to_owned();
            if let Some(c) = r.exit_code {
                s = format!("{s} (exit {c})");
            } else if let Some(sig) = r.signal {
                s = format!("{s} (signal {sig})");
            }
            if let Some(reason) = r
                .reason
                .as_deref()
                .filter(|r| *r != "exit" && *r != "client_closed")
            {
                s = format!("{s}: {reason}");
            }
            s
        }
    }
}

fn bytes(n: Option<u64>) -> String {
    match n {
        None => "-".into(),
        Some(n) if n < 1024 => format!("{n} B"),
        Some(n) if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        Some(n) => format!("{:.1} MiB", n as f64 / 1048576.0),
    }
}

fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}

fn row(r: &AuditRecord) -> Vec<String> {
    let who = match (&r.user, &r.key_id) {
        (Some(u), _) => u.clone(),
        (None, _) => r.actor.clone(),
    };
    vec![
        r.time.format("%Y-%m-%d %H:%M:%S").to_string(),
        r.device_name
            .clone()
            .or_else(|| r.device_id.as_ref().map(|d| d.to_string()))
            .unwrap_or_else(|| "-".into()),
        who,
        r.source_ip.clone().unwrap_or_else(|| "-".into()),
        r.action.clone(),
        what(r),
        outcome(r),
        duration(r.duration_ms),
        format!(
            "{} / {}",
            bytes(r.bytes_to_device),
            bytes(r.bytes_from_device)
        ),
    ]
}

const HEADERS: &[&str] = &[
    "TIME (UTC)",
    "DEVICE",
    "USER",
    "FROM",
    "ACTION",
    "WHAT",
    "OUTCOME",
    "DURATION",
    "IN / OUT",
];

fn print_records(records: &[AuditRecord], details: bool, output: Output, headers: bool) {
    match output {
        Output::Json => {
            for r in records {
                // One JSON object per line when following; the page is an array otherwise.
                if let Ok(line) = serde_json::to_string(r) {
                    println!("{line}");
                }
            }
        }
        Output::Table => {
            if !details {
                let rows: Vec<Vec<String>> = records.iter().map(row).collect();
                if headers {
                    print_table(HEADERS, &rows);
                } else {
                    for r in rows {
                        println!("{}", r.join("  "));
                    }
                }
                return;
            }
            for r in records {
                println!("{}", row(r).join("  "));
                if let Some(relay) = &r.relay {
                    println!(
                        "    relay {relay}, session {}",
                        r.session_id.map(|s| s.to_string()).unwrap_or_default()
                    );
                }
                if let (Some(rec), Some(sid)) = (&r.recording, r.session_id) {
                    println!(
                        "    recording: {}{}; replay: m87 audit play {sid}",
                        bytes(Some(rec.bytes)),
                        if rec.truncated {
                            " (cut at its cap)"
                        } else {
                            ""
                        }
                    );
                }
                for c in &r.details {
                    println!(
                        "    {} {}  {}  {} / {}{}",
                        c.kind,
                        c.target,
                        duration(Some(c.duration_ms)),
                        bytes(Some(c.bytes_to_device)),
                        bytes(Some(c.bytes_from_device)),
                        c.error
                            .as_deref()
                            .map(|e| format!("  error: {e}"))
                            .unwrap_or_default()
                    );
                }
                if let Some(e) = r.error.as_deref().filter(|_| r.outcome != Outcome::Ok) {
                    println!("    {e}");
                }
            }
        }
    }
}

/// Lists records (and follows them with `--follow`).
async fn list(
    client: &ApiClient,
    filters: &AuditFilters,
    device: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let q = query(filters, device, Utc::now())?;
    let page: AuditPage = client
        .get(&path(&q, &[format!("max={}", filters.max)]))
        .await?;
    if !filters.follow {
        match output {
            Output::Json => print_json(&page.records)?,
            Output::Table if page.records.is_empty() => println!("no audit records match"),
            Output::Table => print_records(&page.records, filters.details, output, true),
        }
        return Ok(());
    }
    // Following: the page oldest first, then every change as it comes.
    let mut seen = page.head;
    let mut first: Vec<AuditRecord> = page.records;
    first.reverse();
    print_records(&first, filters.details, output, true);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let page: AuditPage = client
            .get(&path(
                &q,
                &[format!("changed_after={seen}"), format!("max={MAX_PAGE}")],
            ))
            .await?;
        seen = page
            .records
            .iter()
            .map(|r| r.seq)
            .max()
            .unwrap_or(page.head)
            .max(seen);
        print_records(&page.records, filters.details, output, false);
    }
}

/// `m87 audit export`: every chained record in a window, oldest first, one line each.
pub async fn export(format: &str, since: Option<&str>, until: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write;
    if !["ocsf", "ecs", "cef", "json"].contains(&format) {
        bail!("unknown format {format:?}: use ocsf, ecs, cef or json");
    }
    let now = Utc::now();
    let mut q = vec![format!("format={format}"), format!("max={MAX_PAGE}")];
    for (key, when) in [("since", since), ("until", until)] {
        if let Some(w) = when {
            q.push(format!(
                "{key}={}",
                encode(&parse_when(w, now)?.to_rfc3339())
            ));
        }
    }
    let client = user_client()?;
    let mut after: Option<u64> = None;
    let mut out = std::io::stdout().lock();
    loop {
        let mut page_q = q.clone();
        if let Some(a) = after {
            page_q.retain(|p| !p.starts_with("since="));
            page_q.push(format!("after={a}"));
        }
        let page: m87_events::audit::ExportPage = client
            .get(&format!("/v1/audit/entries?{}", page_q.join("&")))
            .await?;
        for line in &page.lines {
            writeln!(out, "{line}")?;
        }
        match page.next_after {
            Some(a) => after = Some(a),
            None => return Ok(()),
        }
    }
}

/// `m87 audit [--device D] …`: across every device the caller may audit.
pub async fn fleet(
    filters: AuditFilters,
    device: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let client = user_client()?;
    let device = match device {
        Some(d) => Some(device_id(&client, &d).await?.0),
        None => None,
    };
    list(&client, &filters, device.as_deref(), output).await
}

/// The records `m87 audit [--device D] … -o json` prints (one page, newest first): what
/// `m87 mcp` answers.
pub(crate) async fn records(
    client: &ApiClient,
    filters: &AuditFilters,
    device: Option<&str>,
) -> anyhow::Result<Vec<AuditRecord>> {
    let device = match device {
        Some(d) => Some(device_id(client, d).await?.0),
        None => None,
    };
    let q = query(filters, device.as_deref(), Utc::now())?;
    let max = format!("max={}", filters.max);
    let page: AuditPage = client.get(&path(&q, &[max])).await?;
    Ok(page.records)
}

/// `m87 <device> audit …`: one device. A device the caller no longer sees is named by its id:
/// their own records on it stay readable; with none, it answers as if it did not exist.
pub async fn device(device: &str, filters: AuditFilters, output: Output) -> anyhow::Result<()> {
    let client = user_client()?;
    let (id, visible) = device_id(&client, device).await?;
    if !visible && !filters.follow {
        let q = query(&filters, Some(&id), Utc::now())?;
        let page: AuditPage = client.get(&path(&q, &["max=1".to_owned()])).await?;
        if page.records.is_empty() {
            bail!("device {device:?} not found");
        }
    }
    list(&client, &filters, Some(&id), output).await
}

/// The id of a device named by name, id or prefix among those the caller sees, and whether
/// the caller sees it; a device id the caller no longer sees is taken as it is (their own
/// records on it stay readable). One listing of the devices answers both.
async fn device_id(client: &ApiClient, wanted: &str) -> anyhow::Result<(String, bool)> {
    let devices: Vec<m87_events::api::DeviceSummary> =
        client.get("/v1/devices").await.context("listing devices")?;
    if let Some(d) = resolve(&devices, wanted)? {
        return Ok((d.id.to_string(), true));
    }
    match wanted.parse::<m87_events::DeviceId>() {
        Ok(id) => Ok((id.to_string(), false)),
        Err(_) => bail!("device {wanted:?} not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_people_write_them() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_when("2h", now).unwrap().to_rfc3339(),
            "2026-12-04T10:00:00+00:00"
        );
        assert_eq!(
            parse_when("7d", now).unwrap().to_rfc3339(),
            "2026-11-27T12:00:00+00:00"
        );
        assert_eq!(
            parse_when("2026-12-01T10:00Z", now).unwrap().to_rfc3339(),
            "2026-12-01T10:00:00+00:00"
        );
        assert_eq!(
            parse_when("2026-12-01", now).unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        for bad in ["yesterday", "2x", "-3h", "2026-13-01"] {
            assert!(parse_when(bad, now).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn bad_filters_are_refused_before_asking() {
        let now = Utc::now();
        let mut f = AuditFilters {
            max: 50,
            ..Default::default()
        };
        f.action = vec!["exec".into(), "telnet".into()];
        assert!(
            query(&f, None, now)
                .unwrap_err()
                .to_string()
                .contains("unknown action")
        );
        f.action = vec![];
        f.max = 5000;
        assert!(
            query(&f, None, now)
                .unwrap_err()
                .to_string()
                .contains("--max")
        );
        f.max = 10;
        f.outcome = Some("maybe".into());
        assert!(query(&f, None, now).is_err());
        f.outcome = None;
        f.since = Some("1h".into());
        f.until = Some("2h".into());
        assert!(
            query(&f, None, now)
                .unwrap_err()
                .to_string()
                .contains("--since")
        );
    }
}
