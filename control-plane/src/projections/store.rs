//! The read store: JSON documents in named collections, plus one checkpoint per projection.
//!
//! Projections write through [`ReadStore::commit`], which applies a batch of changes and moves
//! the projection's checkpoint in one transaction, and does nothing when the checkpoint is
//! already at or past the event: applying an event twice has the effect of applying it once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::store::StoreError;
use crate::store::sqlite::{blocking, open_database, unavailable};

/// One change to a read model.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or replace a document.
    Put {
        /// Its collection.
        collection: &'static str,
        /// Its id.
        id: String,
        /// Its content.
        doc: Value,
    },
    /// Remove a document (no error if absent).
    Delete {
        /// Its collection.
        collection: &'static str,
        /// Its id.
        id: String,
    },
}

/// The read-store seam: SQLite on one machine, MongoDB in a fleet, memory in tests.
#[async_trait]
pub trait ReadStore: Send + Sync + 'static {
    /// One document.
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, StoreError>;
    /// Every document of a collection, ordered by id.
    async fn list(&self, collection: &str) -> Result<Vec<Value>, StoreError>;
    /// The global position up to which `projection` has applied events (0: none).
    async fn checkpoint(&self, projection: &str) -> Result<u64, StoreError>;
    /// Applies `changes` and sets the checkpoint to `position`, atomically, unless the
    /// checkpoint is already at or past `position`. Returns whether it applied them.
    async fn commit(
        &self,
        projection: &str,
        position: u64,
        changes: Vec<Change>,
    ) -> Result<bool, StoreError>;
    /// Empties `collections` and resets the projection's checkpoint to 0, atomically.
    async fn reset(&self, projection: &str, collections: &[&'static str])
    -> Result<(), StoreError>;
}

/// The SQLite read store (same database file as the event log, its own connection).
#[derive(Debug, Clone)]
pub struct SqliteReadStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteReadStore {
    /// Opens the read store in the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Arc::new(Mutex::new(open_database(path)?)),
        })
    }
}

/// A read-model document stored as JSON text.
pub(crate) fn parse_doc(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        position: 0,
        reason: format!("read model document: {e}"),
    })
}

#[async_trait]
impl ReadStore for SqliteReadStore {
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let (collection, id) = (collection.to_owned(), id.to_owned());
        blocking(&self.conn, move |conn| {
            let text: Option<String> = conn
                .query_row(
                    "SELECT doc FROM read_models WHERE collection = ?1 AND id = ?2",
                    params![collection, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            text.as_deref().map(parse_doc).transpose()
        })
        .await
    }

    async fn list(&self, collection: &str) -> Result<Vec<Value>, StoreError> {
        let collection = collection.to_owned();
        blocking(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT doc FROM read_models WHERE collection = ?1 ORDER BY id")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([collection], |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            rows.map(|r| r.map_err(unavailable).and_then(|t| parse_doc(&t)))
                .collect()
        })
        .await
    }

    async fn checkpoint(&self, projection: &str) -> Result<u64, StoreError> {
        let projection = projection.to_owned();
        blocking(&self.conn, move |conn| {
            let position: Option<i64> = conn
                .query_row(
                    "SELECT position FROM projection_checkpoints WHERE name = ?1",
                    [projection],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            Ok(position.unwrap_or(0) as u64)
        })
        .await
    }

    async fn commit(
        &self,
        projection: &str,
        position: u64,
        changes: Vec<Change>,
    ) -> Result<bool, StoreError> {
        let projection = projection.to_owned();
        blocking(&self.conn, move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT position FROM projection_checkpoints WHERE name = ?1",
                    [&projection],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            if current.unwrap_or(0) as u64 >= position {
                return Ok(false);
            }
            for change in changes {
                match change {
                    Change::Put {
                        collection,
                        id,
                        doc,
                    } => tx.execute(
                        "INSERT INTO read_models (collection, id, doc) VALUES (?1, ?2, ?3)
                         ON CONFLICT (collection, id) DO UPDATE SET doc = excluded.doc",
                        params![collection, id, doc.to_string()],
                    ),
                    Change::Delete { collection, id } => tx.execute(
                        "DELETE FROM read_models WHERE collection = ?1 AND id = ?2",
                        params![collection, id],
                    ),
                }
                .map_err(unavailable)?;
            }
            tx.execute(
                "INSERT INTO projection_checkpoints (name, position) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                params![projection, position as i64],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn reset(
        &self,
        projection: &str,
        collections: &[&'static str],
    ) -> Result<(), StoreError> {
        let projection = projection.to_owned();
        let collections = collections.to_vec();
        blocking(&self.conn, move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            for c in collections {
                tx.execute("DELETE FROM read_models WHERE collection = ?1", [c])
                    .map_err(unavailable)?;
            }
            tx.execute(
                "DELETE FROM projection_checkpoints WHERE name = ?1",
                [projection],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }
}

/// The in-memory read store, for fast tests.
#[derive(Debug, Default)]
pub struct MemoryReadStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    docs: HashMap<String, BTreeMap<String, Value>>,
    checkpoints: HashMap<String, u64>,
}

impl MemoryReadStore {
    /// An empty read store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ReadStore for MemoryReadStore {
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        Ok(self
            .lock()
            .docs
            .get(collection)
            .and_then(|c| c.get(id))
            .cloned())
    }

    async fn list(&self, collection: &str) -> Result<Vec<Value>, StoreError> {
        Ok(self
            .lock()
            .docs
            .get(collection)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn checkpoint(&self, projection: &str) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .checkpoints
            .get(projection)
            .copied()
            .unwrap_or(0))
    }

    async fn commit(
        &self,
        projection: &str,
        position: u64,
        changes: Vec<Change>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.checkpoints.get(projection).copied().unwrap_or(0) >= position {
            return Ok(false);
        }
        for change in changes {
            match change {
                Change::Put {
                    collection,
                    id,
                    doc,
                } => {
                    inner
                        .docs
                        .entry(collection.to_owned())
                        .or_default()
                        .insert(id, doc);
                }
                Change::Delete { collection, id } => {
                    if let Some(c) = inner.docs.get_mut(collection) {
                        c.remove(&id);
                    }
                }
            }
        }
        inner.checkpoints.insert(projection.to_owned(), position);
        Ok(true)
    }

    async fn reset(
        &self,
        projection: &str,
        collections: &[&'static str],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for c in collections {
            inner.docs.remove(*c);
        }
        inner.checkpoints.remove(projection);
        Ok(())
    }
}
