//! The handlers of `/v1` and the OpenAPI document that describes them.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use m87_events::api::{
    AccessRequest, ApiKeySummary, AuthConfig, CreateApiKeyRequest, CreateOrgRequest,
    CreateSessionRequest, CreatedApiKey, DecisionResponse, DeviceListQuery, DeviceStatus,
    DeviceSummary, DeviceTunnelConfig, ErrorBody, Health, MemberRequest, MemberSummary, OrgSummary,
    PendingCounts, PollRequest, PollResponse, RegisterRequest, RegisterResponse, RoleRequest,
    SessionClosedReport, SessionGrant, SessionRefusedReport, WhoAmI,
};
use m87_events::{
    CorrelationId, DeviceId, Email, KeyId, Metadata, OrgId, RequestId, Scope, SessionId,
};

use crate::service::orgs::MemberChange;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Caller, MaybeJson, SourceIp};
use super::ratelimit::Refused;

type Router = axum::Router<AppState>;
type ApiResult<T> = Result<T, ApiError>;

/// The routes, without state.
pub fn router() -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/whoami", get(whoami))
        .route("/v1/auth/sign-in", post(sign_in))
        .route("/v1/auth/config", get(auth_config))
        .route("/v1/registrations", post(register))
        .route("/v1/registrations/pending", get(pending_counts))
        .route("/v1/registrations/{id}/poll", post(poll))
        .route("/v1/registrations/{id}/approve", post(approve))
        .route("/v1/registrations/{id}/reject", post(reject))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", get(get_device).delete(remove_device))
        .route("/v1/devices/{id}/access", post(grant_access))
        .route("/v1/devices/{id}/access/{scope}", delete(revoke_access))
        .route("/v1/devices/{id}/sessions", post(create_session))
        .route("/v1/device/tunnel", get(tunnel_config))
        .route("/v1/device/sessions/{id}/closed", post(session_closed))
        .route("/v1/device/sessions/refused", post(session_refused))
        .route("/v1/orgs", post(create_org).get(list_orgs))
        .route("/v1/orgs/{id}", delete(delete_org))
        .route("/v1/orgs/{id}/members", post(add_member).get(list_members))
        .route(
            "/v1/orgs/{id}/members/{email}",
            delete(remove_member).put(change_role),
        )
        .route("/v1/api-keys", post(create_api_key).get(list_api_keys))
        .route("/v1/api-keys/{id}", delete(revoke_api_key))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
}

/// Liveness and version.
#[utoipa::path(get, path = "/v1/health", tag = "meta", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "the OpenAPI 3.1 document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::recording::RecordingApiDoc::openapi());
    doc.merge(super::releases::ReleasesApiDoc::openapi());
    Json(doc)
}

/// How to sign in interactively (OIDC issuer, client id, audience); 404 when not configured.
#[utoipa::path(get, path = "/v1/auth/config", tag = "meta",
    responses((status = 200, body = AuthConfig), (status = 404, body = ErrorBody)))]
async fn auth_config(State(s): State<AppState>) -> ApiResult<Json<AuthConfig>> {
    let jwt = s.jwt.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this server has no interactive sign-in configured; use an api key",
        )
    })?;
    let c = jwt.config();
    Ok(Json(AuthConfig {
        issuer: c.issuer.clone(),
        client_id: c.client_id.clone(),
        audience: c.audience.clone(),
    }))
}

/// The caller as the server sees it (users and devices).
#[utoipa::path(get, path = "/v1/whoami", tag = "meta", security(("api_key" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
async fn whoami(State(s): State<AppState>, caller: Caller) -> Json<WhoAmI> {
    Json(s.cp.whoami(&caller.identity))
}

/// Sign in (`m87 login` calls it once it holds a credential): the sign-in is recorded in the
/// audit trail, with the API key or the identity provider's subject; answers who you are.
#[utoipa::path(post, path = "/v1/auth/sign-in", tag = "meta", security(("api_key" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn sign_in(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<WhoAmI>> {
    Ok(Json(
        s.cp.record_sign_in(&caller.identity, &caller.metadata)
            .await?,
    ))
}

