//! The fleet relay role: a stateless relay process that learns the session-token key from the
//! control planes ([`HttpLink`]), keeps presence and its own announcement in NATS, and reaches
//! the other relays over relay-to-relay links. [`FleetRelay::start`] brings it up to the point
//! where the event feed can be followed; [`FleetRelay::announce_and_run`] tells the fleet and
//! serves. Also the address rules every relay shares: which names its certificate covers, the
//! address devices and clients dial, and the TLS server name they expect.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use m87_events::api::RelayEndpoint;
use tokio::sync::watch;

use crate::control_link::HttpLink;
use crate::directory::{DirectoryConfig, RelayDirectory, RelayInfo};
use crate::endpoint::RelayIdentity;
use crate::fleet::{FleetConfig, PeerClientConfig};
use crate::presence::{NatsPresence, NatsPresenceConfig, PresenceRegistry};
use crate::revocation::{AccessOracle, watch_revocations};
use crate::{ControlPlaneLink, Relay, RelayConfig};

/// Settings of the relay role.
#[derive(Clone)]
pub struct RelayRole {
    /// This relay's id.
    pub relay_id: String,
    /// UDP address to bind.
    pub quic_listen: SocketAddr,
    /// `host:port` devices and clients dial, when it differs from the bound address.
    pub public_address: Option<String>,
    /// `host:port` other relays dial, when it differs from the announced address.
    pub peer_address: Option<String>,
    /// Where the relay keeps its TLS identity.
    pub data_dir: PathBuf,
    /// Control plane base URLs.
    pub control_planes: Vec<String>,
    /// TLS towards the control planes (pinned, or trusting anything), else the system's roots.
    pub control_plane_tls: Option<rustls::ClientConfig>,
    /// The fleet's relay secret.
    pub secret: String,
    /// Replicas of the NATS buckets.
    pub nats_replicas: usize,
    /// Client configuration for relay-to-relay links.
    pub peer_client_config: PeerClientConfig,
}

impl std::fmt::Debug for RelayRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRole")
            .field("relay_id", &self.relay_id)
            .field("quic_listen", &self.quic_listen)
            .finish_non_exhaustive()
    }
}

/// What a started relay reports once it listens.
#[derive(Debug, Clone)]
pub struct RelayStarted {
    /// The bound UDP address.
    pub relay_addr: SocketAddr,
    /// The address announced to devices and clients.
    pub relay_public: String,
    /// Where peers dial.
    pub peer_address: SocketAddr,
    /// The certificate's fingerprint.
    pub fingerprint: String,
}

/// A fleet relay, bound and linked to the control planes, not yet announced.
pub struct FleetRelay {
    node: Relay,
    link: Arc<HttpLink>,
    nats: async_nats::Client,
    directory: RelayDirectory,
    info: RelayInfo,
    started: RelayStarted,
}

