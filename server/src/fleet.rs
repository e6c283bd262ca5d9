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
use m87_control_plane::bus::EventBus;
use m87_control_plane::config::{NatsSettings, ServerConfig, check_relay_secret};
use m87_control_plane::domain::access::access_may_shrink;
use m87_control_plane::server::{self, Platform, open_event_stream, patiently};
use m87_control_plane::service::sessions::PresenceView;
use m87_events::DeviceId;
use m87_events::api::RelayEndpoint;
use m87_events::tunnel::ALPN_RELAY_LINK;
use m87_relay_node::control_link::HttpLink;
use m87_relay_node::directory::{DirectoryConfig, RelayDirectory, RelayInfo};
use m87_relay_node::endpoint::RelayIdentity;
use m87_relay_node::fleet::FleetConfig;
use m87_relay_node::presence::{NatsPresence, NatsPresenceConfig, PresenceRegistry};
use m87_relay_node::revocation::{AccessOracle, watch_revocations};
use m87_relay_node::{ControlPlaneLink, Relay, RelayConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{ControlPlaneArgs, RelayArgs};

/// `m87-server control-plane`: a fleet control-plane replica until a shutdown signal.
pub(crate) async fn control_plane(data_dir: PathBuf, args: ControlPlaneArgs) -> anyhow::Result<()> {
    check_relay_secret(&args.relay_secret)?;
    let nats_settings = args.nats.settings();
    let database = m87_control_plane::store::mongo::connect_database(
        &args.mongo.mongodb_uri,
        &args.mongo.mongodb_database,
    )
    .await?;
    let nats = nats_settings.connect("m87-control-plane").await?;
    let signing_key = args
        .session_signing_key
        .unwrap_or_else(|| data_dir.join(server::SIGNING_KEY_FILE));
    let api_listen = args.api.api_listen;
    let mut config = args.api.server_config(data_dir)?;
    config.fleet = Some(m87_control_plane::config::FleetConfig {
        database,
        nats: nats.clone(),
        jetstream: nats_settings.jetstream(),
        signing_key,
        relay_secret: args.relay_secret,
    });
    let listener = TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("binding the API to {api_listen}"))?;
    run_control_plane(
        config,
        nats,
        &nats_settings,
        listener,
        crate::shutdown_signal(),
        |started| {
            println!(
                "m87-server control plane listening on https://{}",
                started.api_addr
            );
            println!(
                "TLS certificate SHA-256 fingerprint: {}",
                started.fingerprint
            );
            if let Some(path) = &started.admin_key_path {
                println!("platform admin API key written to {}", path.display());
            }
        },
    )
    .await
}

/// `m87-server relay`: a fleet relay until a shutdown signal.
pub(crate) async fn relay(data_dir: PathBuf, args: RelayArgs) -> anyhow::Result<()> {
    let relay_id = match args.relay_id {
        Some(id) => id,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "relay".into());
            format!("{host}-{}", args.quic_listen.port())
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
    let role = RelayRole {
        relay_id,
        quic_listen: args.quic_listen,
        public_address: args.relay_url,
        peer_address: args.peer_address,
        data_dir,
        control_planes: args.control_plane_url,
        control_plane_sha256: args.control_plane_sha256,
        trust_invalid_cert: m87_agent::http::trust_invalid_cert_from_env(),
        secret: args.relay_secret,
        nats: args.nats.settings(),
    };
    run_relay(role, crate::shutdown_signal(), |started| {
        println!(
            "m87-server relay listening on {}/udp (devices and clients dial {}, relays dial {})",
            started.relay_addr, started.relay_public, started.peer_address
        );
        println!(
            "relay TLS certificate SHA-256 fingerprint: {}",
            started.fingerprint
        );
    })
    .await
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
    check_relay_secret(&role.secret)?;
    let (stop, stopping) = watch::channel(false);
    server::prepare_data_dir(&role.data_dir)?;
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
    let tls = match (&role.control_plane_sha256, role.trust_invalid_cert) {
        (None, false) => None,
        (pin, _) => {
            Some(m87_agent::quic::pinned_tls(pin.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
    };
    let link = Arc::new(HttpLink::new(
        role.control_planes.clone(),
        tls,
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
    let bus =
        open_event_stream(&nats, &role.nats.jetstream(), "following the event stream").await?;
    watch_revocations(
        bus.subscribe(),
        node.handle(),
        Arc::clone(&link) as Arc<dyn AccessOracle>,
        access_may_shrink,
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
