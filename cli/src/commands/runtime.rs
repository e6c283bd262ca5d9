//! `m87 runtime run|status|logout`: the device side.

use std::time::Duration;

use anyhow::Context;
use m87_agent::runtime::{RunOptions, RuntimeState};
use m87_events::{DeviceName, Email, OrgId, Scope};
use m87_transport::http::{api_fingerprint_from_env, api_url_from_env};
use m87_transport::tls::Fingerprint;
use tokio::sync::watch;

use crate::context::{DEFAULT_API_URL, runtime_credentials_file as credentials_file, server_trust};
use crate::output::{Output, print_json, when};

fn seconds_from_env(name: &str) -> anyhow::Result<Option<Duration>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let secs: u64 = v
                .trim()
                .parse()
                .with_context(|| format!("{name} must be a whole number of seconds, not {v:?}"))?;
            Ok(Some(Duration::from_secs(secs.max(1))))
        }
        _ => Ok(None),
    }
}

/// The owner from `--email`, `--org` or `OWNER_REFERENCE` (an email or a scope).
fn owner(email: Option<Email>, org: Option<OrgId>) -> anyhow::Result<Option<Scope>> {
    if let Some(e) = email {
        return Ok(Some(Scope::user(&e)));
    }
    if let Some(o) = org {
        return Ok(Some(Scope::org(&o)));
    }
    match std::env::var("OWNER_REFERENCE") {
        Ok(r) if !r.trim().is_empty() => {
            let r = r.trim();
            let scope = if r.contains(':') {
                r.parse::<Scope>()
            } else {
                r.parse::<Email>().map(|e| Scope::user(&e))
            };
            Ok(Some(scope.with_context(|| {
                format!("OWNER_REFERENCE {r:?} must be an email, user:<email> or org:<id>")
            })?))
        }
        _ => Ok(None),
    }
}

fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// The runtime's log writer for `m87 runtime run`: `M87_RUNTIME_LOG` (`off`: none) or
/// `<config dir>/logs/runtime.log`, rotated by size; with the path and the level filter
/// (`M87_RUNTIME_LOG_LEVEL`, default `info`). `None` (after a warning) when it cannot be kept.
pub fn open_log() -> Option<(
    std::path::PathBuf,
    String,
    std::sync::Mutex<m87_agent::services::logs::RotatingFile>,
)> {
    use m87_agent::services::logs::runtime_file::{MAX_FILE_BYTES, ROTATED_FILES};
    let path = match std::env::var("M87_RUNTIME_LOG") {
        Ok(p) if p.trim().eq_ignore_ascii_case("off") => return None,
        Ok(p) if !p.trim().is_empty() => std::path::PathBuf::from(p.trim()),
        _ => match credentials_file() {
            Ok(file) => file.dir().join("logs").join("runtime.log"),
            Err(_) => return None,
        },
    };
    let filter = std::env::var("M87_RUNTIME_LOG_LEVEL")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    match m87_agent::services::logs::rotating_writer(&path, MAX_FILE_BYTES, ROTATED_FILES) {
        Ok(writer) => Some((path, filter, writer)),
        Err(e) => {
            eprintln!(
                "warning: cannot keep the runtime log at {} ({e}); running without it (set \
                 M87_RUNTIME_LOG to a writable path)",
                path.display()
            );
            None
        }
    }
}

/// `m87 runtime run`. A `fingerprint` (or `M87_API_FINGERPRINT`) pins the server's
/// certificate; it is stored for the server with the device's key (at approval, or now when
/// the device is enrolled), so later runs check it without being told again.
pub async fn run(
    email: Option<Email>,
    org: Option<OrgId>,
    name: Option<DeviceName>,
    fingerprint: Option<Fingerprint>,
    docker_socket: Option<std::path::PathBuf>,
    runtime_log: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let file = credentials_file()?;
    let creds = file.load()?;
    let stored_url = creds.device.as_ref().map(|d| d.api_url.clone());
    let api_url = api_url_from_env()
        .or(stored_url)
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let new_pin = match fingerprint {
        Some(pin) => Some(pin),
        None => api_fingerprint_from_env()?,
    };
    let server_trust = server_trust(&api_url, &creds, new_pin)?;
    // An enrolled device keeps a new pin for its server now; a device still registering
    // keeps it with its key, once approved.
    if let Some(pin) = new_pin
        && creds.device.is_some()
        && creds.pin_for(&api_url) != Some(pin)
    {
        file.update(|c| c.set_pin(&api_url, pin))?;
    }
    let services = m87_agent::services::ServiceSettings {
        docker_socket,
        runtime_log,
    };
    let opts = RunOptions {
        api_url,
        owner: owner(email, org)?,
        name,
        poll_interval: seconds_from_env("M87_APPROVAL_POLL_SECS")?,
        server_trust,
        check_interval: seconds_from_env("M87_CHECK_INTERVAL_SECS")?
            .unwrap_or(Duration::from_secs(60)),
        services,
    };
    m87_agent::runtime::run(opts, RuntimeState::new(file), shutdown_on_signal()).await?;
    Ok(())
}

/// `m87 runtime status`.
pub fn status(output: Output) -> anyhow::Result<()> {
    let file = credentials_file()?;
    let state = RuntimeState::new(file.clone());
    let device = file.load()?.device;
    let pending = state.pending()?;
    let device_id = state.existing_device_id()?;
    let status = if device.is_some() {
        "approved"
    } else if pending.is_some() {
        "pending"
    } else {
        "not registered"
    };
    match output {
        Output::Json => print_json(&serde_json::json!({
            "status": status,
            "device_id": device_id,
            "api_url": device.as_ref().map(|d| d.api_url.clone()).or(pending.as_ref().map(|p| p.api_url.clone())),
            "issued_at": device.as_ref().map(|d| d.issued_at),
            "request_id": pending.as_ref().map(|p| p.request_id),
            "expires_at": pending.as_ref().map(|p| p.expires_at),
            "config_dir": file.dir(),
        })),
        Output::Table => {
            println!("status       {status}");
            println!(
                "device id    {}",
                device_id
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "(none yet)".into())
            );
            if let Some(d) = &device {
                println!("server       {}", d.api_url);
                println!("approved     {}", when(&d.issued_at));
            }
            if let Some(p) = &pending {
                println!("server       {}", p.api_url);
                println!("request      {}", p.request_id);
                println!("expires      {}", when(&p.expires_at));
            }
            println!("config dir   {}", file.dir().display());
            Ok(())
        }
    }
}

/// `m87 runtime logout`.
pub fn logout() -> anyhow::Result<()> {
    let file = credentials_file()?;
    if RuntimeState::new(file.clone()).logout()? {
        println!(
            "removed this device's credentials from {}",
            file.path().display()
        );
    } else {
        println!("this device has no stored credentials");
    }
    Ok(())
}
