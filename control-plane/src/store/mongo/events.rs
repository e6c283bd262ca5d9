//! The MongoDB event store: one document per event, in a gap-free global order.
//!
//! # Layout
//!
//! One document per event in `events`: `_id` is the event id, plus `global_position`,
//! `stream_id`, `stream_version`, `event_type`, `schema_version`, and `data`, `metadata` and
//! `recorded_at` as the same JSON / RFC 3339 text the SQLite store keeps (lossless: a `u64` in the
//! data or a nanosecond timestamp survives, which BSON numbers and dates would not). A unique index
//! on (`stream_id`, `stream_version`) guards stream versions and a unique index on
//! `global_position` serves [`EventStore::read_all`] (both made by
//! [`m87_migrations::mongo`]).
//!
//! # The global order
//!
//! Every append is one multi-document transaction (snapshot read concern, majority write
//! concern) that (1) checks each stream's current version against the expected one, (2)
//! increments the single counter document `counters/global_position` with `$inc` by the number
//! of events, which hands the batch the positions `value - n + 1 ..= value`, and (3) inserts the
//! events. Two transactions that both increment the counter write the same document, so MongoDB
//! lets at most one of them commit: the other gets a `WriteConflict` (labelled
//! `TransientTransactionError`) whether the winner is still open or committed after the loser's
//! snapshot, and retries from the start with a new snapshot after a jittered backoff. Hence a
//! transaction can only obtain positions above N after the transaction holding N has committed,
//! and it becomes visible no earlier than its own commit: the set of visible positions is always
//! a gap-free prefix `1..=K`. A reader that has seen position N and asks for everything after N
//! can therefore never miss an event that shows up later with a smaller position. Reads use
//! majority read concern, so nothing a reader sees can be rolled back by a failover either.
//!
//! A failed stream-version check or a duplicate (`stream_id`, `stream_version`) (code 11000)
//! aborts the transaction and is [`StoreError::Conflict`]; nothing is written. A server that
//! cannot be reached is [`StoreError::Unavailable`].

use async_trait::async_trait;
use m87_events::{EventEnvelope, Metadata, StreamId};
use m87_migrations::mongo::{
    COUNTERS_COLLECTION, DUPLICATE_KEY, EVENTS_COLLECTION, GLOBAL_POSITION_COUNTER, error_code,
};
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::ReturnDocument;
use mongodb::{Client, ClientSession, Collection, Database};

use super::transaction::{BodyError, Outcome, Transaction};
use super::{collection, connect_database, migrate, unavailable};
use crate::store::{EventStore, StoreError, StreamAppend, decode_envelope, envelopes_for};

/// The MongoDB event store. Cheap to clone; clones share the client's connection pool.
#[derive(Debug, Clone)]
pub struct MongoStore {
    client: Client,
    events: Collection<Document>,
    counters: Collection<Document>,
}

impl MongoStore {
    /// Connects to `uri`, selects `database` and brings its schema up to date.
    pub async fn connect(uri: &str, database: &str) -> Result<Self, StoreError> {
        Self::open(&connect_database(uri, database).await?).await
    }

    /// Opens the store in `db` after bringing its schema up to date. The read store can share
    /// the same [`Database`] (and so the same connection pool).
    pub async fn open(db: &Database) -> Result<Self, StoreError> {
        migrate(db).await?;
        Ok(Self {
            client: db.client().clone(),
            events: collection(db, EVENTS_COLLECTION),
            counters: collection(db, COUNTERS_COLLECTION),
        })
    }

    /// The current version of `stream` (0 when it has no events), inside `session`'s
    /// transaction when given.
    async fn stream_version(
        &self,
        stream_id: &StreamId,
        session: Option<&mut ClientSession>,
    ) -> Result<u64, MongoError> {
        let find = self
            .events
            .find_one(doc! { "stream_id": stream_id.as_str() })
            .sort(doc! { "stream_version": -1 })
            .projection(doc! { "stream_version": 1 });
        let newest = match session {
            Some(session) => find.session(session).await?,
            None => find.await?,
        };
        Ok(newest
            .and_then(|d| int_field(&d, "stream_version"))
            .map_or(0, |v| v.max(0) as u64))
    }

