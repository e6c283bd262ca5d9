//! Registration flooding: limits per client address (behind a trusted proxy too), per address
//! prefix and per owner scope; the cap on pending requests per scope; and the device list that
//! keeps a real request findable in a flood (name filter, newest first, pending counts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/api_harness.rs"]
mod harness;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use harness::{Answer, Api, registration};
use m87_control_plane::api::client_addr::TrustedProxies;
use m87_control_plane::api::{AppState, app};
use m87_control_plane::config::Settings;
use m87_control_plane::server::open_single_machine;
use serde_json::{Value, json};

/// The test's own loopback address, trusted as the proxy.
const PROXY: &str = "127.0.0.1:40000";
const OWNER: &str = "user:admin@localhost";

fn settings() -> Settings {
    Settings {
        registrations_per_minute: 1000,
        registrations_per_prefix_per_minute: 1000,
        registrations_per_scope_per_minute: 1000,
        max_pending_per_scope: 1000,
        ..Settings::default()
    }
}

fn behind_loopback_proxy(s: Settings) -> Settings {
    Settings {
        trusted_proxies: TrustedProxies::new(vec!["127.0.0.1".parse().unwrap()]),
        ..s
    }
}

/// `POST /v1/registrations` of `body` from TCP peer `peer`, forwarding `xff` when given.
async fn register_from(
    api: &Api,
    peer: &str,
    xff: Option<&str>,
    body: Value,
) -> (Answer, HeaderMap) {
    let headers: Vec<(&str, &str)> = xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
    api.raw_from(
        peer,
        &headers,
        "POST",
        "/v1/registrations",
        None,
        Body::from(body.to_string()),
        true,
    )
    .await
}

fn assert_limited(answer: &(Answer, HeaderMap), limit: &str) {
    let (a, headers) = answer;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{:?}",
        a.body
    );
    let policy = headers["ratelimit-policy"].to_str().unwrap();
    assert!(policy.starts_with(&format!("\"{limit}\";")), "{policy}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
}

fn assert_created(answer: &(Answer, HeaderMap)) {
    assert_eq!(answer.0.status, StatusCode::CREATED, "{:?}", answer.0.body);
}

/// The source address recorded with the registration of `device`.
async fn recorded_source(api: &Api, device: &str) -> Option<String> {
    api.cp
        .store()
        .read_all(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| {
            e.event.event_type() == "RegistrationRequested"
                && serde_json::to_string(&e.event)
                    .unwrap()
                    .contains(&format!("\"{device}\""))
        })
        .and_then(|e| e.metadata.source_ip.map(|ip| ip.to_string()))
}

