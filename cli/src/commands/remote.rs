//! `m87 <device> exec|shell|forward|docker|logs|metrics|serial|status|ls|audit|access`:
//! operations on one device through a session.

use clap::{Parser, Subcommand};
use m87_events::token::Operation;

use crate::commands::ops;
use crate::context::user_client;
use crate::remote;
use crate::session::QuicSession;

/// One example per operation, under the list of operations.
const EXAMPLES: &str = "\
Examples:
  m87 robot-1 exec -- uname -a                    run a command; its exit code is m87's
  m87 robot-1 shell                               a login shell
  m87 robot-1 forward 8080:80 9000:/run/app.sock  ports and unix sockets
  m87 robot-1 docker ps                           your docker CLI against the device's engine
  m87 robot-1 logs -f --unit nginx                a unit's journal (or --container, the runtime's)
  m87 robot-1 metrics                             live load; -o json --count 3 for scripts
  m87 robot-1 serial /dev/ttyUSB0 --link ./tty    a local pty for picocom, screen, flashers
  m87 robot-1 status                              exit 0 healthy, 1 degraded/offline, 2 error
  m87 robot-1 ls -la /var/log                     list a directory
  m87 robot-1 audit --since 2h                    who did what on it
  m87 robot-1 access add user:bob@example.com     share it

See `m87 <device> <operation> --help` for each; docs/operations.md for who may use which.";

/// Operations on one device.
#[derive(Debug, Parser)]
#[command(
    name = "m87 <device>",
    about = "Operate one device (by name, id or unique prefix)",
    after_help = EXAMPLES
)]
pub struct DeviceCli {
    /// How to print results (also accepted before the device name).
    #[arg(long, short = 'o', global = true, value_enum)]
    output: Option<crate::output::Output>,
    /// Use this profile (also accepted before the device name; see `m87 profile`).
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<crate::profile::ProfileName>,
    #[command(subcommand)]
    op: DeviceOp,
}

