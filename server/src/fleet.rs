//! The fleet roles, each in its own process: `m87-server control-plane` (MongoDB, NATS) and
//! `m87-server relay` (stateless; reaches the control plane over its internal relay API and
//! other relays over relay-to-relay links).
//!
//! # What is where in NATS
//!
//! - stream `M87_EVENTS`: every event, published from the store by each control plane
//!   (duplicates dropped by event id); relays follow it for revocations;
//! - KV `m87_presence`: device id → the relay holding its tunnel (written by relays);
//! - KV `m87_relays`: relay id → addresses and certificate (written by relays, read by control
//!   planes to tell devices and clients where to dial, and by relays to pin each other).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use m87_control_plane::bus::EventBus;
use m87_control_plane::bus::nats::{JetStreamBus, JetStreamConfig};
use m87_control_plane::config::ServerConfig;
use m87_control_plane::server::Platform;
use m87_control_plane::service::sessions::PresenceView;
use m87_events::api::{
    AccessPair, ErrorBody, RelayAccessAnswer, RelayAccessCheck, RelayAuthenticateRequest,
    RelayAuthenticateResponse, RelayBootstrap, RelayEndpoint, RelayPresenceReport,
    RelayRefusalReport,
};
use m87_events::token::SessionVerifier;
use m87_events::tunnel::ALPN_RELAY_LINK;
use m87_events::{DeviceId, SessionId};
use m87_relay_node::directory::{DirectoryConfig, RelayDirectory, RelayInfo};
use m87_relay_node::endpoint::RelayIdentity;
use m87_relay_node::fleet::FleetConfig;
use m87_relay_node::presence::{NatsPresence, NatsPresenceConfig, PresenceRegistry};
use m87_relay_node::{ControlPlaneLink, LiveSession, Relay, RelayConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::AccessOracle;

/// Shortest relay secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// How to reach NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsSettings {
    /// Server URLs.
    pub servers: Vec<String>,
    /// A `.creds` file (JWT and NKey).
    pub creds: Option<PathBuf>,
    /// A token.
    pub token: Option<String>,
    /// User and password.
    pub user: Option<(String, String)>,
    /// A PEM file of roots to trust for `tls://` servers.
    pub tls_ca: Option<PathBuf>,
    /// Replicas of the stream and buckets.
    pub replicas: usize,
}

impl NatsSettings {
    /// Connects, retrying the first connection until the servers answer.
    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        anyhow::ensure!(
            !self.servers.is_empty(),
            "no NATS server given (--nats-url or M87_NATS_URL)"
        );
        let mut options = match &self.creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .with_context(|| format!("reading NATS credentials {}", path.display()))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some((user, password)) = &self.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let options = options
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .reconnect_delay_callback(|attempts| {
                let exp = u32::try_from(attempts.min(16)).unwrap_or(16);
                Duration::from_millis(2u64.saturating_pow(exp)).min(Duration::from_secs(2))
            });
        let client = options
            .connect(self.servers.clone())
            .await
            .with_context(|| format!("connecting to NATS at {}", self.servers.join(",")))?;
        Ok(client)
    }

    /// The JetStream settings of the event stream.
    pub fn jetstream(&self) -> JetStreamConfig {
        JetStreamConfig {
            servers: self.servers.clone(),
            replicas: self.replicas.max(1),
            ..JetStreamConfig::default()
        }
    }
}

/// Runs `attempt` until it succeeds or a minute has passed: just after NATS restarts,
/// JetStream answers only once its streams and buckets have elected leaders.
pub async fn patiently<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
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