/// A device asks to join. Unauthenticated; limited per client address, per address prefix and
/// per owner scope (429 `rate_limited`, `RateLimit-Policy` names the limit), and refused while
/// the owner scope holds too many undecided requests (429 `too_many_pending`).
#[utoipa::path(post, path = "/v1/registrations", tag = "registrations", request_body = RegisterRequest,
    responses((status = 201, body = RegisterResponse), (status = 400, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn register(
    State(s): State<AppState>,
    SourceIp(ip): SourceIp,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<axum::response::Response, axum::response::Response> {
    if let Some(ip) = ip
        && let Err(refused) =
            s.registration_limits
                .admit(ip, &req.owner_scope, std::time::Instant::now())
    {
        tracing::info!(client = %ip, limit = refused.limit.as_str(), "registration rate limited");
        return Err(rate_limited(refused));
    }
    let metadata = Metadata {
        actor: m87_events::Actor::Device {
            device_id: req.device_id.clone(),
        },
        source_ip: ip,
        correlation_id: CorrelationId::new(),
    };
    let response =
        s.cp.request_registration(req, &metadata)
            .await
            .map_err(|e| ApiError::from(e).into_response())?;
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

/// 429 `rate_limited` naming the limit in its message and in `RateLimit-Policy` /
/// `RateLimit` (the IETF draft's fields: the policy's name, quota and window; what remains and
/// when it resets), with `Retry-After`.
fn rate_limited(r: Refused) -> axum::response::Response {
    let name = r.limit.as_str();
    let mut response = ApiError {
        retry_after: Some(r.retry_after),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many registration requests for this {name} ({} per minute per {name}); \
                 retry in {} s",
                r.per_window, r.retry_after
            ),
        )
    }
    .into_response();
    let headers = response.headers_mut();
    let policy = format!("\"{name}\";q={};w=60", r.per_window);
    let state = format!("\"{name}\";r=0;t={}", r.retry_after);
    for (field, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            headers.insert(field, v);
        }
    }
    response
}

/// A device asks how its request stands; the first poll after approval carries its key.
#[utoipa::path(post, path = "/v1/registrations/{id}/poll", tag = "registrations", request_body = PollRequest,
    params(("id" = String, Path, description = "registration request id")),
    responses((status = 200, body = PollResponse), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn poll(
    State(s): State<AppState>,
    SourceIp(ip): SourceIp,
    ApiPath(id): ApiPath<RequestId>,
    ApiJson(req): ApiJson<PollRequest>,
) -> ApiResult<Json<PollResponse>> {
    let metadata = Metadata {
        actor: m87_events::Actor::System {
            component: "registration-poll".into(),
        },
        source_ip: ip,
        correlation_id: CorrelationId::new(),
    };
    let response = s.cp.poll(id, &req.claim_secret, &metadata).await?;
    if response.api_key.is_some() {
        tracing::info!(request_id = %id, device_id = %response.device_id, "device credentials issued");
    }
    Ok(Json(response))
}

/// Approve a pending request: the device joins the fleet.
#[utoipa::path(post, path = "/v1/registrations/{id}/approve", tag = "registrations", security(("api_key" = [])),
    params(("id" = String, Path, description = "registration request id")),
    responses((status = 200, body = DecisionResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn approve(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RequestId>,
) -> ApiResult<Json<DecisionResponse>> {
    let device_id = s.cp.approve(&caller.identity, id, &caller.metadata).await?;
    Ok(Json(DecisionResponse {
        request_id: id,
        device_id,
        status: DeviceStatus::Approved,
    }))
}

/// Reject a pending request.
#[utoipa::path(post, path = "/v1/registrations/{id}/reject", tag = "registrations", security(("api_key" = [])),
    params(("id" = String, Path, description = "registration request id")),
    responses((status = 200, body = DecisionResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn reject(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RequestId>,
) -> ApiResult<Json<DecisionResponse>> {
    s.cp.reject(&caller.identity, id, &caller.metadata).await?;
    let device_id =
        s.cp.list_devices(&caller.identity)
            .await?
            .into_iter()
            .find(|d| d.request_id == id)
            .map(|d| d.id)
            .ok_or_else(|| ApiError::not_found("registration request"))?;
    Ok(Json(DecisionResponse {
        request_id: id,
        device_id,
        status: DeviceStatus::Rejected,
    }))
}

/// Devices and undecided requests the caller can see, newest request first; `name` (a
/// substring, ignoring case) and `status` filter them.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", security(("api_key" = [])),
    params(DeviceListQuery),
    responses((status = 200, body = [DeviceSummary]), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
async fn list_devices(
    State(s): State<AppState>,
    caller: Caller,
    query: Result<Query<DeviceListQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<DeviceSummary>>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(
        s.cp.list_devices_matching(&caller.identity, &query).await?,
    ))
}

/// How many registration requests wait for a decision, per owner scope the caller can see.
#[utoipa::path(get, path = "/v1/registrations/pending", tag = "registrations", security(("api_key" = [])),
    responses((status = 200, body = PendingCounts), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn pending_counts(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<PendingCounts>> {
    Ok(Json(s.cp.pending_counts(&caller.identity).await?))
}

/// One device.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceSummary), (status = 404, body = ErrorBody)))]
async fn get_device(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<DeviceId>,
) -> ApiResult<Json<DeviceSummary>> {
    Ok(Json(s.cp.get_device(&caller.identity, &id).await?))
}

/// Remove an approved device: its key stops working.
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn remove_device(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<DeviceId>,
) -> ApiResult<StatusCode> {
    s.cp.remove_device(&caller.identity, &id, &caller.metadata)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give a scope access to a device.
#[utoipa::path(post, path = "/v1/devices/{id}/access", tag = "devices", security(("api_key" = [])),
    request_body = AccessRequest, params(("id" = String, Path, description = "device id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn grant_access(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<DeviceId>,
    ApiJson(req): ApiJson<AccessRequest>,
) -> ApiResult<StatusCode> {
    s.cp.change_access(&caller.identity, &id, &req.scope, true, &caller.metadata)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take a scope's access to a device away.
#[utoipa::path(delete, path = "/v1/devices/{id}/access/{scope}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path, description = "device id"), ("scope" = String, Path, description = "user:<email> or org:<id>")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_access(
    State(s): State<AppState>,
    caller: Caller,
    axum::extract::Path((id, scope)): axum::extract::Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id: DeviceId = id
        .parse()
        .map_err(|e: m87_events::ParseIdError| ApiError::bad_request(e.to_string()))?;
    let scope: Scope = scope
        .parse()
        .map_err(|e: m87_events::ParseIdError| ApiError::bad_request(e.to_string()))?;
    s.cp.change_access(&caller.identity, &id, &scope, false, &caller.metadata)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a user API key; the key is in this answer only.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", security(("api_key" = [])),
    request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 403, body = ErrorBody)))]
async fn create_api_key(
    State(s): State<AppState>,
    caller: Caller,
    MaybeJson(body): MaybeJson<CreateApiKeyRequest>,
) -> ApiResult<impl IntoResponse> {
    let req = body.unwrap_or_default();
    let created =
        s.cp.create_api_key(&caller.identity, req, &caller.metadata)
            .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The caller's API keys (every user key for platform admins).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", security(("api_key" = [])),
    responses((status = 200, body = [ApiKeySummary])))]
async fn list_api_keys(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ApiKeySummary>>> {
    Ok(Json(s.cp.list_api_keys(&caller.identity).await?))
}

/// Revoke an API key.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", security(("api_key" = [])),
    params(("id" = String, Path, description = "api key id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn revoke_api_key(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<KeyId>,
) -> ApiResult<StatusCode> {
    s.cp.revoke_api_key(&caller.identity, id, &caller.metadata)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ask for a session on a device: a short-lived signed token and the relay to use it at.
#[utoipa::path(post, path = "/v1/devices/{id}/sessions", tag = "sessions", security(("api_key" = [])),
    request_body = CreateSessionRequest, params(("id" = String, Path, description = "device id")),
    responses((status = 201, body = SessionGrant), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "device offline"), (status = 503, body = ErrorBody)))]
async fn create_session(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<DeviceId>,
    ApiJson(req): ApiJson<CreateSessionRequest>,
) -> ApiResult<impl IntoResponse> {
    let grant =
        s.cp.create_session(&caller.identity, &id, req, &caller.metadata)
            .await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

/// For devices: the relays to dial and the key that signs session tokens.
#[utoipa::path(get, path = "/v1/device/tunnel", tag = "device", security(("api_key" = [])),
    responses((status = 200, body = DeviceTunnelConfig), (status = 403, body = ErrorBody)))]
async fn tunnel_config(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<DeviceTunnelConfig>> {
    Ok(Json(s.cp.tunnel_config(&caller.identity)?))
}

/// For devices: report how a session ended.
#[utoipa::path(post, path = "/v1/device/sessions/{id}/closed", tag = "device", security(("api_key" = [])),
    request_body = SessionClosedReport, params(("id" = String, Path, description = "session id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn session_closed(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<SessionId>,
    ApiJson(report): ApiJson<SessionClosedReport>,
) -> ApiResult<StatusCode> {
    s.cp.close_session(&caller.identity, id, report, &caller.metadata)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// For devices: report a session the device refused.
#[utoipa::path(post, path = "/v1/device/sessions/refused", tag = "device", security(("api_key" = [])),
    request_body = SessionRefusedReport, responses((status = 204), (status = 403, body = ErrorBody)))]
async fn session_refused(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(report): ApiJson<SessionRefusedReport>,
) -> ApiResult<StatusCode> {
    let crate::domain::Principal::Device { device_id } = &caller.identity.principal else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only devices report refusals",
        ));
    };
    let refusal = m87_events::domain::SessionRefused {
        session_id: report.session_id,
        device_id: Some(device_id.clone()),
        refused_by: "agent".into(),
        code: report.code.chars().take(64).collect(),
        reason: report.reason.chars().take(512).collect(),
        operation: None,
    };
    s.cp.record_refusal(refusal, &caller.metadata).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create an organization; the caller becomes its admin.
#[utoipa::path(post, path = "/v1/orgs", tag = "orgs", security(("api_key" = [])), request_body = CreateOrgRequest,
    responses((status = 201, body = OrgSummary), (status = 409, body = ErrorBody)))]
async fn create_org(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateOrgRequest>,
) -> ApiResult<impl IntoResponse> {
    let org =
        s.cp.create_org(&caller.identity, req, &caller.metadata)
            .await?;
    Ok((StatusCode::CREATED, Json(org)))
}

/// The caller's organizations.
#[utoipa::path(get, path = "/v1/orgs", tag = "orgs", security(("api_key" = [])), responses((status = 200, body = [OrgSummary])))]
async fn list_orgs(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<OrgSummary>>> {
    Ok(Json(s.cp.list_orgs(&caller.identity).await?))
}

/// Delete an organization (its admins, or platform admins).
#[utoipa::path(delete, path = "/v1/orgs/{id}", tag = "orgs", security(("api_key" = [])),
    params(("id" = String, Path, description = "organization id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_org(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<OrgId>,
) -> ApiResult<StatusCode> {
    s.cp.delete_org(&caller.identity, &id, &caller.metadata)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a member.
#[utoipa::path(post, path = "/v1/orgs/{id}/members", tag = "orgs", security(("api_key" = [])), request_body = MemberRequest,
    params(("id" = String, Path, description = "organization id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_member(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<OrgId>,
    ApiJson(req): ApiJson<MemberRequest>,
) -> ApiResult<StatusCode> {
    s.cp.change_member(
        &caller.identity,
        &id,
        &req.email,
        MemberChange::Add(req.role),
        &caller.metadata,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The members of an organization.
#[utoipa::path(get, path = "/v1/orgs/{id}/members", tag = "orgs", security(("api_key" = [])),
    params(("id" = String, Path, description = "organization id")),
    responses((status = 200, body = [MemberSummary]), (status = 404, body = ErrorBody)))]
async fn list_members(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<OrgId>,
) -> ApiResult<Json<Vec<MemberSummary>>> {
    Ok(Json(s.cp.list_members(&caller.identity, &id).await?))
}

fn org_and_email(id: String, email: String) -> Result<(OrgId, Email), ApiError> {
    let id = id
        .parse()
        .map_err(|e: m87_events::ParseIdError| ApiError::bad_request(e.to_string()))?;
    let email = email
        .parse()
        .map_err(|e: m87_events::ParseIdError| ApiError::bad_request(e.to_string()))?;
    Ok((id, email))
}

/// Remove a member (admins; members may remove themselves).
#[utoipa::path(delete, path = "/v1/orgs/{id}/members/{email}", tag = "orgs", security(("api_key" = [])),
    params(("id" = String, Path, description = "organization id"), ("email" = String, Path, description = "member")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_member(
    State(s): State<AppState>,
    caller: Caller,
    axum::extract::Path((id, email)): axum::extract::Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (id, email) = org_and_email(id, email)?;
    s.cp.change_member(
        &caller.identity,
        &id,
        &email,
        MemberChange::Remove,
        &caller.metadata,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change a member's role.
#[utoipa::path(put, path = "/v1/orgs/{id}/members/{email}", tag = "orgs", security(("api_key" = [])), request_body = RoleRequest,
    params(("id" = String, Path, description = "organization id"), ("email" = String, Path, description = "member")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn change_role(
    State(s): State<AppState>,
    caller: Caller,
    axum::extract::Path((id, email)): axum::extract::Path<(String, String)>,
    ApiJson(req): ApiJson<RoleRequest>,
) -> ApiResult<StatusCode> {
    let (id, email) = org_and_email(id, email)?;
    s.cp.change_member(
        &caller.identity,
        &id,
        &email,
        MemberChange::Role(req.role),
        &caller.metadata,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "an m87 API key (m87u_… for users, m87d_… for devices)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of `/v1`.
#[derive(OpenApi)]
#[openapi(
    info(title = "m87 API", description = "Control plane of m87: registration, approval, devices, API keys."),
    paths(health, openapi, auth_config, whoami, sign_in, register, pending_counts, poll, approve, reject, list_devices, get_device,
          remove_device, grant_access, revoke_access, create_api_key, list_api_keys, revoke_api_key,
          create_session, tunnel_config, session_closed, session_refused, create_org, list_orgs,
          delete_org, add_member, list_members, remove_member, change_role, super::audit::list_audit, super::audit::export_status, super::audit::export_entries),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;