    /// One attempt of an append inside `session`'s transaction; returns the last position.
    async fn append_attempt(
        &self,
        session: &mut ClientSession,
        batch: &[StreamAppend],
        envelopes: &[EventEnvelope],
        meta_json: &str,
    ) -> Result<Outcome<i64>, BodyError> {
        for append in batch {
            let actual = self
                .stream_version(&append.stream_id, Some(&mut *session))
                .await?;
            if actual != append.expected_version {
                return Err(BodyError::Store(StoreError::Conflict {
                    stream_id: append.stream_id.clone(),
                    expected: append.expected_version,
                    actual,
                }));
            }
        }
        if envelopes.is_empty() {
            return Ok(Outcome::Abort(0));
        }
        let count = to_i64(envelopes.len() as u64, "batch size")?;
        let counter = self
            .counters
            .find_one_and_update(
                doc! { "_id": GLOBAL_POSITION_COUNTER },
                doc! { "$inc": { "value": count } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *session)
            .await?;
        let last = counter
            .as_ref()
            .and_then(|d| int_field(d, "value"))
            .ok_or_else(|| {
                StoreError::Unavailable(
                    "the global position counter document has no integer value".to_owned(),
                )
            })?;
        let docs = envelopes
            .iter()
            .zip(last - count + 1..)
            .map(|(env, position)| event_document(env, position, meta_json))
            .collect::<Result<Vec<_>, _>>()?;
        match self.events.insert_many(docs).session(&mut *session).await {
            Ok(_) => Ok(Outcome::Commit(last)),
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => {
                let Some(env) = envelopes.get(failed_index(&e)).or(envelopes.first()) else {
                    return Err(e.into());
                };
                let expected = batch
                    .iter()
                    .find(|a| a.stream_id == env.stream_id)
                    .map_or(env.stream_version - 1, |a| a.expected_version);
                let actual = self
                    .stream_version(&env.stream_id, None)
                    .await
                    .unwrap_or(env.stream_version);
                Err(BodyError::Store(StoreError::Conflict {
                    stream_id: env.stream_id.clone(),
                    expected,
                    actual,
                }))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn int_field(doc: &Document, field: &str) -> Option<i64> {
    match doc.get(field)? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        _ => None,
    }
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::Unavailable(format!("{what} {value} does not fit MongoDB's int64"))
    })
}

fn event_document(
    env: &EventEnvelope,
    position: i64,
    metadata: &str,
) -> Result<Document, StoreError> {
    Ok(doc! {
        "_id": env.event_id.to_string(),
        "global_position": position,
        "stream_id": env.stream_id.as_str(),
        "stream_version": to_i64(env.stream_version, "stream version")?,
        "event_type": env.event.event_type(),
        "schema_version": i64::from(env.schema_version),
        "data": env.event.data().to_string(),
        "metadata": metadata,
        "recorded_at": env.recorded_at.to_rfc3339(),
    })
}

fn decode(doc: &Document) -> Result<EventEnvelope, StoreError> {
    let position = int_field(doc, "global_position")
        .and_then(|p| u64::try_from(p).ok())
        .ok_or_else(|| StoreError::Corrupt {
            position: 0,
            reason: format!(
                "event document {:?} has no valid global_position",
                doc.get("_id")
            ),
        })?;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let text = |field: &str| {
        doc.get_str(field)
            .map_err(|e| corrupt(format!("field {field}: {e}")))
    };
    let number = |field: &str| {
        int_field(doc, field)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| corrupt(format!("field {field} is not a non-negative integer")))
    };
    let schema_version = u32::try_from(number("schema_version")?)
        .map_err(|e| corrupt(format!("field schema_version: {e}")))?;
    decode_envelope(
        position,
        text("_id")?,
        text("stream_id")?.to_owned(),
        number("stream_version")?,
        text("event_type")?,
        schema_version,
        text("data")?,
        text("metadata")?,
        text("recorded_at")?,
    )
}

async fn collect(
    cursor: mongodb::error::Result<mongodb::Cursor<Document>>,
    what: &str,
) -> Result<Vec<EventEnvelope>, StoreError> {
    let mut cursor = cursor.map_err(|e| unavailable(what, &e))?;
    let mut out = Vec::new();
    while cursor.advance().await.map_err(|e| unavailable(what, &e))? {
        let doc = cursor
            .deserialize_current()
            .map_err(|e| StoreError::Corrupt {
                position: 0,
                reason: format!("unreadable event document: {e}"),
            })?;
        out.push(decode(&doc)?);
    }
    Ok(out)
}

/// The index in the batch of the event whose insert failed with a duplicate key.
fn failed_index(e: &MongoError) -> usize {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errors| errors.iter().find(|w| w.code == DUPLICATE_KEY))
            .map_or(0, |w| w.index),
        _ => 0,
    }
}

#[async_trait]
impl EventStore for MongoStore {
    async fn append(
        &self,
        batch: Vec<StreamAppend>,
        metadata: Metadata,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let meta_json = serde_json::to_string(&metadata)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode metadata: {e}")))?;
        let mut envelopes = envelopes_for(&batch, &metadata, chrono::Utc::now());
        let count = envelopes.len() as u64;
        let mut txn = Transaction::new(&self.client, "appending events");
        let last = loop {
            let mut session = txn.begin().await?;
            let result = self
                .append_attempt(&mut session, &batch, &envelopes, &meta_json)
                .await;
            if let Some(last) = txn.finish(session, result).await? {
                break last;
            }
        };
        let first = (last as u64 + 1).saturating_sub(count);
        for (env, position) in envelopes.iter_mut().zip(first..) {
            env.global_position = position;
        }
        Ok(envelopes)
    }

    async fn read_stream(&self, stream_id: &StreamId) -> Result<Vec<EventEnvelope>, StoreError> {
        let cursor = self
            .events
            .find(doc! { "stream_id": stream_id.as_str() })
            .sort(doc! { "stream_version": 1 })
            .await;
        collect(cursor, "reading a stream").await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new()); // MongoDB reads a limit of 0 as "no limit"
        }
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let cursor = self
            .events
            .find(doc! { "global_position": { "$gt": after } })
            .sort(doc! { "global_position": 1 })
            .limit(limit)
            .await;
        collect(cursor, "reading the event log").await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let newest = self
            .events
            .find_one(doc! {})
            .sort(doc! { "global_position": -1 })
            .projection(doc! { "global_position": 1 })
            .await
            .map_err(|e| unavailable("reading the head of the event log", &e))?;
        Ok(newest
            .and_then(|d| int_field(&d, "global_position"))
            .map_or(0, |p| p.max(0) as u64))
    }
}