impl std::fmt::Debug for FleetRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetRelay")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl FleetRelay {
    /// Loads the TLS identity, waits for a control plane to hand out the session-token key,
    /// connects to NATS (awaiting `nats` only then), opens the presence bucket and the relay
    /// directory, and binds the QUIC endpoint.
    pub async fn start(
        role: RelayRole,
        nats: impl Future<Output = anyhow::Result<async_nats::Client>>,
        stopping: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let names =
            certificate_names(&[role.public_address.as_deref(), role.peer_address.as_deref()]);
        let identity = RelayIdentity::load_or_create(&role.data_dir.join("tls"), &names)?;
        let fingerprint = identity.fingerprint();
        let link = Arc::new(HttpLink::new(
            role.control_planes.clone(),
            role.control_plane_tls.clone(),
            role.secret.clone(),
            role.relay_id.clone(),
        )?);
        let mut waiting = stopping.clone();
        let verifier = link.bootstrap(&mut waiting).await?;
        let nats = nats.await?;
        let presence = open_presence(&nats, role.nats_replicas).await?;
        let directory = open_directory(&nats, role.nats_replicas, stopping.clone()).await?;
        // Bind first: the announced and peer addresses may depend on the bound port.
        let socket = std::net::UdpSocket::bind(role.quic_listen)
            .with_context(|| format!("binding the relay to {}/udp", role.quic_listen))?;
        let relay_addr = socket.local_addr()?;
        let relay_public = announced_address(role.public_address.as_deref(), relay_addr);
        let peer_address = resolve(role.peer_address.as_deref().unwrap_or(&relay_public)).await?;
        let node = Relay::with_socket(
            socket,
            RelayConfig {
                relay_id: role.relay_id.clone(),
                verifier,
                link: Arc::clone(&link) as Arc<dyn ControlPlaneLink>,
                identity,
                fleet: Some(FleetConfig {
                    presence: Arc::new(presence.clone()) as Arc<dyn PresenceRegistry>,
                    directory: directory.clone(),
                    peer_address,
                    secret: role.secret.clone(),
                    peer_client_config: role.peer_client_config.clone(),
                }),
            },
        )?;
        let info = RelayInfo {
            relay_id: role.relay_id.clone(),
            address: relay_public.clone(),
            server_name: server_name_of(&relay_public),
            cert_sha256: fingerprint.clone(),
            peer_address,
        };
        let started = RelayStarted {
            relay_addr,
            relay_public,
            peer_address,
            fingerprint,
        };
        Ok(Self {
            node,
            link,
            nats,
            directory,
            info,
            started,
        })
    }

    /// The NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Follows `feed` until `stopping` to cut off what was revoked (see
    /// [`watch_revocations`]); the control planes answer the access checks.
    pub fn follow_revocations(
        &self,
        feed: tokio::sync::broadcast::Receiver<m87_events::EventEnvelope>,
        access_may_shrink: fn(&m87_events::DomainEvent) -> bool,
        stopping: watch::Receiver<bool>,
    ) {
        let oracle = Arc::clone(&self.link) as Arc<dyn AccessOracle>;
        watch_revocations(
            feed,
            self.node.handle(),
            oracle,
            access_may_shrink,
            stopping,
        );
    }

    /// Announces this relay in the directory and serves until `stopping`, in a task.
    pub async fn announce_and_run(
        self,
        stopping: watch::Receiver<bool>,
    ) -> (RelayStarted, tokio::task::JoinHandle<()>) {
        self.directory
            .announce(self.info.clone(), stopping.clone())
            .await;
        let s = &self.started;
        tracing::info!(relay = %self.info.relay_id, address = %s.relay_addr, announced = %s.relay_public, peer = %s.peer_address, sha256 = %s.fingerprint, "relay listening (QUIC)");
        let task = tokio::spawn(self.node.run(stopping));
        (self.started, task)
    }
}

/// Runs `attempt` until it succeeds or a minute has passed: just after NATS restarts,
/// JetStream answers only once its streams and buckets have elected leaders.
async fn patiently<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = std::time::Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                tracing::warn!(error = %format!("{e:#}"), "{what}: not ready yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context(what.to_owned())),
        }
    }
}

/// Opens the presence bucket, patiently.
pub async fn open_presence(
    nats: &async_nats::Client,
    replicas: usize,
) -> anyhow::Result<NatsPresence> {
    patiently("opening the presence bucket", || async {
        Ok(NatsPresence::new(
            nats.clone(),
            NatsPresenceConfig {
                replicas: replicas.max(1),
                ..NatsPresenceConfig::default()
            },
        )
        .await?)
    })
    .await
}

/// Opens the relay directory, patiently.
pub async fn open_directory(
    nats: &async_nats::Client,
    replicas: usize,
    stopping: watch::Receiver<bool>,
) -> anyhow::Result<RelayDirectory> {
    patiently("opening the relay directory", || async {
        RelayDirectory::open(
            nats.clone(),
            DirectoryConfig {
                replicas: replicas.max(1),
                ..DirectoryConfig::default()
            },
            stopping.clone(),
        )
        .await
    })
    .await
}

/// Where devices and clients dial an announced relay.
pub fn endpoint_of(info: &RelayInfo) -> RelayEndpoint {
    RelayEndpoint {
        address: info.address.clone(),
        server_name: info.server_name.clone(),
        cert_sha256: info.cert_sha256.clone(),
    }
}

async fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{address} resolves to nothing"))
}

/// The names a relay's certificate covers: the loopback names and the host of each given
/// `host:port` address.
pub fn certificate_names(addresses: &[Option<&str>]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for a in addresses.iter().flatten() {
        if let Some((h, _)) = a.rsplit_once(':') {
            names.push(h.trim_matches(['[', ']']).to_owned());
        }
    }
    names
}

