//! `m87 <device> forward`: local ports that reach ports the device can reach.
//!
//! Every local listener is bound first; then each accepted TCP connection opens its own
//! `Channel::Forward` channel, and each local UDP source address gets its own
//! `Channel::UdpForward` flow. The wire protocol of both is described with the device's side
//! (`agent/src/services/forward.rs`):
//!
//! - TCP: after `ChannelAccepted`, the device sends one status frame — `Eof` (connected, raw
//!   bytes follow both ways) or `Error(message)` (the connection failed) — then the stream
//!   carries raw bytes, half-closes passed through.
//! - UDP: `ChannelAccepted { flow }` names the flow; datagrams then carry the payloads, the
//!   stream stays open for the flow's life and finishing it ends the flow.
//!
//! - Unix sockets on the device (`/local.sock:/remote.sock`, `8080:/run/app.sock`): after
//!   `ChannelAccepted` the stream carries raw bytes at once; a missing socket is refused.
//!
//! - [`spec`]: parsing `8080`, `8080:80`, `8080:10.0.0.5:80`, ranges, `/udp`.
//! - [`unix`]: unix-socket specs, the private local socket file, piping one connection.

mod spec;
#[cfg(test)]
mod tests;
pub mod unix;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use m87_events::tunnel::Frame;
use m87_transport::forward::{CONNECT_TIMEOUT, MAX_DATAGRAM, UDP_IDLE_TIMEOUT};
use m87_transport::stream::splice;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{ChannelOpener, OpenedChannel};
pub use spec::{ForwardSpec, Proto, parse_specs};
use unix::{BoundSocket, SocketSpec};

/// How long the device may take to answer a TCP forward with its status frame (its own connect
/// timeout, plus slack for the round trip).
const STATUS_TIMEOUT: Duration = Duration::from_secs(CONNECT_TIMEOUT.as_secs() + 20);
/// Datagrams queued per UDP source while its flow opens or when the tunnel is slow; more are
/// dropped, as a network would.
const FLOW_QUEUE: usize = 256;
/// Pause after a failed `accept` (out of file descriptors, …) before trying again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound local socket.
#[derive(Debug)]
enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Local listeners bound for a set of forwards, not serving yet.
#[derive(Debug)]
pub struct BoundForwards {
    listeners: Vec<(ForwardSpec, SocketAddr, Listener)>,
    sockets: Vec<BoundSocket>,
    udp_idle: Duration,
}

/// Binds a listener for every spec on `bind`, in order; fails on the first that cannot be bound,
/// naming its address. A spec's port 0 binds an ephemeral port ([`parse_specs`] never yields
/// one; tests do).
#[cfg(test)]
pub async fn bind_listeners(
    specs: Vec<ForwardSpec>,
    bind: IpAddr,
) -> anyhow::Result<BoundForwards> {
    bind_all(specs, vec![], bind).await
}

/// Port and unix-socket forwards parsed from the command line (see [`parse_all`]).
pub type ParsedForwards = (Vec<ForwardSpec>, Vec<SocketSpec>);

/// Parses forward specs of both kinds: unix sockets on the device ([`unix::is_socket_spec`])
/// and ports ([`parse_specs`]). A local port or socket file used twice is an error.
pub fn parse_all(specs: &[String]) -> anyhow::Result<ParsedForwards> {
    let (socket_specs, port_specs): (Vec<String>, Vec<String>) =
        specs.iter().cloned().partition(|s| unix::is_socket_spec(s));
    let ports = parse_specs(&port_specs)?;
    let mut sockets: Vec<SocketSpec> = Vec::with_capacity(socket_specs.len());
    for spec in &socket_specs {
        let parsed = unix::parse_socket_spec(spec)
            .map_err(|why| anyhow::anyhow!("invalid forward {spec:?}: {why}"))?;
        let taken = sockets.iter().any(|s| s.local == parsed.local)
            || matches!(parsed.local, unix::LocalEnd::Port(p)
                if ports.iter().any(|f| f.local_port == p && f.proto == Proto::Tcp));
        if taken {
            anyhow::bail!(
                "invalid forward {spec:?}: local {} is forwarded twice",
                parsed.local
            );
        }
        sockets.push(parsed);
    }
    Ok((ports, sockets))
}

/// The grant's targets for these forwards: `{host, port, proto}` and `{path, proto: "unix"}`.
pub fn grant_targets(ports: &[ForwardSpec], sockets: &[SocketSpec]) -> Vec<serde_json::Value> {
    ports
        .iter()
        .map(|s| serde_json::json!({"host": s.remote_host, "port": s.remote_port, "proto": s.proto.as_str()}))
        .chain(sockets.iter().map(SocketSpec::grant_target))
        .collect()
}

