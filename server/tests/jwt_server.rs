//! OIDC access tokens at the running `m87-server`: the negative matrix, each case its own test,
//! answered 401 with a clear message and leaving the store unchanged; key rotation at the real
//! provider accepted without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{M87, Server};
use m87_events::api::WhoAmI;
use m87_test_support::{oidc, tokens};
use m87_transport::http::{ApiClient, ApiError};
use oidc::{DEFAULT_AUDIENCE, OidcProvider};
use serde_json::json;
use tokens::{
    LocalIssuer, TestKey, generate_rsa_key, good_claims, now, public_key_encodings, sign,
    sign_hmac, sign_rsa, with,
};

fn event_count(data: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(data.join("m87.db")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    data: std::path::PathBuf,
    server: Server,
    issuer: LocalIssuer,
    key: TestKey,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let key = generate_rsa_key("server-key-1");
    let issuer = LocalIssuer::start(&[&key]).await;
    let data = tmp.path().join("data");
    let env = [
        ("OAUTH_ISSUER", issuer.url.as_str()),
        ("OAUTH_AUDIENCE", DEFAULT_AUDIENCE),
    ];
    let server = tokio::task::block_in_place(|| Server::start_with_env(&data, "127.0.0.1:0", &env));
    Setup {
        _tmp: tmp,
        data,
        server,
        issuer,
        key,
    }
}

/// Presents `token` to the running server; asserts a 401 whose message contains `reason`, and
/// that nothing was written.
async fn assert_refused(s: &Setup, token: &str, reason: &str) {
    let before = event_count(&s.data);
    let client = ApiClient::new(&s.server.url, Some(token.to_owned()), true).unwrap();
    match client.get::<WhoAmI>("/v1/devices").await {
        Err(ApiError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, 401, "{message}");
            assert!(
                message.contains(reason),
                "expected {reason:?} in {message:?}"
            );
        }
        other => panic!("the token was not refused: {other:?}"),
    }
    assert_eq!(
        event_count(&s.data),
        before,
        "a refused token changed the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_signs_the_user_in() {
    let s = setup().await;
    let token = sign(&s.key, &good_claims(&s.issuer.url, "alice@example.com"));
    let me: WhoAmI = ApiClient::new(&s.server.url, Some(token), true)
        .unwrap()
        .get("/v1/whoami")
        .await
        .unwrap();
    assert_eq!(me.email.unwrap().as_str(), "alice@example.com");
    assert!(!me.platform_admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_401() {
    let s = setup().await;
    let claims = with(
        good_claims(&s.issuer.url, "a@example.com"),
        json!({"exp": now() - 120, "iat": now() - 600}),
    );
    assert_refused(&s, &sign(&s.key, &claims), "token expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_not_yet_valid_is_401() {
    let s = setup().await;
    let claims = with(
        good_claims(&s.issuer.url, "a@example.com"),
        json!({"nbf": now() + 600}),
    );
    assert_refused(&s, &sign(&s.key, &claims), "not yet valid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_another_issuer_is_401() {
    let s = setup().await;
    let claims = with(
        good_claims(&s.issuer.url, "a@example.com"),
        json!({"iss": "https://evil.example"}),
    );
    assert_refused(&s, &sign(&s.key, &claims), "wrong issuer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_audience_is_401() {
    let s = setup().await;
    let claims = with(
        good_claims(&s.issuer.url, "a@example.com"),
        json!({"aud": "https://other.example/api"}),
    );
    assert_refused(&s, &sign(&s.key, &claims), "wrong audience").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_bad_signature_is_401() {
    let s = setup().await;
    let token = sign(&s.key, &good_claims(&s.issuer.url, "a@example.com"));
    let (rest, sig) = token.rsplit_once('.').unwrap();
    use base64::Engine;
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    bytes[0] ^= 0xff;
    assert_refused(
        &s,
        &format!("{rest}.{}", tokens::b64(&bytes)),
        "bad signature",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_alg_none_is_401() {
    let s = setup().await;
    let claims = good_claims(&s.issuer.url, "a@example.com");
    let token = format!(
        "{}.{}.",
        tokens::json_b64(&json!({"alg": "none", "typ": "JWT"})),
        tokens::json_b64(&claims)
    );
    assert_refused(&s, &token, "algorithm not allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hmac_token_signed_with_the_public_key_is_401() {
    let s = setup().await;
    let claims = good_claims(&s.issuer.url, "a@example.com");
    let (_, pem) = public_key_encodings(&s.key.jwk).into_iter().next().unwrap();
    let token = sign_hmac(
        "HS256",
        &pem,
        &json!({"alg": "HS256", "typ": "JWT", "kid": s.key.kid}),
        &claims,
    );
    assert_refused(&s, &token, "algorithm not allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_a_key_not_in_the_jwks_is_401() {
    let s = setup().await;
    let stranger = generate_rsa_key("not-published");
    let claims = good_claims(&s.issuer.url, "a@example.com");
    assert_refused(&s, &sign(&stranger, &claims), "unknown signing key").await;
    // Our own key under the published key id: the signature does not verify.
    let forged = sign_rsa(
        &stranger,
        &json!({"alg": "RS256", "kid": s.key.kid}),
        &claims,
    );
    assert_refused(&s, &forged, "bad signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_token_is_401() {
    let s = setup().await;
    for garbage in ["abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.not-base64!.x"] {
        assert_refused(&s, garbage, "malformed token").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_api_key_is_401() {
    let s = setup().await;
    let admin = M87::new(
        &s.server.url,
        &s.data.join("../admin"),
        Some(&s.server.admin_key()),
    );
    let created: serde_json::Value = tokio::task::block_in_place(|| {
        serde_json::from_str(&admin.ok(&[
            "api-keys",
            "create",
            "--email",
            "bob@example.com",
            "-o",
            "json",
        ]))
        .unwrap()
    });
    tokio::task::block_in_place(|| {
        admin.ok(&["api-keys", "revoke", created["id"].as_str().unwrap()])
    });
    assert_refused(&s, created["key"].as_str().unwrap(), "revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_key_rotation_needs_no_restart() {
    let provider = OidcProvider::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("OAUTH_ISSUER", provider.issuer()),
        ("OAUTH_AUDIENCE", provider.audience()),
    ];
    let server = tokio::task::block_in_place(|| {
        Server::start_with_env(&tmp.path().join("data"), "127.0.0.1:0", &env)
    });
    let whoami = |token: String| {
        let url = server.url.clone();
        async move {
            ApiClient::new(&url, Some(token), true)
                .unwrap()
                .get::<WhoAmI>("/v1/whoami")
                .await
        }
    };
    let first = provider.sign_in("carol@example.com").await;
    assert_eq!(
        whoami(first.access_token.clone())
            .await
            .unwrap()
            .email
            .unwrap()
            .as_str(),
        "carol@example.com"
    );
    let new_kid = provider.rotate_keys().await;
    let second = provider.sign_in("carol@example.com").await;
    assert_eq!(tokens::kid_of(&second.access_token), new_kid);
    assert_eq!(
        whoami(second.access_token)
            .await
            .unwrap()
            .email
            .unwrap()
            .as_str(),
        "carol@example.com"
    );
    // The auth config tells the CLI where to sign in.
    let config: m87_events::api::AuthConfig = ApiClient::new(&server.url, None, true)
        .unwrap()
        .get("/v1/auth/config")
        .await
        .unwrap();
    assert_eq!(config.issuer, provider.issuer());
}
