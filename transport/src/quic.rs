//! QUIC set-up for every m87 endpoint: the transport settings (one function, with the idle
//! timeout each side asks for), UDP socket tuning, and the client side — TLS 1.3, ALPN, and a
//! server certificate check by SHA-256 pin (the control plane tells which certificate each
//! relay has, over its checked HTTPS). Devices and the CLI always pin relays, whatever
//! `M87_TRUST_INVALID_CERT` says; `pin = None` (any certificate) is left to callers that dial
//! something other than a relay.
//!
//! Two idle timeouts, on purpose: clients (devices, the CLI, a relay dialling another relay)
//! ask for [`CLIENT_IDLE_TIMEOUT`] (6 s), so a relay that vanished without closing is noticed
//! quickly and a device is back through another relay well inside 10 s; a relay's server side
//! asks for [`SERVER_IDLE_TIMEOUT`] (10 s). QUIC uses the smaller of the two values both peers
//! announce, so every established connection runs with 6 s today; the 10 s applies only while
//! a handshake is under way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::{PinnedVerifier, crypto_provider};

/// Why a QUIC connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// Configuration failed.
    #[error("cannot configure QUIC: {0}")]
    Config(String),
    /// The relay address did not resolve.
    #[error("cannot resolve relay address {0}")]
    Resolve(String),
    /// Connecting failed.
    #[error("cannot connect to relay {addr}: {reason}")]
    Connect {
        /// The relay.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// How long a client's connection may stay silent before it counts as lost (keep-alives go
/// every [`KEEP_ALIVE`]).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(6);
/// The idle timeout a relay announces on the connections it accepts (see the module docs).
pub const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a silent connection sends a keep-alive, well inside either idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// How many ack-eliciting packets a peer may receive before it must acknowledge (QUIC's ACK
/// frequency extension; without it, every second packet). A bulk transfer then sends a fifth of
/// the acknowledgements, each of which costs both ends a packet to seal, send, receive and open.
/// Losses still get an immediate acknowledgement (out-of-order arrival triggers one).
pub const ACK_ELICITING_THRESHOLD: u32 = 10;

/// The UDP socket buffer size asked for, each way. The kernel caps it at `net.core.rmem_max` /
/// `net.core.wmem_max`. At Linux's default of about 208 KiB, a relay, device or client that is
/// off the CPU for a moment overflows its receive buffer, and each drop makes the sender cut its
/// congestion window (seen in `loadtest/`: about 2,000 drops in 8 s of a forward at 2 Gbit/s).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Transport settings of every m87 QUIC connection, with `idle` as the idle timeout (see
/// [`client_transport_config`] and [`server_transport_config`]): 16 MiB per stream for
/// throughput, no connection-wide receive limit (a limit there lets a few streams whose reader
/// stalls block every other stream and session on the connection — measured in
/// `loadtest/reports/`), bounded streams, a keep-alive every [`KEEP_ALIVE`], and the peer asked
/// to acknowledge every [`ACK_ELICITING_THRESHOLD`] packets.
pub fn transport_config(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(acks));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(
        m87_events::tunnel::MAX_STREAMS_PER_CONNECTION,
    ))
    .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
    .stream_receive_window(quinn::VarInt::from_u32(16 << 20))
    .receive_window(quinn::VarInt::MAX)
    .send_window(64 << 20)
    .keep_alive_interval(Some(KEEP_ALIVE))
    .datagram_receive_buffer_size(Some(4 << 20))
    .datagram_send_buffer_size(4 << 20);
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// The transport settings of a client connection ([`CLIENT_IDLE_TIMEOUT`]).
pub fn client_transport_config() -> quinn::TransportConfig {
    transport_config(CLIENT_IDLE_TIMEOUT)
}

/// Bidirectional streams a peer may have open on a relay before its first message
/// authenticated it: the hello stream, and one more for a client that opens its next stream
/// early (it waits for credit beyond that).
pub const PRE_AUTH_STREAMS: u32 = 2;

/// The connection-wide receive window of a relay's connection before the peer authenticated:
/// all a peer can make the relay buffer, over all its streams, until then. It holds the largest
/// first message on each of [`PRE_AUTH_STREAMS`] streams.
pub const PRE_AUTH_RECEIVE_WINDOW: u32 = 64 * 1024;

const _: () = assert!(
    PRE_AUTH_RECEIVE_WINDOW as usize
        >= PRE_AUTH_STREAMS as usize * (m87_events::tunnel::frame::MAX_CONTROL + 16)
);

/// The transport settings of a relay's accepted connections ([`SERVER_IDLE_TIMEOUT`]), with the
/// small limits that hold until the peer authenticates: [`PRE_AUTH_STREAMS`] streams and a
/// connection-wide receive window of [`PRE_AUTH_RECEIVE_WINDOW`]. [`grant_full_limits`] raises
/// them on the live connection once its first message is authenticated. (The per-stream
/// window, 16 MiB, cannot change on a live connection; the connection-wide window bounds what
/// a peer can send before then.)
pub fn server_transport_config() -> quinn::TransportConfig {
    let mut t = transport_config(SERVER_IDLE_TIMEOUT);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(PRE_AUTH_STREAMS))
        .receive_window(quinn::VarInt::from_u32(PRE_AUTH_RECEIVE_WINDOW));
    t
}

