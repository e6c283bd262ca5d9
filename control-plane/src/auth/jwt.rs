//! The validator: checks a bearer JWT against the provider's keys and the configuration.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use m87_events::Email;
use serde_json::{Map, Value};

use super::jwks::{FetchError, KeySet, ProviderMetadata, get_json};
use super::{JwtError, OidcConfig};

/// The signature algorithms a token may use. Never `none`, never an HMAC algorithm: with an
/// asymmetric provider, an HMAC "signature" could be made by anyone holding the public key.
pub const ALLOWED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
];

/// Tokens longer than this are refused unread.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Emails learned from userinfo kept at most (one per subject).
const MAX_CACHED_EMAILS: usize = 10_000;

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaims {
    /// The provider's stable id of the user (`sub`).
    pub sub: String,
    /// The user's email, verified by the provider (trimmed, lowercased).
    pub email: Email,
    /// Always `true`: a token without a verified email is refused.
    pub email_verified: bool,
    /// Whether the email came from the provider's userinfo endpoint rather than the token.
    pub email_from_userinfo: bool,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, in seconds since the Unix epoch, when the token tells.
    pub iat: Option<u64>,
    /// The issuer (`iss`), as validated.
    pub issuer: String,
    /// The OAuth client the token was issued to (`client_id`, or else `azp`), when it tells.
    pub client_id: Option<String>,
    /// The granted scopes (`scope`, space-separated, or `scp` as a list).
    pub scopes: Vec<String>,
    /// The token's id (`jti`), when it has one.
    pub jti: Option<String>,
    /// The id of the key that signed it (`kid`), when it names one.
    pub kid: Option<String>,
}

/// Validates the provider's JWT access tokens; cheap to share (`Arc`) between requests.
pub struct JwtValidator {
    config: OidcConfig,
    /// The issuer exactly as the provider's metadata names it.
    issuer: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// When the key set was last (re)fetched after the first fetch; serializes refetches.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    /// Emails learned from userinfo, per subject, with when they were learned.
    emails: Mutex<HashMap<String, (Email, Instant)>>,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtValidator")
            .field("issuer", &self.issuer)
            .field("audience", &self.config.audience)
            .field("jwks_uri", &self.jwks_uri)
            .field("userinfo_endpoint", &self.userinfo_endpoint)
            .finish_non_exhaustive()
    }
}

/// Why the key set is being refetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refetch {
    /// A token names a key the cache does not hold.
    UnknownKey,
    /// The cached set is older than the configured maximum age.
    Stale,
}

