//! The logs channel: which log, how much of it, and whether to follow it.
//!
//! The device answers `ChannelAccepted` (or `Refused` with code `unavailable` naming what is
//! missing), then sends `Data` frames whose bytes are [`LogLine`]s as JSON, one per line, and
//! ends with `Exit` (0) once it has sent everything asked for. A follower ends when the client
//! closes the stream.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whose log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LogSource {
    /// The runtime's own log (a bounded, rotated file on the device).
    Runtime,
    /// A systemd unit's journal.
    Unit {
        /// The unit (`nginx` or `nginx.service`).
        name: String,
    },
    /// A container's log, through the device's Docker API.
    Container {
        /// The container's name or id.
        name: String,
    },
}

/// What to read (also the session's grant arguments: the device checks they match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    /// Whose log.
    pub source: LogSource,
    /// Only the last this many lines (before following).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u32>,
    /// Lines at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Lines before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Keep sending new lines until the client closes the stream.
    #[serde(default)]
    pub follow: bool,
}

/// One log line as the device sends it (a `Data` frame carries one or more of these as JSON,
/// each followed by a newline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was written (`None` when the log did not say).
    pub time: Option<DateTime<Utc>>,
    /// Its level as the source names it (`INFO`, `WARN`, `err`, `stdout`…), empty when unknown.
    pub level: String,
    /// Where it came from: a tracing target, a unit's program, a container's stream.
    pub source: String,
    /// The text.
    pub message: String,
}

impl LogLine {
    /// Whether its time lies within `since..until` (a line without a time always does).
    pub fn within(&self, since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> bool {
        let Some(t) = self.time else { return true };
        since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_as_json() {
        let r = LogsRequest {
            source: LogSource::Unit {
                name: "nginx".into(),
            },
            lines: Some(2),
            since: None,
            until: None,
            follow: true,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"source":{"type":"unit","name":"nginx"},"lines":2,"follow":true}"#
        );
        assert_eq!(serde_json::from_str::<LogsRequest>(&json).unwrap(), r);
    }

    #[test]
    fn within_keeps_since_and_drops_until() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let line = LogLine {
            time: Some(at("2026-01-01T10:00:00Z")),
            level: "INFO".into(),
            source: "x".into(),
            message: "m".into(),
        };
        assert!(line.within(Some(at("2026-01-01T10:00:00Z")), None));
        assert!(!line.within(None, Some(at("2026-01-01T10:00:00Z"))));
        assert!(!line.within(Some(at("2026-01-01T10:00:01Z")), None));
        let timeless = LogLine { time: None, ..line };
        assert!(timeless.within(Some(at("2030-01-01T00:00:00Z")), None));
    }
}
