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
    /// Run the platform (the default when no subcommand is given).
    Serve,
    /// Maintain read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Drop a read model (or all) and rebuild it from the event log. Run it while the server
    /// is stopped.
    Rebuild {
        /// registrations, devices or api_keys; all when omitted.
        name: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Where m87 keeps its database, TLS certificate and bootstrap admin key.
    #[arg(
        long,
        env = "M87_DATA_DIR",
        default_value = "./m87-data",
        global = true
    )]
    data_dir: PathBuf,

    /// Address of the HTTPS REST API.
    #[arg(long, env = "M87_API_LISTEN", default_value = "127.0.0.1:8085")]
    api_listen: SocketAddr,

    /// UDP address of the relay (QUIC) that device tunnels and client sessions reach.
    #[arg(long, env = "M87_QUIC_LISTEN", default_value = "0.0.0.0:8084")]
    quic_listen: SocketAddr,

    /// The relay address devices and clients should dial (host:port), when it differs from
    /// --quic-listen (behind NAT or a load balancer).
    #[arg(long, env = "M87_RELAY_URL")]
    relay_url: Option<String>,

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
    let args = cli.serve;
    match cli.command {
        Some(Command::Projections {
            command: ProjectionsCommand::Rebuild { name },
        }) => {
            let position = server::rebuild_projections(&args.data_dir, name.as_deref()).await?;
            println!(
                "rebuilt {} up to event {position}",
                name.as_deref().unwrap_or("all projections")
            );
            Ok(())
        }
        Some(Command::Serve) | None => serve(args).await,
    }
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
    let config = ServerConfig {
        data_dir: args.data_dir,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        settings,
        oidc,
    };
    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", args.api_listen))?;
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
