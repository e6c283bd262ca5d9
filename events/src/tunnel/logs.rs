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
