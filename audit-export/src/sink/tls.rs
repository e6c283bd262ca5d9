//! rustls client settings (ring provider only) for the TLS syslog and the HTTPS sinks.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::SinkError;
use crate::config::ClientIdentity;

/// A client configuration that trusts `ca_certs` (or the public web roots when `None`) and
/// presents `identity` when given.
pub fn client_config(
    ca_certs: Option<&[CertificateDer<'static>]>,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, SinkError> {
    let mut roots = RootCertStore::empty();
    match ca_certs {
        Some(certs) => {
            for c in certs {
                roots.add(c.clone()).map_err(|e| {
                    SinkError::Setup(format!("the CA certificate is not usable: {e}"))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| SinkError::Setup(format!("TLS settings: {e}")))?
            .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .map_err(|e| {
                SinkError::Setup(format!("the client certificate and key do not fit: {e}"))
            }),
    }
}
