//! The SQLite read store: the read models' documents and the projections' checkpoints, in the
//! same database file as the event log (its own connection).

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::{blocking, open_database, unavailable};
use crate::store::StoreError;
use crate::store::read::{Change, ReadStore, parse_doc};

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
