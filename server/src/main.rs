//! `m87-server`: the m87 platform. With no subcommand it runs the control plane on its embedded
//! defaults (SQLite in the data directory, in-process bus) with one relay node, serving the REST
//! API over HTTPS and device tunnels and client sessions over QUIC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use m87_control_plane::config::{ServerConfig, Settings};
use m87_control_plane::server;

/// The m87 platform: control plane and REST API.
#[derive(Debug, Parser)]
#[command(name = "m87-server", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: ServeArgs,

    /// Where m87 keeps its database (single machine), TLS certificates and bootstrap admin key.
    #[arg(
        long,
        env = "M87_DATA_DIR",
        default_value = "./m87-data",
        global = true
    )]
    data_dir: PathBuf,

    /// Log lines as human-readable text or JSON (filter with RUST_LOG).
    #[arg(long, env = "M87_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on one machine (the default when no subcommand is given).
    Serve,
    /// Fleet: run a control-plane replica on MongoDB and NATS (no relay in this process).
    ControlPlane(Box<ControlPlaneArgs>),
    /// Fleet: run a stateless relay node that reaches the control planes over HTTPS and the
    /// other relays over relay-to-relay links.
    Relay(Box<RelayArgs>),
    /// Fleet: apply pending MongoDB migrations (collections, indexes) and exit. Control planes
    /// also apply them at start, under a lock.
    Migrate(MongoArgs),
    /// Maintain read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Drop a read model (or all) and rebuild it from the event log: MongoDB's when
    /// --mongodb-uri (M87_MONGODB_URI) is given, else the data directory's SQLite (run that
    /// one while the server is stopped).
    Rebuild {
        /// registrations, devices, api_keys or orgs; all when omitted.
        name: Option<String>,
        /// MongoDB connection string (fleet mode).
        #[arg(long, env = "M87_MONGODB_URI")]
        mongodb_uri: Option<String>,
        /// MongoDB database.
        #[arg(long, env = "M87_MONGODB_DATABASE", default_value = "m87")]
        mongodb_database: String,
    },
}

/// Where the MongoDB event store is.
#[derive(Debug, Clone, clap::Args)]
struct MongoArgs {
    /// MongoDB connection string of a replica set (`mongodb://h1,h2,h3/?replicaSet=rs0`).
    #[arg(long, env = "M87_MONGODB_URI")]
    mongodb_uri: String,
    /// The database holding the event log and read models.
    #[arg(long, env = "M87_MONGODB_DATABASE", default_value = "m87")]
    mongodb_database: String,
}

/// How to reach NATS.
#[derive(Debug, Clone, clap::Args)]
struct NatsArgs {
    /// NATS servers, comma-separated (`nats://n1:4222,nats://n2:4222`).
    #[arg(long, env = "M87_NATS_URL", value_delimiter = ',', required = true)]
    nats_url: Vec<String>,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, env = "M87_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// A NATS token.
    #[arg(long, env = "M87_NATS_TOKEN")]
    nats_token: Option<String>,
    /// A NATS user (with --nats-password).
    #[arg(long, env = "M87_NATS_USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// The NATS user's password.
    #[arg(long, env = "M87_NATS_PASSWORD", requires = "nats_user")]
    nats_password: Option<String>,
    /// PEM roots to trust for NATS over TLS (TLS is then required).
    #[arg(long, env = "M87_NATS_TLS_CA")]
    nats_tls_ca: Option<PathBuf>,
    /// Replicas of the event stream and the buckets (3 on a 3-node cluster).
    #[arg(long, env = "M87_NATS_REPLICAS", default_value_t = 1)]
    nats_replicas: usize,
}

impl NatsArgs {
    fn settings(&self) -> m87_server::fleet::NatsSettings {
        m87_server::fleet::NatsSettings {
            servers: self
                .nats_url
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            creds: self.nats_creds.clone(),
            token: self.nats_token.clone(),
            user: self.nats_user.clone().zip(self.nats_password.clone()),
            tls_ca: self.nats_tls_ca.clone(),
            replicas: self.nats_replicas,
        }
    }
}

#[derive(Debug, clap::Args)]
struct ControlPlaneArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    mongo: MongoArgs,
    #[command(flatten)]
    nats: NatsArgs,
    /// The Ed25519 key (PKCS#8) that signs session tokens, shared by every control-plane
    /// replica; created (0600) when missing. Default: session-signing.key in the data directory.
    #[arg(long, env = "M87_SESSION_SIGNING_KEY")]
    session_signing_key: Option<PathBuf>,
    /// The fleet's relay secret (32 characters or more), shared with the relays.
    #[arg(long, env = "M87_RELAY_SECRET", hide_env_values = true)]
    relay_secret: String,
}

