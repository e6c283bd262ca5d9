//! Fleet mode: the presence registry, the relay directory and relay-to-relay links.
//!
//! # Relay-to-relay links
//!
//! When a client session reaches this relay for a device whose tunnel is on another relay (the
//! presence registry says which), this relay opens — or reuses — one QUIC connection to that
//! relay with ALPN [`ALPN_RELAY_LINK`], and carries each of the session's streams over it:
//!
//! - authentication is mutual: the dialling relay pins the answering relay's certificate
//!   (SHA-256 from the relay directory), and its first stream carries
//!   [`Control::RelayHello`] with the fleet's relay secret, which the answering relay checks
//!   before it accepts anything else;
//! - every later stream starts with [`Control::RelayRoute`] naming the device; the answering
//!   relay opens a stream on the device's tunnel and splices the rest through, byte for byte
//!   (the client's own first frame, the device's answer, then the operation's bytes). The
//!   device checks the session token itself, so a link can only carry what a client was
//!   granted;
//! - UDP flows use the link's datagrams, each prefixed with the device id
//!   (`[len: u8][device id][flow id: u32][payload]`).
//!
//! One link per pair of relays (per direction) carries every session between them; a link that
//! failed is dialled again on the next session.

use std::net::SocketAddr;
use std::sync::Arc;

use m87_events::DeviceId;
use m87_events::admission::{DEVICE_UNREACHABLE_REASON, RefusalCode};
use m87_events::secret::secrets_match;
use m87_events::tunnel::datagram::datagram_flow;
use m87_events::tunnel::{ALPN_RELAY_LINK, Control};

use crate::io::{self, CLOSE_PROTOCOL, CLOSE_UNAUTHENTICATED};
use crate::route::{FlowOwner, Route, split_link_datagram};
use crate::splice::copy_then_finish;
use crate::state::RelayState;

pub use crate::links::{FleetConfig, PeerClientConfig};

/// Routes a link's incoming datagrams: to the device when its tunnel is here, else to the
/// client that owns the flow.
fn spawn_link_datagrams(state: RelayState, link: quinn::Connection) {
    tokio::spawn(async move {
        while let Ok(d) = link.read_datagram().await {
            let Some((device, datagram)) = split_link_datagram(&d) else {
                continue;
            };
            if let Some(tunnel) = state.registry().get(&device) {
                let _ = tunnel.conn.send_datagram(datagram);
                continue;
            }
            let Some(flow) = datagram_flow(&datagram) else {
                continue;
            };
            if let Some(owner) = state.flows().owner(&device, flow) {
                owner.send(&device, datagram);
            }
        }
    });
}

