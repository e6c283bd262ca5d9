//! The HTTPS listener's limits, over real sockets: idle HTTP/2 connections and connections
//! that stop answering pings are closed, a trickling body is cut off with 408 (on the public
//! and the internal relay API alike, which share the listener), HTTP/1
//! keep-alive connections are closed when idle, connections over a cap are closed at once
//! while others are served, and an oversized header is refused with 431.
//!
//! Every test runs the listener with timeouts of 1–2 s and checks within generous bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use m87_control_plane::api::{AppState, app};
use m87_control_plane::config::Settings;
use m87_control_plane::server::open_in_memory;
use m87_control_plane::tls::{HttpLimits, load_or_create, serve_https};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Far longer than any limit under test: what a test waits at most for a connection to end.
const PATIENCE: Duration = Duration::from_secs(15);

const RELAY_SECRET: &str = "a-relay-secret-of-at-least-32-characters";

const ANOTHER_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

struct Server {
    addr: SocketAddr,
    fingerprint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Limits with every timeout long, for a test to shorten the one it looks at.
fn long_limits() -> HttpLimits {
    HttpLimits {
        idle_timeout: Duration::from_secs(300),
        h2_keep_alive_interval: Duration::from_secs(300),
        h2_keep_alive_timeout: Duration::from_secs(300),
        ..HttpLimits::default()
    }
}

async fn start(limits: HttpLimits) -> Server {
    m87_transport::tls::install_ring_provider();
    let dir = tempfile::tempdir().unwrap();
    let tls = load_or_create(dir.path(), None, None).unwrap();
    let cp = open_in_memory(Settings::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_https(
        listener,
        tls.config.clone(),
        app(AppState::new(cp).with_relay_secret(RELAY_SECRET)),
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        fingerprint: tls.fingerprint,
        stop: Some(stop),
        _dir: dir,
    }
}

impl Server {
    /// A TLS connection from `from` (default 127.0.0.1) offering `alpn`.
    async fn connect_from(
        &self,
        from: Option<IpAddr>,
        alpn: &[u8],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(
            from.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            0,
        ))?;
        let tcp = socket.connect(self.addr).await?;
        let mut config = m87_transport::quic::pinned_tls(Some(&self.fingerprint)).unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        // A connection closed at once fails here at the latest: TLS 1.3 finishes the
        // handshake before the server's side is known to be alive.
        stream.flush().await?;
        Ok(stream)
    }

    async fn connect(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        self.connect_from(None, alpn).await.unwrap()
    }
}

/// Reads an HTTP/1 response head; `None` when the connection ended first.
async fn response_head(stream: &mut TlsStream<TcpStream>) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Sends `GET /v1/health` with `extra` headers and reads the answer's status line.
async fn get_health(stream: &mut TlsStream<TcpStream>, extra: &str) -> Option<String> {
    let request = format!("GET /v1/health HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let head = response_head(stream).await?;
    let mut body = vec![0u8; content_length(&head)];
    stream.read_exact(&mut body).await.ok()?;
    head.lines().next().map(str::to_owned)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Whether the peer has closed the connection (reads until end of stream or an error).
async fn closed(stream: &mut TlsStream<TcpStream>) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

mod h2 {
    //! Just enough HTTP/2 framing to open a connection and watch what the server sends.

    use super::*;

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const END_HEADERS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    const ACK: u8 = 1;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The client preface and empty settings, as prior knowledge over TLS.
    pub async fn open(stream: &mut TlsStream<TcpStream>) {
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    }

    /// The next frame's type, flags and payload; `None` once the connection has ended.
    async fn next(
        stream: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Option<(u8, u8, Vec<u8>, u32)> {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.ok()?;
        Some((header[3], header[4], payload, stream_id))
    }

    /// The first frame the server sends about stream `id` that answers or ends it (HEADERS or
    /// RST_STREAM); `None` when the connection ended first.
    pub async fn answer_on(
        stream: &mut (impl tokio::io::AsyncRead + Unpin),
        id: u32,
    ) -> Option<u8> {
        while let Some((kind, _, _, on)) = next(stream).await {
            if on == id && (kind == HEADERS || kind == RST_STREAM) {
                return Some(kind);
            }
        }
        None
    }

    /// The header block (HPACK, no Huffman, nothing indexed) of `POST path` with a JSON body
    /// of 1,000 bytes.
    pub fn post(path: &str) -> Vec<u8> {
        let mut block = vec![0x83, 0x87]; // :method POST, :scheme https
        for (name_index, value) in [
            (&[0x04][..], path),                     // :path
            (&[0x01][..], "localhost"),              // :authority
            (&[0x0f, 0x10][..], "application/json"), // content-type (31)
            (&[0x0f, 0x0d][..], "1000"),             // content-length (28)
        ] {
            block.extend_from_slice(name_index);
            block.push(u8::try_from(value.len()).unwrap());
            block.extend_from_slice(value.as_bytes());
        }
        block
    }

    /// Reads frames until the server closes the connection, acknowledging its settings and,
    /// when `answer_pings`, its pings; returns the types of the frames it sent.
    pub async fn until_closed(stream: &mut TlsStream<TcpStream>, answer_pings: bool) -> Vec<u8> {
        let mut seen = Vec::new();
        while let Some((kind, flags, payload, _)) = next(stream).await {
            seen.push(kind);
            let reply = match kind {
                SETTINGS if flags & ACK == 0 => Some(frame(SETTINGS, ACK, 0, &[])),
                PING if flags & ACK == 0 && answer_pings => Some(frame(PING, ACK, 0, &payload)),
                _ => None,
            };
            if let Some(reply) = reply
                && stream.write_all(&reply).await.is_err()
            {
                break;
            }
        }
        seen
    }
}

#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_idle_timeout() {
    let server = start(HttpLimits {
        idle_timeout: Duration::from_secs(1),
        ..long_limits()
    })
    .await;
    let mut watchers = Vec::new();
    for _ in 0..20 {
        let mut stream = server.connect(b"h2").await;
        h2::open(&mut stream).await;
        watchers.push(tokio::spawn(async move {
            tokio::time::timeout(PATIENCE, h2::until_closed(&mut stream, true)).await
        }));
    }
    for watcher in watchers {
        let seen = watcher
            .await
            .unwrap()
            .expect("an idle HTTP/2 connection is closed by the server");
        assert!(
            seen.contains(&h2::GOAWAY),
            "the server says goodbye first: {seen:?}"
        );
    }
}

#[tokio::test]
async fn http2_connections_that_do_not_answer_pings_are_closed() {
    let server = start(HttpLimits {
        h2_keep_alive_interval: Duration::from_secs(1),
        h2_keep_alive_timeout: Duration::from_secs(1),
        ..long_limits()
    })
    .await;
    let mut stream = server.connect(b"h2").await;
    h2::open(&mut stream).await;
    let seen = tokio::time::timeout(PATIENCE, h2::until_closed(&mut stream, false))
        .await
        .expect("a connection that does not answer pings is closed");
    assert!(seen.contains(&h2::PING), "the server pinged: {seen:?}");
}

/// Sends `POST path` announcing a 1,000-byte body and then trickles it, one byte every half
/// second (over eight minutes in all); returns what the server answered, or sent before it
/// closed the connection.
async fn trickle(server: &Server, path: &str, headers: &str) -> String {
    let stream = server.connect(b"http/1.1").await;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..999 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
    });
    let answer = tokio::time::timeout(PATIENCE, async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&seen).into_owned(),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                return String::from_utf8_lossy(&seen).into_owned();
            }
        }
    })
    .await
    .expect("the slow request is answered or closed within the deadline");
    trickle.abort();
    answer
}

