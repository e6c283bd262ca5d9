//! Client sessions: verify the token, open the session on the device's tunnel, then splice
//! every operation stream of the client's connection onto a new stream of the tunnel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use m87_events::token::{SessionClaims, now_unix};
use m87_events::tunnel::Control;
use m87_events::{DeviceId, SessionId};

use crate::Shared;
use crate::io::{self, CLOSE_PROTOCOL, CLOSE_SESSION_ENDED};

/// Most chunks (received frames) taken from a stream at once.
const SPLICE_CHUNKS: usize = 64;

/// The size up to which a splice gathers received data before writing it on.
const SPLICE_COALESCE: usize = 64 * 1024;

/// Who receives a device's datagrams of one UDP flow: the client's connection, or the link to
/// the relay the client is on.
#[derive(Clone)]
pub(crate) struct FlowOwner {
    conn: quinn::Connection,
    link: bool,
}

impl FlowOwner {
    fn client(conn: quinn::Connection) -> Self {
        Self { conn, link: false }
    }

    pub(crate) fn link(conn: quinn::Connection) -> Self {
        Self { conn, link: true }
    }

    /// Sends a device datagram (flow id first) on.
    pub(crate) fn send(&self, device: &DeviceId, datagram: bytes::Bytes) {
        if self.link {
            if let Some(d) = crate::fleet::link_datagram(device, &datagram) {
                let _ = self.conn.send_datagram(d);
            }
        } else {
            let _ = self.conn.send_datagram(datagram);
        }
    }
}

/// Client connections (or links) owning UDP flows, by device and flow id.
pub(crate) type Flows = Mutex<HashMap<(DeviceId, u32), FlowOwner>>;

impl Shared {
    /// Who owns a device's flow.
    pub(crate) fn flow_owner(&self, device: &DeviceId, flow: u32) -> Option<FlowOwner> {
        self.flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(device.clone(), flow))
            .cloned()
    }

    /// Marks a session id used; false if it was used before (a replay).
    fn first_use(&self, claims: &SessionClaims) -> bool {
        let now = now_unix();
        let mut used = self.used_sessions.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, exp| *exp > now);
        used.insert(claims.sid, claims.exp).is_none()
    }
}

async fn refuse_session(
    shared: &Shared,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    session: Option<SessionId>,
    device: Option<DeviceId>,
    code: &str,
    reason: &str,
) {
    io::refuse(send, code, reason).await;
    shared
        .link
        .session_refused(session, device, code, reason)
        .await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
    conn.close(CLOSE_SESSION_ENDED, reason.as_bytes());
}

/// Handles one client session connection until it ends.
pub(crate) async fn handle(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let (mut csend, mut crecv) =
        match tokio::time::timeout(io::HEADER_TIMEOUT, conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            _ => {
                conn.close(CLOSE_PROTOCOL, b"no session open");
                return;
            }
        };
    let (token, raw_open) = match io::read_control(&mut crecv).await {
        Ok((Control::SessionOpen { token }, raw)) => (token, raw),
        Ok(_) => {
            conn.close(CLOSE_PROTOCOL, b"expected a session open");
            return;
        }
        Err(e) => {
            tracing::debug!(%remote, error = %e, "bad session open");
            conn.close(CLOSE_PROTOCOL, b"bad session open");
            return;
        }
    };
    let claims = match shared.verifier.verify(&token, now_unix(), None) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%remote, error = %e, "session token refused");
            refuse_session(
                &shared,
                &conn,
                &mut csend,
                None,
                None,
                e.code(),
                &e.to_string(),
            )
            .await;
            return;
        }
    };
    let revoked = shared
        .revoked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(d, sub, at)| *d == claims.dev && *sub == claims.sub && claims.iat <= *at);
    if revoked {
        refuse_session(
            &shared,
            &conn,
            &mut csend,
            Some(claims.sid),
            Some(claims.dev.clone()),
            "access_revoked",
            "access to this device was revoked",
        )
        .await;
        return;
    }
    if !shared.first_use(&claims) {
        refuse_session(
            &shared,
            &conn,
            &mut csend,
            Some(claims.sid),
            Some(claims.dev.clone()),
            "token_replayed",
            "session token was already used",
        )
        .await;
        return;
    }
    let Some(route) = shared.route_to(&claims.dev).await else {
        let reason = format!("device {} is offline", claims.dev);
        refuse_session(
            &shared,
            &conn,
            &mut csend,
            Some(claims.sid),
            Some(claims.dev.clone()),
            "device_offline",
            &reason,
        )
        .await;
        return;
    };
    // Open the session on the device, which checks the token again.
    let opened = async {
        let (dsend, mut drecv) = route.open(&raw_open).await?;
        let answer = io::read_control(&mut drecv).await.ok()?;
        Some((dsend, drecv, answer))
    };
    let Some((dsend, drecv, (answer, raw_answer))) = opened.await else {
        refuse_session(
            &shared,
            &conn,
            &mut csend,
            Some(claims.sid),
            Some(claims.dev.clone()),
            "device_unreachable",
            "the device did not answer",
        )
        .await;
        return;
    };
    if csend.write_all(&raw_answer).await.is_err() {
        return;
    }
    let Control::SessionAccepted { session_id } = answer else {
        // The device refused (and records it itself); pass the refusal on and end.
        let _ = csend.finish();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), csend.stopped()).await;
        conn.close(CLOSE_SESSION_ENDED, b"refused by the device");
        return;
    };
    tracing::info!(relay = %shared.relay_id, session = %session_id, device = %claims.dev, op = claims.op.as_str(), %remote, via = route.remote_relay().unwrap_or("local"), "session open");

    shared
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            session_id,
            crate::LiveSession {
                session_id,
                device: claims.dev.clone(),
                subject: claims.sub.clone(),
                conn: conn.clone(),
            },
        );
    // The session's control stream: spliced for the session's life.
    let control = tokio::spawn(splice(crecv, dsend, drecv, csend));
    let datagram_conn = conn.clone();
    let datagram_route = route.clone();
    let client_datagrams = tokio::spawn(async move {
        // Client datagrams go to the device as they are (flow id first); the device checks
        // that the flow belongs to a session it accepted.
        while let Ok(d) = datagram_conn.read_datagram().await {
            datagram_route.send_datagram(d);
        }
    });
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((s, r)) => {
                    let shared = Arc::clone(&shared);
                    let route = route.clone();
                    let client = conn.clone();
                    let device = claims.dev.clone();
                    tokio::spawn(async move {
                        if let Some(flow) = channel(shared, client, route, device, session_id, s, r).await {
                            tracing::debug!(flow, "udp flow ended");
                        }
                    });
                }
                Err(_) => break,
            },
            _ = route.closed() => {
                conn.close(CLOSE_SESSION_ENDED, b"the device disconnected");
                break;
            }
        }
    }
    shared
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&session_id);
    control.abort();
    client_datagrams.abort();
    shared
        .flows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, c| c.link || c.conn.stable_id() != conn.stable_id());
    let stats = conn.stats();
    tracing::info!(
        session = %session_id,
        path_mtu = stats.path.current_mtu,
        rtt_ms = stats.path.rtt.as_millis() as u64,
        lost_packets = stats.path.lost_packets,
        "session closed"
    );
}

