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

/// The exit status of `m87 runtime run` when restarting cannot help (the device was removed,
/// its key is refused, its request was rejected, no owner was given): the service's unit
/// names it in `RestartPreventExitStatus=` so systemd leaves it failed instead of retrying.
pub const FINAL_EXIT: u8 = crate::service::unit::FINAL_EXIT;

/// [`FINAL_EXIT`] for the runtime's final errors; `None` for any other error.
pub fn exit_code(err: &anyhow::Error) -> Option<u8> {
    use m87_agent::runtime::RuntimeError as E;
    match err.downcast_ref::<E>()? {
        E::NoOwner | E::Rejected(_) | E::Removed | E::KeyRefused(_) => Some(FINAL_EXIT),
        _ => None,
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

/// `m87 runtime status`: the service (when a unit is installed), the enrolment, and what the
/// running runtime publishes about its tunnel and relay.
pub fn status(output: Output, system: bool) -> anyhow::Result<()> {
    let target = crate::service::target(system)?;
    let file = m87_transport::credentials::CredentialsFile::in_dir(&target.config_dir);
    let state = RuntimeState::new(file.clone());
    let device = file.load().with_context(|| system_hint(&target))?.device;
    let pending = state.pending()?;
    let device_id = state.existing_device_id()?;
    let status = if device.is_some() {
        "approved"
    } else if pending.is_some() {
        "pending"
    } else {
        "not registered"
    };
    let service = crate::service::report(&target);
    let live = m87_agent::live::read(file.dir())?;
    // The live state is the running runtime's; a file left by a stopped one says nothing.
    let current = live.state.as_ref().filter(|_| live.running);
    let tunnel = current.map(|s| &s.tunnel);
    match output {
        Output::Json => print_json(&serde_json::json!({
            "status": status,
            "device_id": device_id,
            "api_url": device.as_ref().map(|d| d.api_url.clone()).or(pending.as_ref().map(|p| p.api_url.clone())),
            "issued_at": device.as_ref().map(|d| d.issued_at),
            "request_id": pending.as_ref().map(|p| p.request_id),
            "expires_at": pending.as_ref().map(|p| p.expires_at),
            "config_dir": file.dir(),
            "service": service,
            "runtime": {
                "running": live.running,
                "pid": current.map(|s| s.pid),
                "version": current.map(|s| s.version.clone()),
                "started_at": current.map(|s| s.started_at),
                "phase": current.map(|s| s.phase),
            },
            "tunnel": {
                "connected": tunnel.is_some_and(|t| t.connected),
                "since": tunnel.and_then(|t| t.since),
                "relay": tunnel.and_then(|t| t.relay.clone()),
                "relay_id": tunnel.and_then(|t| t.relay_id.clone()),
                "last_error": tunnel.and_then(|t| t.last_error.clone()),
            },
        })),
        Output::Table => {
            print_service(service.as_ref());
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
            print_live(current);
            println!("config dir   {}", file.dir().display());
            Ok(())
        }
    }
}

/// What to say when the state directory cannot be read.
fn system_hint(target: &crate::service::Target) -> String {
    match target.mode {
        Some(crate::service::Mode::System) => format!(
            "reading the system service's state in {} (run with sudo, or give --system only \
             as root)",
            target.config_dir.display()
        ),
        _ => format!("reading the state in {}", target.config_dir.display()),
    }
}

fn print_service(service: Option<&crate::service::ServiceReport>) {
    let Some(s) = service else {
        println!("service      not installed (m87 runtime enable installs it)");
        return;
    };
    match (&s.state, &s.error) {
        (Some(u), _) => {
            let pid = u.main_pid.map(|p| format!(", pid {p}")).unwrap_or_default();
            let since = u
                .since
                .as_ref()
                .map(|t| format!(" since {t}"))
                .unwrap_or_default();
            println!(
                "service      {} ({} unit): {} ({}){since}{pid}, {}",
                crate::service::UNIT_NAME,
                s.mode,
                u.active,
                u.sub,
                u.enabled
            );
        }
        (None, error) => println!(
            "service      {} installed at {} ({})",
            crate::service::UNIT_NAME,
            s.unit_path.display(),
            error.as_deref().unwrap_or("state unknown")
        ),
    }
}

fn print_live(current: Option<&m87_agent::live::LiveState>) {
    let Some(s) = current else {
        println!("runtime      not running on this state directory");
        return;
    };
    println!(
        "runtime      running (pid {}, version {}) since {}",
        s.pid,
        s.version,
        when(&s.started_at)
    );
    let t = &s.tunnel;
    let since = t.since.as_ref().map(when).unwrap_or_else(|| "-".into());
    match (t.connected, &t.relay) {
        (true, _) => println!("tunnel       connected since {since}"),
        (false, None) => println!("tunnel       not connected yet"),
        (false, Some(_)) => println!(
            "tunnel       down since {since}{}",
            t.last_error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
    }
    if let Some(relay) = &t.relay {
        let id = t
            .relay_id
            .as_ref()
            .map(|i| format!(" ({i})"))
            .unwrap_or_default();
        let last = if t.connected { "" } else { " (last)" };
        println!("relay        {relay}{id}{last}");
    }
}

/// `m87 runtime logout`: stops the service first when it runs on these credentials, so no
/// running runtime keeps using the key.
pub fn logout(system: bool) -> anyhow::Result<()> {
    let target = crate::service::target(system)?;
    if let Some(done) = crate::service::stop_before_logout(&target)? {
        println!("{done}");
    }
    let file = m87_transport::credentials::CredentialsFile::in_dir(&target.config_dir);
    let live = m87_agent::live::read(file.dir())?;
    if live.running {
        let pid = live
            .state
            .map(|s| format!(" (pid {})", s.pid))
            .unwrap_or_default();
        eprintln!(
            "warning: a runtime{pid} still runs on {}; it keeps the key it holds until it stops",
            file.dir().display()
        );
    }
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
