//! Client sessions: decide whether to admit the session (token, revocations, replay: a pure
//! decision, [`m87_events::admission`]), then act: open the session on the device's tunnel and
//! splice every operation stream of the client's connection onto a new stream of the tunnel.

use std::time::Duration;

use m87_events::DeviceId;
use m87_events::SessionId;
use m87_events::admission::{DEVICE_UNREACHABLE_REASON, Refusal, RefusalCode};
use m87_events::token::{SessionClaims, now_unix};
use m87_events::tunnel::Control;
use m87_events::tunnel::datagram::datagram_flow;

use crate::gate::Unauthenticated;
use crate::io::{self, CLOSE_PROTOCOL, CLOSE_SESSION_ENDED};
use crate::route::{FlowOwner, Route};
use crate::splice::{splice, splice_control};
use crate::state::RelayState;

/// How long a refusal may take to reach the client before its connection is closed.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// How long a session's control splice may take, after the session ended, to tell the device
/// why.
const CONTROL_GRACE: Duration = Duration::from_secs(1);

/// The two streams of a session's control stream (client side and device side), spliced for
/// the session's life once the device accepted it.
struct ControlStreams {
    crecv: quinn::RecvStream,
    csend: quinn::SendStream,
    dsend: quinn::SendStream,
    drecv: quinn::RecvStream,
}

/// Refuses the session: tells the client and the control plane why, then closes.
async fn refuse(
    state: &RelayState,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    refusal: Refusal,
) {
    let code = refusal.code.as_str();
    io::refuse(send, code, &refusal.reason).await;
    state
        .link()
        .session_refused(refusal.session, refusal.device, code, &refusal.reason)
        .await;
    let _ = tokio::time::timeout(REFUSAL_GRACE, send.stopped()).await;
    conn.close(CLOSE_SESSION_ENDED, refusal.reason.as_bytes());
}

/// Handles one client session connection until it ends.
pub(crate) async fn handle(state: RelayState, conn: quinn::Connection, gate: Unauthenticated) {
    let remote = conn.remote_address();
    let Some((mut csend, crecv, token, raw_open)) = read_session_open(&conn).await else {
        return;
    };
    // Decide...
    let decision = state.admit(&token, now_unix());
    // ...then act.
    let claims = match decision {
        Ok(claims) => {
            gate.authenticated(&conn);
            claims
        }
        Err(refusal) => {
            if refusal.session.is_none() {
                tracing::info!(%remote, error = %refusal.reason, "session token refused");
            }
            return refuse(&state, &conn, &mut csend, refusal).await;
        }
    };
    let Some(route) = state.route_to(&claims.dev).await else {
        return refuse(&state, &conn, &mut csend, Refusal::device_offline(&claims)).await;
    };
    let opened = open_on_device(&route, &raw_open).await;
    let Some((dsend, drecv, (answer, raw_answer))) = opened else {
        let refusal = Refusal::device_unreachable(&claims);
        return refuse(&state, &conn, &mut csend, refusal).await;
    };
    if csend.write_all(&raw_answer).await.is_err() {
        return;
    }
    let Control::SessionAccepted { session_id } = answer else {
        // The device refused (and records it itself); pass the refusal on and end.
        let _ = csend.finish();
        let _ = tokio::time::timeout(REFUSAL_GRACE, csend.stopped()).await;
        conn.close(CLOSE_SESSION_ENDED, b"refused by the device");
        return;
    };
    tracing::info!(relay = %state.relay_id(), session = %session_id, device = %claims.dev, op = claims.op.as_str(), %remote, via = route.remote_relay().unwrap_or("local"), "session open");
    let control = ControlStreams {
        crecv,
        csend,
        dsend,
        drecv,
    };
    serve(state, conn, route, claims, session_id, control).await;
}

/// Reads the client's session open on its first stream; closes the connection when there is
/// none. Returns the stream, the token and the open frame as it came (to pass on).
async fn read_session_open(
    conn: &quinn::Connection,
) -> Option<(quinn::SendStream, quinn::RecvStream, String, bytes::Bytes)> {
    let (csend, mut crecv) = match tokio::time::timeout(io::HEADER_TIMEOUT, conn.accept_bi()).await
    {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(CLOSE_PROTOCOL, b"no session open");
            return None;
        }
    };
    match io::read_control(&mut crecv).await {
        Ok((Control::SessionOpen { token }, raw)) => Some((csend, crecv, token, raw)),
        Ok(_) => {
            conn.close(CLOSE_PROTOCOL, b"expected a session open");
            None
        }
        Err(e) => {
            let remote = conn.remote_address();
            tracing::debug!(%remote, error = %e, "bad session open");
            conn.close(CLOSE_PROTOCOL, b"bad session open");
            None
        }
    }
}

