//! `m87 login` (OpenID Connect device flow, or an API key), `m87 logout` and `m87 status`.

use std::io::IsTerminal;
use std::time::Duration;

use chrono::{DateTime, Utc};
use m87_events::api::{AuthConfig, WhoAmI};
use m87_transport::credentials::{CredentialsFile, OAuthCredentials, UserCredentials};
use m87_transport::http::{
    ApiClient, ServerTrust, api_fingerprint_from_env, trust_invalid_cert_from_env,
};
use m87_transport::tls::Fingerprint;
use serde::Serialize;

use crate::auth::http::OidcHttp;
use crate::auth::oidc::{self, Prompt, Target};
use crate::auth::session;
use crate::context::{UserAuth, credentials_file, server_trust, user_session};
use crate::output::Output;

/// The server to log in to and how to check its certificate.
struct Server {
    url: String,
    trust: ServerTrust,
    /// The pin given now (`--fingerprint` or `M87_API_FINGERPRINT`), stored for the server
    /// once the login succeeds.
    new_pin: Option<Fingerprint>,
}

/// `m87 login`: with an API key when one is given, else with the server's OpenID Connect
/// provider (device authorization grant). With `fingerprint` (or `M87_API_FINGERPRINT`) the
/// server must present exactly that certificate, and the pin is stored for it.
pub async fn login(
    api_key: Option<String>,
    api_url: Option<String>,
    fingerprint: Option<Fingerprint>,
) -> anyhow::Result<()> {
    let url = api_url
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
        .map_or_else(crate::context::profile_api_url, Ok)?;
    let new_pin = match fingerprint {
        Some(pin) => Some(pin),
        None => api_fingerprint_from_env()?,
    };
    let trust = server_trust(&url, &credentials_file()?.load()?, new_pin)?;
    let server = Server {
        url,
        trust,
        new_pin,
    };
    match api_key {
        Some(key) => login_with_key(key, server).await,
        None => login_with_oidc(server).await,
    }
}

/// Checks `key` against the server and stores it (replacing a stored OIDC session).
async fn login_with_key(api_key: String, server: Server) -> anyhow::Result<()> {
    let api_key = if api_key == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line
    } else {
        api_key
    };
    let api_key = api_key.trim().to_owned();
    anyhow::ensure!(!api_key.is_empty(), "no api key given");
    let trust = trust_invalid_cert_from_env();
    let client = ApiClient::with_trust(&server.url, Some(api_key.clone()), server.trust)?;
    let me: WhoAmI = client
        .post("/v1/auth/sign-in", &serde_json::json!({}))
        .await?;
    let Some(email) = me.email else {
        anyhow::bail!("that is a device key; log in with a user api key (m87u_…)");
    };
    let file = credentials_file()?;
    let replaced = store_login(
        &file,
        Login {
            user: Some(UserCredentials {
                api_key,
                api_url: client.base_url().to_owned(),
            }),
            oauth: None,
            pin: server.new_pin.map(|p| (client.base_url().to_owned(), p)),
        },
    )
    .await?;
    if let Some(old) = replaced {
        revoke_quietly(&old, trust).await;
    }
    println!(
        "logged in to {} as {email}{}; key stored in {}",
        client.base_url(),
        admin_suffix(me.platform_admin),
        file.path().display()
    );
    Ok(())
}

fn admin_suffix(platform_admin: bool) -> &'static str {
    if platform_admin {
        " (platform admin)"
    } else {
        ""
    }
}

/// What a successful login stores.
struct Login {
    user: Option<UserCredentials>,
    oauth: Option<OAuthCredentials>,
    /// A certificate pin for a server URL.
    pin: Option<(String, Fingerprint)>,
}

/// Stores one kind of login and removes the other (so the new login is the one used), and
/// the server's pin if one was given, under the credentials lock. Answers the OIDC session it
/// replaced, if any.
async fn store_login(
    file: &CredentialsFile,
    login: Login,
) -> anyhow::Result<Option<OAuthCredentials>> {
    let _lock = session::lock(file).await?;
    let previous = file.load()?.oauth;
    file.update(|c| {
        c.user = login.user;
        c.oauth = login.oauth;
        if let Some((url, pin)) = login.pin {
            c.set_pin(&url, pin);
        }
    })?;
    Ok(previous)
}

