//! A session on a device over QUIC through a relay: ask the control plane for a grant, dial the
//! relay it names (pinning its certificate), open the session, then open channels in it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use m87_events::SessionId;
use m87_events::api::{CreateSessionRequest, DeviceSummary, RelayEndpoint, SessionGrant};
use m87_events::token::Operation;
use m87_events::tunnel::datagram::{flow_datagram, split_flow_datagram};
use m87_events::tunnel::{ALPN_SESSION, Channel, Control};
use m87_transport::frames::{FrameReader, write_control};
use m87_transport::http::ApiClient;
use m87_transport::stream::BoxRead;
use tokio::sync::mpsc;

use crate::remote::{ChannelOpener, OpenError, OpenedChannel};

type Routes = Arc<Mutex<HashMap<u32, mpsc::Sender<Bytes>>>>;

/// An open session.
pub struct QuicSession {
    /// The session's id.
    pub session_id: SessionId,
    /// The device.
    pub device: DeviceSummary,
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    _control: quinn::SendStream,
    routes: Routes,
}

impl QuicSession {
    /// Resolves `device` (name, id or unique prefix), asks for a session for `operation` with
    /// `args`, and opens it on the device.
    pub async fn open(
        client: &ApiClient,
        device: &str,
        operation: Operation,
        args: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let devices: Vec<DeviceSummary> = client.get("/v1/devices").await?;
        let approved: Vec<DeviceSummary> = devices
            .into_iter()
            .filter(|d| d.status == m87_events::api::DeviceStatus::Approved)
            .collect();
        let Some(device) = crate::commands::devices::resolve(&approved, device)?.cloned() else {
            anyhow::bail!("device {device:?} not found");
        };
        let grant: SessionGrant = client
            .post(
                &format!("/v1/devices/{}/sessions", device.id),
                &CreateSessionRequest { operation, args },
            )
            .await?;
        if grant.recorded {
            let policy = grant.recording_policy.as_deref().unwrap_or("the server");
            eprintln!("m87: this session is recorded (policy of {policy})");
        }
        let (endpoint, conn) = connect_any(&candidates(&grant)?).await?;
        let (mut send, recv) = conn.open_bi().await.context("opening the session")?;
        write_control(&mut send, &Control::SessionOpen { token: grant.token }).await?;
        let mut reader = FrameReader::new(recv);
        match reader.control().await {
            Ok(Some(Control::SessionAccepted { session_id })) => {
                let routes: Routes = Arc::default();
                let router = (conn.clone(), Arc::clone(&routes));
                tokio::spawn(async move {
                    let (conn, routes) = router;
                    while let Ok(d) = conn.read_datagram().await {
                        let Some((flow, payload)) = split_flow_datagram(&d) else {
                            continue;
                        };
                        let tx = routes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&flow)
                            .cloned();
                        if let Some(tx) = tx {
                            let _ = tx.try_send(payload);
                        }
                    }
                });
                // Keep reading the control stream so a device-side end is noticed by QUIC.
                tokio::spawn(async move { while let Ok(Some(_)) = reader.next().await {} });
                Ok(Self {
                    session_id,
                    device,
                    _endpoint: endpoint,
                    conn,
                    _control: send,
                    routes,
                })
            }
            Ok(Some(Control::Refused { message, .. })) => {
                anyhow::bail!("session refused: {message}")
            }
            Ok(other) => anyhow::bail!("unexpected answer opening the session: {other:?}"),
            Err(e) => anyhow::bail!("the session could not be opened: {e}"),
        }
    }

    /// Ends the session.
    /// Why the session ended when the relay or the network ended it: the relay's reason
    /// (access revoked, device removed, device disconnected, relay shutting down), or that the
    /// connection to the relay was lost. `None` while it is open or when this side closed it.
    pub fn ended_because(&self) -> Option<String> {
        ended_because(&self.conn.close_reason()?)
    }

    /// Waits until the session's connection closes; then why, as [`Self::ended_because`].
    pub async fn closed(&self) -> Option<String> {
        ended_because(&self.conn.closed().await)
    }

    /// `result`, its error replaced by why the session ended when the relay or the network
    /// ended it (instead of "stream error: connection lost"). A stream can fail a moment before
    /// its connection's close arrives (a relay shutting down ends the device's side first): after
    /// a stream error, the close is waited for up to a second.
    pub async fn explain<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        let e = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let why = match self.ended_because() {
            Some(why) => Some(why),
            None if is_stream_failure(&e) => {
                tokio::time::timeout(std::time::Duration::from_secs(1), self.closed())
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        Err(why.map_or(e, |why| anyhow::anyhow!(why)))
    }

    pub async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        self._endpoint.wait_idle().await;
    }

    /// Ends the session without waiting out QUIC's draining period (three probe timeouts,
    /// about 90 ms on loopback, which [`close`](Self::close) waits for): waits at most `limit`
    /// for the endpoint to go idle, enough for the close to be sent.
    pub async fn close_within(self, limit: std::time::Duration) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(limit, self._endpoint.wait_idle()).await;
    }
}

