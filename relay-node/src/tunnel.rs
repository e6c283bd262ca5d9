//! Device tunnels: authenticate the device on the first stream, register the tunnel, keep it
//! until it closes, route the device's datagrams to the client sessions that own their flows.

use m87_events::DeviceId;
use m87_events::admission::RefusalCode;
use m87_events::tunnel::Control;
use m87_events::tunnel::datagram::datagram_flow;

use crate::gate::Unauthenticated;
use crate::io::{self, CLOSE_PROTOCOL, CLOSE_REPLACED, CLOSE_UNAUTHENTICATED};
use crate::state::RelayState;

/// Handles one device tunnel connection until it ends.
pub(crate) async fn handle(state: RelayState, conn: quinn::Connection, gate: Unauthenticated) {
    let remote = conn.remote_address();
    let Some((mut send, recv, device_id)) = authenticate(&state, &conn).await else {
        return;
    };
    gate.authenticated(&conn);
    let (epoch, old) = state.registry().insert(device_id.clone(), conn.clone());
    if let Some(old) = old {
        tracing::info!(device = %device_id, "a new tunnel replaces the old one");
        old.conn
            .close(CLOSE_REPLACED, b"replaced by a newer tunnel");
    }
    if m87_transport::frames::write_control(
        &mut send,
        &Control::TunnelAccepted {
            device_id: device_id.clone(),
            relay_id: Some(state.relay_id().to_owned()),
            observed_addr: Some(remote.to_string()),
        },
    )
    .await
    .is_err()
    {
        state.registry().remove_if(&device_id, epoch);
        return;
    }
    let presence = crate::fleet::PresenceHold::start(&state, &device_id, epoch, &conn);
    tracing::info!(relay = %state.relay_id(), device = %device_id, %remote, "device tunnel up");
    state.link().device_connected(&device_id, remote).await;

    // The device's datagrams go to the client that owns the flow.
    let datagrams = {
        let state = state.clone();
        let conn = conn.clone();
        let device_id = device_id.clone();
        tokio::spawn(async move {
            while let Ok(d) = conn.read_datagram().await {
                let Some(flow) = datagram_flow(&d) else {
                    continue;
                };
                if let Some(owner) = state.flows().owner(&device_id, flow) {
                    owner.send(&device_id, d);
                }
            }
        })
    };

    let reason = conn.closed().await;
    datagrams.abort();
    drop(send);
    drop(recv);
    if let Some(p) = presence {
        p.release().await;
    }
    if state.registry().remove_if(&device_id, epoch) {
        tracing::info!(device = %device_id, %reason, "device tunnel down");
        state
            .link()
            .device_disconnected(&device_id, &reason.to_string())
            .await;
    }
}

/// Reads the device's hello on its first stream and has the control plane check its key;
/// refuses and closes the connection when either fails. Returns the stream (kept open for the
/// tunnel's life) and the device.
async fn authenticate(
    state: &RelayState,
    conn: &quinn::Connection,
) -> Option<(quinn::SendStream, quinn::RecvStream, DeviceId)> {
    let remote = conn.remote_address();
    let (mut send, mut recv) =
        match tokio::time::timeout(io::HEADER_TIMEOUT, conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            _ => {
                conn.close(CLOSE_PROTOCOL, b"no tunnel hello");
                return None;
            }
        };
    let api_key = match io::read_control(&mut recv).await {
        Ok((Control::TunnelHello { api_key, .. }, _)) => api_key,
        Ok(_) => {
            let code = RefusalCode::Protocol.as_str();
            io::refuse(&mut send, code, "expected a tunnel hello").await;
            conn.close(CLOSE_PROTOCOL, b"expected a tunnel hello");
            return None;
        }
        Err(e) => {
            tracing::debug!(%remote, error = %e, "bad tunnel hello");
            conn.close(CLOSE_PROTOCOL, b"bad tunnel hello");
            return None;
        }
    };
    let device_id = match state.link().authenticate_device(&api_key).await {
        Ok(d) => d,
        Err(reason) => {
            tracing::info!(%remote, %reason, "device key refused");
            io::refuse(&mut send, RefusalCode::Unauthenticated.as_str(), &reason).await;
            // Let the refusal reach the device before closing.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
            conn.close(CLOSE_UNAUTHENTICATED, reason.as_bytes());
            return None;
        }
    };
    Some((send, recv, device_id))
}
