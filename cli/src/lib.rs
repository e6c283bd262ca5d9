//! `m87` as a library: the command-line interface of m87 and the device runtime
//! (`m87 runtime …`). The binary parses the arguments and calls [`run`].
//!
//! # Layout
//!
//! - [`Cli`] (`args`): every command and its arguments.
//! - `commands`: one module per command group (login, devices, api-keys, files, orgs, runtime,
//!   and the `m87 <device> …` operations).
//! - `remote`: the operations on a device over a relay session (exec, shell, forward, cp, sync).
//! - `service`: the runtime as a systemd service (`m87 runtime enable|disable|start|stop|…`).
//! - `session`: asking the control plane for a session and opening it on a relay.
//! - `auth`: OpenID Connect sign-in and the stored login session.
//! - `context`: the server, the credentials and the HTTP client a command works with.
//! - `profile`: which profile is in use (`--profile`, `M87_PROFILE`, `m87 profile use`) and
//!   where its credentials file is.
//! - `output`: tables or JSON.
//! - [`run`]: start the async runtime and dispatch the command.

mod args;
mod auth;
mod commands;
mod context;
mod output;
mod profile;
mod remote;
mod service;
mod session;

use std::process::ExitCode;

pub use args::Cli;
use args::SshCommand;
use args::{
    ApiKeysCommand, AuditCommand, Command, DevicePolicyCommand, DevicesCommand, MembersCommand,
    OrgCommand, OrgPolicyCommand, RuntimeCommand,
};
use commands::profile::ProfileCommand;
use m87_events::api::DeviceListQuery;
use m87_observability::LogFormat;
use output::Output;

/// Warnings, except the certificate verifier's own log line on a TLS failure: the error that
/// follows says what failed and what to do (`RUST_LOG` still shows it).
const DEFAULT_LOG_FILTER: &str = "warn,rustls_platform_verifier=off";

/// Logs go to stderr, filtered by RUST_LOG (default: warnings); M87_LOG_FORMAT=json gives JSON
/// lines. `m87 runtime run` also keeps its log file (see `commands::runtime::open_log`); its
/// path is returned.
fn init_tracing(command: &Command) -> Option<std::path::PathBuf> {
    let json = std::env::var("M87_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let format = if json {
        LogFormat::Json
    } else {
        LogFormat::Human
    };
    if let Command::Runtime {
        command: RuntimeCommand::Run { .. },
    } = command
        && let Some((path, filter, writer)) = commands::runtime::open_log()
    {
        m87_observability::init_logging_with_file(DEFAULT_LOG_FILTER, format, &filter, writer);
        return Some(path);
    }
    m87_observability::init_logging(DEFAULT_LOG_FILTER, format);
    None
}

async fn dispatch(cli: Cli, runtime_log: Option<std::path::PathBuf>) -> anyhow::Result<i32> {
    let out = cli.output;
    if let Command::Device(args) = cli.command {
        return commands::remote::run(args, out).await;
    }
    if let Command::Version { device } = &cli.command {
        return commands::version::run(device.as_deref(), out).await;
    }
    if let Command::SshProxy { host, user } = cli.command {
        return Ok(commands::ssh::proxy(&host, user).await);
    }
    dispatch_local(cli.command, out, runtime_log)
        .await
        .map(|()| 0)
}