/// The address devices and clients dial: `public_address` when given, else the bound one
/// (loopback for an unspecified address).
pub fn announced_address(public_address: Option<&str>, bound: SocketAddr) -> String {
    if let Some(a) = public_address {
        return a
            .trim()
            .trim_start_matches("quic://")
            .trim_end_matches('/')
            .to_owned();
    }
    let ip = match bound.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => "::1".parse().unwrap_or(ip),
        ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port()).to_string()
}

/// The TLS server name of an announced `host:port` (`localhost` when it has no host).
pub fn server_name_of(announced: &str) -> String {
    announced
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The relay id: `given`, else the host name and the port; 1 to 64 letters, digits, '-' or '_'.
pub fn relay_id_or_default(given: Option<String>, port: u16) -> anyhow::Result<String> {
    let relay_id = match given {
        Some(id) => id,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "relay".into());
            format!("{host}-{port}")
        }
    };
    anyhow::ensure!(
        !relay_id.is_empty()
            && relay_id.len() <= 64
            && relay_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "--relay-id must be 1 to 64 letters, digits, '-' or '_' (got {relay_id:?})"
    );
    Ok(relay_id)
}

/// What control planes read from the relays' buckets: which relay holds a device's tunnel, and
/// which relays there are.
#[derive(Clone)]
pub struct RelaysView {
    presence: NatsPresence,
    directory: RelayDirectory,
}

impl RelaysView {
    /// Opens the presence bucket and the relay directory, patiently.
    pub async fn open(
        nats: &async_nats::Client,
        replicas: usize,
        stopping: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let presence = open_presence(nats, replicas).await?;
        let directory = open_directory(nats, replicas, stopping).await?;
        Ok(Self {
            presence,
            directory,
        })
    }

    /// Whether a device's tunnel is on some relay (from the presence bucket's cache).
    pub fn is_online(&self, device: &m87_events::DeviceId) -> bool {
        self.presence.cached(device).is_some()
    }

    /// The public address of the relay holding a device's tunnel.
    pub fn relay_address(&self, device: &m87_events::DeviceId) -> Option<String> {
        let p = self.presence.cached(device)?;
        self.directory.get(&p.entry.relay_id).map(|r| r.address)
    }

    /// Where devices and clients may dial, one entry per announced relay.
    pub fn endpoints(&self) -> Vec<RelayEndpoint> {
        self.directory.relays().iter().map(endpoint_of).collect()
    }

    /// Calls `changed` with the relays' endpoints after every change, until `stopping`.
    pub fn on_change(
        &self,
        mut stopping: watch::Receiver<bool>,
        changed: impl Fn(Vec<RelayEndpoint>) + Send + 'static,
    ) {
        let directory = self.directory.clone();
        let mut changes = directory.changes();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = stopping.changed() => return,
                }
                let relays = directory.relays();
                tracing::info!(relays = ?relays.iter().map(|r| r.relay_id.as_str()).collect::<Vec<_>>(), "relays changed");
                changed(relays.iter().map(endpoint_of).collect());
            }
        });
    }
}

/// The relay of a single machine, bound: its node and where devices and clients dial it.
pub fn bind_single_relay(
    data_dir: &std::path::Path,
    quic_listen: SocketAddr,
    public_address: Option<&str>,
    verifier: m87_events::token::SessionVerifier,
    link: Arc<dyn ControlPlaneLink>,
) -> anyhow::Result<(Relay, RelayEndpoint)> {
    let names = certificate_names(&[public_address]);
    let identity = RelayIdentity::load_or_create(&data_dir.join("tls"), &names)?;
    let fingerprint = identity.fingerprint();
    let node = Relay::bind(
        quic_listen,
        RelayConfig {
            relay_id: "relay-1".into(),
            verifier,
            link,
            identity,
            fleet: None,
        },
    )
    .with_context(|| format!("binding the relay to {quic_listen}/udp"))?;
    let relay_public = announced_address(public_address, node.local_addr()?);
    let endpoint = RelayEndpoint {
        server_name: server_name_of(&relay_public),
        address: relay_public,
        cert_sha256: fingerprint,
    };
    Ok((node, endpoint))
}
