//! Forwards end to end against the agent's real services, in process (`LocalOpener`): the
//! "device" side servers are plain sockets on 127.0.0.1.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use m87_events::tunnel::Channel;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::remote::OpenError;
use crate::remote::testing::LocalOpener;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(10);

/// Counts the channels opened through it.
#[derive(Default)]
struct CountingOpener {
    inner: LocalOpener,
    opens: AtomicUsize,
}

#[async_trait]
impl ChannelOpener for CountingOpener {
    async fn open(&self, channel: Channel) -> Result<OpenedChannel, OpenError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        self.inner.open(channel).await
    }
    fn send_datagram(&self, flow: u32, payload: Bytes) -> Result<(), OpenError> {
        self.inner.send_datagram(flow, payload)
    }
    fn datagrams(&self, flow: u32) -> mpsc::Receiver<Bytes> {
        self.inner.datagrams(flow)
    }
}

fn to(port: u16, proto: Proto) -> ForwardSpec {
    ForwardSpec {
        local_port: 0, // ephemeral: users cannot write this, tests can
        remote_host: spec::DEVICE_HOST.to_owned(),
        remote_port: port,
        proto,
    }
}

/// A running forward.
struct Forwarding {
    addrs: Vec<SocketAddr>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Forwarding {
    async fn start(opener: Arc<dyn ChannelOpener>, specs: Vec<ForwardSpec>) -> Self {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(
            opener,
            specs,
            LOCALHOST,
            move |addrs| {
                let _ = ready_tx.send(addrs.iter().map(|(_, a)| *a).collect());
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let addrs = ready_rx.await.unwrap();
        Self { addrs, stop, task }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// A TCP server that echoes every connection, passing on the half-close.
async fn tcp_echo_server() -> u16 {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    port
}

/// A UDP server that answers `echo:` + each datagram.
async fn udp_echo_server() -> u16 {
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let port = socket.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let reply = [b"echo:".as_slice(), &buf[..n]].concat();
            socket.send_to(&reply, from).await.unwrap();
        }
    });
    port
}

/// Deterministic pseudo-random bytes.
fn pattern(mut seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn echo_through(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = vec![];
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    got
}

#[tokio::test]
async fn hundred_concurrent_connections_each_get_their_own_bytes() {
    let port = tcp_echo_server().await;
    let fwd = Forwarding::start(Arc::new(LocalOpener::default()), vec![to(port, Proto::Tcp)]).await;
    let addr = fwd.addrs[0];
    let mut clients = JoinSet::new();
    for i in 0..100usize {
        clients.spawn(async move {
            let data = format!("connection {i};").repeat(500 + i).into_bytes();
            let got = tokio::time::timeout(WAIT, echo_through(addr, data.clone()))
                .await
                .unwrap();
            assert!(got == data, "connection {i} got other bytes back");
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    fwd.stop().await;
    // Stopped: the local port is closed.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn twenty_megabytes_cross_one_connection_intact() {
    const SIZE: usize = 20 * 1024 * 1024;
    // The "device" side: digests what it receives (to the end), answers with the digest, then
    // sends 20 MB of its own.
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
            hasher.update(&buf[..n]);
        }
        let line = format!("{total} {}\n", hex::encode(hasher.finalize()));
        s.write_all(line.as_bytes()).await.unwrap();
        s.write_all(&pattern(2, SIZE)).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let fwd = Forwarding::start(Arc::new(LocalOpener::default()), vec![to(port, Proto::Tcp)]).await;

    let upload = pattern(1, SIZE);
    let upload_digest = hex::encode(Sha256::digest(&upload));
    let got = tokio::time::timeout(Duration::from_secs(120), echo_through(fwd.addrs[0], upload))
        .await
        .unwrap();
    let newline = got.iter().position(|&b| b == b'\n').unwrap();
    assert_eq!(
        std::str::from_utf8(&got[..newline]).unwrap(),
        format!("{SIZE} {upload_digest}")
    );
    let download = &got[newline + 1..];
    assert_eq!(download.len(), SIZE);
    assert_eq!(
        hex::encode(Sha256::digest(download)),
        hex::encode(Sha256::digest(pattern(2, SIZE)))
    );
    fwd.stop().await;
}

#[tokio::test]
async fn a_refused_connection_closes_the_local_connection() {
    let closed = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let fwd = Forwarding::start(Arc::new(LocalOpener::default()), vec![to(port, Proto::Tcp)]).await;
    let mut s = TcpStream::connect(fwd.addrs[0]).await.unwrap();
    let mut got = vec![];
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got.is_empty(), "no bytes come from a failed forward");
    assert!(matches!(read, Ok(0) | Err(_)));
    // The forward itself goes on.
    let mut s = TcpStream::connect(fwd.addrs[0]).await.unwrap();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)));
    fwd.stop().await;
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_fails_before_anything_else() {
    let busy = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let ready = Arc::new(AtomicBool::new(false));
    let called = Arc::clone(&ready);
    let mut specs = vec![to(80, Proto::Tcp), to(80, Proto::Tcp)];
    specs[1].local_port = busy_port;
    let opener = Arc::new(CountingOpener::default());
    let err = run(
        opener.clone(),
        specs,
        LOCALHOST,
        move |_| called.store(true, Ordering::SeqCst),
        std::future::pending(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!("cannot listen on 127.0.0.1:{busy_port}/tcp")),
        "{err}"
    );
    assert!(!ready.load(Ordering::SeqCst));
    assert_eq!(opener.opens.load(Ordering::SeqCst), 0);

    let err = run(opener, vec![], LOCALHOST, |_| {}, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "nothing to forward: give at least one port or socket"
    );
}

async fn udp_round_trip(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    socket.send_to(payload, to).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, to, "replies come from the forwarded port");
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn udp_datagrams_are_relayed_with_one_flow_per_source() {
    let port = udp_echo_server().await;
    let opener = Arc::new(CountingOpener::default());
    let fwd = Forwarding::start(opener.clone(), vec![to(port, Proto::Udp)]).await;
    let addr = fwd.addrs[0];
    let a = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let b = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    for i in 0..10 {
        for (name, socket) in [("a", &a), ("b", &b)] {
            let payload = format!("{name}{i}");
            let reply = udp_round_trip(socket, addr, payload.as_bytes()).await;
            assert_eq!(reply, format!("echo:{payload}").into_bytes());
        }
    }
    let big = pattern(3, 30_000);
    let reply = udp_round_trip(&a, addr, &big).await;
    assert_eq!(reply, [b"echo:".as_slice(), &big].concat());
    assert_eq!(
        opener.opens.load(Ordering::SeqCst),
        2,
        "one flow per source"
    );
    fwd.stop().await;
}

#[tokio::test]
async fn idle_udp_flows_close_and_reopen_on_the_next_datagram() {
    let port = udp_echo_server().await;
    let opener = Arc::new(CountingOpener::default());
    let bound = bind_listeners(vec![to(port, Proto::Udp)], LOCALHOST)
        .await
        .unwrap()
        .with_udp_idle(Duration::from_millis(200));
    let addr = bound.addrs()[0].1;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(opener.clone(), async move {
        let _ = stopped.await;
    }));
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    assert_eq!(udp_round_trip(&socket, addr, b"one").await, b"echo:one");
    assert_eq!(udp_round_trip(&socket, addr, b"two").await, b"echo:two");
    assert_eq!(opener.opens.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(udp_round_trip(&socket, addr, b"three").await, b"echo:three");
    assert_eq!(
        opener.opens.load(Ordering::SeqCst),
        2,
        "the idle flow was replaced"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn tcp_and_udp_forwards_run_side_by_side() {
    let tcp_port = tcp_echo_server().await;
    let udp_port = udp_echo_server().await;
    let mut specs = parse_specs(&[
        format!("1:{tcp_port}"),
        format!("1:127.0.0.1:{udp_port}/udp"),
    ])
    .unwrap();
    for spec in &mut specs {
        spec.local_port = 0;
    }
    let fwd = Forwarding::start(Arc::new(LocalOpener::default()), specs).await;
    assert_eq!(
        echo_through(fwd.addrs[0], b"over tcp".to_vec()).await,
        b"over tcp"
    );
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    assert_eq!(
        udp_round_trip(&socket, fwd.addrs[1], b"over udp").await,
        b"echo:over udp"
    );
    fwd.stop().await;
}
