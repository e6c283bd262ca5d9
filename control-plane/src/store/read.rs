//! The read store: JSON documents in named collections, plus one checkpoint per projection.
//!
//! Projections write through [`ReadStore::commit`], which applies a batch of changes and moves
//! the projection's checkpoint in one transaction, and does nothing when the checkpoint is
//! already at or past the event: applying an event twice has the effect of applying it once.
//!
//! The backends live with their event stores, in `sqlite/read.rs`, `mongo/read.rs` and
//! `memory/read.rs`.

use async_trait::async_trait;
use serde_json::Value;

use super::StoreError;

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

/// A read-model document stored as JSON text.
pub(super) fn parse_doc(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        position: 0,
        reason: format!("read model document: {e}"),
    })
}
