//! The release routes through the router: the manifest verifies with the control plane's
//! session key (the one devices verify session tokens with); `install.sh` carries the server's
//! URL and pins and refuses a Host it cannot put into a script; without releases every route
//! says how to publish one; the manifest route is in the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use m87_control_plane::api::releases::ReleasesConfig;
use m87_control_plane::api::{AppState, app};
use m87_control_plane::config::Settings;
use m87_control_plane::server::open_in_memory;
use m87_control_plane::service::ControlPlane;
use m87_events::release::{ReleaseError, SignedManifest};
use tower::ServiceExt;

async fn get(router: &axum::Router, path: &str, host: &str) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder()
        .uri(path)
        .header("host", host)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(
        "192.0.2.10:5555".parse().unwrap(),
    ));
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

async fn with_releases(dir: &std::path::Path) -> (ControlPlane, axum::Router) {
    let cp = open_in_memory(Settings::default()).await.unwrap();
    let config = ReleasesConfig {
        dir: dir.to_path_buf(),
        public_url: None,
        tls_pin: Some("sha256//abc=".into()),
        fingerprint: Some("SHA256:AB:CD".into()),
    };
    let router = app(AppState::new(cp.clone()).with_releases(config));
    (cp, router)
}

fn publish(dir: &std::path::Path) {
    let manifest = serde_json::json!({
        "version": "1.2.3",
        "artifacts": [{ "target": "x86_64-unknown-linux-musl", "file": "m87-x86_64-unknown-linux-musl",
                        "size": 4, "sha256": "ab".repeat(32) }],
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

#[tokio::test]
async fn the_manifest_is_signed_with_the_session_key() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path());
    let (cp, router) = with_releases(dir.path()).await;
    let (status, body) = get(&router, "/v1/releases", "m87.example.com").await;
    assert_eq!(status, StatusCode::OK);
    let signed: SignedManifest = serde_json::from_slice(&body).unwrap();
    let manifest = signed.verify(&cp.session_verifier()).unwrap();
    assert_eq!(manifest.version, "1.2.3");
    assert_eq!(signed.public_key, cp.session_verifier().public_key());
    // Another control plane's key does not verify it.
    let other = open_in_memory(Settings::default()).await.unwrap();
    assert_eq!(
        signed.verify(&other.session_verifier()),
        Err(ReleaseError::BadSignature)
    );
}

#[tokio::test]
async fn install_sh_names_this_server_and_refuses_a_host_it_cannot_quote() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path());
    let (_, router) = with_releases(dir.path()).await;
    let (status, body) = get(&router, "/install.sh", "m87.example.com:8085").await;
    assert_eq!(status, StatusCode::OK);
    let script = String::from_utf8(body).unwrap();
    assert!(script.contains("URL='https://m87.example.com:8085'"));
    assert!(script.contains("PIN='sha256//abc='"));
    assert!(script.contains("FINGERPRINT='SHA256:AB:CD'"));
    assert!(!script.contains("@M87_"));
    let (status, _) = get(&router, "/install.sh", "x';reboot;'").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn without_a_release_the_routes_say_how_to_publish_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_, router) = with_releases(dir.path()).await;
    for path in ["/v1/releases", "/releases/x86_64-unknown-linux-musl/m87"] {
        let (status, body) = get(&router, path, "h").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "no_release");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("scripts/build-dist")
        );
    }
    let cp = open_in_memory(Settings::default()).await.unwrap();
    let unconfigured = app(AppState::new(cp));
    let (status, _) = get(&unconfigured, "/install.sh", "h").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_manifest_route_is_in_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let (_, router) = with_releases(dir.path()).await;
    let (_, body) = get(&router, "/v1/openapi.json", "h").await;
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        doc["paths"]
            .as_object()
            .unwrap()
            .contains_key("/v1/releases")
    );
}