#[derive(Debug, clap::Args)]
struct RelayArgs {
    /// UDP address to listen on (QUIC: device tunnels, client sessions and relay links).
    #[arg(long, env = "M87_QUIC_LISTEN", default_value = "0.0.0.0:8084")]
    quic_listen: SocketAddr,
    /// host:port devices and clients dial, when it differs from --quic-listen.
    #[arg(long, env = "M87_RELAY_URL")]
    relay_url: Option<String>,
    /// This relay's id, unique in the fleet (default: the host name and the port).
    #[arg(long, env = "M87_RELAY_ID")]
    relay_id: Option<String>,
    /// host:port other relays dial to reach this one (default: the announced address).
    #[arg(long, env = "M87_RELAY_PEER_ADDRESS")]
    peer_address: Option<String>,
    /// Control plane URLs (or one load balancer), comma-separated.
    #[arg(
        long,
        env = "M87_CONTROL_PLANE_URL",
        value_delimiter = ',',
        required = true
    )]
    control_plane_url: Vec<String>,
    /// SHA-256 of the control plane's TLS certificate, to pin it (AB:CD:…).
    #[arg(long, env = "M87_CONTROL_PLANE_SHA256")]
    control_plane_sha256: Option<String>,
    #[command(flatten)]
    nats: NatsArgs,
    /// The fleet's relay secret (32 characters or more), shared with the control planes.
    #[arg(long, env = "M87_RELAY_SECRET", hide_env_values = true)]
    relay_secret: String,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    api: ApiArgs,

    /// UDP address of the relay (QUIC) that device tunnels and client sessions reach.
    #[arg(long, env = "M87_QUIC_LISTEN", default_value = "0.0.0.0:8084")]
    quic_listen: SocketAddr,

    /// The relay address devices and clients should dial (host:port), when it differs from
    /// --quic-listen (behind NAT or a load balancer).
    #[arg(long, env = "M87_RELAY_URL")]
    relay_url: Option<String>,
}

/// The REST API and the control plane's settings.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// Address of the HTTPS REST API.
    #[arg(long, env = "M87_API_LISTEN", default_value = "127.0.0.1:8085")]
    api_listen: SocketAddr,

    /// PEM certificate chain to serve (a self-signed one is made when omitted).
    #[arg(long, env = "M87_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "M87_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Platform admins, comma-separated; the first receives the bootstrap API key.
    /// (`ADMIN_EMAILS` is read too when `M87_ADMIN_EMAILS` is not set; default admin@localhost.)
    #[arg(long, env = "M87_ADMIN_EMAILS", value_delimiter = ',')]
    admin_emails: Vec<m87_events::Email>,

    /// Seconds a registration request waits for a decision.
    #[arg(long, env = "M87_REGISTRATION_TTL_SECS", default_value_t = 3600)]
    registration_ttl_secs: u64,

    /// Seconds between a device's approval polls, as suggested to devices.
    #[arg(long, env = "M87_POLL_INTERVAL_SECS", default_value_t = 10)]
    poll_interval_secs: u64,

    /// Registration requests accepted per source address per minute.
    #[arg(long, env = "M87_REGISTRATIONS_PER_MINUTE", default_value_t = 30)]
    registrations_per_minute: u32,

    /// OIDC issuer for interactive sign-in (`m87 login`); access tokens from it are accepted.
    #[arg(long, env = "OAUTH_ISSUER")]
    oauth_issuer: Option<String>,

    /// The audience access tokens must carry (the API's resource identifier).
    #[arg(long, env = "OAUTH_AUDIENCE", requires = "oauth_issuer")]
    oauth_audience: Option<String>,

    /// The public client id the CLI signs in with.
    #[arg(long, env = "OAUTH_CLIENT_ID", default_value = "m87-cli")]
    oauth_client_id: String,

    /// Seconds between sweeps that record expired registration requests.
    #[arg(long, env = "M87_EXPIRY_SWEEP_SECS", default_value_t = 30)]
    expiry_sweep_secs: u64,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("m87-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir;
    match cli.command {
        Some(Command::Projections {
            command:
                ProjectionsCommand::Rebuild {
                    name,
                    mongodb_uri,
                    mongodb_database,
                },
        }) => {
            let position = match mongodb_uri {
                Some(uri) => {
                    let db =
                        m87_control_plane::store::mongo::connect_database(&uri, &mongodb_database)
                            .await?;
                    server::rebuild_projections_mongo(&db, name.as_deref()).await?
                }
                None => server::rebuild_projections(&data_dir, name.as_deref()).await?,
            };
            println!(
                "rebuilt {} up to event {position}",
                name.as_deref().unwrap_or("all projections")
            );
            Ok(())
        }
        Some(Command::Migrate(mongo)) => {
            let db = m87_control_plane::store::mongo::connect_database(
                &mongo.mongodb_uri,
                &mongo.mongodb_database,
            )
            .await?;
            let applied = m87_control_plane::store::mongo::migrate(&db).await?;
            let current = m87_migrations::mongo::current_version(&db)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if applied.is_empty() {
                println!("MongoDB schema is up to date (version {current})");
            } else {
                println!(
                    "applied MongoDB migrations {applied:?}; schema is now at version {current}"
                );
            }
            Ok(())
        }
        Some(Command::ControlPlane(args)) => control_plane(data_dir, *args).await,
        Some(Command::Relay(args)) => relay(data_dir, *args).await,
        Some(Command::Serve) | None => serve(data_dir, cli.serve).await,
    }
}

