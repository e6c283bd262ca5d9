//! The application service: turns requests into commands, runs them against the aggregates and
//! appends what they decide; answers queries from the read models.
//!
//! [`ControlPlane`]'s methods are grouped by aggregate or concern, one file each, holding its
//! commands (load the aggregate, decide, append with retry on conflict) and its queries (read
//! the projections, filtered by the caller's scopes).
//!
//! # Layout
//!
//! - here: [`ControlPlane`], [`ServiceError`], and running a command (`execute`: decide,
//!   append, retry on conflict, wait for the read models).
//! - [`registrations`]: registration requests: request, approve, reject, poll, expiry.
//! - [`devices`]: enrolled devices: removal, access, and the device list.
//! - [`api_keys`]: user API keys: create, revoke, the bootstrap admin key, list.
//! - [`orgs`]: organizations and memberships.
//! - [`sessions`]: session grants, session ends and refusals, device presence.
//! - [`audit`]: the audit trail's queries and who may read what.
//! - [`recordings`]: recording policies, storing and reading session recordings.
//! - [`auth`]: key generation, and who is calling: authentication, identities, `whoami`.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod devices;
pub mod orgs;
pub mod recordings;
pub mod registrations;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use m87_events::{DomainEvent, EventEnvelope, Metadata, StreamId};

use crate::bus::Publisher;
use crate::config::Settings;
use crate::domain::DomainError;
use crate::projections::Projector;
use crate::store::{EventStore, ReadStore, StoreError, StreamAppend};

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A business rule refused the command.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The store failed or is unreachable.
    #[error(transparent)]
    Store(StoreError),
    /// The caller could not be identified.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A conflict persisted through every retry.
    #[error("the request conflicted with concurrent changes; try again")]
    Contention,
    /// No relay is available to carry sessions.
    #[error("no relay is available to reach devices; try again shortly")]
    NoRelay,
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => ServiceError::Contention,
            other => ServiceError::Store(other),
        }
    }
}

/// How many times a command is retried after an optimistic-concurrency conflict.
const MAX_ATTEMPTS: usize = 5;
/// How long a command waits for the read models to include its events before answering.
const READ_YOUR_WRITES: Duration = Duration::from_secs(5);

/// A batch of one event on one stream.
fn one(stream_id: StreamId, expected_version: u64, event: DomainEvent) -> Vec<StreamAppend> {
    vec![StreamAppend {
        stream_id,
        expected_version,
        events: vec![event],
    }]
}

fn parse_all<T: serde::de::DeserializeOwned>(docs: Vec<serde_json::Value>) -> Vec<T> {
    docs.into_iter()
        .filter_map(|d| match serde_json::from_value(d) {
            Ok(row) => Some(row),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable read-model document");
                None
            }
        })
        .collect()
}

