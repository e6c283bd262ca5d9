//! Registration flooding against the real server behind a (simulated) trusted proxy: each
//! forwarded client has its own limit, and `m87 devices list` finds the real request by name,
//! newest first, with the pending count per scope.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{M87, Server};
use serde_json::{Value, json};

fn registration(device: &str, name: &str) -> Value {
    json!({
        "device_id": device,
        "name": name,
        "owner_scope": "user:admin@localhost",
        "system_info": {
            "hostname": "h", "platform": "linux", "architecture": "x86_64",
            "os_version": "Debian 12", "kernel": "6.1", "cpu_count": 4, "memory_bytes": 1024
        },
        "claim_secret": "0123456789abcdef0123456789abcdef-claim",
    })
}

async fn register(
    http: &reqwest::Client,
    url: &str,
    forwarded_for: &str,
    device: &str,
    name: &str,
) -> reqwest::Response {
    http.post(format!("{url}/v1/registrations"))
        .header("x-forwarded-for", forwarded_for)
        .json(&registration(device, name))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_clients_are_limited_apart_and_the_list_finds_the_real_request() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            ("M87_TRUSTED_PROXIES", "127.0.0.1"),
            ("M87_REGISTRATIONS_PER_MINUTE", "2"),
        ],
    );
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = &server.url;
    for n in 0..2 {
        let device = format!("flood-device-{n}");
        let r = register(&http, url, "198.51.100.1", &device, &device).await;
        assert_eq!(r.status(), 201);
    }
    let r = register(&http, url, "198.51.100.1", "flood-device-9", "flood-9").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers()["retry-after"].to_str().is_ok());
    let policy = r.headers()["ratelimit-policy"].to_str().unwrap().to_owned();
    assert!(policy.starts_with("\"address\";q=2;"), "{policy}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another client behind the same proxy is not blocked by the first.
    let r = register(&http, url, "203.0.113.7", "kitchen-device", "Kitchen-Robot").await;
    assert_eq!(r.status(), 201);

    let admin = M87::new(url, &dir.path().join("cli"), Some(&server.admin_key()));
    let found: Value = serde_json::from_str(&admin.ok(&[
        "devices", "list", "--name", "kitchen", "--status", "pending", "--output", "json",
    ]))
    .unwrap();
    let names: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Kitchen-Robot"]);
    let approved: Value =
        serde_json::from_str(&admin.ok(&["devices", "list", "--status", "approved", "-o", "json"]))
            .unwrap();
    assert_eq!(approved, json!([]));

    let table = admin.ok(&["devices", "list"]);
    let first_row = table.lines().nth(1).unwrap();
    assert!(
        first_row.starts_with("Kitchen-Robot"),
        "newest first:\n{table}"
    );
    assert!(
        table.contains("pending: 3 (user:admin@localhost 3/100)"),
        "{table}"
    );
}