/// Splices one operation stream. Returns the UDP flow id it carried, if any.
async fn channel(
    shared: Arc<Shared>,
    client: quinn::Connection,
    route: crate::fleet::Route,
    device: DeviceId,
    session_id: SessionId,
    mut csend: quinn::SendStream,
    mut crecv: quinn::RecvStream,
) -> Option<u32> {
    let (header, raw) = match io::read_control(&mut crecv).await {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(error = %e, "bad channel header");
            let _ = crecv.stop(quinn::VarInt::from_u32(1));
            return None;
        }
    };
    match header {
        Control::OpenChannel { session_id: s, .. } if s == session_id => {}
        _ => {
            io::refuse(
                &mut csend,
                "protocol",
                "expected an open-channel for this session",
            )
            .await;
            return None;
        }
    }
    let (dsend, mut drecv) = route.open(&raw).await?;
    let (answer, raw_answer) = match io::read_control(&mut drecv).await {
        Ok(a) => a,
        Err(_) => {
            io::refuse(
                &mut csend,
                "device_unreachable",
                "the device did not answer",
            )
            .await;
            return None;
        }
    };
    csend.write_all(&raw_answer).await.ok()?;
    let flow = match answer {
        Control::ChannelAccepted { flow: Some(f) } => {
            shared
                .flows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((device.clone(), f), FlowOwner::client(client.clone()));
            Some(f)
        }
        Control::ChannelAccepted { flow: None } => None,
        _ => {
            let _ = csend.finish();
            return None;
        }
    };
    splice(crecv, dsend, drecv, csend).await;
    if let Some(f) = flow {
        shared
            .flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(device, f));
    }
    flow
}

/// Moves one direction of a stream until it ends, then finishes the other side; returns the
/// bytes moved.
///
/// Received chunks are taken many at a time (`read_chunks`: few wake-ups) and what has arrived
/// is copied into one buffer of up to [`SPLICE_COALESCE`] before it is written. Writing the
/// received chunks as they are (one per packet, about 1.2 KB) costs more than the copy: quinn
/// finds the bytes for each packet it sends by walking the chunks written to the stream and
/// not yet acknowledged, so with thousands of small chunks in flight that walk took 9% of the
/// relay's CPU in an 8-stream forward; with 64 KiB chunks, under 2%.
pub(crate) async fn copy_then_finish(
    mut from: quinn::RecvStream,
    mut to: quinn::SendStream,
) -> u64 {
    use futures_util::FutureExt;
    let mut moved = 0u64;
    let mut chunks: Vec<bytes::Bytes> = vec![bytes::Bytes::new(); SPLICE_CHUNKS];
    let mut buffer = bytes::BytesMut::new();
    let append = |buffer: &mut bytes::BytesMut, chunks: &[bytes::Bytes]| {
        for chunk in chunks {
            buffer.extend_from_slice(chunk);
        }
    };
    let mut ended = false;
    while !ended {
        buffer.reserve(SPLICE_COALESCE);
        match from.read_chunks(&mut chunks).await {
            Ok(Some(n)) => append(&mut buffer, &chunks[..n]),
            Ok(None) | Err(_) => break,
        }
        // Take what has already arrived, without waiting for more: nothing is held back.
        while buffer.len() < SPLICE_COALESCE {
            match from.read_chunks(&mut chunks).now_or_never() {
                Some(Ok(Some(n))) => append(&mut buffer, &chunks[..n]),
                Some(Ok(None) | Err(_)) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        moved += buffer.len() as u64;
        if to.write_chunk(buffer.split().freeze()).await.is_err() {
            // The far side stopped reading: stop this side too.
            let _ = from.stop(quinn::VarInt::from_u32(0));
            return moved;
        }
    }
    let _ = to.finish();
    moved
}

/// Copies both ways until both directions end.
async fn splice(
    crecv: quinn::RecvStream,
    dsend: quinn::SendStream,
    drecv: quinn::RecvStream,
    csend: quinn::SendStream,
) {
    let up = copy_then_finish(crecv, dsend);
    let down = copy_then_finish(drecv, csend);
    tokio::join!(up, down);
}
