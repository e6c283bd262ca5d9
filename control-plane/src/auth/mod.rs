//! Sign-in with an OpenID Connect provider: validating the provider's JWT access tokens.
//!
//! [`JwtValidator::new`] discovers the provider (`<issuer>/.well-known/openid-configuration`),
//! fetches its key set (JWKS) and keeps it. [`JwtValidator::validate`] checks a bearer token
//! entirely locally — signature with the key named by the token's `kid`, an allow-list of
//! asymmetric algorithms, issuer, audience, `exp`/`nbf` with a small leeway, and a verified
//! email — and returns the [`VerifiedClaims`] or a [`JwtError`] whose message is fit for a 401
//! body.
//!
//! Key rotation needs no restart: a token naming a key the cache does not know makes the
//! validator refetch the key set, at most once every
//! [`jwks_refetch_interval`](OidcConfig::jwks_refetch_interval) (so a stream of garbage `kid`s
//! cannot turn into a stream of requests to the provider). The key set is also refreshed when it
//! is older than [`jwks_max_age`](OidcConfig::jwks_max_age), so keys the provider withdraws stop
//! working.
//!
//! An access token may lack the email (providers differ). Then, if
//! [`userinfo_fallback`](OidcConfig::userinfo_fallback) is on, the validator asks the provider's
//! userinfo endpoint with the token itself, and caches the answer per subject.

mod error;
mod jwks;
mod jwt;

use std::time::Duration;

pub use error::JwtError;
pub use jwt::{ALLOWED_ALGORITHMS, JwtValidator, VerifiedClaims};

/// How the control plane trusts an OpenID Connect provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as it appears in the tokens' `iss` (a trailing `/`
    /// given here is tolerated when the provider's metadata names the issuer without it).
    pub issuer: String,
    /// The audience access tokens must be issued for (`aud`): the API's resource identifier.
    pub audience: String,
    /// The public client the CLI signs in with (device flow). The validator does not restrict
    /// tokens to it: any client of this provider may obtain tokens for the audience (the web
    /// console uses its own); the audience is what binds a token to this API.
    pub client_id: String,
    /// Clock skew tolerated on `exp` and `nbf`. Default 30 s.
    pub leeway: Duration,
    /// The least time between two key-set refetches caused by unknown key ids. Default 10 s.
    pub jwks_refetch_interval: Duration,
    /// A key set older than this is refetched on the next validation. Default 1 hour.
    pub jwks_max_age: Duration,
    /// Whether a token without a verified email may be completed from the provider's userinfo
    /// endpoint. Default on.
    pub userinfo_fallback: bool,
    /// How long an email learned from userinfo is reused for the same subject. Default 10 min.
    pub userinfo_cache_ttl: Duration,
    /// Timeout of each request to the provider. Default 10 s.
    pub http_timeout: Duration,
}

impl OidcConfig {
    /// A configuration with the defaults above.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        client_id: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            client_id: client_id.into(),
            leeway: Duration::from_secs(30),
            jwks_refetch_interval: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(3600),
            userinfo_fallback: true,
            userinfo_cache_ttl: Duration::from_secs(600),
            http_timeout: Duration::from_secs(10),
        }
    }
}
