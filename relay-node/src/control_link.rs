//! The relay's link to the control planes of a fleet: their internal relay API over HTTPS
//! ([`HttpLink`]), tried in turn. It bootstraps the session-token key, authenticates devices,
//! records presence and refusals, and answers the revocation watcher's access checks.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use m87_events::api::{
    AccessPair, ErrorBody, MAX_ACCESS_PAIRS, RelayAccessAnswer, RelayAccessCheck,
    RelayAuthenticateRequest, RelayAuthenticateResponse, RelayBootstrap, RelayPresenceReport,
    RelayRefusalReport,
};
use m87_events::token::SessionVerifier;
use m87_events::{DeviceId, SessionId};
use tokio::sync::watch;

use crate::revocation::AccessOracle;
use crate::{ControlPlaneLink, LiveSession};

/// The relay's way to the control plane: its internal relay API over HTTPS.
pub struct HttpLink {
    http: reqwest::Client,
    bases: Vec<String>,
    secret: String,
    relay_id: String,
    next: std::sync::atomic::AtomicUsize,
}

impl HttpLink {
    /// A link to the control planes at `bases` (tried in turn), over `tls` when given (a
    /// pinned or trust-anything configuration), else trusting the system's roots.
    pub fn new(
        bases: Vec<String>,
        tls: Option<rustls::ClientConfig>,
        secret: String,
        relay_id: String,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !bases.is_empty(),
            "no control plane URL given (--control-plane-url or M87_CONTROL_PLANE_URL)"
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5));
        let builder = match tls {
            Some(tls) => builder.tls_backend_preconfigured(tls),
            None => builder,
        };
        Ok(Self {
            http: builder.build().context("setting up the HTTP client")?,
            bases: bases
                .into_iter()
                .map(|b| b.trim().trim_end_matches('/').to_owned())
                .collect(),
            secret,
            relay_id,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Calls `path` on one control plane after another until one answers.
    async fn call<B: serde::Serialize + Sync, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, String> {
        let mut last = String::new();
        for _ in 0..self.bases.len() {
            let i = self.next.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len();
            let base = &self.bases[i];
            let mut request = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(&self.secret);
            if let Some(b) = body {
                request = request.json(b);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let text = r.text().await.map_err(|e| e.to_string())?;
                    let text = if text.is_empty() {
                        "null".to_owned()
                    } else {
                        text
                    };
                    return serde_json::from_str(&text)
                        .map_err(|e| format!("unexpected answer: {e}"));
                }
                Ok(r) if r.status().is_server_error() => {
                    last = format!("{base} answered {}", r.status());
                }
                Ok(r) => {
                    let status = r.status();
                    let message = r
                        .json::<ErrorBody>()
                        .await
                        .map(|b| b.error.message)
                        .unwrap_or_else(|_| status.to_string());
                    return Err(message);
                }
                Err(e) => last = format!("cannot reach {base}: {e}"),
            }
            // Try the next control plane.
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Err(last)
    }

    /// Posts a record (presence, refusal) to the control plane; a failure is logged, not
    /// retried: the record is for the audit trail, the relay carries on either way.
    async fn record<B: serde::Serialize + Sync>(&self, path: &str, body: &B, what: &str) {
        if let Err(e) = self
            .call::<B, ()>(reqwest::Method::POST, path, Some(body))
            .await
        {
            tracing::warn!(error = %e, "{what}");
        }
    }

    /// The session-token public key, retried until a control plane answers or `shutdown`.
    pub async fn bootstrap(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<SessionVerifier> {
        let mut pause = Duration::from_millis(200);
        loop {
            match self
                .call::<(), RelayBootstrap>(reqwest::Method::GET, "/v1/internal/relay/config", None)
                .await
            {
                Ok(b) => {
                    return SessionVerifier::from_public_key(&b.session_public_key).map_err(|e| {
                        anyhow::anyhow!("the control plane sent an invalid session key: {e}")
                    });
                }
                Err(e) if e.contains("relay secret") => {
                    anyhow::bail!("the control plane refused this relay: {e}")
                }
                Err(e) => tracing::warn!(error = %e, "waiting for a control plane"),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => anyhow::bail!("stopped while waiting for a control plane"),
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

#[async_trait]
impl ControlPlaneLink for HttpLink {
    async fn authenticate_device(&self, api_key: &str) -> Result<DeviceId, String> {
        self.call::<_, RelayAuthenticateResponse>(
            reqwest::Method::POST,
            "/v1/internal/relay/authenticate",
            Some(&RelayAuthenticateRequest {
                api_key: api_key.to_owned(),
            }),
        )
        .await
        .map(|r| r.device_id)
    }

    async fn device_connected(&self, device: &DeviceId, remote: SocketAddr) {
        let report = RelayPresenceReport {
            device_id: device.clone(),
            relay_id: self.relay_id.clone(),
            remote: Some(remote.to_string()),
            reason: None,
            connected: true,
        };
        self.record(
            "/v1/internal/relay/presence",
            &report,
            "cannot record a device connection",
        )
        .await;
    }

    async fn device_disconnected(&self, device: &DeviceId, reason: &str) {
        let report = RelayPresenceReport {
            device_id: device.clone(),
            relay_id: self.relay_id.clone(),
            remote: None,
            reason: Some(reason.to_owned()),
            connected: false,
        };
        self.record(
            "/v1/internal/relay/presence",
            &report,
            "cannot record a device disconnection",
        )
        .await;
    }

    async fn session_refused(
        &self,
        session: Option<SessionId>,
        device: Option<DeviceId>,
        code: &str,
        reason: &str,
    ) {
        let report = RelayRefusalReport {
            session_id: session,
            device_id: device,
            relay_id: self.relay_id.clone(),
            code: code.to_owned(),
            reason: reason.to_owned(),
        };
        self.record(
            "/v1/internal/relay/refusals",
            &report,
            "cannot record a refused session",
        )
        .await;
    }
}

#[async_trait]
impl AccessOracle for HttpLink {
    async fn still_allowed(&self, sessions: &[LiveSession]) -> Vec<bool> {
        let mut out = Vec::with_capacity(sessions.len());
        for chunk in sessions.chunks(MAX_ACCESS_PAIRS) {
            let check = RelayAccessCheck {
                pairs: chunk
                    .iter()
                    .map(|s| AccessPair {
                        subject: s.subject.clone(),
                        device_id: s.device.clone(),
                        credential: s.credential,
                    })
                    .collect(),
            };
            match self
                .call::<_, RelayAccessAnswer>(
                    reqwest::Method::POST,
                    "/v1/internal/relay/access",
                    Some(&check),
                )
                .await
            {
                Ok(a) if a.allowed.len() == chunk.len() => out.extend(a.allowed),
                Ok(_) => {
                    tracing::warn!(
                        "the control plane answered an access check with the wrong count; keeping the sessions"
                    );
                    out.extend(std::iter::repeat_n(true, chunk.len()));
                }
                Err(e) => {
                    // Without an answer the sessions stay; their tokens were valid when they
                    // started, and the next event retries.
                    tracing::warn!(error = %e, "cannot check access; keeping the sessions for now");
                    out.extend(std::iter::repeat_n(true, chunk.len()));
                }
            }
        }
        out
    }
}
