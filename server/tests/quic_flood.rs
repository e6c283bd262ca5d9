//! Work before authentication is bounded, with the real server and device: a peer can open only
//! a couple of streams before its first message authenticates it; a flood of connections that
//! never authenticate fills its own address's share and is then refused; new attempts during
//! the flood must prove their address (QUIC Retry), so forged Initial packets get a Retry and
//! hold nothing; the device keeps its tunnel and `m87 <device> exec` keeps working; the flood's
//! connections are closed at the authentication deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::{M87, Server, enrolled_device};
use futures_util::FutureExt;
use m87_events::api::{CreateSessionRequest, SessionGrant};
use m87_events::token::Operation;
use m87_events::tunnel::{ALPN_SESSION, Control};
use m87_relay_node::gate::{AUTH_DEADLINE, MAX_UNAUTHENTICATED_PER_ADDRESS};
use m87_transport::frames::{FrameReader, write_control};
use m87_transport::http::ApiClient;
use m87_transport::quic::PRE_AUTH_STREAMS;

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

/// A client endpoint on the loopback address `ip`, for the relay of `g`.
fn endpoint_on(ip: [u8; 4], g: &SessionGrant) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(SocketAddr::from((ip, 0))).unwrap();
    ep.set_default_client_config(
        m87_transport::quic::client_config(ALPN_SESSION, Some(&g.relay.cert_sha256)).unwrap(),
    );
    ep
}

/// A QUIC Initial packet (version 1) with random connection ids and a payload that is not
/// encrypted with the Initial keys: the relay can read its header, never its contents.
fn forged_initial(seed: u32) -> Vec<u8> {
    let mut p = vec![0xc0, 0, 0, 0, 1, 8];
    p.extend_from_slice(
        &u64::from(seed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .to_be_bytes(),
    );
    p.push(8);
    p.extend_from_slice(&u64::from(seed).to_be_bytes());
    p.push(0); // no token
    let rest = 1200 - p.len() - 2;
    p.extend_from_slice(&(0x4000u16 | rest as u16).to_be_bytes());
    p.extend((0..rest).map(|i| (i as u32).wrapping_mul(seed | 1) as u8));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_bounded_while_a_device_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _dev) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "flood-dev");
    let device_id = admin.devices()[0]["id"].as_str().unwrap().to_owned();
    let g = grant(&server, &device_id).await;
    let relay: SocketAddr = g.relay.address.parse().unwrap();

    // Before its token is admitted, a peer has PRE_AUTH_STREAMS streams; after, many more.
    let (_ep, conn) = m87_transport::quic::connect(
        &g.relay.address,
        &g.relay.server_name,
        ALPN_SESSION,
        Some(&g.relay.cert_sha256),
    )
    .await
    .unwrap();
    let mut streams = Vec::new();
    for _ in 0..PRE_AUTH_STREAMS {
        streams.push(conn.open_bi().now_or_never().unwrap().unwrap());
    }
    assert!(
        conn.open_bi().now_or_never().is_none(),
        "a peer opened more than {PRE_AUTH_STREAMS} streams before authenticating"
    );
    let (send, recv) = &mut streams[0];
    write_control(
        send,
        &Control::SessionOpen {
            token: g.token.clone(),
        },
    )
    .await
    .unwrap();
    let mut reader = FrameReader::new(recv);
    assert!(matches!(
        reader.control().await,
        Ok(Some(Control::SessionAccepted { .. }))
    ));
    for _ in 0..8 {
        tokio::time::timeout(Duration::from_secs(5), conn.open_bi())
            .await
            .expect("no more streams after authenticating")
            .unwrap();
    }

    // 300 connections from 127.0.0.2 that complete the handshake and never authenticate.
    let flood = endpoint_on([127, 0, 0, 2], &g);
    let attempts = (0..300).map(|_| {
        let connecting = flood.connect(relay, &g.relay.server_name).unwrap();
        tokio::time::timeout(Duration::from_secs(8), connecting)
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok(Ok(c)) => held.push(c),
            Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                refused += 1
            }
            other => panic!("unexpected outcome of a flood connection: {other:?}"),
        }
    }
    assert!(
        !held.is_empty() && held.len() <= MAX_UNAUTHENTICATED_PER_ADDRESS,
        "{} flood connections held",
        held.len()
    );
    eprintln!("flood: {} held, {refused} refused", held.len());
    assert_eq!(held.len() + refused, 300);
    server.proc.out.wait_for(
        "refusing connections: too many unauthenticated connections",
        Duration::from_secs(5),
    );

    // Forged Initials from 127.0.0.3 while the flood is held: the relay asks them to prove
    // their address (a Retry packet: long header, type 3) and keeps nothing for them.
    let raw = UdpSocket::bind("127.0.0.3:0").unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let raw = Arc::new(raw);
    let sender = Arc::clone(&raw);
    let send_forged = std::thread::spawn(move || {
        for seed in 1..=400u32 {
            sender.send_to(&forged_initial(seed), relay).unwrap();
            if seed % 50 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });

    // Meanwhile a real user's exec works through the device's tunnel.
    let exec = {
        let admin = M87::new(
            &server.url,
            &tmp.path().join("admin"),
            Some(&server.admin_key()),
        );
        tokio::task::spawn_blocking(move || admin.run(&["flood-dev", "exec", "--", "echo", "ok"]))
    };
    send_forged.join().unwrap();
    let mut retries = 0;
    let mut buf = [0u8; 1500];
    while let Ok((n, _)) = raw.recv_from(&mut buf) {
        if n > 0 && buf[0] & 0xf0 == 0xf0 {
            retries += 1;
        }
    }
    eprintln!("forged Initials: {retries} Retry packets for 400");
    let out = exec.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "exec during the flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        retries >= 20,
        "only {retries} Retry packets for 400 forged Initials"
    );

    // The flood's connections are closed at the authentication deadline.
    for c in &held {
        let reason = tokio::time::timeout(AUTH_DEADLINE * 2, c.closed())
            .await
            .expect("an unauthenticated connection outlived the deadline");
        assert!(
            matches!(reason, quinn::ConnectionError::ApplicationClosed(_)),
            "{reason:?}"
        );
    }
    // Their slots are free again: the same address gets in.
    let again = flood.connect(relay, &g.relay.server_name).unwrap();
    tokio::time::timeout(Duration::from_secs(5), again)
        .await
        .unwrap()
        .expect("a new connection after the flood was refused");
    let out = admin.run(&["flood-dev", "exec", "--", "echo", "after"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n");
}
