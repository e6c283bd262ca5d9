//! TLS for the REST API: the operator's certificate, or a self-signed one kept in the data
//! directory across restarts, its fingerprint written to [`FINGERPRINT_FILE`] at every start;
//! and the HTTPS listener with its limits.
//!
//! # Layout
//!
//! - here: the certificate and key ([`load_or_create`]).
//! - `serve.rs`: [`serve_https`], the accept loop every HTTPS listener of the control plane
//!   uses: connection caps, TLS handshake, HTTP/1 and HTTP/2, idle connections closed.
//! - `limits.rs`: [`HttpLimits`], every timeout and cap of the listener with its default; the
//!   connection caps (global and per source address).
//! - `body.rs`: the request body deadline ([`BodyTimedOut`], answered 408) and the count of
//!   requests in progress that tells an idle connection.

mod body;
mod limits;
mod serve;

pub use body::BodyTimedOut;
pub use limits::{Cap, HttpLimits};
pub use serve::serve_https;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server's TLS configuration and what to tell people about it.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The rustls server configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate, as colon-separated hex.
    pub fingerprint: String,
    /// Where the certificate is.
    pub cert_path: PathBuf,
    /// Whether m87 made it itself.
    pub self_signed: bool,
    /// curl's `--pinnedpubkey` value for the key (`sha256//` + base64 SHA-256 of its
    /// SubjectPublicKeyInfo), also written to [`PUBKEY_PIN_FILE`]: what `install.sh` users of
    /// a self-signed server pin.
    pub tls_pin: Option<String>,
}

/// Where, in the data directory, the key pin for curl is written at every start
/// (`sha256//…` and a newline): `curl --pinnedpubkey "$(cat …)" -k https://SERVER/install.sh`.
pub const PUBKEY_PIN_FILE: &str = "tls/pubkey-pin";

/// curl's `--pinnedpubkey` value for `key`, written to [`PUBKEY_PIN_FILE`].
fn write_pubkey_pin(
    data_dir: &Path,
    provider: &rustls::crypto::CryptoProvider,
    key: &PrivateKeyDer<'static>,
) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .ok()?;
    let spki = signing.public_key()?;
    let pin = format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki.as_ref()))
    );
    if let Err(e) = std::fs::write(data_dir.join(PUBKEY_PIN_FILE), format!("{pin}\n")) {
        tracing::warn!(error = %e, "could not write {PUBKEY_PIN_FILE}");
    }
    Some(pin)
}

/// The certificate fingerprint and private file writes, shared with the rest of m87.
use m87_transport::private_file::write_private_file;
use m87_transport::tls::fingerprint;

/// Where, in the data directory, the API certificate's fingerprint is written at every start,
/// as clients pin it (`SHA256:AB:CD:…` and a newline): `m87 login --fingerprint "$(cat …)"`.
pub const FINGERPRINT_FILE: &str = "tls/fingerprint";

fn write_fingerprint_file(data_dir: &Path, leaf: &[u8]) -> anyhow::Result<()> {
    let path = data_dir.join(FINGERPRINT_FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let printable = m87_transport::tls::Fingerprint::of(leaf);
    std::fs::write(&path, format!("{printable}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Loads the operator's certificate and key, or the self-signed pair in `data_dir/tls`
/// (creating it on first start); writes the certificate's fingerprint to
/// [`FINGERPRINT_FILE`].
pub fn load_or_create(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<TlsMaterial> {
    let (cert_path, key_path, self_signed) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
        (None, None) => {
            let dir = data_dir.join("tls");
            let cert_path = dir.join("cert.pem");
            let key_path = dir.join("key.pem");
            if !cert_path.exists() || !key_path.exists() {
                create_self_signed(&dir, &cert_path, &key_path)?;
            }
            (cert_path, key_path, true)
        }
        _ => bail!("--tls-cert and --tls-key must be given together"),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert_path.display()))?;
    let Some(leaf) = chain.first() else {
        bail!("no certificate found in {}", cert_path.display());
    };
    let fingerprint = fingerprint(leaf);
    write_fingerprint_file(data_dir, leaf)?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading private key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_pin = write_pubkey_pin(data_dir, &provider, &key);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        config: Arc::new(config),
        fingerprint,
        cert_path,
        self_signed,
        tls_pin,
    })
}

fn create_self_signed(dir: &Path, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_owned());
        }
    }
    let certified =
        rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
    write_private_file(key_path, certified.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", key_path.display()))?;
    std::fs::write(cert_path, certified.cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(())
}
