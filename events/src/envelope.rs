//! The envelope every stored event travels in.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::DomainEvent;
use crate::ids::{CorrelationId, DeviceId, Email, EventId, KeyId};

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A person, identified by email.
    User {
        /// The user's email.
        email: Email,
        /// The API key they used, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<KeyId>,
        /// The OpenID Connect subject (`sub`) they signed in as, when they came with an
        /// access token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
    },
    /// A device acting with its own key or claim secret.
    Device {
        /// The device.
        device_id: DeviceId,
    },
    /// m87 itself (a background task or start-up), named by component.
    System {
        /// Which part of m87.
        component: String,
    },
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User { email, .. } => write!(f, "user:{email}"),
            Actor::Device { device_id } => write!(f, "device:{device_id}"),
            Actor::System { component } => write!(f, "system:{component}"),
        }
    }
}

/// The name of an event stream: one aggregate instance, for example `device-<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    /// The stream of one registration request.
    pub fn registration(id: &crate::ids::RequestId) -> Self {
        Self(format!("registration-{id}"))
    }

    /// The stream of one device.
    pub fn device(id: &DeviceId) -> Self {
        Self(format!("device-{id}"))
    }

    /// The stream of one API key.
    pub fn api_key(id: &KeyId) -> Self {
        Self(format!("apikey-{id}"))
    }

    /// The stream of one session.
    pub fn session(id: &crate::ids::SessionId) -> Self {
        Self(format!("session-{id}"))
    }

    /// The stream of one organization.
    pub fn org(id: &crate::ids::OrgId) -> Self {
        Self(format!("org-{id}"))
    }

    /// The stream of a device's connections.
    pub fn presence(id: &DeviceId) -> Self {
        Self(format!("presence-{id}"))
    }

    /// Wraps a raw stream name read back from a store.
    pub fn from_raw(raw: String) -> Self {
        Self(raw)
    }

    /// The stream's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Facts about the request that caused a batch of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Who caused them.
    pub actor: Actor,
    /// The address the request came from, when it came over the network.
    pub source_ip: Option<IpAddr>,
    /// Shared by every event one request caused.
    pub correlation_id: CorrelationId,
}

impl Metadata {
    /// Metadata for something m87 does by itself.
    pub fn system(component: &str) -> Self {
        Self {
            actor: Actor::System {
                component: component.to_owned(),
            },
            source_ip: None,
            correlation_id: CorrelationId::new(),
        }
    }
}

/// A stored event with everything known about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Unique, time-ordered id (UUIDv7); the bus uses it to drop duplicates.
    pub event_id: EventId,
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// Position within the stream, from 1.
    pub stream_version: u64,
    /// Position in the store's global order, from 1, assigned by the store.
    pub global_position: u64,
    /// When the store accepted it.
    pub recorded_at: DateTime<Utc>,
    /// Who caused it, from where, and as part of which request.
    pub metadata: Metadata,
    /// The schema version of the data as written.
    pub schema_version: u32,
    /// The event itself.
    pub event: DomainEvent,
}