#[derive(Debug, Subcommand)]
enum DeviceOp {
    /// Run a command: `m87 <device> exec [-i] [-t] -- CMD ARGS…`.
    ///
    /// Its stdout and stderr arrive separately; its exit code (or 128 + signal) becomes this
    /// command's exit code.
    Exec {
        /// Stream this terminal's standard input to the command.
        #[arg(short = 'i', long = "interactive")]
        stdin: bool,
        /// Run the command in a pseudo-terminal.
        #[arg(short = 't', long = "tty")]
        tty: bool,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// An interactive login shell in a pseudo-terminal.
    ///
    /// The local terminal is in raw mode while it runs (Ctrl-C goes to the remote side) and is
    /// restored on every exit; the remote exit status becomes this command's.
    Shell,
    /// Who did what on this device, newest first (see `m87 audit --help`).
    ///
    /// Examples: `m87 robot-1 audit --since 2h`, `m87 robot-1 audit --action exec --details`,
    /// `m87 robot-1 audit --follow`.
    Audit {
        #[command(flatten)]
        filters: crate::commands::audit::AuditFilters,
    },
    /// Who besides the owner may reach the device: `access list|add|remove SCOPE`.
    Access {
        #[command(subcommand)]
        command: AccessOp,
    },
    /// Forward local ports to ports the device can reach, until interrupted.
    ///
    /// SPEC: `8080` (local 8080 → device 8080), `8080:80`, `8080:10.0.0.5:80` (a host the
    /// device reaches), ranges `8000-8010` or `8000-8010:9000-9010`, and `/udp` (default
    /// `/tcp`). Unix sockets on the device: `/tmp/app.sock:/run/app.sock` (a local socket file,
    /// private to you, removed on exit) or `8080:/run/app.sock` (a local TCP port). Each
    /// connection is its own stream in one session.
    Forward {
        /// One or more forward specs.
        #[arg(required = true)]
        specs: Vec<String>,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
    },
    /// Run the local `docker` CLI against the device's Docker (or Podman) socket.
    ///
    /// The socket is forwarded to a private local socket and DOCKER_HOST points at it, so
    /// every docker command works as it does locally: `ps`, `logs -f`, `exec -it`, `run`,
    /// `compose up`, `build`, `pull`.
    ///
    /// Examples: `m87 robot-1 docker ps`, `m87 robot-1 docker compose up -d`,
    /// `m87 robot-1 docker exec -it app sh`.
    Docker(ops::docker::Args),
    /// Print the device's logs: the runtime's own, a systemd unit's, or a container's.
    ///
    /// Examples: `m87 robot-1 logs -n 50`, `m87 robot-1 logs -f --unit nginx`,
    /// `m87 robot-1 logs --container app --since 10m -o json`.
    Logs(ops::logs::Args),
    /// A live view of the device's load: CPU, memory, disks, network, temperatures, processes.
    ///
    /// On a terminal a full-screen view (`q` quits); with `-o json`, one JSON sample per line
    /// (NDJSON) for scripts; piped, one line of text per sample. `--interval` (default 1s, at
    /// least 200ms), `--count N` to stop after N samples.
    ///
    /// Examples: `m87 robot-1 metrics`, `m87 robot-1 metrics -o json --interval 1s --count 3`.
    Metrics(ops::metrics::Args),
    /// Open a serial port on the device as a local pseudo-terminal (or in this terminal).
    ///
    /// With `--link PATH`, a local pseudo-terminal in raw mode is linked at PATH until Ctrl-C;
    /// without it, this terminal is in raw mode (every key goes to the port) and `Ctrl-]`
    /// quits.
    ///
    /// Examples: `m87 robot-1 serial /dev/ttyUSB0 --baud 115200 --link ./tty-robot1`
    /// (then `picocom ./tty-robot1`), `m87 robot-1 serial /dev/ttyACM0` (this terminal).
    Serial(ops::serial::Args),
    /// Is the device up and healthy: exit 0 healthy, 1 degraded or offline, 2 error.
    ///
    /// Examples: `m87 robot-1 status`, `m87 robot-1 status -o json`.
    Status(ops::status::Args),
    /// List a directory on the device, like `ls`.
    ///
    /// Examples: `m87 robot-1 ls /var/log`, `m87 robot-1 ls -la ~`.
    Ls(ops::ls::Args),
}

#[derive(Debug, Subcommand)]
enum AccessOp {
    /// The owner and the scopes the device is shared with.
    #[command(alias = "ls")]
    List,
    /// Share the device with `user:<email>` or `org:<id>`.
    Add {
        /// The scope.
        scope: m87_events::Scope,
    },
    /// Stop sharing; open sessions of those who lose access are ended.
    Remove {
        /// The scope.
        scope: m87_events::Scope,
    },
}

/// The approved device `device` names among those the caller sees.
async fn approved_device(
    client: &m87_transport::http::ApiClient,
    device: &str,
) -> anyhow::Result<m87_events::api::DeviceSummary> {
    let devices: Vec<m87_events::api::DeviceSummary> = client.get("/v1/devices").await?;
    let approved: Vec<_> = devices
        .into_iter()
        .filter(|d| d.status == m87_events::api::DeviceStatus::Approved)
        .collect();
    match crate::commands::devices::resolve(&approved, device)?.cloned() {
        Some(d) => Ok(d),
        None => anyhow::bail!("device {device:?} not found"),
    }
}

/// Shares `device` with `scope` (`share`) or stops sharing it; returns what
/// `m87 <device> access add|remove` says.
pub(crate) async fn change_access(
    client: &m87_transport::http::ApiClient,
    device: &str,
    scope: &m87_events::Scope,
    share: bool,
) -> anyhow::Result<String> {
    let d = approved_device(client, device).await?;
    if share {
        let request = m87_events::api::AccessRequest {
            scope: scope.clone(),
        };
        client
            .post_no_content(&format!("/v1/devices/{}/access", d.id), &request)
            .await?;
        Ok(format!("{} is now shared with {scope}", d.name))
    } else {
        client
            .delete(&format!("/v1/devices/{}/access/{scope}", d.id))
            .await?;
        Ok(format!("{} is no longer shared with {scope}", d.name))
    }
}

async fn access(
    client: &m87_transport::http::ApiClient,
    device: &str,
    op: AccessOp,
    output: crate::output::Output,
) -> anyhow::Result<i32> {
    match op {
        AccessOp::List => {
            let d = approved_device(client, device).await?;
            match output {
                crate::output::Output::Json => {
                    crate::output::print_json(
                        &serde_json::json!({"owner_scope": d.owner_scope, "allowed_scopes": d.allowed_scopes}),
                    )?;
                }
                crate::output::Output::Table => {
                    let mut rows = vec![vec![d.owner_scope.to_string(), "owner".to_owned()]];
                    rows.extend(
                        d.allowed_scopes
                            .iter()
                            .map(|s| vec![s.to_string(), "shared".to_owned()]),
                    );
                    crate::output::print_table(&["SCOPE", "ACCESS"], &rows);
                }
            }
        }
        AccessOp::Add { scope } => {
            println!("{}", change_access(client, device, &scope, true).await?)
        }
        AccessOp::Remove { scope } => {
            println!("{}", change_access(client, device, &scope, false).await?)
        }
    }
    Ok(0)
}

/// A valid `--profile NAME` (or `--profile=NAME`) among `args` before any `--`, so that a
/// mistyped command (which does not parse) is still checked against that profile's server.
fn profile_in(args: &[String]) -> Option<crate::profile::ProfileName> {
    let mut args = args.iter().take_while(|a| a.as_str() != "--");
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--profile") {
            Some("") => args.next().map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        if let Some(name) = value {
            return name.parse().ok();
        }
    }
    None
}

