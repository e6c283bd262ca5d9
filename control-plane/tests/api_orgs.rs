//! Organizations, roles and what each role may do, through the router.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/api_harness.rs"]
mod harness;

use axum::http::StatusCode;
use harness::Api;
use serde_json::json;

#[tokio::test]
async fn organizations_roles_and_capabilities() {
    let api = Api::new().await;
    let alice = api.user_key("alice@example.com").await;
    let bob = api.user_key("bob@example.com").await;
    let carol = api.user_key("carol@example.com").await;

    // Alice creates acme and is its admin; ids are unique.
    let a = api
        .call(
            "POST",
            "/v1/orgs",
            Some(&alice),
            Some(json!({"id": "acme", "name": "Acme Robots"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(a.body["role"], "admin");
    api.refused(
        "POST",
        "/v1/orgs",
        Some(&bob),
        Some(json!({"id": "acme"})),
        StatusCode::CONFLICT,
        "already_exists",
    )
    .await;
    api.refused(
        "POST",
        "/v1/orgs",
        Some(&bob),
        Some(json!({"id": "Not Valid"})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;

    // Bob joins as member, Carol as viewer; non-admins cannot manage members.
    for (email, role) in [
        ("bob@example.com", "member"),
        ("carol@example.com", "viewer"),
    ] {
        let a = api
            .call(
                "POST",
                "/v1/orgs/acme/members",
                Some(&alice),
                Some(json!({"email": email, "role": role})),
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    }
    api.refused(
        "POST",
        "/v1/orgs/acme/members",
        Some(&bob),
        Some(json!({"email": "x@example.com", "role": "admin"})),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let stranger = api.user_key("eve@example.com").await;
    api.refused(
        "GET",
        "/v1/orgs/acme/members",
        Some(&stranger),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let members = api
        .call("GET", "/v1/orgs/acme/members", Some(&carol), None)
        .await;
    assert_eq!(members.body.as_array().unwrap().len(), 3);
    let me = api.call("GET", "/v1/whoami", Some(&bob), None).await;
    assert_eq!(
        me.body["memberships"],
        json!([{"org_id": "acme", "role": "member"}])
    );
    assert!(
        me.body["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("org:acme"))
    );

    // A device registers for the organization: a member sees it but may not approve (403);
    // the org admin approves.
    let req = api.register("device-acme1", "org:acme").await;
    assert_eq!(
        api.call("GET", "/v1/devices", Some(&bob), None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    api.refused(
        "POST",
        &format!("/v1/registrations/{req}/approve"),
        Some(&bob),
        None,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    api.refused(
        "POST",
        &format!("/v1/registrations/{req}/approve"),
        Some(&stranger),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        api.call(
            "POST",
            &format!("/v1/registrations/{req}/approve"),
            Some(&alice),
            None
        )
        .await
        .status,
        StatusCode::OK
    );

    // A viewer may not operate it (403); a member may (here: the device is offline, 409).
    let exec = json!({"operation": "exec", "args": {"argv": ["true"]}});
    api.refused(
        "POST",
        "/v1/devices/device-acme1/sessions",
        Some(&carol),
        Some(exec.clone()),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    api.refused(
        "POST",
        "/v1/devices/device-acme1/sessions",
        Some(&stranger),
        Some(exec.clone()),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let a = api
        .call(
            "POST",
            "/v1/devices/device-acme1/sessions",
            Some(&bob),
            Some(exec.clone()),
        )
        .await;
    assert!(
        a.code() == "device_offline" || a.code() == "no_relay",
        "{:?}",
        a.body
    );

    // Promote Carol; the last admin cannot leave; deleting the org takes the access away.
    let a = api
        .call(
            "PUT",
            "/v1/orgs/acme/members/carol@example.com",
            Some(&alice),
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = api
        .call(
            "POST",
            "/v1/devices/device-acme1/sessions",
            Some(&carol),
            Some(exec),
        )
        .await;
    assert_ne!(a.code(), "forbidden");
    api.refused(
        "DELETE",
        "/v1/orgs/acme/members/alice@example.com",
        Some(&alice),
        None,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    api.refused(
        "DELETE",
        "/v1/orgs/acme",
        Some(&bob),
        None,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(
        api.call("DELETE", "/v1/orgs/acme", Some(&alice), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call("GET", "/v1/devices", Some(&bob), None).await.body,
        json!([])
    );
    assert_eq!(
        api.call("GET", "/v1/orgs", Some(&bob), None).await.body,
        json!([])
    );
}
