//! Aggregates and the rules that decide which events follow a command.
//!
//! Everything here is pure: no store, no clock, no runtime. A command handler loads the
//! aggregates it touches by folding their streams with `apply`, asks a `decide_*` function, and
//! appends what comes back. `apply` only changes state; all rules live in the decisions.
//!
//! # Layout
//!
//! - [`aggregate`]: the [`Aggregate`] trait: state folded from one stream's events.
//! - [`access`]: which events may take someone's access to a device away.
//! - [`registration`]: a device's request to join, from request to approval, rejection or expiry.
//! - [`device`]: an enrolled device: credentials, access, removal.
//! - [`enrollment`]: the decisions that read a registration and a device together (approval,
//!   the one-time release of the device's key); above both, so neither imports the other.
//! - [`api_key`]: user API keys.
//! - [`identity`]: who is calling, and what they may see and administer.
//! - [`session`]: remote sessions: opening (token grant) and closing.
//! - [`org`]: organizations, members and roles.
//! - [`recording`]: session recording: the policy that applies, who stores and reads.

pub mod access;
pub mod aggregate;
pub mod api_key;
pub mod device;
pub mod enrollment;
pub mod identity;
pub mod org;
pub mod recording;
pub mod registration;
pub mod session;

use m87_events::api::DeviceStatus;

pub use aggregate::Aggregate;
pub use identity::{Identity, Principal};

/// Why a command was refused. Each variant maps to one HTTP status in the REST layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The thing does not exist, or exists outside the caller's scopes (never told apart).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller can see the thing but may not do this to it.
    #[error("{0}")]
    Forbidden(String),
    /// The registration request was decided already.
    #[error("registration request is already {}", .0.as_str())]
    AlreadyDecided(DeviceStatus),
    /// The registration request expired before it was decided.
    #[error("registration request has expired; the device must register again")]
    Expired,
    /// The device is enrolled already under another request.
    #[error("device {0} is already approved; remove it before approving a new request")]
    DeviceAlreadyEnrolled(String),
    /// The device was removed already.
    #[error("device is already removed")]
    DeviceAlreadyRemoved,
    /// The claim secret does not match the request.
    #[error("claim secret does not match this registration request")]
    InvalidClaimSecret,
    /// The device key was handed out already; it is never shown twice.
    #[error("credentials for this registration were already issued")]
    CredentialsAlreadyIssued,
    /// The API key was revoked already.
    #[error("api key is already revoked")]
    AlreadyRevoked,
    /// The input is not acceptable.
    #[error("{0}")]
    Validation(String),
    /// Something with this identity exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The device's tunnel is not connected.
    #[error("device offline ({0})")]
    DeviceOffline(String),
    /// The owner scope holds as many undecided registration requests as it may.
    #[error(
        "{scope} already has {max} registration requests waiting for a decision; \
         retry after some are approved, rejected or expired"
    )]
    TooManyPending {
        /// The requested owner scope.
        scope: String,
        /// The cap per scope.
        max: usize,
    },
}

/// SHA-256 of a secret, hex encoded: how keys and claim secrets are kept.
pub fn secret_digest(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two digests in time independent of where they differ.
pub fn digests_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
pub(crate) mod test_support {
    use m87_events::{Email, Scope};

    use super::{Identity, Principal};

    pub fn user(email: &str) -> Identity {
        let email: Email = email.parse().unwrap();
        Identity {
            scopes: vec![Scope::user(&email)],
            principal: Principal::User {
                email,
                key_id: None,
            },
            platform_admin: false,
            memberships: vec![],
        }
    }

    pub fn admin(email: &str) -> Identity {
        Identity {
            platform_admin: true,
            ..user(email)
        }
    }
}
