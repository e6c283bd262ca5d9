//! Session tokens and bad peers at the relay, with the real server: forged, tampered, expired,
//! replayed and unknown-device tokens are refused and recorded; garbage, oversized and stalled
//! peers lose only their own connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{M87, Server, enrolled_device};
use m87_events::SessionId;
use m87_events::api::{CreateSessionRequest, SessionGrant};
use m87_events::token::{Operation, SessionClaims, SessionSigner, now_unix};
use m87_events::tunnel::{ALPN_SESSION, Control};
use m87_transport::frames::{FrameReader, write_control};
use m87_transport::http::ApiClient;

async fn grant(server: &Server, device_id: &str) -> SessionGrant {
    let client = ApiClient::new(&server.url, Some(server.admin_key()), true).unwrap();
    client
        .post(
            &format!("/v1/devices/{device_id}/sessions"),
            &CreateSessionRequest {
                operation: Operation::Exec,
                args: serde_json::json!({"argv": ["true"]}),
            },
        )
        .await
        .unwrap()
}

/// Presents `token` at the relay; returns the answer's code ("accepted" when accepted).
async fn present(g: &SessionGrant, token: String) -> String {
    let (_ep, conn) = m87_transport::quic::connect(
        &g.relay.address,
        &g.relay.server_name,
        ALPN_SESSION,
        Some(&g.relay.cert_sha256),
    )
    .await
    .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    write_control(&mut send, &Control::SessionOpen { token })
        .await
        .unwrap();
    match FrameReader::new(recv).control().await {
        Ok(Some(Control::SessionAccepted { .. })) => "accepted".into(),
        Ok(Some(Control::Refused { code, .. })) => code,
        other => format!("{other:?}"),
    }
}

