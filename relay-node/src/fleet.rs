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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use m87_events::DeviceId;
use m87_events::secret::secrets_match;
use m87_events::tunnel::datagram::datagram_flow;
use m87_events::tunnel::{ALPN_RELAY_LINK, Control};

use crate::Shared;
use crate::directory::RelayDirectory;
use crate::io::{self, CLOSE_PROTOCOL, CLOSE_UNAUTHENTICATED};
use crate::presence::PresenceRegistry;
use crate::session::{FlowOwner, copy_then_finish};

/// Makes the QUIC client configuration that dials a peer relay pinning `cert_sha256`.
pub type PeerClientConfig = Arc<dyn Fn(&str) -> anyhow::Result<quinn::ClientConfig> + Send + Sync>;

/// What a relay needs to take part in a fleet.
pub struct FleetConfig {
    /// The fleet-wide presence registry.
    pub presence: Arc<dyn PresenceRegistry>,
    /// The relay directory (for peers' certificates).
    pub directory: RelayDirectory,
    /// Where other relays dial this one.
    pub peer_address: SocketAddr,
    /// The fleet's relay secret.
    pub secret: String,
    /// Client configuration for links.
    pub peer_client_config: PeerClientConfig,
}

/// The fleet state of a running relay.
pub(crate) struct Fleet {
    pub(crate) config: FleetConfig,
    /// Open links by peer relay id; the lock also makes concurrent dials to one peer one dial.
    links: tokio::sync::Mutex<HashMap<String, quinn::Connection>>,
}

