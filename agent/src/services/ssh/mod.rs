//! `ssh` channel: an SSH server that exists only inside an authorized m87 session.
//!
//! `m87 ssh-proxy` (OpenSSH's `ProxyCommand`) opens a session of kind `ssh` and one
//! [`Channel::Ssh`](m87_events::tunnel::Channel::Ssh) in it. The device answers
//! `ChannelAccepted`, then [`Control::SshHostKey`] with its host key, then the stream carries
//! raw SSH bytes, served here by [russh](https://docs.rs/russh) — no listening socket, so
//! nothing is reachable from any network. The m87 session token authenticated the user; the SSH
//! layer accepts its one client without a password, as the runtime's own user (a request for
//! another login is refused at the SSH level, with a banner saying why).
//!
//! - [`hostkey`]: the device's ed25519 host key, generated once in the config directory.
//! - `handler`: the SSH connection (authentication, channel opens and requests).
//! - `process`: exec and PTY shells of the SSH session channels.
//! - `sftp`: the `sftp` subsystem (what `scp` and `sftp` of OpenSSH 9 use).

pub mod hostkey;

mod handler;
mod process;
mod sftp;

use std::sync::Arc;
use std::time::Duration;

use m87_events::tunnel::Control;
use m87_transport::frames::{FrameReader, write_control};
use tokio::io::AsyncReadExt;

use super::shell::account::Account;
use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext, accept, unavailable};

/// Longest command line or path kept in the session's report.
const MAX_NOTE: usize = 512;

/// Serves one SSH connection on the channel's stream.
pub async fn serve(
    requested: Option<String>,
    reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    ctx: &ServiceContext,
) -> ChannelOutcome {
    let key = match hostkey::load_or_create() {
        Ok(k) => k,
        Err(e) => return unavailable(&mut writer, e).await,
    };
    let public_key = hostkey::public_line(&key);
    if accept(&mut writer).await.is_err()
        || write_control(&mut writer, &Control::SshHostKey { public_key })
            .await
            .is_err()
    {
        return ChannelOutcome {
            exit: None,
            error: Some("client disconnected".into()),
        };
    }
    let (inner, leftover) = reader.into_parts();
    let stream = tokio::io::join(std::io::Cursor::new(leftover.freeze()).chain(inner), writer);
    let config = Arc::new(config(key));
    let account = Account::current();
    let handler = handler::SshHandler::new(account, requested, ctx.clone());
    let result = match russh::server::run_stream(config, stream, handler).await {
        Ok(running) => running.await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    ChannelOutcome {
        exit: None,
        error: result.err().filter(|e| !is_disconnect(e)),
    }
}

/// Whether an SSH error is just the client going away.
fn is_disconnect(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("disconnect") || m.contains("eof") || m.contains("connection")
}

/// The server's settings: the host key, `none` and `publickey` authentication (both accepted
/// for the session's own user), generous windows for file copies.
fn config(key: russh::keys::PrivateKey) -> russh::server::Config {
    let mut methods = russh::MethodSet::empty();
    methods.push(russh::MethodKind::None);
    methods.push(russh::MethodKind::PublicKey);
    russh::server::Config {
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-m87_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        keys: vec![key],
        auth_rejection_time: Duration::from_millis(50),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        nodelay: true,
        ..Default::default()
    }
}

/// Cuts a note to [`MAX_NOTE`] characters.
fn short(text: &str) -> String {
    if text.chars().count() <= MAX_NOTE {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_NOTE).collect();
    cut.push('…');
    cut
}
