//! The command line of `m87-server`: the subcommands (one per role) and their arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use m87_control_plane::api::client_addr::TrustedProxies;
use m87_control_plane::config::{self, NatsSettings, ServerConfig, Settings, admin_emails_or_env};

/// The m87 platform: control plane and REST API.
#[derive(Debug, Parser)]
#[command(name = "m87-server", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    #[command(flatten)]
    pub(crate) serve: ServeArgs,

    /// Where m87 keeps its database (single machine), TLS certificates and bootstrap admin key.
    #[arg(
        long,
        env = "M87_DATA_DIR",
        default_value = "./m87-data",
        global = true
    )]
    pub(crate) data_dir: PathBuf,

    /// Log lines as human-readable text or JSON (filter with RUST_LOG).
    #[arg(long, env = "M87_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// The audit trail: `verify` its hash chain; `status` of the SIEM export (also as
    /// `m87-server audit-export status`).
    #[command(alias = "audit-export")]
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the chain: MongoDB's with --mongodb-uri (M87_MONGODB_URI), else the data
    /// directory's SQLite.
    Verify {
        #[command(flatten)]
        mongo: MaybeMongo,
    },
    /// Each sink's cursor, lag, delivered, retried, rejected and last error, from the running
    /// server at --api-url with the data directory's admin key (or M87_API_KEY).
    Status {
        #[arg(long, env = "M87_API_URL", default_value = "https://127.0.0.1:8085")]
        api_url: String,
    },
}

/// MongoDB, for maintenance commands that work on a fleet's database or the data directory.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MaybeMongo {
    /// MongoDB connection string (fleet mode).
    #[arg(long, env = "M87_MONGODB_URI")]
    pub(crate) mongodb_uri: Option<String>,
    /// MongoDB database.
    #[arg(long, env = "M87_MONGODB_DATABASE", default_value = "m87")]
    pub(crate) mongodb_database: String,
}

impl MaybeMongo {
    pub(crate) fn pair(&self) -> Option<(&str, &str)> {
        (self.mongodb_uri.as_deref()).map(|uri| (uri, self.mongodb_database.as_str()))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Drop a read model (or all) and rebuild it from the event log: MongoDB's when
    /// --mongodb-uri (M87_MONGODB_URI) is given, else the data directory's SQLite (run that
    /// one while the server is stopped).
    Rebuild {
        /// registrations, devices, api_keys or orgs; all when omitted.
        name: Option<String>,
        #[command(flatten)]
        mongo: MaybeMongo,
    },
}

/// Where the MongoDB event store is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MongoArgs {
    /// MongoDB connection string of a replica set (`mongodb://h1,h2,h3/?replicaSet=rs0`).
    #[arg(long, env = "M87_MONGODB_URI")]
    pub(crate) mongodb_uri: String,
    /// The database holding the event log and read models.
    #[arg(long, env = "M87_MONGODB_DATABASE", default_value = "m87")]
    pub(crate) mongodb_database: String,
}

/// How to reach NATS.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NatsArgs {
    /// NATS servers, comma-separated (`nats://n1:4222,nats://n2:4222`).
    #[arg(long, env = "M87_NATS_URL", value_delimiter = ',', required = true)]
    pub(crate) nats_url: Vec<String>,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, env = "M87_NATS_CREDS")]
    pub(crate) nats_creds: Option<PathBuf>,
    /// A NATS token.
    #[arg(long, env = "M87_NATS_TOKEN")]
    pub(crate) nats_token: Option<String>,
    /// A NATS user (with --nats-password).
    #[arg(long, env = "M87_NATS_USER", requires = "nats_password")]
    pub(crate) nats_user: Option<String>,
    /// The NATS user's password.
    #[arg(long, env = "M87_NATS_PASSWORD", requires = "nats_user")]
    pub(crate) nats_password: Option<String>,
    /// PEM roots to trust for NATS over TLS (TLS is then required).
    #[arg(long, env = "M87_NATS_TLS_CA")]
    pub(crate) nats_tls_ca: Option<PathBuf>,
    /// Replicas of the event stream and the buckets (3 on a 3-node cluster).
    #[arg(long, env = "M87_NATS_REPLICAS", default_value_t = 1)]
    pub(crate) nats_replicas: usize,
}

