//! The audit trail's shared contract: one entry per stored event, chained by SHA-256, and the
//! words (action, outcome) every view and every export format uses for it.
//!
//! The chain: `hash = SHA-256(prev_hash ‖ "\n" ‖ canonical)`, hex, where `canonical` is the
//! envelope serialised by [`canonical`] (serde's field order, object keys sorted) and the first
//! entry's `prev_hash` is [`GENESIS`]. Changing, removing or inserting an entry breaks the link
//! to the next one; an exported record carries both hashes so a receiver can check the chain too.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::DomainEvent;
use crate::envelope::EventEnvelope;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event of the log as an audit entry: the event and its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The event, as stored.
    pub envelope: EventEnvelope,
    /// The hash of the entry before it ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

impl AuditEntry {
    /// Chains `envelope` after an entry whose hash is `prev_hash`.
    pub fn chain(envelope: EventEnvelope, prev_hash: &str) -> Self {
        let hash = chain_hash(prev_hash, &canonical(&envelope));
        Self {
            envelope,
            prev_hash: prev_hash.to_owned(),
            hash,
        }
    }
}

/// The canonical text of an envelope that the chain hashes.
pub fn canonical(envelope: &EventEnvelope) -> String {
    // Serialising plain structs and sorted maps cannot fail; an empty text would still chain.
    serde_json::to_string(envelope).unwrap_or_default()
}

/// `SHA-256(prev_hash ‖ "\n" ‖ canonical)`, lower-case hex.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev_hash.as_bytes());
    ctx.update(b"\n");
    ctx.update(canonical.as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened (a session: it closed without error and, if it ran a process, exit 0).
    Ok,
    /// It happened and failed (a non-zero exit, a signal, an error).
    Failed,
    /// It was not allowed.
    Refused,
    /// A session that was granted and has not reported its end yet.
    Open,
}

impl Outcome {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Open => "open",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ok" => Ok(Outcome::Ok),
            "failed" => Ok(Outcome::Failed),
            "refused" => Ok(Outcome::Refused),
            "open" => Ok(Outcome::Open),
            other => Err(format!(
                "unknown outcome {other:?}: use ok, failed, refused or open"
            )),
        }
    }
}

/// Every action name an audit record can have, as `--action` accepts them.
pub const ACTIONS: &[&str] = &[
    "exec",
    "shell",
    "cp",
    "sync",
    "forward",
    "docker",
    "logs",
    "metrics",
    "serial",
    "status",
    "ls",
    "ssh",
    "register",
    "approve",
    "reject",
    "expire",
    "remove",
    "credentials",
    "access",
    "api_key",
    "org",
    "connect",
    "disconnect",
    "sign_in",
    "auth",
    "session",
    "policy",
    "recording",
];

/// The action name of a session operation (`copy` is `cp`, as the command is named).
pub fn operation_action(op: crate::token::Operation) -> &'static str {
    match op {
        crate::token::Operation::Exec => "exec",
        crate::token::Operation::Shell => "shell",
        crate::token::Operation::Forward => "forward",
        crate::token::Operation::Copy => "cp",
        crate::token::Operation::Sync => "sync",
        crate::token::Operation::Docker => "docker",
        crate::token::Operation::Logs => "logs",
        crate::token::Operation::Metrics => "metrics",
        crate::token::Operation::Serial => "serial",
        crate::token::Operation::Status => "status",
        crate::token::Operation::List => "ls",
        crate::token::Operation::Ssh => "ssh",
    }
}