/// Checks a relay secret's length.
pub fn check_secret(secret: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        secret.chars().count() >= MIN_SECRET_LEN,
        "the relay secret (--relay-secret, M87_RELAY_SECRET) must be at least {MIN_SECRET_LEN} characters"
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Control plane
// ------------------------------------------------------------------------------------------------

async fn open_presence(nats: &async_nats::Client, replicas: usize) -> anyhow::Result<NatsPresence> {
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

async fn open_directory(
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

/// Presence as control planes see it: from the presence bucket's cache, with the relay's
/// public address from the directory.
struct FleetPresenceView {
    presence: NatsPresence,
    directory: RelayDirectory,
}

impl PresenceView for FleetPresenceView {
    fn is_online(&self, device: &DeviceId) -> bool {
        self.presence.cached(device).is_some()
    }

    fn relay_address(&self, device: &DeviceId) -> Option<String> {
        let p = self.presence.cached(device)?;
        self.directory.get(&p.entry.relay_id).map(|r| r.address)
    }
}

fn endpoint_of(info: &RelayInfo) -> RelayEndpoint {
    RelayEndpoint {
        address: info.address.clone(),
        server_name: info.server_name.clone(),
        cert_sha256: info.cert_sha256.clone(),
    }
}

/// What [`run_control_plane`] reports once it listens.
#[derive(Debug, Clone)]
pub struct ControlPlaneStarted {
    /// The REST API's address.
    pub api_addr: SocketAddr,
    /// The API certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// Where the bootstrap admin key was written, when this replica made it.
    pub admin_key_path: Option<PathBuf>,
}

/// Runs a fleet control-plane replica until `shutdown`. `config.fleet` must be set.
pub async fn run_control_plane(
    config: ServerConfig,
    nats: async_nats::Client,
    nats_settings: &NatsSettings,
    api_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_started: impl FnOnce(&ControlPlaneStarted),
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.fleet.is_some(),
        "the control-plane role needs MongoDB and NATS settings"
    );
    let platform = Platform::start(&config).await?;
    let cp = platform.cp.clone();
    let presence = open_presence(&nats, nats_settings.replicas).await?;
    let directory = open_directory(&nats, nats_settings.replicas, platform.stopping()).await?;
    cp.set_presence(Arc::new(FleetPresenceView {
        presence,
        directory: directory.clone(),
    }));
    // Devices and clients are told of the relays announced now.
    cp.set_relays(directory.relays().iter().map(endpoint_of).collect());
    {
        let cp = cp.clone();
        let directory = directory.clone();
        let mut changes = directory.changes();
        let mut stopping = platform.stopping();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = stopping.changed() => return,
                }
                let relays = directory.relays();
                tracing::info!(relays = ?relays.iter().map(|r| r.relay_id.as_str()).collect::<Vec<_>>(), "relays changed");
                cp.set_relays(relays.iter().map(endpoint_of).collect());
            }
        });
    }
    on_started(&ControlPlaneStarted {
        api_addr: api_listener.local_addr()?,
        fingerprint: platform.tls.fingerprint.clone(),
        admin_key_path: platform.admin_key_path.clone(),
    });
    platform.serve_api(api_listener, shutdown).await
}

// ------------------------------------------------------------------------------------------------
// Relay
// ------------------------------------------------------------------------------------------------

/// The relay's way to the control plane: its internal relay API over HTTPS.
pub struct HttpLink {
    http: reqwest::Client,
    bases: Vec<String>,
    secret: String,
    relay_id: String,
    next: std::sync::atomic::AtomicUsize,
}

