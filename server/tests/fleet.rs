//! Fleet mode end to end, with the real binaries: a 3-node NATS cluster, MongoDB (SecantusDB
//! unless `MONGODB_URI` is set), two control-plane replicas and three relays, each its own
//! `m87-server` process, with a real runtime and the real CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fleet_support;

use m87_test_support::{mongo, nats};

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{M87, Proc, echo_server, free_port, udp_echo_server};
use fleet_support::{Fleet, enroll, wait_for_nth};
use mongo::MongoServer;

/// Runs `m87 <args>` through the relay at `relay` (None: the one the control plane grants).
fn via(cli: &M87, relay: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = cli.command(args);
    if let Some(r) = relay {
        cmd.env("M87_RELAY", r);
    }
    cmd.stdin(std::process::Stdio::null()).output().unwrap()
}

/// Waits until `check` holds, for at most `timeout`; returns whether it did.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reaches_the_device_through_any_relay_and_survives_a_relay_crash() {
    let mut fleet = Fleet::new(3, MongoServer::shared()).await;
    fleet.start_control_plane();
    fleet.start_control_plane();
    // Only relay 1 at first, so the device's tunnel lands there.
    fleet.start_relay();
    fleet.wait_for_relays(1);
    let admin1 = fleet.admin(0);
    let admin2 = fleet.admin(1);
    let cp1 = fleet.control_planes[0].url.clone();
    let (runtime, device) = enroll(&admin1, &cp1, &fleet.path("device"), "robot");
    assert_eq!(fleet.presence_of(&device).await.as_deref(), Some("relay-1"));
    fleet.start_relay();
    fleet.start_relay();
    fleet.wait_for_relays(3);
    let relay1 = fleet.relays[0].address.clone();
    let relay3 = fleet.relays[2].address.clone();

    // Exec through relay 3, granted by control plane 2: the session crosses to relay 1.
    let out = via(
        &admin2,
        Some(&relay3),
        &[
            "robot",
            "exec",
            "--",
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
    fleet.relays[2]
        .proc
        .out
        .wait_for("via=\"relay-1\"", Duration::from_secs(5));
    fleet.relays[0]
        .proc
        .out
        .wait_for("relay link accepted peer=relay-3", Duration::from_secs(5));

    // A TCP and a UDP forward through relay 3.
    let (tcp, udp) = (echo_server(), udp_echo_server());
    let (ltcp, ludp) = (free_port(), free_port());
    let mut forward_cmd = admin2.command(&[
        "robot",
        "forward",
        &format!("{ltcp}:{tcp}"),
        &format!("{ludp}:{udp}/udp"),
    ]);
    forward_cmd.env("M87_RELAY", &relay3);
    let forward = Proc::spawn(forward_cmd);
    forward
        .out
        .wait_for(&format!("{ludp} -> robot"), Duration::from_secs(20));
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut conn = TcpStream::connect(("127.0.0.1", ltcp)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let writer = {
        let mut conn = conn.try_clone().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || {
            conn.write_all(&payload).unwrap();
            conn.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(
        back == payload,
        "the echo came back different ({} bytes)",
        back.len()
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut answer = None;
    for _ in 0..10 {
        socket.send_to(b"ping", ("127.0.0.1", ludp)).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            answer = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(answer.as_deref(), Some(&b"echo:ping"[..]));
    drop(forward);

    // Relay 1 crashes: the device is back through another relay within 10 seconds, the
    // presence registry points there, and exec works again.
    let crashed = Instant::now();
    fleet.kill_relay(0);
    wait_for_nth(
        &runtime,
        "tunnel connected to relay",
        2,
        Duration::from_secs(10),
    );
    let back_after = crashed.elapsed();
    assert!(
        back_after < Duration::from_secs(10),
        "back after {back_after:?}"
    );
    let last = runtime.out.all();
    let new_relay = last
        .lines()
        .rev()
        .find(|l| l.contains("tunnel connected to relay"))
        .unwrap()
        .to_owned();
    assert!(!new_relay.contains(&relay1), "{new_relay}");
    let moved = eventually(Duration::from_secs(2), || async {
        matches!(
            fleet.presence_of(&device).await.as_deref(),
            Some("relay-2" | "relay-3")
        )
    })
    .await;
    assert!(moved, "presence: {:?}", fleet.presence_of(&device).await);
    let out = via(&admin1, None, &["robot", "exec", "--", "echo", "again"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");
    // Through whichever relay, including one that does not hold the device.
    for relay in [&fleet.relays[1].address, &fleet.relays[2].address] {
        let out = via(
            &admin2,
            Some(relay),
            &["robot", "exec", "--", "echo", "any"],
        );
        assert!(out.status.success(), "through {relay}: {out:?}");
    }

    // Removed through control plane 2: the tunnel is gone within a second, on every relay.
    admin2.ok(&["devices", "reject", "robot"]);
    let removed = Instant::now();
    runtime
        .out
        .wait_for("the device was removed", Duration::from_secs(1));
    let gone = eventually(Duration::from_secs(1), || async {
        fleet.presence_of(&device).await.is_none()
    })
    .await;
    assert!(
        gone,
        "presence still names {:?}",
        fleet.presence_of(&device).await
    );
    assert!(removed.elapsed() < Duration::from_secs(2));
    let err = admin1.fails(&["robot", "exec", "--", "true"]);
    assert!(
        err.contains("not found") || err.contains("removed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_access_ends_a_session_that_crosses_relays_within_a_second() {
    let mut fleet = Fleet::new(1, MongoServer::shared()).await;
    fleet.start_control_plane();
    fleet.start_relay();
    fleet.wait_for_relays(1);
    let admin = fleet.admin(0);
    let cp = fleet.control_planes[0].url.clone();
    let (_runtime, _device) = enroll(&admin, &cp, &fleet.path("device"), "shared");
    fleet.start_relay();
    fleet.wait_for_relays(2);
    let created: serde_json::Value = serde_json::from_str(&admin.ok(&[
        "api-keys",
        "create",
        "--email",
        "bob@example.com",
        "-o",
        "json",
    ]))
    .unwrap();
    let bob = M87::new(&cp, &fleet.path("bob"), created["key"].as_str());
    admin.ok(&["shared", "access", "add", "user:bob@example.com"]);
    // Bob's session goes through relay 2; the device is on relay 1.
    let mut cmd = bob.command(&["shared", "exec", "--", "sh", "-c", "echo started; sleep 60"]);
    cmd.env("M87_RELAY", &fleet.relays[1].address);
    let mut long = Proc::spawn(cmd);
    long.out.wait_for("started", Duration::from_secs(20));
    fleet.relays[1]
        .proc
        .out
        .wait_for("via=\"relay-1\"", Duration::from_secs(5));

    admin.ok(&["shared", "access", "remove", "user:bob@example.com"]);
    let revoked = Instant::now();
    let code = long.wait_exit(Duration::from_secs(5));
    assert_ne!(code, 0);
    let took = revoked.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the session ended after {took:?}"
    );
    fleet.relays[1]
        .proc
        .out
        .wait_for("access revoked: ending the session", Duration::from_secs(1));
    let err = bob.fails(&["shared", "exec", "--", "true"]);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_api_key_ends_its_session_across_relays_within_a_second() {
    let mut fleet = Fleet::new(1, MongoServer::shared()).await;
    fleet.start_control_plane();
    fleet.start_relay();
    fleet.wait_for_relays(1);
    let admin = fleet.admin(0);
    let cp = fleet.control_planes[0].url.clone();
    let (_runtime, _device) = enroll(&admin, &cp, &fleet.path("device"), "keyed");
    fleet.start_relay();
    fleet.wait_for_relays(2);
    let created: serde_json::Value =
        serde_json::from_str(&admin.ok(&["api-keys", "create", "--name", "ci", "-o", "json"]))
            .unwrap();
    let through_key = M87::new(&cp, &fleet.path("ci"), created["key"].as_str());
    // The session goes through relay 2; the device is on relay 1.
    let mut cmd =
        through_key.command(&["keyed", "exec", "--", "sh", "-c", "echo started; sleep 60"]);
    cmd.env("M87_RELAY", &fleet.relays[1].address);
    let mut long = Proc::spawn(cmd);
    long.out.wait_for("started", Duration::from_secs(20));

    // The key is revoked; its user (the admin) keeps access, the session ends all the same.
    admin.ok(&["api-keys", "revoke", created["id"].as_str().unwrap()]);
    let revoked = Instant::now();
    let code = long.wait_exit(Duration::from_secs(5));
    assert_ne!(code, 0);
    let took = revoked.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the session ended after {took:?}"
    );
    let said = long.out.all();
    assert!(
        said.contains("API key") && said.contains("revoked"),
        "{said}"
    );
    fleet.relays[1].proc.out.wait_for(
        "credential revoked: ending the session",
        Duration::from_secs(1),
    );
    // The user's own sessions go on working.
    let out = via(&admin, None, &["keyed", "exec", "--", "echo", "still mine"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still mine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_link_without_the_secret_or_with_garbage_is_refused_and_the_relay_carries_on() {
    use m87_events::tunnel::{ALPN_RELAY_LINK, Control};
    use m87_transport::frames::{FrameReader, write_control};

    let mut fleet = Fleet::new(1, MongoServer::shared()).await;
    fleet.start_control_plane();
    fleet.start_relay();
    fleet.wait_for_relays(1);
    let admin = fleet.admin(0);
    let cp = fleet.control_planes[0].url.clone();
    let (_runtime, _device) = enroll(&admin, &cp, &fleet.path("device"), "robot");
    let relay = fleet.relays[0].address.clone();

    // A link whose hello carries a wrong secret: refused, then closed.
    let (_e, conn) = m87_transport::quic::connect(&relay, "localhost", ALPN_RELAY_LINK, None)
        .await
        .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    write_control(
        &mut send,
        &Control::RelayHello {
            relay_id: "intruder".into(),
            secret: "not-the-fleet-secret-0123456789abcdef".into(),
        },
    )
    .await
    .unwrap();
    let mut reader = FrameReader::new(recv);
    match reader.control().await {
        Ok(Some(Control::Refused { code, .. })) => assert_eq!(code, "unauthenticated"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the relay closes a link with a wrong secret");
    assert!(
        closed.to_string().contains("wrong relay secret"),
        "{closed}"
    );
    fleet.relays[0].proc.out.wait_for(
        "relay link with a wrong secret refused",
        Duration::from_secs(5),
    );

    // Garbage instead of a hello: the connection is closed.
    let (_e2, conn) = m87_transport::quic::connect(&relay, "localhost", ALPN_RELAY_LINK, None)
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xff; 64]).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .expect("the relay closes a link that sends garbage");
    assert!(
        closed.to_string().contains("expected a relay hello"),
        "{closed}"
    );

    // Silence instead of a hello: closed after the header time limit.
    let (_e3, conn) = m87_transport::quic::connect(&relay, "localhost", ALPN_RELAY_LINK, None)
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .expect("the relay closes a link that says nothing");
    assert!(closed.to_string().contains("no relay hello"), "{closed}");

    // The control plane's internal relay API wants the same secret.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for bearer in [None, Some("not-the-fleet-secret-0123456789abcdef")] {
        let mut request = http
            .post(format!("{cp}/v1/internal/relay/authenticate"))
            .json(&serde_json::json!({ "api_key": "m87d_guess" }));
        if let Some(b) = bearer {
            request = request.bearer_auth(b);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 401, "bearer {bearer:?}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    }

    // The relay still serves.
    let out = via(&admin, None, &["robot", "exec", "--", "echo", "still-here"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
}