#[async_trait]
impl ChannelOpener for QuicSession {
    async fn open(&self, channel: Channel) -> Result<OpenedChannel, OpenError> {
        let lost = |e: String| OpenError::Lost(e);
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        write_control(
            &mut send,
            &Control::OpenChannel {
                session_id: self.session_id,
                channel,
            },
        )
        .await
        .map_err(|e| lost(e.to_string()))?;
        let mut reader = FrameReader::new(Box::new(recv) as BoxRead);
        match reader.control().await {
            Ok(Some(Control::ChannelAccepted { flow })) => Ok(OpenedChannel {
                reader,
                writer: Box::new(send),
                flow,
            }),
            Ok(Some(Control::Refused { code, message })) => {
                Err(OpenError::Refused { code, message })
            }
            Ok(other) => Err(lost(format!("unexpected answer {other:?}"))),
            Err(e) => Err(lost(e.to_string())),
        }
    }

    fn send_datagram(&self, flow: u32, payload: Bytes) -> Result<(), OpenError> {
        self.conn
            .send_datagram(flow_datagram(flow, &payload))
            .map_err(|e| OpenError::Lost(e.to_string()))
    }

    fn datagrams(&self, flow: u32) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(1024);
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flow, tx);
        rx
    }
}

/// The relays to try in order: the granted one, then the others the control plane knows (any
/// relay reaches the device; a relay that just died may still be listed). `M87_RELAY`
/// (`host:port`, one of the known relays) names the only one to try — to pin a region, or to
/// measure a particular path.
fn candidates(grant: &SessionGrant) -> anyhow::Result<Vec<RelayEndpoint>> {
    let wanted = std::env::var("M87_RELAY")
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let Some(wanted) = wanted else {
        let mut all = vec![grant.relay.clone()];
        all.extend(
            grant
                .relays
                .iter()
                .filter(|r| r.address != grant.relay.address)
                .cloned(),
        );
        return Ok(all);
    };
    grant
        .relays
        .iter()
        .chain(std::iter::once(&grant.relay))
        .find(|r| r.address == wanted)
        .cloned()
        .map(|r| vec![r])
        .ok_or_else(|| {
            let known: Vec<&str> = grant.relays.iter().map(|r| r.address.as_str()).collect();
            anyhow::anyhow!(
                "M87_RELAY={wanted} is not one of the relays the control plane knows ({})",
                known.join(", ")
            )
        })
}

/// Connects to the first of `relays` that answers (the token is presented only after the
/// handshake, so a relay that did not answer never saw it). Each relay must present the
/// certificate the control plane pinned for it: always, `M87_TRUST_INVALID_CERT` or not.
async fn connect_any(
    relays: &[RelayEndpoint],
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let mut failures = Vec::new();
    for relay in relays {
        let pin = Some(relay.cert_sha256.as_str());
        match m87_transport::quic::connect(&relay.address, &relay.server_name, ALPN_SESSION, pin)
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::debug!(relay = %relay.address, error = %e, "relay did not answer; trying the next");
                failures.push(e.to_string());
            }
        }
    }
    anyhow::bail!("reaching the relay: {}", failures.join("; "))
}

/// The relay's close code for a session it ended (relay-node `io::CLOSE_SESSION_ENDED`); its
/// reason says why.
const CLOSE_SESSION_ENDED: u32 = 4;

/// The relay's close code when it shuts down (relay-node `io::CLOSE_SHUTDOWN`).
const CLOSE_SHUTDOWN: u32 = 0;

/// Whether `e` is a stream or connection failing (rather than an answer from the device).
fn is_stream_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<m87_transport::frames::FrameIoError>()
            || c.is::<std::io::Error>()
            || c.is::<quinn::ConnectionError>()
            || c.is::<quinn::ReadError>()
            || c.is::<quinn::WriteError>()
    })
}

/// What a closed session's connection tells a person.
fn ended_because(e: &quinn::ConnectionError) -> Option<String> {
    use quinn::ConnectionError as E;
    match e {
        E::LocallyClosed => None,
        E::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).trim().to_owned();
            if c.error_code == quinn::VarInt::from_u32(CLOSE_SESSION_ENDED) && !reason.is_empty() {
                Some(format!("the session ended: {reason}"))
            } else if c.error_code == quinn::VarInt::from_u32(CLOSE_SHUTDOWN) {
                Some(format!(
                    "the relay was lost ({}); run the command again",
                    if reason.is_empty() {
                        "it shut down"
                    } else {
                        &reason
                    }
                ))
            } else if reason.is_empty() {
                Some(format!(
                    "the relay ended the session (code {})",
                    c.error_code
                ))
            } else {
                Some(format!("the relay ended the session: {reason}"))
            }
        }
        E::TimedOut | E::Reset | E::ConnectionClosed(_) | E::TransportError(_) => Some(format!(
            "the connection to the relay was lost ({e}); run the command again"
        )),
        other => Some(format!("the session ended: {other}")),
    }
}

#[cfg(test)]
mod ended_tests {
    use super::*;

    #[test]
    fn a_relay_close_reads_as_its_reason() {
        let closed = |code: u32, reason: &'static [u8]| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: Bytes::from_static(reason),
            })
        };
        assert_eq!(
            ended_because(&closed(4, b"access to this device was revoked")).as_deref(),
            Some("the session ended: access to this device was revoked")
        );
        assert_eq!(
            ended_because(&closed(0, b"relay shutting down")).as_deref(),
            Some("the relay was lost (relay shutting down); run the command again")
        );
        assert_eq!(
            ended_because(&closed(9, b"")).as_deref(),
            Some("the relay ended the session (code 9)")
        );
        let lost = ended_because(&quinn::ConnectionError::TimedOut).unwrap_or_default();
        assert!(
            lost.starts_with("the connection to the relay was lost"),
            "{lost}"
        );
        assert_eq!(ended_because(&quinn::ConnectionError::LocallyClosed), None);
    }
}
