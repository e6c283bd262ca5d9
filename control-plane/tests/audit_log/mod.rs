//! Writing an event log by hand for the audit trail tests: events as a user caused them, and
//! one event appended at its stream's next version.

use m87_control_plane::store::{EventStore, StreamAppend};
use m87_events::{Actor, CorrelationId, DomainEvent, Metadata, StreamId};

/// Metadata of an event `email` caused, from 192.0.2.7.
pub fn by(email: &str) -> Metadata {
    Metadata {
        actor: Actor::User {
            email: email.parse().unwrap(),
            key_id: None,
            subject: None,
        },
        source_ip: Some("192.0.2.7".parse().unwrap()),
        correlation_id: CorrelationId::new(),
    }
}

/// Appends `event` to `stream` after its last event.
pub async fn append(log: &dyn EventStore, stream: StreamId, event: DomainEvent, meta: Metadata) {
    let version = log
        .read_stream(&stream)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e.stream_version);
    log.append(
        vec![StreamAppend {
            stream_id: stream,
            expected_version: version,
            events: vec![event],
        }],
        meta,
    )
    .await
    .unwrap();
}