impl NatsArgs {
    pub(crate) fn settings(&self) -> NatsSettings {
        NatsSettings {
            servers: config::server_list(&self.nats_url),
            creds: self.nats_creds.clone(),
            token: self.nats_token.clone(),
            user: self.nats_user.clone().zip(self.nats_password.clone()),
            tls_ca: self.nats_tls_ca.clone(),
            replicas: self.nats_replicas,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ControlPlaneArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    #[command(flatten)]
    pub(crate) mongo: MongoArgs,
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    /// The Ed25519 key (PKCS#8) that signs session tokens, shared by every control-plane
    /// replica; created (0600) when missing. Default: session-signing.key in the data directory.
    #[arg(long, env = "M87_SESSION_SIGNING_KEY")]
    pub(crate) session_signing_key: Option<PathBuf>,
    /// The fleet's relay secret (32 characters or more), shared with the relays.
    #[arg(long, env = "M87_RELAY_SECRET", hide_env_values = true)]
    pub(crate) relay_secret: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RelayArgs {
    /// UDP address to listen on (QUIC: device tunnels, client sessions and relay links).
    #[arg(long, env = "M87_QUIC_LISTEN", default_value = "0.0.0.0:8084")]
    pub(crate) quic_listen: SocketAddr,
    /// host:port devices and clients dial, when it differs from --quic-listen.
    #[arg(long, env = "M87_RELAY_URL")]
    pub(crate) relay_url: Option<String>,
    /// This relay's id, unique in the fleet (default: the host name and the port).
    #[arg(long, env = "M87_RELAY_ID")]
    pub(crate) relay_id: Option<String>,
    /// host:port other relays dial to reach this one (default: the announced address).
    #[arg(long, env = "M87_RELAY_PEER_ADDRESS")]
    pub(crate) peer_address: Option<String>,
    /// Control plane URLs (or one load balancer), comma-separated.
    #[arg(
        long,
        env = "M87_CONTROL_PLANE_URL",
        value_delimiter = ',',
        required = true
    )]
    pub(crate) control_plane_url: Vec<String>,
    /// SHA-256 of the control plane's TLS certificate, to pin it (AB:CD:…).
    #[arg(long, env = "M87_CONTROL_PLANE_SHA256")]
    pub(crate) control_plane_sha256: Option<String>,
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    /// The fleet's relay secret (32 characters or more), shared with the control planes.
    #[arg(long, env = "M87_RELAY_SECRET", hide_env_values = true)]
    pub(crate) relay_secret: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,

    /// UDP address of the relay (QUIC) that device tunnels and client sessions reach.
    #[arg(long, env = "M87_QUIC_LISTEN", default_value = "0.0.0.0:8084")]
    pub(crate) quic_listen: SocketAddr,

    /// The relay address devices and clients should dial (host:port), when it differs from
    /// --quic-listen (behind NAT or a load balancer).
    #[arg(long, env = "M87_RELAY_URL")]
    pub(crate) relay_url: Option<String>,
}

/// The REST API and the control plane's settings.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiArgs {
    /// Address of the HTTPS REST API.
    #[arg(long, env = "M87_API_LISTEN", default_value = "127.0.0.1:8085")]
    pub(crate) api_listen: SocketAddr,

    /// PEM certificate chain to serve (a self-signed one is made when omitted).
    #[arg(long, env = "M87_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "M87_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,

    /// Platform admins, comma-separated; the first receives the bootstrap API key.
    /// (`ADMIN_EMAILS` is read too when `M87_ADMIN_EMAILS` is not set; default admin@localhost.)
    #[arg(long, env = "M87_ADMIN_EMAILS", value_delimiter = ',')]
    pub(crate) admin_emails: Vec<m87_events::Email>,

    /// Seconds a registration request waits for a decision.
    #[arg(long, env = "M87_REGISTRATION_TTL_SECS", default_value_t = 3600)]
    pub(crate) registration_ttl_secs: u64,