impl JwtValidator {
    /// Discovers the provider named by `config.issuer` and fetches its key set.
    ///
    /// Fails with [`JwtError::Provider`] when the provider cannot be reached or answers
    /// nonsense, and with [`JwtError::Config`] when its metadata names another issuer.
    pub async fn new(config: OidcConfig) -> Result<Self, JwtError> {
        // One TLS provider (ring) for the whole process; a second install is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout.min(std::time::Duration::from_secs(5)))
            .user_agent(concat!("m87-control-plane/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JwtError::Config(format!("cannot build the HTTP client: {e}")))?;

        let configured = config.issuer.trim_end_matches('/');
        if configured.is_empty() {
            return Err(JwtError::Config("the issuer URL is empty".into()));
        }
        let discovery_url = format!("{configured}/.well-known/openid-configuration");
        let metadata: ProviderMetadata = get_json(&http, &discovery_url, None).await?;
        if metadata.issuer.trim_end_matches('/') != configured {
            return Err(JwtError::Config(format!(
                "the provider at {configured} names its issuer {:?}",
                metadata.issuer
            )));
        }
        let keys = fetch_keys(&http, &metadata.jwks_uri).await?;
        tracing::info!(
            issuer = %metadata.issuer,
            keys = keys.by_kid.len() + keys.without_kid.len(),
            "oidc provider discovered"
        );
        Ok(Self {
            config,
            issuer: metadata.issuer,
            jwks_uri: metadata.jwks_uri,
            userinfo_endpoint: metadata.userinfo_endpoint,
            http,
            keys: RwLock::new(Arc::new(keys)),
            last_refetch: tokio::sync::Mutex::new(None),
            emails: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration this validator was made with.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The issuer tokens must carry, as the provider's metadata names it.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The ids of the signing keys currently cached, sorted (diagnostics and tests).
    pub fn known_key_ids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.current_keys().by_kid.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Checks a bearer token and returns what it says about its bearer.
    ///
    /// In order: shape and header; the algorithm against [`ALLOWED_ALGORITHMS`] and the key;
    /// the signature with the key named by `kid` (refetching the key set once if the key is
    /// unknown, rate limited); `exp`, `nbf` (with the leeway), `iss` and `aud`; then the verified
    /// email (from the token, or else from userinfo when enabled).
    pub async fn validate(&self, token: &str) -> Result<VerifiedClaims, JwtError> {
        let header = parse_header(token)?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg.as_str()) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let alg = Algorithm::from_str(&header.alg).map_err(|_| JwtError::AlgorithmNotAllowed)?;
        let kid = header.kid.as_deref();

        let mut keys = self.current_keys();
        if keys.fetched_at.elapsed() >= self.config.jwks_max_age {
            keys = self
                .refetch_keys(&keys, Refetch::Stale)
                .await
                .unwrap_or(keys);
        }
        if keys.find(kid, alg).is_none() {
            keys = self.refetch_keys(&keys, Refetch::UnknownKey).await?;
        }
        let key = keys.find(kid, alg).ok_or(JwtError::UnknownKey)?;
        if !key.fits(alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }

        let mut validation = Validation::new(alg);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(map_jwt_error)?;
        let claims = data.claims;

        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(JwtError::Malformed),
        };
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(JwtError::Malformed)?;
        let (email, email_from_userinfo) = self.verified_email(token, &sub, &claims).await?;

        Ok(VerifiedClaims {
            email,
            email_verified: true,
            email_from_userinfo,
            exp,
            iat: claims.get("iat").and_then(numeric_date),
            issuer: self.issuer.clone(),
            client_id: string_claim(&claims, "client_id").or_else(|| string_claim(&claims, "azp")),
            scopes: scopes(&claims),
            jti: string_claim(&claims, "jti"),
            kid: header.kid,
            sub,
        })
    }

    fn current_keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Refetches the key set unless another task just did, or the last refetch was less than
    /// the refetch interval ago. Answers the key set to use now.
    async fn refetch_keys(
        &self,
        seen: &Arc<KeySet>,
        why: Refetch,
    ) -> Result<Arc<KeySet>, JwtError> {
        let mut last = self.last_refetch.lock().await;
        let current = self.current_keys();
        if !Arc::ptr_eq(&current, seen) {
            // Refetched while this task waited for the lock.
            return Ok(current);
        }
        if last.is_some_and(|at| at.elapsed() < self.config.jwks_refetch_interval) {
            return Ok(current);
        }
        *last = Some(Instant::now());
        tracing::debug!(?why, jwks_uri = %self.jwks_uri, "refetching the provider's key set");
        match fetch_keys(&self.http, &self.jwks_uri).await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&fresh);
                Ok(fresh)
            }
            Err(e) => {
                tracing::warn!(error = %e, ?why, "could not refetch the provider's key set");
                match why {
                    Refetch::Stale => Ok(current),
                    Refetch::UnknownKey => Err(e),
                }
            }
        }
    }

