//! `GET /v1/audit`: the audit trail, filtered and paged, as the caller may read it.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use m87_events::api::ErrorBody;
use m87_events::audit::{AuditPage, AuditQueryParams};

use super::AppState;
use super::error::ApiError;
use super::extract::Caller;

/// The audit routes, without state.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/export", get(export_status))
        .route("/v1/audit/entries", get(export_entries))
}

/// Who did what, newest first: sessions (with how they ended, bytes and duration) and control
/// changes. Platform admins read everything; organization admins their organization's devices
/// and members; owners their devices; everyone their own sessions.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("api_key" = [])),
    params(AuditQueryParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub(super) async fn list_audit(
    State(s): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQueryParams>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(s.cp.audit_page(&caller.identity, &query).await?))
}

/// Each SIEM sink's cursor, lag (records and seconds), delivered, retried and rejected counts
/// and last error, as this control plane sees them (platform admins only).
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", security(("api_key" = [])),
    responses((status = 200, description = "one object per sink"), (status = 404, body = ErrorBody)))]
pub(super) async fn export_status(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<m87_audit_export::SinkStatus>>, ApiError> {
    Ok(Json(s.cp.export_status(&caller.identity).await?))
}

/// The chained entries in order, rendered as OCSF, ECS, CEF or the entry itself (one line
/// each), for one-off pulls; platform admins only.
#[utoipa::path(get, path = "/v1/audit/entries", tag = "audit", security(("api_key" = [])),
    params(m87_events::audit::ExportParams),
    responses((status = 200, body = m87_events::audit::ExportPage), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(super) async fn export_entries(
    State(s): State<AppState>,
    caller: Caller,
    query: Result<Query<m87_events::audit::ExportParams>, QueryRejection>,
) -> Result<Json<m87_events::audit::ExportPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(s.cp.export_page(&caller.identity, &query).await?))
}
