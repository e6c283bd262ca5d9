//! The HTTPS accept loop: connection caps, the TLS handshake, HTTP/1 and HTTP/2 with their
//! limits, idle connections closed, and a graceful stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::body::{DeadlineBody, InFlight, TrackedBody};
use super::limits::{ConnectionCaps, ConnectionPermit, HttpLimits};

/// How long open requests may take to finish once the server stops.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` over HTTPS on `listener` within `limits` until `shutdown` completes; then stops
/// accepting and lets open requests finish (up to 10 s).
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        http: http_builder(&limits),
        app,
        limits,
    });
    let caps = ConnectionCaps::new(&shared.limits);
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses go out as they are written: with Nagle's algorithm a response written in
        // two pieces (headers, body) waits for the client's delayed ACK, 40 ms, on every
        // request after the first on a kept-alive connection.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Over a cap, the connection is closed before the TLS handshake.
        let Ok(permit) = caps.admit(peer) else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(connection(shared, tcp, peer, permit, stopping.clone()));
    }
    drop(listener);
    let _ = stop.send(true);
    if tokio::time::timeout(STOP_GRACE, caps.all_closed())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within 10 s");
    }
}

/// What every connection task reads.
struct Shared {
    acceptor: TlsAcceptor,
    http: Builder<TokioExecutor>,
    app: Router,
    limits: HttpLimits,
}

/// HTTP/1 and HTTP/2 (by ALPN or prior knowledge) with the header, keep-alive and stream
/// limits.
fn http_builder(limits: &HttpLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's floor: the read buffer holds at least 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// One connection, holding its place among the open ones until it ends.
async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: ConnectionPermit,
    mut stopping: watch::Receiver<bool>,
) {
    let limits = &shared.limits;
    let handshake = tokio::time::timeout(limits.handshake_timeout, shared.acceptor.accept(tcp));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "tls handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "tls handshake timed out");
                return;
            }
        },
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    let (in_flight, idle) = InFlight::new();
    let service = requests(Arc::clone(&shared), peer, in_flight);
    let conn = shared.http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let why = tokio::select! {
        ended = conn.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
            return;
        }
        () = idle_for(idle, limits.idle_timeout) => "idle",
        _ = stopping.wait_for(|stop| *stop) => "server stopping",
    };
    tracing::debug!(%peer, why, "closing the connection");
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(STOP_GRACE, conn).await {
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection closed with an error"),
        Ok(Ok(())) => {}
        Err(_) => tracing::debug!(%peer, "connection did not close in time; dropped"),
    }
}

/// The app as one connection's service: each request's body has its deadline and the source
/// address attached, and counts as in progress until its response has been sent.
fn requests(
    shared: Arc<Shared>,
    peer: SocketAddr,
    in_flight: InFlight,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<Body>, Infallible>> + Send + 'static,
> + Clone {
    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = in_flight.start();
        let deadline = shared.limits.request_read_timeout;
        let mut req = req.map(|b| Body::new(DeadlineBody::new(b, deadline)));
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
        let app = shared.app.clone();
        async move {
            let Ok(resp) = app.oneshot(req).await;
            Ok(resp.map(|b| Body::new(TrackedBody::new(b, guard))))
        }
    })
}

/// Completes once no request has been in progress for `timeout`.
async fn idle_for(mut in_flight: watch::Receiver<usize>, timeout: Duration) {
    loop {
        let idle = *in_flight.borrow_and_update() == 0;
        if idle {
            tokio::select! {
                () = tokio::time::sleep(timeout) => return,
                changed = in_flight.changed() => if changed.is_err() { return },
            }
        } else if in_flight.changed().await.is_err() {
            return;
        }
    }
}
