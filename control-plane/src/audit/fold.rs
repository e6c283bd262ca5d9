//! The pure part of the audit trail: what record (and what changes to earlier records) one
//! event makes, given what the trail already knows of its device and its session.

use m87_events::audit::{
    AuditEntry, AuditRecord, Outcome, action_of, canonical, device_of, outcome_of,
};
use m87_events::{Actor, DomainEvent, EventEnvelope, Scope};
use serde_json::Value;

use crate::store::audit::{AuditRow, DeviceInfo, Listing};

/// What the trail knows that one event's record needs.
pub trait FoldContext {
    /// The device's owner scope and name, as last recorded.
    fn device(&self, device_id: &str) -> Option<DeviceInfo>;
    /// The record of a session's grant, as it stands.
    fn session(&self, session_id: &str) -> Option<AuditRecord>;
}

/// What one event does to the trail.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    /// Its own entry (always one, listed or not).
    pub row: AuditRow,
    /// The device it names, recorded or renamed.
    pub device: Option<(String, DeviceInfo)>,
    /// The session record it completes (closing, refusal after the grant).
    pub session: Option<(String, AuditRecord)>,
}

/// Fields of event data that are secrets' digests or bulky, left out of records' arguments.
const OMITTED: &[&str] = &["key_hash", "claim_secret_hash", "system_info", "channels"];

fn args_of(event: &DomainEvent) -> Value {
    match event {
        DomainEvent::SessionOpened(e) => e.args.clone(),
        _ => match event.data() {
            Value::Object(mut map) => {
                for k in OMITTED {
                    map.remove(*k);
                }
                Value::Object(map)
            }
            other => other,
        },
    }
}

/// The record an event makes by itself, before its session or device add to it.
fn base_record(env: &EventEnvelope, hash: &str, ctx: &dyn FoldContext) -> AuditRecord {
    let (user, key_id, subject) = match &env.metadata.actor {
        Actor::User {
            email,
            key_id,
            subject,
        } => (
            Some(email.to_string()),
            key_id.map(|k| k.to_string()),
            subject.clone(),
        ),
        _ => (None, None, None),
    };
    let device_id = device_of(&env.event).cloned();
    let device_name = device_id
        .as_ref()
        .and_then(|d| ctx.device(d.as_str()))
        .map(|d| d.name);
    AuditRecord {
        position: env.global_position,
        event_id: env.event_id,
        time: env.recorded_at,
        event_type: env.event.event_type().to_owned(),
        action: action_of(&env.event).to_owned(),
        outcome: outcome_of(&env.event),
        device_id,
        device_name,
        user,
        key_id,
        subject,
        actor: env.metadata.actor.to_string(),
        source_ip: env.metadata.source_ip.map(|ip| ip.to_string()),
        args: args_of(&env.event),
        session_id: None,
        relay: None,
        exit_code: None,
        signal: None,
        reason: None,
        refused_by: None,
        error: None,
        duration_ms: None,
        bytes_to_device: None,
        bytes_from_device: None,
        details: vec![],
        recorded: false,
        recording: None,
        hash: hash.to_owned(),
        seq: env.global_position,
    }
}

/// Why a closed session counts as failed though its process did not fail: the session was
/// cut rather than ended by its user.
const CUT_REASONS: &[&str] = &[
    "access_revoked",
    "credential_revoked",
    "device_removed",
    "relay_lost",
    "timeout",
    "error",
];

/// Adds an event's own facts to its record; returns the session it belongs to, if any.
fn add_event_facts(record: &mut AuditRecord, event: &DomainEvent) {
    match event {
        DomainEvent::SessionOpened(e) => {
            record.session_id = Some(e.session_id);
            record.relay = e.relay.clone();
            record.recorded = e.recorded;
        }
        DomainEvent::SessionRecordingStored(e) => {
            record.session_id = Some(e.session_id);
            record.recording = Some(m87_events::audit::RecordingInfo {
                bytes: e.bytes,
                truncated: e.truncated,
                max_bytes: e.max_bytes,
                sha256: e.sha256.clone(),
            });
        }
        DomainEvent::SessionClosed(e) => {
            record.session_id = Some(e.session_id);
            record.exit_code = e.exit_code;
            record.signal = e.signal;
            record.reason = e.reason.clone();
            record.error = e.error.clone();
            record.duration_ms = Some(e.duration_ms);
            record.bytes_to_device = Some(e.bytes_to_device);
            record.bytes_from_device = Some(e.bytes_from_device);
            record.details = e.channels.clone();
            if e.reason
                .as_deref()
                .is_some_and(|r| CUT_REASONS.contains(&r))
            {
                record.outcome = Outcome::Failed;
            }
        }
        DomainEvent::SessionRefused(e) => {
            record.session_id = e.session_id;
            record.reason = Some(e.code.clone());
            record.refused_by = Some(e.refused_by.clone());
            record.error = Some(e.reason.clone());
        }
        _ => {}
    }
}

/// The scope whose admins and owner may read an event's record: the device's owner, the
/// organization, or the user an API key acts as.
fn scope_of(event: &DomainEvent, device: Option<&DeviceInfo>) -> Option<String> {
    match event {
        DomainEvent::RegistrationRequested(e) => Some(e.owner_scope.to_string()),
        DomainEvent::DeviceEnrolled(e) => Some(e.owner_scope.to_string()),
        DomainEvent::OrgCreated(e) => Some(Scope::org(&e.org_id).to_string()),
        DomainEvent::OrgDeleted(e) => Some(Scope::org(&e.org_id).to_string()),
        DomainEvent::MemberAdded(e) => Some(Scope::org(&e.org_id).to_string()),
        DomainEvent::MemberRemoved(e) => Some(Scope::org(&e.org_id).to_string()),
        DomainEvent::MemberRoleChanged(e) => Some(Scope::org(&e.org_id).to_string()),
        DomainEvent::ApiKeyCreated(e) => Some(Scope::user(&e.email).to_string()),
        DomainEvent::UserSignedIn(e) => Some(Scope::user(&e.email).to_string()),
        _ => device.map(|d| d.scope.clone()),
    }
}