/// Raises an accepted connection's limits to those of [`transport_config`] (streams and
/// connection-wide receive window): its peer is authenticated.
pub fn grant_full_limits(conn: &quinn::Connection) {
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(
        m87_events::tunnel::MAX_STREAMS_PER_CONNECTION,
    ));
    conn.set_receive_window(quinn::VarInt::MAX);
}

/// Asks for [`SOCKET_BUFFER`]-sized receive and send buffers on a QUIC socket; returns what the
/// kernel granted (receive, send), as far as it tells.
pub fn tune_socket(socket: &std::net::UdpSocket) -> (Option<usize>, Option<usize>) {
    let Ok(state) = quinn::udp::UdpSocketState::new(socket.into()) else {
        return (None, None);
    };
    let _ = state.set_recv_buffer_size(socket.into(), SOCKET_BUFFER);
    let _ = state.set_send_buffer_size(socket.into(), SOCKET_BUFFER);
    (
        state.recv_buffer_size(socket.into()).ok(),
        state.send_buffer_size(socket.into()).ok(),
    )
}

/// A UDP socket for a client endpoint, bound to `bind`, with [`SOCKET_BUFFER`]-sized buffers
/// where the kernel allows.
fn client_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(bind)?;
    let _ = tune_socket(&socket);
    Ok(socket)
}

/// A TLS 1.3 client configuration that accepts exactly the certificate whose SHA-256 is `pin`
/// (or any certificate, with `None`), without ALPN.
pub fn pinned_tls(pin: Option<&str>) -> Result<rustls::ClientConfig, QuicError> {
    let provider = Arc::new(crypto_provider());
    let verifier = Arc::new(PinnedVerifier::new(pin, Arc::clone(&provider)));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A client configuration for `alpn`, pinning `pin` (or trusting any certificate), with the
/// [`client_transport_config`].
pub fn client_config(alpn: &[u8], pin: Option<&str>) -> Result<quinn::ClientConfig, QuicError> {
    let mut tls = pinned_tls(pin)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(client_transport_config()));
    Ok(config)
}

/// Resolves `host:port`.
pub async fn resolve(address: &str) -> Result<SocketAddr, QuicError> {
    tokio::net::lookup_host(address)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| QuicError::Resolve(address.to_owned()))
}

/// How long [`connect`] waits for the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to a relay at `address` presenting `server_name`, with a fresh endpoint.
pub async fn connect(
    address: &str,
    server_name: &str,
    alpn: &[u8],
    pin: Option<&str>,
) -> Result<(quinn::Endpoint, quinn::Connection), QuicError> {
    let addr = resolve(address).await?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| QuicError::Config("bind address".into()))?;
    let config_error = |e: std::io::Error| QuicError::Config(e.to_string());
    let runtime = quinn::default_runtime()
        .ok_or_else(|| QuicError::Config("no async runtime for QUIC".into()))?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        client_socket(bind).map_err(config_error)?,
        runtime,
    )
    .map_err(config_error)?;
    endpoint.set_default_client_config(client_config(alpn, pin)?);
    let fail = |reason: String| QuicError::Connect {
        addr: address.to_owned(),
        reason,
    };
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| fail(e.to_string()))?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    Ok((endpoint, conn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_does_not_resolve() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(resolve("no port here")),
            Err(QuicError::Resolve(_))
        ));
    }

    #[test]
    fn client_configs_build_with_and_without_a_pin() {
        assert!(client_config(b"m87", Some("AB:CD")).is_ok());
        let tls = pinned_tls(None).unwrap();
        assert!(tls.alpn_protocols.is_empty());
    }

    /// A QUIC server on loopback with a fresh self-signed certificate; answers its address and
    /// the certificate's fingerprint.
    fn relay_like_server(alpn: &[u8]) -> (quinn::Endpoint, SocketAddr, crate::tls::Fingerprint) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = certified.cert.der().clone();
        let fingerprint = crate::tls::Fingerprint::of(&der);
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .unwrap();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        (endpoint, addr, fingerprint)
    }

    #[tokio::test]
    async fn a_relay_is_reached_only_with_the_certificate_it_was_granted_with() {
        let (server, addr, fingerprint) = relay_like_server(b"m87-test");
        let accept = tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });
        let address = addr.to_string();
        // The grant's pin altered: refused, naming the pinned and the presented fingerprints.
        let altered = crate::tls::Fingerprint::of(b"another relay");
        let Err(QuicError::Connect { reason, .. }) =
            connect(&address, "localhost", b"m87-test", Some(&altered.hex())).await
        else {
            panic!("a relay with another certificate was accepted");
        };
        assert!(
            reason.contains(&altered.to_string()) && reason.contains(&fingerprint.to_string()),
            "{reason}"
        );
        // The right pin, in either form: connected.
        for pin in [fingerprint.hex(), fingerprint.to_string()] {
            let (endpoint, conn) = connect(&address, "localhost", b"m87-test", Some(&pin))
                .await
                .unwrap();
            conn.close(quinn::VarInt::from_u32(0), b"");
            endpoint.wait_idle().await;
        }
        accept.abort();
    }

    #[test]
    fn a_socket_is_tuned_where_the_kernel_allows() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (recv, send) = tune_socket(&socket);
        // The kernel may cap (or, on Linux, double) the request; it grants something.
        assert!(recv.is_some_and(|n| n > 0));
        assert!(send.is_some_and(|n| n > 0));
    }
}
