//! A systemd unit's journal, read with `journalctl -u UNIT -o json` (journald's own reader: it
//! knows the journal's files, their rotation and `--follow`).

use std::process::Stdio;

use chrono::{DateTime, Utc};
use m87_events::tunnel::logs::{LogLine, LogsRequest};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::{BoxWrite, ClientWatch, Ended, LogsError, accepted};

/// The program that reads the journal.
const JOURNALCTL: &str = "journalctl";

/// Syslog priorities as journald numbers them.
const PRIORITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// The arguments for `request` on `unit`.
pub fn arguments(unit: &str, request: &LogsRequest) -> Vec<String> {
    let mut args = vec![
        "--no-pager".to_owned(),
        "--quiet".to_owned(),
        "--output=json".to_owned(),
        format!("--unit={unit}"),
    ];
    if let Some(since) = request.since {
        args.push(format!("--since=@{}", since.timestamp()));
    }
    if let Some(until) = request.until {
        // Whole seconds, rounded up; the exact bound is applied to each line.
        args.push(format!("--until=@{}", until.timestamp() + 1));
    }
    match (request.lines, request.follow) {
        (Some(n), _) => args.push(format!("--lines={n}")),
        (None, true) => args.push("--no-tail".to_owned()),
        (None, false) => {}
    }
    if request.follow {
        args.push("--follow".to_owned());
    }
    args
}

/// One `journalctl -o json` entry as a [`LogLine`] (`None` if it is not one).
pub fn parse_entry(line: &str) -> Option<LogLine> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    let text = |key: &str| entry.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let time = text("__REALTIME_TIMESTAMP")
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(DateTime::<Utc>::from_timestamp_micros);
    let level = text("PRIORITY")
        .and_then(|p| p.parse::<usize>().ok())
        .and_then(|p| PRIORITIES.get(p))
        .map(|p| (*p).to_owned())
        .unwrap_or_default();
    let source = text("SYSLOG_IDENTIFIER")
        .or_else(|| text("_COMM"))
        .unwrap_or_default();
    // Journald sends a message that is not valid UTF-8 as an array of bytes.
    let message = match entry.get("MESSAGE") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(bytes)) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => String::new(),
    };
    Some(LogLine {
        time,
        level,
        source,
        message,
    })
}

/// Whether the journal (or systemd) knows `unit`.
async fn check_unit(unit: &str) -> Result<(), LogsError> {
    let probe = Command::new(JOURNALCTL)
        .args(["--no-pager", "--quiet", "--output=json", "--lines=1"])
        .arg(format!("--unit={unit}"))
        .stdin(Stdio::null())
        .output()
        .await;
    let out = match probe {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LogsError::Unavailable(
                "journalctl is not installed on the device (Debian package systemd), so unit \
                 logs cannot be read there"
                    .into(),
            ));
        }
        Err(e) => {
            return Err(LogsError::Unavailable(format!(
                "cannot run journalctl on the device: {e}"
            )));
        }
    };
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.lines().next().unwrap_or("it failed").trim().to_owned();
        return Err(LogsError::Unavailable(format!(
            "journalctl cannot read unit {unit:?} on the device: {why}"
        )));
    }
    if !out.stdout.iter().all(u8::is_ascii_whitespace) || systemd_knows(unit).await {
        return Ok(());
    }
    Err(LogsError::Unavailable(format!(
        "no unit named {unit:?} on the device: the journal has no lines for it and systemd does \
         not know it"
    )))
}

/// Whether systemd (when it runs) has loaded `unit`.
async fn systemd_knows(unit: &str) -> bool {
    if !std::path::Path::new("/run/systemd/system").exists() {
        return false;
    }
    let out = Command::new("systemctl")
        .args(["show", "--property=LoadState", "--value", unit])
        .stdin(Stdio::null())
        .output()
        .await;
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "loaded")
}

/// Serves `unit`'s journal.
pub async fn serve(
    unit: &str,
    request: &LogsRequest,
    writer: &mut BoxWrite,
    mut closed: ClientWatch,
) -> Result<Ended, LogsError> {
    check_unit(unit).await?;
    let mut child = Command::new(JOURNALCTL)
        .args(arguments(unit, request))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| LogsError::Unavailable(format!("cannot run journalctl on the device: {e}")))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(LogsError::Unavailable(
            "journalctl gave no output pipe".into(),
        ));
    };
    let mut sink = accepted(writer).await?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let next = tokio::select! {
            _ = closed.closed() => return Ok(Ended::ClientLeft),
            next = lines.next_line() => next,
        };
        let Ok(Some(line)) = next else { break };
        let Some(line) = parse_entry(&line) else {
            continue;
        };
        if !line.within(request.since, request.until) {
            continue;
        }
        if sink.push(&line).await.is_err() {
            return Ok(Ended::ClientLeft);
        }
        // A follower sends each line as it comes; a read sends full frames.
        if request.follow && lines.get_ref().buffer().is_empty() && sink.flush().await.is_err() {
            return Ok(Ended::ClientLeft);
        }
    }
    if sink.flush().await.is_err() {
        return Ok(Ended::ClientLeft);
    }
    let status = child.wait().await;
    let mut why = String::new();
    let _ = stderr.read_to_string(&mut why).await;
    match status {
        Ok(s) if s.success() => Ok(Ended::Done),
        _ => Err(LogsError::Failed(format!(
            "journalctl failed on the device: {}",
            why.lines().next().unwrap_or("no reason given").trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m87_events::tunnel::logs::LogSource;

    fn request(lines: Option<u32>, follow: bool) -> LogsRequest {
        LogsRequest {
            source: LogSource::Unit { name: "x".into() },
            lines,
            since: Some("2026-01-01T10:00:00.5Z".parse().unwrap()),
            until: None,
            follow,
        }
    }

    #[test]
    fn arguments_name_the_unit_and_bounds() {
        let args = arguments("demo", &request(Some(2), false));
        assert!(args.contains(&"--unit=demo".to_owned()));
        assert!(args.contains(&"--since=@1767261600".to_owned()));
        assert!(args.contains(&"--lines=2".to_owned()));
        assert!(!args.contains(&"--follow".to_owned()));
        let follow = arguments("demo", &request(None, true));
        assert!(follow.contains(&"--no-tail".to_owned()));
        assert!(follow.contains(&"--follow".to_owned()));
    }

    #[test]
    fn an_entry_becomes_a_line() {
        let line = parse_entry(
            r#"{"__REALTIME_TIMESTAMP":"1796409525779905","PRIORITY":"3","SYSLOG_IDENTIFIER":"demo","MESSAGE":[104,105]}"#,
        )
        .unwrap();
        assert_eq!(line.level, "err");
        assert_eq!(line.source, "demo");
        assert_eq!(line.message, "hi");
        assert_eq!(line.time.unwrap().timestamp_micros(), 1796409525779905);
        assert!(parse_entry("not json").is_none());
    }
}
