//! Storage: the event store (the source of truth) and the read store (the projections' read
//! models), each behind a trait, with one implementation per backend.
//!
//! Event store appends are atomic across the streams of one batch and use optimistic concurrency: each
//! stream's expected version must equal its current version, or nothing is written and
//! [`StoreError::Conflict`] tells which stream moved. Every stored event gets a global position;
//! readers see positions in order with no gaps.
//!
//! Storage is grouped by backend, not by role: each backend's folder holds its event store and
//! its read store (the projections' documents and checkpoints), and the helpers they share.
//!
//! # Layout
//!
//! - here: the event store seam, [`EventStore`], and the envelope helpers every backend uses.
//! - [`audit`]: the audit-store seam, [`audit::AuditStore`] (the audit trail's entries).
//! - [`read`]: the read-store seam, [`ReadStore`], and the [`Change`]s projections write.
//! - [`sqlite`]: the single-machine backend (bundled SQLite, WAL).
//! - [`mongo`]: the fleet backend (MongoDB replica set), shared by several control planes.
//! - [`memory`]: the in-memory twin of both stores, for fast tests.
//! - [`deadline`]: a time limit on every call to a store of either kind.
//! - [`recordings`]: session recordings (asciicast blobs): files, GridFS, memory.
//! - `conformance` (tests only): the suite every event store passes.

pub mod audit;
pub mod deadline;
pub mod memory;
pub mod mongo;
pub mod read;
pub mod recordings;
pub mod sqlite;

pub use read::{Change, ReadStore};

#[cfg(test)]
pub(crate) mod conformance;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use m87_events::{DomainEvent, EventEnvelope, EventId, Metadata, StreamId};

/// Events to append to one stream.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    /// The stream.
    pub stream_id: StreamId,
    /// The version the caller last saw (0 for a new stream).
    pub expected_version: u64,
    /// The new events, in order.
    pub events: Vec<DomainEvent>,
}

/// Why the store refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream since the caller read it.
    #[error("stream {stream_id} is at version {actual}, not the expected {expected}")]
    Conflict {
        /// The stream that moved.
        stream_id: StreamId,
        /// What the caller expected.
        expected: u64,
        /// What it is.
        actual: u64,
    },
    /// The backend is unreachable or failed.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("stored event {position} cannot be decoded: {reason}")]
    Corrupt {
        /// Its global position.
        position: u64,
        /// Why.
        reason: String,
    },
}

/// The event store seam. Implemented by [`sqlite::SqliteStore`], [`memory::MemoryStore`] and
/// [`mongo::MongoStore`] (fleet mode); one conformance suite runs against each.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends all of `batch` atomically, or nothing.
    async fn append(
        &self,
        batch: Vec<StreamAppend>,
        metadata: Metadata,
    ) -> Result<Vec<EventEnvelope>, StoreError>;

    /// Every event of one stream, in stream order.
    async fn read_stream(&self, stream_id: &StreamId) -> Result<Vec<EventEnvelope>, StoreError>;

    /// Up to `limit` events with global position greater than `after`, in global order.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError>;

    /// The highest global position stored (0 when empty).
    async fn head(&self) -> Result<u64, StoreError>;
}

/// Builds the envelopes for a batch before it is written; positions are filled in by the store.
pub(crate) fn envelopes_for(
    batch: &[StreamAppend],
    metadata: &Metadata,
    now: DateTime<Utc>,
) -> Vec<EventEnvelope> {
    batch
        .iter()
        .flat_map(|append| {
            append
                .events
                .iter()
                .enumerate()
                .map(move |(i, event)| EventEnvelope {
                    event_id: EventId::new(),
                    stream_id: append.stream_id.clone(),
                    stream_version: append.expected_version + i as u64 + 1,
                    global_position: 0,
                    recorded_at: now,
                    metadata: metadata.clone(),
                    schema_version: DomainEvent::current_version(event.event_type()),
                    event: event.clone(),
                })
        })
        .collect()
}

/// Decodes stored parts into an envelope, upcasting old versions.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_envelope(
    position: u64,
    event_id: &str,
    stream_id: String,
    stream_version: u64,
    event_type: &str,
    schema_version: u32,
    data: &str,
    metadata: &str,
    recorded_at: &str,
) -> Result<EventEnvelope, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let data: serde_json::Value = serde_json::from_str(data).map_err(|e| corrupt(e.to_string()))?;
    let (version, data) = m87_migrations::upcast::upcast(event_type, schema_version, data);
    let event =
        DomainEvent::decode(event_type, version, data).map_err(|e| corrupt(e.to_string()))?;
    Ok(EventEnvelope {
        event_id: event_id
            .parse()
            .map_err(|e: m87_events::ParseIdError| corrupt(e.to_string()))?,
        stream_id: StreamId::from_raw(stream_id),
        stream_version,
        global_position: position,
        recorded_at: DateTime::parse_from_rfc3339(recorded_at)
            .map_err(|e| corrupt(e.to_string()))?
            .with_timezone(&Utc),
        metadata: serde_json::from_str(metadata).map_err(|e| corrupt(e.to_string()))?,
        schema_version,
        event,
    })
}
