//! QUIC client configuration shared by the device tunnel and the CLI: TLS 1.3, ALPN, and a
//! server certificate check by SHA-256 pin (the control plane tells which certificate each
//! relay has), or no check at all with `M87_TRUST_INVALID_CERT` (development only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// SHA-256 of a DER certificate as `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts exactly the certificate with the pinned fingerprint (or any, when `pin` is None).
#[derive(Debug)]
struct PinnedVerifier {
    pin: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) if pin.eq_ignore_ascii_case(&fingerprint(end_entity)) => {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => Err(rustls::Error::General(
                "the server's certificate does not match its pinned fingerprint".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

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

/// Transport settings for client connections: 16 MiB per stream, no connection-wide receive
/// limit (so stalled streams cannot block the others), a keep-alive every 2 s and a 6 s idle
/// timeout: a relay that vanished without closing (killed, or its host lost) is noticed within
/// 6 s, so a device is back through another relay well inside 10 s.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // As the relay asks (see `m87_relay_node::endpoint`): acknowledge every 10 packets.
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(10));
    t.ack_frequency_config(Some(acks));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(
        m87_events::tunnel::MAX_STREAMS_PER_CONNECTION,
    ))
    .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
    .stream_receive_window(quinn::VarInt::from_u32(16 << 20))
    .receive_window(quinn::VarInt::MAX)
    .send_window(64 << 20)
    .keep_alive_interval(Some(Duration::from_secs(2)))
    .datagram_receive_buffer_size(Some(4 << 20))
    .datagram_send_buffer_size(4 << 20);
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// How long a connection may stay silent before it counts as lost (keep-alives go every 2 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(6);

/// *ring*, with AES-128-GCM preferred over AES-256-GCM, as on the relay (10 AES rounds per
/// block instead of 14; the relay seals and opens every byte twice).
fn crypto_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            _ => 2,
        });
    provider
}

/// The UDP socket buffer size asked for, each way (the kernel caps it at `net.core.rmem_max` /
/// `wmem_max`): with Linux's default of about 208 KiB, a busy device or client drops packets
/// whenever it is off the CPU for a moment, and each drop cuts the sender's congestion window.
const SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket for a client endpoint, bound to `bind`, with [`SOCKET_BUFFER`]-sized buffers
/// where the kernel allows.
fn client_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(bind)?;
    if let Ok(state) = quinn::udp::UdpSocketState::new((&socket).into()) {
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    }
    Ok(socket)
}

/// A TLS 1.3 client configuration that accepts exactly the certificate whose SHA-256 is `pin`
/// (or any certificate, with `None`), without ALPN.
pub fn pinned_tls(pin: Option<&str>) -> Result<rustls::ClientConfig, QuicError> {
    let provider = Arc::new(crypto_provider());
    let verifier = Arc::new(PinnedVerifier {
        pin: pin.map(str::to_owned),
        provider: Arc::clone(&provider),
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A client configuration for `alpn`, pinning `pin` (or trusting any certificate).
pub fn client_config(alpn: &[u8], pin: Option<&str>) -> Result<quinn::ClientConfig, QuicError> {
    let mut tls = pinned_tls(pin)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
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
    let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    Ok((endpoint, conn))
}
