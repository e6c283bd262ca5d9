//! The in-memory event store, for fast tests.

use std::sync::Mutex;

use async_trait::async_trait;
use m87_events::{EventEnvelope, Metadata, StreamId};

use crate::store::{EventStore, StoreError, StreamAppend, envelopes_for};

/// Keeps every event in a vector, behind a mutex.
#[derive(Debug, Default)]
pub struct MemoryStore {
    events: Mutex<Vec<EventEnvelope>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<EventEnvelope>> {
        // A panic while holding the lock cannot leave a half-appended batch: appends build the
        // whole batch before pushing it.
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn stream_version(events: &[EventEnvelope], stream_id: &StreamId) -> u64 {
    events
        .iter()
        .filter(|e| &e.stream_id == stream_id)
        .map(|e| e.stream_version)
        .max()
        .unwrap_or(0)
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        batch: Vec<StreamAppend>,
        metadata: Metadata,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let mut events = self.lock();
        for append in &batch {
            let actual = stream_version(&events, &append.stream_id);
            if actual != append.expected_version {
                return Err(StoreError::Conflict {
                    stream_id: append.stream_id.clone(),
                    expected: append.expected_version,
                    actual,
                });
            }
        }
        let mut new = envelopes_for(&batch, &metadata, chrono::Utc::now());
        let mut position = events.len() as u64;
        for e in &mut new {
            position += 1;
            e.global_position = position;
        }
        events.extend(new.iter().cloned());
        Ok(new)
    }

    async fn read_stream(&self, stream_id: &StreamId) -> Result<Vec<EventEnvelope>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .filter(|e| &e.stream_id == stream_id)
            .cloned()
            .collect())
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        let events = self.lock();
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(events.len());
        Ok(events[start..].iter().take(limit).cloned().collect())
    }

    async fn head(&self) -> Result<u64, StoreError> {
        Ok(self.lock().len() as u64)
    }
}
