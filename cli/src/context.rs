//! Where the CLI finds its server and credentials: the environment first, then the credentials
//! file.
//!
//! Precedence, first match wins:
//! 1. `M87_API_KEY` (environment);
//! 2. the API key stored by `m87 login --api-key` (section `user`);
//! 3. the OpenID Connect session stored by `m87 login` (section `oauth`), its access token
//!    renewed first when it expires within 30 s (see [`crate::auth::session`]).
//!
//! Each `m87 login` replaces the other kind of stored login, so 2 and 3 only meet in a file
//! edited by hand. The server is `M87_API_URL`, else the one stored with the login, else
//! [`DEFAULT_API_URL`]; an OIDC session is only sent to the server it was made for.
//!
//! The server's certificate is checked ([`server_trust`]) by `M87_API_FINGERPRINT`, else by the
//! fingerprint pinned for that server in the credentials file (`m87 login --fingerprint`), else
//! against the system's roots; `M87_TRUST_INVALID_CERT` skips the check (with a warning) only
//! where no pin is known, and never for relays.

use anyhow::bail;
use m87_transport::credentials::{Credentials, CredentialsFile, OAuthCredentials};
use m87_transport::http::{
    ApiClient, ServerTrust, api_fingerprint_from_env, api_url_from_env, trust_invalid_cert_from_env,
};
use m87_transport::tls::Fingerprint;

use crate::auth::http::OidcHttp;
use crate::auth::session::{self, Freshness};

/// The server used when nothing else says which.
pub const DEFAULT_API_URL: &str = "https://127.0.0.1:8085";

/// The user's credentials file: the one of the profile in use (see [`crate::profile`]).
pub fn credentials_file() -> anyhow::Result<CredentialsFile> {
    crate::profile::active()?.credentials_file()
}

pub use crate::profile::runtime_credentials_file;

/// The server of the profile in use before any login: `M87_API_URL`, else the profile's
/// (`m87 profile add --api-url`), else the default.
pub fn profile_api_url() -> anyhow::Result<String> {
    if let Some(url) = api_url_from_env() {
        return Ok(url);
    }
    Ok(crate::profile::active()?
        .config
        .api_url
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned()))
}

/// The API URL for user commands: `M87_API_URL`, else the one stored at login, else the
/// profile's, else the default.
pub fn user_api_url() -> anyhow::Result<String> {
    if let Some(url) = api_url_from_env() {
        return Ok(url);
    }
    let creds = credentials_file()?.load()?;
    match creds
        .user
        .map(|u| u.api_url)
        .or(creds.oauth.map(|o| o.api_url))
    {
        Some(url) => Ok(url),
        None => profile_api_url(),
    }
}

/// How to check the certificate of the server at `api_url`: `explicit` (a `--fingerprint`),
/// else `M87_API_FINGERPRINT`, else the pin stored for it in `creds`, else any certificate
/// when `M87_TRUST_INVALID_CERT` is set (warned about on standard error), else the system's
/// roots.
pub fn server_trust(
    api_url: &str,
    creds: &Credentials,
    explicit: Option<Fingerprint>,
) -> anyhow::Result<ServerTrust> {
    let pin = match explicit {
        Some(pin) => Some(pin),
        None => api_fingerprint_from_env()?.or_else(|| creds.pin_for(api_url)),
    };
    let trust = ServerTrust::choose(pin, trust_invalid_cert_from_env());
    if trust == ServerTrust::AnyCertificate {
        warn_trust_any();
    }
    Ok(trust)
}

/// Says once per process that the API server's certificate is not checked.
fn warn_trust_any() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "warning: M87_TRUST_INVALID_CERT is set: the server's certificate is not checked \
             (relays stay pinned); pin it instead with --fingerprint SHA256:…"
        );
    });
}

