//! The event bus, and the publisher that feeds it from the store.
//!
//! The store is the source of truth; the [`Publisher`] tails it in global order and puts each
//! event on the bus, so nothing reaches the bus that was not stored. On one machine the bus is
//! an in-process broadcast channel; subscribers that fall behind (or start late) catch up from
//! the store, so the bus is a fast path, never the only path.
//!
//! - [`InProcessBus`]: the single-machine bus.
//! - [`nats`]: the fleet bus on NATS JetStream ([`nats::JetStreamBus`]), with durable consumers
//!   for relays and the audit exporter.

pub mod nats;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use m87_events::EventEnvelope;
use tokio::sync::{Notify, broadcast, watch};

use crate::store::{EventStore, StoreError};

/// The bus seam: in-process here, NATS JetStream in a fleet.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes one stored event. Publishing the same event id twice must be harmless.
    async fn publish(&self, event: &EventEnvelope) -> Result<(), StoreError>;
    /// A live feed of events published from now on.
    fn subscribe(&self) -> broadcast::Receiver<EventEnvelope>;
}

/// An in-process bus over a broadcast channel.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    sender: broadcast::Sender<EventEnvelope>,
}

impl InProcessBus {
    /// A bus whose subscribers may lag by up to `capacity` events before they must catch up
    /// from the store.
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity.max(1)).0,
        }
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: &EventEnvelope) -> Result<(), StoreError> {
        // No subscriber is not an error: they catch up from the store when they come.
        let _ = self.sender.send(event.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.sender.subscribe()
    }
}

/// The first pause after a failed publish or store read; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(50);
/// The longest pause between attempts while the bus or the store is down.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Tails the store and publishes every new event on the bus, in global order.
///
/// Each event is published only after the one before it was acknowledged by the bus, and the
/// position moves only on acknowledgement: while the bus is down the publisher retries from the
/// last acknowledged position (with a growing pause), so nothing stored is left unpublished.
#[derive(Clone)]
pub struct Publisher {
    wake: Arc<Notify>,
    published: watch::Receiver<u64>,
    bus: Arc<dyn EventBus>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("published", &*self.published.borrow())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts the publisher task from position `from` (events after it are published). It stops
    /// when `shutdown` fires.
    pub fn spawn(
        store: Arc<dyn EventStore>,
        bus: Arc<dyn EventBus>,
        from: u64,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let (tx, published) = watch::channel(from);
        let task_wake = Arc::clone(&wake);
        let task_bus = Arc::clone(&bus);
        tokio::spawn(async move {
            let bus = task_bus;
            // The last position the bus acknowledged: a failed publish never moves it, so the
            // next attempt starts again right after it (the bus drops what it already has).
            let mut position = from;
            let mut backoff = RETRY_MIN;
            loop {
                let failed = match store.read_all(position, 500).await {
                    Ok(events) if !events.is_empty() => {
                        let mut failed = false;
                        for e in &events {
                            if let Err(err) = bus.publish(e).await {
                                tracing::warn!(
                                    error = %err,
                                    position = e.global_position,
                                    retry_in_ms = backoff.as_millis() as u64,
                                    "publishing to the bus failed; retrying"
                                );
                                failed = true;
                                break;
                            }
                            position = e.global_position;
                            let _ = tx.send(position);
                        }
                        if !failed {
                            backoff = RETRY_MIN;
                            continue;
                        }
                        true
                    }
                    Ok(_) => false,
                    Err(err) => {
                        tracing::warn!(error = %err, "publisher cannot read the store");
                        true
                    }
                };
                if failed {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
                tokio::select! {
                    _ = task_wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
        Self {
            wake,
            published,
            bus,
        }
    }

    /// A live feed of the events it publishes.
    pub fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.bus.subscribe()
    }

    /// Tells the publisher that new events were stored.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// The last position published.
    pub fn published(&self) -> u64 {
        *self.published.borrow()
    }
}
