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
//! - [`endpoint`]: QUIC and TLS configuration, certificates.
//! - [`tunnel`]: the device tunnel handler.
//! - [`session`]: the client session handler and stream splicing.
//! - [`io`]: reading the first frames of a stream with size and time limits.
//! - [`control_link`]: a fleet relay's HTTPS link to the control planes.
//! - [`revocation`]: following the event feed to cut off what was revoked.
//! - [`role`]: the fleet relay role, and the address rules every relay shares.

pub mod control_link;
pub mod directory;
pub mod endpoint;
pub mod fleet;
pub mod io;
pub mod presence;
pub mod registry;
pub mod revocation;
pub mod role;
pub mod session;
pub mod tunnel;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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
    shared: Arc<Shared>,
}

/// State shared by the relay's connection handlers.
pub(crate) struct Shared {
    pub(crate) relay_id: String,
    pub(crate) verifier: SessionVerifier,
    pub(crate) link: Arc<dyn ControlPlaneLink>,
    pub(crate) registry: Arc<Registry>,
    /// Session ids already used, with when their token expires (replay protection).
    pub(crate) used_sessions: Mutex<HashMap<SessionId, i64>>,
    /// Client connections owning UDP flows.
    pub(crate) flows: session::Flows,
    /// Open client sessions.
    pub(crate) sessions: Mutex<HashMap<SessionId, LiveSession>>,
    /// (device, subject) pairs whose access was revoked, with when: older tokens are refused.
    pub(crate) revoked: Mutex<Vec<(DeviceId, String, i64)>>,
    /// The relay's endpoint (links to other relays are dialled from it).
    pub(crate) endpoint: quinn::Endpoint,
    /// Fleet mode.
    pub(crate) fleet: Option<fleet::Fleet>,
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
    pub(crate) conn: quinn::Connection,
}

/// A handle to a running relay's sessions, for the control plane's decisions.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl RelayHandle {
    /// The open sessions.
    pub fn sessions(&self) -> Vec<LiveSession> {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Ends a session at once, and refuses tokens issued before now for the same device and
    /// subject (they may still be unused).
    pub fn end_session(&self, session: &LiveSession, reason: &str) {
        self.revoke(&session.device, &session.subject);
        session
            .conn
            .close(io::CLOSE_SESSION_ENDED, reason.as_bytes());
    }

    /// Refuses tokens issued up to now for `subject` on `device`.
    pub fn revoke(&self, device: &DeviceId, subject: &str) {
        let now = m87_events::token::now_unix();
        let mut revoked = self
            .shared
            .revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Tokens live at most a minute: older entries protect nothing.
        revoked.retain(|(_, _, at)| *at > now - m87_events::token::MAX_LIFETIME_SECS);
        revoked.push((device.clone(), subject.to_owned(), now));
    }

    /// The connected devices.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.shared.registry)
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
        let (recv_buffer, send_buffer) = endpoint::tune_socket(&socket);
        if recv_buffer.is_some_and(|n| n < endpoint::SOCKET_BUFFER) {
            tracing::warn!(
                recv_buffer,
                wanted = endpoint::SOCKET_BUFFER,
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
        Ok(Self {
            endpoint: endpoint.clone(),
            shared: Arc::new(Shared {
                relay_id: config.relay_id,
                verifier: config.verifier,
                link: config.link,
                registry: Arc::new(Registry::default()),
                used_sessions: Mutex::new(HashMap::new()),
                flows: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                revoked: Mutex::new(Vec::new()),
                endpoint,
                fleet: config.fleet.map(fleet::Fleet::new),
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The connected devices.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.shared.registry)
    }

    /// A handle to the relay's sessions.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Accepts connections until `shutdown` turns true; then closes every connection.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
                _ = shutdown.changed() => break,
            };
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
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
                let alpn = conn
                    .handshake_data()
                    .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|d| d.protocol);
                tracing::debug!(%remote, elapsed_ms = started.elapsed().as_millis() as u64, "connection up");
                match alpn.as_deref() {
                    Some(p) if p == ALPN_TUNNEL => tunnel::handle(shared, conn).await,
                    Some(p) if p == ALPN_SESSION => session::handle(shared, conn).await,
                    Some(p) if p == fleet::ALPN => fleet::accept_link(shared, conn).await,
                    _ => conn.close(io::CLOSE_PROTOCOL, b"unknown protocol"),
                }
            });
        }
        self.endpoint
            .close(io::CLOSE_SHUTDOWN, b"relay shutting down");
        self.endpoint.wait_idle().await;
    }
}
