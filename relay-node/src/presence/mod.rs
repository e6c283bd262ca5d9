//! The presence registry: which relay holds each device's tunnel, fleet-wide.
//!
//! A relay writes an entry when a device's tunnel connects ([`PresenceRegistry::register`]),
//! re-writes it before the time-to-live runs out while the tunnel stays up
//! ([`PresenceRegistry::refresh`]), and removes it when the tunnel goes, but only if the entry
//! is still its own ([`PresenceRegistry::remove_if_owner`]): when the device has meanwhile
//! reconnected to another relay, the late close of the old tunnel leaves the new entry alone.
//! An entry whose relay stops refreshing (the relay crashed) vanishes after the time-to-live.
//!
//! Every write returns a revision, increasing per registry; conditional writes compare it.
//!
//! # Layout
//!
//! - `memory`: [`InProcessPresence`], the single-machine registry, a map.
//! - `nats`: [`NatsPresence`], the fleet registry, a NATS JetStream key-value bucket
//!   (default `m87_presence`) whose max age is the time-to-live. Key: the device id; value:
//!   the [`PresenceEntry`] as JSON. Each instance keeps a local cache fed by a watch over all
//!   keys, so most lookups do not reach NATS.

mod memory;
mod nats;

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use m87_events::DeviceId;
use serde::{Deserialize, Serialize};

pub use memory::InProcessPresence;
pub use nats::{NatsPresence, NatsPresenceConfig};

/// Where a device's tunnel is: the value stored per device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The relay holding the tunnel.
    pub relay_id: String,
    /// The address other relays dial to reach that relay (relay-to-relay links).
    pub relay_addr: SocketAddr,
    /// The tunnel's epoch in that relay's local registry.
    pub epoch: u64,
    /// When the tunnel connected.
    pub connected_at: DateTime<Utc>,
}

/// An entry with the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The entry.
    pub entry: PresenceEntry,
    /// The revision of the write that stored it.
    pub revision: u64,
}

/// Why a presence operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PresenceError {
    /// The backend cannot be reached or refused the request.
    #[error("presence registry unavailable: {0}")]
    Unavailable(String),
    /// The device's entry now belongs to another tunnel (another relay, or a newer epoch): the
    /// caller's tunnel is stale.
    #[error("device {device} is now registered by relay {relay_id} (epoch {epoch})")]
    Superseded {
        /// The device.
        device: DeviceId,
        /// The relay that holds it now.
        relay_id: String,
        /// That tunnel's epoch.
        epoch: u64,
    },
    /// A stored entry cannot be decoded.
    #[error("presence entry of {key:?} cannot be decoded: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The settings are not usable.
    #[error("invalid presence settings: {0}")]
    Config(String),
}

/// The presence seam: in-process on one machine, a NATS KV bucket in a fleet.
#[async_trait]
pub trait PresenceRegistry: Send + Sync + 'static {
    /// Records that `entry`'s relay now holds the device's tunnel, replacing any older entry
    /// (the newest connection wins). Returns the revision to refresh and remove with.
    async fn register(
        &self,
        device: &DeviceId,
        entry: &PresenceEntry,
    ) -> Result<u64, PresenceError>;

    /// Heartbeat: writes `entry` again so it outlives the next time-to-live, if the stored entry
    /// is still the one written at `revision`. Returns the new revision. When the entry expired
    /// meanwhile (a missed heartbeat) it is written again; when another tunnel registered the
    /// device since, the answer is [`PresenceError::Superseded`] and nothing is written.
    async fn refresh(
        &self,
        device: &DeviceId,
        entry: &PresenceEntry,
        revision: u64,
    ) -> Result<u64, PresenceError>;

    /// Removes the device's entry if it is still the one written at `revision`. Returns whether
    /// it removed it.
    async fn remove_if_owner(
        &self,
        device: &DeviceId,
        revision: u64,
    ) -> Result<bool, PresenceError>;

    /// Where the device's tunnel is, if anywhere. A fleet registry may answer from a local
    /// cache, which lags other relays' writes by the time their news takes to arrive.
    async fn lookup(&self, device: &DeviceId) -> Result<Option<Presence>, PresenceError>;

    /// How long an entry lives without a refresh.
    fn ttl(&self) -> Duration;
}

/// Same tunnel: same relay and epoch (the heartbeat of a tunnel writes the same entry).
pub(crate) fn same_tunnel(a: &PresenceEntry, b: &PresenceEntry) -> bool {
    a.relay_id == b.relay_id && a.epoch == b.epoch
}