    /// The verified email: from the token when it carries one marked verified, else (when
    /// enabled) from the provider's userinfo endpoint.
    async fn verified_email(
        &self,
        token: &str,
        sub: &str,
        claims: &Map<String, Value>,
    ) -> Result<(Email, bool), JwtError> {
        let email = claims.get("email").and_then(Value::as_str);
        let verified = claims.get("email_verified").and_then(truthy);
        match (email, verified) {
            (Some(email), Some(true)) => Ok((parse_email(email)?, false)),
            (Some(_), Some(false)) => Err(JwtError::EmailNotVerified),
            _ => match (&self.userinfo_endpoint, self.config.userinfo_fallback) {
                (Some(endpoint), true) => {
                    Ok((self.email_from_userinfo(endpoint, token, sub).await?, true))
                }
                _ if email.is_some() => Err(JwtError::EmailNotVerified),
                _ => Err(JwtError::MissingEmail),
            },
        }
    }

    async fn email_from_userinfo(
        &self,
        endpoint: &str,
        token: &str,
        sub: &str,
    ) -> Result<Email, JwtError> {
        let ttl = self.config.userinfo_cache_ttl;
        if let Some((email, at)) = self.emails().get(sub)
            && at.elapsed() < ttl
        {
            return Ok(email.clone());
        }
        let info: Map<String, Value> = match get_json(&self.http, endpoint, Some(token)).await {
            Ok(info) => info,
            // The provider does not let this token read userinfo: nothing vouches for an email.
            Err(FetchError::Status(status, _)) if status.is_client_error() => {
                return Err(JwtError::MissingEmail);
            }
            Err(e) => return Err(e.into()),
        };
        if info.get("sub").and_then(Value::as_str) != Some(sub) {
            tracing::warn!("userinfo answered for another subject than the token's");
            return Err(JwtError::MissingEmail);
        }
        let email = info
            .get("email")
            .and_then(Value::as_str)
            .ok_or(JwtError::MissingEmail)?;
        if info.get("email_verified").and_then(truthy) != Some(true) {
            return Err(JwtError::EmailNotVerified);
        }
        let email = parse_email(email)?;
        let mut cache = self.emails();
        if cache.len() >= MAX_CACHED_EMAILS {
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHED_EMAILS {
                cache.clear();
            }
        }
        cache.insert(sub.to_owned(), (email.clone(), Instant::now()));
        Ok(email)
    }

