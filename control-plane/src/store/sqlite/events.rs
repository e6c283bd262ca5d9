//! The SQLite event store: one file in the data directory, WAL journal, full sync.
//!
//! SQLite has one writer at a time, so global positions (the `INTEGER PRIMARY KEY`) are committed
//! in order and a reader never sees a gap. Stream versions are guarded twice: by the expected
//! version check inside the write transaction and by the unique index on (stream, version).

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use m87_events::{EventEnvelope, Metadata, StreamId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{blocking, open_database, unavailable};
use crate::store::{EventStore, StoreError, StreamAppend, decode_envelope, envelopes_for};

/// The SQLite event store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens the store in the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Arc::new(Mutex::new(open_database(path)?)),
        })
    }
}

const SELECT: &str = "SELECT global_position, event_id, stream_id, stream_version, event_type,
                             schema_version, data, metadata, recorded_at FROM events";

fn row_to_envelope(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<EventEnvelope, StoreError>> {
    let position: i64 = row.get(0)?;
    let event_id: String = row.get(1)?;
    let stream_id: String = row.get(2)?;
    let stream_version: i64 = row.get(3)?;
    let event_type: String = row.get(4)?;
    let schema_version: u32 = row.get(5)?;
    let data: String = row.get(6)?;
    let metadata: String = row.get(7)?;
    let recorded_at: String = row.get(8)?;
    Ok(decode_envelope(
        position as u64,
        &event_id,
        stream_id,
        stream_version as u64,
        &event_type,
        schema_version,
        &data,
        &metadata,
        &recorded_at,
    ))
}

fn collect(
    rows: impl Iterator<Item = rusqlite::Result<Result<EventEnvelope, StoreError>>>,
) -> Result<Vec<EventEnvelope>, StoreError> {
    rows.map(|r| r.map_err(unavailable).and_then(|e| e))
        .collect()
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        batch: Vec<StreamAppend>,
        metadata: Metadata,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        blocking(&self.conn, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            for append in &batch {
                let actual: i64 = tx
                    .query_row(
                        "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?1",
                        [append.stream_id.as_str()],
                        |r| r.get(0),
                    )
                    .map_err(unavailable)?;
                if actual as u64 != append.expected_version {
                    return Err(StoreError::Conflict {
                        stream_id: append.stream_id.clone(),
                        expected: append.expected_version,
                        actual: actual as u64,
                    });
                }
            }
            let meta_json = serde_json::to_string(&metadata)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let mut envelopes = envelopes_for(&batch, &metadata, chrono::Utc::now());
            {
                let mut insert = tx
                    .prepare(
                        "INSERT INTO events (event_id, stream_id, stream_version, event_type,
                                             schema_version, data, metadata, recorded_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .map_err(unavailable)?;
                for env in &mut envelopes {
                    let inserted = insert.execute(params![
                        env.event_id.to_string(),
                        env.stream_id.as_str(),
                        env.stream_version as i64,
                        env.event.event_type(),
                        env.schema_version,
                        env.event.data().to_string(),
                        meta_json,
                        env.recorded_at.to_rfc3339(),
                    ]);
                    match inserted {
                        Ok(_) => env.global_position = tx.last_insert_rowid() as u64,
                        Err(rusqlite::Error::SqliteFailure(f, _))
                            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                        {
                            return Err(StoreError::Conflict {
                                stream_id: env.stream_id.clone(),
                                expected: env.stream_version - 1,
                                actual: env.stream_version,
                            });
                        }
                        Err(e) => return Err(unavailable(e)),
                    }
                }
            }
            tx.commit().map_err(unavailable)?;
            Ok(envelopes)
        })
        .await
    }

    async fn read_stream(&self, stream_id: &StreamId) -> Result<Vec<EventEnvelope>, StoreError> {
        let stream_id = stream_id.clone();
        blocking(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "{SELECT} WHERE stream_id = ?1 ORDER BY stream_version"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([stream_id.as_str()], row_to_envelope)
                .map_err(unavailable)?;
            collect(rows)
        })
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        blocking(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "{SELECT} WHERE global_position > ?1 ORDER BY global_position LIMIT ?2"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after as i64, limit as i64], row_to_envelope)
                .map_err(unavailable)?;
            collect(rows)
        })
        .await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        blocking(&self.conn, |conn| {
            let head: Option<i64> = conn
                .query_row("SELECT MAX(global_position) FROM events", [], |r| r.get(0))
                .optional()
                .map_err(unavailable)?
                .flatten();
            Ok(head.unwrap_or(0) as u64)
        })
        .await
    }
}
