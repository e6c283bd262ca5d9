//! The exporter: one task per sink that reads the audit entries after the sink's cursor,
//! delivers them, and moves the cursor only after the sink acknowledged.
//!
//! - In order per sink, at least once: a batch that failed is sent again whole (a receiver
//!   drops duplicates by event id).
//! - Failures are retried with capped exponential backoff and jitter (200 ms doubling to
//!   30 s by default); records the receiver refused as malformed are counted, logged and
//!   skipped, so they never hold the others back.
//! - A task wakes when [`ExporterHandle::notify`] says new events were appended, and polls
//!   every second otherwise.
//! - With several control planes, [`Lease`] decides which one exports to each sink; the one
//!   that takes over reloads the cursor the last one saved.

mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use m87_events::audit::AuditEntry;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::SinksConfig;
use crate::sink::{self, Sink, SinkError};

/// Where the exporter reads audit entries (the control plane's audit log).
#[async_trait]
pub trait EntrySource: Send + Sync {
    /// Up to `limit` entries whose global position is above `position`, in order.
    async fn entries_after(&self, position: u64, limit: usize) -> Result<Vec<AuditEntry>, String>;

    /// The global position of the newest entry (0 when there is none).
    async fn head(&self) -> Result<u64, String>;
}

/// A sink's saved progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkCursor {
    /// The global position of the last entry the sink acknowledged (or rejected).
    pub position: u64,
    /// Records acknowledged so far.
    pub delivered: u64,
    /// Records the sink refused as malformed so far.
    pub rejected: u64,
}

/// Where cursors are kept (the control plane's store), one per sink name.
#[async_trait]
pub trait CursorStore: Send + Sync {
    /// The sink's cursor, if it was ever saved.
    async fn load(&self, sink: &str) -> Result<Option<SinkCursor>, String>;

    /// Saves the sink's cursor.
    async fn save(&self, sink: &str, cursor: &SinkCursor) -> Result<(), String>;
}

/// Whether this process may export to a sink now (fleet mode: a lease in NATS KV or MongoDB).
#[async_trait]
pub trait Lease: Send + Sync {
    /// Takes or renews the lease of `sink`; `false` while another process holds it.
    async fn hold(&self, sink: &str) -> bool;
}

/// The lease of a single machine: always held.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysHeld;

#[async_trait]
impl Lease for AlwaysHeld {
    async fn hold(&self, _sink: &str) -> bool {
        true
    }
}

/// What `status` shows about a sink. Holds no secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// The sink's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Whether this process holds the sink's lease and exports to it.
    pub active: bool,
    /// The position of the last entry acknowledged.
    pub cursor: u64,
    /// The newest entry's position, as last read.
    pub head: u64,
    /// Entries not yet exported.
    pub lag_records: u64,
    /// Age in seconds of the oldest entry not yet exported (0 when caught up).
    pub lag_seconds: f64,
    /// Records acknowledged.
    pub delivered: u64,
    /// Deliveries that failed and were (or will be) retried.
    pub retried: u64,
    /// Records refused as malformed and skipped.
    pub rejected: u64,
    /// The last failure or rejection (kept after later successes; compare `last_error_at`
    /// with `last_success_at`).
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// When the sink last acknowledged a batch.
    pub last_success_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    oldest_pending: Option<DateTime<Utc>>,
}

/// A sink with its delivery settings, ready to be driven by the exporter.
pub struct ExportSink {
    /// Its unique name (the key of its cursor).
    pub name: String,
    /// Most records per delivery.
    pub batch_size: usize,
    /// Time limit of one delivery.
    pub timeout: Duration,
    /// The sink.
    pub sink: Box<dyn Sink>,
}

/// How long to wait between failed deliveries, and between polls.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The first pause after a failure.
    pub backoff_first: Duration,
    /// The longest pause.
    pub backoff_max: Duration,
    /// How often the source is read when nothing says there is news.
    pub poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            backoff_first: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        }
    }
}

/// The exporter, before it runs.
pub struct Exporter {
    sinks: Vec<ExportSink>,
    source: Arc<dyn EntrySource>,
    cursors: Arc<dyn CursorStore>,
    lease: Arc<dyn Lease>,
    timing: Timing,
}

impl Exporter {
    /// An exporter for every sink of `config`.
    pub fn new(
        config: &SinksConfig,
        source: Arc<dyn EntrySource>,
        cursors: Arc<dyn CursorStore>,
        lease: Arc<dyn Lease>,
    ) -> Result<Self, SinkError> {
        let sinks = config
            .sinks
            .iter()
            .map(|c| {
                Ok(ExportSink {
                    name: c.name.clone(),
                    batch_size: c.batch_size,
                    timeout: c.timeout,
                    sink: sink::build(c)
                        .map_err(|e| SinkError::Setup(format!("sink {:?}: {e}", c.name)))?,
                })
            })
            .collect::<Result<Vec<_>, SinkError>>()?;
        Ok(Self::from_sinks(sinks, source, cursors, lease))
    }

    /// An exporter for sinks built elsewhere.
    pub fn from_sinks(
        sinks: Vec<ExportSink>,
        source: Arc<dyn EntrySource>,
        cursors: Arc<dyn CursorStore>,
        lease: Arc<dyn Lease>,
    ) -> Self {
        Self {
            sinks,
            source,
            cursors,
            lease,
            timing: Timing::default(),
        }
    }

    /// Other pauses than the defaults (tests use short ones).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Starts one task per sink; they stop when `shutdown` turns true.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> ExporterHandle {
        let mut shared = Vec::new();
        let mut tasks = Vec::new();
        for s in self.sinks {
            let one = Arc::new(Shared {
                status: Mutex::new(SinkStatus {
                    name: s.name.clone(),
                    kind: s.sink.kind().to_owned(),
                    ..SinkStatus::default()
                }),
                news: Notify::new(),
            });
            shared.push(one.clone());
            let w = worker::Worker {
                sink: s,
                source: self.source.clone(),
                cursors: self.cursors.clone(),
                lease: self.lease.clone(),
                timing: self.timing,
                shared: one,
                shutdown: shutdown.clone(),
            };
            tasks.push(tokio::spawn(w.run()));
        }
        ExporterHandle {
            sinks: Arc::new(shared),
            tasks: Arc::new(Mutex::new(tasks)),
        }
    }
}

struct Shared {
    status: Mutex<SinkStatus>,
    news: Notify,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut SinkStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// The running exporter: its status, and the bell the control plane rings on new events.
#[derive(Clone)]
pub struct ExporterHandle {
    sinks: Arc<Vec<Arc<Shared>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ExporterHandle {
    /// Each sink's status, in the configuration's order.
    pub fn status(&self) -> Vec<SinkStatus> {
        let now = Utc::now();
        self.sinks
            .iter()
            .filter_map(|s| s.status.lock().ok().map(|st| st.clone()))
            .map(|mut st| {
                st.lag_records = st.head.saturating_sub(st.cursor);
                st.lag_seconds = st.oldest_pending.map_or(0.0, |t| {
                    ((now - t).num_milliseconds().max(0) as f64) / 1000.0
                });
                st
            })
            .collect()
    }

    /// Says that new events were appended: every sink reads at once.
    pub fn notify(&self) {
        for s in self.sinks.iter() {
            s.news.notify_one();
        }
    }

    /// Waits until every sink's task has stopped (after the shutdown signal).
    pub async fn join(&self) {
        let tasks: Vec<JoinHandle<()>> = match self.tasks.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for t in tasks {
            let _ = t.await;
        }
    }
}