impl RelayState {
    /// Where the device's tunnel is: here, through a link to another relay, or nowhere.
    pub(crate) async fn route_to(&self, device: &DeviceId) -> Option<Route> {
        if let Some(t) = self.registry().get(device) {
            return Some(Route::Local(t.conn));
        }
        let fleet = self.fleet()?;
        let presence = match fleet.config.presence.lookup(device).await {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(%device, error = %e, "presence lookup failed");
                return None;
            }
        };
        if presence.entry.relay_id == self.relay_id() {
            // The registry says here, but the tunnel is gone (an entry not yet removed).
            return None;
        }
        match self
            .link_to(&presence.entry.relay_id, presence.entry.relay_addr)
            .await
        {
            Ok(link) => Some(Route::Remote {
                link,
                device: device.clone(),
                relay_id: presence.entry.relay_id,
            }),
            Err(e) => {
                tracing::warn!(%device, relay = %presence.entry.relay_id, error = %e, "cannot reach the relay holding the device");
                None
            }
        }
    }

    /// The link to `relay_id`, dialled now if there is none that is open.
    async fn link_to(&self, relay_id: &str, addr: SocketAddr) -> anyhow::Result<quinn::Connection> {
        let fleet = self
            .fleet()
            .ok_or_else(|| anyhow::anyhow!("not in a fleet"))?;
        let mut links = fleet.links().await;
        if let Some(link) = links.get(relay_id)
            && link.close_reason().is_none()
        {
            return Ok(link.clone());
        }
        let info = match fleet.config.directory.get(relay_id) {
            Some(i) => i,
            None => {
                fleet.config.directory.refresh().await?;
                fleet.config.directory.get(relay_id).ok_or_else(|| {
                    anyhow::anyhow!("relay {relay_id} is not in the relay directory")
                })?
            }
        };
        let client = (fleet.config.peer_client_config)(&info.cert_sha256)?;
        let connecting = self
            .endpoint()
            .connect_with(client, addr, &info.server_name)?;
        let link = tokio::time::timeout(io::HEADER_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow::anyhow!("connecting to relay {relay_id} at {addr} timed out"))??;
        let (mut send, mut recv) = link.open_bi().await?;
        m87_transport::frames::write_control(
            &mut send,
            &Control::RelayHello {
                relay_id: self.relay_id().to_owned(),
                secret: fleet.config.secret.clone(),
            },
        )
        .await?;
        match io::read_control(&mut recv).await {
            Ok((Control::RelayAccepted { .. }, _)) => {}
            Ok((Control::Refused { message, .. }, _)) => {
                anyhow::bail!("relay {relay_id} refused the link: {message}")
            }
            Ok((other, _)) => anyhow::bail!("relay {relay_id} answered {other:?}"),
            Err(e) => anyhow::bail!("relay {relay_id} did not accept the link: {e}"),
        }
        // The hello stream stays open for the link's life.
        tokio::spawn(async move {
            let _keep = (send, recv);
            std::future::pending::<()>().await;
        });
        tracing::info!(peer = %relay_id, %addr, "relay link up");
        spawn_link_datagrams(self.clone(), link.clone());
        links.insert(relay_id.to_owned(), link.clone());
        Ok(link)
    }
}

/// Keeps a tunnel's presence entry: written when the tunnel is up, refreshed every third of the
/// time-to-live, removed (if still ours) when the tunnel goes.
pub(crate) struct PresenceHold {
    task: tokio::task::JoinHandle<()>,
    revision: Arc<std::sync::atomic::AtomicU64>,
    device: DeviceId,
    state: RelayState,
}

impl PresenceHold {
    /// Starts holding the entry of `device`'s tunnel `conn` (registry epoch `epoch`). None
    /// outside a fleet.
    pub(crate) fn start(
        state: &RelayState,
        device: &DeviceId,
        epoch: u64,
        conn: &quinn::Connection,
    ) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let fleet = state.fleet()?;
        let entry = crate::presence::PresenceEntry {
            relay_id: state.relay_id().to_owned(),
            relay_addr: fleet.config.peer_address,
            epoch,
            connected_at: chrono::Utc::now(),
        };
        let revision = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let state = state.clone();
            let revision = Arc::clone(&revision);
            let device = device.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                let Some(fleet) = state.fleet() else {
                    return;
                };
                let presence = &fleet.config.presence;
                let every = presence.ttl() / 3;
                let mut pause = std::time::Duration::from_millis(200);
                loop {
                    let current = revision.load(Ordering::SeqCst);
                    let result = if current == 0 {
                        presence.register(&device, &entry).await
                    } else {
                        presence.refresh(&device, &entry, current).await
                    };
                    match result {
                        Ok(r) => {
                            revision.store(r, Ordering::SeqCst);
                            tokio::time::sleep(every).await;
                        }
                        Err(crate::presence::PresenceError::Superseded { relay_id, .. }) => {
                            tracing::info!(%device, now_on = %relay_id, "the device connected elsewhere; closing its old tunnel");
                            conn.close(io::CLOSE_REPLACED, b"replaced by a newer tunnel");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(%device, error = %e, "cannot write presence; retrying");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(every);
                        }
                    }
                }
            })
        };
        Some(Self {
            task,
            revision,
            device: device.clone(),
            state: state.clone(),
        })
    }

    /// The tunnel is gone: stop refreshing and remove the entry if it is still ours.
    pub(crate) async fn release(self) {
        self.task.abort();
        let revision = self.revision.load(std::sync::atomic::Ordering::SeqCst);
        let Some(fleet) = self.state.fleet() else {
            return;
        };
        if revision != 0
            && let Err(e) = fleet
                .config
                .presence
                .remove_if_owner(&self.device, revision)
                .await
        {
            tracing::warn!(device = %self.device, error = %e, "cannot remove presence; it expires by itself");
        }
    }
}

