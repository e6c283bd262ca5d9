//! The OpenID Connect side of `m87 login`: discovery, the device authorization grant (RFC 8628),
//! refreshing tokens, and revoking them (RFC 7009).
//!
//! PKCE: RFC 8628 has no PKCE step (the device code never passes through a browser redirect,
//! which is what PKCE protects), and the `openidconnect`/`oauth2` crates offer no PKCE for the
//! device grant, so none is sent even when the provider advertises
//! `code_challenge_methods_supported`.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use m87_transport::credentials::OAuthCredentials;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreErrorResponseType, CoreGenderClaim, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreSubjectIdentifierType, CoreTokenIntrospectionResponse,
    CoreTokenType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, Client, ClientId, DeviceAuthorizationUrl,
    DeviceCodeErrorResponseType, DiscoveryError, EmptyAdditionalClaims, EndpointNotSet,
    ExtraTokenFields, IdTokenFields, IssuerUrl, JsonWebKeySet, OAuth2TokenResponse,
    ProviderMetadata, RefreshToken, RequestTokenError, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use super::http::OidcHttp;

/// The scopes `m87 login` asks for, besides `openid` (which the crate always adds).
const SCOPES: [&str; 3] = ["offline_access", "email", "profile"];

/// RFC 8628's default polling interval, for providers that name none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Discovery metadata the core OIDC type does not carry.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct ExtraMetadata {
    /// RFC 8628.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
    /// RFC 7009 (in the discovery document per RFC 8414).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revocation_endpoint: Option<String>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// Token response fields some providers add: when the refresh token expires (Keycloak says
/// `refresh_expires_in`, Microsoft and GitHub `refresh_token_expires_in`; most say nothing).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct RefreshExpiry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token_expires_in: Option<u64>,
}
impl ExtraTokenFields for RefreshExpiry {}

type Tokens = StandardTokenResponse<
    IdTokenFields<
        EmptyAdditionalClaims,
        RefreshExpiry,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

/// The core client with [`Tokens`] as its token response.
type OidcClient<
    HasAuthUrl = EndpointNotSet,
    HasDeviceAuthUrl = EndpointNotSet,
    HasIntrospectionUrl = EndpointNotSet,
    HasRevocationUrl = EndpointNotSet,
    HasTokenUrl = EndpointNotSet,
    HasUserInfoUrl = EndpointNotSet,
> = Client<
    EmptyAdditionalClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    HasAuthUrl,
    HasDeviceAuthUrl,
    HasIntrospectionUrl,
    HasRevocationUrl,
    HasTokenUrl,
    HasUserInfoUrl,
>;

/// Whom to ask for tokens, and for what.
#[derive(Debug, Clone)]
pub struct Target {
    /// The issuer URL.
    pub issuer: String,
    /// The public client's id.
    pub client_id: String,
    /// The API audience, sent as the `resource` parameter (RFC 8707) when set.
    pub audience: Option<String>,
}

/// What the person has to do to approve the sign-in.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Where to go.
    pub verification_uri: String,
    /// The same with the code filled in, if the provider offers one.
    pub verification_uri_complete: Option<String>,
    /// The code to enter.
    pub user_code: String,
    /// How long the code is good for.
    pub expires_in: Duration,
}

