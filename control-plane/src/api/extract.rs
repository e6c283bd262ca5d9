//! Extractors whose rejections use the one error format: JSON bodies, path ids, the caller.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use m87_events::{CorrelationId, Metadata};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::domain::Identity;

/// A JSON body; malformed, oversized, mistyped or unknown-field bodies get a JSON error.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if body_timed_out(&rejection) {
        return request_timeout();
    }
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            // The inner serde message names the field and why; it never echoes a value.
            format!(
                "invalid request body: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text())
            ),
        ),
        JsonRejection::JsonSyntaxError(_) => malformed(),
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        other => ApiError::new(
            other.status(),
            "bad_request",
            "request body could not be read",
        ),
    }
}

/// An optional JSON body: an empty body is `None`; anything else must be valid JSON sent as
/// `Content-Type: application/json` (else 415, as [`ApiJson`] answers).
#[derive(Debug)]
pub struct MaybeJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for MaybeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = has_json_content_type(req.headers());
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if body_timed_out(&rejection) {
                    request_timeout()
                } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::new(
                        rejection.status(),
                        "bad_request",
                        "request body could not be read",
                    )
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !json_type {
            return Err(unsupported_media_type());
        }
        serde_json::from_slice(&bytes)
            .map(|v| Self(Some(v)))
            .map_err(|e| {
                if e.classify() == serde_json::error::Category::Data {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_request",
                        format!("invalid request body: {e}"),
                    )
                } else {
                    malformed()
                }
            })
    }
}

/// Whether `Content-Type` names JSON (`application/json` or `application/*+json`), as
/// axum's `Json` requires.
fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// Whether reading the body failed because it did not arrive in time (the listener's
/// request-read deadline, [`crate::tls::BodyTimedOut`]).
fn body_timed_out(rejection: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(rejection);
    while let Some(e) = cause {
        if e.is::<crate::tls::BodyTimedOut>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn request_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive in time",
    )
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "request body must be JSON (Content-Type: application/json)",
    )
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "request body is larger than {} bytes",
            super::MAX_BODY_BYTES
        ),
    )
}

fn malformed() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        "request body is not valid JSON",
    )
}

/// A path parameter parsed with `FromStr`; a bad one is a 400 naming what was wrong.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: std::str::FromStr + Send,
    T::Err: std::fmt::Display,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))?;
        raw.parse()
            .map(Self)
            .map_err(|e: T::Err| ApiError::bad_request(e.to_string()))
    }
}

/// The client's address, when known: the TCP peer, or the address a trusted proxy forwarded
/// (see [`super::client_addr`]). Every source address the API records or limits is this one.
#[derive(Debug, Clone, Copy)]
pub struct SourceIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for SourceIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(
            |ci| state.trusted_proxies.client_ip(ci.0.ip(), &parts.headers),
        )))
    }
}

/// An authenticated caller, with the metadata for the events their request causes.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who they are.
    pub identity: Identity,
    /// Actor, source address and a fresh correlation id.
    pub metadata: Metadata,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let SourceIp(source_ip) = SourceIp::from_request_parts(parts, state)
            .await
            .unwrap_or(SourceIp(None));
        match identify(parts, state).await {
            Ok((identity, subject)) => {
                let mut actor = identity.actor();
                if let m87_events::Actor::User { subject: s, .. } = &mut actor {
                    *s = subject;
                }
                let metadata = Metadata {
                    actor,
                    source_ip,
                    correlation_id: CorrelationId::new(),
                };
                Ok(Self { identity, metadata })
            }
            Err(e) => {
                // Every refused credential is on the record, counted per address and minute.
                if e.status == StatusCode::UNAUTHORIZED {
                    state.cp.note_auth_refusal(source_ip, &e.message);
                }
                Err(e)
            }
        }
    }
}

/// Who presents the request's credential, and the identity provider's subject when it is an
/// access token.
async fn identify(
    parts: &Parts,
    state: &AppState,
) -> Result<(crate::domain::Identity, Option<String>), ApiError> {
    let unauthenticated = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthenticated("missing api key: send Authorization: Bearer <key>"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthenticated("malformed Authorization header: expected Bearer <key>"))?;
    let is_key = token.starts_with(m87_events::KeyKind::User.prefix())
        || token.starts_with(m87_events::KeyKind::Device.prefix());
    match (&state.jwt, is_key) {
        (Some(jwt), false) => match jwt.validate(token).await {
            Ok(claims) => Ok((
                state.cp.user_identity(claims.email, None).await?,
                Some(claims.sub),
            )),
            Err(e) if e.is_server_side() => {
                tracing::error!(error = %e, "cannot validate an access token");
                Err(ApiError {
                    retry_after: Some(5),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the identity provider is unavailable; try again shortly",
                    )
                })
            }
            Err(e) => {
                tracing::info!(reason = %e, "access token refused");
                Err(unauthenticated(&format!("invalid access token: {e}")))
            }
        },
        _ => Ok((state.cp.authenticate(token).await?, None)),
    }
}
