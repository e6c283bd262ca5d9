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
        DomainEvent::OrgPolicySet(_) | DomainEvent::DevicePolicySet(_) => "policy",
        DomainEvent::SessionRecordingStored(_) => "recording",
    }
}

/// How the event itself ended: refusals are refused, a closing with an error, a signal or a
/// non-zero exit failed, an opening is open, everything else ok.
pub fn outcome_of(event: &DomainEvent) -> Outcome {
    match event {
        DomainEvent::SessionRefused(_) => Outcome::Refused,
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
        | DomainEvent::MemberRoleChanged(_) => None,
    }
}
