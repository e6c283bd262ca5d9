//! UDP flows belong to the session that opened them: with the real server and device, a second
//! session on the same device that sends datagrams naming the first session's flow (or guessed
//! flow ids) reaches nothing — the relay drops and counts them — and the first session's
//! forward keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{M87, Server, enrolled_device};
use m87_events::SessionId;
use m87_events::api::{CreateSessionRequest, SessionGrant};
use m87_events::token::Operation;
use m87_events::tunnel::datagram::{flow_datagram, split_flow_datagram};
use m87_events::tunnel::{ALPN_SESSION, Channel, Control};
use m87_transport::frames::{FrameReader, write_control};
use m87_transport::http::ApiClient;

/// A UDP server "on the device" that records every payload it receives and echoes it.
fn recording_echo_server() -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            record.lock().unwrap().push(buf[..n].to_vec());
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
    (port, seen)
}

async fn grant(
    server: &Server,
    device_id: &str,
    op: Operation,
    args: serde_json::Value,
) -> SessionGrant {
    let client = ApiClient::new(&server.url, Some(server.admin_key()), true).unwrap();
    client
        .post(
            &format!("/v1/devices/{device_id}/sessions"),
            &CreateSessionRequest {
                operation: op,
                args,
            },
        )
        .await
        .unwrap()
}

/// An open session: its connection and its control stream (kept open).
struct Session {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    id: SessionId,
    _control: (quinn::SendStream, FrameReader<quinn::RecvStream>),
}

async fn open_session(g: &SessionGrant) -> Session {
    let (endpoint, conn) = m87_transport::quic::connect(
        &g.relay.address,
        &g.relay.server_name,
        ALPN_SESSION,
        Some(&g.relay.cert_sha256),
    )
    .await
    .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    write_control(
        &mut send,
        &Control::SessionOpen {
            token: g.token.clone(),
        },
    )
    .await
    .unwrap();
    let mut reader = FrameReader::new(recv);
    let id = match reader.control().await {
        Ok(Some(Control::SessionAccepted { session_id })) => session_id,
        other => panic!("session not accepted: {other:?}"),
    };
    Session {
        _endpoint: endpoint,
        conn,
        id,
        _control: (send, reader),
    }
}

/// Opens a UDP forward channel to `127.0.0.1:port`; returns its flow id and its stream (the
/// flow lives as long as the stream).
async fn open_udp_flow(
    s: &Session,
    port: u16,
) -> (u32, (quinn::SendStream, FrameReader<quinn::RecvStream>)) {
    let (mut send, recv) = s.conn.open_bi().await.unwrap();
    let open = Control::OpenChannel {
        session_id: s.id,
        channel: Channel::UdpForward {
            host: "127.0.0.1".into(),
            port,
        },
    };
    write_control(&mut send, &open).await.unwrap();
    let mut reader = FrameReader::new(recv);
    match reader.control().await {
        Ok(Some(Control::ChannelAccepted { flow: Some(flow) })) => (flow, (send, reader)),
        other => panic!("udp channel not accepted: {other:?}"),
    }
}

/// Sends `payload` on `flow` until its echo comes back (datagrams may be lost).
async fn round_trip(s: &Session, flow: u32, payload: &str) {
    for _ in 0..10 {
        s.conn
            .send_datagram(flow_datagram(flow, payload.as_bytes()))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(2), s.conn.read_datagram()).await;
        if let Ok(Ok(d)) = answer {
            let (back, reply) = split_flow_datagram(&d).unwrap();
            assert_eq!(back, flow);
            assert_eq!(&reply[..], format!("echo:{payload}").as_bytes());
            return;
        }
    }
    panic!("no echo for {payload:?} on flow {flow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_inject_datagrams_into_another_sessions_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _dev) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "udp-dev");
    let device_id = admin.devices()[0]["id"].as_str().unwrap().to_owned();
    let (target, seen) = recording_echo_server();

    // A: a UDP forward to the target, which A's token allows.
    let targets =
        serde_json::json!({"targets": [{"host": "127.0.0.1", "port": target, "proto": "udp"}]});
    let a = open_session(&grant(&server, &device_id, Operation::Forward, targets).await).await;
    let (flow, _a_channel) = open_udp_flow(&a, target).await;
    round_trip(&a, flow, "from A 1").await;

    // B: an exec session on the same device, whose token allows no forward at all. It sends
    // 64 datagrams naming A's flow and 64 with guessed ids (the first ids a counter would give).
    let exec = serde_json::json!({"argv": ["true"]});
    let b = open_session(&grant(&server, &device_id, Operation::Exec, exec).await).await;
    for i in 0..64u32 {
        b.conn
            .send_datagram(flow_datagram(flow, format!("from B {i}").as_bytes()))
            .unwrap();
        b.conn
            .send_datagram(flow_datagram(i + 1, format!("from B guess {i}").as_bytes()))
            .unwrap();
        if i % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // The relay dropped and counted them (it logs the count at 1, 2, 4, … 64, 128)...
    let line = server.proc.out.wait_for(
        "dropped datagrams for UDP flows this session does not own",
        Duration::from_secs(10),
    );
    assert!(line.contains(&b.id.to_string()), "{line}");
    server
        .proc
        .out
        .wait_for("dropped=64", Duration::from_secs(10));

    // ...A's forward still works, and the target never saw anything of B's.
    round_trip(&a, flow, "from A 2").await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|p| p.starts_with(b"from A")),
        "B reached A's target: {:?}",
        seen.iter()
            .map(|p| String::from_utf8_lossy(p))
            .collect::<Vec<_>>()
    );
    assert!(seen.len() >= 2);
}
