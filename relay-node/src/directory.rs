//! The relay directory (fleet mode): which relays are running, where devices and clients dial
//! them, where their peers dial them, and the SHA-256 of their certificates.
//!
//! A NATS JetStream key-value bucket (default `m87_relays`) holds one entry per relay, keyed by
//! relay id, with a max age (default 15 s). Each relay writes its entry at start and again every
//! third of the max age ([`RelayDirectory::announce`]), and deletes it when it stops; a relay
//! that is killed drops out when its entry ages out. Readers (control planes, and relays
//! looking for a peer's certificate) keep a local copy refreshed every two seconds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One relay, as announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    /// Its id.
    pub relay_id: String,
    /// `host:port` devices and clients dial.
    pub address: String,
    /// The TLS server name to present.
    pub server_name: String,
    /// SHA-256 of its certificate, `AB:CD:…`.
    pub cert_sha256: String,
    /// Where other relays dial it.
    pub peer_address: SocketAddr,
}

/// Settings of the directory.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// The key-value bucket.
    pub bucket: String,
    /// How long an entry lives without being written again.
    pub ttl: Duration,
    /// Bucket replicas.
    pub replicas: usize,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            bucket: "m87_relays".to_owned(),
            ttl: Duration::from_secs(15),
            replicas: 1,
        }
    }
}

/// The relay directory. Cheap to clone.
#[derive(Clone)]
pub struct RelayDirectory {
    kv: kv::Store,
    ttl: Duration,
    known: Arc<RwLock<HashMap<String, RelayInfo>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for RelayDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayDirectory")
            .field("bucket", &self.kv.name)
            .finish_non_exhaustive()
    }
}

impl RelayDirectory {
    /// Opens (creating or updating) the bucket and starts refreshing the local copy until
    /// `shutdown`.
    pub async fn open(
        client: async_nats::Client,
        config: DirectoryConfig,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.ttl >= Duration::from_secs(3),
            "the relay directory's time-to-live must be at least 3 seconds"
        );
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client);
        let kv = js
            .create_or_update_key_value(kv::Config {
                bucket: config.bucket.clone(),
                description: "m87 relays: relay id -> addresses and certificate".to_owned(),
                history: 1,
                max_age: config.ttl,
                storage: jetstream::stream::StorageType::File,
                num_replicas: config.replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating the relay directory bucket: {e}"))?;
        let (changed, _) = watch::channel(0);
        let dir = Self {
            kv,
            ttl: config.ttl,
            known: Arc::new(RwLock::new(HashMap::new())),
            changed: Arc::new(changed),
        };
        if let Err(e) = dir.refresh().await {
            tracing::warn!(error = %e, "cannot read the relay directory yet");
        }
        let task = dir.clone();
        let mut stop = shutdown;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.changed() => return,
                }
                if let Err(e) = task.refresh().await {
                    tracing::warn!(error = %e, "cannot read the relay directory");
                }
            }
        });
        Ok(dir)
    }

    /// Reads every entry into the local copy.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| anyhow::anyhow!("listing relays: {e}"))?;
        let mut found = HashMap::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| anyhow::anyhow!("listing relays: {e}"))?;
            let Some(value) = self
                .kv
                .get(&key)
                .await
                .map_err(|e| anyhow::anyhow!("reading relay {key}: {e}"))?
            else {
                continue;
            };
            match serde_json::from_slice::<RelayInfo>(&value) {
                Ok(info) => {
                    found.insert(key, info);
                }
                Err(e) => {
                    tracing::warn!(relay = %key, error = %e, "skipping an unreadable relay entry")
                }
            }
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if *known != found {
            *known = found;
            self.changed.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    /// The relays known now, sorted by id.
    pub fn relays(&self) -> Vec<RelayInfo> {
        let mut all: Vec<RelayInfo> = self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.relay_id.cmp(&b.relay_id));
        all
    }

    /// One relay, by id.
    pub fn get(&self, relay_id: &str) -> Option<RelayInfo> {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(relay_id)
            .cloned()
    }

    /// Ticks whenever the set of relays changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    async fn put(&self, info: &RelayInfo) -> anyhow::Result<()> {
        let value = serde_json::to_vec(info)?;
        self.kv
            .put(&info.relay_id, value.into())
            .await
            .map_err(|e| anyhow::anyhow!("announcing relay {}: {e}", info.relay_id))?;
        Ok(())
    }

    /// Announces `info` now and every third of the time-to-live until `shutdown`, then removes
    /// it. Returns once the first announcement is written (or failed: it is retried).
    pub async fn announce(&self, info: RelayInfo, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.put(&info).await {
            tracing::warn!(error = %e, "cannot announce this relay yet; retrying");
        }
        let _ = self.refresh().await;
        let dir = self.clone();
        let every = self.ttl / 3;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => {
                        if let Err(e) = dir.kv.delete(&info.relay_id).await {
                            tracing::warn!(error = %e, "cannot remove this relay from the directory");
                        }
                        return;
                    }
                }
                if let Err(e) = dir.put(&info).await {
                    tracing::warn!(error = %e, "cannot refresh this relay's directory entry");
                }
            }
        });
    }
}