/// Handles a link another relay dialled, until it closes.
pub(crate) async fn accept_link(
    state: RelayState,
    conn: quinn::Connection,
    gate: crate::gate::Unauthenticated,
) {
    let remote = conn.remote_address();
    let Some(fleet) = state.fleet() else {
        conn.close(CLOSE_PROTOCOL, b"this relay is not in a fleet");
        return;
    };
    let (mut send, mut recv) =
        match tokio::time::timeout(io::HEADER_TIMEOUT, conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            _ => {
                conn.close(CLOSE_PROTOCOL, b"no relay hello");
                return;
            }
        };
    let peer = match io::read_control(&mut recv).await {
        Ok((Control::RelayHello { relay_id, secret }, _))
            if secrets_match(&secret, &fleet.config.secret) =>
        {
            relay_id
        }
        Ok((Control::RelayHello { relay_id, .. }, _)) => {
            tracing::warn!(%remote, claimed = %relay_id, "relay link with a wrong secret refused");
            let code = RefusalCode::Unauthenticated.as_str();
            io::refuse(&mut send, code, "wrong relay secret").await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
            conn.close(CLOSE_UNAUTHENTICATED, b"wrong relay secret");
            return;
        }
        Ok(_) | Err(_) => {
            conn.close(CLOSE_PROTOCOL, b"expected a relay hello");
            return;
        }
    };
    gate.authenticated(&conn);
    if m87_transport::frames::write_control(
        &mut send,
        &Control::RelayAccepted {
            relay_id: state.relay_id().to_owned(),
        },
    )
    .await
    .is_err()
    {
        return;
    }
    tracing::info!(%peer, %remote, "relay link accepted");
    spawn_link_datagrams(state.clone(), conn.clone());
    while let Ok((s, r)) = conn.accept_bi().await {
        tokio::spawn(routed_stream(state.clone(), conn.clone(), s, r));
    }
    drop((send, recv));
    tracing::info!(%peer, "relay link closed");
}

/// One stream of a link: onto the named device's tunnel.
async fn routed_stream(
    state: RelayState,
    link: quinn::Connection,
    mut lsend: quinn::SendStream,
    mut lrecv: quinn::RecvStream,
) {
    let device = match io::read_control(&mut lrecv).await {
        Ok((Control::RelayRoute { device_id }, _)) => device_id,
        _ => {
            let code = RefusalCode::Protocol.as_str();
            io::refuse(&mut lsend, code, "expected a relay route").await;
            return;
        }
    };
    let Some(tunnel) = state.registry().get(&device) else {
        let reason = format!("device {device} is offline");
        io::refuse(&mut lsend, RefusalCode::DeviceOffline.as_str(), &reason).await;
        return;
    };
    let Ok((dsend, mut drecv)) = tunnel.conn.open_bi().await else {
        refuse_unreachable(&mut lsend).await;
        return;
    };
    // The client's frames flow to the device as they come; the device's first answer is read
    // here to learn the flow id of a UDP channel.
    let up = tokio::spawn(copy_then_finish(lrecv, dsend));
    let (answer, raw) = match io::read_control(&mut drecv).await {
        Ok(a) => a,
        Err(_) => {
            refuse_unreachable(&mut lsend).await;
            up.abort();
            return;
        }
    };
    if lsend.write_all(&raw).await.is_err() {
        up.abort();
        return;
    }
    let flow = match answer {
        Control::ChannelAccepted { flow: Some(f) } => {
            state
                .flows()
                .insert(device.clone(), f, FlowOwner::link(link.clone()));
            Some(f)
        }
        _ => None,
    };
    copy_then_finish(drecv, lsend).await;
    let _ = up.await;
    if let Some(f) = flow {
        state.flows().remove(device, f);
    }
}

/// Tells the far side of a link stream that the device did not answer.
async fn refuse_unreachable(send: &mut quinn::SendStream) {
    let code = RefusalCode::DeviceUnreachable.as_str();
    io::refuse(send, code, DEVICE_UNREACHABLE_REASON).await;
}

/// The ALPN of links, for the server configuration.
pub(crate) const ALPN: &[u8] = ALPN_RELAY_LINK;
