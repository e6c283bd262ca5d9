//! TCP, UDP and unix-socket forwards: the device connects to `host:port` as it resolves it (or
//! to a unix socket's path) and relays.
//!
//! # TCP (`Channel::Forward`)
//!
//! 1. Client → device: `Control::OpenChannel { channel: Forward { host, port } }`.
//! 2. Device → client: `Control::ChannelAccepted { flow: None }` (sent by the caller of [`tcp`]).
//! 3. The device connects to `host:port` (at most [`CONNECT_TIMEOUT`]), then sends exactly one
//!    status frame:
//!    - `Frame::Eof`: connected; from the next byte on the stream carries **raw bytes** in both
//!      directions, no frames;
//!    - `Frame::Error(message)`: the connection failed (`cannot connect to host:port: …`); the
//!      device then finishes its side of the stream and reads nothing more.
//! 4. Raw bytes both ways. Ending the writes on one side (stream finish / TCP FIN) is passed on
//!    as a half-close to the other side; the other direction keeps flowing until it ends too. An
//!    error or reset on either side ends both.
//!
//! The client should wait for the status frame before sending raw bytes. The device reads
//! nothing from the stream before the status frame, and whatever the client sent early is
//! handed to the target once connected (it is dropped if the connection fails).
//!
//! # UDP (`Channel::UdpForward`)
//!
//! 1. Client → device: `Control::OpenChannel { channel: UdpForward { host, port } }`.
//! 2. The device resolves `host:port`, binds a UDP socket and connects it there. It answers with
//!    `Control::ChannelAccepted { flow: Some(id) }` — sent by [`udp`] itself, not by its caller —
//!    or, when it cannot, with `Control::Refused { code: "unreachable", message }`.
//! 3. Payloads travel as tunnel datagrams tagged with the flow id (see
//!    [`super::DatagramPort`]); each carries one UDP datagram of at most [`MAX_DATAGRAM`] bytes
//!    (larger ones are dropped). The stream carries nothing more in either direction.
//! 4. The flow lives as long as the stream: the client ends it by finishing (or resetting) its
//!    side; the device ends it after [`UDP_IDLE_TIMEOUT`] without a datagram either way, by
//!    finishing its side. Either way the device releases the flow id.
//!
//! # Unix sockets (`Channel::UnixForward`, and `Channel::Docker`)
//!
//! 1. Client → device: `Control::OpenChannel { channel: UnixForward { path } }`.
//! 2. The device connects to the socket at `path` (at most [`CONNECT_TIMEOUT`]) and answers
//!    itself: `Control::ChannelAccepted { flow: None }`, after which the stream carries **raw
//!    bytes** both ways exactly as a TCP forward after its status frame (no status frame here);
//!    or `Control::Refused { code: "unavailable", message }` naming the path and the error
//!    (`cannot connect to unix socket /run/app.sock on the device: No such file or directory`).
//! 3. Half-closes pass through; an error on either side ends both.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use m87_events::tunnel::{Control, Frame};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket, UnixStream};

use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext};
use m87_transport::forward::{
    CONNECT_TIMEOUT, MAX_DATAGRAM, UDP_IDLE_TIMEOUT, bare_host, display_target,
};
use m87_transport::frames::{FrameReader, write_control, write_frame};
use m87_transport::stream::splice;

/// The refusal code of a UDP forward whose target cannot be reached.
pub const UNREACHABLE: &str = "unreachable";

/// Consecutive socket errors after which a UDP flow gives up (errors from ICMP replies come one
/// per datagram; an endless series means the socket is broken).
const MAX_UDP_ERRORS: u32 = 64;

async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare_host(host), port))).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// A connection to the unix socket at `path`, spliced with the channel. Answers itself: it
/// connects first, then sends `ChannelAccepted` and relays raw bytes both ways (half-closes
/// passed on, as for TCP); a socket that is missing or refuses is `Refused { code:
/// "unavailable" }` with a message naming the path and the system's error.
pub async fn unix(
    path: &str,
    reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
) -> ChannelOutcome {
    match connect_unix(Path::new(path)).await {
        Ok(stream) => splice_unix(stream, path, reader, writer).await,
        Err(e) => {
            super::unavailable(
                &mut writer,
                format!("cannot connect to unix socket {path} on the device: {e}"),
            )
            .await
        }
    }
}

