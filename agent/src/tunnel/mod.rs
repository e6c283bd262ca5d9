//! The device's tunnel: one outbound QUIC connection to a relay, reconnected after any loss
//! with exponential backoff and full jitter, serving the sessions that arrive on it.
//!
//! Every stream the relay opens starts with a control message: `SessionOpen` (the session's
//! control stream: the token is verified here again, with the control plane's public key, so a
//! relay cannot invent sessions) or `OpenChannel` (an operation within an accepted session,
//! checked against what the token allows).
//!
//! The session ids the device has admitted (`session::SeenSessions`) are kept for the
//! runtime's life, across every tunnel connection: a relay that drops the tunnel and sees it
//! come back cannot replay a token the device already admitted.
//!
//! # Layout
//!
//! - this file: the reconnect loop, the choice of relay, one connection's life;
//! - [`session`]: the streams the relay opens: sessions, channels, token checks, reports;
//! - [`datagrams`]: UDP flows over the connection's datagrams;
//! - [`io`]: byte counting and replaying bytes read ahead.

mod datagrams;
mod io;
mod session;
mod upload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use m87_events::DeviceId;
use m87_events::api::{DeviceTunnelConfig, RelayEndpoint};
use m87_events::token::SessionVerifier;
use m87_events::tunnel::{ALPN_TUNNEL, Control};
use tokio::sync::watch;

use crate::services::ServiceContext;
use m87_transport::frames::{FrameReader, write_control};
use m87_transport::http::{ApiClient, ApiError};

use datagrams::QuicDatagrams;
use session::{SeenSessions, TunnelState, handle_stream};

/// Why the tunnel gave up (anything else is retried).
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The relay or control plane refused the device key.
    #[error("{0}")]
    KeyRefused(String),
}

/// Keeps the tunnel up until `shutdown`; returns an error only when the key is refused.
/// Relays are always pinned by the fingerprint the control plane gives (over `api`, whose
/// certificate is checked), whatever `M87_TRUST_INVALID_CERT` says.
pub async fn run(
    api: ApiClient,
    api_key: String,
    device_id: DeviceId,
    settings: crate::services::ServiceSettings,
    live: crate::live::Live,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), TunnelError> {
    // The device operations' settings, the metrics sampler and the live state outlive each
    // connection.
    let shared: Shared = (Arc::new(settings), Arc::default(), live.clone());
    let mut backoff = crate::backoff::Backoff::new();
    // The relay of the last attempt: after a failure the next attempt prefers another one.
    let mut last_relay: Option<String> = None;
    // For the process's life, not per connection: see the module's overview.
    let seen: SeenSessions = Arc::default();
    loop {
        let started = Instant::now();
        let result = connect_once(
            &api,
            &api_key,
            &device_id,
            &mut last_relay,
            &seen,
            &shared,
            &mut shutdown,
        )
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(reason)) => return Err(TunnelError::KeyRefused(reason)),
            Err(Failure::Retry(reason)) => {
                live.disconnected(Some(reason.clone()));
                // A tunnel that stayed up a while starts its backoff afresh, so the first retry
                // after losing a relay comes within a second.
                if started.elapsed() > std::time::Duration::from_secs(10) {
                    backoff = crate::backoff::Backoff::new();
                }
                let wait = backoff.next_wait();
                say_err!(
                    "tunnel down ({reason}); reconnecting in {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    }
}

/// Picks a relay at random — so devices spread over the relays and do not all return to the
/// same one after a restart — avoiding `avoid` (the relay that just failed) when there is
/// another.
fn choose_relay<'a>(relays: &'a [RelayEndpoint], avoid: Option<&str>) -> Option<&'a RelayEndpoint> {
    use rand::RngCore;
    let others: Vec<&RelayEndpoint> = relays
        .iter()
        .filter(|r| Some(r.address.as_str()) != avoid)
        .collect();
    let pool: Vec<&RelayEndpoint> = if others.is_empty() {
        relays.iter().collect()
    } else {
        others
    };
    if pool.is_empty() {
        return None;
    }
    let i = (rand::rng().next_u64() % pool.len() as u64) as usize;
    pool.get(i).copied()
}

/// What every connection shares: the services' settings, the metrics sampler, and the live
/// state `m87 runtime status` reads.
type Shared = (
    Arc<crate::services::ServiceSettings>,
    Arc<crate::services::metrics::Hub>,
    crate::live::Live,
);

enum Failure {
    Retry(String),
    Fatal(String),
}

