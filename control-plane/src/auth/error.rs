//! Why a token was refused, or why the validator could not do its work.

/// Why a bearer token was not accepted.
///
/// Every variant except [`JwtError::Provider`] and [`JwtError::Config`] is the caller's problem
/// (answer 401); its `Display` is a short lowercase sentence fit for the response body and names
/// nothing secret. [`JwtError::Provider`] means the identity provider could not be reached or
/// answered nonsense (answer 503 and log it); [`JwtError::Config`] only comes from
/// [`JwtValidator::new`](super::JwtValidator::new).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is missing or is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` is missing or does not name the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// The signature does not verify with the key the token names.
    #[error("bad signature")]
    BadSignature,
    /// The header's `alg` is not on the allow-list (`none`, every HMAC algorithm and anything
    /// unknown), or does not fit the key the token names.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The token names a key (`kid`) the provider does not publish, even after a refetch of its
    /// key set.
    #[error("unknown signing key")]
    UnknownKey,
    /// Not a compact JWS with a JSON header and claims, or a required claim (`exp`, `sub`) is
    /// missing or mistyped.
    #[error("malformed token")]
    Malformed,
    /// The token's email is not marked verified (`email_verified` is not `true`).
    #[error("email not verified")]
    EmailNotVerified,
    /// Neither the token nor the provider's userinfo endpoint tells the user's email.
    #[error("token carries no email")]
    MissingEmail,
    /// The email the provider vouches for is not a usable email address.
    #[error("invalid email in token")]
    InvalidEmail,
    /// The identity provider could not be reached or answered something unusable (discovery,
    /// key set or userinfo). The detail is for logs, not for callers.
    #[error("identity provider unavailable: {0}")]
    Provider(String),
    /// The OIDC configuration cannot work (for example the provider names another issuer).
    #[error("invalid oidc configuration: {0}")]
    Config(String),
}

impl JwtError {
    /// Whether the failure is on the server's side (provider unavailable or misconfigured)
    /// rather than the caller's token: answer 503 instead of 401.
    pub fn is_server_side(&self) -> bool {
        matches!(self, Self::Provider(_) | Self::Config(_))
    }
}