/// Connects to a unix socket, at most [`CONNECT_TIMEOUT`].
pub(super) async fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Ok(connected) => connected,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}

/// Accepts the channel and splices the connected socket with it until both directions end.
pub(super) async fn splice_unix(
    mut stream: UnixStream,
    path: &str,
    reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
) -> ChannelOutcome {
    if let Err(e) = super::accept(&mut writer).await {
        return ChannelOutcome {
            exit: None,
            error: Some(format!("client disconnected: {e}")),
        };
    }
    match splice(&mut stream, reader, writer).await {
        Ok((to_client, to_target)) => {
            tracing::debug!(path, to_client, to_target, "unix forward: connection ended");
            ChannelOutcome::default()
        }
        Err(e) => {
            tracing::debug!(path, error = %e, "unix forward: connection broke");
            ChannelOutcome {
                exit: None,
                error: Some(format!("forward to {path} broke: {e}")),
            }
        }
    }
}

/// A TCP connection to `host:port`, spliced with the channel (see the module docs for the
/// protocol). The caller has already sent `ChannelAccepted`.
pub async fn tcp(
    host: &str,
    port: u16,
    reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
) -> ChannelOutcome {
    let target = display_target(host, port);
    let mut stream = match connect_tcp(host, port).await {
        Ok(stream) => stream,
        Err(e) => {
            let message = format!("cannot connect to {target}: {e}");
            tracing::debug!(%target, error = %e, "forward: connect failed");
            let _ = write_frame(&mut writer, &Frame::Error(message.clone())).await;
            let _ = writer.shutdown().await;
            return ChannelOutcome {
                exit: None,
                error: Some(message),
            };
        }
    };
    let _ = stream.set_nodelay(true);
    if let Err(e) = write_frame(&mut writer, &Frame::Eof).await {
        return ChannelOutcome {
            exit: None,
            error: Some(format!("client disconnected: {e}")),
        };
    }
    match splice(&mut stream, reader, writer).await {
        Ok((to_client, to_target)) => {
            tracing::debug!(%target, to_client, to_target, "forward: connection ended");
            ChannelOutcome::default()
        }
        Err(e) => {
            tracing::debug!(%target, error = %e, "forward: connection broke");
            ChannelOutcome {
                exit: None,
                error: Some(format!("forward to {target} broke: {e}")),
            }
        }
    }
}

