#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End to end with a real OpenID Connect provider (npm `oidc-provider`, see
//! `m87_test_support::oidc`) and the real `m87-server` and `m87` binaries:
//! `m87 login` with the device authorization grant, approved through the provider's own pages;
//! commands with the session; silent refresh with refresh token rotation; two commands
//! refreshing at once; `m87 status`; `m87 logout` with revocation; an expired session.
//!
//! Needs Node.js 20+ and `scripts/setup-test-env` (it installs the provider); fails otherwise.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{M87, Proc, Server};
use m87_test_support::oidc;
use oidc::{OidcProvider, ProviderOptions};
use serde_json::Value;

const EMAIL: &str = "alice@example.com";

/// A provider whose access tokens live 3 s.
async fn short_lived_provider() -> OidcProvider {
    OidcProvider::start_with(ProviderOptions {
        access_token_ttl: Duration::from_secs(3),
        ..ProviderOptions::default()
    })
    .await
}

/// A server accepting the provider's access tokens.
fn oidc_server(provider: &OidcProvider, data_dir: &Path) -> Server {
    Server::start_with_env(
        data_dir,
        "127.0.0.1:0",
        &[
            ("OAUTH_ISSUER", provider.issuer()),
            ("OAUTH_AUDIENCE", provider.audience()),
            ("OAUTH_CLIENT_ID", provider.client_id()),
        ],
    )
}

/// `m87 …` for a login test: no browser, fast polling, no overrides from the environment.
fn command(m87: &M87, args: &[&str]) -> Command {
    let mut cmd = m87.command(args);
    cmd.env("M87_NO_BROWSER", "1")
        .env("M87_AUTH_POLL_MS", "200")
        .env_remove("M87_AUTH_DOMAIN")
        .env_remove("M87_AUTH_CLIENT_ID")
        .env_remove("M87_AUTH_AUDIENCE");
    cmd
}

/// Runs `m87 login` in the background, reads the user code it prints, approves it at the
/// provider's pages as `email`, and waits for the login to finish. Returns its output.
async fn login(m87: &M87, provider: &OidcProvider, email: &str) -> String {
    let mut proc = Proc::spawn(command(m87, &["login"]));
    let line = proc.out.wait_for("enter the code", Duration::from_secs(30));
    let user_code = line.split_whitespace().last().unwrap().to_owned();
    proc.out
        .wait_for("Waiting for the approval", Duration::from_secs(10));
    provider.approve_device_code(&user_code, email).await;
    let code = proc.wait_exit(Duration::from_secs(30));
    let out = proc.out.all();
    assert_eq!(
        code,
        0,
        "m87 login failed:\n{out}\nprovider stderr:\n{}",
        provider.stderr()
    );
    out
}

fn credentials_path(m87: &M87) -> std::path::PathBuf {
    m87.config_dir.join("credentials.json")
}

fn credentials(m87: &M87) -> Value {
    serde_json::from_str(&std::fs::read_to_string(credentials_path(m87)).unwrap()).unwrap()
}

fn oauth_field(m87: &M87, field: &str) -> String {
    credentials(m87)["oauth"][field]
        .as_str()
        .unwrap_or_else(|| panic!("oauth.{field} in {}", credentials(m87)))
        .to_owned()
}

fn expires_at(m87: &M87) -> DateTime<Utc> {
    oauth_field(m87, "expires_at").parse().unwrap()
}

