//! The REST layer's one error type: every failure becomes a status code and a JSON body
//! `{"error": {"code", "message"}}`, and nothing internal leaks.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use m87_events::api::{ErrorBody, ErrorDetail};

use crate::domain::DomainError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// The sentence for a person.
    pub message: String,
    /// Seconds to wait, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 404 for something the caller cannot see or that does not exist.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 400 for a bad path parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// Seconds a device is told to wait when its owner scope holds too many pending requests.
const PENDING_RETRY_SECS: u64 = 60;

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            DomainError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DomainError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            DomainError::AlreadyDecided(_) => (StatusCode::CONFLICT, "already_decided"),
            DomainError::Expired => (StatusCode::CONFLICT, "expired"),
            DomainError::DeviceAlreadyEnrolled(_) => {
                (StatusCode::CONFLICT, "device_already_approved")
            }
            DomainError::DeviceAlreadyRemoved => (StatusCode::CONFLICT, "already_removed"),
            DomainError::InvalidClaimSecret => (StatusCode::UNAUTHORIZED, "invalid_claim_secret"),
            DomainError::CredentialsAlreadyIssued => {
                (StatusCode::CONFLICT, "credentials_already_issued")
            }
            DomainError::AlreadyRevoked => (StatusCode::CONFLICT, "already_revoked"),
            DomainError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            DomainError::DeviceOffline(_) => (StatusCode::CONFLICT, "device_offline"),
            DomainError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            DomainError::TooManyPending { .. } => {
                return Self {
                    retry_after: Some(PENDING_RETRY_SECS),
                    ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_pending", message)
                };
            }
        };
        Self::new(status, code, message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(d) => d.into(),
            ServiceError::Unauthenticated(m) => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", m)
            }
            ServiceError::Contention => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            ServiceError::NoRelay => Self {
                retry_after: Some(5),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_relay", e.to_string())
            },
            ServiceError::Store(StoreError::Unavailable(detail)) => {
                tracing::error!(%detail, "store unavailable");
                Self {
                    retry_after: Some(5),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the event store is unavailable; try again shortly",
                    )
                }
            }
            ServiceError::Store(other) => {
                tracing::error!(error = %other, "store failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