impl HttpLink {
    /// A link to the control planes at `bases` (tried in turn), pinning `pin` when given, else
    /// trusting any certificate when `trust_any`, else the system's roots.
    pub fn new(
        bases: Vec<String>,
        pin: Option<&str>,
        trust_any: bool,
        secret: String,
        relay_id: String,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !bases.is_empty(),
            "no control plane URL given (--control-plane-url or M87_CONTROL_PLANE_URL)"
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5));
        let builder = if pin.is_some() || trust_any {
            let tls = m87_agent::quic::pinned_tls(pin).map_err(|e| anyhow::anyhow!("{e}"))?;
            builder.tls_backend_preconfigured(tls)
        } else {
            builder
        };
        Ok(Self {
            http: builder.build().context("setting up the HTTP client")?,
            bases: bases
                .into_iter()
                .map(|b| b.trim().trim_end_matches('/').to_owned())
                .collect(),
            secret,
            relay_id,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Calls `path` on one control plane after another until one answers.
    async fn call<B: serde::Serialize + Sync, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, String> {
        let mut last = String::new();
        for _ in 0..self.bases.len() {
            let i = self.next.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len();
            let base = &self.bases[i];
            let mut request = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(&self.secret);
            if let Some(b) = body {
                request = request.json(b);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let text = r.text().await.map_err(|e| e.to_string())?;
                    let text = if text.is_empty() {
                        "null".to_owned()
                    } else {
                        text
                    };
                    return serde_json::from_str(&text)
                        .map_err(|e| format!("unexpected answer: {e}"));
                }
                Ok(r) if r.status().is_server_error() => {
                    last = format!("{base} answered {}", r.status());
                }
                Ok(r) => {
                    let status = r.status();
                    let message = r
                        .json::<ErrorBody>()
                        .await
                        .map(|b| b.error.message)
                        .unwrap_or_else(|_| status.to_string());
                    return Err(message);
                }
                Err(e) => last = format!("cannot reach {base}: {e}"),
            }
            // Try the next control plane.
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Err(last)
    }

    /// Posts a record (presence, refusal) to the control plane; a failure is logged, not
    /// retried: the record is for the audit trail, the relay carries on either way.
    async fn record<B: serde::Serialize + Sync>(&self, path: &str, body: &B, what: &str) {
        if let Err(e) = self
            .call::<B, ()>(reqwest::Method::POST, path, Some(body))
            .await
        {
            tracing::warn!(error = %e, "{what}");
        }
    }

    /// The session-token public key, retried until a control plane answers or `shutdown`.
    pub async fn bootstrap(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<SessionVerifier> {
        let mut pause = Duration::from_millis(200);
        loop {
            match self
                .call::<(), RelayBootstrap>(reqwest::Method::GET, "/v1/internal/relay/config", None)
                .await
            {
                Ok(b) => {
                    return SessionVerifier::from_public_key(&b.session_public_key).map_err(|e| {
                        anyhow::anyhow!("the control plane sent an invalid session key: {e}")
                    });
                }
                Err(e) if e.contains("relay secret") => {
                    anyhow::bail!("the control plane refused this relay: {e}")
                }
                Err(e) => tracing::warn!(error = %e, "waiting for a control plane"),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => anyhow::bail!("stopped while waiting for a control plane"),
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

#[async_trait]
impl ControlPlaneLink for HttpLink {
    async fn authenticate_device(&self, api_key: &str) -> Result<DeviceId, String> {
        self.call::<_, RelayAuthenticateResponse>(
            reqwest::Method::POST,
            "/v1/internal/relay/authenticate",
            Some(&RelayAuthenticateRequest {
                api_key: api_key.to_owned(),
            }),
        )
        .await
        .map(|r| r.device_id)
    }

    async fn device_connected(&self, device: &DeviceId, remote: SocketAddr) {
        let report = RelayPresenceReport {
            device_id: device.clone(),
            relay_id: self.relay_id.clone(),
            remote: Some(remote.to_string()),
            reason: None,
            connected: true,
        };
        self.record(
            "/v1/internal/relay/presence",
            &report,
            "cannot record a device connection",
        )
        .await;
    }

    async fn device_disconnected(&self, device: &DeviceId, reason: &str) {
        let report = RelayPresenceReport {
            device_id: device.clone(),
            relay_id: self.relay_id.clone(),
            remote: None,
            reason: Some(reason.to_owned()),
            connected: false,
        };
        self.record(
            "/v1/internal/relay/presence",
            &report,
            "cannot record a device disconnection",
        )
        .await;
    }

    async fn session_refused(
        &self,
        session: Option<SessionId>,
        device: Option<DeviceId>,
        code: &str,
        reason: &str,
    ) {
        let report = RelayRefusalReport {
            session_id: session,
            device_id: device,
            relay_id: self.relay_id.clone(),
            code: code.to_owned(),
            reason: reason.to_owned(),
        };
        self.record(
            "/v1/internal/relay/refusals",
            &report,
            "cannot record a refused session",
        )
        .await;
    }
}

#[async_trait]
impl AccessOracle for HttpLink {
    async fn still_allowed(&self, sessions: &[LiveSession]) -> Vec<bool> {
        let mut out = Vec::with_capacity(sessions.len());
        for chunk in sessions.chunks(m87_control_plane::api::internal::MAX_ACCESS_PAIRS) {
            let check = RelayAccessCheck {
                pairs: chunk
                    .iter()
                    .map(|s| AccessPair {
                        subject: s.subject.clone(),
                        device_id: s.device.clone(),
                    })
                    .collect(),
            };
            match self
                .call::<_, RelayAccessAnswer>(
                    reqwest::Method::POST,
                    "/v1/internal/relay/access",
                    Some(&check),
                )
                .await
            {
                Ok(a) if a.allowed.len() == chunk.len() => out.extend(a.allowed),
                Ok(_) => {
                    tracing::warn!(
                        "the control plane answered an access check with the wrong count; keeping the sessions"
                    );
                    out.extend(std::iter::repeat_n(true, chunk.len()));
                }
                Err(e) => {
                    // Without an answer the sessions stay; their tokens were valid when they
                    // started, and the next event retries.
                    tracing::warn!(error = %e, "cannot check access; keeping the sessions for now");
                    out.extend(std::iter::repeat_n(true, chunk.len()));
                }
            }
        }
        out
    }
}

/// Settings of the relay role.
#[derive(Debug, Clone)]
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
    /// Pin of the control plane's certificate.
    pub control_plane_sha256: Option<String>,
    /// Trust any control-plane certificate (development).
    pub trust_invalid_cert: bool,
    /// The fleet's relay secret.
    pub secret: String,
    /// NATS.
    pub nats: NatsSettings,
}

/// What [`run_relay`] reports once it listens.
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

async fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{address} resolves to nothing"))
}

/// Runs a relay until `shutdown`.
pub async fn run_relay(
    role: RelayRole,
    shutdown: impl Future<Output = ()> + Send,
    on_started: impl FnOnce(&RelayStarted),
) -> anyhow::Result<()> {
    check_secret(&role.secret)?;
    let (stop, stopping) = watch::channel(false);
    m87_control_plane::server::prepare_data_dir(&role.data_dir)?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for a in [&role.public_address, &role.peer_address]
        .into_iter()
        .flatten()
    {
        if let Some((h, _)) = a.rsplit_once(':') {
            names.push(h.trim_matches(['[', ']']).to_owned());
        }
    }
    let identity = RelayIdentity::load_or_create(&role.data_dir.join("tls"), &names)?;
    let fingerprint = identity.fingerprint();
    let link = Arc::new(HttpLink::new(
        role.control_planes.clone(),
        role.control_plane_sha256.as_deref(),
        role.trust_invalid_cert,
        role.secret.clone(),
        role.relay_id.clone(),
    )?);
    let mut waiting = stopping.clone();
    let verifier = link.bootstrap(&mut waiting).await?;
    let nats = role
        .nats
        .connect(&format!("m87-relay {}", role.relay_id))
        .await?;
    let presence = open_presence(&nats, role.nats.replicas).await?;
    let directory = open_directory(&nats, role.nats.replicas, stopping.clone()).await?;
    let settings = crate::RelaySettings {
        quic_listen: role.quic_listen,
        public_address: role.public_address.clone(),
    };
    // Bind first: the announced and peer addresses may depend on the bound port.
    let socket = std::net::UdpSocket::bind(role.quic_listen)
        .with_context(|| format!("binding the relay to {}/udp", role.quic_listen))?;
    let relay_addr = socket.local_addr()?;
    let relay_public = crate::announced_address(&settings, relay_addr);
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
                peer_client_config: Arc::new(|pin: &str| {
                    m87_agent::quic::client_config(ALPN_RELAY_LINK, Some(pin))
                        .map_err(|e| anyhow::anyhow!("{e}"))
                }),
            }),
        },
    )?;
    let server_name = relay_public
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    // Revocations reach this relay through the event stream.
    let bus = patiently("following the event stream", || async {
        Ok(JetStreamBus::with_client(nats.clone(), role.nats.jetstream()).await?)
    })
    .await?;
    crate::watch_revocations(
        bus.subscribe(),
        node.handle(),
        Arc::clone(&link) as Arc<dyn AccessOracle>,
        stopping.clone(),
    );
    directory
        .announce(
            RelayInfo {
                relay_id: role.relay_id.clone(),
                address: relay_public.clone(),
                server_name,
                cert_sha256: fingerprint.clone(),
                peer_address,
            },
            stopping.clone(),
        )
        .await;
    tracing::info!(relay = %role.relay_id, address = %relay_addr, announced = %relay_public, peer = %peer_address, sha256 = %fingerprint, "relay listening (QUIC)");
    let relay_task = tokio::spawn(node.run(stopping.clone()));
    on_started(&RelayStarted {
        relay_addr,
        relay_public,
        peer_address,
        fingerprint,
    });
    shutdown.await;
    let _ = stop.send(true);
    // Give the directory a moment to remove this relay.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), relay_task).await;
    drop(bus);
    Ok(())
}
