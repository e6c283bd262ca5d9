//! The in-memory audit store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use m87_events::audit::{AuditRecord, GENESIS};

use crate::store::StoreError;
use crate::store::audit::{
    AuditBatch, AuditQuery, AuditRow, AuditStore, DeviceInfo, Listing, StoredEntry,
};

#[derive(Debug, Default)]
struct Inner {
    rows: BTreeMap<u64, AuditRow>,
    devices: HashMap<String, DeviceInfo>,
    cursors: HashMap<String, String>,
}

/// The in-memory audit store.
#[derive(Debug, Default)]
pub struct MemoryAuditStore {
    inner: Mutex<Inner>,
}

impl MemoryAuditStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl AuditStore for MemoryAuditStore {
    async fn head(&self) -> Result<(u64, String), StoreError> {
        Ok(self
            .lock()
            .rows
            .last_key_value()
            .map_or((0, GENESIS.to_owned()), |(p, r)| (*p, r.hash.clone())))
    }

    async fn device(&self, device_id: &str) -> Result<Option<DeviceInfo>, StoreError> {
        Ok(self.lock().devices.get(device_id).cloned())
    }

    async fn session(&self, session_id: &str) -> Result<Option<AuditRecord>, StoreError> {
        Ok(self
            .lock()
            .rows
            .values()
            .find(|r| r.session_id.as_deref() == Some(session_id) && r.listing == Listing::Listed)
            .map(|r| r.record.clone()))
    }

    async fn commit(&self, batch: AuditBatch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let head = inner.rows.last_key_value().map_or(0, |(p, _)| *p);
        for row in batch.rows.into_iter().filter(|r| r.position > head) {
            inner.rows.insert(row.position, row);
        }
        for (sid, record, seq) in batch.sessions {
            // The grant's own row (the record names it), and only with a later state.
            if let Some(row) = inner
                .rows
                .get_mut(&record.position)
                .filter(|r| r.session_id.as_deref() == Some(sid.as_str()) && r.seq < seq)
            {
                row.record = record;
                row.seq = seq;
            }
        }
        for (id, info) in batch.devices {
            inner.devices.insert(id, info);
        }
        Ok(())
    }

    async fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let inner = self.lock();
        let mut rows: Vec<&AuditRow> = inner
            .rows
            .values()
            .filter(|r| q.matches(r))
            .filter(|r| q.before.is_none_or(|b| r.position < b))
            .filter(|r| q.changed_after.is_none_or(|c| r.seq > c))
            .collect();
        if q.changed_after.is_some() {
            rows.sort_by_key(|r| r.seq);
        } else {
            rows.reverse();
        }
        Ok(rows
            .into_iter()
            .take(q.limit)
            .map(|r| r.record.clone())
            .collect())
    }

    async fn entries(&self, after: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError> {
        Ok(self
            .lock()
            .rows
            .range(after + 1..)
            .take(limit)
            .map(|(p, r)| StoredEntry {
                position: *p,
                entry: r.entry.clone(),
                prev_hash: r.prev_hash.clone(),
                hash: r.hash.clone(),
            })
            .collect())
    }

    async fn first_since(
        &self,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self
            .lock()
            .rows
            .values()
            .find(|r| r.record.time >= time)
            .map(|r| r.position))
    }

    async fn cursor(&self, sink: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().cursors.get(sink).cloned())
    }

    async fn save_cursor(&self, sink: &str, cursor: &str) -> Result<(), StoreError> {
        self.lock()
            .cursors
            .insert(sink.to_owned(), cursor.to_owned());
        Ok(())
    }
}
