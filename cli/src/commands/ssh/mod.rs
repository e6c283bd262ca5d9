//! OpenSSH integration: `m87 ssh enable|disable` (the `Host *.m87` block in `~/.ssh/config`)
//! and `m87 ssh-proxy HOST [USER]`, the block's `ProxyCommand`: it opens an m87 session of kind
//! `ssh` on the device, writes the device's host key (sent by the device with the channel's
//! acceptance) to m87's own known_hosts file, then relays OpenSSH's bytes through the channel.
//! See `docs/ssh.md`.

pub mod config;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use m87_events::token::Operation;
use m87_events::tunnel::{Channel, Control};
use m87_transport::private_file::write_private_file;
use m87_transport::stream::{BoxRead, BoxWrite};
use tokio::signal::unix::{SignalKind, signal};

use crate::remote::{ChannelOpener, OpenedChannel};
use crate::session::QuicSession;

/// The suffix that routes a host name through m87.
pub const SUFFIX: &str = ".m87";
/// m87's own known_hosts file, in the config directory.
pub const KNOWN_HOSTS: &str = "known_hosts";
/// How long the end of the session may take to go out once OpenSSH is done.
const CLOSE_WAIT: Duration = Duration::from_millis(50);

/// m87's known_hosts file.
pub fn known_hosts_path() -> anyhow::Result<PathBuf> {
    Ok(m87_transport::credentials::config_dir()?.join(KNOWN_HOSTS))
}

/// `~/.ssh/config`.
fn ssh_config_path() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set: cannot find ~/.ssh/config")?;
    Ok(PathBuf::from(home).join(".ssh").join("config"))
}

fn read_or_empty(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Creates `dir` with mode 0700 when it is missing.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `text` to the SSH config atomically, keeping its mode when it exists (0600 else).
fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
    write_private_file(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    if let Ok(mode) = mode
        && mode != 0o600
    {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("keeping the mode of {}", path.display()))?;
    }
    Ok(())
}

/// `m87 ssh enable`.
pub fn enable() -> anyhow::Result<()> {
    let path = ssh_config_path()?;
    let exe = std::env::current_exe().context("finding this m87 executable")?;
    let known = known_hosts_path()?;
    let current = read_or_empty(&path)?;
    let file = path.display().to_string();
    // A profile named for this command (--profile, M87_PROFILE) is one ssh would not see: it
    // goes on the ProxyCommand. One chosen with `m87 profile use` is found by ssh-proxy itself.
    let (profile, source) = crate::profile::chosen()?;
    let named = matches!(
        source,
        crate::profile::Source::Flag | crate::profile::Source::Env
    ) && !profile.is_default();
    let block = config::block(&exe, &known, named.then(|| profile.as_str()));
    let text = config::enable(&current, &block, &file)?;
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    if text != current || !path.exists() {
        write_config(&path, &text)?;
    }
    println!(
        "OpenSSH reaches m87 devices as DEVICE.m87 (`ssh robot-1.m87`, `scp f robot-1.m87:/tmp/`)"
    );
    println!(
        "block written to {file}; host keys are kept in {}",
        known.display()
    );
    Ok(())
}

/// `m87 ssh disable`.
pub fn disable() -> anyhow::Result<()> {
    let path = ssh_config_path()?;
    let current = read_or_empty(&path)?;
    let text = config::disable(&current, &path.display().to_string())?;
    if text == current {
        println!("no m87 block in {}", path.display());
        return Ok(());
    }
    write_config(&path, &text)?;
    println!("m87 block removed from {}", path.display());
    Ok(())
}

/// `m87 ssh-proxy HOST [USER]`: exits with 0 when OpenSSH's connection ended, 255 when the
/// session could not be opened or broke (as OpenSSH uses for connection failures), m87's
/// reason on stderr. It exits the process itself: the thread reading standard input may be
/// blocked in a read that only OpenSSH's exit would end.
pub async fn proxy(host: &str, user: Option<String>) -> i32 {
    let code = match relay(host, user).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("m87: {e:#}");
            255
        }
    };
    std::process::exit(code)
}

/// The device name in an OpenSSH host name (`robot-1.m87` → `robot-1`).
pub fn device_of(host: &str) -> &str {
    let cut = host.len().saturating_sub(SUFFIX.len());
    match host.get(cut..) {
        Some(tail) if tail.eq_ignore_ascii_case(SUFFIX) && cut > 0 => &host[..cut],
        _ => host,
    }
}

async fn relay(host: &str, user: Option<String>) -> anyhow::Result<()> {
    let device = device_of(host);
    let client = crate::context::user_client()?;
    let grant = serde_json::json!({ "user": user });
    let session = QuicSession::open(&client, device, Operation::Ssh, grant).await?;
    let opened = session.open(Channel::Ssh { user }).await?;
    let OpenedChannel {
        mut reader, writer, ..
    } = opened;
    match reader.control().await {
        Ok(Some(Control::SshHostKey { public_key })) => remember(host, &public_key)?,
        Ok(other) => anyhow::bail!("the device answered {other:?} instead of its SSH host key"),
        Err(e) => anyhow::bail!("the session broke before the device's SSH host key: {e}"),
    }
    // OpenSSH ends its ProxyCommand with SIGHUP when it is done: end the session then, so
    // the device and the audit trail see the end at once rather than at QUIC's idle timeout.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (input, output) = stdio();
    let mut stdio = tokio::io::join(input, output);
    let result = tokio::select! {
        r = m87_transport::stream::splice(&mut stdio, reader, writer) => r.map(|_| ()),
        _ = hangup.recv() => Ok(()),
        _ = terminate.recv() => Ok(()),
    };
    session.close_within(CLOSE_WAIT).await;
    result.context("relaying the SSH connection")
}

/// Standard input and output as async streams: non-blocking pipes when they are pipes (OpenSSH
/// gives its ProxyCommand two pipes), which move bytes without a thread hand-off per read;
/// else tokio's standard streams (a terminal, a socket).
fn stdio() -> (BoxRead, BoxWrite) {
    use std::os::fd::AsFd;
    use tokio::net::unix::pipe;
    let input: BoxRead = match std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(pipe::Receiver::from_owned_fd)
    {
        Ok(p) => Box::new(p),
        Err(_) => Box::new(tokio::io::stdin()),
    };
    let output: BoxWrite = match std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(pipe::Sender::from_owned_fd)
    {
        Ok(p) => Box::new(p),
        Err(_) => Box::new(tokio::io::stdout()),
    };
    (input, output)
}

/// Writes `host`'s key to m87's known_hosts file (replacing an older one).
fn remember(host: &str, key: &str) -> anyhow::Result<()> {
    let path = known_hosts_path()?;
    let current = read_or_empty(&path)?;
    let host = host.to_ascii_lowercase();
    if current
        .lines()
        .any(|l| l.split_once(' ') == Some((host.as_str(), key)))
    {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let text = config::set_known_host(&current, &host, key);
    write_private_file(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_m87_suffix_is_cut_once_and_only_at_the_end() {
        assert_eq!(device_of("robot-1.m87"), "robot-1");
        assert_eq!(device_of("Robot-1.M87"), "Robot-1");
        assert_eq!(device_of("robot-1"), "robot-1");
        assert_eq!(device_of(".m87"), ".m87");
        assert_eq!(device_of("a.m87.m87"), "a.m87");
    }
}