/// Revokes a replaced session's refresh token, best effort.
async fn revoke_quietly(old: &OAuthCredentials, trust: bool) {
    if let Err(reason) = revoke(old, trust).await {
        tracing::debug!(%reason, "could not revoke the replaced session");
    }
}

/// Revokes `session`'s refresh token at its provider, if it has both.
async fn revoke(session: &OAuthCredentials, trust: bool) -> Result<bool, String> {
    let (Some(token), Some(endpoint)) = (&session.refresh_token, &session.revocation_endpoint)
    else {
        return Ok(false);
    };
    let http = OidcHttp::new(trust).map_err(|e| e.to_string())?;
    oidc::revoke_refresh_token(&http, endpoint, &session.client_id, token)
        .await
        .map_err(|reason| format!("{endpoint}: {reason}"))?;
    Ok(true)
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `M87_AUTH_DOMAIN`: an issuer URL, or a bare host name meaning `https://HOST/`.
fn issuer_from_domain(domain: String) -> String {
    if domain.contains("://") {
        domain
    } else {
        format!("https://{}/", domain.trim_end_matches('/'))
    }
}

/// Whom to sign in with: the server's `/v1/auth/config`, each part overridable by
/// `M87_AUTH_DOMAIN` (issuer), `M87_AUTH_CLIENT_ID` and `M87_AUTH_AUDIENCE`.
async fn sign_in_target(api: &ApiClient) -> anyhow::Result<Target> {
    let issuer = env_value("M87_AUTH_DOMAIN").map(issuer_from_domain);
    let client_id = env_value("M87_AUTH_CLIENT_ID");
    let audience = env_value("M87_AUTH_AUDIENCE");
    let server = if issuer.is_some() && client_id.is_some() && audience.is_some() {
        None
    } else {
        match api.get::<AuthConfig>("/v1/auth/config").await {
            Ok(config) => Some(config),
            Err(e) if e.status() == Some(404) => None,
            Err(e) => anyhow::bail!(
                "asking {} how to log in: {e} (or log in with `m87 login --api-key KEY`)",
                api.base_url()
            ),
        }
    };
    let (server_issuer, server_client, server_audience) = match server {
        Some(c) => (Some(c.issuer), Some(c.client_id), Some(c.audience)),
        None => (None, None, None),
    };
    let (Some(issuer), Some(client_id)) = (issuer.or(server_issuer), client_id.or(server_client))
    else {
        anyhow::bail!(
            "the server at {} does not offer logging in with OpenID Connect: log in with \
             `m87 login --api-key KEY` (or set M87_AUTH_DOMAIN and M87_AUTH_CLIENT_ID)",
            api.base_url()
        );
    };
    Ok(Target {
        issuer,
        client_id,
        audience: audience.or(server_audience.filter(|a| !a.trim().is_empty())),
    })
}

/// `M87_AUTH_POLL_MS`: a polling interval replacing the provider's (tests).
fn poll_override() -> anyhow::Result<Option<Duration>> {
    match env_value("M87_AUTH_POLL_MS") {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
            _ => anyhow::bail!("M87_AUTH_POLL_MS must be a positive number of milliseconds"),
        },
    }
}

/// Opens `url` in a browser when there is a display to show it on; never when
/// `M87_NO_BROWSER=1`. Failure is fine: the URL is printed anyway.
fn open_browser(url: &str) {
    let no_browser = std::env::var("M87_NO_BROWSER").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    });
    let has_display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if no_browser || !has_display {
        return;
    }
    if let Ok(mut child) = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        std::thread::spawn(move || {
            let _ = child.wait();
        });
    }
}

fn show_prompt(prompt: &Prompt) {
    eprintln!(
        "To log in, open {} and enter the code {}",
        prompt.verification_uri, prompt.user_code
    );
    if let Some(complete) = &prompt.verification_uri_complete {
        eprintln!("(or open {complete})");
    }
    open_browser(
        prompt
            .verification_uri_complete
            .as_deref()
            .unwrap_or(&prompt.verification_uri),
    );
    eprintln!(
        "Waiting for the approval (the code expires in {} minutes)…",
        prompt.expires_in.as_secs().div_ceil(60)
    );
}

