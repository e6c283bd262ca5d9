//! The MongoDB audit store (fleet mode): `audit` holds one document per event with `_id` the
//! global position; `audit_devices` and `audit_cursors` the devices' owners and the export
//! cursors.
//!
//! Every control plane folds the same log in the same order, and the fold is deterministic, so
//! two replicas folding at once compute the same entries. A batch is written in one
//! transaction: the entries after the head (as the transaction sees it; another replica may
//! have written some already), the session records it completes and the devices it records.
//! So another replica never reads a batch's session records without its entries (it would fold
//! the events before them with a later state), a replica that dies mid-batch leaves nothing
//! half written, and a session record is only replaced by one from a later event (`seq`), so a
//! replica that lags behind never puts back an older state.

use async_trait::async_trait;
use futures_util::TryStreamExt;
use m87_events::audit::{AuditRecord, GENESIS};
use m87_migrations::mongo::{
    AUDIT_COLLECTION, AUDIT_CURSORS_COLLECTION, AUDIT_DEVICES_COLLECTION, DUPLICATE_KEY,
};
use mongodb::bson::{Bson, Document, doc};
use mongodb::{Client, ClientSession, Collection, Database};

use super::transaction::{BodyError, Outcome, Transaction};
use super::{collection, migrate, unavailable};
use crate::store::StoreError;
use crate::store::audit::{
    AuditBatch, AuditQuery, AuditRow, AuditStore, DeviceInfo, StoredEntry, Visibility,
};

/// The MongoDB audit store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoAuditStore {
    client: Client,
    audit: Collection<Document>,
    devices: Collection<Document>,
    cursors: Collection<Document>,
}

impl MongoAuditStore {
    /// Opens the audit store in `db` after bringing its schema up to date.
    pub async fn open(db: &Database) -> Result<Self, StoreError> {
        migrate(db).await?;
        Ok(Self {
            client: db.client().clone(),
            audit: collection(db, AUDIT_COLLECTION),
            devices: collection(db, AUDIT_DEVICES_COLLECTION),
            cursors: collection(db, AUDIT_CURSORS_COLLECTION),
        })
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt {
        position: 0,
        reason: format!("audit document: {what}"),
    }
}

fn opt(v: &Option<String>) -> Bson {
    v.as_ref().map_or(Bson::Null, |s| Bson::String(s.clone()))
}

fn row_doc(row: &AuditRow) -> Result<Document, StoreError> {
    Ok(doc! {
        "_id": row.position as i64,
        "seq": row.seq as i64,
        "time_ms": row.record.time.timestamp_millis(),
        "listing": row.listing.code(),
        "device_id": opt(&row.device_id),
        "scope": opt(&row.scope),
        "user": opt(&row.user),
        "action": &row.record.action,
        "outcome": row.record.outcome.as_str(),
        "session_id": opt(&row.session_id),
        "entry": &row.entry,
        "prev_hash": &row.prev_hash,
        "hash": &row.hash,
        "record": serde_json::to_string(&row.record).map_err(|e| corrupt(&e.to_string()))?,
    })
}

fn record_of(d: &Document) -> Result<AuditRecord, StoreError> {
    let text = d.get_str("record").map_err(|e| corrupt(&e.to_string()))?;
    serde_json::from_str(text).map_err(|e| corrupt(&e.to_string()))
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().all(|w| w.code == DUPLICATE_KEY)),
        _ => false,
    }
}