/// Opens the session on the device (which checks the token again) and reads its answer.
async fn open_on_device(
    route: &Route,
    raw_open: &[u8],
) -> Option<(
    quinn::SendStream,
    quinn::RecvStream,
    (Control, bytes::Bytes),
)> {
    let (dsend, mut drecv) = route.open(raw_open).await?;
    let answer = io::read_control(&mut drecv).await.ok()?;
    Some((dsend, drecv, answer))
}

/// Serves an open session until the client or the device goes: its control stream, the
/// client's datagrams, and one spliced stream per operation.
async fn serve(
    state: RelayState,
    conn: quinn::Connection,
    route: Route,
    claims: SessionClaims,
    session_id: SessionId,
    control: ControlStreams,
) {
    let (ended, ended_rx) = tokio::sync::watch::channel(None);
    state.sessions().insert(crate::LiveSession {
        session_id,
        device: claims.dev.clone(),
        subject: claims.sub.clone(),
        credential: claims.cred,
        conn: conn.clone(),
        ended: std::sync::Arc::new(ended),
    });
    // The session's control stream: spliced for the session's life.
    let ControlStreams {
        crecv,
        csend,
        dsend,
        drecv,
    } = control;
    let control = tokio::spawn(splice_control(crecv, dsend, drecv, csend, ended_rx));
    let client_datagrams = tokio::spawn(forward_client_datagrams(
        state.clone(),
        conn.clone(),
        route.clone(),
        claims.dev.clone(),
        session_id,
    ));
    accept_channels(&state, &conn, &route, &claims.dev, session_id).await;
    state.sessions().remove(&session_id);
    // Let the control splice tell the device why, when the relay ended the session.
    let abort = control.abort_handle();
    if tokio::time::timeout(CONTROL_GRACE, control).await.is_err() {
        abort.abort();
    }
    client_datagrams.abort();
    state.flows().remove_client(&conn);
    let stats = conn.stats();
    tracing::info!(
        session = %session_id,
        path_mtu = stats.path.current_mtu,
        rtt_ms = stats.path.rtt.as_millis() as u64,
        lost_packets = stats.path.lost_packets,
        "session closed"
    );
}

/// Passes the client's datagrams to the device as they are (flow id first), but only those of
/// flows this session opened: the device's tunnel carries every session's datagrams and routes
/// them by flow id alone, so a datagram naming another session's flow (or none) is dropped
/// here and counted; the count is logged at 1, 2, 4, 8… drops per session.
async fn forward_client_datagrams(
    state: RelayState,
    conn: quinn::Connection,
    route: Route,
    device: DeviceId,
    session_id: SessionId,
) {
    let mut dropped = 0u64;
    while let Ok(d) = conn.read_datagram().await {
        let Some(flow) = datagram_flow(&d) else {
            continue;
        };
        match state.flows().check_client(&device, flow, &conn) {
            Ok(()) => route.send_datagram(d),
            Err(total) => {
                dropped += 1;
                if dropped.is_power_of_two() {
                    tracing::info!(session = %session_id, %device, dropped, total, "dropped datagrams for UDP flows this session does not own");
                }
            }
        }
    }
}

/// Accepts the client's operation streams, each spliced onto the device, until the client's
/// connection or the way to the device ends.
async fn accept_channels(
    state: &RelayState,
    conn: &quinn::Connection,
    route: &Route,
    device: &DeviceId,
    session_id: SessionId,
) {
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((s, r)) => {
                    let state = state.clone();
                    let route = route.clone();
                    let client = conn.clone();
                    let device = device.clone();
                    tokio::spawn(async move {
                        if let Some(flow) = channel(state, client, route, device, session_id, s, r).await {
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
}

/// Splices one operation stream. Returns the UDP flow id it carried, if any.
async fn channel(
    state: RelayState,
    client: quinn::Connection,
    route: Route,
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
            let reason = "expected an open-channel for this session";
            io::refuse(&mut csend, RefusalCode::Protocol.as_str(), reason).await;
            return None;
        }
    }
    let (dsend, mut drecv) = route.open(&raw).await?;
    let (answer, raw_answer) = match io::read_control(&mut drecv).await {
        Ok(a) => a,
        Err(_) => {
            let code = RefusalCode::DeviceUnreachable.as_str();
            io::refuse(&mut csend, code, DEVICE_UNREACHABLE_REASON).await;
            return None;
        }
    };
    // The flow is bound to this session before the client learns its id, so the client's
    // first datagram already finds it.
    let flow = match answer {
        Control::ChannelAccepted { flow: Some(f) } => {
            let owner = FlowOwner::client(client.clone());
            state.flows().insert(device.clone(), f, owner);
            Some(f)
        }
        Control::ChannelAccepted { flow: None } => None,
        _ => {
            let _ = csend.write_all(&raw_answer).await;
            let _ = csend.finish();
            return None;
        }
    };
    if csend.write_all(&raw_answer).await.is_ok() {
        splice(crecv, dsend, drecv, csend).await;
    }
    if let Some(f) = flow {
        state.flows().remove(device, f);
    }
    flow
}
