//! Session tokens: short-lived, Ed25519-signed grants for one operation on one device.
//!
//! The control plane signs; relays and agents verify offline with the public key only, so a
//! relay cannot invent a session. A token is `base64url(claims JSON) "." base64url(signature)`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{DeviceId, SessionId};

/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 4096;
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
}
