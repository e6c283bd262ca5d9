//! QUIC and TLS configuration of a relay: TLS 1.3 only, ALPN per connection kind, transport
//! limits, and the relay's certificate (self-signed and kept on disk unless given).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use m87_events::tunnel::MAX_STREAMS_PER_CONNECTION;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The relay's certificate chain and key.
#[derive(Debug)]
pub struct RelayIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl RelayIdentity {
    /// SHA-256 of the leaf certificate as `AB:CD:…` (what clients pin).
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|c| fingerprint(c))
            .unwrap_or_default()
    }

    /// Loads PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading {}", key.display()))?;
        Ok(Self { chain, key })
    }

    /// The self-signed identity kept in `dir` (`relay-cert.pem`, `relay-key.pem`), created on
    /// first use for the given names.
    pub fn load_or_create(dir: &Path, names: &[String]) -> anyhow::Result<Self> {
        let cert = dir.join("relay-cert.pem");
        let key = dir.join("relay-key.pem");
        if !cert.exists() || !key.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let certified = rcgen::generate_simple_self_signed(names.to_vec())
                .context("generating the relay certificate")?;
            write_private(&key, certified.signing_key.serialize_pem().as_bytes())?;
            std::fs::write(&cert, certified.cert.pem())
                .with_context(|| format!("writing {}", cert.display()))?;
        }
        Self::from_pem_files(&cert, &key)
    }

    /// A fresh in-memory identity (tests).
    pub fn ephemeral() -> anyhow::Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        Ok(Self {
            chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        })
    }
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// SHA-256 of a DER certificate as `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Transport settings shared by relays, devices and clients: 16 MiB per stream for throughput,
/// no connection-wide receive limit (a limit there lets a few streams whose reader stalls
/// block every other stream and session on the connection — measured in
/// `loadtest/reports/`), bounded streams, keep-alive well inside the idle timeout, and the
/// peer asked to acknowledge every [`ACK_ELICITING_THRESHOLD`] packets.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(acks));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .stream_receive_window(quinn::VarInt::from_u32(16 << 20))
        .receive_window(quinn::VarInt::MAX)
        .send_window(64 << 20)
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .datagram_receive_buffer_size(Some(4 << 20))
        .datagram_send_buffer_size(4 << 20);
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// How many ack-eliciting packets a peer may receive before it must acknowledge (QUIC's ACK
/// frequency extension; without it, every second packet). A bulk transfer then sends a fifth of
/// the acknowledgements, each of which costs both ends a packet to seal, send, receive and open.
/// Losses still get an immediate acknowledgement (out-of-order arrival triggers one).
pub const ACK_ELICITING_THRESHOLD: u32 = 10;

/// The UDP socket buffer size asked for, each way. The kernel caps it at `net.core.rmem_max` /
/// `net.core.wmem_max`. At Linux's default of about 208 KiB, a relay or device that is off the
/// CPU for a moment overflows its receive buffer, and each drop makes the sender cut its
/// congestion window (seen in `loadtest/`: about 2,000 drops in 8 s of a forward at 2 Gbit/s).
pub const SOCKET_BUFFER: usize = 4 << 20;

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

/// The TLS cryptography of every m87 QUIC connection: *ring*, with AES-128-GCM preferred over
/// AES-256-GCM (both TLS 1.3 suites; AES-128 does 10 rounds per block instead of 14, and every
/// byte through a relay is sealed and opened twice).
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
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

/// The relay's QUIC server configuration for `alpns`.
pub fn server_config(
    identity: &RelayIdentity,
    alpns: &[&[u8]],
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(crypto_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("configuring TLS 1.3")?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("relay certificate and key do not match")?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    tls.max_early_data_size = 0;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS configuration")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config()));
    Ok(server)
}
