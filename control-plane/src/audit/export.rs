//! Export to SIEMs: the control plane's side of `m87-audit-export`. The exporter reads the
//! audit trail's chained entries ([`TrailSource`]), keeps each sink's cursor beside them
//! ([`TrailCursors`]) and, in a fleet, exports to a sink only while it holds the sink's lease
//! ([`MongoLease`]): one control plane at a time, another taking over within seconds of its
//! death, from the same cursor.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use m87_audit_export::{
    AlwaysHeld, AuditEntry, CursorStore, EntrySource, Exporter, ExporterHandle, Lease, SinkCursor,
    SinksConfig,
};
use mongodb::bson::{Document, doc};
use tokio::sync::watch;

use super::AuditTrail;
use super::fold::entry_of;
use crate::store::audit::AuditStore;

/// The audit trail's entries, in order, as the exporter reads them.
pub struct TrailSource(pub Arc<dyn AuditStore>);

#[async_trait]
impl EntrySource for TrailSource {
    async fn entries_after(&self, position: u64, limit: usize) -> Result<Vec<AuditEntry>, String> {
        let stored = self
            .0
            .entries(position, limit)
            .await
            .map_err(|e| e.to_string())?;
        stored
            .iter()
            .map(|s| {
                entry_of(&s.entry, &s.prev_hash, &s.hash)
                    .ok_or_else(|| format!("audit entry {} cannot be read", s.position))
            })
            .collect()
    }

    async fn head(&self) -> Result<u64, String> {
        self.0
            .head()
            .await
            .map(|(p, _)| p)
            .map_err(|e| e.to_string())
    }
}

/// Each sink's cursor, kept in the audit store (so it survives restarts and is shared by the
/// control planes of a fleet).
pub struct TrailCursors(pub Arc<dyn AuditStore>);

#[async_trait]
impl CursorStore for TrailCursors {
    async fn load(&self, sink: &str) -> Result<Option<SinkCursor>, String> {
        match self.0.cursor(sink).await.map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("the cursor of sink {sink} cannot be read: {e}")),
        }
    }

    async fn save(&self, sink: &str, cursor: &SinkCursor) -> Result<(), String> {
        let text = serde_json::to_string(cursor).map_err(|e| e.to_string())?;
        self.0
            .save_cursor(sink, &text)
            .await
            .map_err(|e| e.to_string())
    }
}

/// How long a fleet control plane holds a sink's lease without renewing it.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How long a renewal is trusted before the next one goes to MongoDB.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// A lease per sink in MongoDB (`audit_export_leases`: `{_id: sink, owner, expires_at}`),
/// renewed at most every second while held and lost [`LEASE_TTL`] after its holder stops.
pub struct MongoLease {
    leases: mongodb::Collection<Document>,
    owner: String,
    renewed: Mutex<HashMap<String, Instant>>,
}

impl MongoLease {
    /// A lease holder named `owner` (unique per process) in `db`.
    pub fn new(db: &mongodb::Database, owner: String) -> Self {
        Self {
            leases: db.collection("audit_export_leases"),
            owner,
            renewed: Mutex::new(HashMap::new()),
        }
    }

    async fn try_hold(&self, sink: &str) -> Result<bool, mongodb::error::Error> {
        let now = mongodb::bson::DateTime::now();
        let until = mongodb::bson::DateTime::from_millis(
            now.timestamp_millis() + LEASE_TTL.as_millis() as i64,
        );
        let taken = self
            .leases
            .update_one(
                doc! { "_id": sink, "$or": [ { "owner": &self.owner }, { "expires_at": { "$lt": now } } ] },
                doc! { "$set": { "owner": &self.owner, "expires_at": until } },
            )
            .await?;
        if taken.matched_count == 1 {
            return Ok(true);
        }
        // No lease document yet: the first to insert it holds it.
        match self
            .leases
            .insert_one(doc! { "_id": sink, "owner": &self.owner, "expires_at": until })
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    matches!(e.kind.as_ref(), ErrorKind::Write(WriteFailure::WriteError(w))
        if w.code == m87_migrations::mongo::DUPLICATE_KEY)
}

#[async_trait]
impl Lease for MongoLease {
    async fn hold(&self, sink: &str) -> bool {
        let fresh = self
            .renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sink)
            .is_some_and(|t| t.elapsed() < RENEW_EVERY);
        if fresh {
            return true;
        }
        let held = match self.try_hold(sink).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(sink, error = %e, "cannot renew the export lease; pausing this sink");
                false
            }
        };
        let mut renewed = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        if held {
            renewed.insert(sink.to_owned(), Instant::now());
        } else {
            renewed.remove(sink);
        }
        held
    }
}

/// Reads and checks the sinks file; an error names the file, the line and the key.
pub fn load_sinks(path: &Path) -> anyhow::Result<SinksConfig> {
    SinksConfig::from_file(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Starts exporting `trail` to every sink of `config`; `lease` decides which control plane
/// exports (one machine: [`AlwaysHeld`]). The exporter is woken whenever the trail grows.
pub fn start(
    config: &SinksConfig,
    trail: &AuditTrail,
    lease: Option<Arc<dyn Lease>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ExporterHandle> {
    let store = Arc::clone(trail.store());
    let exporter = Exporter::new(
        config,
        Arc::new(TrailSource(Arc::clone(&store))),
        Arc::new(TrailCursors(store)),
        lease.unwrap_or_else(|| Arc::new(AlwaysHeld)),
    )
    .context("setting up the audit sinks")?;
    let handle = exporter.spawn(shutdown.clone());
    let waker = handle.clone();
    let mut grown = trail.watch();
    let mut shutdown = shutdown;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = grown.changed() => match changed {
                    Ok(()) => waker.notify(),
                    Err(_) => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    });
    for s in handle.status() {
        tracing::info!(sink = %s.name, kind = %s.kind, "exporting the audit trail");
    }
    Ok(handle)
}
