//! `m87-server` as a library: the single-machine platform — the control plane and one relay
//! node in one process — wired together. `main` parses arguments and calls [`run`].
//!
//! # Layout
//!
//! - [`link`]: the relay's way to the control plane in the same process.
//! - [`fleet`]: the fleet roles, `control-plane` and `relay`, each in its own process.
//! - [`run`]: start everything and serve until shutdown.

pub mod fleet;
pub mod link;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use m87_control_plane::config::ServerConfig;
use m87_control_plane::server::Platform;
use m87_events::DomainEvent;
use m87_events::api::RelayEndpoint;
use m87_relay_node::endpoint::RelayIdentity;
use m87_relay_node::{LiveSession, Relay, RelayConfig, RelayHandle};
use tokio::net::TcpListener;

/// Where the relay listens and how devices and clients reach it.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The UDP address to bind.
    pub quic_listen: SocketAddr,
    /// `host:port` that devices and clients dial, when it differs from the bound address.
    pub public_address: Option<String>,
}

/// What [`run`] reports once everything listens.
#[derive(Debug, Clone)]
pub struct Started {
    /// The REST API's address.
    pub api_addr: SocketAddr,
    /// The API certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// Where the bootstrap admin key was written, when it was made now.
    pub admin_key_path: Option<std::path::PathBuf>,
    /// The relay's bound address.
    pub relay_addr: SocketAddr,
    /// The address announced to devices and clients.
    pub relay_public: String,
    /// The relay certificate's fingerprint.
    pub relay_fingerprint: String,
}

/// The address devices and clients dial: `public_address` when given, else the bound one
/// (loopback for an unspecified address).
pub fn announced_address(settings: &RelaySettings, bound: SocketAddr) -> String {
    if let Some(a) = &settings.public_address {
        return a
            .trim()
            .trim_start_matches("quic://")
            .trim_end_matches('/')
            .to_owned();
    }
    let ip = match bound.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => "::1".parse().unwrap_or(ip),
        ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port()).to_string()
}

/// Whether an event may take someone's access to a device away.
pub fn access_may_shrink(event: &DomainEvent) -> bool {
    matches!(
        event,
        DomainEvent::AccessRevoked(_)
            | DomainEvent::DeviceRemoved(_)
            | DomainEvent::MemberRemoved(_)
            | DomainEvent::MemberRoleChanged(_)
            | DomainEvent::OrgDeleted(_)
            | DomainEvent::ApiKeyRevoked(_)
    )
}

/// Decides whether open sessions may go on.
#[async_trait::async_trait]
pub trait AccessOracle: Send + Sync + 'static {
    /// For each session, whether its user may still operate its device.
    async fn still_allowed(&self, sessions: &[LiveSession]) -> Vec<bool>;
}

#[async_trait::async_trait]
impl AccessOracle for m87_control_plane::service::ControlPlane {
    async fn still_allowed(&self, sessions: &[LiveSession]) -> Vec<bool> {
        let mut out = Vec::with_capacity(sessions.len());
        for s in sessions {
            out.push(self.may_operate(&s.subject, &s.device).await);
        }
        out
    }
}

/// Ends every open session whose user may no longer operate its device.
async fn end_sessions_without_access(oracle: &dyn AccessOracle, relay: &RelayHandle) {
    let sessions = relay.sessions();
    if sessions.is_empty() {
        return;
    }
    let allowed = oracle.still_allowed(&sessions).await;
    for (session, ok) in sessions.iter().zip(allowed) {
        if !ok {
            tracing::info!(session = %session.session_id, subject = %session.subject, device = %session.device, "access revoked: ending the session");
            relay.end_session(session, "access to this device was revoked");
        }
    }
}

/// Follows the event feed until `stopping`: a removed device loses its tunnel on this relay at
/// once; whoever loses access loses their sessions here.
pub fn watch_revocations(
    mut feed: tokio::sync::broadcast::Receiver<m87_events::EventEnvelope>,
    relay: RelayHandle,
    oracle: Arc<dyn AccessOracle>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let registry = relay.registry();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = feed.recv() => match event {
                    Ok(e) => {
                        if let DomainEvent::DeviceRemoved(r) = &e.event
                            && registry.disconnect(&r.device_id, "the device was removed")
                        {
                            tracing::info!(device = %r.device_id, "removed device disconnected");
                        }
                        // Tokens already issued to a user who lost access are refused too.
                        if let DomainEvent::AccessRevoked(r) = &e.event {
                            let scope = r.scope.to_string();
                            if scope.starts_with("user:") {
                                relay.revoke(&r.device_id, &scope);
                            }
                        }
                        if access_may_shrink(&e.event) {
                            end_sessions_without_access(oracle.as_ref(), &relay).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Missed events might have revoked access: check every session.
                        tracing::warn!(missed = n, "revocation feed lagged; checking every session");
                        end_sessions_without_access(oracle.as_ref(), &relay).await;
                    }
                    Err(_) => return,
                },
                _ = stopping.changed() => return,
            }
        }
    });
}

/// Runs the control plane and a relay until `shutdown` completes.
pub async fn run(
    config: ServerConfig,
    relay: RelaySettings,
    api_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_started: impl FnOnce(&Started),
) -> anyhow::Result<()> {
    let platform = Platform::start(&config).await?;
    let cp = platform.cp.clone();

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = relay
        .public_address
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
    {
        names.push(host);
    }
    let identity = RelayIdentity::load_or_create(&config.data_dir.join("tls"), &names)?;
    let relay_fingerprint = identity.fingerprint();
    let link = Arc::new(link::InProcessLink::new(cp.clone(), "relay-1".into()));
    let node = Relay::bind(
        relay.quic_listen,
        RelayConfig {
            relay_id: "relay-1".into(),
            verifier: cp.session_verifier(),
            link,
            identity,
            fleet: None,
        },
    )
    .with_context(|| format!("binding the relay to {}/udp", relay.quic_listen))?;
    let relay_addr = node.local_addr()?;
    let relay_public = announced_address(&relay, relay_addr);
    let server_name = relay_public
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    cp.set_relays(vec![RelayEndpoint {
        address: relay_public.clone(),
        server_name,
        cert_sha256: relay_fingerprint.clone(),
    }]);
    let registry = node.registry();
    cp.set_presence(Arc::new(link::RegistryPresence(Arc::clone(&registry))));
    tracing::info!(address = %relay_addr, announced = %relay_public, sha256 = %relay_fingerprint, "relay listening (QUIC)");

    // A removed device loses its tunnel at once; whoever loses access loses their sessions.
    if let Some(feed) = cp.subscribe() {
        watch_revocations(
            feed,
            node.handle(),
            Arc::new(cp.clone()) as Arc<dyn AccessOracle>,
            platform.stopping(),
        );
    }
    let relay_task = tokio::spawn(node.run(platform.stopping()));

    on_started(&Started {
        api_addr: api_listener.local_addr()?,
        fingerprint: platform.tls.fingerprint.clone(),
        admin_key_path: platform.admin_key_path.clone(),
        relay_addr,
        relay_public,
        relay_fingerprint,
    });
    platform.serve_api(api_listener, shutdown).await?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), relay_task).await;
    Ok(())
}
