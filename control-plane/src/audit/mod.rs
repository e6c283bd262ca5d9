//! The audit trail: one more read model of the event log. Every event becomes one entry,
//! chained by SHA-256 to the one before (see `m87_events::audit`); the entries carry the
//! records `m87 audit` lists, a session's grant completed by its closing. Export to SIEMs
//! reads the same entries (the `m87-audit-export` crate).
//!
//! # Layout
//!
//! - here: [`AuditTrail`], which follows the event log into the [`AuditStore`], like the
//!   projector, with the store's head as its checkpoint.
//! - [`fold`]: what one event does to the trail (pure).
//! - the store seam and its types are `crate::store::audit`, with the other stores.
//! - [`export`]: the exporter's source, cursors and fleet lease over the trail.
//! - [`refusals`]: refused authentication, counted per address and minute.
//! - [`verify`]: walking the chain and the log to find what was changed, removed or inserted.

pub mod export;
pub mod fold;
pub mod refusals;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use m87_events::audit::AuditRecord;
use tokio::sync::{Mutex, broadcast, watch};

use crate::store::audit::{AuditBatch, AuditStore, DeviceInfo};
use crate::store::{EventStore, StoreError};
use fold::{FoldContext, fold};

/// Events folded per store transaction.
const BATCH: usize = 500;

/// Keeps the audit trail up to date with the event log.
#[derive(Clone)]
pub struct AuditTrail {
    events: Arc<dyn EventStore>,
    store: Arc<dyn AuditStore>,
    /// Serialises catch-up.
    gate: Arc<Mutex<()>>,
    appended: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail").finish_non_exhaustive()
    }
}

/// What a catch-up step knows: the store, and what this batch has folded so far.
struct Overlay<'a> {
    devices: &'a HashMap<String, Option<DeviceInfo>>,
    sessions: &'a HashMap<String, Option<AuditRecord>>,
}

impl FoldContext for Overlay<'_> {
    fn device(&self, device_id: &str) -> Option<DeviceInfo> {
        self.devices.get(device_id).cloned().flatten()
    }
    fn session(&self, session_id: &str) -> Option<AuditRecord> {
        self.sessions.get(session_id).cloned().flatten()
    }
}

impl AuditTrail {
    /// A trail over `events`, kept in `store`.
    pub fn new(events: Arc<dyn EventStore>, store: Arc<dyn AuditStore>) -> Self {
        let (tx, _) = watch::channel(0);
        Self {
            events,
            store,
            gate: Arc::new(Mutex::new(())),
            appended: Arc::new(tx),
        }
    }

    /// The store, for queries.
    pub fn store(&self) -> &Arc<dyn AuditStore> {
        &self.store
    }

    /// Changes to the trail's head (the position folded last), for followers.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Folds every event the trail has not seen yet; returns the head.
    pub async fn catch_up(&self) -> Result<u64, StoreError> {
        let _guard = self.gate.lock().await;
        loop {
            let (head, mut prev_hash) = self.store.head().await?;
            let events = self.events.read_all(head, BATCH).await?;
            let Some(last) = events.last().map(|e| e.global_position) else {
                self.appended
                    .send_if_modified(|h| std::mem::replace(h, head) != head);
                return Ok(head);
            };
            let mut devices: HashMap<String, Option<DeviceInfo>> = HashMap::new();
            let mut sessions: HashMap<String, Option<AuditRecord>> = HashMap::new();
            let mut batch = AuditBatch::default();
            for env in &events {
                self.load_context(env, &mut devices, &mut sessions).await?;
                let folded = fold(
                    env,
                    &prev_hash,
                    &Overlay {
                        devices: &devices,
                        sessions: &sessions,
                    },
                );
                prev_hash = folded.row.hash.clone();
                if let Some((id, info)) = folded.device {
                    devices.insert(id.clone(), Some(info.clone()));
                    batch.devices.push((id, info));
                }
                if let Some((sid, record)) = folded.session {
                    sessions.insert(sid.clone(), Some(record.clone()));
                    // A grant folded in this batch is completed in place (its row is the one at
                    // the record's position, as in the stores); else in the store.
                    match batch
                        .rows
                        .iter_mut()
                        .find(|r| r.position == record.position)
                    {
                        Some(row) => {
                            row.outcome_from(&record);
                            row.seq = env.global_position;
                        }
                        None => batch.sessions.push((sid, record, env.global_position)),
                    }
                }
                if folded.row.record.event_type == "SessionOpened"
                    && let Some(sid) = &folded.row.session_id
                {
                    sessions.insert(sid.clone(), Some(folded.row.record.clone()));
                }
                batch.rows.push(folded.row);
            }
            self.store.commit(batch).await?;
            self.appended.send_replace(last);
        }
    }

    /// Loads what an event's fold needs from the store, unless this batch already has it.
    async fn load_context(
        &self,
        env: &m87_events::EventEnvelope,
        devices: &mut HashMap<String, Option<DeviceInfo>>,
        sessions: &mut HashMap<String, Option<AuditRecord>>,
    ) -> Result<(), StoreError> {
        if let Some(d) = m87_events::audit::device_of(&env.event)
            && !devices.contains_key(d.as_str())
        {
            let info = self.store.device(d.as_str()).await?;
            devices.insert(d.to_string(), info);
        }
        let sid = match &env.event {
            m87_events::DomainEvent::SessionClosed(e) => Some(e.session_id),
            m87_events::DomainEvent::SessionRefused(e) => e.session_id,
            m87_events::DomainEvent::SessionRecordingStored(e) => Some(e.session_id),
            _ => None,
        };
        if let Some(sid) = sid.map(|s| s.to_string())
            && !sessions.contains_key(&sid)
        {
            let record = self.store.session(&sid).await?;
            sessions.insert(sid, record);
        }
        Ok(())
    }

    /// Runs until `shutdown`: wakes on every event of `feed` (a bus subscription), catches up,
    /// and every 2 s besides; retries after store errors.
    pub fn spawn(
        self,
        mut feed: broadcast::Receiver<m87_events::EventEnvelope>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.catch_up().await {
                    tracing::warn!(error = %e, "audit trail update failed; will retry");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                tokio::select! {
                    msg = feed.recv() => if let Err(broadcast::error::RecvError::Closed) = msg {
                        return;
                    },
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
}

impl crate::store::audit::AuditRow {
    /// Completes a grant's row with what its closing (or refusal) recorded.
    fn outcome_from(&mut self, completed: &AuditRecord) {
        self.record = completed.clone();
    }
}