/// A client for the server at `api_url` with `key`, checking its certificate as
/// [`server_trust`] says.
pub fn api_client(
    api_url: &str,
    key: Option<String>,
    creds: &Credentials,
) -> anyhow::Result<ApiClient> {
    let trust = server_trust(api_url, creds, None)?;
    Ok(ApiClient::with_trust(api_url, key, trust)?)
}

/// How the user is signed in (see the module documentation for the precedence).
pub enum UserAuth {
    /// `M87_API_KEY`.
    EnvKey,
    /// The API key stored by `m87 login --api-key`.
    StoredKey,
    /// The OpenID Connect session stored by `m87 login`, as after any refresh.
    Oidc(Box<OAuthCredentials>),
}

/// A client acting as the user, and how it signs in.
pub struct UserSession {
    /// The client.
    pub client: ApiClient,
    /// Its credentials' origin.
    pub auth: UserAuth,
}

fn env_api_key() -> Option<String> {
    std::env::var("M87_API_KEY")
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
}

/// The user's client: `M87_API_KEY`, else the stored key, else the OIDC session (renewed when
/// it is about to expire; a session that cannot be renewed is an error telling the user to log
/// in again).
pub fn user_session() -> anyhow::Result<UserSession> {
    let trust = trust_invalid_cert_from_env();
    let file = credentials_file()?;
    let creds = file.load()?;
    if let Some(key) = env_api_key() {
        return Ok(UserSession {
            client: api_client(&user_api_url()?, Some(key), &creds)?,
            auth: UserAuth::EnvKey,
        });
    }
    if let Some(user) = creds.user.clone() {
        return Ok(UserSession {
            client: api_client(&user_api_url()?, Some(user.api_key), &creds)?,
            auth: UserAuth::StoredKey,
        });
    }
    let Some(oauth) = creds.oauth.clone() else {
        bail!("{}", not_logged_in(&creds));
    };
    if let Some(url) = api_url_from_env()
        && url != oauth.api_url
    {
        bail!(
            "you are logged in to {}, not to M87_API_URL={url}: run `m87 login` to log in there",
            oauth.api_url
        );
    }
    let oauth = if session::freshness(oauth.expires_at, oauth.updated_at, chrono::Utc::now())
        == Freshness::Fresh
    {
        oauth
    } else {
        session::block_on(async move {
            let http = OidcHttp::new(trust)?;
            anyhow::Ok(session::ensure_fresh(&file, oauth, &http).await?)
        })??
    };
    Ok(UserSession {
        client: api_client(&oauth.api_url, Some(oauth.access_token.clone()), &creds)?,
        auth: UserAuth::Oidc(Box::new(oauth)),
    })
}

/// A client acting as the user (see [`user_session`]).
pub fn user_client() -> anyhow::Result<ApiClient> {
    Ok(user_session()?.client)
}

/// "not logged in", with how to log in: `m87 login` when the server offers OpenID Connect
/// sign-in (`GET /v1/auth/config`, asked for at most 3 s), else an API key.
fn not_logged_in(creds: &Credentials) -> String {
    let profile = crate::profile::active()
        .ok()
        .filter(|p| !p.name.is_default())
        .map(|p| format!("--profile {} ", p.name))
        .unwrap_or_default();
    let issuer = profile_api_url().ok().and_then(|url| {
        let client = api_client(&url, None, creds).ok()?;
        let ask = async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(3),
                client.get::<m87_events::api::AuthConfig>("/v1/auth/config"),
            )
            .await
        };
        match session::block_on(ask) {
            Ok(Ok(Ok(config))) => Some(config.issuer),
            _ => None,
        }
    });
    match issuer {
        Some(issuer) => format!(
            "not logged in: run `m87 {profile}login` (signs in with {issuer}), or \
             `m87 {profile}login --api-key KEY`, or set M87_API_KEY"
        ),
        None => format!("not logged in: run `m87 {profile}login --api-key KEY` or set M87_API_KEY"),
    }
}