/// Binds every port forward on `bind`, then every unix-socket forward's local end; fails on the
/// first that cannot be bound, naming it (socket files bound so far are removed).
pub async fn bind_all(
    specs: Vec<ForwardSpec>,
    socket_specs: Vec<SocketSpec>,
    bind: IpAddr,
) -> anyhow::Result<BoundForwards> {
    if specs.is_empty() && socket_specs.is_empty() {
        anyhow::bail!("nothing to forward: give at least one port or socket");
    }
    let mut sockets = Vec::with_capacity(socket_specs.len());
    for spec in socket_specs {
        sockets.push(BoundSocket::bind(spec, bind).await?);
    }
    let mut listeners = Vec::with_capacity(specs.len());
    for spec in specs {
        let want = SocketAddr::new(bind, spec.local_port);
        let bound = match spec.proto {
            Proto::Tcp => TcpListener::bind(want).await.map(Listener::Tcp),
            Proto::Udp => UdpSocket::bind(want).await.map(Listener::Udp),
        };
        let listener = bound.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {want}/{} (forward {spec}): {e}",
                spec.proto
            )
        })?;
        let addr = match &listener {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Udp(s) => s.local_addr(),
        }
        .map_err(|e| anyhow::anyhow!("cannot listen on {want}/{}: {e}", spec.proto))?;
        listeners.push((spec, addr, listener));
    }
    Ok(BoundForwards {
        listeners,
        sockets,
        udp_idle: UDP_IDLE_TIMEOUT,
    })
}

impl BoundForwards {
    /// Each spec with the local address it is bound to.
    pub fn addrs(&self) -> Vec<(ForwardSpec, SocketAddr)> {
        self.listeners
            .iter()
            .map(|(spec, addr, _)| (spec.clone(), *addr))
            .collect()
    }

    /// Each unix-socket forward: its local end as users see it, and the socket on the device.
    pub fn socket_addrs(&self) -> Vec<(String, String)> {
        self.sockets
            .iter()
            .map(|s| {
                let (local, spec) = s.local_display();
                (local, spec.remote_path.clone())
            })
            .collect()
    }

    /// Closes UDP flows after `idle` without traffic instead of the usual five minutes.
    #[cfg(test)]
    fn with_udp_idle(mut self, idle: Duration) -> Self {
        self.udp_idle = idle;
        self
    }

    /// Serves every listener until `shutdown` completes; then closes the listeners and every
    /// connection and flow.
    pub async fn serve(
        self,
        opener: Arc<dyn ChannelOpener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut tasks = JoinSet::new();
        for (spec, _, listener) in self.listeners {
            let spec = Arc::new(spec);
            match listener {
                Listener::Tcp(l) => tasks.spawn(accept_tcp(Arc::clone(&opener), spec, l)),
                Listener::Udp(s) => {
                    let relay = relay_udp(Arc::clone(&opener), spec, Arc::new(s), self.udp_idle);
                    tasks.spawn(relay)
                }
            };
        }
        for socket in self.sockets {
            tasks.spawn(socket.serve(Arc::clone(&opener)));
        }
        tokio::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => {}
            Some(ended) = tasks.join_next() => {
                // Listener tasks run until aborted; one ending means it panicked.
                if let Err(e) = ended {
                    anyhow::bail!("a forward listener failed: {e}");
                }
            }
        }
        // Dropping the tasks drops each listener's own set of connections and flows.
        tasks.shutdown().await;
        Ok(())
    }
}

/// Binds every forward (failing before anything else if one cannot be bound), tells `ready`
/// where each is listening, then forwards until `shutdown` completes. Prints nothing itself.
#[cfg(test)]
pub async fn run(
    opener: Arc<dyn ChannelOpener>,
    specs: Vec<ForwardSpec>,
    bind: IpAddr,
    ready: impl FnOnce(&[(ForwardSpec, SocketAddr)]) + Send,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let bound = bind_listeners(specs, bind).await?;
    ready(&bound.addrs());
    bound.serve(opener, shutdown).await
}