/// The filter document of a query.
fn filter(q: &AuditQuery) -> Document {
    let mut f = Document::new();
    if q.wants_presence() {
        f.insert("listing", doc! { "$in": [1_i64, 2_i64] });
    } else {
        f.insert("listing", 1_i64);
    }
    if let Visibility::Scoped { scopes, user } = &q.visibility {
        f.insert(
            "$or",
            vec![
                doc! { "user": user },
                doc! { "scope": { "$in": scopes.clone() } },
            ],
        );
    }
    if let Some(d) = &q.device {
        f.insert("device_id", d);
    }
    if let Some(u) = &q.user {
        f.insert("user", u);
    }
    if !q.actions.is_empty() {
        f.insert("action", doc! { "$in": q.actions.clone() });
    }
    if let Some(o) = q.outcome {
        f.insert("outcome", o.as_str());
    }
    let mut time = Document::new();
    if let Some(t) = q.since {
        time.insert("$gte", t.timestamp_millis());
    }
    if let Some(t) = q.until {
        time.insert("$lt", t.timestamp_millis());
    }
    if !time.is_empty() {
        f.insert("time_ms", time);
    }
    if let Some(b) = q.before {
        f.insert("_id", doc! { "$lt": b as i64 });
    }
    if let Some(c) = q.changed_after {
        f.insert("seq", doc! { "$gt": c as i64 });
    }
    f
}

/// How often a commit starts again because another replica appended the same entries first.
const MAX_COLLISIONS: u32 = 20;

impl MongoAuditStore {
    /// One attempt at writing a batch in `session`'s transaction: only the entries after the
    /// head as this transaction sees it (another replica may have appended the same ones), the
    /// session records only where they are older than this batch's, and the devices.
    async fn commit_attempt(
        &self,
        session: &mut ClientSession,
        batch: &AuditBatch,
    ) -> Result<Outcome<()>, BodyError> {
        let head = self
            .audit
            .find_one(doc! {})
            .sort(doc! { "_id": -1 })
            .projection(doc! { "_id": 1 })
            .session(&mut *session)
            .await?
            .map_or(Ok(0), |d| {
                d.get_i64("_id").map_err(|e| corrupt(&e.to_string()))
            })?;
        let docs = batch
            .rows
            .iter()
            .filter(|r| r.position as i64 > head)
            .map(row_doc)
            .collect::<Result<Vec<_>, _>>()?;
        if docs.is_empty() {
            // Another replica folded the same events and committed all of it.
            return Ok(Outcome::Abort(()));
        }
        for (sid, record, seq) in &batch.sessions {
            let text = serde_json::to_string(record).map_err(|e| corrupt(&e.to_string()))?;
            let seq = *seq as i64;
            // A replica behind another never puts back an older state of a record.
            self.audit
                .update_one(
                    doc! { "_id": record.position as i64, "session_id": sid,
                           "seq": { "$lt": seq } },
                    doc! { "$set": { "record": text, "outcome": record.outcome.as_str(), "seq": seq } },
                )
                .session(&mut *session)
                .await?;
        }
        for (id, info) in &batch.devices {
            let text = serde_json::to_string(info).map_err(|e| corrupt(&e.to_string()))?;
            self.devices
                .replace_one(doc! { "_id": id }, doc! { "_id": id, "doc": text })
                .upsert(true)
                .session(&mut *session)
                .await?;
        }
        self.audit
            .insert_many(docs)
            .ordered(true)
            .session(&mut *session)
            .await?;
        Ok(Outcome::Commit(()))
    }
}

#[async_trait]
impl AuditStore for MongoAuditStore {
    async fn head(&self) -> Result<(u64, String), StoreError> {
        let last = self
            .audit
            .find_one(doc! {})
            .sort(doc! { "_id": -1 })
            .projection(doc! { "hash": 1 })
            .await
            .map_err(|e| unavailable("reading the audit head", &e))?;
        Ok(match last {
            Some(d) => (
                d.get_i64("_id").map_err(|e| corrupt(&e.to_string()))? as u64,
                d.get_str("hash")
                    .map_err(|e| corrupt(&e.to_string()))?
                    .to_owned(),
            ),
            None => (0, GENESIS.to_owned()),
        })
    }

