//! The REST API driven through the router (no socket): every error case answers in the one JSON
//! format and leaves the store unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/api_harness.rs"]
mod harness;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use harness::{Api, SECRET, registration};
use m87_control_plane::config::Settings;
use serde_json::json;
use std::time::Duration;
use tower::ServiceExt;

#[tokio::test]
async fn register_approve_poll_issues_the_key_exactly_once() {
    let api = Api::new().await;
    let req = api.register("device-0001", "user:admin@localhost").await;
    let poll = format!("/v1/registrations/{req}/poll");
    let a = api
        .call("POST", &poll, None, Some(json!({"claim_secret": SECRET})))
        .await;
    assert_eq!(a.body["status"], "pending");
    assert!(a.body.get("api_key").is_none());

    let a = api
        .call(
            "POST",
            &format!("/v1/registrations/{req}/approve"),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["device_id"], "device-0001");

    let a = api
        .call("POST", &poll, None, Some(json!({"claim_secret": SECRET})))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["status"], "approved");
    let key = a.body["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("m87d_"));

    // Never again.
    api.refused(
        "POST",
        &poll,
        None,
        Some(json!({"claim_secret": SECRET})),
        StatusCode::CONFLICT,
        "credentials_already_issued",
    )
    .await;

    // The key works as the device, and the device is listed as approved.
    let me = api.call("GET", "/v1/whoami", Some(&key), None).await;
    assert_eq!(me.body["kind"], "device");
    assert_eq!(me.body["device_id"], "device-0001");
    let list = api.call("GET", "/v1/devices", Some(&api.admin), None).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(list.body[0]["status"], "approved");
    assert_eq!(list.body[0]["request_id"], req.as_str());

    // No key or secret is ever in the log.
    let events = api.cp.store().read_all(0, 100).await.unwrap();
    let text = serde_json::to_string(
        &events
            .iter()
            .map(|e| (e.event.data(), &e.metadata))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!text.contains(&key) && !text.contains(SECRET) && !text.contains(&api.admin));

    // Removing the device makes its key stop working.
    let a = api
        .call("DELETE", "/v1/devices/device-0001", Some(&api.admin), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    api.refused(
        "GET",
        "/v1/whoami",
        Some(&key),
        None,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    let list = api.call("GET", "/v1/devices", Some(&api.admin), None).await;
    assert_eq!(list.body[0]["status"], "removed");
}

#[tokio::test]
async fn malformed_oversized_and_unknown_input_is_refused() {
    let api = Api::new().await;
    let before = api.head().await;
    let a = api
        .raw(
            "POST",
            "/v1/registrations",
            None,
            Body::from("{not json"),
            true,
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let big = format!("{{\"claim_secret\": \"{}\"}}", "x".repeat(100_000));
    let a = api
        .raw("POST", "/v1/registrations", None, Body::from(big), true)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let a = api
        .raw("POST", "/v1/registrations", None, Body::from("{}"), false)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    assert_eq!(api.head().await, before);

    let mut unknown = registration("device-0001", "user:admin@localhost");
    unknown["surprise"] = json!(1);
    api.refused(
        "POST",
        "/v1/registrations",
        None,
        Some(unknown),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    let mut bad_scope = registration("device-0001", "user:admin@localhost");
    bad_scope["owner_scope"] = json!("team:x");
    api.refused(
        "POST",
        "/v1/registrations",
        None,
        Some(bad_scope),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    let mut short_secret = registration("device-0001", "user:admin@localhost");
    short_secret["claim_secret"] = json!("short");
    api.refused(
        "POST",
        "/v1/registrations",
        None,
        Some(short_secret),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    let mut bad_id = registration("BAD ID", "user:admin@localhost");
    bad_id["device_id"] = json!("BAD ID");
    api.refused(
        "POST",
        "/v1/registrations",
        None,
        Some(bad_id),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    api.refused(
        "POST",
        "/v1/registrations/not-a-uuid/approve",
        Some(&api.admin),
        None,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    api.refused(
        "GET",
        "/v1/nothing-here",
        Some(&api.admin),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    api.refused(
        "PUT",
        "/v1/devices",
        Some(&api.admin),
        None,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn creating_an_api_key_needs_a_json_content_type() {
    let api = Api::new().await;
    let before = api.head().await;
    let body = json!({"name": "ci"}).to_string();
    let a = api
        .raw(
            "POST",
            "/v1/api-keys",
            Some(&api.admin),
            Body::from(body.clone()),
            false,
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let req = Request::builder()
        .method("POST")
        .uri("/v1/api-keys")
        .header("authorization", format!("Bearer {}", api.admin))
        .header("content-type", "text/plain")
        .body(Body::from(body.clone()))
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(api.head().await, before, "no key was made");

    // An empty body still needs no type; a JSON one with its type makes the key.
    let a = api
        .call("POST", "/v1/api-keys", Some(&api.admin), None)
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let a = api
        .raw(
            "POST",
            "/v1/api-keys",
            Some(&api.admin),
            Body::from(body),
            true,
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.body["name"], "ci");
}

#[tokio::test]
async fn decisions_on_unknown_decided_and_expired_requests() {
    let api = Api::new().await;
    let unknown = "01a20299-2909-75d0-b4ed-9ff6c41df9fd";
    api.refused(
        "POST",
        &format!("/v1/registrations/{unknown}/approve"),
        Some(&api.admin),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    api.refused(
        "POST",
        &format!("/v1/registrations/{unknown}/poll"),
        None,
        Some(json!({"claim_secret": SECRET})),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let req = api.register("device-0002", "user:admin@localhost").await;
    api.refused(
        "POST",
        &format!("/v1/registrations/{req}/poll"),
        None,
        Some(json!({"claim_secret": "wrong-wrong-wrong-wrong-wrong-wrong"})),
        StatusCode::UNAUTHORIZED,
        "invalid_claim_secret",
    )
    .await;
    let a = api
        .call(
            "POST",
            &format!("/v1/registrations/{req}/reject"),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (StatusCode::OK, Some("rejected"))
    );
    api.refused(
        "POST",
        &format!("/v1/registrations/{req}/approve"),
        Some(&api.admin),
        None,
        StatusCode::CONFLICT,
        "already_decided",
    )
    .await;
    api.refused(
        "POST",
        &format!("/v1/registrations/{req}/reject"),
        Some(&api.admin),
        None,
        StatusCode::CONFLICT,
        "already_decided",
    )
    .await;
    let a = api
        .call(
            "POST",
            &format!("/v1/registrations/{req}/poll"),
            None,
            Some(json!({"claim_secret": SECRET})),
        )
        .await;
    assert_eq!(a.body["status"], "rejected");

    let expiring = Api::with(Settings {
        registration_ttl: Duration::ZERO,
        ..Settings::default()
    })
    .await;
    let req = expiring
        .register("device-0003", "user:admin@localhost")
        .await;
    expiring
        .refused(
            "POST",
            &format!("/v1/registrations/{req}/approve"),
            Some(&expiring.admin),
            None,
            StatusCode::CONFLICT,
            "expired",
        )
        .await;
    expiring
        .refused(
            "POST",
            &format!("/v1/registrations/{req}/reject"),
            Some(&expiring.admin),
            None,
            StatusCode::CONFLICT,
            "expired",
        )
        .await;
    let list = expiring
        .call("GET", "/v1/devices", Some(&expiring.admin), None)
        .await;
    assert_eq!(list.body[0]["status"], "expired");
    // The sweeper records the expiry once.
    assert_eq!(expiring.cp.expire_overdue().await.unwrap(), 1);
    assert_eq!(expiring.cp.expire_overdue().await.unwrap(), 0);
}

#[tokio::test]
async fn keys_missing_wrong_and_revoked_are_401() {
    let api = Api::new().await;
    api.refused(
        "GET",
        "/v1/devices",
        None,
        None,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    api.refused(
        "GET",
        "/v1/devices",
        Some("m87u_0000000000000000000000000000000000000000000000000"),
        None,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    api.refused(
        "GET",
        "/v1/devices",
        Some("garbage"),
        None,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;

    let bob = api.user_key("bob@example.com").await;
    assert_eq!(
        api.call("GET", "/v1/devices", Some(&bob), None)
            .await
            .status,
        StatusCode::OK
    );
    let keys = api.call("GET", "/v1/api-keys", Some(&bob), None).await;
    assert_eq!(
        keys.body.as_array().unwrap().len(),
        1,
        "bob sees only his key"
    );
    let id = keys.body[0]["id"].as_str().unwrap().to_owned();
    let a = api
        .call("DELETE", &format!("/v1/api-keys/{id}"), Some(&bob), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let before = api.head().await;
    let a = api.call("GET", "/v1/devices", Some(&bob), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    assert_eq!(api.head().await, before);
    api.refused(
        "DELETE",
        &format!("/v1/api-keys/{id}"),
        Some(&api.admin),
        None,
        StatusCode::CONFLICT,
        "already_revoked",
    )
    .await;
}

#[tokio::test]
async fn scopes_hide_other_peoples_devices() {
    let api = Api::new().await;
    let alice = api.user_key("alice@example.com").await;
    let bob = api.user_key("bob@example.com").await;
    let req = api
        .register("device-0a11ce", "user:alice@example.com")
        .await;

    // Bob cannot see, approve or reject Alice's request: it does not exist for him.
    assert_eq!(
        api.call("GET", "/v1/devices", Some(&bob), None).await.body,
        json!([])
    );
    api.refused(
        "POST",
        &format!("/v1/registrations/{req}/approve"),
        Some(&bob),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    api.refused(
        "POST",
        &format!("/v1/registrations/{req}/reject"),
        Some(&bob),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Bob cannot make keys for Alice.
    api.refused(
        "POST",
        "/v1/api-keys",
        Some(&bob),
        Some(json!({"email": "alice@example.com"})),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let a = api
        .call(
            "POST",
            &format!("/v1/registrations/{req}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    api.refused(
        "GET",
        "/v1/devices/device-0a11ce",
        Some(&bob),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    api.refused(
        "DELETE",
        "/v1/devices/device-0a11ce",
        Some(&bob),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    api.refused(
        "POST",
        "/v1/devices/device-0a11ce/access",
        Some(&bob),
        Some(json!({"scope": "user:bob@example.com"})),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Shared with Bob: he sees it, but may not remove it (403, not 404).
    let a = api
        .call(
            "POST",
            "/v1/devices/device-0a11ce/access",
            Some(&alice),
            Some(json!({"scope": "user:bob@example.com"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let seen = api
        .call("GET", "/v1/devices/device-0a11ce", Some(&bob), None)
        .await;
    assert_eq!(seen.body["allowed_scopes"], json!(["user:bob@example.com"]));
    api.refused(
        "DELETE",
        "/v1/devices/device-0a11ce",
        Some(&bob),
        None,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let a = api
        .call(
            "DELETE",
            "/v1/devices/device-0a11ce/access/user:bob@example.com",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    api.refused(
        "GET",
        "/v1/devices/device-0a11ce",
        Some(&bob),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // A device key cannot act as a user.
    let poll = api
        .call(
            "POST",
            &format!("/v1/registrations/{req}/poll"),
            None,
            Some(json!({"claim_secret": SECRET})),
        )
        .await;
    let device_key = poll.body["api_key"].as_str().unwrap().to_owned();
    api.refused(
        "GET",
        "/v1/devices",
        Some(&device_key),
        None,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    api.refused(
        "POST",
        "/v1/api-keys",
        Some(&device_key),
        None,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_approvals_exactly_one_succeeds() {
    let api = Api::new().await;
    let req = api.register("device-race1", "user:admin@localhost").await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let router = api.router.clone();
        let request = Request::builder()
            .method("POST")
            .uri(format!("/v1/registrations/{req}/approve"))
            .header("authorization", format!("Bearer {}", api.admin))
            .body(Body::empty())
            .unwrap();
        tasks.push(tokio::spawn(async move {
            router.oneshot(request).await.unwrap().status()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let enrolled = api
        .cp
        .store()
        .read_all(0, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event.event_type() == "DeviceEnrolled")
        .count();
    assert_eq!(enrolled, 1);
}

#[tokio::test]
async fn registrations_are_rate_limited_per_address() {
    let api = Api::with(Settings {
        registrations_per_minute: 2,
        ..Settings::default()
    })
    .await;
    api.register("device-rl001", "user:admin@localhost").await;
    api.register("device-rl002", "user:admin@localhost").await;
    let before = api.head().await;
    let a = api
        .call(
            "POST",
            "/v1/registrations",
            None,
            Some(registration("device-rl003", "user:admin@localhost")),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(api.head().await, before);
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let api = Api::new().await;
    let doc = api.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths = doc.body["paths"].as_object().unwrap();
    for p in [
        "/v1/health",
        "/v1/whoami",
        "/v1/registrations",
        "/v1/registrations/{id}/poll",
        "/v1/registrations/{id}/approve",
        "/v1/registrations/{id}/reject",
        "/v1/devices",
        "/v1/devices/{id}",
        "/v1/devices/{id}/access",
        "/v1/devices/{id}/access/{scope}",
        "/v1/api-keys",
        "/v1/api-keys/{id}",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
}