/// The device authorization grant with the server's provider; stores the session (replacing a
/// stored API key) once the server accepts its access token.
async fn login_with_oidc(server: Server) -> anyhow::Result<()> {
    let trust = trust_invalid_cert_from_env();
    let api = ApiClient::with_trust(&server.url, None, server.trust)?;
    let target = sign_in_target(&api).await?;
    let poll = poll_override()?;
    let http = OidcHttp::new(trust)?;
    let session = oidc::device_sign_in(&http, &target, api.base_url(), poll, show_prompt).await?;

    let client = ApiClient::with_trust(
        api.base_url(),
        Some(session.access_token.clone()),
        server.trust,
    )?;
    let me: WhoAmI = match client
        .post("/v1/auth/sign-in", &serde_json::json!({}))
        .await
    {
        Ok(me) => me,
        Err(e) => {
            revoke_quietly(&session, trust).await;
            anyhow::bail!(
                "the server at {} did not accept the login from {}: {e}",
                api.base_url(),
                target.issuer
            );
        }
    };
    let Some(email) = me.email else {
        revoke_quietly(&session, trust).await;
        anyhow::bail!(
            "the server did not see a user in the login from {}",
            target.issuer
        );
    };
    let file = credentials_file()?;
    let login = Login {
        user: None,
        oauth: Some(session),
        pin: server.new_pin.map(|p| (api.base_url().to_owned(), p)),
    };
    if let Some(old) = store_login(&file, login).await? {
        revoke_quietly(&old, trust).await;
    }
    println!(
        "logged in to {} as {email}{}; session stored in {}",
        api.base_url(),
        admin_suffix(me.platform_admin),
        file.path().display()
    );
    if std::env::var("M87_API_KEY").is_ok_and(|k| !k.trim().is_empty()) {
        eprintln!("note: M87_API_KEY is set; commands use it rather than this login");
    }
    Ok(())
}

/// Removes the stored API key and OIDC session; revokes the session's refresh token at the
/// provider (a failure to revoke is a warning: the tokens are removed here anyway).
pub async fn logout() -> anyhow::Result<()> {
    let file = credentials_file()?;
    let had_session = file.load()?.oauth.is_some();
    let (had_key, session) = {
        // Not while another process renews the session (it would store it again).
        let _lock = if had_session {
            Some(session::lock(&file).await?)
        } else {
            None
        };
        let creds = file.load()?;
        file.update(|c| {
            c.user = None;
            c.oauth = None;
        })?;
        (creds.user.is_some(), creds.oauth)
    };
    let mut removed = Vec::new();
    if had_key {
        removed.push("api key");
    }
    if let Some(session) = &session {
        removed.push("login session");
        match revoke(session, trust_invalid_cert_from_env()).await {
            Ok(_) => {}
            Err(reason) => eprintln!(
                "warning: could not revoke the refresh token at {reason}; it is removed here anyway"
            ),
        }
    }
    if removed.is_empty() {
        println!("not logged in; nothing to remove");
    } else {
        println!(
            "logged out; removed the stored {} from {}",
            removed.join(" and "),
            file.path().display()
        );
    }
    Ok(())
}

/// How the user is signed in, for `m87 status`.
#[derive(Debug, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
enum AuthReport {
    /// An API key.
    ApiKey {
        /// `M87_API_KEY` or the credentials file.
        source: String,
    },
    /// An OpenID Connect session.
    Oidc {
        issuer: String,
        client_id: String,
        #[serde(skip_serializing_if = "String::is_empty")]
        audience: String,
        access_token_expires_at: Option<DateTime<Utc>>,
        refresh_token: bool,
        refresh_token_expires_at: Option<DateTime<Utc>>,
        renewed_at: DateTime<Utc>,
    },
}

#[derive(Debug, Serialize)]
struct StatusReport {
    profile: String,
    server: String,
    #[serde(flatten)]
    me: WhoAmI,
    auth: AuthReport,
}

/// `2026-01-02 15:04:05 UTC (in 5m 3s)`.
fn moment(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = t - now;
    let (future, secs) = (
        delta >= chrono::TimeDelta::zero(),
        delta.num_seconds().unsigned_abs(),
    );
    let span = match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    };
    let when = t.format("%Y-%m-%d %H:%M:%S UTC");
    if future {
        format!("{when} (in {span})")
    } else {
        format!("{when} ({span} ago)")
    }
}