/// The control plane's application service.
#[derive(Clone)]
pub struct ControlPlane {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) read: Arc<dyn ReadStore>,
    pub(crate) projector: Projector,
    pub(crate) publisher: Option<Publisher>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) sessions: Arc<sessions::SessionsConfig>,
    pub(crate) recordings: Arc<dyn crate::store::recordings::RecordingStore>,
    /// Held from counting a scope's pending requests to recording a new one, so concurrent
    /// registrations cannot pass the cap together (within this process).
    pub(crate) registration_gate: Arc<tokio::sync::Mutex<()>>,
    /// The audit trail over the same event log.
    pub(crate) audit: crate::audit::AuditTrail,
    /// Refused authentication, counted per address and minute until recorded.
    pub(crate) auth_refusals: Arc<crate::audit::refusals::AuthRefusals>,
    /// The SIEM exporter, when sinks are configured.
    pub(crate) exporter: Arc<std::sync::OnceLock<m87_audit_export::ExporterHandle>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Wires a service over its store, read store, projector and audit store. `publisher`, when given, is
    /// woken after every append.
    pub fn new(
        store: Arc<dyn EventStore>,
        read: Arc<dyn ReadStore>,
        projector: Projector,
        publisher: Option<Publisher>,
        settings: Settings,
        sessions: sessions::SessionsConfig,
        audit: Arc<dyn crate::store::audit::AuditStore>,
    ) -> Self {
        Self {
            audit: crate::audit::AuditTrail::new(Arc::clone(&store), audit),
            exporter: Arc::default(),
            auth_refusals: Arc::new(crate::audit::refusals::AuthRefusals::from_env()),
            store,
            read,
            projector,
            publisher,
            settings: Arc::new(settings),
            sessions: Arc::new(sessions),
            recordings: Arc::new(crate::store::recordings::MemoryRecordings::default()),
            registration_gate: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// With session recordings kept in `store` (they are kept in memory otherwise).
    pub fn with_recordings(
        mut self,
        store: Arc<dyn crate::store::recordings::RecordingStore>,
    ) -> Self {
        self.recordings = store;
        self
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The projector, for rebuilds and waiting.
    pub fn projector(&self) -> &Projector {
        &self.projector
    }

    /// A live feed of stored events, when a bus runs.
    pub fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<EventEnvelope>> {
        self.publisher.as_ref().map(Publisher::subscribe)
    }

    /// The read models.
    pub fn read_store(&self) -> &Arc<dyn ReadStore> {
        &self.read
    }

    /// The event store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Runs `decide` (which loads what it needs and returns the batch to append) and appends,
    /// retrying from the start when another writer got there first. Waits until the read
    /// models include the new events, so the caller reads its own writes.
    pub(crate) async fn execute<T, F, Fut>(
        &self,
        metadata: &Metadata,
        decide: F,
    ) -> Result<(T, Vec<EventEnvelope>), ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(T, Vec<StreamAppend>), ServiceError>>,
    {
        self.execute_with(metadata, decide).await
    }

    /// [`Self::execute`] for a command whose decisions fail with its own error type.
    pub(crate) async fn execute_with<T, E, F, Fut>(
        &self,
        metadata: &Metadata,
        mut decide: F,
    ) -> Result<(T, Vec<EventEnvelope>), E>
    where
        E: From<ServiceError>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(T, Vec<StreamAppend>), E>>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let (value, batch) = decide().await?;
            if batch.iter().all(|b| b.events.is_empty()) {
                return Ok((value, vec![]));
            }
            match self.store.append(batch, metadata.clone()).await {
                Ok(stored) => {
                    self.after_append(&stored).await;
                    return Ok((value, stored));
                }
                Err(StoreError::Conflict { stream_id, .. }) => {
                    tracing::debug!(%stream_id, "append conflicted; retrying the command");
                }
                Err(other) => return Err(ServiceError::Store(other).into()),
            }
        }
        Err(ServiceError::Contention.into())
    }

    async fn after_append(&self, stored: &[EventEnvelope]) {
        for e in stored {
            tracing::info!(
                event_type = e.event.event_type(),
                stream = %e.stream_id,
                position = e.global_position,
                actor = %e.metadata.actor,
                "event recorded"
            );
        }
        if let Some(p) = &self.publisher {
            p.notify();
        }
        if let Some(last) = stored.last() {
            if self.publisher.is_none() {
                // Without a bus feeding the projector, bring it up to date directly.
                if let Err(e) = self.projector.catch_up().await {
                    tracing::warn!(error = %e, "projection catch-up failed");
                }
            }
            if !self
                .projector
                .wait_for(last.global_position, READ_YOUR_WRITES)
                .await
            {
                tracing::warn!(
                    position = last.global_position,
                    "read models are behind; answering before they caught up"
                );
            }
        }
    }

    /// Loads one stream's events.
    pub(crate) async fn load(
        &self,
        stream_id: &m87_events::StreamId,
    ) -> Result<(Vec<m87_events::DomainEvent>, u64), ServiceError> {
        let envs = self.store.read_stream(stream_id).await?;
        let version = envs.last().map(|e| e.stream_version).unwrap_or(0);
        Ok((envs.into_iter().map(|e| e.event).collect(), version))
    }
}
