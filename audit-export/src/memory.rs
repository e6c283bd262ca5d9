//! In-memory twins of the entry source and the cursor store, for tests, benchmarks and
//! one-off pulls.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use async_trait::async_trait;
use m87_events::EventEnvelope;
use m87_events::audit::{AuditEntry, GENESIS};

use crate::exporter::{CursorStore, EntrySource, SinkCursor};

/// An audit log in memory: entries chained as they are appended.
#[derive(Debug, Default)]
pub struct MemorySource {
    entries: RwLock<Vec<AuditEntry>>,
}

impl MemorySource {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event: it gets the next global position and is chained after the last entry.
    pub fn append(&self, mut envelope: EventEnvelope) -> AuditEntry {
        let mut entries = match self.entries.write() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        let prev = entries
            .last()
            .map_or(GENESIS, |e| e.hash.as_str())
            .to_owned();
        envelope.global_position = entries.len() as u64 + 1;
        let entry = AuditEntry::chain(envelope, &prev);
        entries.push(entry.clone());
        entry
    }

    /// Every entry, in order.
    pub fn all(&self) -> Vec<AuditEntry> {
        self.entries.read().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl EntrySource for MemorySource {
    async fn entries_after(&self, position: u64, limit: usize) -> Result<Vec<AuditEntry>, String> {
        let entries = self
            .entries
            .read()
            .map_err(|_| "the log's lock is poisoned".to_owned())?;
        let start = entries.partition_point(|e| e.envelope.global_position <= position);
        Ok(entries[start..].iter().take(limit).cloned().collect())
    }

    async fn head(&self) -> Result<u64, String> {
        let entries = self
            .entries
            .read()
            .map_err(|_| "the log's lock is poisoned".to_owned())?;
        Ok(entries.last().map_or(0, |e| e.envelope.global_position))
    }
}

/// Cursors in memory.
#[derive(Debug, Default)]
pub struct MemoryCursors {
    cursors: Mutex<HashMap<String, SinkCursor>>,
}

impl MemoryCursors {
    /// No cursors yet.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CursorStore for MemoryCursors {
    async fn load(&self, sink: &str) -> Result<Option<SinkCursor>, String> {
        let c = self
            .cursors
            .lock()
            .map_err(|_| "the cursors' lock is poisoned".to_owned())?;
        Ok(c.get(sink).copied())
    }

    async fn save(&self, sink: &str, cursor: &SinkCursor) -> Result<(), String> {
        let mut c = self
            .cursors
            .lock()
            .map_err(|_| "the cursors' lock is poisoned".to_owned())?;
        c.insert(sink.to_owned(), *cursor);
        Ok(())
    }
}
