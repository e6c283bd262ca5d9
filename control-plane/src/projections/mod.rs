//! Projections: read models kept from the event log, each with its own checkpoint.
//!
//! The [`Projector`] applies events in global order to every projection whose checkpoint is
//! behind, idempotently (see [`ReadStore::commit`]). It takes events from the bus when they
//! arrive in order and reads them from the store otherwise (at start, after lagging, after a
//! rebuild). A projection can be dropped and rebuilt from the log and comes back equal.
//!
//! Projections write only through the [`ReadStore`] trait; where the documents are kept is the
//! business of each backend under [`crate::store`].
//!
//! # Layout
//!
//! - here: the [`Projector`].
//! - [`models`]: the documents and the pure projection logic.

pub mod models;

use std::sync::Arc;
use std::time::Duration;

use m87_events::EventEnvelope;
use tokio::sync::{Mutex, broadcast, watch};

use crate::bus::EventBus;
use crate::store::{EventStore, ReadStore, StoreError};
use models::{
    ApiKeysProjection, DevicesProjection, Docs, OrgsProjection, Projection, RegistrationsProjection,
};

/// Every projection m87 keeps.
pub fn all_projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(RegistrationsProjection),
        Arc::new(DevicesProjection),
        Arc::new(ApiKeysProjection),
        Arc::new(OrgsProjection),
    ]
}

/// Why a rebuild was refused.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No projection has that name.
    #[error("no projection named {0}; known: registrations, devices, api_keys, orgs")]
    Unknown(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies the event log to the projections.
#[derive(Clone)]
pub struct Projector {
    store: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    projections: Vec<Arc<dyn Projection>>,
    /// Serialises catch-up work; holds each projection's checkpoint as last committed.
    checkpoints: Arc<Mutex<Vec<u64>>>,
    progress_tx: Arc<watch::Sender<u64>>,
    progress: watch::Receiver<u64>,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("progress", &*self.progress.borrow())
            .finish_non_exhaustive()
    }
}

impl Projector {
    /// A projector over `projections`, reading their checkpoints from `read`.
    pub async fn new(
        store: Arc<dyn EventStore>,
        read: Arc<dyn ReadStore>,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Result<Self, StoreError> {
        let mut checkpoints = Vec::with_capacity(projections.len());
        for p in &projections {
            checkpoints.push(read.checkpoint(p.name()).await?);
        }
        let min = checkpoints.iter().copied().min().unwrap_or(0);
        let (tx, rx) = watch::channel(min);
        Ok(Self {
            store,
            read,
            projections,
            checkpoints: Arc::new(Mutex::new(checkpoints)),
            progress_tx: Arc::new(tx),
            progress: rx,
        })
    }

    /// The position every projection has reached.
    pub fn progress(&self) -> u64 {
        *self.progress.borrow()
    }

    /// Waits until every projection has applied `position`, or `timeout` passes. Returns whether
    /// it got there.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.progress.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn apply_one(
        &self,
        checkpoints: &mut [u64],
        env: &EventEnvelope,
    ) -> Result<(), StoreError> {
        for (i, p) in self.projections.iter().enumerate() {
            if checkpoints[i] >= env.global_position {
                continue;
            }
            let mut docs = Docs::default();
            for (collection, id) in p.reads(env) {
                if let Some(doc) = self.read.get(collection, &id).await? {
                    docs.0.push(((collection, id), doc));
                }
            }
            let changes = p.apply(env, &docs);
            self.read
                .commit(p.name(), env.global_position, changes)
                .await?;
            checkpoints[i] = env.global_position;
        }
        Ok(())
    }

    fn publish_progress(&self, checkpoints: &[u64]) {
        let min = checkpoints.iter().copied().min().unwrap_or(0);
        self.progress_tx.send_if_modified(|p| {
            let changed = *p != min;
            *p = min;
            changed
        });
    }

    /// Applies everything in the store that a projection has not seen yet.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let mut checkpoints = self.checkpoints.lock().await;
        loop {
            let from = checkpoints.iter().copied().min().unwrap_or(0);
            let events = self.store.read_all(from, 500).await?;
            if events.is_empty() {
                break;
            }
            for env in &events {
                self.apply_one(&mut checkpoints, env).await?;
            }
            self.publish_progress(&checkpoints);
        }
        self.publish_progress(&checkpoints);
        Ok(())
    }

    /// Applies one event taken from the bus if it is the next in order, else catches up.
    async fn on_event(&self, env: &EventEnvelope) -> Result<(), StoreError> {
        {
            let mut checkpoints = self.checkpoints.lock().await;
            let min = checkpoints.iter().copied().min().unwrap_or(0);
            if env.global_position <= min {
                return Ok(());
            }
            if env.global_position == min + 1 {
                self.apply_one(&mut checkpoints, env).await?;
                self.publish_progress(&checkpoints);
                return Ok(());
            }
        }
        self.catch_up().await
    }

    /// Empties one projection (or all, with `None`) and applies the whole log again.
    pub async fn rebuild(&self, name: Option<&str>) -> Result<(), RebuildError> {
        {
            let mut checkpoints = self.checkpoints.lock().await;
            let mut found = false;
            for (i, p) in self.projections.iter().enumerate() {
                if name.is_none_or(|n| n == p.name()) {
                    self.read.reset(p.name(), p.collections()).await?;
                    checkpoints[i] = 0;
                    found = true;
                }
            }
            if !found {
                return Err(RebuildError::Unknown(name.unwrap_or_default().to_owned()));
            }
            self.publish_progress(&checkpoints);
        }
        self.catch_up().await?;
        Ok(())
    }

    /// Runs until `shutdown`: follows the bus, catches up on gaps, retries after store errors.
    pub fn spawn(self, bus: &dyn EventBus, mut shutdown: watch::Receiver<bool>) {
        let mut feed = bus.subscribe();
        tokio::spawn(async move {
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "projections cannot catch up yet");
            }
            loop {
                let result = tokio::select! {
                    msg = feed.recv() => match msg {
                        Ok(env) => self.on_event(&env).await,
                        Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep(Duration::from_secs(2)) => self.catch_up().await,
                    _ = shutdown.changed() => return,
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "projection update failed; will retry");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }
}