#[tokio::test]
async fn a_trickling_request_body_is_cut_off_with_408() {
    let server = start(HttpLimits {
        request_read_timeout: Duration::from_secs(2),
        ..long_limits()
    })
    .await;
    let answer = trickle(&server, "/v1/registrations", "").await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "answered 408: {answer:?}"
    );
}

#[tokio::test]
async fn a_trickling_http2_request_body_is_cut_off() {
    let server = start(HttpLimits {
        request_read_timeout: Duration::from_secs(2),
        ..long_limits()
    })
    .await;
    let mut stream = server.connect(b"h2").await;
    h2::open(&mut stream).await;
    let headers = h2::frame(
        h2::HEADERS,
        h2::END_HEADERS,
        1,
        &h2::post("/v1/registrations"),
    );
    stream.write_all(&headers).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            let byte = h2::frame(h2::DATA, 0, 1, b" ");
            if writer.write_all(&byte).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let answer = tokio::time::timeout(PATIENCE, h2::answer_on(&mut reader, 1))
        .await
        .expect("the slow stream is answered, reset or closed within the deadline");
    trickle.abort();
    // The 408 itself is HPACK-encoded (maybe Huffman): an answer before the body is complete
    // is what shows the deadline.
    assert_eq!(answer, Some(h2::HEADERS), "the stream is answered");
}

