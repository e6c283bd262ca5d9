//! QUIC and TLS configuration of a relay: TLS 1.3 only, ALPN per connection kind, and the
//! relay's certificate (self-signed and kept on disk unless given). The transport settings,
//! socket tuning, crypto provider and fingerprint come from `m87_transport`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use m87_transport::private_file::write_private_file;
use m87_transport::quic::server_transport_config;
use m87_transport::tls::{crypto_provider, fingerprint};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
            write_private_file(&key, certified.signing_key.serialize_pem().as_bytes())
                .with_context(|| format!("writing {}", key.display()))?;
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
    server.transport_config(Arc::new(server_transport_config()));
    Ok(server)
}
