//! The MongoDB read store (fleet mode).
//!
//! Every read-model document is one MongoDB document in `read_models`:
//! `{collection, id, doc}`, unique on (`collection`, `id`), with `doc` kept as JSON text like the
//! SQLite store does (lossless for any JSON, including keys that MongoDB reserves such as `$x`
//! or `a.b`). Checkpoints are `{_id: projection, position}` in `projection_checkpoints`.
//!
//! [`ReadStore::commit`] runs in one transaction: it reads the checkpoint, applies the changes
//! and moves the checkpoint, or aborts when the checkpoint is already at or past the position.
//! Two control planes committing the same projection at once both write its checkpoint document,
//! so MongoDB lets one commit and the other retries, sees the moved checkpoint and does nothing.

use async_trait::async_trait;
use m87_migrations::mongo::{CHECKPOINTS_COLLECTION, READ_MODELS_COLLECTION};
use mongodb::bson::{Bson, Document, doc};
use mongodb::{Client, ClientSession, Collection, Database};
use serde_json::Value;

use super::transaction::{BodyError, Outcome, Transaction};
use super::{collection, migrate, unavailable};
use crate::store::StoreError;
use crate::store::read::{Change, ReadStore};

/// The MongoDB read store. Cheap to clone; clones share the client's connection pool.
#[derive(Debug, Clone)]
pub struct MongoReadStore {
    client: Client,
    docs: Collection<Document>,
    checkpoints: Collection<Document>,
}

impl MongoReadStore {
    /// Opens the read store in `db` after bringing its schema up to date (the same database as
    /// the event store's, usually).
    pub async fn open(db: &Database) -> Result<Self, StoreError> {
        migrate(db).await?;
        Ok(Self {
            client: db.client().clone(),
            docs: collection(db, READ_MODELS_COLLECTION),
            checkpoints: collection(db, CHECKPOINTS_COLLECTION),
        })
    }

    async fn commit_attempt(
        &self,
        session: &mut ClientSession,
        projection: &str,
        position: i64,
        changes: &[Change],
    ) -> Result<Outcome<bool>, BodyError> {
        let current = self
            .checkpoints
            .find_one(doc! { "_id": projection })
            .session(&mut *session)
            .await?;
        if current.as_ref().map_or(0, checkpoint_of) >= position {
            return Ok(Outcome::Abort(false));
        }
        for change in changes {
            match change {
                Change::Put {
                    collection,
                    id,
                    doc,
                } => {
                    self.docs
                        .replace_one(
                            doc! { "collection": *collection, "id": id },
                            doc! { "collection": *collection, "id": id, "doc": doc.to_string() },
                        )
                        .upsert(true)
                        .session(&mut *session)
                        .await?;
                }
                Change::Delete { collection, id } => {
                    self.docs
                        .delete_one(doc! { "collection": *collection, "id": id })
                        .session(&mut *session)
                        .await?;
                }
            }
        }
        self.checkpoints
            .update_one(
                doc! { "_id": projection },
                doc! { "$set": { "position": position } },
            )
            .upsert(true)
            .session(&mut *session)
            .await?;
        Ok(Outcome::Commit(true))
    }

    async fn reset_attempt(
        &self,
        session: &mut ClientSession,
        projection: &str,
        collections: &[&'static str],
    ) -> Result<Outcome<()>, BodyError> {
        self.docs
            .delete_many(doc! { "collection": { "$in": collections.to_vec() } })
            .session(&mut *session)
            .await?;
        self.checkpoints
            .delete_one(doc! { "_id": projection })
            .session(&mut *session)
            .await?;
        Ok(Outcome::Commit(()))
    }
}

fn checkpoint_of(doc: &Document) -> i64 {
    match doc.get("position") {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        _ => 0,
    }
}

fn parse_doc(doc: &Document) -> Result<Value, StoreError> {
    let text = doc.get_str("doc").map_err(|e| StoreError::Corrupt {
        position: 0,
        reason: format!("read model document: {e}"),
    })?;
    crate::store::read::parse_doc(text)
}

#[async_trait]
impl ReadStore for MongoReadStore {
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let found = self
            .docs
            .find_one(doc! { "collection": collection, "id": id })
            .await
            .map_err(|e| unavailable("reading a read model", &e))?;
        found.as_ref().map(parse_doc).transpose()
    }

    async fn list(&self, collection: &str) -> Result<Vec<Value>, StoreError> {
        let what = "listing a read model";
        let mut cursor = self
            .docs
            .find(doc! { "collection": collection })
            .sort(doc! { "id": 1 })
            .await
            .map_err(|e| unavailable(what, &e))?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(|e| unavailable(what, &e))? {
            let doc = cursor
                .deserialize_current()
                .map_err(|e| StoreError::Corrupt {
                    position: 0,
                    reason: format!("read model document: {e}"),
                })?;
            out.push(parse_doc(&doc)?);
        }
        Ok(out)
    }

    async fn checkpoint(&self, projection: &str) -> Result<u64, StoreError> {
        let found = self
            .checkpoints
            .find_one(doc! { "_id": projection })
            .await
            .map_err(|e| unavailable("reading a projection checkpoint", &e))?;
        Ok(found.as_ref().map_or(0, checkpoint_of).max(0) as u64)
    }

    async fn commit(
        &self,
        projection: &str,
        position: u64,
        changes: Vec<Change>,
    ) -> Result<bool, StoreError> {
        let position = i64::try_from(position).map_err(|_| {
            StoreError::Unavailable(format!("position {position} does not fit MongoDB's int64"))
        })?;
        let mut txn = Transaction::new(&self.client, "committing a projection");
        loop {
            let mut session = txn.begin().await?;
            let result = self
                .commit_attempt(&mut session, projection, position, &changes)
                .await;
            if let Some(applied) = txn.finish(session, result).await? {
                return Ok(applied);
            }
        }
    }

    async fn reset(
        &self,
        projection: &str,
        collections: &[&'static str],
    ) -> Result<(), StoreError> {
        let mut txn = Transaction::new(&self.client, "resetting a projection");
        loop {
            let mut session = txn.begin().await?;
            let result = self
                .reset_attempt(&mut session, projection, collections)
                .await;
            if let Some(()) = txn.finish(session, result).await? {
                return Ok(());
            }
        }
    }
}