    /// Seconds between a device's approval polls, as suggested to devices.
    #[arg(long, env = "M87_POLL_INTERVAL_SECS", default_value_t = 10)]
    pub(crate) poll_interval_secs: u64,

    /// Registration requests accepted per client address per minute.
    #[arg(long, env = "M87_REGISTRATIONS_PER_MINUTE", default_value_t = 30)]
    pub(crate) registrations_per_minute: u32,

    /// Registration requests accepted per address prefix (IPv4 /24, IPv6 /64) per minute.
    #[arg(long, env = "M87_REGISTRATIONS_PER_PREFIX", default_value_t = 120)]
    pub(crate) registrations_per_prefix: u32,
    /// Registration requests accepted per requested owner scope per minute.
    #[arg(long, env = "M87_REGISTRATIONS_PER_SCOPE", default_value_t = 120)]
    pub(crate) registrations_per_scope: u32,
    /// Most registration requests one owner scope may have waiting for a decision.
    #[arg(long, env = "M87_MAX_PENDING_PER_SCOPE", default_value_t = 100)]
    pub(crate) max_pending_per_scope: usize,
    /// Proxies (addresses, CIDR blocks; comma-separated) whose X-Forwarded-For names clients.
    #[arg(long, env = "M87_TRUSTED_PROXIES", default_value = "")]
    pub(crate) trusted_proxies: TrustedProxies,
    /// OIDC issuer for interactive sign-in (`m87 login`); access tokens from it are accepted.
    #[arg(long, env = "OAUTH_ISSUER")]
    pub(crate) oauth_issuer: Option<String>,

    /// The audience access tokens must carry (the API's resource identifier).
    #[arg(long, env = "OAUTH_AUDIENCE", requires = "oauth_issuer")]
    pub(crate) oauth_audience: Option<String>,

    /// The public client id the CLI signs in with.
    #[arg(long, env = "OAUTH_CLIENT_ID", default_value = "m87-cli")]
    pub(crate) oauth_client_id: String,

    /// Seconds between sweeps that record expired registration requests.
    #[arg(long, env = "M87_EXPIRY_SWEEP_SECS", default_value_t = 30)]
    pub(crate) expiry_sweep_secs: u64,
    /// SIEM export: the audit sinks file (see ops/config/audit-sinks.example.toml).
    #[arg(long, env = "M87_AUDIT_SINKS")]
    pub(crate) audit_sinks: Option<PathBuf>,
}

impl ApiArgs {
    /// The control plane's configuration from these arguments.
    pub(crate) fn server_config(self, data_dir: PathBuf) -> anyhow::Result<ServerConfig> {
        let settings = Settings {
            admin_emails: admin_emails_or_env(self.admin_emails)?,
            registration_ttl: Duration::from_secs(self.registration_ttl_secs.max(1)),
            approval_poll_interval: Duration::from_secs(self.poll_interval_secs.max(1)),
            registrations_per_minute: self.registrations_per_minute,
            registrations_per_prefix_per_minute: self.registrations_per_prefix,
            registrations_per_scope_per_minute: self.registrations_per_scope,
            max_pending_per_scope: self.max_pending_per_scope,
            trusted_proxies: self.trusted_proxies,
            expiry_sweep_interval: Duration::from_secs(self.expiry_sweep_secs.max(1)),
        };
        let oidc =
            config::oidc_config(self.oauth_issuer, self.oauth_audience, self.oauth_client_id)?;
        Ok(ServerConfig {
            data_dir,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            settings,
            oidc,
            fleet: None,
            http_limits: m87_control_plane::config::http_limits_from_env()?,
            audit_sinks: self.audit_sinks,
        })
    }
}

impl Cli {
    /// Sends log lines to stderr, as text or JSON (`--log-format`), filtered by `RUST_LOG`
    /// (default: info).
    pub fn init_tracing(&self) {
        use m87_observability::LogFormat::{Human, Json};
        let format = if matches!(self.log_format, LogFormat::Json) {
            Json
        } else {
            Human
        };
        m87_observability::init_logging("info", format);
    }
}
