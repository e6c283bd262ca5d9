//! A relay's place in a fleet: its settings ([`FleetConfig`]) and the pool of relay-to-relay
//! links it dialled, one per peer relay. The dialling itself, and what flows over a link, is in
//! `fleet`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::directory::RelayDirectory;
use crate::presence::PresenceRegistry;

/// Makes the QUIC client configuration that dials a peer relay pinning `cert_sha256`.
pub type PeerClientConfig = Arc<dyn Fn(&str) -> anyhow::Result<quinn::ClientConfig> + Send + Sync>;

/// What a relay needs to take part in a fleet.
pub struct FleetConfig {
    /// The fleet-wide presence registry.
    pub presence: Arc<dyn PresenceRegistry>,
    /// The relay directory (for peers' certificates).
    pub directory: RelayDirectory,
    /// Where other relays dial this one.
    pub peer_address: SocketAddr,
    /// The fleet's relay secret.
    pub secret: String,
    /// Client configuration for links.
    pub peer_client_config: PeerClientConfig,
}

/// The fleet state of a running relay.
pub(crate) struct Fleet {
    pub(crate) config: FleetConfig,
    /// Open links by peer relay id; the lock also makes concurrent dials to one peer one dial.
    links: tokio::sync::Mutex<HashMap<String, quinn::Connection>>,
}

/// The dialled links, locked: one dial per peer at a time.
pub(crate) type LinksGuard<'a> = tokio::sync::MutexGuard<'a, HashMap<String, quinn::Connection>>;

impl Fleet {
    pub(crate) fn new(config: FleetConfig) -> Self {
        Self {
            config,
            links: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The dialled links, locked until the guard is dropped.
    pub(crate) async fn links(&self) -> LinksGuard<'_> {
        self.links.lock().await
    }
}
