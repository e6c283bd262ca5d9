//! The device runtime as a systemd service: `m87 runtime enable|disable|start|stop|restart`,
//! and the unit's part of `m87 runtime status` and `m87 runtime logout`. Independent of the
//! runtime itself (no `m87_agent`): it writes a unit that runs `m87 runtime run`.
//!
//! # Layout
//!
//! - this file: the commands and which unit (user or system) a command means;
//! - [`unit`]: the unit file's text;
//! - [`systemd`]: `systemctl`, the unit's state, the atomic write.

pub mod systemd;
pub mod unit;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub use unit::{Mode, SYSTEM_STATE_DIR, SYSTEM_USER, UNIT_NAME, UnitSpec};

/// Environment variables `enable` passes on to the service when they are set where it runs.
const PASSED_ENV: &[&str] = &[
    "M87_API_FINGERPRINT",
    "M87_TRUST_INVALID_CERT",
    "OWNER_REFERENCE",
    "M87_APPROVAL_POLL_SECS",
    "M87_CHECK_INTERVAL_SECS",
    "M87_RUNTIME_LOG",
    "M87_RUNTIME_LOG_LEVEL",
    "M87_WORKER_THREADS",
];

/// What `m87 runtime enable` was asked.
#[derive(Debug, Clone)]
pub struct EnableOptions {
    /// Start it now too.
    pub now: bool,
    /// A system service under the dedicated user instead of the caller's user service.
    pub system: bool,
    /// Only print the unit and where it would go.
    pub print: bool,
    /// The server's URL (`M87_API_URL` in the unit).
    pub api_url: Option<String>,
    /// The arguments after `m87 runtime run` (registration options).
    pub run_args: Vec<String>,
}

fn mode_of(system: bool) -> Mode {
    if system { Mode::System } else { Mode::User }
}

fn user_flag(mode: Mode) -> &'static str {
    match mode {
        Mode::User => "--user ",
        Mode::System => "",
    }
}

/// The caller's own state directory, absolute.
fn own_config_dir() -> anyhow::Result<PathBuf> {
    let dir = m87_transport::credentials::config_dir().context("locating the state directory")?;
    std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))
}

/// The spec `enable` writes for `opts` (no I/O besides finding the binary and systemd).
pub fn spec(opts: &EnableOptions) -> anyhow::Result<UnitSpec> {
    let mode = mode_of(opts.system);
    let exe = std::env::current_exe().context("finding the m87 binary the service should run")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let config_dir = match mode {
        Mode::System => PathBuf::from(SYSTEM_STATE_DIR),
        Mode::User => own_config_dir()?,
    };
    let mut env = Vec::new();
    if let Some(url) = opts.api_url.as_ref().filter(|u| !u.trim().is_empty()) {
        env.push(("M87_API_URL".to_owned(), url.trim().to_owned()));
    }
    for name in PASSED_ENV {
        if let Ok(v) = std::env::var(name)
            && !v.trim().is_empty()
        {
            env.push(((*name).to_owned(), v));
        }
    }
    Ok(UnitSpec {
        mode,
        exe,
        config_dir,
        args: opts.run_args.clone(),
        env,
        systemd_version: systemd::version(),
    })
}

/// `m87 runtime enable`.
pub fn enable(opts: &EnableOptions) -> anyhow::Result<()> {
    let spec = spec(opts)?;
    let path = systemd::unit_path(spec.mode)?;
    let text = unit::render(&spec);
    if opts.print {
        eprintln!("# {}", path.display());
        print!("{text}");
        return Ok(());
    }
    if spec.mode == Mode::System && !systemd::is_root() {
        bail!(
            "`--system` writes {} and creates the `{SYSTEM_USER}` user: run it as root (sudo m87 \
             runtime enable --system …), or leave out --system for a service of your own user",
            path.display()
        );
    }
    systemd::require_manager(spec.mode)?;
    if spec.mode == Mode::System {
        require_runnable_by_others(&spec.exe)?;
    }
    if spec.mode == Mode::System && ensure_system_user()? {
        println!("created the system user `{SYSTEM_USER}` (home {SYSTEM_STATE_DIR})");
    }
    systemd::write_atomically(&path, &text)?;
    println!("wrote {}", path.display());
    systemd::systemctl(spec.mode, &["daemon-reload"])?;
    systemd::systemctl(spec.mode, &["enable", UNIT_NAME])?;
    if opts.now {
        // `restart` starts it, or restarts one already running so it runs this unit.
        systemd::systemctl(spec.mode, &["restart", UNIT_NAME])?;
    } else if systemd::state(spec.mode).is_ok_and(|s| s.active == "active") {
        println!("it is running with its old settings until `m87 runtime restart`");
    }
    let started = if opts.now { " and started" } else { "" };
    println!(
        "enabled{started} {UNIT_NAME}; its state is in {}",
        spec.config_dir.display()
    );
    explain_after_enable(&spec);
    Ok(())
}