async fn connect_once(
    api: &ApiClient,
    api_key: &str,
    device_id: &DeviceId,
    last_relay: &mut Option<String>,
    seen: &SeenSessions,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), Failure> {
    let config: DeviceTunnelConfig = match api.get("/v1/device/tunnel").await {
        Ok(c) => c,
        Err(ApiError::Status {
            status: 401,
            message,
            ..
        }) => return Err(Failure::Fatal(message)),
        Err(e) => return Err(Failure::Retry(e.to_string())),
    };
    let verifier = SessionVerifier::from_public_key(&config.session_public_key)
        .map_err(|_| Failure::Retry("the control plane sent an invalid session key".into()))?;
    let Some(relay) = choose_relay(&config.relays, last_relay.as_deref()) else {
        return Err(Failure::Retry("the control plane knows no relay".into()));
    };
    *last_relay = Some(relay.address.clone());
    let (endpoint, conn, send, link) = dial(relay, api_key).await?;
    say!("tunnel connected to relay {}", relay.address);
    shared.2.connected(&relay.address, link.relay_id.clone());
    let datagrams = Arc::new(QuicDatagrams::new(conn.clone()));
    let router = tokio::spawn(Arc::clone(&datagrams).route());
    let state = Arc::new(TunnelState {
        device_id: device_id.clone(),
        verifier,
        api: api.clone(),
        sessions: Mutex::new(HashMap::new()),
        admission: Arc::clone(seen),
        ctx: ServiceContext {
            datagrams: Arc::clone(&datagrams) as Arc<dyn crate::services::DatagramPort>,
            recorder: None,
            settings: Arc::clone(&shared.0),
            metrics: Arc::clone(&shared.1),
            link: Arc::new(link),
            activity: None,
        },
    });
    let outcome = serve(&conn, state, shutdown).await;
    router.abort();
    let dropped = datagrams.dropped();
    if dropped > 0 {
        tracing::info!(
            dropped,
            "datagrams for no open UDP flow were dropped on this tunnel"
        );
    }
    drop(send);
    if outcome.is_ok() {
        // Shutting down: make sure the close reaches the relay before the process exits.
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(500), endpoint.wait_idle()).await;
    }
    outcome
}

/// Dials `relay`, presents the device key on the first stream and waits for the relay's
/// answer; returns the endpoint, the connection and the tunnel's control stream (kept open
/// for the tunnel's life). The relay must present the certificate the control plane named
/// for it.
async fn dial(
    relay: &RelayEndpoint,
    api_key: &str,
) -> Result<
    (
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        crate::services::LinkInfo,
    ),
    Failure,
> {
    let pin = Some(relay.cert_sha256.as_str());
    let (endpoint, conn) =
        m87_transport::quic::connect(&relay.address, &relay.server_name, ALPN_TUNNEL, pin)
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    write_control(
        &mut send,
        &Control::TunnelHello {
            api_key: api_key.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )
    .await
    .map_err(|e| Failure::Retry(e.to_string()))?;
    let mut control = FrameReader::new(recv);
    match control.control().await {
        Ok(Some(Control::TunnelAccepted {
            relay_id,
            observed_addr,
            ..
        })) => {
            let link = crate::services::LinkInfo {
                relay_addr: relay.address.clone(),
                relay_id,
                observed_addr,
                connected_at: Some(chrono::Utc::now()),
            };
            Ok((endpoint, conn, send, link))
        }
        Ok(Some(Control::Refused { code, message })) if code == "unauthenticated" => {
            Err(Failure::Fatal(message))
        }
        Ok(other) => Err(Failure::Retry(format!(
            "unexpected answer from the relay: {other:?}"
        ))),
        Err(e) => Err(Failure::Retry(e.to_string())),
    }
}

/// Serves the streams the relay opens on `conn` until the connection is lost (retry) or the
/// runtime shuts down (closes the connection).
async fn serve(
    conn: &quinn::Connection,
    state: Arc<TunnelState>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), Failure> {
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((s, r)) => {
                    let state = Arc::clone(&state);
                    tokio::spawn(async move { handle_stream(state, s, r).await });
                }
                Err(e) => return Err(Failure::Retry(e.to_string())),
            },
            _ = shutdown.changed() => {
                conn.close(quinn::VarInt::from_u32(0), b"device shutting down");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(address: &str) -> RelayEndpoint {
        RelayEndpoint {
            address: address.into(),
            server_name: "localhost".into(),
            cert_sha256: String::new(),
        }
    }

    #[test]
    fn relays_are_picked_at_random_avoiding_the_one_that_failed() {
        let relays = vec![relay("a:1"), relay("b:1"), relay("c:1")];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let r = choose_relay(&relays, Some("a:1")).unwrap();
            assert_ne!(
                r.address, "a:1",
                "the failed relay is avoided while others exist"
            );
            seen.insert(r.address.clone());
        }
        assert_eq!(seen.len(), 2, "both other relays get picked: {seen:?}");
        let only = vec![relay("a:1")];
        assert_eq!(choose_relay(&only, Some("a:1")).unwrap().address, "a:1");
        assert!(choose_relay(&[], None).is_none());
    }
}
