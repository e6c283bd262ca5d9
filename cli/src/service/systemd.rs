//! Talking to systemd: is it running, `systemctl [--user] …`, the unit's state, and writing
//! the unit file atomically.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::unit::{Mode, UNIT_NAME};

/// The message for a machine whose init is not systemd.
pub const NOT_RUNNING: &str =
    "systemd is not running here; run `m87 runtime run` under your own supervisor";

/// Whether systemd is the running init (as `sd_booted()` decides it).
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The directory the unit file goes to.
pub fn unit_dir(mode: Mode) -> anyhow::Result<PathBuf> {
    match mode {
        Mode::System => Ok(PathBuf::from("/etc/systemd/system")),
        Mode::User => {
            let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
                Some(d) => PathBuf::from(d),
                None => std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
                    .context("HOME is not set, so there is no ~/.config/systemd/user; set HOME")?,
            };
            Ok(config.join("systemd").join("user"))
        }
    }
}

/// The unit file's path.
pub fn unit_path(mode: Mode) -> anyhow::Result<PathBuf> {
    Ok(unit_dir(mode)?.join(UNIT_NAME))
}

/// Whether the unit file is installed for `mode`.
pub fn installed(mode: Mode) -> bool {
    unit_path(mode).is_ok_and(|p| p.is_file())
}

/// Fails with a clear message when `mode`'s manager cannot be reached.
pub fn require_manager(mode: Mode) -> anyhow::Result<()> {
    if !booted() {
        bail!(NOT_RUNNING);
    }
    if mode == Mode::User {
        let bus = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("systemd").join("private"));
        if !bus.is_some_and(|b| b.exists()) {
            bail!(
                "no systemd user manager for this user (XDG_RUNTIME_DIR unset or it has no \
                 systemd/private socket): log in through a login session (ssh, console), or \
                 install the runtime as a system service with `--system` (as root)"
            );
        }
    }
    Ok(())
}

/// `systemctl [--user] ARGS…`; fails with systemctl's own message when it fails.
pub fn systemctl(mode: Mode, args: &[&str]) -> anyhow::Result<String> {
    let out = command(mode, args)
        .output()
        .context("running systemctl (is systemd installed?)")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`systemctl {}{}` failed: {}",
            if mode == Mode::User { "--user " } else { "" },
            args.join(" "),
            err.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command(mode: Mode, args: &[&str]) -> Command {
    let mut cmd = Command::new("systemctl");
    if mode == Mode::User {
        cmd.arg("--user");
    }
    cmd.args(args);
    cmd
}

/// The systemd version (`systemctl --version`'s first line, `systemd 252 (…)`).
pub fn version() -> Option<u32> {
    let out = Command::new("systemctl").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The unit's state as `systemctl show` tells it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UnitState {
    /// `active`, `inactive`, `failed`, `activating`, …
    pub active: String,
    /// `running`, `dead`, `auto-restart`, …
    pub sub: String,
    /// `enabled`, `disabled`, …
    pub enabled: String,
    /// The main process, when running.
    pub main_pid: Option<u32>,
    /// Since when it is in its active state (systemd's own text).
    pub since: Option<String>,
    /// How often systemd restarted it.
    pub restarts: Option<u32>,
}

/// Reads the unit's state.
pub fn state(mode: Mode) -> anyhow::Result<UnitState> {
    let text = systemctl(
        mode,
        &[
            "show",
            UNIT_NAME,
            "--property=ActiveState,SubState,UnitFileState,MainPID,StateChangeTimestamp,NRestarts",
        ],
    )?;
    let mut s = UnitState::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "ActiveState" => s.active = v.to_owned(),
            "SubState" => s.sub = v.to_owned(),
            "UnitFileState" => s.enabled = v.to_owned(),
            "MainPID" => s.main_pid = v.parse().ok().filter(|p| *p != 0),
            "StateChangeTimestamp" if !v.is_empty() => s.since = Some(v.to_owned()),
            "NRestarts" => s.restarts = v.parse().ok(),
            _ => {}
        }
    }
    Ok(s)
}

/// Writes `text` to `path` atomically (a temporary file in the same directory, synced, then
/// renamed over it), mode 0644, making the directory when missing.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{UNIT_NAME}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}
