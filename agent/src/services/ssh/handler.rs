//! One SSH connection: who may log in, which channels open, which requests are answered.
//! Session channels are handed to [`super::process`] (exec, shell) or [`super::sftp`] when
//! their request arrives; the task that takes a channel reads its later messages (data, EOF,
//! window changes, signals) itself.

use std::collections::HashMap;

use m87_events::tunnel::Tty;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};

use super::process::{self, Request};
use super::sftp;
use crate::services::ServiceContext;
use crate::services::shell::account::Account;

/// Environment variables an SSH client may set (as OpenSSH's `AcceptEnv` does by default on
/// Debian: `LANG`, `LC_*`), plus `TERM`-like harmless ones.
fn env_allowed(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_") || name == "COLORTERM" || name == "TZ"
}

/// What one session channel has asked for before its exec, shell or subsystem.
#[derive(Default)]
struct Pending {
    channel: Option<Channel<Msg>>,
    tty: Option<Tty>,
    env: Vec<(String, String)>,
}

/// The server side of one SSH connection.
pub(super) struct SshHandler {
    account: Account,
    /// The runtime's login name.
    user: String,
    /// The login `m87 ssh-proxy` asked for (OpenSSH's `%r`).
    requested: Option<String>,
    ctx: ServiceContext,
    pending: HashMap<ChannelId, Pending>,
}

impl SshHandler {
    /// A handler for a connection asking for `requested`, served as `account`.
    pub(super) fn new(account: Account, requested: Option<String>, ctx: ServiceContext) -> Self {
        let user = account
            .name
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| rustix::process::getuid().as_raw().to_string());
        Self {
            account,
            user,
            requested,
            ctx,
            pending: HashMap::new(),
        }
    }

    /// Whether `login` is the runtime's user (the only one an SSH session may be).
    fn may_log_in(&self, login: &str) -> bool {
        login == self.user && self.requested.as_deref().is_none_or(|r| r == self.user)
    }

    fn refusal(&self) -> Option<String> {
        let asked = self.requested.as_deref()?;
        (asked != self.user).then(|| {
            format!(
                "m87: this device's runtime runs as {user}; SSH sessions run as that user, \
                 so logging in as {asked} is refused. Use `ssh {user}@DEVICE.m87` (or no user \
                 in ~/.ssh/config's m87 block).\r\n",
                user = self.user
            )
        })
    }

    fn decide(&self, login: &str) -> Auth {
        if self.may_log_in(login) {
            Auth::Accept
        } else {
            Auth::Reject {
                proceed_with_methods: None,
                partial_success: false,
            }
        }
    }

    /// Takes a session channel out of waiting for its request.
    fn take(&mut self, id: ChannelId) -> Option<(Channel<Msg>, Pending)> {
        let mut p = self.pending.remove(&id)?;
        let channel = p.channel.take()?;
        Some((channel, p))
    }

    fn start(&mut self, id: ChannelId, request: Request, session: &mut Session) {
        let Some((channel, pending)) = self.take(id) else {
            let _ = session.channel_failure(id);
            return;
        };
        let _ = session.channel_success(id);
        let job = process::Job {
            request,
            tty: pending.tty,
            env: pending.env,
            account: self.account.clone(),
            ctx: self.ctx.clone(),
        };
        tokio::spawn(process::run(channel, job));
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        let refusal = self.refusal();
        if refusal.is_some() {
            let asked = self.requested.as_deref().unwrap_or_default();
            self.ctx
                .note("ssh_refused", format!("login {}", super::short(asked)));
        }
        Ok(refusal)
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.decide(user))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.decide(user))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.decide(user))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pending.insert(
            channel.id(),
            Pending {
                channel: Some(channel),
                ..Pending::default()
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(port) = u16::try_from(port) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        self.ctx.note("ssh_forward", format!("{host}:{port}"));
        let connect = m87_transport::forward::CONNECT_TIMEOUT;
        match tokio::time::timeout(connect, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(stream)) => {
                reply.accept().await;
                tokio::spawn(process::splice_tcp(channel, stream));
            }
            _ => reply.reject(ChannelOpenFailure::ConnectFailed).await,
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        id: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.pending.get_mut(&id) {
            Some(p) => {
                p.tty = Some(Tty {
                    cols: u16::try_from(cols).unwrap_or(u16::MAX),
                    rows: u16::try_from(rows).unwrap_or(u16::MAX),
                    term: term.to_owned(),
                });
                let _ = session.channel_success(id);
            }
            None => {
                let _ = session.channel_failure(id);
            }
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.pending.get_mut(&id) {
            Some(p) if env_allowed(name) => {
                p.env.push((name.to_owned(), value.to_owned()));
                let _ = session.channel_success(id);
            }
            _ => {
                let _ = session.channel_failure(id);
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(id, Request::Shell, session);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        self.start(id, Request::Exec(command), session);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            // Refused at the SSH level; the channel and the connection stay open.
            self.ctx
                .note("ssh_refused", format!("subsystem {}", super::short(name)));
            let _ = session.channel_failure(id);
            return Ok(());
        }
        let Some((channel, _)) = self.take(id) else {
            let _ = session.channel_failure(id);
            return Ok(());
        };
        let _ = session.channel_success(id);
        self.ctx
            .note("sftp", self.account.home.display().to_string());
        let home = self.account.home.clone();
        sftp::serve(channel, session.handle(), home, self.ctx.clone());
        Ok(())
    }
}
