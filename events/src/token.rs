//! Session tokens: short-lived, Ed25519-signed grants for one operation on one device.
//!
//! The control plane signs; relays and agents verify offline with the public key only, so a
//! relay cannot invent a session. A token is `base64url(claims JSON) "." base64url(signature)`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{DeviceId, KeyId, SessionId};

/// Longest token accepted: room for the largest arguments a grant allows
/// ([`MAX_ARGS_BYTES`], base64 adds a third) with the rest of the claims and the signature,
/// while the session open that carries it stays within one control frame
/// ([`crate::tunnel::frame::MAX_CONTROL`]).
pub const MAX_TOKEN_LEN: usize = 15 * 1024;
/// Largest session arguments (their JSON, in bytes) a grant accepts: a token carrying them
/// always fits in [`MAX_TOKEN_LEN`] (see [`MAX_CLAIMS_OVERHEAD`]).
pub const MAX_ARGS_BYTES: usize = 8 * 1024;
/// The most the claims other than the arguments may take (JSON bytes): the subject's email is
/// at most 254 bytes and every other claim is short.
pub const MAX_CLAIMS_OVERHEAD: usize = 1024;

// Base64 of the largest claims, a dot and the signature (86 characters) fit in a token; the
// token and the session open's JSON around it (under 64 bytes) fit in a control frame.
const _: () =
    assert!((MAX_ARGS_BYTES + MAX_CLAIMS_OVERHEAD).div_ceil(3) * 4 + 1 + 86 <= MAX_TOKEN_LEN);
const _: () = assert!(MAX_TOKEN_LEN + 64 <= crate::tunnel::frame::MAX_CONTROL);
/// Clock skew tolerated on `iat` (seconds).
pub const CLOCK_LEEWAY_SECS: i64 = 30;
/// Longest lifetime a token may have to start a session (seconds).
pub const MAX_LIFETIME_SECS: i64 = 60;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Run a command.
    Exec,
    /// An interactive shell.
    Shell,
    /// Port forwarding.
    Forward,
    /// File copy.
    Copy,
    /// File sync.
    Sync,
    /// The device's Docker (or Podman) API socket.
    Docker,
    /// Read logs: the runtime's own, a systemd unit's, a container's.
    Logs,
    /// Live metrics samples.
    Metrics,
    /// A serial port.
    Serial,
    /// The device's health report.
    Status,
    /// List a directory.
    List,
    /// An SSH connection to the device's embedded SSH server (`m87 ssh-proxy`, for OpenSSH).
    Ssh,
}

impl Operation {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Exec => "exec",
            Operation::Shell => "shell",
            Operation::Forward => "forward",
            Operation::Copy => "copy",
            Operation::Sync => "sync",
            Operation::Docker => "docker",
            Operation::Logs => "logs",
            Operation::Metrics => "metrics",
            Operation::Serial => "serial",
            Operation::Status => "status",
            Operation::List => "list",
            Operation::Ssh => "ssh",
        }
    }

    /// Whether the operation only reads the device's state (status, metrics): organization
    /// viewers may use these; every other operation needs an operator (see
    /// `docs/operations.md`).
    pub fn read_only(self) -> bool {
        matches!(self, Operation::Status | Operation::Metrics)
    }
}

/// The credential a session was granted through: revoking it ends the session and refuses its
/// unused tokens.
///
/// Only API keys are revocable in m87. An OIDC sign-in carries no credential: the provider's
/// access tokens are short-lived and m87 has no event that ends a provider session; the access
/// check by subject applies to them as to every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// A user API key, by id.
    ApiKey(KeyId),
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ApiKey(k) => write!(f, "api key {k}"),
        }
    }
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionClaims {
    /// The session.
    pub sid: SessionId,
    /// Who asked (for example `user:alice@example.com`).
    pub sub: String,
    /// The device.
    pub dev: DeviceId,
    /// The operation.
    pub op: Operation,
    /// Its arguments as recorded (command line, ports, paths).
    pub args: serde_json::Value,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// The session must start before this (Unix seconds).
    pub exp: i64,
    /// The credential the grant came through (absent for OIDC sign-ins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cred: Option<Credential>,
    /// Whether the device records the session's terminal (shell, `exec -t`) and uploads it
    /// (absent, so false, in tokens that grant no recording: older tokens read the same).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rec: bool,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the token's shape, or too long.
    #[error("malformed session token")]
    Malformed,
    /// The signature does not match (tampered, or signed by another key).
    #[error("session token signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("session token expired")]
    Expired,
    /// Issued in the future, or living longer than allowed.
    #[error("session token is not valid yet")]
    NotYetValid,
    /// For another device.
    #[error("session token is for another device")]
    WrongDevice,
}

impl TokenError {
    /// A stable code for refusals.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::BadSignature => "token_invalid",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongDevice => "token_wrong_device",
        }
    }
}

/// The control plane's signing key.
pub struct SessionSigner {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for SessionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSigner").finish_non_exhaustive()
    }
}

/// Why a signing key could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid session signing key")]
pub struct KeyError;

