//! Session recording through the router: policies and who may set them, grants that say a
//! session is recorded, the device's upload and who may read it back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/api_harness.rs"]
mod harness;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use harness::{Api, SECRET};
use http_body_util::BodyExt;
use m87_control_plane::service::sessions::PresenceView;
use m87_events::DeviceId;
use m87_events::api::RelayEndpoint;
use serde_json::json;
use tower::ServiceExt;

struct Online;
impl PresenceView for Online {
    fn is_online(&self, _: &DeviceId) -> bool {
        true
    }
}

/// `acme` (alice admin, bob and carol members), its device `device-0001` online, a stranger;
/// returns the keys and the device's key.
struct World {
    api: Api,
    alice: String,
    bob: String,
    carol: String,
    eve: String,
    device: String,
}

async fn world() -> World {
    let api = Api::new().await;
    let alice = api.user_key("alice@example.com").await;
    let bob = api.user_key("bob@example.com").await;
    let carol = api.user_key("carol@example.com").await;
    let eve = api.user_key("eve@example.com").await;
    let a = api
        .call(
            "POST",
            "/v1/orgs",
            Some(&alice),
            Some(json!({"id": "acme"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    for email in ["bob@example.com", "carol@example.com"] {
        let a = api
            .call(
                "POST",
                "/v1/orgs/acme/members",
                Some(&alice),
                Some(json!({"email": email, "role": "member"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    }
    let req = api.register("device-0001", "org:acme").await;
    let a = api
        .call(
            "POST",
            &format!("/v1/registrations/{req}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let a = api
        .call(
            "POST",
            &format!("/v1/registrations/{req}/poll"),
            None,
            Some(json!({"claim_secret": SECRET})),
        )
        .await;
    let device = a.body["api_key"].as_str().unwrap().to_owned();
    api.cp.set_presence(Arc::new(Online));
    api.cp.set_relays(vec![RelayEndpoint {
        address: "127.0.0.1:9".into(),
        server_name: "relay".into(),
        cert_sha256: "00".into(),
    }]);
    World {
        api,
        alice,
        bob,
        carol,
        eve,
        device,
    }
}

impl World {
    async fn open(&self, key: &str, body: serde_json::Value) -> serde_json::Value {
        let a = self
            .api
            .call(
                "POST",
                "/v1/devices/device-0001/sessions",
                Some(key),
                Some(body),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.body
    }

    async fn upload(&self, key: &str, session: &str, cast: Vec<u8>) -> harness::Answer {
        self.api
            .raw(
                "PUT",
                &format!("/v1/device/sessions/{session}/recording?truncated=false&max_bytes=100"),
                Some(key),
                Body::from(cast),
                false,
            )
            .await
    }

    /// `GET /v1/sessions/{id}/recording`: the status and the body as text.
    async fn read(&self, key: &str, session: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .uri(format!("/v1/sessions/{session}/recording"))
            .header("authorization", format!("Bearer {key}"))
            .extension(axum::extract::ConnectInfo::<std::net::SocketAddr>(
                "192.0.2.10:5555".parse().unwrap(),
            ))
            .body(Body::empty())
            .unwrap();
        let resp = self.api.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        if status == StatusCode::OK {
            assert_eq!(resp.headers()["content-type"], "application/x-asciicast");
        }
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn cast(len: usize) -> Vec<u8> {
    let mut text = String::from("{\"version\": 2, \"width\": 80, \"height\": 24}\n");
    while text.len() < len {
        text.push_str("[0.5, \"o\", \"0123456789abcdef0123456789abcdef\"]\n");
    }
    text.into_bytes()
}

#[tokio::test]
async fn policies_are_set_by_those_who_administer_and_hidden_from_others() {
    let w = world().await;
    let a = w
        .api
        .call("GET", "/v1/orgs/acme/policy", Some(&w.bob), None)
        .await;
    assert_eq!(
        a.body,
        json!({"org_id": "acme", "record_sessions": true, "default": true})
    );
    for (path, body) in [
        ("/v1/orgs/acme/policy", json!({"record_sessions": false})),
        (
            "/v1/devices/device-0001/policy",
            json!({"record_sessions": "off"}),
        ),
    ] {
        w.api
            .refused(
                "PUT",
                path,
                Some(&w.bob),
                Some(body.clone()),
                StatusCode::FORBIDDEN,
                "forbidden",
            )
            .await;
        w.api
            .refused(
                "PUT",
                path,
                Some(&w.eve),
                Some(body),
                StatusCode::NOT_FOUND,
                "not_found",
            )
            .await;
        w.api
            .refused(
                "GET",
                path,
                Some(&w.eve),
                None,
                StatusCode::NOT_FOUND,
                "not_found",
            )
            .await;
    }
    w.api
        .refused(
            "PUT",
            "/v1/devices/device-0001/policy",
            Some(&w.alice),
            Some(json!({"record_sessions": "maybe"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
    let a = w
        .api
        .call(
            "PUT",
            "/v1/orgs/acme/policy",
            Some(&w.alice),
            Some(json!({"record_sessions": false})),
        )
        .await;
    assert_eq!(
        a.body,
        json!({"org_id": "acme", "record_sessions": false, "default": false})
    );
    let a = w
        .api
        .call(
            "GET",
            "/v1/devices/device-0001/policy",
            Some(&w.carol),
            None,
        )
        .await;
    assert_eq!(
        a.body,
        json!({"device_id": "device-0001", "record_sessions": "inherit", "effective": false, "source": "org acme"})
    );
    // Setting it again changes nothing in the log.
    let before = w.api.head().await;
    let again = w
        .api
        .call(
            "PUT",
            "/v1/orgs/acme/policy",
            Some(&w.alice),
            Some(json!({"record_sessions": false})),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(w.api.head().await, before);
}

#[tokio::test]
async fn a_recorded_session_is_uploaded_once_by_its_device_and_read_by_those_allowed() {
    let w = world().await;
    let shell = w.open(&w.bob, json!({"operation": "shell"})).await;
    assert_eq!(shell["recorded"], true);
    assert_eq!(shell["recording_policy"], "org acme");
    let plain = w
        .open(
            &w.bob,
            json!({"operation": "exec", "args": {"argv": ["ls"]}}),
        )
        .await;
    assert_eq!(plain.get("recorded"), None);
    let tty = w
        .open(
            &w.bob,
            json!({"operation": "exec", "args": {"argv": ["top"], "tty": true}}),
        )
        .await;
    assert_eq!(tty["recorded"], true);
    let sid = shell["session_id"].as_str().unwrap();

    // Only the device, only for a recorded session, only asciicast, only once.
    let a = w.upload(&w.bob, sid, cast(100)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{:?}", a.body);
    let a = w
        .upload(&w.device, plain["session_id"].as_str().unwrap(), cast(100))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{:?}", a.body);
    let a = w.upload(&w.device, sid, b"not a recording".to_vec()).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", a.body);
    assert_eq!(w.read(&w.bob, sid).await.0, StatusCode::NOT_FOUND);
    let big = cast(300 * 1024);
    let a = w.upload(&w.device, sid, big.clone()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    let a = w.upload(&w.device, sid, cast(100)).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{:?}", a.body);

    // The runner, the org's admin and the platform admin read it; a member who did not run
    // it and a stranger do not.
    for key in [&w.bob, &w.alice, &w.api.admin] {
        let (status, body) = w.read(key, sid).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_bytes(), &big[..]);
    }
    for key in [&w.carol, &w.eve] {
        assert_eq!(w.read(key, sid).await.0, StatusCode::NOT_FOUND);
    }
    // The event links it to the session, with its size and digest.
    let events = w.api.cp.store().read_all(0, 1000).await.unwrap();
    let stored = events
        .iter()
        .find_map(|e| match &e.event {
            m87_events::DomainEvent::SessionRecordingStored(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(stored.session_id.to_string(), sid);
    assert_eq!(stored.bytes, big.len() as u64);
    assert_eq!(stored.sha256.len(), 64);
}

#[tokio::test]
async fn the_openapi_document_lists_the_recording_routes() {
    let w = world().await;
    let doc = w.api.call("GET", "/v1/openapi.json", None, None).await;
    for p in [
        "/v1/orgs/{id}/policy",
        "/v1/devices/{id}/policy",
        "/v1/device/sessions/{id}/recording",
        "/v1/sessions/{id}/recording",
    ] {
        assert!(doc.body["paths"].get(p).is_some(), "{p} missing");
    }
}
