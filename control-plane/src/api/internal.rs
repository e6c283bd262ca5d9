//! The internal relay API (fleet mode), under `/v1/internal/relay/`: what a relay running in
//! its own process asks of the control plane. Callers present the fleet's relay secret as the
//! bearer token; without a configured secret (single machine) every route answers 404.
//!
//! Not part of the public OpenAPI document: only relays call it.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use m87_events::Metadata;
use m87_events::api::{
    RelayAccessAnswer, RelayAccessCheck, RelayAuthenticateRequest, RelayAuthenticateResponse,
    RelayBootstrap, RelayPresenceReport, RelayRefusalReport,
};
use m87_events::secret::secrets_match;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiJson;

pub use m87_events::api::MAX_ACCESS_PAIRS;

/// The internal routes, without state.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/internal/relay/config", get(config))
        .route("/v1/internal/relay/authenticate", post(authenticate))
        .route("/v1/internal/relay/presence", post(presence))
        .route("/v1/internal/relay/refusals", post(refusal))
        .route("/v1/internal/relay/access", post(access))
}

/// A caller that presented the relay secret.
pub struct RelayCaller;

impl FromRequestParts<AppState> for RelayCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(secret) = state.relay_secret.as_deref() else {
            return Err(ApiError::not_found("route"));
        };
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !secrets_match(presented, secret) {
            tracing::warn!(path = %parts.uri.path(), "internal relay call with a wrong secret");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the relay secret is missing or wrong",
            ));
        }
        Ok(RelayCaller)
    }
}

async fn config(State(s): State<AppState>, _: RelayCaller) -> Json<RelayBootstrap> {
    Json(RelayBootstrap {
        session_public_key: s.cp.session_verifier().public_key(),
    })
}

async fn authenticate(
    State(s): State<AppState>,
    _: RelayCaller,
    ApiJson(req): ApiJson<RelayAuthenticateRequest>,
) -> Result<Json<RelayAuthenticateResponse>, ApiError> {
    let device_id = s.cp.authenticate_device(&req.api_key).await?;
    Ok(Json(RelayAuthenticateResponse { device_id }))
}

async fn presence(
    State(s): State<AppState>,
    _: RelayCaller,
    ApiJson(report): ApiJson<RelayPresenceReport>,
) -> Result<StatusCode, ApiError> {
    if report.relay_id.is_empty() || report.relay_id.len() > 128 {
        return Err(ApiError::bad_request(
            "relay_id must be 1 to 128 characters",
        ));
    }
    let (connected, disconnected) = if report.connected {
        (Some(report.remote.unwrap_or_default()), None)
    } else {
        (None, Some(report.reason.unwrap_or_default()))
    };
    s.cp.record_presence(&report.device_id, &report.relay_id, connected, disconnected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn refusal(
    State(s): State<AppState>,
    _: RelayCaller,
    ApiJson(report): ApiJson<RelayRefusalReport>,
) -> Result<StatusCode, ApiError> {
    let refusal = m87_events::domain::SessionRefused {
        session_id: report.session_id,
        device_id: report.device_id,
        refused_by: format!(
            "relay {}",
            report.relay_id.chars().take(128).collect::<String>()
        ),
        code: report.code.chars().take(64).collect(),
        reason: report.reason.chars().take(512).collect(),
        operation: None,
    };
    s.cp.record_refusal(refusal, &Metadata::system("relay"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn access(
    State(s): State<AppState>,
    _: RelayCaller,
    ApiJson(check): ApiJson<RelayAccessCheck>,
) -> Result<Json<RelayAccessAnswer>, ApiError> {
    if check.pairs.len() > MAX_ACCESS_PAIRS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ACCESS_PAIRS} pairs per check"
        )));
    }
    let checks: Vec<_> = check
        .pairs
        .iter()
        .map(|p| (p.subject.as_str(), &p.device_id, p.credential.as_ref()))
        .collect();
    let allowed = s.cp.may_operate_all(&checks).await;
    Ok(Json(RelayAccessAnswer { allowed }))
}
