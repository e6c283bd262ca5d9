//! Which key a release manifest must be signed with.
//!
//! - A device (`m87 runtime update`): the key its control plane gives it in
//!   `GET /v1/device/tunnel` with the device's own credentials — the key that signs every
//!   session token the device accepts.
//! - The CLI (`m87 update`): `M87_RELEASE_KEY` when set; else the key remembered for that server
//!   in `<config dir>/release-keys.json`; else, the first time, the key the server names, which
//!   is then remembered (trust on first use, like SSH host keys) so a later manifest signed by
//!   another key is refused.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use m87_events::api::DeviceTunnelConfig;
use m87_events::release::SignedManifest;
use m87_events::token::SessionVerifier;
use m87_transport::http::ApiClient;

/// The file of remembered release keys in the configuration directory.
pub const RELEASE_KEYS_FILE: &str = "release-keys.json";

/// The device's verifier: the session public key of its control plane.
pub async fn device_key(device_client: &ApiClient) -> anyhow::Result<SessionVerifier> {
    let config: DeviceTunnelConfig = device_client
        .get("/v1/device/tunnel")
        .await
        .context("asking the control plane for its signing key (GET /v1/device/tunnel)")?;
    SessionVerifier::from_public_key(&config.session_public_key)
        .context("the control plane's signing key is not a valid Ed25519 key")
}

/// The CLI's verifier for `api_url` (see the module documentation); a newly seen key is
/// remembered in `config_dir`.
pub fn cli_key(
    config_dir: &Path,
    api_url: &str,
    signed: &SignedManifest,
) -> anyhow::Result<SessionVerifier> {
    if let Ok(key) = std::env::var("M87_RELEASE_KEY")
        && !key.trim().is_empty()
    {
        return SessionVerifier::from_public_key(&key)
            .context("M87_RELEASE_KEY is not a base64url Ed25519 public key");
    }
    let path = config_dir.join(RELEASE_KEYS_FILE);
    let mut known: BTreeMap<String, String> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let url = api_url.trim().trim_end_matches('/').to_owned();
    match known.get(&url) {
        Some(key) if *key == signed.public_key => {}
        Some(key) => bail!(
            "{url} signs its releases with another key ({}) than the one remembered in {} \
             ({key}); refusing the update. If the server's signing key was replaced on purpose, \
             remove its line from that file",
            signed.public_key,
            path.display()
        ),
        None => {
            eprintln!(
                "remembering {url}'s release signing key {} in {}",
                signed.public_key,
                path.display()
            );
            known.insert(url, signed.public_key.clone());
            let json = serde_json::to_vec_pretty(&known)?;
            m87_transport::credentials::write_private(config_dir, &path, &json)?;
        }
    }
    SessionVerifier::from_public_key(&signed.public_key)
        .context("the server's release key is not a valid Ed25519 key")
}