async fn connect_udp(host: &str, port: u16) -> io::Result<UdpSocket> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
    for addr in tokio::net::lookup_host((bare_host(host), port)).await? {
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let attempt = async {
            let socket = UdpSocket::bind(local).await?;
            socket.connect(addr).await?;
            Ok::<_, io::Error>(socket)
        };
        match attempt.await {
            Ok(socket) => return Ok(socket),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A UDP flow to `host:port` over the tunnel's datagrams (see the module docs for the
/// protocol). Sends `ChannelAccepted` (with the flow id) or `Refused` itself.
pub async fn udp(
    host: &str,
    port: u16,
    reader: FrameReader<BoxRead>,
    writer: BoxWrite,
    ctx: &ServiceContext,
) -> ChannelOutcome {
    udp_with_idle(host, port, reader, writer, ctx, UDP_IDLE_TIMEOUT).await
}

async fn udp_with_idle(
    host: &str,
    port: u16,
    mut reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    ctx: &ServiceContext,
    idle_timeout: Duration,
) -> ChannelOutcome {
    let target = display_target(host, port);
    let socket = match tokio::time::timeout(CONNECT_TIMEOUT, connect_udp(host, port)).await {
        Ok(Ok(socket)) => socket,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()),
            };
            let message = format!("cannot reach {target} over UDP: {why}");
            let refusal = Control::Refused {
                code: UNREACHABLE.to_owned(),
                message: message.clone(),
            };
            let _ = write_control(&mut writer, &refusal).await;
            let _ = writer.shutdown().await;
            return ChannelOutcome {
                exit: None,
                error: Some(message),
            };
        }
    };
    let (flow, mut incoming) = ctx.datagrams.open_flow();
    let accepted = Control::ChannelAccepted { flow: Some(flow) };
    if let Err(e) = write_control(&mut writer, &accepted).await {
        ctx.datagrams.close_flow(flow);
        return ChannelOutcome {
            exit: None,
            error: Some(format!("client disconnected: {e}")),
        };
    }

    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut errors = 0u32;
    let error = loop {
        tokio::select! {
            frame = reader.next() => match frame {
                // Nothing is expected on the stream; its end is the end of the flow.
                Ok(Some(_)) => {}
                Ok(None) => break None,
                Err(e) => break Some(format!("client stream failed: {e}")),
            },
            payload = incoming.recv() => match payload {
                Some(payload) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    if payload.len() <= MAX_DATAGRAM
                        && let Err(e) = socket.send(&payload).await
                    {
                        // Typically an ICMP "port unreachable" for an earlier datagram.
                        tracing::trace!(%target, error = %e, "udp forward: send failed");
                    }
                }
                None => break Some("the tunnel closed the flow".to_owned()),
            },
            received = socket.recv(&mut buf) => match received {
                Ok(n) => {
                    errors = 0;
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    if n <= MAX_DATAGRAM
                        && let Err(e) = ctx.datagrams.send(flow, Bytes::copy_from_slice(&buf[..n]))
                    {
                        tracing::trace!(%target, error = %e, "udp forward: datagram dropped");
                    }
                }
                Err(e) => {
                    errors += 1;
                    tracing::trace!(%target, error = %e, "udp forward: receive failed");
                    if errors >= MAX_UDP_ERRORS {
                        break Some(format!("UDP socket towards {target} failed: {e}"));
                    }
                }
            },
            () = &mut idle => {
                tracing::debug!(%target, flow, "udp forward: idle, closing");
                break None;
            }
        }
    };
    ctx.datagrams.close_flow(flow);
    let _ = writer.shutdown().await;
    ChannelOutcome { exit: None, error }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::services::DatagramPort;
    use tokio::io::{AsyncReadExt, DuplexStream, ReadHalf, WriteHalf};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    type Client = (FrameReader<ReadHalf<DuplexStream>>, WriteHalf<DuplexStream>);

    /// Starts a service on one end of a pipe; the other end is the client's.
    fn pipe<F, Fut>(service: F) -> (Client, tokio::task::JoinHandle<ChannelOutcome>)
    where
        F: FnOnce(FrameReader<BoxRead>, BoxWrite) -> Fut,
        Fut: std::future::Future<Output = ChannelOutcome> + Send + 'static,
    {
        let (client, device) = tokio::io::duplex(256 * 1024);
        let (device_r, device_w) = tokio::io::split(device);
        let task = tokio::spawn(service(
            FrameReader::new(Box::new(device_r) as BoxRead),
            Box::new(device_w) as BoxWrite,
        ));
        let (client_r, client_w) = tokio::io::split(client);
        ((FrameReader::new(client_r), client_w), task)
    }

    /// A server that reads a whole request (until the client's half-close) and answers with it
    /// in upper case, then closes.
    async fn upper_case_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut request = vec![];
                    s.read_to_end(&mut request).await.unwrap();
                    let answer = format!(
                        "HTTP/1.0 200 OK\r\n\r\n{}",
                        String::from_utf8_lossy(&request).to_uppercase()
                    );
                    s.write_all(answer.as_bytes()).await.unwrap();
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn tcp_connects_and_relays_raw_bytes_with_half_close() {
        let port = upper_case_server().await;
        let ((mut reader, mut w), task) =
            pipe(move |r, w| async move { tcp("127.0.0.1", port, r, w).await });
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Eof));
        let (mut r, leftover) = reader.into_parts();
        assert!(leftover.is_empty());
        w.write_all(b"get /index.html").await.unwrap();
        w.shutdown().await.unwrap(); // half-close: the answer must still come back
        let mut answer = vec![];
        r.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.0 200 OK\r\n\r\nGET /INDEX.HTML");
        assert_eq!(task.await.unwrap(), ChannelOutcome::default());
    }

    #[tokio::test]
    async fn bytes_sent_before_the_status_frame_reach_the_target() {
        let port = upper_case_server().await;
        // The service's reader already holds raw bytes past the header frame.
        let (client, device) = tokio::io::duplex(64 * 1024);
        let (device_r, device_w) = tokio::io::split(device);
        let (client_r, mut client_w) = tokio::io::split(client);
        write_control(&mut client_w, &Control::ChannelAccepted { flow: None })
            .await
            .unwrap();
        client_w.write_all(b"early bytes").await.unwrap();
        client_w.shutdown().await.unwrap();
        let mut device_reader = FrameReader::new(Box::new(device_r) as BoxRead);
        assert!(device_reader.control().await.unwrap().is_some());
        let outcome =
            tokio::spawn(
                async move { tcp("127.0.0.1", port, device_reader, Box::new(device_w)).await },
            );
        let mut reader = FrameReader::new(client_r);
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Eof));
        let (mut r, leftover) = reader.into_parts();
        let mut answer = leftover.to_vec();
        r.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.0 200 OK\r\n\r\nEARLY BYTES");
        assert_eq!(outcome.await.unwrap().error, None);
    }

    #[tokio::test]
    async fn tcp_to_a_closed_port_is_an_error_naming_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let ((mut reader, _w), task) =
            pipe(move |r, w| async move { tcp("127.0.0.1", port, r, w).await });
        let Some(Frame::Error(message)) = reader.next().await.unwrap() else {
            panic!("expected an error frame");
        };
        assert!(
            message.starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
            "{message}"
        );
        assert_eq!(reader.next().await.unwrap(), None);
        assert_eq!(task.await.unwrap().error, Some(message));
    }

    /// A unix socket server that answers each whole request in upper case, then closes.
    fn upper_case_unix_server(path: &std::path::Path) {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut request = vec![];
                    s.read_to_end(&mut request).await.unwrap();
                    s.write_all(&request.to_ascii_uppercase()).await.unwrap();
                });
            }
        });
    }

    #[tokio::test]
    async fn unix_accepts_then_relays_raw_bytes_with_half_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        upper_case_unix_server(&path);
        let p = path.to_str().unwrap().to_owned();
        let ((mut reader, mut w), task) = pipe(move |r, w| async move { unix(&p, r, w).await });
        assert_eq!(
            reader.control().await.unwrap(),
            Some(Control::ChannelAccepted { flow: None })
        );
        let (mut r, leftover) = reader.into_parts();
        assert!(leftover.is_empty());
        w.write_all(b"hello socket").await.unwrap();
        w.shutdown().await.unwrap();
        let mut answer = vec![];
        r.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HELLO SOCKET");
        assert_eq!(task.await.unwrap(), ChannelOutcome::default());
    }

    #[tokio::test]
    async fn a_missing_unix_socket_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nothing.sock").to_str().unwrap().to_owned();
        let expected = format!(
            "cannot connect to unix socket {p} on the device: No such file or directory (os error 2)"
        );
        let ((mut reader, _w), task) = pipe(move |r, w| async move { unix(&p, r, w).await });
        assert_eq!(
            reader.control().await.unwrap(),
            Some(Control::Refused {
                code: "unavailable".into(),
                message: expected.clone()
            })
        );
        assert_eq!(task.await.unwrap().error, Some(expected));
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let p = path.to_str().unwrap().to_owned();
        let ((mut reader, _w), _task) = pipe(move |r, w| async move { unix(&p, r, w).await });
        let Some(Control::Refused { message, .. }) = reader.control().await.unwrap() else {
            panic!("expected a refusal");
        };
        assert!(
            message.contains("stale.sock") && message.contains("Connection refused"),
            "{message}"
        );
    }

    /// Flows in memory: the test plays the tunnel.
    #[derive(Default)]
    struct TestPort {
        to_service: Mutex<HashMap<u32, mpsc::Sender<Bytes>>>,
        sent: Mutex<Option<mpsc::UnboundedSender<(u32, Bytes)>>>,
        closed: Mutex<Vec<u32>>,
    }

    impl DatagramPort for TestPort {
        fn open_flow(&self) -> (u32, mpsc::Receiver<Bytes>) {
            let (tx, rx) = mpsc::channel(16);
            self.to_service.lock().unwrap().insert(42, tx);
            (42, rx)
        }
        fn send(&self, flow: u32, payload: Bytes) -> Result<(), String> {
            if let Some(tx) = self.sent.lock().unwrap().as_ref() {
                let _ = tx.send((flow, payload));
            }
            Ok(())
        }
        fn close_flow(&self, flow: u32) {
            self.closed.lock().unwrap().push(flow);
            self.to_service.lock().unwrap().remove(&flow);
        }
    }

    async fn udp_echo_server() -> u16 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = socket.recv_from(&mut buf).await.unwrap();
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                socket.send_to(&reply, from).await.unwrap();
            }
        });
        port
    }

    #[tokio::test]
    async fn udp_relays_datagrams_until_the_client_closes() {
        let port = udp_echo_server().await;
        let test_port = Arc::new(TestPort::default());
        let (sent_tx, mut sent) = mpsc::unbounded_channel();
        *test_port.sent.lock().unwrap() = Some(sent_tx);
        let ctx = ServiceContext::new(test_port.clone(), Default::default());
        let ((mut reader, mut w), task) =
            pipe(move |r, w| async move { udp("127.0.0.1", port, r, w, &ctx).await });
        assert_eq!(
            reader.control().await.unwrap(),
            Some(Control::ChannelAccepted { flow: Some(42) })
        );
        let to_service = test_port.to_service.lock().unwrap()[&42].clone();
        for i in 0..5u8 {
            to_service
                .send(Bytes::from(vec![b'a' + i; 3]))
                .await
                .unwrap();
            let (flow, reply) = sent.recv().await.unwrap();
            assert_eq!(flow, 42);
            assert_eq!(&reply[..], [b"echo:".as_slice(), &[b'a' + i; 3]].concat());
        }
        // Too large for UDP: dropped, the flow goes on.
        to_service
            .send(Bytes::from(vec![0u8; MAX_DATAGRAM + 1]))
            .await
            .unwrap();
        to_service.send(Bytes::from_static(b"last")).await.unwrap();
        assert_eq!(&sent.recv().await.unwrap().1[..], b"echo:last");

        w.shutdown().await.unwrap(); // the client closes the stream: the flow ends
        assert_eq!(reader.next().await.unwrap(), None);
        assert_eq!(task.await.unwrap(), ChannelOutcome::default());
        assert_eq!(*test_port.closed.lock().unwrap(), vec![42]);
    }

    #[tokio::test]
    async fn idle_udp_flows_are_closed() {
        let port = udp_echo_server().await;
        let test_port = Arc::new(TestPort::default());
        let ctx = ServiceContext::new(test_port.clone(), Default::default());
        let ((mut reader, _w), task) = pipe(move |r, w| async move {
            udp_with_idle("127.0.0.1", port, r, w, &ctx, Duration::from_millis(200)).await
        });
        assert_eq!(
            reader.control().await.unwrap(),
            Some(Control::ChannelAccepted { flow: Some(42) })
        );
        // The device ends the stream by itself.
        assert_eq!(reader.next().await.unwrap(), None);
        assert_eq!(task.await.unwrap().error, None);
        assert_eq!(*test_port.closed.lock().unwrap(), vec![42]);
    }
}
