//! `m87-server` as a library: the control plane and the relay node wired together — both in
//! one process on a single machine, or each fleet role in its own. `main` parses arguments,
//! sets up tracing and calls [`run`].
//!
//! # Layout
//!
//! - [`cli`]: the command line (subcommands and arguments).
//! - [`link`]: the relay's way to the control plane in the same process.
//! - [`fleet`]: the fleet roles, `control-plane` and `relay`, each in its own process.
//! - [`run`]: run what the command line asks for; [`run_single_machine`]: start the whole
//!   platform in one process and serve until shutdown.

pub mod cli;
pub mod fleet;
pub mod link;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use m87_control_plane::config::ServerConfig;
use m87_control_plane::domain::access::access_may_shrink;
use m87_control_plane::server::{self, Platform};
use m87_relay_node::revocation::{AccessOracle, watch_revocations};
use m87_relay_node::role::bind_single_relay;
use m87_transport::tls::Fingerprint;
use tokio::net::TcpListener;

use cli::{AuditCommand, Cli, Command, ProjectionsCommand, ServeArgs};

/// Runs what `cli` asks for until it is done or a shutdown signal arrives.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir;
    match cli.command {
        Some(Command::Projections {
            command: ProjectionsCommand::Rebuild { name, mongo },
        }) => {
            let position = server::rebuild_projections_in(&data_dir, mongo.pair(), name.as_deref());
            let what = name.as_deref().unwrap_or("all projections");
            println!("rebuilt {what} up to event {}", position.await?);
            Ok(())
        }
        Some(Command::Audit {
            command: AuditCommand::Status { api_url },
        }) => server::print_export_status(&data_dir, &api_url).await,
        Some(Command::Audit {
            command: AuditCommand::Verify { mongo },
        }) => {
            let (report, line) = server::verify_audit_in(&data_dir, mongo.pair()).await?;
            anyhow::ensure!(report.finding.is_none(), "{line}");
            println!("{line}");
            Ok(())
        }
        Some(Command::Migrate(mongo)) => {
            let (uri, db) = (&mongo.mongodb_uri, &mongo.mongodb_database);
            println!("{}", server::migrate_mongo_report(uri, db).await?);
            Ok(())
        }
        Some(Command::ControlPlane(args)) => fleet::control_plane(data_dir, *args).await,
        Some(Command::Relay(args)) => fleet::relay(data_dir, *args).await,
        Some(Command::Serve) | None => serve(data_dir, cli.serve).await,
    }
}

pub use m87_observability::shutdown_signal;

async fn serve(data_dir: PathBuf, args: ServeArgs) -> anyhow::Result<()> {
    let api_listen = args.api.api_listen;
    let config = args.api.server_config(data_dir)?;
    let listener = TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("binding the API to {api_listen}"))?;
    let relay = RelaySettings {
        quic_listen: args.quic_listen,
        public_address: args.relay_url,
    };
    run_single_machine(config, relay, listener, shutdown_signal(), |started| {
        println!("m87-server listening on https://{}", started.api_addr);
        println!("TLS certificate fingerprint: {}", started.fingerprint);
        println!(
            "relay listening on {}/udp (devices and clients dial {})",
            started.relay_addr, started.relay_public
        );
        if let Some(path) = &started.admin_key_path {
            println!("platform admin API key written to {}", path.display());
        }
    })
    .await
}

/// Where the relay listens and how devices and clients reach it.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The UDP address to bind.
    pub quic_listen: SocketAddr,
    /// `host:port` that devices and clients dial, when it differs from the bound address.
    pub public_address: Option<String>,
}

/// What [`run`] reports once everything listens.
#[derive(Debug, Clone)]
pub struct Started {
    /// The REST API's address.
    pub api_addr: SocketAddr,
    /// The API certificate's fingerprint as clients pin it (also `<data-dir>/tls/fingerprint`).
    pub fingerprint: Fingerprint,
    /// Where the bootstrap admin key was written, when it was made now.
    pub admin_key_path: Option<std::path::PathBuf>,
    /// The relay's bound address.
    pub relay_addr: SocketAddr,
    /// The address announced to devices and clients.
    pub relay_public: String,
    /// The relay certificate's fingerprint.
    pub relay_fingerprint: String,
}

/// Runs the control plane and a relay until `shutdown` completes.
pub async fn run_single_machine(
    config: ServerConfig,
    relay: RelaySettings,
    api_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_started: impl FnOnce(&Started),
) -> anyhow::Result<()> {
    let platform = Platform::start(&config).await?;
    let cp = platform.cp.clone();

    let link = Arc::new(link::InProcessLink::new(cp.clone(), "relay-1".into()));
    let (node, endpoint) = bind_single_relay(
        &config.data_dir,
        relay.quic_listen,
        relay.public_address.as_deref(),
        cp.session_verifier(),
        link,
    )?;
    let relay_addr = node.local_addr()?;
    let (relay_public, relay_fingerprint) =
        (endpoint.address.clone(), endpoint.cert_sha256.clone());
    cp.set_relays(vec![endpoint]);
    let registry = node.registry();
    cp.set_presence(Arc::new(link::RegistryPresence(Arc::clone(&registry))));
    tracing::info!(address = %relay_addr, announced = %relay_public, sha256 = %relay_fingerprint, "relay listening (QUIC)");

    // A removed device loses its tunnel at once; whoever loses access loses their sessions.
    if let Some(feed) = cp.subscribe() {
        watch_revocations(
            feed,
            node.handle(),
            Arc::new(link::ServiceOracle(cp.clone())) as Arc<dyn AccessOracle>,
            access_may_shrink,
            platform.stopping(),
        );
    }
    let relay_task = tokio::spawn(node.run(platform.stopping()));

    on_started(&Started {
        api_addr: api_listener.local_addr()?,
        fingerprint: platform.tls.fingerprint.parse()?,
        admin_key_path: platform.admin_key_path.clone(),
        relay_addr,
        relay_public,
        relay_fingerprint,
    });
    platform.serve_api(api_listener, shutdown).await?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), relay_task).await;
    Ok(())
}