/// The action an event records. Session closings and refusals name their session's
/// operation when they carry it, else `session`.
pub fn action_of(event: &DomainEvent) -> &'static str {
    match event {
        DomainEvent::RegistrationRequested(_) => "register",
        DomainEvent::RegistrationApproved(_) | DomainEvent::DeviceEnrolled(_) => "approve",
        DomainEvent::RegistrationRejected(_) => "reject",
        DomainEvent::RegistrationExpired(_) => "expire",
        DomainEvent::DeviceCredentialsIssued(_) => "credentials",
        DomainEvent::DeviceRemoved(_) => "remove",
        DomainEvent::AccessGranted(_) | DomainEvent::AccessRevoked(_) => "access",
        DomainEvent::ApiKeyCreated(_) | DomainEvent::ApiKeyRevoked(_) => "api_key",
        DomainEvent::SessionOpened(e) => operation_action(e.operation),
        DomainEvent::SessionClosed(e) => e.operation.map_or("session", operation_action),
        DomainEvent::SessionRefused(e) => e.operation.map_or("session", operation_action),
        DomainEvent::DeviceConnected(_) => "connect",
        DomainEvent::DeviceDisconnected(_) => "disconnect",
        DomainEvent::OrgCreated(_)
        | DomainEvent::OrgDeleted(_)
        | DomainEvent::MemberAdded(_)
        | DomainEvent::MemberRemoved(_)
        | DomainEvent::MemberRoleChanged(_) => "org",
        DomainEvent::UserSignedIn(_) => "sign_in",
        DomainEvent::AuthenticationRefused(_) => "auth",
        DomainEvent::OrgPolicySet(_) | DomainEvent::DevicePolicySet(_) => "policy",
        DomainEvent::SessionRecordingStored(_) => "recording",
    }
}

/// How the event itself ended: refusals are refused, a closing with an error, a signal or a
/// non-zero exit failed, an opening is open, everything else ok.
pub fn outcome_of(event: &DomainEvent) -> Outcome {
    match event {
        DomainEvent::SessionRefused(_) | DomainEvent::AuthenticationRefused(_) => Outcome::Refused,
        DomainEvent::SessionOpened(_) => Outcome::Open,
        DomainEvent::SessionClosed(c) => {
            if c.error.is_some() || c.signal.is_some() || c.exit_code.is_some_and(|x| x != 0) {
                Outcome::Failed
            } else {
                Outcome::Ok
            }
        }
        _ => Outcome::Ok,
    }
}

/// The device an event concerns, if any.
pub fn device_of(event: &DomainEvent) -> Option<&crate::ids::DeviceId> {
    match event {
        DomainEvent::RegistrationRequested(e) => Some(&e.device_id),
        DomainEvent::RegistrationApproved(e) => Some(&e.device_id),
        DomainEvent::RegistrationRejected(e) => Some(&e.device_id),
        DomainEvent::RegistrationExpired(e) => Some(&e.device_id),
        DomainEvent::DeviceEnrolled(e) => Some(&e.device_id),
        DomainEvent::DeviceCredentialsIssued(e) => Some(&e.device_id),
        DomainEvent::DeviceRemoved(e) => Some(&e.device_id),
        DomainEvent::AccessGranted(e) => Some(&e.device_id),
        DomainEvent::AccessRevoked(e) => Some(&e.device_id),
        DomainEvent::SessionOpened(e) => Some(&e.device_id),
        DomainEvent::SessionClosed(e) => Some(&e.device_id),
        DomainEvent::SessionRefused(e) => e.device_id.as_ref(),
        DomainEvent::DeviceConnected(e) => Some(&e.device_id),
        DomainEvent::DeviceDisconnected(e) => Some(&e.device_id),
        DomainEvent::DevicePolicySet(e) => Some(&e.device_id),
        DomainEvent::SessionRecordingStored(e) => Some(&e.device_id),
        DomainEvent::ApiKeyCreated(_)
        | DomainEvent::OrgPolicySet(_)
        | DomainEvent::ApiKeyRevoked(_)
        | DomainEvent::OrgCreated(_)
        | DomainEvent::OrgDeleted(_)
        | DomainEvent::MemberAdded(_)
        | DomainEvent::MemberRemoved(_)
        | DomainEvent::MemberRoleChanged(_)
        | DomainEvent::UserSignedIn(_)
        | DomainEvent::AuthenticationRefused(_) => None,
    }
}

