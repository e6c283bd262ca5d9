//! The routes of session recording: the recording policies of organizations and devices, the
//! device's upload of a recorded session, and reading a recording.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use m87_events::api::ErrorBody;
use m87_events::policy::{DevicePolicy, DevicePolicyRequest, OrgPolicy, OrgPolicyRequest};
use m87_events::{DeviceId, OrgId, SessionId};
use serde::Deserialize;
use utoipa::OpenApi;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Caller};
use crate::service::recordings::MAX_RECORDING_UPLOAD;

type ApiResult<T> = Result<T, ApiError>;

/// The media type of asciicast v2 recordings.
pub const ASCIICAST: &str = "application/x-asciicast";

/// The routes, without state.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/orgs/{id}/policy", get(org_policy).put(set_org_policy))
        .route(
            "/v1/devices/{id}/policy",
            get(device_policy).put(set_device_policy),
        )
        .route(
            "/v1/device/sessions/{id}/recording",
            put(upload_recording).layer(DefaultBodyLimit::max(MAX_RECORDING_UPLOAD)),
        )
        .route("/v1/sessions/{id}/recording", get(read_recording))
}

/// An organization's session-recording policy (its members).
#[utoipa::path(get, path = "/v1/orgs/{id}/policy", tag = "orgs", security(("api_key" = [])),
    params(("id" = String, Path, description = "organization id")),
    responses((status = 200, body = OrgPolicy), (status = 404, body = ErrorBody)))]
async fn org_policy(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<OrgId>,
) -> ApiResult<Json<OrgPolicy>> {
    Ok(Json(s.cp.org_policy(&caller.identity, &id).await?))
}

/// Set an organization's session-recording policy (its admins).
#[utoipa::path(put, path = "/v1/orgs/{id}/policy", tag = "orgs", security(("api_key" = [])),
    request_body = OrgPolicyRequest, params(("id" = String, Path, description = "organization id")),
    responses((status = 200, body = OrgPolicy), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_org_policy(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<OrgId>,
    ApiJson(req): ApiJson<OrgPolicyRequest>,
) -> ApiResult<Json<OrgPolicy>> {
    let policy =
        s.cp.set_org_policy(&caller.identity, &id, req.record_sessions, &caller.metadata)
            .await?;
    Ok(Json(policy))
}

/// A device's session-recording policy: its own setting and what applies.
#[utoipa::path(get, path = "/v1/devices/{id}/policy", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DevicePolicy), (status = 404, body = ErrorBody)))]
async fn device_policy(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<DeviceId>,
) -> ApiResult<Json<DevicePolicy>> {
    Ok(Json(s.cp.device_policy(&caller.identity, &id).await?))
}

/// Set a device's session-recording policy: on, off, or inherit (whoever administers it).
#[utoipa::path(put, path = "/v1/devices/{id}/policy", tag = "devices", security(("api_key" = [])),
    request_body = DevicePolicyRequest, params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DevicePolicy), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_device_policy(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<DeviceId>,
    ApiJson(req): ApiJson<DevicePolicyRequest>,
) -> ApiResult<Json<DevicePolicy>> {
    let policy =
        s.cp.set_device_policy(&caller.identity, &id, req.record_sessions, &caller.metadata)
            .await?;
    Ok(Json(policy))
}

/// What a device tells with its upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// Whether the device stopped recording at its cap.
    #[serde(default)]
    truncated: bool,
    /// The cap, in bytes.
    #[serde(default)]
    max_bytes: u64,
}

/// For devices: store the asciicast of one of its recorded sessions (body up to 64 MiB).
#[utoipa::path(put, path = "/v1/device/sessions/{id}/recording", tag = "device", security(("api_key" = [])),
    params(("id" = String, Path, description = "session id"), UploadQuery),
    request_body(content = String, content_type = "application/x-asciicast"),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody)))]
async fn upload_recording(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<SessionId>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if m87_events::asciicast::parse(&String::from_utf8_lossy(&body)).is_err() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "the body is not an asciicast v2 recording",
        ));
    }
    s.cp.store_recording(
        &caller.identity,
        id,
        body.to_vec(),
        q.truncated,
        q.max_bytes,
        &caller.metadata,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A session's recording, as asciicast v2: for platform admins, whoever administers the device
/// and the user who ran the session (anyone else: 404).
#[utoipa::path(get, path = "/v1/sessions/{id}/recording", tag = "sessions", security(("api_key" = [])),
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, content_type = "application/x-asciicast", body = String),
              (status = 404, body = ErrorBody)))]
async fn read_recording(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<SessionId>,
) -> ApiResult<impl IntoResponse> {
    let cast = s.cp.read_recording(&caller.identity, id).await?;
    Ok(([(header::CONTENT_TYPE, ASCIICAST)], cast))
}

/// The OpenAPI paths of these routes (merged into the API's document).
#[derive(OpenApi)]
#[openapi(paths(
    org_policy,
    set_org_policy,
    device_policy,
    set_device_policy,
    upload_recording,
    read_recording
))]
pub struct RecordingApiDoc;
