//! The fleet presence registry on a NATS JetStream key-value bucket, with a local cache fed by
//! a watch over all keys.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use m87_events::DeviceId;

use super::{Presence, PresenceEntry, PresenceError, PresenceRegistry, same_tunnel};

/// Settings of the NATS presence registry.
#[derive(Debug, Clone)]
pub struct NatsPresenceConfig {
    /// The key-value bucket.
    pub bucket: String,
    /// How long an entry lives without a refresh (the bucket's max age). Refresh well within
    /// it, for example every third of it.
    pub ttl: Duration,
    /// Bucket replicas (1 on a single server; 3 in a cluster).
    pub replicas: usize,
    /// Ask the server (NATS 2.11 or newer) to write a marker when an entry expires, so the
    /// watch removes it from every cache at once. On older servers this is left off; cached
    /// entries then expire by their own age.
    pub limit_markers: bool,
    /// The timeout of each request to NATS (a write waits this long for its acknowledgement).
    pub request_timeout: Duration,
}

impl Default for NatsPresenceConfig {
    fn default() -> Self {
        Self {
            bucket: "m87_presence".to_owned(),
            ttl: Duration::from_secs(30),
            replicas: 1,
            limit_markers: true,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A cached entry: the presence and the server time it was written.
#[derive(Debug, Clone)]
struct Cached {
    presence: Presence,
    written: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Cache {
    /// Whether the watch has delivered every entry that existed when it started and is still
    /// running; until then (and after it fails) lookups go to NATS.
    current: bool,
    entries: HashMap<String, Cached>,
}

/// The fleet registry on a NATS JetStream key-value bucket. Cheap to clone; the watch that
/// feeds the cache stops when the last clone is dropped.
#[derive(Clone)]
pub struct NatsPresence {
    inner: Arc<NatsInner>,
}

struct NatsInner {
    kv: kv::Store,
    ttl: Duration,
    cache: Arc<RwLock<Cache>>,
    watch_task: tokio::task::JoinHandle<()>,
}

impl Drop for NatsInner {
    fn drop(&mut self) {
        self.watch_task.abort();
    }
}

impl std::fmt::Debug for NatsPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPresence")
            .field("bucket", &self.inner.kv.name)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(format!("{what}: {err}"))
}

fn decode_entry(key: &str, value: &[u8]) -> Result<PresenceEntry, PresenceError> {
    serde_json::from_slice(value).map_err(|e| PresenceError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode_entry(entry: &PresenceEntry) -> Result<bytes::Bytes, PresenceError> {
    serde_json::to_vec(entry)
        .map(bytes::Bytes::from)
        .map_err(|e| PresenceError::Corrupt {
            key: entry.relay_id.clone(),
            reason: e.to_string(),
        })
}

fn chrono_ttl(ttl: Duration) -> chrono::Duration {
    chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)
}

impl NatsPresence {
    /// Opens (creating or updating) the bucket on `client`'s server and starts the watch that
    /// feeds the local cache.
    pub async fn new(
        client: async_nats::Client,
        config: NatsPresenceConfig,
    ) -> Result<Self, PresenceError> {
        if config.ttl < Duration::from_secs(1) {
            return Err(PresenceError::Config(
                "the time-to-live must be at least one second".to_owned(),
            ));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client);
        let markers = if config.limit_markers {
            let account = js
                .query_account()
                .await
                .map_err(|e| unavailable("querying the JetStream account", e))?;
            // API level 1 is NATS 2.11, the first with limit markers.
            account.requests.level >= 1
        } else {
            false
        };
        let kv_config = kv::Config {
            bucket: config.bucket.clone(),
            description: "m87 presence: device id -> relay holding its tunnel".to_owned(),
            history: 1,
            max_age: config.ttl,
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas.max(1),
            limit_markers: markers.then_some(config.ttl.max(Duration::from_secs(1))),
            ..Default::default()
        };
        let kv = js
            .create_or_update_key_value(kv_config)
            .await
            .map_err(|e| unavailable("creating the presence bucket", e))?;
        let cache = Arc::new(RwLock::new(Cache::default()));
        let watch_task = tokio::spawn(run_watch(kv.clone(), Arc::clone(&cache), config.ttl));
        Ok(Self {
            inner: Arc::new(NatsInner {
                kv,
                ttl: config.ttl,
                cache,
                watch_task,
            }),
        })
    }

    /// Connects to `servers` and opens the registry.
    pub async fn connect(
        servers: &[String],
        config: NatsPresenceConfig,
    ) -> Result<Self, PresenceError> {
        let client = async_nats::ConnectOptions::new()
            .name("m87-relay-presence")
            .connect(servers.to_vec())
            .await
            .map_err(|e| unavailable("connecting to NATS", e))?;
        Self::new(client, config).await
    }

    /// The cached entry of a device, without asking NATS: what the watch has seen, unless it
    /// is older than the time-to-live.
    pub fn cached(&self, device: &DeviceId) -> Option<Presence> {
        let cache = self.inner.cache.read().unwrap_or_else(|p| p.into_inner());
        let c = cache.entries.get(device.as_str())?;
        (c.written + chrono_ttl(self.inner.ttl) > Utc::now()).then(|| c.presence.clone())
    }

    /// Whether the watch is up to date (lookups of cached entries then skip NATS).
    pub fn cache_is_current(&self) -> bool {
        self.inner
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
    }

    fn cache_put(&self, device: &DeviceId, presence: Presence, written: DateTime<Utc>) {
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        let newer = cache
            .entries
            .get(device.as_str())
            .is_none_or(|c| c.presence.revision <= presence.revision);
        if newer {
            cache
                .entries
                .insert(device.as_str().to_owned(), Cached { presence, written });
        }
    }

    fn cache_remove(&self, device: &DeviceId, up_to_revision: Option<u64>) {
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        let older = cache
            .entries
            .get(device.as_str())
            .is_some_and(|c| up_to_revision.is_none_or(|r| c.presence.revision <= r));
        if older {
            cache.entries.remove(device.as_str());
        }
    }

    /// The stored entry of a device, read from NATS rather than the cache (and put into the
    /// cache). For when a cached answer proved wrong: the relay it named no longer has the
    /// device.
    pub async fn lookup_uncached(
        &self,
        device: &DeviceId,
    ) -> Result<Option<Presence>, PresenceError> {
        self.fetch(device).await
    }

    /// The stored entry of a device, read from NATS.
    async fn fetch(&self, device: &DeviceId) -> Result<Option<Presence>, PresenceError> {
        let entry = self
            .inner
            .kv
            .entry(device.as_str())
            .await
            .map_err(|e| unavailable("reading presence", e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                // The server removes an entry at its max age; one it still returns may be
                // a moment older.
                let presence = Presence {
                    entry: decode_entry(&e.key, &e.value)?,
                    revision: e.revision,
                };
                self.cache_put(device, presence.clone(), e.created);
                Ok(Some(presence))
            }
            Some(e) => {
                self.cache_remove(device, Some(e.revision));
                Ok(None)
            }
            None => {
                self.cache_remove(device, None);
                Ok(None)
            }
        }
    }
}

fn lock(cache: &RwLock<Cache>) -> std::sync::RwLockWriteGuard<'_, Cache> {
    cache.write().unwrap_or_else(|p| p.into_inner())
}

/// Applies one watched entry to the cache.
fn apply_watched(cache: &mut Cache, entry: kv::Entry) {
    let known = cache.entries.get(&entry.key).map(|c| c.presence.revision);
    // The cache may already hold a newer write of this instance than the watch has reached.
    if known.is_some_and(|r| r > entry.revision) {
        return;
    }
    match entry.operation {
        kv::Operation::Put => match decode_entry(&entry.key, &entry.value) {
            Ok(value) => {
                cache.entries.insert(
                    entry.key,
                    Cached {
                        presence: Presence {
                            entry: value,
                            revision: entry.revision,
                        },
                        written: entry.created,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "skipping a presence entry");
                cache.entries.remove(&entry.key);
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => {
            cache.entries.remove(&entry.key);
        }
    }
}

/// Follows every key of the bucket into the cache, starting with the current entries;
/// restarts after failures.
async fn run_watch(store: kv::Store, cache: Arc<RwLock<Cache>>, ttl: Duration) {
    let mut backoff = Duration::from_millis(50);
    // Without limit markers the watch is not told of expiries; drop old entries now and then.
    let mut prune = tokio::time::interval(ttl);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // `watch_all` delivers only new writes; the history variant starts with the last entry
        // of every key, so the cache starts complete.
        let started = async {
            let empty = store.status().await.map(|s| s.values() == 0);
            let watch = store.watch_with_history(">").await;
            (empty, watch)
        };
        match started.await {
            (Ok(empty), Ok(mut watch)) => {
                backoff = Duration::from_millis(50);
                // An empty bucket delivers nothing at first: the watch is current at once.
                if empty {
                    lock(&cache).current = true;
                }
                loop {
                    let next = tokio::select! {
                        next = watch.next() => next,
                        _ = prune.tick() => {
                            let limit = Utc::now() - chrono_ttl(ttl);
                            lock(&cache).entries.retain(|_, c| c.written > limit);
                            continue;
                        }
                    };
                    match next {
                        Some(Ok(entry)) => {
                            let mut cache = lock(&cache);
                            let current = entry.seen_current;
                            apply_watched(&mut cache, entry);
                            if current {
                                cache.current = true;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "presence watch failed; restarting it");
                            break;
                        }
                        None => break,
                    }
                }
            }
            (Err(e), _) => tracing::warn!(error = %e, "cannot read the presence bucket"),
            (_, Err(e)) => tracing::warn!(error = %e, "cannot watch the presence bucket"),
        }
        lock(&cache).current = false;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[async_trait]
impl PresenceRegistry for NatsPresence {
    async fn register(
        &self,
        device: &DeviceId,
        entry: &PresenceEntry,
    ) -> Result<u64, PresenceError> {
        let revision = self
            .inner
            .kv
            .put(device.as_str(), encode_entry(entry)?)
            .await
            .map_err(|e| unavailable("writing presence", e))?;
        self.cache_put(
            device,
            Presence {
                entry: entry.clone(),
                revision,
            },
            Utc::now(),
        );
        Ok(revision)
    }

    async fn refresh(
        &self,
        device: &DeviceId,
        entry: &PresenceEntry,
        revision: u64,
    ) -> Result<u64, PresenceError> {
        let value = encode_entry(entry)?;
        let mut expected = revision;
        // At most: the update, one adoption of our own newer write, one re-creation.
        for _ in 0..3 {
            match self
                .inner
                .kv
                .update(device.as_str(), value.clone(), expected)
                .await
            {
                Ok(new) => {
                    self.cache_put(
                        device,
                        Presence {
                            entry: entry.clone(),
                            revision: new,
                        },
                        Utc::now(),
                    );
                    return Ok(new);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(unavailable("refreshing presence", e)),
            }
            // The stored entry moved: find out to what.
            match self.fetch(device).await? {
                // Ours (an earlier refresh whose answer was lost): carry on from it.
                Some(p) if same_tunnel(&p.entry, entry) => expected = p.revision,
                Some(p) => {
                    return Err(PresenceError::Superseded {
                        device: device.clone(),
                        relay_id: p.entry.relay_id,
                        epoch: p.entry.epoch,
                    });
                }
                // Expired or removed meanwhile: the tunnel is still up, so claim it again,
                // unless another relay does so first.
                None => match self.inner.kv.create(device.as_str(), value.clone()).await {
                    Ok(new) => {
                        self.cache_put(
                            device,
                            Presence {
                                entry: entry.clone(),
                                revision: new,
                            },
                            Utc::now(),
                        );
                        return Ok(new);
                    }
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(e) => return Err(unavailable("re-creating presence", e)),
                },
            }
        }
        Err(PresenceError::Unavailable(format!(
            "presence of {device} kept changing during a refresh"
        )))
    }

    async fn remove_if_owner(
        &self,
        device: &DeviceId,
        revision: u64,
    ) -> Result<bool, PresenceError> {
        match self
            .inner
            .kv
            .delete_expect_revision(device.as_str(), Some(revision))
            .await
        {
            Ok(()) => {
                self.cache_remove(device, Some(revision));
                Ok(true)
            }
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {
                // What this instance cached at that revision is stale: read it afresh next time.
                self.cache_remove(device, Some(revision));
                Ok(false)
            }
            Err(e) => Err(unavailable("removing presence", e)),
        }
    }

    /// From the cache when the watch is current and has a fresh entry (it may then lag the
    /// bucket by the watch's delivery delay, typically well under a millisecond on a LAN);
    /// from NATS otherwise.
    async fn lookup(&self, device: &DeviceId) -> Result<Option<Presence>, PresenceError> {
        if self.cache_is_current()
            && let Some(p) = self.cached(device)
        {
            return Ok(Some(p));
        }
        // Not cached, stale, or the watch is not current: ask NATS (and refill the cache).
        self.fetch(device).await
    }

    fn ttl(&self) -> Duration {
        self.inner.ttl
    }
}
