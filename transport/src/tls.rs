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

/// Why a fingerprint did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a SHA-256 certificate fingerprint: expected SHA256: and 32 bytes in hex \
     (AB:CD:… as the server prints it, colons optional)"
)]
pub struct FingerprintError(String);

/// A certificate's SHA-256, as pinned by clients. Written `SHA256:AB:CD:…` (what the server
/// prints at start and writes to `<data-dir>/tls/fingerprint`); parsed from that form, with or
/// without the `SHA256:` prefix and the colons, in any case.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The bare colon-separated hex (`AB:CD:…`), as [`fingerprint`] gives and relays are
    /// pinned by.
    pub fn hex(&self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SHA256:{}", self.hex())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FingerprintError(s.to_owned());
        let t = s.trim();
        let t = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let digits: String = t.chars().filter(|c| *c != ':').collect();
        if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
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
    /// A verifier for `pin` (a [`fingerprint`] or a [`Fingerprint`] in its `SHA256:` form,
    /// compared without regard to case or colons).
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
            Some(pin) => {
                let presented = Fingerprint::of(end_entity);
                match pin.parse::<Fingerprint>() {
                    Ok(pinned) if pinned == presented => Ok(ServerCertVerified::assertion()),
                    Ok(pinned) => Err(rustls::Error::General(format!(
                        "the server's certificate does not match the pinned fingerprint: \
                         pinned {pinned}, the server presented {presented}"
                    ))),
                    Err(_) => Err(rustls::Error::General(format!(
                        "the pinned fingerprint {pin:?} is not a SHA-256 fingerprint; the \
                         server presented {presented}"
                    ))),
                }
            }
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
    fn fingerprints_parse_in_the_printed_form_and_without_prefix_or_colons() {
        let fp = Fingerprint::of(b"abc");
        let printed = fp.to_string();
        assert!(printed.starts_with("SHA256:BA:78:16:BF"), "{printed}");
        assert_eq!(printed.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(fp.hex(), fingerprint(b"abc"));
        assert_eq!(fp.hex().parse::<Fingerprint>(), Ok(fp));
        let bare = fp.hex().replace(':', "").to_ascii_lowercase();
        assert_eq!(format!("sha256:{bare}").parse::<Fingerprint>(), Ok(fp));
        for bad in [
            "",
            "SHA256:",
            "SHA256:AB:CD",
            "MD5:00",
            &format!("{printed}00"),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&fp).unwrap();
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), fp);
    }

    #[test]
    fn a_wrong_pin_is_refused_naming_both_fingerprints() {
        let provider = Arc::new(crypto_provider());
        let wanted = Fingerprint::of(b"the pinned certificate");
        let pinned = PinnedVerifier::new(Some(&wanted.hex()), provider);
        let Err(rustls::Error::General(message)) = check(&pinned, b"an impostor") else {
            panic!("an impostor was accepted");
        };
        assert!(message.contains(&wanted.to_string()), "{message}");
        assert!(
            message.contains(&Fingerprint::of(b"an impostor").to_string()),
            "{message}"
        );
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