fn refusals(data: &std::path::Path) -> Vec<serde_json::Value> {
    let conn = rusqlite::Connection::open(data.join("m87.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT data FROM events WHERE event_type = 'SessionRefused'")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_at_the_relay_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _dev) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "tok-dev");
    let device_id = admin.devices()[0]["id"].as_str().unwrap().to_owned();

    let g = grant(&server, &device_id).await;
    assert_eq!(present(&g, g.token.clone()).await, "accepted");
    assert_eq!(present(&g, g.token.clone()).await, "token_replayed");

    // Tampered: the claims changed, the signature kept.
    let g2 = grant(&server, &device_id).await;
    let (body, sig) = g2.token.split_once('.').unwrap();
    let mut bytes = body.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{}.{sig}", String::from_utf8(bytes).unwrap());
    assert!(present(&g2, tampered).await.starts_with("token_"));

    // Forged with another key; expired; for a device that is not here; garbage.
    let (forger, _) = SessionSigner::generate().unwrap();
    let now = now_unix();
    let claims = SessionClaims {
        sid: SessionId::new(),
        sub: "user:mallory@example.com".into(),
        dev: device_id.parse().unwrap(),
        op: Operation::Exec,
        args: serde_json::json!({"argv": ["true"]}),
        iat: now,
        exp: now + 60,
        cred: None,
        rec: false,
    };
    assert_eq!(present(&g, forger.sign(&claims)).await, "token_invalid");
    let real = SessionSigner::from_pkcs8(&std::fs::read(data.join("session-signing.key")).unwrap())
        .unwrap();
    let expired = SessionClaims {
        sid: SessionId::new(),
        iat: now - 120,
        exp: now - 60,
        ..claims.clone()
    };
    assert_eq!(present(&g, real.sign(&expired)).await, "token_expired");
    let elsewhere = SessionClaims {
        sid: SessionId::new(),
        dev: "not-connected-device".parse().unwrap(),
        ..claims.clone()
    };
    assert_eq!(present(&g, real.sign(&elsewhere)).await, "device_offline");
    assert_eq!(present(&g, "garbage".into()).await, "token_malformed");

    // Each refusal is recorded.
    let deadline = Instant::now() + Duration::from_secs(10);
    while refusals(&data).len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let codes: Vec<String> = refusals(&data)
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_owned())
        .collect();
    for code in [
        "token_replayed",
        "token_invalid",
        "token_expired",
        "device_offline",
        "token_malformed",
    ] {
        assert!(
            codes.iter().any(|c| c == code),
            "{code} not recorded in {codes:?}"
        );
    }
    assert!(refusals(&data).iter().all(|r| r["refused_by"] == "relay"));

    // And they are on the device's audit record, as refused by the relay, with their codes
    // (the replay as a record of its own beside the session it replayed).
    let listed: Vec<serde_json::Value> = serde_json::from_str(&admin.ok(&[
        "tok-dev",
        "audit",
        "--outcome",
        "refused",
        "-o",
        "json",
    ]))
    .unwrap();
    let replay = listed
        .iter()
        .find(|r| r["reason"] == "token_replayed")
        .unwrap_or_else(|| panic!("no replay in the device's audit: {listed:#?}"));
    assert_eq!(replay["refused_by"], "relay");
    assert_eq!(
        replay["user"], "admin@localhost",
        "the replayed session's user"
    );
    let fleet: Vec<serde_json::Value> = serde_json::from_str(&admin.ok(&[
        "audit",
        "--outcome",
        "refused",
        "--max",
        "100",
        "-o",
        "json",
    ]))
    .unwrap();
    for code in [
        "token_invalid",
        "token_expired",
        "token_malformed",
        "device_offline",
    ] {
        assert!(
            fleet
                .iter()
                .any(|r| r["reason"] == code && r["refused_by"] == "relay"),
            "{code} not in the audit: {fleet:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_stalled_peers_lose_only_their_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _dev) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "peer-dev");
    let device_id = admin.devices()[0]["id"].as_str().unwrap().to_owned();
    let g = grant(&server, &device_id).await;
    let connect = || {
        m87_transport::quic::connect(
            &g.relay.address,
            &g.relay.server_name,
            ALPN_SESSION,
            Some(&g.relay.cert_sha256),
        )
    };

    // Garbage instead of a frame.
    let (_e1, garbage) = connect().await.unwrap();
    let (mut s, _r) = garbage.open_bi().await.unwrap();
    s.write_all(b"\x7fthis is not a frame").await.unwrap();
    // An oversized header: a control frame claiming 1 MiB.
    let (_e2, oversized) = connect().await.unwrap();
    let (mut s2, _r2) = oversized.open_bi().await.unwrap();
    s2.write_all(&[0x01, 0x00, 0x10, 0x00, 0x00]).await.unwrap();
    // A peer that opens a stream and stalls.
    let (_e3, stalled) = connect().await.unwrap();
    let (mut s3, _r3) = stalled.open_bi().await.unwrap();
    s3.write_all(&[0x01]).await.unwrap();

    let started = Instant::now();
    for conn in [&garbage, &oversized] {
        tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("bad peer not dropped");
    }
    tokio::time::timeout(Duration::from_secs(15), stalled.closed())
        .await
        .expect("stalled peer not dropped");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "stalled peer should get the full header timeout"
    );

    // The relay still serves everyone else.
    let out = admin.run(&["peer-dev", "exec", "--", "echo", "still here"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
}

/// Asks for an exec session of `argv` with `key`; the grant or the API's error.
async fn grant_with(
    server: &Server,
    key: &str,
    device_id: &str,
    args: serde_json::Value,
) -> Result<SessionGrant, m87_transport::http::ApiError> {
    let client = ApiClient::new(&server.url, Some(key.to_owned()), true).unwrap();
    client
        .post(
            &format!("/v1/devices/{device_id}/sessions"),
            &CreateSessionRequest {
                operation: Operation::Exec,
                args,
            },
        )
        .await
}

fn events_of_type(data: &std::path::Path, event_type: &str) -> Vec<serde_json::Value> {
    let conn = rusqlite::Connection::open(data.join("m87.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT data FROM events WHERE event_type = ?1 ORDER BY global_position")
        .unwrap();
    stmt.query_map([event_type], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

/// Waits (generously) until a refusal with `code` is recorded.
async fn refusal_recorded(data: &std::path::Path, code: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(r) = refusals(data).into_iter().find(|r| r["code"] == code) {
            return r;
        }
        assert!(Instant::now() < deadline, "no {code} refusal recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_api_key_ends_its_sessions_and_refuses_its_unused_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _dev) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "key-dev");
    let device_id = admin.devices()[0]["id"].as_str().unwrap().to_owned();
    // Two keys of the same user: K, to be revoked, and another.
    let new_key = |name: &str| -> serde_json::Value {
        serde_json::from_str(&admin.ok(&["api-keys", "create", "--name", name, "-o", "json"]))
            .unwrap()
    };
    let (k, other) = (new_key("k"), new_key("other"));
    let k_secret = k["key"].as_str().unwrap().to_owned();
    let through_k = M87::new(&server.url, &tmp.path().join("k"), Some(&k_secret));

    // A session opened through K stays up; the grant records K.
    let mut long = common::Proc::spawn(through_k.command(&[
        "key-dev",
        "exec",
        "--",
        "sh",
        "-c",
        "echo started; sleep 60",
    ]));
    long.out.wait_for("started", Duration::from_secs(30));
    let opened = events_of_type(&data, "SessionOpened");
    assert_eq!(opened.last().unwrap()["credential"]["api_key"], k["id"]);
    // Unused tokens: one through K, one through the other key.
    let argv = serde_json::json!({"argv": ["true"]});
    let unused_k = grant_with(&server, &k_secret, &device_id, argv.clone())
        .await
        .unwrap();
    let other_secret = other["key"].as_str().unwrap();
    let unused_other = grant_with(&server, other_secret, &device_id, argv)
        .await
        .unwrap();

    // K is revoked through the API: its session ends within a second or two, and says why.
    let revoked = Instant::now();
    admin.ok(&["api-keys", "revoke", k["id"].as_str().unwrap()]);
    let code = long.wait_exit(Duration::from_secs(10));
    assert_ne!(code, 0);
    assert!(
        revoked.elapsed() < Duration::from_secs(5),
        "session ended after {:?}",
        revoked.elapsed()
    );
    let said = long.out.all();
    assert!(
        said.contains("API key") && said.contains("revoked"),
        "{said}"
    );

    // K's unused token is refused and recorded; the other key's token still works.
    assert_eq!(
        present(&unused_k, unused_k.token.clone()).await,
        "credential_revoked"
    );
    let refusal = refusal_recorded(&data, "credential_revoked").await;
    assert_eq!(
        refusal["session_id"],
        serde_json::json!(unused_k.session_id)
    );
    assert_eq!(
        present(&unused_other, unused_other.token.clone()).await,
        "accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_used_before_a_relay_restart_is_refused_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (runtime, _dev) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "replay-dev");
    let device_id = admin.devices()[0]["id"].as_str().unwrap().to_owned();
    let used = grant(&server, &device_id).await;
    assert_eq!(present(&used, used.token.clone()).await, "accepted");

    // The relay (here: the whole server) restarts, in a later second than the grant's (token
    // times are whole seconds), and the device reconnects.
    let issued = used.expires_at.timestamp() - 60;
    while now_unix() <= issued {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime
        .out
        .all()
        .matches("tunnel connected to relay")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the runtime did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The same token, replayed within its lifetime at the restarted relay: refused, recorded.
    let fresh = grant(&server, &device_id).await;
    assert!(
        now_unix() < used.expires_at.timestamp(),
        "the test ran too slowly"
    );
    // Issued before the relay's start: refused by the relay, which has forgotten what it saw.
    // (A token issued in the very second the relay started passes the relay; the device, which
    // remembers it across the reconnect, refuses it: `tunnel::session` tests that.)
    assert_eq!(
        present(&fresh, used.token.clone()).await,
        "token_predates_relay"
    );
    let refusal = refusal_recorded(&data, "token_predates_relay").await;
    assert_eq!(refusal["session_id"], serde_json::json!(used.session_id));
    // A new grant works: that is what a client does when told so.
    assert_eq!(present(&fresh, fresh.token.clone()).await, "accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_up_to_the_limit_work_and_larger_ones_are_refused_at_the_grant() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _dev) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "args-dev");
    let device_id = admin.devices()[0]["id"].as_str().unwrap().to_owned();
    let limit = m87_events::token::MAX_ARGS_BYTES;
    // `{"argv":["echo","<word>"]}` is 20 bytes around the word.
    let word = |len: usize| "w".repeat(len);

    // Just under the limit: granted, admitted by the relay and the device, and run.
    let under = word(limit - 20 - 1);
    let out = admin.run(&["args-dev", "exec", "--", "echo", &under]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), under);

    // Over it: refused at the grant, 422, naming the limit.
    let over = serde_json::json!({"argv": ["echo", word(limit - 20 + 1)]});
    match grant_with(&server, &server.admin_key(), &device_id, over).await {
        Err(m87_transport::http::ApiError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, 422);
            assert!(message.contains(&format!("{limit} bytes")), "{message}");
        }
        other => panic!("expected a 422, got {other:?}"),
    }
}
