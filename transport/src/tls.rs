//! TLS pieces shared by every m87 QUIC and HTTPS endpoint: the certificate fingerprint clients
//! pin, the verifier that accepts exactly the pinned certificate, and the *ring* crypto provider.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// SHA-256 of a DER certificate as `AB:CD:…` (what clients pin, and what servers print).
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Makes *ring* the process-wide default rustls provider, unless one is installed already.
/// Several crates could pick a provider; m87 uses ring everywhere.
pub fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS cryptography of every m87 QUIC connection: *ring*, with AES-128-GCM preferred over
/// AES-256-GCM (both TLS 1.3 suites; AES-128 does 10 rounds per block instead of 14, and every
/// byte through a relay is sealed and opened twice).
pub fn crypto_provider() -> CryptoProvider {
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

/// Accepts exactly the server certificate with the pinned fingerprint (or any, when the pin is
/// `None`: development only, `M87_TRUST_INVALID_CERT`). Handshake signatures are still checked
/// with the provider's algorithms.
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    /// A verifier for `pin` (a [`fingerprint`], compared without regard to case).
    pub fn new(pin: Option<&str>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            pin: pin.map(str::to_owned),
            provider,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(verifier: &PinnedVerifier, der: &[u8]) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from("localhost").unwrap();
        verifier.verify_server_cert(
            &CertificateDer::from(der.to_vec()),
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn fingerprint_is_uppercase_colon_separated_sha256() {
        let fp = fingerprint(b"abc");
        assert_eq!(
            fp,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn the_verifier_accepts_the_pinned_certificate_in_any_case_and_refuses_others() {
        let provider = Arc::new(crypto_provider());
        let cert = b"the relay's certificate";
        let pin = fingerprint(cert).to_ascii_lowercase();
        let pinned = PinnedVerifier::new(Some(&pin), Arc::clone(&provider));
        assert!(check(&pinned, cert).is_ok());
        assert!(matches!(
            check(&pinned, b"another certificate"),
            Err(rustls::Error::General(_))
        ));
        let open = PinnedVerifier::new(None, provider);
        assert!(check(&open, b"another certificate").is_ok());
    }

    #[test]
    fn aes_128_comes_first() {
        let provider = crypto_provider();
        assert_eq!(
            provider.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }
}
