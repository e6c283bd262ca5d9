//! The REST API under `/v1`, built by [`app`] so tests can drive it without a socket.
//!
//! - [`audit`]: `GET /v1/audit`, the audit trail.
//! - [`client_addr`]: the client's address, from a trusted proxy's `X-Forwarded-For`.
//! - [`error`]: the one error type and body format.
//! - [`extract`]: JSON, path and caller extractors with JSON rejections.
//! - [`internal`]: the internal relay API of fleet mode.
//! - [`ratelimit`]: per-address, per-prefix and per-scope limits for unauthenticated
//!   registration.
//! - [`routes`]: the handlers and the OpenAPI document.
//! - [`recording`]: recording policies, recording upload (devices) and read.
//! - [`releases`]: `GET /install.sh`, the signed release manifest and the `m87` binaries.

pub mod audit;
pub mod client_addr;
pub mod error;
pub mod extract;
pub mod internal;
pub mod ratelimit;
pub mod recording;
pub mod releases;
pub mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use crate::service::ControlPlane;
use client_addr::TrustedProxies;
use ratelimit::RegistrationLimits;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The application service.
    pub cp: ControlPlane,
    /// Limits registration requests per client address, prefix and owner scope.
    pub registration_limits: Arc<RegistrationLimits>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Validates OIDC access tokens, when sign-in is configured.
    pub jwt: Option<Arc<crate::auth::JwtValidator>>,
    /// The fleet's relay secret, which opens the internal relay API (none on one machine).
    pub relay_secret: Option<Arc<str>>,
    /// Where the published `m87` releases are (none: the release routes answer 404).
    pub releases: Option<Arc<releases::ReleasesConfig>>,
}

impl AppState {
    /// State over a control plane, with the limits from its settings.
    pub fn new(cp: ControlPlane) -> Self {
        let s = cp.settings();
        let registration_limits = Arc::new(RegistrationLimits::per_minute(
            s.registrations_per_minute,
            s.registrations_per_prefix_per_minute,
            s.registrations_per_scope_per_minute,
        ));
        let trusted_proxies = Arc::new(s.trusted_proxies.clone());
        if !trusted_proxies.is_empty() {
            let blocks: Vec<String> = trusted_proxies
                .blocks()
                .iter()
                .map(ToString::to_string)
                .collect();
            tracing::info!(
                proxies = %blocks.join(","),
                "client addresses are read from X-Forwarded-For of these trusted proxies"
            );
        }
        Self {
            cp,
            registration_limits,
            trusted_proxies,
            jwt: None,
            relay_secret: None,
            releases: None,
        }
    }

    /// With OIDC access tokens accepted besides API keys.
    pub fn with_jwt(mut self, jwt: Arc<crate::auth::JwtValidator>) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// With `m87` releases served from `config`.
    pub fn with_releases(mut self, config: releases::ReleasesConfig) -> Self {
        self.releases = Some(Arc::new(config));
        self
    }

    /// With the internal relay API open to callers presenting `secret`.
    pub fn with_relay_secret(mut self, secret: &str) -> Self {
        self.relay_secret = Some(Arc::from(secret));
        self
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    routes::router()
        .merge(audit::router())
        .merge(internal::router())
        .merge(recording::router())
        .merge(releases::router())
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}