async fn control_plane(data_dir: PathBuf, args: ControlPlaneArgs) -> anyhow::Result<()> {
    m87_server::fleet::check_secret(&args.relay_secret)?;
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
    let mut config = server_config(data_dir, args.api)?;
    config.fleet = Some(m87_control_plane::config::FleetConfig {
        database,
        nats: nats.clone(),
        jetstream: nats_settings.jetstream(),
        signing_key,
        relay_secret: args.relay_secret,
    });
    let listener = tokio::net::TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("binding the API to {api_listen}"))?;
    m87_server::fleet::run_control_plane(
        config,
        nats,
        &nats_settings,
        listener,
        shutdown_signal(),
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

async fn relay(data_dir: PathBuf, args: RelayArgs) -> anyhow::Result<()> {
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
    let role = m87_server::fleet::RelayRole {
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
    m87_server::fleet::run_relay(role, shutdown_signal(), |started| {
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

/// Platform admins: `--admin-emails` / `M87_ADMIN_EMAILS`, else `ADMIN_EMAILS`, else
/// `admin@localhost`.
fn admin_emails(given: Vec<m87_events::Email>) -> anyhow::Result<Vec<m87_events::Email>> {
    if !given.is_empty() {
        return Ok(given);
    }
    let from_env = std::env::var("ADMIN_EMAILS").unwrap_or_default();
    let parsed: Result<Vec<m87_events::Email>, _> = from_env
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::parse)
        .collect();
    let parsed = parsed.map_err(|e| anyhow::anyhow!("ADMIN_EMAILS: {e}"))?;
    if parsed.is_empty() {
        Ok(vec![m87_control_plane::config::default_admin()])
    } else {
        Ok(parsed)
    }
}

fn server_config(data_dir: PathBuf, args: ApiArgs) -> anyhow::Result<ServerConfig> {
    let settings = Settings {
        admin_emails: admin_emails(args.admin_emails)?,
        registration_ttl: Duration::from_secs(args.registration_ttl_secs.max(1)),
        approval_poll_interval: Duration::from_secs(args.poll_interval_secs.max(1)),
        registrations_per_minute: args.registrations_per_minute,
        expiry_sweep_interval: Duration::from_secs(args.expiry_sweep_secs.max(1)),
    };
    let oidc = match (args.oauth_issuer, args.oauth_audience) {
        (Some(issuer), Some(audience)) => Some(m87_control_plane::auth::OidcConfig::new(
            issuer,
            audience,
            args.oauth_client_id,
        )),
        (Some(_), None) => anyhow::bail!("--oauth-issuer needs --oauth-audience (OAUTH_AUDIENCE)"),
        _ => None,
    };
    Ok(ServerConfig {
        data_dir,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        settings,
        oidc,
        fleet: None,
    })
}

async fn serve(data_dir: PathBuf, args: ServeArgs) -> anyhow::Result<()> {
    let api_listen = args.api.api_listen;
    let config = server_config(data_dir, args.api)?;
    let listener = tokio::net::TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("binding the API to {api_listen}"))?;
    let relay = m87_server::RelaySettings {
        quic_listen: args.quic_listen,
        public_address: args.relay_url,
    };
    m87_server::run(config, relay, listener, shutdown_signal(), |started| {
        println!("m87-server listening on https://{}", started.api_addr);
        println!(
            "TLS certificate SHA-256 fingerprint: {}",
            started.fingerprint
        );
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