/// Accepts local TCP connections; each gets its own task and channel.
async fn accept_tcp(opener: Arc<dyn ChannelOpener>, spec: Arc<ForwardSpec>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(forward_tcp(Arc::clone(&opener), Arc::clone(&spec), stream, peer));
                }
                Err(e) => {
                    tracing::warn!(forward = %spec, error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One local TCP connection through its own channel.
async fn forward_tcp(
    opener: Arc<dyn ChannelOpener>,
    spec: Arc<ForwardSpec>,
    mut local: TcpStream,
    peer: SocketAddr,
) {
    let _ = local.set_nodelay(true);
    let target = spec.remote_target();
    let OpenedChannel {
        mut reader, writer, ..
    } = match opener.open(spec.channel()).await {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(%peer, "cannot forward to {target}: {e}");
            return;
        }
    };
    let failure = match tokio::time::timeout(STATUS_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(Frame::Eof))) => None,
        Ok(Ok(Some(Frame::Error(message)))) => Some(message),
        Ok(Ok(Some(_))) => Some("the device answered with an unexpected frame".to_owned()),
        Ok(Ok(None)) => Some("the device closed the channel".to_owned()),
        Ok(Err(e)) => Some(format!("the session broke: {e}")),
        Err(_) => Some(format!(
            "the device did not answer within {} s",
            STATUS_TIMEOUT.as_secs()
        )),
    };
    if let Some(message) = failure {
        // Dropping `local` closes the user's connection.
        tracing::warn!(%peer, "forward to {target} failed: {message}");
        return;
    }
    match splice(&mut local, reader, writer).await {
        Ok((up, down)) => tracing::debug!(%peer, %target, up, down, "forwarded connection ended"),
        Err(e) => tracing::debug!(%peer, %target, error = %e, "forwarded connection broke"),
    }
}

/// Relays a local UDP socket: one flow per source address.
async fn relay_udp(
    opener: Arc<dyn ChannelOpener>,
    spec: Arc<ForwardSpec>,
    socket: Arc<UdpSocket>,
    idle: Duration,
) {
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut tasks: JoinSet<SocketAddr> = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, source)) => {
                    if n > MAX_DATAGRAM {
                        continue;
                    }
                    let payload = Bytes::copy_from_slice(&buf[..n]);
                    if flows.get(&source).is_none_or(|q| q.is_closed()) {
                        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
                        let flow = udp_flow(
                            Arc::clone(&opener),
                            Arc::clone(&spec),
                            Arc::clone(&socket),
                            source,
                            rx,
                            idle,
                        );
                        tasks.spawn(flow);
                        flows.insert(source, tx);
                    }
                    if let Some(queue) = flows.get(&source) {
                        // A full queue drops the datagram, as a congested network would.
                        let _ = queue.try_send(payload);
                    }
                }
                Err(e) => {
                    tracing::debug!(forward = %spec, error = %e, "udp receive failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(source) = ended
                    && flows.get(&source).is_some_and(|q| q.is_closed())
                {
                    flows.remove(&source);
                }
            }
        }
    }
}

/// One UDP flow: datagrams from `source` go out on it, its replies come back to `source`.
/// Ends when the device ends the flow, or after `idle` without a datagram either way. Returns
/// `source`.
async fn udp_flow(
    opener: Arc<dyn ChannelOpener>,
    spec: Arc<ForwardSpec>,
    socket: Arc<UdpSocket>,
    source: SocketAddr,
    mut queue: mpsc::Receiver<Bytes>,
    idle: Duration,
) -> SocketAddr {
    let target = spec.remote_target();
    let OpenedChannel {
        mut reader,
        mut writer,
        flow,
    } = match opener.open(spec.channel()).await {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(%source, "cannot forward UDP to {target}: {e}");
            return source;
        }
    };
    let Some(flow) = flow else {
        tracing::warn!(%source, "cannot forward UDP to {target}: the device assigned no flow");
        let _ = writer.shutdown().await;
        return source;
    };
    let mut replies = opener.datagrams(flow);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            payload = queue.recv() => match payload {
                Some(payload) => {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    if let Err(e) = opener.send_datagram(flow, payload) {
                        tracing::debug!(%source, flow, error = %e, "udp datagram dropped");
                    }
                }
                None => break,
            },
            reply = replies.recv() => match reply {
                Some(reply) => {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    if let Err(e) = socket.send_to(&reply, source).await {
                        tracing::debug!(%source, flow, error = %e, "udp reply dropped");
                    }
                }
                None => break,
            },
            frame = reader.next() => match frame {
                Ok(Some(Frame::Error(message))) => {
                    tracing::warn!(%source, "UDP forward to {target} failed: {message}");
                    break;
                }
                Ok(Some(_)) => {}
                // The device ended the flow (idle on its side, or the session ended).
                Ok(None) | Err(_) => break,
            },
            () = &mut timer => {
                tracing::debug!(%source, flow, "udp flow idle, closing");
                break;
            }
        }
    }
    // Finishing the stream ends the flow on the device.
    let _ = writer.shutdown().await;
    source
}
