//! The facts of an entry every format uses, read once.

use chrono::{DateTime, SecondsFormat, Utc};
use m87_events::audit::{AuditEntry, Outcome, action_of, device_of, outcome_of};
use m87_events::domain::DomainEvent;
use m87_events::envelope::Actor;

/// What every format says about an entry.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The entry.
    pub entry: &'a AuditEntry,
    /// The event's type name (`SessionOpened`, …).
    pub event_type: &'static str,
    /// The audit action (`exec`, `approve`, …).
    pub action: &'static str,
    /// How it ended.
    pub outcome: Outcome,
    /// The device concerned, if any.
    pub device: Option<String>,
    /// The session concerned, if any.
    pub session: Option<String>,
    /// The user who acted, when a person did.
    pub user_email: Option<String>,
    /// The API key they used, if any.
    pub key_id: Option<String>,
    /// The actor as text (`user:…`, `device:…`, `system:…`).
    pub actor: String,
    /// The source address, when the request came over the network.
    pub source_ip: Option<String>,
    /// A sentence for people.
    pub message: String,
}

impl<'a> Facts<'a> {
    /// Reads the facts of `entry`.
    pub fn of(entry: &'a AuditEntry) -> Self {
        let env = &entry.envelope;
        let (user_email, key_id) = match &env.metadata.actor {
            Actor::User { email, key_id, .. } => {
                (Some(email.to_string()), key_id.map(|k| k.to_string()))
            }
            _ => (None, None),
        };
        Self {
            entry,
            event_type: env.event.event_type(),
            action: action_of(&env.event),
            outcome: outcome_of(&env.event),
            device: device_of(&env.event).map(ToString::to_string),
            session: session_of(&env.event),
            user_email,
            key_id,
            actor: env.metadata.actor.to_string(),
            source_ip: env.metadata.source_ip.map(|ip| ip.to_string()),
            message: message_of(&env.event, &env.metadata.actor),
        }
    }

    /// When the store accepted the event.
    pub fn time(&self) -> DateTime<Utc> {
        self.entry.envelope.recorded_at
    }

    /// The time as RFC 3339 with microseconds and `Z`.
    pub fn time_rfc3339(&self) -> String {
        self.time().to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// The event id.
    pub fn event_id(&self) -> String {
        self.entry.envelope.event_id.to_string()
    }

    /// The position in the global order.
    pub fn position(&self) -> u64 {
        self.entry.envelope.global_position
    }
}

fn session_of(event: &DomainEvent) -> Option<String> {
    match event {
        DomainEvent::SessionOpened(e) => Some(e.session_id.to_string()),
        DomainEvent::SessionClosed(e) => Some(e.session_id.to_string()),
        DomainEvent::SessionRefused(e) => e.session_id.map(|s| s.to_string()),
        _ => None,
    }
}

fn message_of(event: &DomainEvent, actor: &Actor) -> String {
    let dev = device_of(event).map_or_else(String::new, |d| format!(" on device {d}"));
    match event {
        DomainEvent::SessionOpened(e) => {
            format!("{actor} opened a {} session{dev}", e.operation.as_str())
        }
        DomainEvent::SessionClosed(e) => format!(
            "{} session closed{dev} after {} ms ({})",
            e.operation.map_or("a", |o| o.as_str()),
            e.duration_ms,
            e.reason.as_deref().unwrap_or("no reason given")
        ),
        DomainEvent::SessionRefused(e) => format!(
            "session refused by the {}{dev}: {} ({})",
            e.refused_by, e.reason, e.code
        ),
        other => format!("{} by {actor}{dev}", other.event_type()),
    }
}
