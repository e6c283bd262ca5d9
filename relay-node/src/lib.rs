//! The m87 relay node: the QUIC endpoint that device tunnels and client sessions reach, the
//! registry of connected devices, and the splicing of each operation stream from a client
//! session onto the device's tunnel.
//!
//! A relay holds no durable state. It verifies session tokens offline with the control plane's
//! public key, and reaches the control plane only through [`ControlPlaneLink`] (to check device
//! keys and to record presence and refusals).
//!
//! # Layout
//!
//! - [`registry`]: connected device tunnels; replacement is atomic, removal compares epochs.
//! - [`presence`]: the fleet-wide presence registry (device -> relay): in-process or NATS KV.
//! - [`directory`]: the fleet's relay directory (NATS KV).
//! - [`fleet`]: fleet mode: presence writes, and relay-to-relay links that carry sessions to
//!   the relay holding a device's tunnel.
//! - `links`: the fleet settings and the pool of dialled links.
//! - [`endpoint`]: QUIC and TLS configuration, certificates.
//! - [`gate`]: what a connection gets before it authenticates (caps, address validation,
//!   small limits, a deadline).
//! - `state`: the relay's shared state, one owner behind a cloneable handle, with the tables
//!   of live sessions and UDP flows.
//! - [`tunnel`]: the device tunnel handler.
//! - [`session`]: the client session handler: admit (a pure decision, in
//!   `m87_events::admission`), then open on the device and splice.
//! - `route`: the way to a device (local tunnel or link), flow owners, link datagrams.
//! - `splice`: moving a stream's bytes both ways.
//! - [`io`]: reading the first frames of a stream with size and time limits.
//! - [`control_link`]: a fleet relay's HTTPS link to the control planes.
//! - [`revocation`]: following the event feed to cut off what was revoked.
//! - [`role`]: the fleet relay role, and the address rules every relay shares.

pub mod control_link;
pub mod directory;
pub mod endpoint;
pub mod fleet;
pub mod gate;
pub mod io;
mod links;
pub mod presence;
pub mod registry;
pub mod revocation;
pub mod role;
mod route;
pub mod session;
mod splice;
mod state;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use m87_events::token::SessionVerifier;
use m87_events::tunnel::{ALPN_SESSION, ALPN_TUNNEL};
use m87_events::{DeviceId, SessionId};
use tokio::sync::watch;

pub use registry::Registry;

/// What a relay asks of the control plane.
#[async_trait]
pub trait ControlPlaneLink: Send + Sync + 'static {
    /// The device a device key belongs to; an error sentence when the key is refused.
    async fn authenticate_device(&self, api_key: &str) -> Result<DeviceId, String>;
    /// A device's tunnel is now on this relay.
    async fn device_connected(&self, device: &DeviceId, remote: SocketAddr);
    /// A device's tunnel left this relay.
    async fn device_disconnected(&self, device: &DeviceId, reason: &str);
    /// A session was refused here.
    async fn session_refused(
        &self,
        session: Option<SessionId>,
        device: Option<DeviceId>,
        code: &str,
        reason: &str,
    );
}

/// A relay's settings.
pub struct RelayConfig {
    /// This relay's id (in presence records).
    pub relay_id: String,
    /// Verifies session tokens.
    pub verifier: SessionVerifier,
    /// The way to the control plane.
    pub link: Arc<dyn ControlPlaneLink>,
    /// The relay's TLS certificate and key.
    pub identity: endpoint::RelayIdentity,
    /// Fleet mode: presence, the relay directory and links to other relays (None on one
    /// machine).
    pub fleet: Option<fleet::FleetConfig>,
}

/// A bound relay, ready to [`Relay::run`].
pub struct Relay {
    endpoint: quinn::Endpoint,
    state: state::RelayState,
}

/// An open client session, as the relay sees it.
#[derive(Debug, Clone)]
pub struct LiveSession {
    /// The session.
    pub session_id: SessionId,
    /// The device.
    pub device: DeviceId,
    /// Who opened it (`user:<email>`).
    pub subject: String,
    /// The credential its grant came through (absent for OIDC sign-ins).
    pub credential: Option<m87_events::token::Credential>,
    pub(crate) conn: quinn::Connection,
    /// Set when the relay ends the session itself: the code the device records as why.
    pub(crate) ended: std::sync::Arc<tokio::sync::watch::Sender<Option<(String, String)>>>,
}

/// A handle to a running relay's sessions, for the control plane's decisions.
#[derive(Clone)]
pub struct RelayHandle {
    state: state::RelayState,
}

impl RelayHandle {
    /// The open sessions.
    pub fn sessions(&self) -> Vec<LiveSession> {
        self.state.sessions().list()
    }

    /// Ends a session at once, and refuses tokens issued before now for the same device and
    /// subject (they may still be unused).
    pub fn end_session(&self, session: &LiveSession, code: &str, reason: &str) {
        self.revoke(&session.device, &session.subject);
        self.close_session(session, code, reason);
    }

    /// Ends a session at once, telling the client `reason` and the device `code` (for its
    /// record of why the session ended); refuses nothing more.
    pub fn close_session(&self, session: &LiveSession, code: &str, reason: &str) {
        session
            .ended
            .send_replace(Some((code.to_owned(), reason.to_owned())));
        session
            .conn
            .close(io::CLOSE_SESSION_ENDED, reason.as_bytes());
    }