    fn emails(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Email, Instant)>> {
        self.emails.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn fetch_keys(http: &reqwest::Client, jwks_uri: &str) -> Result<KeySet, JwtError> {
    let doc: Value = get_json(http, jwks_uri, None).await?;
    KeySet::parse(&doc)
}

/// The parts of the JOSE header the validator decides on before any cryptography.
#[derive(Debug)]
struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

fn parse_header(token: &str) -> Result<TokenHeader, JwtError> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(JwtError::Malformed);
    }
    // Garbage is "malformed", whatever its signature: the claims must be a JSON object and the
    // signature base64url (it may be empty here; `alg: none` is refused by the caller).
    let claims = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| JwtError::Malformed)?;
    if !matches!(
        serde_json::from_slice::<Value>(&claims),
        Ok(Value::Object(_))
    ) {
        return Err(JwtError::Malformed);
    }
    if URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err(JwtError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtError::Malformed)?;
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(JwtError::Malformed);
    };
    // No critical header extension is understood here, so a token that has one is refused
    // (RFC 7515, section 4.1.11).
    if header.contains_key("crit") {
        return Err(JwtError::Malformed);
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(JwtError::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    Ok(TokenHeader { alg, kid })
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> JwtError {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => JwtError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => JwtError::WrongAudience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => JwtError::AlgorithmNotAllowed,
        _ => JwtError::Malformed,
    }
}

fn parse_email(email: &str) -> Result<Email, JwtError> {
    Email::from_str(email).map_err(|_| JwtError::InvalidEmail)
}

/// `true`/`false`, also as the strings some providers send.
fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// A NumericDate: seconds since the epoch, possibly with a fraction.
fn numeric_date(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => s.split_whitespace().map(str::to_owned).collect(),
        (_, Some(Value::Array(items))) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        (_, Some(Value::String(s))) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn header_shapes_are_checked_before_anything_else() {
        assert_eq!(parse_header("").unwrap_err(), JwtError::Malformed);
        assert_eq!(parse_header("abc").unwrap_err(), JwtError::Malformed);
        assert_eq!(parse_header("a.b").unwrap_err(), JwtError::Malformed);
        assert_eq!(parse_header("a.b.c.d").unwrap_err(), JwtError::Malformed);
        assert_eq!(parse_header("!!.b.c").unwrap_err(), JwtError::Malformed);
        let not_object = format!("{}.e30.", b64(&serde_json::json!([1])));
        assert_eq!(parse_header(&not_object).unwrap_err(), JwtError::Malformed);
        let no_alg = format!("{}.e30.", b64(&serde_json::json!({"kid": "k"})));
        assert_eq!(parse_header(&no_alg).unwrap_err(), JwtError::Malformed);
        let crit = format!(
            "{}.e30.sig",
            b64(&serde_json::json!({"alg": "RS256", "crit": ["exp"]}))
        );
        assert_eq!(parse_header(&crit).unwrap_err(), JwtError::Malformed);
        let ok = format!(
            "{}.e30.",
            b64(&serde_json::json!({"alg": "none", "kid": "k1"}))
        );
        let header = parse_header(&ok).unwrap();
        assert_eq!(header.alg, "none");
        assert_eq!(header.kid.as_deref(), Some("k1"));
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(parse_header(&huge).unwrap_err(), JwtError::Malformed);
    }

    #[test]
    fn only_asymmetric_algorithms_are_allowed() {
        for alg in ["none", "None", "HS256", "HS384", "HS512", "RSA-OAEP", ""] {
            assert!(!ALLOWED_ALGORITHMS.contains(&alg), "{alg}");
        }
        for alg in ALLOWED_ALGORITHMS {
            let parsed = Algorithm::from_str(alg).unwrap();
            assert_ne!(parsed.family(), jsonwebtoken::AlgorithmFamily::Hmac);
        }
    }

    #[test]
    fn scopes_and_dates_are_read_leniently() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "scope": "openid  email",
        }))
        .unwrap();
        assert_eq!(scopes(&claims), ["openid", "email"]);
        let claims: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"scp": ["a", "b"]})).unwrap();
        assert_eq!(scopes(&claims), ["a", "b"]);
        assert_eq!(numeric_date(&serde_json::json!(12)), Some(12));
        assert_eq!(numeric_date(&serde_json::json!(12.7)), Some(12));
        assert_eq!(numeric_date(&serde_json::json!(-1)), None);
        assert_eq!(numeric_date(&serde_json::json!("12")), None);
        assert_eq!(truthy(&serde_json::json!("true")), Some(true));
        assert_eq!(truthy(&serde_json::json!(1)), None);
    }

    #[test]
    fn messages_are_fit_for_a_401_body() {
        assert_eq!(JwtError::Expired.to_string(), "token expired");
        assert_eq!(JwtError::NotYetValid.to_string(), "token not yet valid");
        assert_eq!(JwtError::WrongIssuer.to_string(), "wrong issuer");
        assert_eq!(JwtError::WrongAudience.to_string(), "wrong audience");
        assert_eq!(JwtError::BadSignature.to_string(), "bad signature");
        assert_eq!(
            JwtError::AlgorithmNotAllowed.to_string(),
            "algorithm not allowed"
        );
        assert_eq!(JwtError::UnknownKey.to_string(), "unknown signing key");
        assert_eq!(JwtError::Malformed.to_string(), "malformed token");
        assert_eq!(JwtError::EmailNotVerified.to_string(), "email not verified");
        assert!(!JwtError::Expired.is_server_side());
        assert!(JwtError::Provider("x".into()).is_server_side());
    }
}
