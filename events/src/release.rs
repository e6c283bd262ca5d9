//! The release manifest: which `m87` version the control plane serves, and per target the
//! file name, size and SHA-256 of the binary. `scripts/build-dist` writes it; the control plane
//! signs it with its Ed25519 session-signing key ([`SignedManifest::sign`]); `m87 update` and
//! `m87 runtime update` verify the signature ([`SignedManifest::verify`]) before trusting a
//! checksum; `install.sh` reads the checksum over the pinned TLS connection.
//!
//! The signature covers [`SIGNATURE_CONTEXT`] followed by the base64url payload, so it can
//! never be mistaken for a session token (whose signed part is base64url only) or the reverse.

use std::cmp::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::token::{SessionSigner, SessionVerifier};

/// What the signature covers before the payload: a domain separator with a newline, which
/// base64url text never contains.
pub const SIGNATURE_CONTEXT: &[u8] = b"m87 release manifest v1\n";

/// The largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// A release: its version and one binary per target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Manifest {
    /// The version of `m87` these binaries are (`0.1.0`).
    pub version: String,
    /// The binaries, one per target.
    pub artifacts: Vec<Artifact>,
}

/// One binary of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    /// The Rust target it runs on (`x86_64-unknown-linux-musl`).
    pub target: String,
    /// Its file name in the release directory (`m87-x86_64-unknown-linux-musl`).
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// Why a manifest or its signature is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    /// The manifest is not the expected JSON.
    #[error("the release manifest is not valid: {0}")]
    Invalid(String),
    /// The signature does not verify with the control plane's key.
    #[error(
        "the release manifest's signature does not verify with the control plane's key; \
         refusing it (it was changed on the way, or signed by another key)"
    )]
    BadSignature,
}

impl Manifest {
    /// Parses and checks a manifest: a version, and per artifact a safe file name, a target
    /// name and a 64-digit lowercase hex SHA-256.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReleaseError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ReleaseError::Invalid("larger than 64 KiB".into()));
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ReleaseError::Invalid(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), ReleaseError> {
        let bad = |what: String| Err(ReleaseError::Invalid(what));
        if self.version.is_empty() || !self.version.chars().all(is_name_char) {
            return bad(format!("version {:?}", self.version));
        }
        for a in &self.artifacts {
            if a.target.is_empty() || !a.target.chars().all(is_name_char) {
                return bad(format!("target {:?}", a.target));
            }
            if a.file.is_empty() || a.file.starts_with('.') || !a.file.chars().all(is_name_char) {
                return bad(format!("file name {:?}", a.file));
            }
            let hex_ok = a.sha256.len() == 64
                && a.sha256
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
            if !hex_ok {
                return bad(format!("sha256 {:?} of {}", a.sha256, a.target));
            }
        }
        Ok(())
    }

    /// The binary for `target`, if this release has one.
    pub fn artifact(&self, target: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.target == target)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+')
}

/// `GET /v1/releases`: the manifest, the exact bytes that were signed, the signature and the
/// key that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignedManifest {
    /// The manifest, for reading (scripts); clients that verify use `payload`.
    pub manifest: Manifest,
    /// The manifest's JSON, base64url: what the signature covers (after the context).
    pub payload: String,
    /// The Ed25519 signature of [`SIGNATURE_CONTEXT`] + `payload`, base64url.
    pub signature: String,
    /// The control plane's public key (base64url), the same that verifies session tokens.
    pub public_key: String,
}