    /// Refuses every token granted through `credential` (it was revoked).
    pub fn revoke_credential(&self, credential: m87_events::token::Credential) {
        self.state
            .revoke_credential(credential, m87_events::token::now_unix());
    }

    /// Whether this relay learned that `credential` was revoked.
    pub fn is_credential_revoked(&self, credential: &m87_events::token::Credential) -> bool {
        self.state.is_credential_revoked(credential)
    }

    /// Refuses tokens issued up to now for `subject` on `device`.
    pub fn revoke(&self, device: &DeviceId, subject: &str) {
        self.state
            .revoke(device, subject, m87_events::token::now_unix());
    }

    /// The connected devices.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(self.state.registry())
    }

    /// Client datagrams dropped so far because they named a UDP flow that the sending session
    /// had not opened.
    pub fn foreign_datagrams(&self) -> u64 {
        self.state.flows().foreign_datagrams()
    }

    /// Connection attempts refused so far because too many connections were unauthenticated.
    pub fn refused_connections(&self) -> u64 {
        self.state.gate().refused_total()
    }

    /// Connection attempts asked so far to validate their address (QUIC Retry).
    pub fn retried_connections(&self) -> u64 {
        self.state.gate().retried_total()
    }

    /// Connections unauthenticated now.
    pub fn unauthenticated_connections(&self) -> usize {
        self.state.gate().unauthenticated()
    }
}

/// Completes the handshake of an accepted attempt and hands the connection to the handler
/// of its protocol.
async fn serve_connection(
    state: state::RelayState,
    incoming: quinn::Incoming,
    mut gate: gate::Unauthenticated,
) {
    let started = Instant::now();
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "refused an incoming connection");
            return;
        }
    };
    let conn = match tokio::time::timeout(io::HEADER_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "handshake timed out");
            return;
        }
    };
    gate.watch(&conn);
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    tracing::debug!(%remote, elapsed_ms = started.elapsed().as_millis() as u64, "connection up");
    match alpn.as_deref() {
        Some(p) if p == ALPN_TUNNEL => tunnel::handle(state, conn, gate).await,
        Some(p) if p == ALPN_SESSION => session::handle(state, conn, gate).await,
        Some(p) if p == fleet::ALPN => fleet::accept_link(state, conn, gate).await,
        _ => conn.close(io::CLOSE_PROTOCOL, b"unknown protocol"),
    }
}

impl Relay {
    /// Binds the relay's UDP socket.
    pub fn bind(addr: SocketAddr, config: RelayConfig) -> anyhow::Result<Self> {
        Self::with_socket(std::net::UdpSocket::bind(addr)?, config)
    }

    /// Runs the relay on an already bound UDP socket (so its address is known before the
    /// configuration that names it is made).
    pub fn with_socket(socket: std::net::UdpSocket, config: RelayConfig) -> anyhow::Result<Self> {
        let server =
            endpoint::server_config(&config.identity, &[ALPN_TUNNEL, ALPN_SESSION, fleet::ALPN])?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| anyhow::anyhow!("no async runtime for the relay"))?;
        let (recv_buffer, send_buffer) = m87_transport::quic::tune_socket(&socket);
        if recv_buffer.is_some_and(|n| n < m87_transport::quic::SOCKET_BUFFER) {
            tracing::warn!(
                recv_buffer,
                wanted = m87_transport::quic::SOCKET_BUFFER,
                "the kernel granted the relay's UDP socket a small receive buffer; under load \
                 packets will be dropped: raise net.core.rmem_max (and net.core.wmem_max)"
            );
        } else {
            tracing::debug!(recv_buffer, send_buffer, "relay UDP socket buffers");
        }
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )?;
        let state = state::RelayState::new(
            config.relay_id,
            config.verifier,
            config.link,
            endpoint.clone(),
            config.fleet.map(links::Fleet::new),
        );
        Ok(Self { endpoint, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The connected devices.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(self.state.registry())
    }

    /// A handle to the relay's sessions.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            state: self.state.clone(),
        }
    }

    /// Accepts connections until `shutdown` turns true; then closes every connection. Each
    /// attempt passes the [`gate`] first: retried, refused, or accepted with a slot it holds
    /// until it authenticates.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
                _ = shutdown.changed() => break,
            };
            let remote = incoming.remote_address();
            let admission = self.state.gate().admit(
                remote.ip(),
                incoming.remote_address_validated(),
                incoming.may_retry(),
            );
            let gate = match admission {
                gate::Admission::Accept(gate) => gate,
                gate::Admission::Retry => {
                    if let Err(e) = incoming.retry() {
                        tracing::debug!(%remote, "could not ask for address validation");
                        e.into_incoming().ignore();
                    }
                    continue;
                }
                gate::Admission::Refuse => {
                    incoming.refuse();
                    continue;
                }
            };
            tokio::spawn(serve_connection(self.state.clone(), incoming, gate));
        }
        self.endpoint
            .close(io::CLOSE_SHUTDOWN, b"relay shutting down");
        self.endpoint.wait_idle().await;
    }
}
