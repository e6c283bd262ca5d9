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
    axum::Router::new().route("/v1/audit", get(list_audit))
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