impl Fleet {
    pub(crate) fn new(config: FleetConfig) -> Self {
        Self {
            config,
            links: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

/// Where a session's streams go: the device's tunnel here, or a link to the relay holding it.
#[derive(Clone)]
pub(crate) enum Route {
    /// The tunnel is on this relay.
    Local(quinn::Connection),
    /// The tunnel is on the relay at the other end of `link`.
    Remote {
        /// The link.
        link: quinn::Connection,
        /// The device.
        device: DeviceId,
        /// The relay holding the tunnel.
        relay_id: String,
    },
}

impl Route {
    /// Opens a stream towards the device and writes `first` (the client's first frame, raw).
    pub(crate) async fn open(
        &self,
        first: &[u8],
    ) -> Option<(quinn::SendStream, quinn::RecvStream)> {
        match self {
            Route::Local(conn) => {
                let (mut send, recv) = conn.open_bi().await.ok()?;
                send.write_all(first).await.ok()?;
                Some((send, recv))
            }
            Route::Remote { link, device, .. } => {
                let (mut send, recv) = link.open_bi().await.ok()?;
                io::write_control(
                    &mut send,
                    &Control::RelayRoute {
                        device_id: device.clone(),
                    },
                )
                .await
                .ok()?;
                send.write_all(first).await.ok()?;
                Some((send, recv))
            }
        }
    }

    /// Sends a client datagram (flow id first) towards the device.
    pub(crate) fn send_datagram(&self, datagram: Bytes) {
        match self {
            Route::Local(conn) => {
                let _ = conn.send_datagram(datagram);
            }
            Route::Remote { link, device, .. } => {
                if let Some(d) = link_datagram(device, &datagram) {
                    let _ = link.send_datagram(d);
                }
            }
        }
    }

    /// Resolves when the way to the device is gone.
    pub(crate) async fn closed(&self) {
        match self {
            Route::Local(conn) => {
                conn.closed().await;
            }
            Route::Remote { link, .. } => {
                link.closed().await;
            }
        }
    }

    /// Which relay holds the tunnel (None: this one).
    pub(crate) fn remote_relay(&self) -> Option<&str> {
        match self {
            Route::Local(_) => None,
            Route::Remote { relay_id, .. } => Some(relay_id),
        }
    }
}

/// A datagram for a link: the device id in front of the flow datagram.
pub(crate) fn link_datagram(device: &DeviceId, datagram: &[u8]) -> Option<Bytes> {
    let id = device.as_str().as_bytes();
    let len = u8::try_from(id.len()).ok()?;
    let mut out = BytesMut::with_capacity(1 + id.len() + datagram.len());
    out.put_u8(len);
    out.put_slice(id);
    out.put_slice(datagram);
    Some(out.freeze())
}

/// Splits a link datagram into the device and the flow datagram.
fn split_link_datagram(d: &Bytes) -> Option<(DeviceId, Bytes)> {
    let len = usize::from(*d.first()?);
    let id = std::str::from_utf8(d.get(1..1 + len)?).ok()?;
    let device: DeviceId = id.parse().ok()?;
    let rest = d.slice(1 + len..);
    datagram_flow(&rest).is_some().then_some((device, rest))
}

/// Routes a link's incoming datagrams: to the device when its tunnel is here, else to the
/// client that owns the flow.
fn spawn_link_datagrams(shared: Arc<Shared>, link: quinn::Connection) {
    tokio::spawn(async move {
        while let Ok(d) = link.read_datagram().await {
            let Some((device, datagram)) = split_link_datagram(&d) else {
                continue;
            };
            if let Some(tunnel) = shared.registry.get(&device) {
                let _ = tunnel.conn.send_datagram(datagram);
                continue;
            }
            let Some(flow) = datagram_flow(&datagram) else {
                continue;
            };
            if let Some(owner) = shared.flow_owner(&device, flow) {
                owner.send(&device, datagram);
            }
        }
    });
}

impl Shared {
    /// Where the device's tunnel is: here, through a link to another relay, or nowhere.
    pub(crate) async fn route_to(self: &Arc<Self>, device: &DeviceId) -> Option<Route> {
        if let Some(t) = self.registry.get(device) {
            return Some(Route::Local(t.conn));
        }
        let fleet = self.fleet.as_ref()?;
        let presence = match fleet.config.presence.lookup(device).await {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(%device, error = %e, "presence lookup failed");
                return None;
            }
        };
        if presence.entry.relay_id == self.relay_id {
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
    async fn link_to(
        self: &Arc<Self>,
        relay_id: &str,
        addr: SocketAddr,
    ) -> anyhow::Result<quinn::Connection> {
        let fleet = self
            .fleet
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("not in a fleet"))?;
        let mut links = fleet.links.lock().await;
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
            .endpoint
            .connect_with(client, addr, &info.server_name)?;
        let link = tokio::time::timeout(io::HEADER_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow::anyhow!("connecting to relay {relay_id} at {addr} timed out"))??;
        let (mut send, mut recv) = link.open_bi().await?;
        io::write_control(
            &mut send,
            &Control::RelayHello {
                relay_id: self.relay_id.clone(),
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
        spawn_link_datagrams(Arc::clone(self), link.clone());
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
    shared: Arc<Shared>,
}

impl PresenceHold {
    /// Starts holding the entry of `device`'s tunnel `conn` (registry epoch `epoch`). None
    /// outside a fleet.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        device: &DeviceId,
        epoch: u64,
        conn: &quinn::Connection,
    ) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let fleet = shared.fleet.as_ref()?;
        let entry = crate::presence::PresenceEntry {
            relay_id: shared.relay_id.clone(),
            relay_addr: fleet.config.peer_address,
            epoch,
            connected_at: chrono::Utc::now(),
        };
        let revision = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let shared = Arc::clone(shared);
            let revision = Arc::clone(&revision);
            let device = device.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                let Some(fleet) = shared.fleet.as_ref() else {
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
            shared: Arc::clone(shared),
        })
    }

    /// The tunnel is gone: stop refreshing and remove the entry if it is still ours.
    pub(crate) async fn release(self) {
        self.task.abort();
        let revision = self.revision.load(std::sync::atomic::Ordering::SeqCst);
        let Some(fleet) = self.shared.fleet.as_ref() else {
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
pub(crate) async fn accept_link(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let Some(fleet) = shared.fleet.as_ref() else {
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
            io::refuse(&mut send, "unauthenticated", "wrong relay secret").await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
            conn.close(CLOSE_UNAUTHENTICATED, b"wrong relay secret");
            return;
        }
        Ok(_) | Err(_) => {
            conn.close(CLOSE_PROTOCOL, b"expected a relay hello");
            return;
        }
    };
    if io::write_control(
        &mut send,
        &Control::RelayAccepted {
            relay_id: shared.relay_id.clone(),
        },
    )
    .await
    .is_err()
    {
        return;
    }
    tracing::info!(%peer, %remote, "relay link accepted");
    spawn_link_datagrams(Arc::clone(&shared), conn.clone());
    while let Ok((s, r)) = conn.accept_bi().await {
        tokio::spawn(routed_stream(Arc::clone(&shared), conn.clone(), s, r));
    }
    drop((send, recv));
    tracing::info!(%peer, "relay link closed");
}

/// One stream of a link: onto the named device's tunnel.
async fn routed_stream(
    shared: Arc<Shared>,
    link: quinn::Connection,
    mut lsend: quinn::SendStream,
    mut lrecv: quinn::RecvStream,
) {
    let device = match io::read_control(&mut lrecv).await {
        Ok((Control::RelayRoute { device_id }, _)) => device_id,
        _ => {
            io::refuse(&mut lsend, "protocol", "expected a relay route").await;
            return;
        }
    };
    let Some(tunnel) = shared.registry.get(&device) else {
        let reason = format!("device {device} is offline");
        io::refuse(&mut lsend, "device_offline", &reason).await;
        return;
    };
    let Ok((dsend, mut drecv)) = tunnel.conn.open_bi().await else {
        io::refuse(
            &mut lsend,
            "device_unreachable",
            "the device did not answer",
        )
        .await;
        return;
    };
    // The client's frames flow to the device as they come; the device's first answer is read
    // here to learn the flow id of a UDP channel.
    let up = tokio::spawn(copy_then_finish(lrecv, dsend));
    let (answer, raw) = match io::read_control(&mut drecv).await {
        Ok(a) => a,
        Err(_) => {
            io::refuse(
                &mut lsend,
                "device_unreachable",
                "the device did not answer",
            )
            .await;
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
            shared
                .flows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((device.clone(), f), FlowOwner::link(link.clone()));
            Some(f)
        }
        _ => None,
    };
    copy_then_finish(drecv, lsend).await;
    let _ = up.await;
    if let Some(f) = flow {
        shared
            .flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(device, f));
    }
}

/// The ALPN of links, for the server configuration.
pub(crate) const ALPN: &[u8] = ALPN_RELAY_LINK;

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn link_datagrams_carry_the_device_and_the_flow_datagram() {
        let device: DeviceId = "0123abcd-robot".parse().expect("valid id");
        let inner = Bytes::from_static(&[0, 0, 0, 7, b'h', b'i']);
        let d = link_datagram(&device, &inner).expect("fits");
        let (back, rest) = split_link_datagram(&d).expect("splits");
        assert_eq!(back, device);
        assert_eq!(rest, inner);
        assert!(split_link_datagram(&Bytes::from_static(&[200, 1, 2])).is_none());
        assert!(split_link_datagram(&Bytes::new()).is_none());
    }

    proptest::proptest! {
        /// Fuzz target for the link datagram decoder: arbitrary bytes from a peer never panic it,
        /// and whatever splits is rebuilt to the same bytes.
        #[test]
        fn arbitrary_link_datagrams_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
            let d = Bytes::from(bytes);
            if let Some((device, rest)) = split_link_datagram(&d) {
                proptest::prop_assert!(rest.len() >= 4);
                proptest::prop_assert_eq!(link_datagram(&device, &rest), Some(d));
            }
        }
    }
}