/// Whether `url` may carry credentials: `https://`, or `http://` to this machine only.
pub fn is_acceptable_endpoint(url: &str) -> bool {
    let Ok(parsed) = openidconnect::url::Url::parse(url) else {
        return false;
    };
    match parsed.scheme() {
        "https" => true,
        "http" => match parsed.host() {
            Some(openidconnect::url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(openidconnect::url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(openidconnect::url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

fn describe_discovery(issuer: &str, err: DiscoveryError<super::http::HttpError>) -> String {
    match err {
        DiscoveryError::Request(e) => format!("cannot reach the sign-in provider {issuer}: {e}"),
        DiscoveryError::Response(status, _, _) => format!(
            "the sign-in provider {issuer} answered {status} for its discovery document \
             (.well-known/openid-configuration)"
        ),
        DiscoveryError::Parse(e) => {
            format!("the sign-in provider {issuer} has an invalid discovery document: {e}")
        }
        DiscoveryError::Validation(e) => format!("the sign-in provider {issuer}: {e}"),
        DiscoveryError::UrlParse(e) => format!("invalid issuer URL {issuer:?}: {e}"),
        DiscoveryError::Other(e) => format!("discovering the sign-in provider {issuer}: {e}"),
        _ => format!("discovering the sign-in provider {issuer} failed"),
    }
}

fn describe_oauth_error(error: &dyn std::fmt::Display, description: Option<&String>) -> String {
    match description {
        Some(d) if !d.trim().is_empty() => format!("{error} ({})", d.trim()),
        _ => error.to_string(),
    }
}

/// The expiry of a JWT access token (its `exp` claim), read without verifying it: only to know
/// when to refresh, for providers that do not send `expires_in`.
fn jwt_expiry(token: &str) -> Option<DateTime<Utc>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    DateTime::from_timestamp(claims.get("exp")?.as_i64()?, 0)
}

fn after(now: DateTime<Utc>, seconds: u64) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from(seconds).ok()?;
    now.checked_add_signed(chrono::TimeDelta::try_seconds(seconds)?)
}

/// The stored session for a token answer; `previous` supplies what a refresh answer may omit
/// (the refresh token when the provider does not rotate it).
fn session_from(
    tokens: &Tokens,
    previous: &OAuthCredentials,
    now: DateTime<Utc>,
) -> OAuthCredentials {
    let access_token = tokens.access_token().secret().clone();
    let expires_at = match tokens.expires_in() {
        Some(d) => after(now, d.as_secs()),
        None => jwt_expiry(&access_token),
    };
    let rotated = tokens.refresh_token().map(|t| t.secret().clone());
    let extra = tokens.extra_fields().extra_fields();
    let refresh_expires_at = extra
        .refresh_token_expires_in
        .or(extra.refresh_expires_in)
        // Keycloak says 0 for refresh tokens that do not expire.
        .filter(|s| *s > 0)
        .and_then(|s| after(now, s));
    OAuthCredentials {
        access_token,
        refresh_expires_at: match (&rotated, refresh_expires_at) {
            (_, Some(t)) => Some(t),
            (Some(_), None) => None,
            (None, None) => previous.refresh_expires_at,
        },
        refresh_token: rotated.or_else(|| previous.refresh_token.clone()),
        expires_at,
        updated_at: now,
        ..previous.clone()
    }
}

/// Signs in with the device authorization grant: discovers the provider, asks for a device
/// code, shows `prompt`, and polls until the person approves (or denies, or the code expires).
/// `poll_every`, when set, replaces the provider's interval (tests); `slow_down` still adds 5 s.
/// Returns the new session for `api_url`.
pub async fn device_sign_in(
    http: &OidcHttp,
    target: &Target,
    api_url: &str,
    poll_every: Option<Duration>,
    prompt: impl FnOnce(&Prompt),
) -> anyhow::Result<OAuthCredentials> {
    let issuer_url = IssuerUrl::new(target.issuer.clone())
        .map_err(|e| anyhow::anyhow!("invalid issuer URL {:?}: {e}", target.issuer))?;
    anyhow::ensure!(
        is_acceptable_endpoint(issuer_url.as_str()),
        "the sign-in provider {} must use https:// (http:// only on this machine)",
        target.issuer
    );
    let metadata = Metadata::discover_async(issuer_url, http)
        .await
        .map_err(|e| anyhow::anyhow!(describe_discovery(&target.issuer, e)))?;
    let Some(device_endpoint) = metadata
        .additional_metadata()
        .device_authorization_endpoint
        .clone()
    else {
        anyhow::bail!(
            "the sign-in provider {} does not offer the device authorization grant \
             (no device_authorization_endpoint in its discovery document)",
            target.issuer
        );
    };
    let Some(token_endpoint) = metadata.token_endpoint().cloned() else {
        anyhow::bail!(
            "the sign-in provider {} has no token endpoint",
            target.issuer
        );
    };
    for (what, url) in [
        ("device authorization", device_endpoint.as_str()),
        ("token", token_endpoint.as_str()),
    ] {
        anyhow::ensure!(
            is_acceptable_endpoint(url),
            "the sign-in provider's {what} endpoint {url} must use https://"
        );
    }
    let revocation_endpoint = metadata
        .additional_metadata()
        .revocation_endpoint
        .clone()
        .filter(|u| is_acceptable_endpoint(u));
    let client_id = ClientId::new(target.client_id.clone());
    // A public client: no secret, the client id travels in the form body.
    let client = OidcClient::from_provider_metadata(metadata, client_id, None)
        .set_auth_type(AuthType::RequestBody)
        .set_device_authorization_url(device_endpoint)
        .set_token_uri(token_endpoint.clone());

    let mut request = client
        .exchange_device_code()
        .add_scopes(SCOPES.iter().map(|s| Scope::new((*s).to_owned())));
    if let Some(audience) = &target.audience {
        request = request.add_extra_param("resource", audience.as_str());
    }
    let details: CoreDeviceAuthorizationResponse =
        request.request_async(http).await.map_err(|e| match e {
            RequestTokenError::ServerResponse(e) => anyhow::anyhow!(
                "the sign-in provider refused to start a sign-in: {}",
                describe_oauth_error(e.error(), e.error_description())
            ),
            RequestTokenError::Request(e) => anyhow::anyhow!("{e}"),
            RequestTokenError::Parse(e, _) => anyhow::anyhow!(
                "unexpected answer from the sign-in provider's device authorization endpoint: {e}"
            ),
            RequestTokenError::Other(e) => anyhow::anyhow!("starting the sign-in: {e}"),
        })?;

    prompt(&Prompt {
        verification_uri: details.verification_uri().to_string(),
        verification_uri_complete: details
            .verification_uri_complete()
            .map(|u| u.secret().clone()),
        user_code: details.user_code().secret().clone(),
        expires_in: details.expires_in(),
    });

    // The crate polls at the provider's interval (RFC 8628's 5 s when it names none) and adds
    // 5 s on `slow_down`; an override keeps those additions.
    let base = details.interval();
    let base = if base.is_zero() {
        DEFAULT_INTERVAL
    } else {
        base
    };
    let sleep = move |interval: Duration| {
        let wait = match poll_every {
            Some(every) => every + interval.saturating_sub(base),
            None => interval.max(base),
        };
        tokio::time::sleep(wait)
    };
    let mut poll = client.exchange_device_access_token(&details);
    if let Some(audience) = &target.audience {
        poll = poll.add_extra_param("resource", audience.as_str());
    }
    let tokens: Tokens = poll
        .request_async(http, sleep, None)
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(e) => match e.error() {
                DeviceCodeErrorResponseType::ExpiredToken => anyhow::anyhow!(
                    "the sign-in code expired before it was approved: run `m87 login` again"
                ),
                DeviceCodeErrorResponseType::AccessDenied => {
                    anyhow::anyhow!("the sign-in was denied at the provider")
                }
                other => anyhow::anyhow!(
                    "the sign-in failed at the provider: {}",
                    describe_oauth_error(other, e.error_description())
                ),
            },
            RequestTokenError::Request(e) => anyhow::anyhow!("{e}"),
            // Never show the body: it may hold tokens.
            RequestTokenError::Parse(e, _) => {
                anyhow::anyhow!("unexpected answer from the sign-in provider's token endpoint: {e}")
            }
            RequestTokenError::Other(e) => anyhow::anyhow!("signing in: {e}"),
        })?;

    let template = OAuthCredentials {
        access_token: String::new(),
        refresh_token: None,
        expires_at: None,
        refresh_expires_at: None,
        issuer: target.issuer.clone(),
        client_id: target.client_id.clone(),
        audience: target.audience.clone().unwrap_or_default(),
        token_endpoint: token_endpoint.to_string(),
        revocation_endpoint,
        api_url: api_url.to_owned(),
        updated_at: Utc::now(),
    };
    Ok(session_from(&tokens, &template, Utc::now()))
}

/// Why a refresh did not give new tokens.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The provider said no (the refresh token expired, was revoked, or there is none): only a
    /// new login helps.
    #[error("{0}")]
    Rejected(String),
    /// The provider could not be asked (network, 5xx): trying again later may help.
    #[error("{0}")]
    Unavailable(String),
}

/// Exchanges the session's refresh token for new tokens (the provider may rotate the refresh
/// token; the new one is in the answer).
pub async fn refresh(
    http: &OidcHttp,
    session: &OAuthCredentials,
) -> Result<OAuthCredentials, RefreshError> {
    let Some(refresh_token) = session.refresh_token.clone() else {
        return Err(RefreshError::Rejected("no refresh token was stored".into()));
    };
    let issuer = IssuerUrl::new(session.issuer.clone())
        .map_err(|e| RefreshError::Rejected(format!("invalid stored issuer: {e}")))?;
    if !is_acceptable_endpoint(&session.token_endpoint) {
        return Err(RefreshError::Rejected(format!(
            "the stored token endpoint {} does not use https://",
            session.token_endpoint
        )));
    }
    let token_url = TokenUrl::new(session.token_endpoint.clone())
        .map_err(|e| RefreshError::Rejected(format!("invalid stored token endpoint: {e}")))?;
    // ID tokens are not verified (nor needed): the m87 server verifies the access token.
    let client = OidcClient::new(
        ClientId::new(session.client_id.clone()),
        issuer,
        JsonWebKeySet::new(Vec::new()),
    )
    .set_auth_type(AuthType::RequestBody)
    .set_token_uri(token_url);
    let refresh_token = RefreshToken::new(refresh_token);
    let mut request = client.exchange_refresh_token(&refresh_token);
    if !session.audience.is_empty() {
        request = request.add_extra_param("resource", session.audience.as_str());
    }
    match request.request_async(http).await {
        Ok(tokens) => Ok(session_from(&tokens, session, Utc::now())),
        Err(RequestTokenError::ServerResponse(e)) => {
            let text = describe_oauth_error(e.error(), e.error_description());
            match e.error().to_string().as_str() {
                "server_error" | "temporarily_unavailable" => Err(RefreshError::Unavailable(text)),
                _ => Err(RefreshError::Rejected(text)),
            }
        }
        Err(RequestTokenError::Request(e)) => Err(RefreshError::Unavailable(e.to_string())),
        Err(RequestTokenError::Parse(e, _)) => Err(RefreshError::Unavailable(format!(
            "unexpected answer from the token endpoint: {e}"
        ))),
        Err(RequestTokenError::Other(e)) => Err(RefreshError::Unavailable(e)),
    }
}

/// Revokes `refresh_token` at `endpoint` (RFC 7009).
///
/// Sent by hand rather than with the crate's `revoke_token`, which refuses every `http://`
/// endpoint; this allows `http://` only to this machine (see [`is_acceptable_endpoint`]).
pub async fn revoke_refresh_token(
    http: &OidcHttp,
    endpoint: &str,
    client_id: &str,
    refresh_token: &str,
) -> Result<(), String> {
    if !is_acceptable_endpoint(endpoint) {
        return Err(format!("{endpoint} does not use https://"));
    }
    let body = openidconnect::url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", refresh_token)
        .append_pair("token_type_hint", "refresh_token")
        .append_pair("client_id", client_id)
        .finish();
    let request = openidconnect::http::Request::builder()
        .method(openidconnect::http::Method::POST)
        .uri(endpoint)
        .header(
            openidconnect::http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(openidconnect::http::header::ACCEPT, "application/json")
        .body(body.into_bytes())
        .map_err(|e| format!("invalid revocation request: {e}"))?;
    let response = http.send(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    #[derive(Deserialize)]
    struct OAuthErrorBody {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    Err(
        match serde_json::from_slice::<OAuthErrorBody>(response.body()) {
            Ok(e) => format!(
                "the provider answered {status}: {}",
                describe_oauth_error(&e.error, e.error_description.as_ref())
            ),
            Err(_) => format!("the provider answered {status}"),
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn only_https_or_loopback_endpoints_carry_tokens() {
        assert!(is_acceptable_endpoint("https://idp.example/token"));
        assert!(is_acceptable_endpoint("http://127.0.0.1:4000/token"));
        assert!(is_acceptable_endpoint("http://localhost/token"));
        assert!(is_acceptable_endpoint("http://[::1]:9/token"));
        assert!(!is_acceptable_endpoint("http://idp.example/token"));
        assert!(!is_acceptable_endpoint("http://10.0.0.1/token"));
        assert!(!is_acceptable_endpoint("ftp://idp.example/"));
        assert!(!is_acceptable_endpoint("not a url"));
    }

    #[test]
    fn a_jwt_expiry_is_read_from_its_payload() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"exp":1700000000}"#)
        );
        assert_eq!(
            jwt_expiry(&token),
            DateTime::from_timestamp(1_700_000_000, 0)
        );
        assert_eq!(jwt_expiry("opaque-token"), None);
    }
}