async fn dispatch_local(
    command: Command,
    out: Output,
    runtime_log: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    match command {
        Command::Device(_) | Command::Version { .. } | Command::SshProxy { .. } => Ok(()),
        // --- profiles, completions (i13-cli) ---
        Command::Profile { command } => match command {
            ProfileCommand::Add {
                name,
                api_url,
                fingerprint,
            } => commands::profile::add(&name, &api_url, fingerprint),
            ProfileCommand::Use { name } => commands::profile::use_profile(&name),
            ProfileCommand::List => commands::profile::list(out),
            ProfileCommand::Remove { name } => commands::profile::remove(&name),
        },
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            commands::version::completion(shell, &mut command)
        }
        // --- end i13-cli ---
        Command::Ssh { command } => match command {
            SshCommand::Enable => commands::ssh::enable(),
            SshCommand::Disable => commands::ssh::disable(),
        },
        Command::Login {
            api_key,
            api_url,
            fingerprint,
        } => commands::login::login(api_key, api_url, fingerprint).await,
        Command::Logout => commands::login::logout().await,
        Command::Status => commands::login::status(out).await,
        Command::Devices { command } => match command {
            DevicesCommand::List { name, status } => {
                let query = DeviceListQuery {
                    name,
                    status: status.map(Into::into),
                };
                commands::devices::list(&query, out).await
            }
            DevicesCommand::Show { device } => commands::devices::show(&device, out).await,
            DevicesCommand::Approve { request } => commands::devices::approve(&request, out).await,
            DevicesCommand::Reject { id } => commands::devices::reject(&id, out).await,
            DevicesCommand::Policy { command } => match command {
                DevicePolicyCommand::Show { device } => {
                    commands::policy::device_show(&device, out).await
                }
                DevicePolicyCommand::Set {
                    device, setting, ..
                } => commands::policy::device_set(&device, setting, out).await,
            },
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
            OrgCommand::Policy { command } => match command {
                OrgPolicyCommand::Show { org } => commands::policy::org_show(org, out).await,
                OrgPolicyCommand::Set { org, setting, .. } => {
                    commands::policy::org_set(org, setting == args::OnOff::On, out).await
                }
            },
        },
        Command::Audit {
            command,
            device,
            filters,
        } => match command {
            Some(AuditCommand::Play { session, speed }) => {
                commands::recording::play(session, speed).await
            }
            Some(AuditCommand::Recording { args }) => commands::recording::save(&args).await,
            Some(AuditCommand::Export {
                format,
                since,
                until,
            }) => commands::audit::export(&format, since.as_deref(), until.as_deref()).await,
            None => commands::audit::fleet(filters, device, out).await,
        },
        Command::Mcp => commands::mcp::run().await,
        Command::Runtime { command } => match command {
            RuntimeCommand::Run {
                email,
                org,
                name,
                fingerprint,
                docker_socket,
            } => {
                commands::runtime::run(email, org, name, fingerprint, docker_socket, runtime_log)
                    .await
            }
            RuntimeCommand::Status { system } => commands::runtime::status(out, system),
            RuntimeCommand::Logout { system } => commands::runtime::logout(system),
            RuntimeCommand::Enable {
                now,
                system,
                print,
                api_url,
                registration,
            } => service::enable(&service::EnableOptions {
                now,
                system,
                print,
                api_url,
                run_args: registration.run_args(),
            }),
            RuntimeCommand::Disable { now, system } => service::disable(now, system),
            RuntimeCommand::Start { system } => service::control("start", system),
            RuntimeCommand::Stop { system } => service::control("stop", system),
            RuntimeCommand::Restart { system } => service::control("restart", system),
            RuntimeCommand::Update { args, system } => {
                commands::update::runtime_update(update_options(args), system, out).await
            }
        },
        Command::Update { args } => commands::update::update(update_options(args), out).await,
    }
}

fn update_options(args: args::UpdateArgs) -> commands::update::Options {
    commands::update::Options {
        check: args.check,
        path: args.path,
    }
}

fn hint(err: &anyhow::Error) -> Option<&'static str> {
    match err
        .downcast_ref::<m87_transport::http::ApiError>()?
        .status()?
    {
        401 => Some("check M87_API_KEY, or log in again: `m87 login` or `m87 login --api-key KEY`"),
        _ => None,
    }
}

/// Worker threads of the async runtime unless `M87_WORKER_THREADS` says otherwise. One: a CLI
/// session and a device runtime each drive one QUIC connection, whose packets, streams and
/// sockets then hand work to each other on one thread instead of waking another; blocking work
/// has its own threads either way. Measured on 2 cores (`loadtest/reports/`): an 8-stream
/// forward moved about 8% more with one worker than with two, for about 6% less CPU per byte.
const DEFAULT_WORKER_THREADS: usize = 1;

/// Runs the command `cli` names on an async runtime of its own and returns the exit code.
pub fn run(cli: Cli) -> ExitCode {
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
    runtime.block_on(run_async(cli))
}

async fn run_async(cli: Cli) -> ExitCode {
    profile::select(cli.profile.clone());
    let runtime_log = init_tracing(&cli.command);
    match dispatch(cli, runtime_log).await {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            let message = format!("{e:#}");
            match hint(&e) {
                Some(h) => eprintln!("error: {message} ({h})"),
                None => eprintln!("error: {message}"),
            }
            // A runtime that restarting cannot help has its own code (the service's unit
            // does not restart on it).
            commands::runtime::exit_code(&e).map_or(ExitCode::FAILURE, ExitCode::from)
        }
    }
}
