//! The device's SSH host key: ed25519, generated on first use as `ssh_host_ed25519_key` in the
//! runtime's config directory (`M87_CONFIG_DIR`, else `~/.config/m87`), mode 0600, and reused
//! from then on so clients can pin it.

use std::path::PathBuf;
use std::sync::Mutex;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};

/// The key file's name in the config directory.
pub const FILE_NAME: &str = "ssh_host_ed25519_key";

/// Serializes first-time creation between concurrent channels.
static CREATING: Mutex<()> = Mutex::new(());

/// Where the host key lives.
pub fn path() -> Result<PathBuf, String> {
    m87_transport::credentials::config_dir()
        .map(|d| d.join(FILE_NAME))
        .map_err(|e| format!("no place for the SSH host key: {e}"))
}

/// Loads the host key, creating it the first time.
pub fn load_or_create() -> Result<PrivateKey, String> {
    let path = path()?;
    let _guard = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    match std::fs::read_to_string(&path) {
        Ok(text) => PrivateKey::from_openssh(text.as_bytes()).map_err(|e| {
            format!(
                "the SSH host key {} cannot be read ({e}); remove it and a new one is made",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path),
        Err(e) => Err(format!(
            "cannot read the SSH host key {}: {e}",
            path.display()
        )),
    }
}

fn create(path: &std::path::Path) -> Result<PrivateKey, String> {
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment("m87 device host key");
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format!("cannot encode the SSH host key: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    m87_transport::private_file::write_private_file(path, text.as_bytes())
        .map_err(|e| format!("cannot write the SSH host key {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "created the SSH host key");
    Ok(key)
}

/// The public half as an OpenSSH line without comment (`ssh-ed25519 AAAA…`).
pub fn public_line(key: &PrivateKey) -> String {
    let public: PublicKey = key.public_key().clone();
    let mut public = public;
    public.set_comment("");
    public.to_openssh().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_private_reused_and_its_public_line_is_openssh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let first = create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again =
            PrivateKey::from_openssh(std::fs::read_to_string(&path).unwrap().as_bytes()).unwrap();
        assert_eq!(public_line(&first), public_line(&again));
        assert!(public_line(&first).starts_with("ssh-ed25519 AAAA"));
    }
}
