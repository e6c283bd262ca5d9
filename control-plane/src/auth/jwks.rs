//! The provider's metadata and its signing keys: fetching (size- and time-bounded) and turning a
//! JSON Web Key Set into verification keys.

use std::collections::HashMap;
use std::time::Instant;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::JwtError;

/// The largest metadata, key set or userinfo document we read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The parts of `/.well-known/openid-configuration` the validator uses.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
}

/// One verification key from the provider's key set.
pub(super) struct VerificationKey {
    pub key: DecodingKey,
    pub family: AlgorithmFamily,
    /// The key's `alg`, when the key set names one: tokens must then use exactly that.
    pub alg: Option<Algorithm>,
    /// For EC keys, the one algorithm that fits the curve.
    pub curve_alg: Option<Algorithm>,
}

impl VerificationKey {
    /// Whether a token signed with `alg` may be verified with this key.
    pub fn fits(&self, alg: Algorithm) -> bool {
        alg.family() == self.family
            && self.alg.is_none_or(|a| a == alg)
            && self.curve_alg.is_none_or(|a| a == alg)
    }
}

/// The provider's signing keys, by key id, as fetched at one moment.
pub(super) struct KeySet {
    pub by_kid: HashMap<String, VerificationKey>,
    /// Keys published without a `kid`; used only for tokens without one.
    pub without_kid: Vec<VerificationKey>,
    pub fetched_at: Instant,
}

impl KeySet {
    /// The key for a token's `kid`; for a token without one, the only key without a kid that
    /// fits its algorithm (or the only key of the set that does).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerificationKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => {
                let mut fitting = self
                    .without_kid
                    .iter()
                    .chain(self.by_kid.values())
                    .filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
    }

    /// Parses a JSON Web Key Set. Keys that cannot verify signatures for us (encryption keys,
    /// symmetric keys, unknown key types or curves) are skipped, not fatal.
    pub fn parse(doc: &serde_json::Value) -> Result<Self, JwtError> {
        let keys = doc
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| JwtError::Provider("key set has no \"keys\" array".into()))?;
        let mut by_kid = HashMap::new();
        let mut without_kid = Vec::new();
        for raw in keys {
            let jwk: Jwk = match serde_json::from_value(raw.clone()) {
                Ok(jwk) => jwk,
                Err(e) => {
                    tracing::debug!(error = %e, "skipping a key the validator cannot read");
                    continue;
                }
            };
            let Some(key) = verification_key(&jwk) else {
                continue;
            };
            match jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid, key);
                }
                None => without_kid.push(key),
            }
        }
        Ok(Self {
            by_kid,
            without_kid,
            fetched_at: Instant::now(),
        })
    }
}

fn verification_key(jwk: &Jwk) -> Option<VerificationKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
        Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
        Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::ES384) => Some(Algorithm::ES384),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        // HMAC and encryption algorithms never verify an access token here.
        Some(_) => return None,
    };
    let (family, curve_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, None),
            _ => return None,
        },
        // Symmetric keys in a public key set are a provider mistake; never use them.
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerificationKey {
        key,
        family,
        alg,
        curve_alg,
    })
}

/// Why a GET of a provider document failed.
#[derive(Debug)]
pub(super) enum FetchError {
    /// The provider answered with this non-success status.
    Status(reqwest::StatusCode, String),
    /// Network failure, timeout, oversized or unparsable answer.
    Failed(String),
}

impl From<FetchError> for JwtError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Status(_, m) | FetchError::Failed(m) => JwtError::Provider(m),
        }
    }
}

/// GETs a JSON document: 2xx only, at most [`MAX_DOCUMENT_BYTES`].
pub(super) async fn get_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
) -> Result<T, FetchError> {
    let mut request = http.get(url).header("accept", "application/json");
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let failed = |e: reqwest::Error| FetchError::Failed(format!("GET {url}: {}", error_chain(&e)));
    let mut response = request.send().await.map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status(
            status,
            format!("GET {url}: HTTP {status}"),
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::Failed(format!(
                "GET {url}: answer is larger than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| FetchError::Failed(format!("GET {url}: unexpected answer: {e}")))
}

/// An error and its causes on one line (reqwest's own message hides the interesting part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