#[tokio::test]
async fn the_internal_relay_api_has_the_same_deadline() {
    let server = start(HttpLimits {
        request_read_timeout: Duration::from_secs(2),
        ..long_limits()
    })
    .await;
    let bearer = format!("Authorization: Bearer {RELAY_SECRET}\r\n");
    let answer = trickle(&server, "/v1/internal/relay/presence", &bearer).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "answered 408: {answer:?}"
    );
}

#[tokio::test]
async fn idle_http1_keep_alive_connections_are_closed() {
    let server = start(HttpLimits {
        idle_timeout: Duration::from_secs(1),
        ..long_limits()
    })
    .await;
    let mut stream = server.connect(b"http/1.1").await;
    assert_eq!(
        get_health(&mut stream, "").await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    let closed = tokio::time::timeout(PATIENCE, closed(&mut stream)).await;
    assert!(
        closed.is_ok(),
        "an idle keep-alive connection is closed by the server"
    );
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_closed_at_once() {
    let server = start(HttpLimits {
        max_connections_per_address: 2,
        ..long_limits()
    })
    .await;
    let first = server.connect(b"http/1.1").await;
    let mut second = server.connect(b"http/1.1").await;
    let refused = tokio::time::timeout(PATIENCE, server.connect_from(None, b"http/1.1"))
        .await
        .expect("the refusal is immediate");
    assert!(
        refused.is_err(),
        "a third connection from 127.0.0.1 is closed"
    );

    // The two open ones still work, and so does another address.
    assert_eq!(
        get_health(&mut second, "").await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    let mut other = server
        .connect_from(Some(ANOTHER_ADDRESS), b"http/1.1")
        .await
        .unwrap();
    assert_eq!(
        get_health(&mut other, "").await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );

    // Once one closes, the address may connect again.
    drop(first);
    let again = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(mut s) = server.connect_from(None, b"http/1.1").await
                && get_health(&mut s, "").await.is_some()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        again.is_ok(),
        "a place freed is given to the next connection"
    );
}

#[tokio::test]
async fn connections_over_the_global_cap_are_closed_at_once() {
    let server = start(HttpLimits {
        max_connections: 2,
        ..long_limits()
    })
    .await;
    let _first = server.connect(b"h2").await;
    let _second = server.connect(b"http/1.1").await;
    let refused = tokio::time::timeout(
        PATIENCE,
        server.connect_from(Some(ANOTHER_ADDRESS), b"http/1.1"),
    )
    .await
    .expect("the refusal is immediate");
    assert!(refused.is_err(), "a third connection is closed");
}

#[tokio::test]
async fn a_100_kb_request_header_is_refused_with_431() {
    let server = start(long_limits()).await;
    let mut stream = server.connect(b"http/1.1").await;
    let ordinary = format!("X-Padding: {}\r\n", "a".repeat(4 * 1024));
    assert_eq!(
        get_health(&mut stream, &ordinary).await.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "a 4 KiB header is fine"
    );
    // 431, or the connection closed: the server may close before the whole header is sent.
    let big = format!("X-Padding: {}\r\n", "a".repeat(100 * 1024));
    let status = get_health(&mut stream, &big).await;
    assert!(
        status
            .as_deref()
            .is_none_or(|s| s.starts_with("HTTP/1.1 431")),
        "a 100 KB header is refused: {status:?}"
    );
}