/// Parses `args` (the device first) and runs the operation; returns the exit code.
pub async fn run(args: Vec<String>, output: crate::output::Output) -> anyhow::Result<i32> {
    let Some((device, rest)) = args.split_first() else {
        anyhow::bail!("name a device: m87 <device> exec|shell|forward …");
    };
    crate::profile::select(profile_in(rest));
    if let Some(message) = crate::commands::suggest::misspelled(device).await {
        eprintln!("error: {message}");
        return Ok(2);
    }
    let mut argv = vec![format!("m87 {device}")];
    argv.extend(rest.iter().cloned());
    let cli = match DeviceCli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return Ok(e.exit_code());
        }
    };
    let output = cli.output.unwrap_or(output);
    crate::profile::select(cli.profile.clone());
    let client = user_client()?;
    match cli.op {
        DeviceOp::Access { command } => access(&client, device, command, output).await,
        DeviceOp::Docker(args) => ops::docker::run(&client, device, args, output).await,
        DeviceOp::Logs(args) => ops::logs::run(&client, device, args, output).await,
        DeviceOp::Metrics(args) => ops::metrics::run(&client, device, args, output).await,
        DeviceOp::Serial(args) => ops::serial::run(&client, device, args, output).await,
        DeviceOp::Status(args) => ops::status::run(&client, device, args, output).await,
        DeviceOp::Ls(args) => ops::ls::run(&client, device, args, output).await,
        DeviceOp::Audit { filters } => {
            crate::commands::audit::device(device, filters, output).await?;
            Ok(0)
        }
        DeviceOp::Exec {
            stdin,
            tty,
            command,
        } => {
            // A terminal is part of the grant: the device refuses one it was not granted, and
            // the recording policy applies to it.
            let grant_args = if tty {
                serde_json::json!({ "argv": command, "tty": true })
            } else {
                serde_json::json!({ "argv": command })
            };
            let session = QuicSession::open(&client, device, Operation::Exec, grant_args).await?;
            let result = if tty {
                let _ = stdin; // a terminal always carries input
                remote::shell::exec_tty(&session, command).await
            } else {
                remote::exec::run(&session, command, stdin).await
            };
            let result = session.explain(result).await;
            session.close().await;
            Ok(remote::exec::exit_code(result?))
        }
        DeviceOp::Shell => {
            let session =
                QuicSession::open(&client, device, Operation::Shell, serde_json::Value::Null)
                    .await?;
            let result = session.explain(remote::shell::shell(&session).await).await;
            session.close().await;
            Ok(remote::exec::exit_code(result?))
        }
        DeviceOp::Forward { specs, bind } => forward(&client, device, &specs, bind).await,
    }
}

/// `m87 <device> forward`: until Ctrl-C, or until the relay ends the session (then says why).
async fn forward(
    client: &m87_transport::http::ApiClient,
    device: &str,
    specs: &[String],
    bind: std::net::IpAddr,
) -> anyhow::Result<i32> {
    let (ports, sockets) = remote::forward::parse_all(specs)?;
    let targets = remote::forward::grant_targets(&ports, &sockets);
    let session = std::sync::Arc::new(
        QuicSession::open(
            client,
            device,
            Operation::Forward,
            serde_json::json!({ "targets": targets }),
        )
        .await?,
    );
    let name = session.device.name.to_string();
    let opener: std::sync::Arc<dyn remote::ChannelOpener> = session.clone();
    let bound = remote::forward::bind_all(ports, sockets, bind).await?;
    for (spec, addr) in bound.addrs() {
        println!("forwarding {addr} -> {name}:{}", spec.remote_display());
    }
    for (local, remote_path) in bound.socket_addrs() {
        println!("forwarding {local} -> {name}:{remote_path} (unix socket)");
    }
    println!("press Ctrl-C to stop");
    // Until Ctrl-C, or until the relay ends the session (then say why).
    let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel();
    let watched = std::sync::Arc::clone(&session);
    bound
        .serve(opener, async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                why = watched.closed() => { let _ = ended_tx.send(why); }
            }
        })
        .await?;
    if let Ok(Some(why)) = ended_rx.try_recv() {
        anyhow::bail!(why);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_flag_is_found_before_the_remote_command() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let name = |a: &[&str]| profile_in(&args(a)).map(|p| p.to_string());
        assert_eq!(name(&["list", "--profile", "lab"]).as_deref(), Some("lab"));
        assert_eq!(name(&["list", "--profile=lab"]).as_deref(), Some("lab"));
        assert_eq!(name(&["exec", "--", "x", "--profile", "lab"]), None);
        assert_eq!(name(&["list", "--profile", "Bad/"]), None);
        assert_eq!(name(&["list"]), None);
    }
}