impl SessionSigner {
    /// A new key pair; returns the signer and its PKCS#8 document to store.
    pub fn generate() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError)?;
        let signer = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((signer, pkcs8.as_ref().to_vec()))
    }

    /// Loads a stored key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|key| Self { key })
            .map_err(|_| KeyError)
    }

    /// The public key, base64url.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.public_key().as_ref())
    }

    /// A verifier for this key.
    pub fn verifier(&self) -> SessionVerifier {
        SessionVerifier {
            public_key: self.key.public_key().as_ref().to_vec(),
        }
    }

    /// Signs arbitrary bytes (the release manifest, [`crate::release`], which puts its own
    /// context string in front so a signature is never valid for another kind of message).
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).as_ref().to_vec()
    }

    /// Signs `claims` into a token.
    pub fn sign(&self, claims: &SessionClaims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let sig = self.key.sign(body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// Verifies tokens with the control plane's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionVerifier {
    public_key: Vec<u8>,
}

impl SessionVerifier {
    /// The public key, base64url, as [`SessionVerifier::from_public_key`] reads it.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public_key)
    }

    /// From a base64url public key, as the control plane publishes it.
    pub fn from_public_key(b64: &str) -> Result<Self, KeyError> {
        let public_key = URL_SAFE_NO_PAD.decode(b64.trim()).map_err(|_| KeyError)?;
        if public_key.len() != 32 {
            return Err(KeyError);
        }
        Ok(Self { public_key })
    }

    /// Whether `signature` is this key's Ed25519 signature of `message` (see
    /// [`SessionSigner::sign_bytes`]).
    pub fn verify_bytes(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }

    /// Checks signature, lifetime and (when given) the device; returns the claims.
    pub fn verify(
        &self,
        token: &str,
        now_unix: i64,
        device: Option<&DeviceId>,
    ) -> Result<SessionClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(body.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: SessionClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if now_unix >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.iat > now_unix + CLOCK_LEEWAY_SECS || claims.exp - claims.iat > MAX_LIFETIME_SECS
        {
            return Err(TokenError::NotYetValid);
        }
        if let Some(d) = device
            && *d != claims.dev
        {
            return Err(TokenError::WrongDevice);
        }
        Ok(claims)
    }
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> SessionClaims {
        SessionClaims {
            sid: SessionId::new(),
            sub: "user:a@example.com".into(),
            dev: "device-0001".parse().unwrap(),
            op: Operation::Exec,
            args: serde_json::json!({"argv": ["true"]}),
            iat: now,
            exp: now + 60,
            cred: Some(Credential::ApiKey(KeyId::new())),
            rec: false,
        }
    }

    #[test]
    fn valid_token_verifies_offline_with_the_public_key() {
        let (signer, pkcs8) = SessionSigner::generate().unwrap();
        let verifier = SessionVerifier::from_public_key(&signer.public_key()).unwrap();
        let c = claims(1000);
        let token = signer.sign(&c);
        assert_eq!(verifier.verify(&token, 1001, Some(&c.dev)).unwrap(), c);
        let reloaded = SessionSigner::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(reloaded.public_key(), signer.public_key());
    }

    #[test]
    fn bad_tokens_are_refused() {
        let (signer, _) = SessionSigner::generate().unwrap();
        let (other, _) = SessionSigner::generate().unwrap();
        let v = signer.verifier();
        let c = claims(1000);
        let token = signer.sign(&c);
        assert_eq!(
            v.verify(&token, 1060, None).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            v.verify(&token, 5000, None).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            v.verify(&token, 1001, Some(&"device-0002".parse().unwrap()))
                .unwrap_err(),
            TokenError::WrongDevice
        );
        assert_eq!(
            v.verify(&other.sign(&c), 1001, None).unwrap_err(),
            TokenError::BadSignature
        );
        // Tampered claims keep the old signature.
        let (_, sig) = token.split_once('.').unwrap();
        let mut evil = c.clone();
        evil.op = Operation::Shell;
        let evil_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap());
        assert_eq!(
            v.verify(&format!("{evil_body}.{sig}"), 1001, None)
                .unwrap_err(),
            TokenError::BadSignature
        );
        for garbage in ["", "abc", "a.b", "....", &"x".repeat(5000)] {
            assert!(matches!(
                v.verify(garbage, 1001, None),
                Err(TokenError::Malformed | TokenError::BadSignature)
            ));
        }
        let mut long = claims(1000);
        long.exp = 1000 + 3600;
        assert_eq!(
            v.verify(&signer.sign(&long), 1001, None).unwrap_err(),
            TokenError::NotYetValid
        );
        let future = claims(2000);
        assert_eq!(
            v.verify(&signer.sign(&future), 1000, None).unwrap_err(),
            TokenError::NotYetValid
        );
    }

    #[test]
    fn the_largest_grant_fits_in_a_token() {
        let (signer, _) = SessionSigner::generate().unwrap();
        let mut c = claims(1000);
        // The longest email, of characters JSON escapes.
        c.sub = format!("user:{}@{}.example", "\"".repeat(64), "b".repeat(181));
        c.dev = "d".repeat(64).parse().unwrap_or(c.dev);
        // Arguments of exactly the largest size a grant accepts, made of characters JSON
        // escapes in the claims no differently than in the grant's check.
        let filler = MAX_ARGS_BYTES - r#"{"argv":["echo",""]}"#.len();
        c.args = serde_json::json!({"argv": ["echo", "x".repeat(filler)]});
        assert_eq!(serde_json::to_vec(&c.args).unwrap().len(), MAX_ARGS_BYTES);
        let token = signer.sign(&c);
        assert!(token.len() <= MAX_TOKEN_LEN, "{} bytes", token.len());
        assert_eq!(signer.verifier().verify(&token, 1001, None).unwrap(), c);
    }

    #[test]
    fn the_credential_is_optional_on_the_wire() {
        let (signer, _) = SessionSigner::generate().unwrap();
        let mut c = claims(1000);
        c.cred = None;
        let token = signer.sign(&c);
        let (body, _) = token.split_once('.').unwrap();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        assert!(!json.contains("cred"), "{json}");
        assert_eq!(signer.verifier().verify(&token, 1001, None).unwrap(), c);
        let with_key = claims(1000);
        let json = serde_json::to_value(&with_key).unwrap();
        assert!(json["cred"]["api_key"].is_string(), "{json}");
    }
}