fn listing_of(event: &DomainEvent, has_grant: bool) -> Listing {
    match event {
        DomainEvent::DeviceEnrolled(_) | DomainEvent::DeviceCredentialsIssued(_) => Listing::Hidden,
        DomainEvent::SessionClosed(_)
        | DomainEvent::SessionRefused(_)
        | DomainEvent::SessionRecordingStored(_)
            if has_grant =>
        {
            Listing::Hidden
        }
        DomainEvent::DeviceConnected(_) | DomainEvent::DeviceDisconnected(_) => Listing::Presence,
        _ => Listing::Listed,
    }
}

/// The device facts an event records: its owner and name when it asks to join or enrolls.
fn device_change(event: &DomainEvent) -> Option<(String, DeviceInfo)> {
    let (id, scope, name) = match event {
        DomainEvent::RegistrationRequested(e) => (&e.device_id, &e.owner_scope, &e.name),
        DomainEvent::DeviceEnrolled(e) => (&e.device_id, &e.owner_scope, &e.name),
        _ => return None,
    };
    Some((
        id.to_string(),
        DeviceInfo {
            scope: scope.to_string(),
            name: name.to_string(),
        },
    ))
}

/// The session record after a closing or a refusal of a granted session.
fn completed(mut grant: AuditRecord, by: &AuditRecord) -> AuditRecord {
    grant.outcome = by.outcome;
    grant.exit_code = by.exit_code;
    grant.signal = by.signal;
    grant.reason = by.reason.clone();
    grant.refused_by = by.refused_by.clone();
    grant.error = by.error.clone();
    grant.duration_ms = by.duration_ms;
    grant.bytes_to_device = by.bytes_to_device;
    grant.bytes_from_device = by.bytes_from_device;
    grant.details = by.details.clone();
    grant.seq = by.seq;
    grant.subject = grant.subject.or_else(|| by.subject.clone());
    grant
}

/// Whether an event ends its session's grant: a closing does; a refusal does while the
/// session is still open, unless it refused a replay of the token (another attempt, listed on
/// its own).
fn completes(event: &DomainEvent, grant: &AuditRecord) -> bool {
    match event {
        DomainEvent::SessionClosed(_) => true,
        DomainEvent::SessionRefused(r) => {
            grant.outcome == Outcome::Open && r.code != "token_replayed"
        }
        _ => false,
    }
}

/// Folds one event, chained after `prev_hash`, into the trail.
pub fn fold(env: &EventEnvelope, prev_hash: &str, ctx: &dyn FoldContext) -> Folded {
    let text = canonical(env);
    let hash = m87_events::audit::chain_hash(prev_hash, &text);
    let mut record = base_record(env, &hash, ctx);
    add_event_facts(&mut record, &env.event);
    let device = device_change(&env.event);
    let known_device = device.as_ref().map(|(_, d)| d.clone()).or_else(|| {
        record
            .device_id
            .as_ref()
            .and_then(|d| ctx.device(d.as_str()))
    });
    if record.device_name.is_none() {
        record.device_name = known_device.as_ref().map(|d| d.name.clone());
    }
    let grant = match &env.event {
        DomainEvent::SessionClosed(_)
        | DomainEvent::SessionRefused(_)
        | DomainEvent::SessionRecordingStored(_) => {
            record.session_id.and_then(|s| ctx.session(&s.to_string()))
        }
        _ => None,
    };
    if let Some(grant) = &grant {
        // A closing is done by the device, a refusal reported by a relay: the record names
        // the session's user.
        if record.user.is_none() {
            record.user = grant.user.clone();
            record.key_id = grant.key_id.clone();
            record.subject = grant.subject.clone();
        }
    }
    let session = match (&env.event, grant) {
        (DomainEvent::SessionRecordingStored(_), Some(mut g)) => {
            g.recording = record.recording.clone();
            g.seq = record.seq;
            Some((g.session_id, g))
        }
        (_, grant) => grant
            .filter(|g| completes(&env.event, g))
            .map(|g| (g.session_id, completed(g, &record))),
    };
    let row = AuditRow {
        position: env.global_position,
        seq: env.global_position,
        listing: listing_of(&env.event, session.is_some()),
        device_id: record.device_id.as_ref().map(|d| d.to_string()),
        scope: scope_of(&env.event, known_device.as_ref()),
        user: record.user.clone(),
        session_id: record.session_id.map(|s| s.to_string()),
        entry: text,
        prev_hash: prev_hash.to_owned(),
        hash,
        record,
    };
    Folded {
        row,
        device,
        session: session.and_then(|(sid, rec)| sid.map(|s| (s.to_string(), rec))),
    }
}

/// The entry an audit row holds, for exporting: the event as it was chained.
pub fn entry_of(row_entry: &str, prev_hash: &str, hash: &str) -> Option<AuditEntry> {
    let envelope: EventEnvelope = serde_json::from_str(row_entry).ok()?;
    Some(AuditEntry {
        envelope,
        prev_hash: prev_hash.to_owned(),
        hash: hash.to_owned(),
    })
}