/// One line of `m87 audit`: an action on the record, with what is known of how it ended.
///
/// A session is one record from its grant to its end: its closing (or a refusal by the relay or
/// the device) fills in the outcome, duration, bytes and reason of the record of its opening.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// The position of the event in the log: the record's id and the paging cursor.
    pub position: u64,
    /// The event's id (exports carry it too).
    #[schema(value_type = String)]
    pub event_id: crate::ids::EventId,
    /// When it happened.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The event's type name.
    pub event_type: String,
    /// What was done: `exec`, `shell`, `cp`, `sync`, `forward`, `approve`, `access`, ….
    pub action: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The device concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub device_id: Option<crate::ids::DeviceId>,
    /// The device's name when the record was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// The user who did it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The API key they came through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The identity provider's subject they came as (OpenID Connect sign-ins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Who did it, as `user:…`, `device:…` or `system:…`.
    pub actor: String,
    /// The address the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// The operation's arguments (command line, paths, targets), or the change's facts.
    #[serde(default)]
    pub args: serde_json::Value,
    /// The session, for session records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub session_id: Option<crate::ids::SessionId>,
    /// The relay the session was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Exit code of the last process the session ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why it ended (`client_closed`, `exit`, `access_revoked`, …) or was refused (the code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who refused it (`grant`, `relay …`, `agent`), for refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
    /// What went wrong, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the session lasted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Bytes from the client to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_to_device: Option<u64>,
    /// Bytes from the device to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_from_device: Option<u64>,
    /// Whether the session's terminal was recorded (by the policy in force at its grant).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recorded: bool,
    /// The stored recording, once the device uploaded it: `m87 audit play SESSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingInfo>,
    /// One line per channel of the session (each file copied, each forwarded connection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<crate::api::ChannelSummary>,
    /// The SHA-256 chain hash of the event's audit entry.
    pub hash: String,
    /// The position of the last event that changed this record (a session's closing):
    /// `--follow` asks for records changed after the highest it has seen.
    #[serde(default)]
    pub seq: u64,
}

/// A session's stored terminal recording, as its audit record shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordingInfo {
    /// Size of the asciicast, in bytes.
    pub bytes: u64,
    /// Whether the device stopped recording at its cap (`max_bytes`).
    pub truncated: bool,
    /// The cap it recorded under.
    pub max_bytes: u64,
    /// SHA-256 (hex) of the asciicast.
    pub sha256: String,
}

/// A page of audit records, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The records.
    pub records: Vec<AuditRecord>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
    /// The last position of the trail when this page was read: following starts after it.
    #[serde(default)]
    pub head: u64,
}

/// Largest page `GET /v1/audit` answers.
pub const MAX_PAGE: usize = 1000;

/// `GET /v1/audit`: which records, newest first (or, with `changed_after`, the records that
/// changed since, oldest change first: what `--follow` polls).
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQueryParams {
    /// Only this device (its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Only this user (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only these actions, comma-separated (see [`ACTIONS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Only this outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// At or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Older than this position (the previous page's `next_before`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Records changed after this position, oldest change first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_after: Option<u64>,
    /// At most this many (default 100, at most [`MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
}

impl AuditQueryParams {
    /// The actions asked for, each checked against [`ACTIONS`].
    pub fn actions(&self) -> Result<Vec<String>, String> {
        let Some(list) = &self.action else {
            return Ok(vec![]);
        };
        list.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                if ACTIONS.contains(&a) {
                    Ok(a.to_owned())
                } else {
                    Err(format!(
                        "unknown action {a:?}; known actions: {}",
                        ACTIONS.join(", ")
                    ))
                }
            })
            .collect()
    }
}

/// `GET /v1/audit/entries`: the chained entries in order, rendered in a SIEM format (what
/// `m87 audit export` prints). Platform admins only.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `ocsf` (default), `ecs`, `cef` or `json` (the entry itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Entries after this position (the previous page's `next_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Entries recorded at or after this time (RFC 3339), when `after` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Entries recorded before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many (default and most: [`MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
}

/// A page of rendered entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExportPage {
    /// One line per entry, in the asked format.
    pub lines: Vec<String>,
    /// Pass as `after` for the next page; absent when this page reached the end (or `until`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}