    async fn device(&self, device_id: &str) -> Result<Option<DeviceInfo>, StoreError> {
        let found = self
            .devices
            .find_one(doc! { "_id": device_id })
            .await
            .map_err(|e| unavailable("reading an audited device", &e))?;
        found
            .map(|d| {
                let text = d.get_str("doc").map_err(|e| corrupt(&e.to_string()))?;
                serde_json::from_str(text).map_err(|e| corrupt(&e.to_string()))
            })
            .transpose()
    }

    async fn session(&self, session_id: &str) -> Result<Option<AuditRecord>, StoreError> {
        let found = self
            .audit
            .find_one(doc! { "session_id": session_id, "listing": 1_i64 })
            .sort(doc! { "_id": 1 })
            .await
            .map_err(|e| unavailable("reading a session's audit record", &e))?;
        found.as_ref().map(record_of).transpose()
    }

    async fn commit(&self, batch: AuditBatch) -> Result<(), StoreError> {
        let mut txn = Transaction::new(&self.client, "appending to the audit trail");
        let mut collisions = 0_u32;
        loop {
            let mut session = txn.begin().await?;
            let result = self.commit_attempt(&mut session, &batch).await;
            // Another replica committed entries of this batch after this snapshot: read the
            // head again (its entries are the same ones) and write only what follows.
            if let Err(BodyError::Mongo(e)) = &result
                && is_duplicate(e)
                && collisions < MAX_COLLISIONS
            {
                collisions += 1;
                let _ = session.abort_transaction().await;
                continue;
            }
            if let Some(()) = txn.finish(session, result).await? {
                return Ok(());
            }
        }
    }

    async fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let sort = if q.changed_after.is_some() {
            doc! { "seq": 1 }
        } else {
            doc! { "_id": -1 }
        };
        let docs: Vec<Document> = self
            .audit
            .find(filter(q))
            .sort(sort)
            .limit(q.limit as i64)
            .projection(doc! { "record": 1 })
            .await
            .map_err(|e| unavailable("querying the audit trail", &e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("querying the audit trail", &e))?;
        docs.iter().map(record_of).collect()
    }

    async fn entries(&self, after: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError> {
        let docs: Vec<Document> = self
            .audit
            .find(doc! { "_id": { "$gt": after as i64 } })
            .sort(doc! { "_id": 1 })
            .limit(limit as i64)
            .projection(doc! { "entry": 1, "prev_hash": 1, "hash": 1 })
            .await
            .map_err(|e| unavailable("reading audit entries", &e))?
            .try_collect()
            .await
            .map_err(|e| unavailable("reading audit entries", &e))?;
        docs.iter()
            .map(|d| {
                let s = |k: &str| {
                    d.get_str(k)
                        .map(str::to_owned)
                        .map_err(|e| corrupt(&e.to_string()))
                };
                Ok(StoredEntry {
                    position: d.get_i64("_id").map_err(|e| corrupt(&e.to_string()))? as u64,
                    entry: s("entry")?,
                    prev_hash: s("prev_hash")?,
                    hash: s("hash")?,
                })
            })
            .collect()
    }

    async fn first_since(
        &self,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<u64>, StoreError> {
        let first = self
            .audit
            .find_one(doc! { "time_ms": { "$gte": time.timestamp_millis() } })
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|e| unavailable("finding the first audit entry since a time", &e))?;
        Ok(first.and_then(|d| d.get_i64("_id").ok()).map(|p| p as u64))
    }

    async fn cursor(&self, sink: &str) -> Result<Option<String>, StoreError> {
        let found = self
            .cursors
            .find_one(doc! { "_id": sink })
            .await
            .map_err(|e| unavailable("reading an export cursor", &e))?;
        Ok(found.and_then(|d| d.get_str("cursor").ok().map(str::to_owned)))
    }

    async fn save_cursor(&self, sink: &str, cursor: &str) -> Result<(), StoreError> {
        self.cursors
            .replace_one(doc! { "_id": sink }, doc! { "_id": sink, "cursor": cursor })
            .upsert(true)
            .await
            .map_err(|e| unavailable("saving an export cursor", &e))?;
        Ok(())
    }
}
