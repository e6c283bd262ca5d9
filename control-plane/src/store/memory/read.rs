//! The in-memory read store, for fast tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use crate::store::StoreError;
use crate::store::read::{Change, ReadStore};

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