/// Sleeps until the stored access token has expired.
async fn wait_until_expired(m87: &M87) {
    let left = (expires_at(m87) - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(left + Duration::from_millis(300)).await;
}

/// Runs a command to completion and asserts it succeeded without printing anything on stderr.
fn quietly_ok(m87: &M87, args: &[&str]) -> String {
    let out = command(m87, args).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "m87 {args:?} failed ({}): {stderr}",
        out.status
    );
    assert!(stderr.trim().is_empty(), "m87 {args:?} said: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_refresh_status_and_logout() {
    let provider = short_lived_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let server = oidc_server(&provider, &dir.path().join("server"));
    let m87 = M87::new(&server.url, &dir.path().join("cli"), None);

    let err = m87.fails(&["devices", "list"]);
    assert!(err.contains("not logged in"), "{err}");

    // Log in as a person would: the code from the CLI's output, approved in "a browser".
    let out = login(&m87, &provider, EMAIL).await;
    assert!(
        out.contains(&format!("logged in to {} as {EMAIL}", server.url)),
        "{out}"
    );
    let creds = credentials(&m87);
    let oauth = &creds["oauth"];
    let access1 = oauth["access_token"].as_str().unwrap().to_owned();
    let refresh1 = oauth["refresh_token"].as_str().unwrap().to_owned();
    assert!(
        !out.contains(&access1) && !out.contains(&refresh1),
        "tokens printed: {out}"
    );
    assert_eq!(oauth["issuer"], provider.issuer());
    assert_eq!(oauth["client_id"], provider.client_id());
    assert_eq!(oauth["audience"], provider.audience());
    assert_eq!(oauth["api_url"], server.url.as_str());
    assert_eq!(oauth["token_endpoint"], provider.metadata().token_endpoint);
    assert_eq!(
        oauth["revocation_endpoint"].as_str(),
        provider.metadata().revocation_endpoint.as_deref()
    );
    assert!(creds.get("user").is_none(), "{creds}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(credentials_path(&m87))
            .unwrap()
            .permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);

    // Commands use the session.
    let devices = m87.devices();
    assert!(devices.is_array() || devices.is_object(), "{devices}");

    // After the access token expired, the next command renews it silently; the provider
    // rotated the refresh token and the new one is stored.
    wait_until_expired(&m87).await;
    quietly_ok(&m87, &["devices", "list"]);
    let refresh2 = oauth_field(&m87, "refresh_token");
    assert_ne!(
        refresh2, refresh1,
        "the refresh token was rotated and saved"
    );
    assert_ne!(oauth_field(&m87, "access_token"), access1);
    assert!(expires_at(&m87) > Utc::now());

    // Two commands at the same moment with an expired token: both succeed. Without the lock
    // both would spend the same refresh token, and the second would be refused.
    wait_until_expired(&m87).await;
    let children: Vec<_> = (0..2)
        .map(|_| {
            command(&m87, &["devices", "list"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a parallel `m87 devices list` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let refresh3 = oauth_field(&m87, "refresh_token");
    assert_ne!(refresh3, refresh2);

    // `m87 status`: who, how, and until when.
    let status = m87.ok(&["status"]);
    assert!(status.contains(EMAIL), "{status}");
    assert!(status.contains("OIDC"), "{status}");
    assert!(status.contains(provider.issuer()), "{status}");
    assert!(status.contains(&server.url), "{status}");
    assert!(
        status.contains("access token:") && status.contains("expires 20"),
        "{status}"
    );
    let json: Value = serde_json::from_str(&m87.ok(&["status", "--output", "json"])).unwrap();
    assert_eq!(json["server"], server.url.as_str());
    assert_eq!(json["email"], EMAIL);
    assert_eq!(json["platform_admin"], false);
    assert_eq!(json["auth"]["method"], "oidc");
    assert_eq!(json["auth"]["issuer"], provider.issuer());
    assert_eq!(json["auth"]["refresh_token"], true);
    let expiry: DateTime<Utc> = json["auth"]["access_token_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        expiry > Utc::now() - chrono::TimeDelta::seconds(5),
        "{json}"
    );
    assert!(json["scopes"].is_array() && json["memberships"].is_array());
    let last_refresh = oauth_field(&m87, "refresh_token");

    // `m87 logout`: no tokens left here, and the refresh token is dead at the provider.
    let out = quietly_ok(&m87, &["logout"]);
    assert!(out.contains("logged out"), "{out}");
    if credentials_path(&m87).exists() {
        let text = std::fs::read_to_string(credentials_path(&m87)).unwrap();
        assert!(!text.contains("oauth"), "{text}");
        assert!(!text.contains(&last_refresh), "{text}");
    }
    let refused = provider
        .refresh(&last_refresh)
        .await
        .expect_err("a revoked refresh token must not work");
    assert_eq!(refused.error, "invalid_grant", "{refused:?}");
    let err = m87.fails(&["devices", "list"]);
    assert!(err.contains("not logged in"), "{err}");
    let out = m87.ok(&["logout"]);
    assert!(out.contains("nothing to remove"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_be_renewed_asks_to_log_in_again() {
    let provider = short_lived_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let server = oidc_server(&provider, &dir.path().join("server"));
    let m87 = M87::new(&server.url, &dir.path().join("cli"), None);
    login(&m87, &provider, "bob@example.com").await;

    // The refresh token is revoked behind the CLI's back (by an admin, say).
    provider.revoke(&oauth_field(&m87, "refresh_token")).await;
    wait_until_expired(&m87).await;
    let err = m87.fails(&["devices", "list"]);
    assert!(
        err.contains("your session has expired: run m87 login"),
        "{err}"
    );
    let err = m87.fails(&["status"]);
    assert!(err.contains("your session has expired"), "{err}");

    // An API key (environment) still goes first.
    let admin = M87::new(&server.url, &m87.config_dir, Some(&server.admin_key()));
    let status = admin.ok(&["status"]);
    assert!(status.contains("api key (M87_API_KEY)"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_on_a_server_without_oidc_says_how_to_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), "127.0.0.1:0");
    let m87 = M87::new(&server.url, &dir.path().join("cli"), None);
    let err = m87.fails(&["login"]);
    assert!(
        err.contains("does not offer logging in with OpenID Connect") && err.contains("--api-key"),
        "{err}"
    );
    let status = M87::new(&server.url, &m87.config_dir, Some(&server.admin_key()));
    let out = status.ok(&["status", "-o", "json"]);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["auth"]["method"], "api_key");
    assert_eq!(json["platform_admin"], true);
}
