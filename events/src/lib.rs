//! Shared contracts of m87, with no I/O: the domain events and their envelope, the REST request
//! and response types, and validated ids, names and scopes.
//!
//! # Layout
//!
//! - [`ids`]: validated newtypes (`DeviceId`, `Scope`, `Email`, `RequestId`, …).
//! - [`domain`]: the domain events and their payloads.
//! - [`envelope`]: the envelope a stored event travels in (position, actor, correlation).
//! - [`api`]: REST request and response bodies and the one error body format.
//! - [`tunnel`]: the tunnel wire protocol: frames and their codec, control messages, channels.
//! - [`token`]: Ed25519-signed session tokens (signing and offline verification).
//! - [`admission`]: session admission as a pure decision (token, replay guard, revocations)
//!   and the refusal codes.
//! - [`audit`]: the audit trail's hash chain and the action and outcome names of events.
//! - [`secret`]: constant-time comparison of shared secrets.
//! - [`policy`]: the session-recording policy of organizations and devices (REST bodies).
//! - [`release`]: the signed release manifest `m87 update` and `install.sh` read.
//! - [`asciicast`]: terminal recordings as asciicast v2: a capped writer and a reader.

pub mod admission;
pub mod api;
pub mod asciicast;
pub mod audit;
pub mod domain;
pub mod envelope;
pub mod ids;
pub mod policy;
pub mod release;
pub mod secret;
pub mod token;
pub mod tunnel;

pub use domain::{DomainEvent, KeyKind, Role, SystemInfo};
pub use envelope::{Actor, EventEnvelope, Metadata, StreamId};
pub use ids::{
    CorrelationId, DeviceId, DeviceName, Email, EventId, KeyId, OrgId, ParseIdError, RequestId,
    Scope, ScopeKind, SessionId,
};
