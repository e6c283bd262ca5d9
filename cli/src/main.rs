//! `m87`: the command-line interface of m87, and the device runtime (`m87 runtime …`).

mod auth;
mod commands;
mod context;
mod output;
mod remote;
mod session;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use m87_events::{DeviceName, Email, KeyId, OrgId, Role};
use m87_transport::http::ApiError;
use output::Output;

/// Secure, outbound-only access to fleets of Linux devices.
///
/// The server comes from M87_API_URL (or the one stored by `m87 login`); the key from
/// M87_API_KEY (or `m87 login`). M87_TRUST_INVALID_CERT=true accepts a self-signed server
/// certificate (development only).
#[derive(Debug, Parser)]
#[command(name = "m87", version, about, long_about)]
struct Cli {
    /// How to print results: aligned tables, or JSON for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in: with the server's OpenID Connect provider, or with an API key.
    ///
    /// Without --api-key: the OAuth 2.0 device flow. m87 shows a URL and a code to approve in a
    /// browser (on any machine), then stores the tokens in the credentials file and renews them
    /// as they expire. The provider comes from the server (GET /v1/auth/config); M87_AUTH_DOMAIN
    /// (issuer), M87_AUTH_CLIENT_ID and M87_AUTH_AUDIENCE override it. A browser is opened when
    /// there is a display, unless M87_NO_BROWSER=1.
    ///
    /// Credentials are used in this order: M87_API_KEY, else the stored API key, else the stored
    /// login session. Each login replaces the stored login of the other kind.
    Login {
        /// A user API key (m87u_…), from `m87 api-keys create` or the server's admin.key;
        /// `-` reads it from standard input (keeps it out of the process list).
        #[arg(long)]
        api_key: Option<String>,
        /// The server (default: M87_API_URL, else https://127.0.0.1:8085).
        #[arg(long)]
        api_url: Option<String>,
    },
    /// Remove the stored API key and login session (revoking the session at the provider).
    Logout,
    /// The server, who you are, your organizations, and how you are logged in.
    Status,
    /// List, inspect, approve and reject devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Create, list and revoke user API keys.
    #[command(name = "api-keys")]
    ApiKeys {
        #[command(subcommand)]
        command: ApiKeysCommand,
    },
    /// Copy files and directories between this machine and a device.
    ///
    /// One side is `<device>:/path`. Permissions and modification times are kept; a broken
    /// transfer never leaves a half-written file under the final name.
    Cp {
        /// Source: a local path or <device>:/path.
        src: String,
        /// Destination: a local path or <device>:/path.
        dst: String,
        /// Copy directories recursively.
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Make a device directory match a local one (or the reverse), sending only what changed.
    ///
    /// Compares size and modification time, then content digests; large changed files send only
    /// their changed blocks.
    Sync {
        /// Source: a local directory or <device>:/path.
        src: String,
        /// Destination: a local directory or <device>:/path.
        dst: String,
        /// Delete files on the destination that the source does not have.
        #[arg(long)]
        delete: bool,
        /// Leave paths matching this glob alone (repeatable).
        #[arg(long = "exclude", value_name = "PATTERN")]
        excludes: Vec<String>,
        /// Show what would change, change nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Keep running and sync again within a second of every local change.
        #[arg(long)]
        watch: bool,
    },
    /// Organizations, their members and roles (admin, member, viewer).
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Run this machine as an m87 device.
    Runtime {
        #[command(subcommand)]
        command: RuntimeCommand,
    },
    /// `m87 <device> exec|shell|forward …`: operate one device (see `m87 <device> --help`).
    #[command(external_subcommand)]
    Device(Vec<String>),
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// Devices and registration requests you can see.
    #[command(alias = "ls")]
    List,
    /// One device in detail (by name, id, request id, or a unique prefix).
    Show {
        /// Name, device id, request id or unique prefix.
        device: String,
    },
    /// Approve a pending registration request.
    Approve {
        /// The request id (or the pending device's name, id or a unique prefix).
        request: String,
    },
    /// Reject a pending request, or remove an approved device.
    Reject {
        /// Request id, device id, name or unique prefix.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeysCommand {
    /// Create a user API key and print it (once).
    Create {
        /// Whose key (platform admins only; default: yourself).
        #[arg(long)]
        email: Option<Email>,
        /// A label to recognise the key by.
        #[arg(long)]
        name: Option<String>,
    },
    /// Your API keys (all user keys for platform admins).
    #[command(alias = "ls")]
    List,
    /// Revoke an API key by id.
    Revoke {
        /// The key's id (from `m87 api-keys list`).
        id: KeyId,
    },
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// Create an organization; you become its admin.
    Create {
        /// Its id: lowercase letters, digits and '-'.
        id: OrgId,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Your organizations.
    #[command(alias = "ls")]
    List,
    /// Delete an organization (admins only).
    Delete {
        /// The organization.
        id: OrgId,
    },
    /// Manage members.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
}

#[derive(Debug, Subcommand)]
enum MembersCommand {
    /// Add a member (admins only).
    Add {
        /// The organization.
        org: OrgId,
        /// The user's email.
        email: Email,
        /// admin (approves devices, manages members and access), member (operates devices) or
        /// viewer (reads only).
        #[arg(long, default_value = "member")]
        role: Role,
    },
    /// Remove a member (admins; anyone may remove themselves).
    Remove {
        /// The organization.
        org: OrgId,
        /// The user's email.
        email: Email,
    },
    /// List the members.
    #[command(alias = "ls")]
    List {
        /// The organization.
        org: OrgId,
    },
    /// Change a member's role (admins only).
    Role {
        /// The organization.
        org: OrgId,
        /// The user's email.
        email: Email,
        /// admin, member or viewer.
        role: Role,
    },
}

#[derive(Debug, Subcommand)]
enum RuntimeCommand {
    /// Register this device (once), wait for approval, then stay enrolled until stopped.
    ///
    /// Environment: M87_API_URL, OWNER_REFERENCE (instead of --email/--org),
    /// M87_APPROVAL_POLL_SECS (poll interval), M87_CONFIG_DIR (state directory),
    /// M87_WORKER_THREADS (async worker threads, default 1).
    Run {
        /// Register under this user's scope.
        #[arg(long, conflicts_with = "org")]
        email: Option<Email>,
        /// Register under this organization's scope.
        #[arg(long)]
        org: Option<OrgId>,
        /// The device's name (default: the host name).
        #[arg(long)]
        name: Option<DeviceName>,
    },
    /// Show this device's registration state.
    Status,
    /// Remove this device's credentials (the device id is kept).
    Logout,
}

/// Logs go to stderr, filtered by RUST_LOG (default: warnings); M87_LOG_FORMAT=json gives JSON
/// lines.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let json = std::env::var("M87_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let out = cli.output;
    if let Command::Device(args) = cli.command {
        return commands::remote::run(args, out).await;
    }
    dispatch_local(cli.command, out).await.map(|()| 0)
}

async fn dispatch_local(command: Command, out: Output) -> anyhow::Result<()> {
    match command {
        Command::Device(_) => Ok(()),
        Command::Login { api_key, api_url } => commands::login::login(api_key, api_url).await,
        Command::Logout => commands::login::logout().await,
        Command::Status => commands::login::status(out).await,
        Command::Devices { command } => match command {
            DevicesCommand::List => commands::devices::list(out).await,
            DevicesCommand::Show { device } => commands::devices::show(&device, out).await,
            DevicesCommand::Approve { request } => commands::devices::approve(&request, out).await,
            DevicesCommand::Reject { id } => commands::devices::reject(&id, out).await,
        },
        Command::ApiKeys { command } => match command {
            ApiKeysCommand::Create { email, name } => {
                commands::api_keys::create(email, name, out).await
            }
            ApiKeysCommand::List => commands::api_keys::list(out).await,
            ApiKeysCommand::Revoke { id } => commands::api_keys::revoke(id).await,
        },
        Command::Cp {
            src,
            dst,
            recursive,
        } => commands::files::cp(&src, &dst, recursive, out).await,
        Command::Sync {
            src,
            dst,
            delete,
            excludes,
            dry_run,
            watch,
        } => {
            commands::files::sync(
                &src,
                &dst,
                commands::files::SyncArgs {
                    delete,
                    excludes,
                    dry_run,
                    watch,
                },
                out,
            )
            .await
        }
        Command::Org { command } => match command {
            OrgCommand::Create { id, name } => commands::orgs::create(id, name, out).await,
            OrgCommand::List => commands::orgs::list(out).await,
            OrgCommand::Delete { id } => commands::orgs::delete(id).await,
            OrgCommand::Members { command } => match command {
                MembersCommand::Add { org, email, role } => {
                    commands::orgs::add(org, email, role).await
                }
                MembersCommand::Remove { org, email } => commands::orgs::remove(org, email).await,
                MembersCommand::List { org } => commands::orgs::members(org, out).await,
                MembersCommand::Role { org, email, role } => {
                    commands::orgs::role(org, email, role).await
                }
            },
        },
        Command::Runtime { command } => match command {
            RuntimeCommand::Run { email, org, name } => {
                commands::runtime::run(email, org, name).await
            }
            RuntimeCommand::Status => commands::runtime::status(out),
            RuntimeCommand::Logout => commands::runtime::logout(),
        },
    }
}

fn hint(err: &anyhow::Error) -> Option<&'static str> {
    match err.downcast_ref::<ApiError>()?.status()? {
        401 => Some("check M87_API_KEY, or run `m87 login --api-key KEY`"),
        _ => None,
    }
}

/// Worker threads of the async runtime unless `M87_WORKER_THREADS` says otherwise. One: a CLI
/// session and a device runtime each drive one QUIC connection, whose packets, streams and
/// sockets then hand work to each other on one thread instead of waking another; blocking work
/// has its own threads either way. Measured on 2 cores (`loadtest/reports/`): an 8-stream
/// forward moved about 8% more with one worker than with two, for about 6% less CPU per byte.
const DEFAULT_WORKER_THREADS: usize = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match std::env::var("M87_WORKER_THREADS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("error: M87_WORKER_THREADS must be a positive number, not {v:?}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => DEFAULT_WORKER_THREADS,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    init_tracing();
    match dispatch(cli).await {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            let message = format!("{e:#}");
            match hint(&e) {
                Some(h) => eprintln!("error: {message} ({h})"),
                None => eprintln!("error: {message}"),
            }
            ExitCode::FAILURE
        }
    }
}