#[tokio::test]
async fn forwarded_addresses_behind_a_trusted_proxy_each_get_their_own_bucket() {
    let api = Api::with(behind_loopback_proxy(Settings {
        registrations_per_minute: 2,
        ..settings()
    }))
    .await;
    let a = Some("6.6.6.6, 198.51.100.1");
    assert_created(&register_from(&api, PROXY, a, registration("device-xa001", OWNER)).await);
    assert_created(&register_from(&api, PROXY, a, registration("device-xa002", OWNER)).await);
    let before = api.head().await;
    assert_limited(
        &register_from(&api, PROXY, a, registration("device-xa003", OWNER)).await,
        "address",
    );
    assert_eq!(
        api.head().await,
        before,
        "a limited request records nothing"
    );
    // Another client behind the same proxy has its own bucket.
    let b = Some("203.0.113.7");
    assert_created(&register_from(&api, PROXY, b, registration("device-xb001", OWNER)).await);
    // The forwarded address is what the event records, not the proxy's nor the forged one.
    assert_eq!(
        recorded_source(&api, "device-xa001").await.as_deref(),
        Some("198.51.100.1")
    );
    assert_eq!(
        recorded_source(&api, "device-xb001").await.as_deref(),
        Some("203.0.113.7")
    );
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let api = Api::with(behind_loopback_proxy(Settings {
        registrations_per_minute: 2,
        ..settings()
    }))
    .await;
    let peer = "192.0.2.50:1234";
    for (n, xff) in ["198.51.100.1", "198.51.100.2"].iter().enumerate() {
        let body = registration(&format!("device-un00{n}"), OWNER);
        assert_created(&register_from(&api, peer, Some(xff), body).await);
    }
    assert_limited(
        &register_from(
            &api,
            peer,
            Some("198.51.100.3"),
            registration("device-un009", OWNER),
        )
        .await,
        "address",
    );
    assert_eq!(
        recorded_source(&api, "device-un000").await.as_deref(),
        Some("192.0.2.50")
    );
    // And with no proxy configured at all, the loopback peer's header is ignored too.
    let plain = Api::with(settings()).await;
    register_from(
        &plain,
        PROXY,
        Some("198.51.100.1"),
        registration("device-un100", OWNER),
    )
    .await;
    assert_eq!(
        recorded_source(&plain, "device-un100").await.as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn prefix_limit_spans_the_addresses_of_one_24() {
    let api = Api::with(Settings {
        registrations_per_prefix_per_minute: 3,
        ..settings()
    })
    .await;
    for n in 1..=3 {
        let peer = format!("192.0.2.{n}:1000");
        let body = registration(&format!("device-px00{n}"), OWNER);
        assert_created(&register_from(&api, &peer, None, body).await);
    }
    assert_limited(
        &register_from(
            &api,
            "192.0.2.200:1000",
            None,
            registration("device-px009", OWNER),
        )
        .await,
        "prefix",
    );
    assert_created(
        &register_from(
            &api,
            "192.0.3.1:1000",
            None,
            registration("device-px010", OWNER),
        )
        .await,
    );
}

#[tokio::test]
async fn scope_limit_counts_requests_for_one_owner_scope() {
    let api = Api::with(Settings {
        registrations_per_scope_per_minute: 2,
        ..settings()
    })
    .await;
    for n in 1..=2 {
        let peer = format!("198.51.{n}.1:1000");
        let body = registration(&format!("device-sc00{n}"), "org:acme");
        assert_created(&register_from(&api, &peer, None, body).await);
    }
    assert_limited(
        &register_from(
            &api,
            "198.51.9.1:1",
            None,
            registration("device-sc009", "org:acme"),
        )
        .await,
        "scope",
    );
    assert_created(
        &register_from(
            &api,
            "198.51.9.1:1",
            None,
            registration("device-sc010", OWNER),
        )
        .await,
    );
}

#[tokio::test]
async fn pending_cap_refuses_the_next_request_and_records_nothing() {
    let api = Api::with(Settings {
        max_pending_per_scope: 3,
        ..settings()
    })
    .await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(api.register(&format!("device-cap0{n}"), OWNER).await);
    }
    api.refused(
        "POST",
        "/v1/registrations",
        None,
        Some(registration("device-cap09", OWNER)),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_pending",
    )
    .await;
    // Other scopes are not affected.
    api.register("device-cap10", "org:acme").await;
    // A decision makes room.
    let a = api
        .call(
            "POST",
            &format!("/v1/registrations/{}/reject", ids[0]),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    api.register("device-cap11", OWNER).await;
}

/// On the SQLite store (appends on blocking threads, so concurrent commands really overlap).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_do_not_pass_the_pending_cap_together() {
    let dir = tempfile::tempdir().unwrap();
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let cp = open_single_machine(
        dir.path(),
        Settings {
            max_pending_per_scope: 3,
            ..settings()
        },
        stopping,
    )
    .await
    .unwrap();
    let admin = cp.bootstrap_admin_key().await.unwrap().unwrap();
    let router = app(AppState::new(cp.clone()));
    let api = std::sync::Arc::new(Api { cp, router, admin });
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let api = std::sync::Arc::clone(&api);
            tokio::spawn(async move {
                let body = registration(&format!("device-cc{n:03}"), OWNER);
                register_from(&api, "192.0.2.10:1", None, body)
                    .await
                    .0
                    .status
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 3);
    let recorded = api
        .cp
        .store()
        .read_all(0, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event.event_type() == "RegistrationRequested")
        .count();
    assert_eq!(recorded, 3);
}

fn named(device: &str, name: &str, owner: &str) -> Value {
    let mut body = registration(device, owner);
    body["name"] = json!(name);
    body
}

#[tokio::test]
async fn device_list_filters_by_name_newest_first_and_counts_pending() {
    let api = Api::with(settings()).await;
    for n in 0..20 {
        let body = named(&format!("device-fl{n:03}"), &format!("flood-{n}"), OWNER);
        assert_created(&register_from(&api, "192.0.2.10:1", None, body).await);
    }
    let body = named("device-real1", "Kitchen-Robot", OWNER);
    assert_created(&register_from(&api, "192.0.2.10:1", None, body).await);
    let body = named("device-other", "flood-x", "org:acme");
    assert_created(&register_from(&api, "192.0.2.10:1", None, body).await);

    // Newest first: the real request is on top of the flood.
    let all = api.call("GET", "/v1/devices", Some(&api.admin), None).await;
    let rows = all.body.as_array().unwrap();
    assert_eq!(rows.len(), 22);
    assert_eq!(rows[0]["id"], "device-other");
    assert_eq!(rows[1]["id"], "device-real1");
    let times: Vec<&str> = rows
        .iter()
        .map(|r| r["requested_at"].as_str().unwrap())
        .collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        times.iter().map(|t| t.parse().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // A substring of the name, ignoring case.
    let found = api
        .call("GET", "/v1/devices?name=kitchen", Some(&api.admin), None)
        .await;
    assert_eq!(found.status, StatusCode::OK);
    let ids: Vec<&str> = found
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["device-real1"]);
    let pending = api
        .call(
            "GET",
            "/v1/devices?status=pending&name=FLOOD-1",
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(
        pending.body.as_array().unwrap().len(),
        11,
        "flood-1 and flood-10..19"
    );
    let none = api
        .call("GET", "/v1/devices?status=approved", Some(&api.admin), None)
        .await;
    assert_eq!(none.body, json!([]));
    let bad = api
        .call("GET", "/v1/devices?status=sleeping", Some(&api.admin), None)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Counts per scope, fullest first.
    let counts = api
        .call("GET", "/v1/registrations/pending", Some(&api.admin), None)
        .await;
    assert_eq!(counts.status, StatusCode::OK, "{:?}", counts.body);
    assert_eq!(counts.body["total"], 22);
    assert_eq!(counts.body["max_per_scope"], 1000);
    assert_eq!(
        counts.body["scopes"],
        json!([{"owner_scope": OWNER, "pending": 21}, {"owner_scope": "org:acme", "pending": 1}])
    );
    // Someone else sees only their own scopes' counts.
    let bob = api.user_key("bob@example.com").await;
    let theirs = api
        .call("GET", "/v1/registrations/pending", Some(&bob), None)
        .await;
    assert_eq!(theirs.body["total"], 0);
}