impl SignedManifest {
    /// Signs `manifest` with the control plane's key.
    pub fn sign(signer: &SessionSigner, manifest: &Manifest) -> Self {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(manifest).unwrap_or_default());
        let signature = signer.sign_bytes(&signed_message(&payload));
        Self {
            manifest: manifest.clone(),
            payload,
            signature: URL_SAFE_NO_PAD.encode(signature),
            public_key: signer.public_key(),
        }
    }

    /// The manifest, after checking the signature with `verifier` (the key the client trusts,
    /// not the `public_key` field, which only says which key the server used).
    pub fn verify(&self, verifier: &SessionVerifier) -> Result<Manifest, ReleaseError> {
        let signature = URL_SAFE_NO_PAD
            .decode(self.signature.trim())
            .map_err(|_| ReleaseError::BadSignature)?;
        if !verifier.verify_bytes(&signed_message(&self.payload), &signature) {
            return Err(ReleaseError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(self.payload.trim())
            .map_err(|e| ReleaseError::Invalid(e.to_string()))?;
        Manifest::parse(&json)
    }
}

fn signed_message(payload: &str) -> Vec<u8> {
    let mut message = SIGNATURE_CONTEXT.to_vec();
    message.extend_from_slice(payload.as_bytes());
    message
}

/// The release target of this build (`x86_64-unknown-linux-musl`, `aarch64-unknown-linux-musl`),
/// or `None` where no binary is published.
pub fn current_target() -> Option<&'static str> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Some("x86_64-unknown-linux-musl"),
        ("linux", "aarch64") => Some("aarch64-unknown-linux-musl"),
        _ => None,
    }
}

/// Compares two versions by their dot-separated numeric parts (`0.10.0` > `0.9.3`); a part that
/// is not a number compares as text. A version with a pre-release suffix (`1.0.0-rc1`) sorts
/// before the release.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (a_core, a_pre) = a.split_once('-').unwrap_or((a, ""));
    let (b_core, b_pre) = b.split_once('-').unwrap_or((b, ""));
    let mut pa = a_core.split('.');
    let mut pb = b_core.split('.');
    loop {
        let ord = match (pa.next(), pb.next()) {
            (None, None) => break,
            (x, y) => {
                let (x, y) = (x.unwrap_or("0"), y.unwrap_or("0"));
                match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    match (a_pre.is_empty(), b_pre.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a_pre.cmp(b_pre),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            version: "0.2.0".into(),
            artifacts: vec![Artifact {
                target: "x86_64-unknown-linux-musl".into(),
                file: "m87-x86_64-unknown-linux-musl".into(),
                size: 3,
                sha256: "ab".repeat(32),
            }],
        }
    }

    #[test]
    fn a_signed_manifest_verifies_with_the_control_planes_key() {
        let (signer, _) = SessionSigner::generate().unwrap();
        let signed = SignedManifest::sign(&signer, &manifest());
        assert_eq!(signed.verify(&signer.verifier()).unwrap(), manifest());
        assert_eq!(signed.public_key, signer.public_key());
    }

    #[test]
    fn another_key_or_a_changed_payload_is_refused() {
        let (signer, _) = SessionSigner::generate().unwrap();
        let (other, _) = SessionSigner::generate().unwrap();
        let signed = SignedManifest::sign(&signer, &manifest());
        assert_eq!(
            signed.verify(&other.verifier()),
            Err(ReleaseError::BadSignature)
        );
        let mut changed = manifest();
        changed.artifacts[0].sha256 = "cd".repeat(32);
        let mut forged = signed.clone();
        forged.payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&changed).unwrap());
        assert_eq!(
            forged.verify(&signer.verifier()),
            Err(ReleaseError::BadSignature)
        );
    }

    #[test]
    fn a_manifest_signature_is_not_a_session_token() {
        let (signer, _) = SessionSigner::generate().unwrap();
        let signed = SignedManifest::sign(&signer, &manifest());
        let as_token = format!("{}.{}", signed.payload, signed.signature);
        assert!(signer.verifier().verify(&as_token, 0, None).is_err());
    }

    #[test]
    fn unsafe_file_names_and_bad_checksums_are_invalid() {
        let mut m = manifest();
        m.artifacts[0].file = "../etc/passwd".into();
        assert!(Manifest::parse(&serde_json::to_vec(&m).unwrap()).is_err());
        let mut m = manifest();
        m.artifacts[0].sha256 = "XY".repeat(32);
        assert!(Manifest::parse(&serde_json::to_vec(&m).unwrap()).is_err());
        assert!(Manifest::parse(&serde_json::to_vec(&manifest()).unwrap()).is_ok());
    }

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(compare_versions("0.10.0", "0.9.3"), Ordering::Greater);
        assert_eq!(compare_versions("0.1.0", "0.1.0"), Ordering::Equal);
        assert_eq!(compare_versions("0.1", "0.1.1"), Ordering::Less);
        assert_eq!(compare_versions("1.0.0-rc1", "1.0.0"), Ordering::Less);
    }
}
