//! `m87 version [DEVICE]`: the versions of this CLI, of the server (`GET /v1/health`) and of a
//! device's runtime (the `status` operation, which viewers may use); and `m87 completion`.
//!
//! Whatever cannot be reached says so on its own line; the command still succeeds.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use m87_events::api::{DeviceStatus, DeviceSummary, Health};
use m87_events::token::Operation;
use m87_transport::http::ApiClient;
use serde::Serialize;

use crate::output::{Output, print_json};
use crate::session::QuicSession;

/// How long each question may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// One component's version, or why it is not known.
#[derive(Debug, Serialize)]
struct Part {
    /// Which server or device.
    #[serde(skip_serializing_if = "Option::is_none")]
    of: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Part {
    fn from_result(of: Option<String>, r: anyhow::Result<String>) -> Self {
        match r {
            Ok(v) => Self {
                of,
                version: Some(v),
                error: None,
            },
            Err(e) => Self {
                of,
                version: None,
                error: Some(format!("{e:#}")),
            },
        }
    }

    fn line(&self) -> String {
        let of = self
            .of
            .as_deref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default();
        match (&self.version, &self.error) {
            (Some(v), _) => format!("{v}{of}"),
            (None, Some(e)) => format!("unknown{of}: {e}"),
            (None, None) => format!("unknown{of}"),
        }
    }
}

#[derive(Debug, Serialize)]
struct Versions {
    cli: String,
    server: Part,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<Part>,
}

async fn within<T>(what: &str, f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not answer within {}s", TIMEOUT.as_secs()))?
}

/// A client for the server: logged in when possible, else without credentials (`/v1/health`
/// needs none).
fn client() -> anyhow::Result<(ApiClient, bool)> {
    match crate::context::user_session() {
        Ok(session) => Ok((session.client, true)),
        Err(_) => {
            let url = crate::context::user_api_url()?;
            let creds = crate::context::credentials_file()?.load()?;
            Ok((crate::context::api_client(&url, None, &creds)?, false))
        }
    }
}

async fn runtime_version(client: &ApiClient, device: &str) -> anyhow::Result<String> {
    let devices: Vec<DeviceSummary> = client.get("/v1/devices").await?;
    let approved: Vec<DeviceSummary> = devices
        .into_iter()
        .filter(|d| d.status == DeviceStatus::Approved)
        .collect();
    let Some(d) = crate::commands::devices::resolve(&approved, device)?.cloned() else {
        anyhow::bail!("device {device:?} not found (see m87 devices list)");
    };
    if !d.online {
        anyhow::bail!("{} is offline", d.name);
    }
    let session = QuicSession::open(
        client,
        d.id.as_str(),
        Operation::Status,
        serde_json::Value::Null,
    )
    .await?;
    let fetched = crate::commands::ops::status::fetch(&session).await;
    session.close().await;
    Ok(fetched?.0.runtime_version)
}

/// `m87 version [DEVICE]`; always exit code 0 once the versions are printed.
pub async fn run(device: Option<&str>, out: Output) -> anyhow::Result<i32> {
    let (server, runtime) = match client() {
        Ok((client, logged_in)) => {
            let url = Some(client.base_url().to_owned());
            let health = within("the server", async {
                Ok(client.get::<Health>("/v1/health").await?.version)
            })
            .await;
            let runtime = match device {
                None => None,
                Some(d) if !logged_in => Some(Part::from_result(
                    Some(d.to_owned()),
                    Err(anyhow::anyhow!("not logged in: run `m87 login`")),
                )),
                Some(d) => Some(Part::from_result(
                    Some(d.to_owned()),
                    within("the device", runtime_version(&client, d)).await,
                )),
            };
            (Part::from_result(url, health), runtime)
        }
        Err(e) => (
            Part::from_result(None, Err(e)),
            device
                .map(|d| Part::from_result(Some(d.to_owned()), Err(anyhow::anyhow!("no server")))),
        ),
    };
    let versions = Versions {
        cli: env!("CARGO_PKG_VERSION").to_owned(),
        server,
        runtime,
    };
    if out == Output::Json {
        print_json(&versions)?;
        return Ok(0);
    }
    println!("cli      {}", versions.cli);
    println!("server   {}", versions.server.line());
    if let Some(r) = &versions.runtime {
        println!("runtime  {}", r.line());
    }
    Ok(0)
}

/// A shell to complete for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CompletionShell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// `m87 completion SHELL`: the completion script on standard output.
pub fn completion(shell: CompletionShell, command: &mut clap::Command) -> anyhow::Result<()> {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    // Generated into memory, then written: a reader that stops early (`| head`) ends the
    // command quietly instead of a panic inside clap_complete.
    let mut script = Vec::new();
    clap_complete::generate(shell, command, "m87", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the completion script"),
    }
}
