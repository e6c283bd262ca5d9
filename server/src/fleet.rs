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
use m87_control_plane::config::{FleetConfig, NatsSettings, ServerConfig, check_relay_secret};
use m87_control_plane::domain::access::access_may_shrink;
use m87_control_plane::server::{self, Platform, open_event_stream};
use m87_control_plane::service::sessions::PresenceFns;
use m87_events::DeviceId;
use m87_events::tunnel::ALPN_RELAY_LINK;
use m87_relay_node::role::{FleetRelay, RelayRole, RelayStarted, RelaysView, relay_id_or_default};
use m87_transport::http::trust_invalid_cert_from_env;
use m87_transport::quic::{client_config, pinned_tls};
use m87_transport::tls::Fingerprint;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{ControlPlaneArgs, RelayArgs};

/// `m87-server control-plane`: a fleet control-plane replica until a shutdown signal.
pub(crate) async fn control_plane(data_dir: PathBuf, args: ControlPlaneArgs) -> anyhow::Result<()> {
    check_relay_secret(&args.relay_secret)?;
    let signing_key = args
        .session_signing_key
        .unwrap_or_else(|| data_dir.join(server::SIGNING_KEY_FILE));
    let (mongo, nats) = (&args.mongo, &args.nats.settings());
    let fleet = FleetConfig::connect(
        &mongo.mongodb_uri,
        &mongo.mongodb_database,
        nats,
        signing_key,
        args.relay_secret,
    )
    .await?;
    let api_listen = args.api.api_listen;
    let mut config = args.api.server_config(data_dir)?;
    config.fleet = Some(fleet);
    let listener = TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("binding the API to {api_listen}"))?;
    run_control_plane(config, listener, crate::shutdown_signal(), |started| {
        println!(
            "m87-server control plane listening on https://{}",
            started.api_addr
        );
        println!("TLS certificate fingerprint: {}", started.fingerprint);
        if let Some(path) = &started.admin_key_path {
            println!("platform admin API key written to {}", path.display());
        }
    })
    .await
}

/// What [`run_control_plane`] reports once it listens.
#[derive(Debug, Clone)]
pub struct ControlPlaneStarted {
    /// The REST API's address.
    pub api_addr: SocketAddr,
    /// The API certificate's SHA-256 fingerprint, as clients pin it (also in
    /// `<data-dir>/tls/fingerprint`).
    pub fingerprint: Fingerprint,
    /// Where the bootstrap admin key was written, when this replica made it.
    pub admin_key_path: Option<PathBuf>,
}

/// Runs a fleet control-plane replica until `shutdown`. `config.fleet` must be set.
pub async fn run_control_plane(
    config: ServerConfig,
    api_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_started: impl FnOnce(&ControlPlaneStarted),
) -> anyhow::Result<()> {
    let Some(fleet) = &config.fleet else {
        anyhow::bail!("the control-plane role needs MongoDB and NATS settings")
    };
    let platform = Platform::start(&config).await?;
    let cp = platform.cp.clone();
    let relays =
        RelaysView::open(&fleet.nats, fleet.jetstream.replicas, platform.stopping()).await?;
    // Presence from the presence bucket's cache, the relay's address from the directory.
    let (online, address) = (relays.clone(), relays.clone());
    cp.set_presence(Arc::new(PresenceFns(
        move |d: &DeviceId| online.is_online(d),
        move |d: &DeviceId| address.relay_address(d),
    )));
    // Devices and clients are told of the relays announced now, and of every change.
    cp.set_relays(relays.endpoints());
    let announced = cp.clone();
    relays.on_change(platform.stopping(), move |endpoints| {
        announced.set_relays(endpoints)
    });
    on_started(&ControlPlaneStarted {
        api_addr: api_listener.local_addr()?,
        fingerprint: platform.tls.fingerprint.parse()?,
        admin_key_path: platform.admin_key_path.clone(),
    });
    platform.serve_api(api_listener, shutdown).await
}

/// `m87-server relay`: a fleet relay until a shutdown signal.
pub(crate) async fn relay(data_dir: PathBuf, args: RelayArgs) -> anyhow::Result<()> {
    let relay_id = relay_id_or_default(args.relay_id, args.quic_listen.port())?;
    let nats = args.nats.settings();
    let control_plane_tls = match (&args.control_plane_sha256, trust_invalid_cert_from_env()) {
        (None, false) => None,
        (pin, _) => Some(pinned_tls(pin.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?),
    };
    let role = RelayRole {
        relay_id,
        quic_listen: args.quic_listen,
        public_address: args.relay_url,
        peer_address: args.peer_address,
        data_dir,
        control_planes: args.control_plane_url,
        control_plane_tls,
        secret: args.relay_secret,
        nats_replicas: nats.replicas,
        peer_client_config: Arc::new(|pin: &str| {
            client_config(ALPN_RELAY_LINK, Some(pin)).map_err(|e| anyhow::anyhow!("{e}"))
        }),
    };
    run_relay(role, &nats, crate::shutdown_signal(), |started| {
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

/// Runs a relay until `shutdown`; it follows the event stream for revocations.
pub async fn run_relay(
    role: RelayRole,
    nats: &NatsSettings,
    shutdown: impl Future<Output = ()> + Send,
    on_started: impl FnOnce(&RelayStarted),
) -> anyhow::Result<()> {
    check_relay_secret(&role.secret)?;
    let (stop, stopping) = watch::channel(false);
    server::prepare_data_dir(&role.data_dir)?;
    let name = format!("m87-relay {}", role.relay_id);
    let relay = FleetRelay::start(role, nats.connect(&name), stopping.clone()).await?;
    // Revocations reach this relay through the event stream.
    let bus = open_event_stream(relay.nats(), &nats.jetstream(), "following events").await?;
    relay.follow_revocations(bus.subscribe(), access_may_shrink, stopping.clone());
    let (started, relay_task) = relay.announce_and_run(stopping).await;
    on_started(&started);
    shutdown.await;
    let _ = stop.send(true);
    // Give the directory a moment to remove this relay.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), relay_task).await;
    drop(bus);
    Ok(())
}