fn explain_after_enable(spec: &UnitSpec) {
    let u = user_flag(spec.mode);
    println!("follow it with: journalctl {u}-u {UNIT_NAME} -f   (or: m87 runtime status)");
    if spec
        .systemd_version
        .is_some_and(|v| v < unit::BACKOFF_SINCE)
    {
        println!(
            "note: systemd {} restarts a failed runtime every 5 s (at most 10 times in 5 min); \
             growing delays need systemd 254 or newer",
            spec.systemd_version.unwrap_or_default()
        );
    }
    if spec.mode == Mode::User && !lingering() {
        let user = std::env::var("USER").unwrap_or_else(|_| "$USER".into());
        println!(
            "a user service stops when you log out and starts only at your next login: run \
             `sudo loginctl enable-linger {user}` so it starts at boot and keeps running"
        );
    }
}

fn lingering() -> bool {
    std::env::var("USER").is_ok_and(|u| Path::new("/var/lib/systemd/linger").join(u).exists())
}

/// The `m87` user must be able to run the binary: it and every directory above it open to
/// others (a binary under /root or a 0700 home is not).
fn require_runnable_by_others(exe: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for path in exe.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            bail!(
                "the `{SYSTEM_USER}` user could not run {} ({} is closed to other users): \
                 install m87 to /usr/local/bin (install.sh does) and run `sudo \
                 /usr/local/bin/m87 runtime enable --system …` from there",
                exe.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Creates the dedicated user when missing; true when it was created.
fn ensure_system_user() -> anyhow::Result<bool> {
    let exists = Command::new("id")
        .args(["-u", SYSTEM_USER])
        .output()
        .context("running id")?
        .status
        .success();
    if exists {
        return Ok(false);
    }
    // Its login shell is the shell remote sessions get.
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let status = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home", "--home-dir"])
        .args([
            SYSTEM_STATE_DIR,
            "--shell",
            shell,
            "--comment",
            "m87 device runtime",
        ])
        .arg(SYSTEM_USER)
        .status()
        .context("running useradd (package passwd) to create the m87 user")?;
    if !status.success() {
        bail!("useradd could not create the `{SYSTEM_USER}` user ({status})");
    }
    Ok(true)
}

/// The installed unit a command means: `--system`'s, else the user's, else the system's.
fn installed_mode(system: bool) -> anyhow::Result<Mode> {
    let candidates: &[Mode] = if system {
        &[Mode::System]
    } else {
        &[Mode::User, Mode::System]
    };
    for mode in candidates {
        if systemd::installed(*mode) {
            return Ok(*mode);
        }
    }
    let looked: Vec<String> = candidates
        .iter()
        .filter_map(|m| systemd::unit_path(*m).ok())
        .map(|p| p.display().to_string())
        .collect();
    bail!(
        "no {UNIT_NAME} is installed (looked for {}); install it with `m87 runtime enable`",
        looked.join(" and ")
    )
}

fn require_may(mode: Mode, what: &str) -> anyhow::Result<()> {
    systemd::require_manager(mode)?;
    if mode == Mode::System && !systemd::is_root() {
        bail!("{what} the system service {UNIT_NAME} needs root: run it with sudo");
    }
    Ok(())
}

/// `m87 runtime disable [--now]`: no start at boot; with `--now` also stopped and removed.
pub fn disable(now: bool, system: bool) -> anyhow::Result<()> {
    let mode = installed_mode(system)?;
    require_may(mode, "disabling")?;
    let mut args = vec!["disable"];
    if now {
        args.push("--now");
    }
    args.push(UNIT_NAME);
    systemd::systemctl(mode, &args)?;
    if !now {
        println!(
            "disabled {UNIT_NAME}: it no longer starts at boot (still installed; `m87 runtime \
             disable --now` stops and removes it)"
        );
        return Ok(());
    }
    let path = systemd::unit_path(mode)?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    systemd::systemctl(mode, &["daemon-reload"])?;
    let _ = systemd::systemctl(mode, &["reset-failed", UNIT_NAME]);
    println!(
        "stopped and removed {UNIT_NAME} ({}); the device's credentials are kept",
        path.display()
    );
    Ok(())
}

/// `m87 runtime start|stop|restart`.
pub fn control(action: &str, system: bool) -> anyhow::Result<()> {
    let mode = installed_mode(system)?;
    require_may(mode, action)?;
    systemd::systemctl(mode, &[action, UNIT_NAME])?;
    let done = match action {
        "start" => "started",
        "stop" => "stopped",
        _ => "restarted",
    };
    println!("{done} {UNIT_NAME}");
    Ok(())
}

/// Which unit and state directory `status` and `logout` mean.
#[derive(Debug, Clone)]
pub struct Target {
    /// The installed unit that runs on `config_dir`, if any.
    pub mode: Option<Mode>,
    /// The state directory.
    pub config_dir: PathBuf,
}

/// The state directory an installed unit runs on (its `M87_CONFIG_DIR`).
fn unit_config_dir(mode: Mode) -> Option<PathBuf> {
    let text = std::fs::read_to_string(systemd::unit_path(mode).ok()?).ok()?;
    text.lines().find_map(|l| {
        let v = l.strip_prefix("Environment=\"M87_CONFIG_DIR=")?;
        Some(PathBuf::from(
            v.strip_suffix('"')?.replace("%%", "%").replace("$$", "$"),
        ))
    })
}

/// `--system`: the system service; else the unit running on the caller's state directory;
/// else, when the caller names no directory and only the system service is installed, that.
pub fn target(system: bool) -> anyhow::Result<Target> {
    if system {
        let mode = systemd::installed(Mode::System).then_some(Mode::System);
        let config_dir = unit_config_dir(Mode::System).unwrap_or(SYSTEM_STATE_DIR.into());
        return Ok(Target { mode, config_dir });
    }
    let own = own_config_dir()?;
    for mode in [Mode::User, Mode::System] {
        if systemd::installed(mode) && unit_config_dir(mode).as_deref() == Some(&own) {
            return Ok(Target {
                mode: Some(mode),
                config_dir: own,
            });
        }
    }
    let named = std::env::var_os("M87_CONFIG_DIR").is_some_and(|d| !d.is_empty());
    if !named && !systemd::installed(Mode::User) && systemd::installed(Mode::System) {
        let config_dir = unit_config_dir(Mode::System).unwrap_or(SYSTEM_STATE_DIR.into());
        return Ok(Target {
            mode: Some(Mode::System),
            config_dir,
        });
    }
    Ok(Target {
        mode: None,
        config_dir: own,
    })
}

/// The unit's part of `m87 runtime status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceReport {
    /// `user` or `system`.
    pub mode: &'static str,
    /// The unit file.
    pub unit_path: PathBuf,
    /// Its state; `None` when systemd cannot be asked (with `error` saying why).
    pub state: Option<systemd::UnitState>,
    /// Why the state is unknown.
    pub error: Option<String>,
}

/// What `status` shows about the unit of `target`.
pub fn report(target: &Target) -> Option<ServiceReport> {
    let mode = target.mode?;
    let unit_path = systemd::unit_path(mode).ok()?;
    let (state, error) = match systemd::require_manager(mode).and_then(|()| systemd::state(mode)) {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Some(ServiceReport {
        mode: match mode {
            Mode::User => "user",
            Mode::System => "system",
        },
        unit_path,
        state,
        error,
    })
}

/// Before `logout` forgets the credentials: stops the unit of `target` when it is active, so
/// no running runtime keeps using the key. Returns what it did, to tell the user.
pub fn stop_before_logout(target: &Target) -> anyhow::Result<Option<String>> {
    let Some(mode) = target.mode else {
        return Ok(None);
    };
    if !systemd::booted() {
        return Ok(None);
    }
    let state = systemd::state(mode)?;
    if matches!(state.active.as_str(), "inactive" | "failed") {
        return Ok(None);
    }
    require_may(mode, "stopping").context("the runtime must stop before its credentials go")?;
    systemd::systemctl(mode, &["stop", UNIT_NAME])
        .context("the runtime must stop before its credentials go; nothing was removed")?;
    Ok(Some(format!(
        "stopped {UNIT_NAME} (`systemctl {}start {UNIT_NAME}` or `m87 runtime start` registers \
         this device again)",
        user_flag(mode)
    )))
}