/// `m87 status`: the server, who you are, and how you are logged in.
pub async fn status(out: Output) -> anyhow::Result<()> {
    let session = user_session()?;
    let me: WhoAmI = session.client.get("/v1/whoami").await?;
    let auth = match session.auth {
        UserAuth::EnvKey => AuthReport::ApiKey {
            source: "M87_API_KEY".into(),
        },
        UserAuth::StoredKey => AuthReport::ApiKey {
            source: credentials_file()?.path().display().to_string(),
        },
        UserAuth::Oidc(o) => {
            let o = *o;
            AuthReport::Oidc {
                issuer: o.issuer,
                client_id: o.client_id,
                audience: o.audience,
                access_token_expires_at: o.expires_at,
                refresh_token: o.refresh_token.is_some(),
                refresh_token_expires_at: o.refresh_expires_at,
                renewed_at: o.updated_at,
            }
        }
    };
    let report = StatusReport {
        profile: crate::profile::active()?.name.to_string(),
        server: session.client.base_url().to_owned(),
        me,
        auth,
    };
    if out == Output::Json {
        return crate::output::print_json(&report);
    }
    print_status(&report, Utc::now());
    Ok(())
}

fn print_status(report: &StatusReport, now: DateTime<Utc>) {
    let mut rows: Vec<(&str, String)> = vec![
        ("profile", report.profile.clone()),
        ("server", report.server.clone()),
    ];
    let who = match (&report.me.email, &report.me.device_id) {
        (Some(email), _) => email.to_string(),
        (None, Some(device)) => format!("device {device}"),
        (None, None) => report.me.kind.clone(),
    };
    rows.push(("logged in as", who));
    rows.push((
        "platform admin",
        if report.me.platform_admin {
            "yes"
        } else {
            "no"
        }
        .into(),
    ));
    match &report.auth {
        AuthReport::ApiKey { source } => {
            rows.push(("signed in with", format!("api key ({source})")))
        }
        AuthReport::Oidc {
            issuer,
            client_id,
            access_token_expires_at,
            refresh_token,
            refresh_token_expires_at,
            ..
        } => {
            rows.push((
                "signed in with",
                format!("OIDC ({issuer}, client {client_id})"),
            ));
            rows.push((
                "access token",
                match access_token_expires_at {
                    Some(t) => format!("expires {}", moment(*t, now)),
                    None => "expiry not given by the provider".into(),
                },
            ));
            rows.push((
                "refresh token",
                match (refresh_token, refresh_token_expires_at) {
                    (false, _) => "none: log in again when the access token expires".into(),
                    (true, Some(t)) => format!("expires {}", moment(*t, now)),
                    (true, None) => "renews the access token automatically (expiry not given by \
                                     the provider)"
                        .into(),
                },
            ));
        }
    }
    let scopes: Vec<String> = report.me.scopes.iter().map(ToString::to_string).collect();
    rows.push((
        "scopes",
        if scopes.is_empty() {
            "-".into()
        } else {
            scopes.join(", ")
        },
    ));
    let orgs: Vec<String> = report
        .me
        .memberships
        .iter()
        .map(|m| format!("{} ({})", m.org_id, m.role.as_str()))
        .collect();
    rows.push((
        "organizations",
        if orgs.is_empty() {
            "-".into()
        } else {
            orgs.join(", ")
        },
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let color = std::io::stdout().is_terminal();
    for (key, value) in rows {
        let label = format!("{key}:");
        if color {
            println!("\x1b[1m{label:<width$}\x1b[0m  {value}");
        } else {
            println!("{label:<width$}  {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn moments_read_naturally() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let secs = chrono::TimeDelta::seconds;
        assert_eq!(
            moment(now + secs(59), now),
            "2023-11-14 22:14:19 UTC (in 59s)"
        );
        assert!(moment(now + secs(3 * 60 + 5), now).ends_with("(in 3m 5s)"));
        assert!(moment(now - secs(7200), now).ends_with("(2h 0m ago)"));
        assert!(moment(now + secs(86_400 * 30), now).ends_with("(in 30d 0h)"));
    }

    #[test]
    fn a_bare_domain_is_an_https_issuer() {
        assert_eq!(
            issuer_from_domain("tenant.example.com".into()),
            "https://tenant.example.com/"
        );
        assert_eq!(
            issuer_from_domain("http://127.0.0.1:3000".into()),
            "http://127.0.0.1:3000"
        );
    }
}
