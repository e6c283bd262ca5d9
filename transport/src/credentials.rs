//! The credentials file, `$M87_CONFIG_DIR/credentials.json` (default `~/.config/m87`), shared by
//! the device runtime (its device key) and the CLI (the user's API key, or the user's OpenID
//! Connect tokens), each in its own section: `device`, `user`, `oauth`; and `servers`, the
//! certificate pinned for each server URL (`m87 login --fingerprint`, `m87 runtime run
//! --fingerprint`), kept across logouts as SSH keeps `known_hosts`.
//!
//! The directory is made 0700 and the file 0600; every write replaces the file atomically
//! (temporary file, fsync, rename), so a crash never leaves a torn file. Sections this build does
//! not know are kept as they are.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use m87_events::DeviceId;
use serde::{Deserialize, Serialize};

use crate::private_file::write_private_file;
use crate::tls::Fingerprint;

/// Why the credentials file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// No home directory and no `M87_CONFIG_DIR`.
    #[error("cannot find a configuration directory: set M87_CONFIG_DIR or HOME")]
    NoConfigDir,
    /// Reading or writing failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("{path} is not a valid m87 credentials file: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
}

/// The configuration directory: `$M87_CONFIG_DIR`, else `$HOME/.config/m87`.
pub fn config_dir() -> Result<PathBuf, CredentialsError> {
    if let Some(dir) = std::env::var_os("M87_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".config").join("m87"))
        .ok_or(CredentialsError::NoConfigDir)
}

/// A device's own credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCredentials {
    /// The device.
    pub device_id: DeviceId,
    /// Its API key (`m87d_…`).
    pub api_key: String,
    /// The server that issued it.
    pub api_url: String,
    /// When it was received.
    pub issued_at: DateTime<Utc>,
}

/// A user's stored login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCredentials {
    /// The user's API key (`m87u_…`).
    pub api_key: String,
    /// The server it is for.
    pub api_url: String,
}

/// A user's OpenID Connect session, from `m87 login` (the OAuth 2.0 device authorization
/// grant): the tokens and everything needed to renew and revoke them without asking the server
/// or the provider again.
///
/// `Debug` does not show the tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthCredentials {
    /// The access token, sent as `Authorization: Bearer …`.
    pub access_token: String,
    /// The refresh token, if the provider gave one (scope `offline_access`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token expires, if the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// When the refresh token expires, if the provider said (most do not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_expires_at: Option<DateTime<Utc>>,
    /// The provider (OIDC issuer URL).
    pub issuer: String,
    /// The public client's id at the provider.
    pub client_id: String,
    /// The API audience (resource) the access token is for.
    pub audience: String,
    /// The provider's token endpoint (for refreshing).
    pub token_endpoint: String,
    /// The provider's revocation endpoint (RFC 7009), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// The m87 server these tokens are for.
    pub api_url: String,
    /// When the tokens were obtained (at login or the last refresh).
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_at", &self.expires_at)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("token_endpoint", &self.token_endpoint)
            .field("revocation_endpoint", &self.revocation_endpoint)
            .field("api_url", &self.api_url)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// What is known about one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerPin {
    /// Its certificate's fingerprint: only that certificate is accepted from it.
    pub fingerprint: Fingerprint,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    /// The device section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceCredentials>,
    /// The user section (an API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserCredentials>,
    /// The user's OpenID Connect session (tokens from `m87 login`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthCredentials>,
    /// Pinned certificates by server URL (without a trailing `/`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub servers: std::collections::BTreeMap<String, ServerPin>,
    /// Sections this build does not know, kept as they are.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Credentials {
    /// The fingerprint pinned for `api_url`, if any.
    pub fn pin_for(&self, api_url: &str) -> Option<Fingerprint> {
        self.servers
            .get(api_url.trim().trim_end_matches('/'))
            .map(|s| s.fingerprint)
    }

    /// Pins `fingerprint` for `api_url` (replacing an earlier pin).
    pub fn set_pin(&mut self, api_url: &str, fingerprint: Fingerprint) {
        self.servers.insert(
            api_url.trim().trim_end_matches('/').to_owned(),
            ServerPin { fingerprint },
        );
    }
}

/// Where the credentials live.
#[derive(Debug, Clone)]
pub struct CredentialsFile {
    dir: PathBuf,
}

impl CredentialsFile {
    /// The file in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file in [`config_dir`].
    pub fn default_location() -> Result<Self, CredentialsError> {
        Ok(Self::in_dir(config_dir()?))
    }

    /// The configuration directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join("credentials.json")
    }

    /// Reads the file; a missing file is empty credentials.
    pub fn load(&self) -> Result<Credentials, CredentialsError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CredentialsError::Invalid {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
            Err(source) => Err(CredentialsError::Io {
                action: "reading",
                path,
                source,
            }),
        }
    }

    /// Reads, changes and writes back the file. An empty result removes the file.
    pub fn update(
        &self,
        change: impl FnOnce(&mut Credentials),
    ) -> Result<Credentials, CredentialsError> {
        let mut creds = self.load()?;
        change(&mut creds);
        if creds == Credentials::default() {
            let path = self.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CredentialsError::Io {
                        action: "removing",
                        path,
                        source,
                    });
                }
            }
        } else {
            let json =
                serde_json::to_vec_pretty(&creds).map_err(|e| CredentialsError::Invalid {
                    path: self.path(),
                    reason: e.to_string(),
                })?;
            write_private(&self.dir, &self.path(), &json)?;
        }
        Ok(creds)
    }
}

/// Makes `dir` (0700) and writes `contents` to `path` (0600) atomically (see
/// [`crate::private_file`]).
pub fn write_private(dir: &Path, path: &Path, contents: &[u8]) -> Result<(), CredentialsError> {
    let io = |action, source| CredentialsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("restricting the directory of", e))?;
    write_private_file(path, contents).map_err(|e| io("writing", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_kept_apart_and_modes_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::in_dir(dir.path().join("m87"));
        assert_eq!(file.load().unwrap(), Credentials::default());
        file.update(|c| {
            c.user = Some(UserCredentials {
                api_key: "m87u_x".into(),
                api_url: "https://h".into(),
            })
        })
        .unwrap();
        file.update(|c| {
            c.device = Some(DeviceCredentials {
                device_id: "dev-00000001".parse().unwrap(),
                api_key: "m87d_y".into(),
                api_url: "https://h".into(),
                issued_at: Utc::now(),
            })
        })
        .unwrap();
        let loaded = file.load().unwrap();
        assert_eq!(loaded.user.unwrap().api_key, "m87u_x");
        assert_eq!(loaded.device.unwrap().api_key, "m87d_y");
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(file.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        file.update(|c| c.user = None).unwrap();
        assert!(file.load().unwrap().user.is_none());
        file.update(|c| c.device = None).unwrap();
        assert!(!file.path().exists(), "an empty file is removed");
    }

    #[test]
    fn unknown_sections_survive_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::in_dir(dir.path());
        std::fs::write(file.path(), r#"{"future": {"refresh": "r"}}"#).unwrap();
        file.update(|c| {
            c.user = Some(UserCredentials {
                api_key: "k".into(),
                api_url: "u".into(),
            })
        })
        .unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.contains("refresh"));
        std::fs::write(file.path(), "not json").unwrap();
        assert!(matches!(file.load(), Err(CredentialsError::Invalid { .. })));
    }

    #[test]
    fn pins_are_kept_per_server_next_to_unknown_sections() {
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::in_dir(dir.path());
        std::fs::write(file.path(), r#"{"future": {"x": 1}}"#).unwrap();
        let (a, b) = (Fingerprint::of(b"a"), Fingerprint::of(b"b"));
        file.update(|c| {
            c.set_pin("https://one:8085/", a);
            c.set_pin("https://two:8085", b);
        })
        .unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            text.contains(&a.to_string()) && text.contains("future"),
            "{text}"
        );
        let loaded = file.load().unwrap();
        assert_eq!(loaded.pin_for("https://one:8085"), Some(a));
        assert_eq!(loaded.pin_for("https://two:8085/"), Some(b));
        assert_eq!(loaded.pin_for("https://three:8085"), None);
        assert_eq!(loaded.other["future"]["x"], 1);
        file.update(|c| c.set_pin("https://one:8085", b)).unwrap();
        assert_eq!(file.load().unwrap().pin_for("https://one:8085"), Some(b));
    }

    fn oauth_section() -> OAuthCredentials {
        OAuthCredentials {
            access_token: "at-secret".into(),
            refresh_token: Some("rt-secret".into()),
            expires_at: Some(Utc::now()),
            refresh_expires_at: None,
            issuer: "https://idp.example".into(),
            client_id: "m87-cli".into(),
            audience: "https://m87.example/api".into(),
            token_endpoint: "https://idp.example/token".into(),
            revocation_endpoint: Some("https://idp.example/token/revocation".into()),
            api_url: "https://m87.example".into(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn the_oauth_section_round_trips_next_to_the_others_and_unknown_sections() {
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::in_dir(dir.path().join("m87"));
        std::fs::create_dir_all(file.dir()).unwrap();
        std::fs::write(
            file.path(),
            r#"{"user": {"api_key": "m87u_x", "api_url": "https://h"}, "future": {"x": 1}}"#,
        )
        .unwrap();
        let section = oauth_section();
        file.update(|c| c.oauth = Some(section.clone())).unwrap();
        let loaded = file.load().unwrap();
        assert_eq!(loaded.oauth.as_ref(), Some(&section));
        assert_eq!(loaded.user.unwrap().api_key, "m87u_x");
        assert_eq!(loaded.other["future"]["x"], 1);
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // Optional fields may be absent (older or newer writers).
        let text = std::fs::read_to_string(file.path()).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let oauth = json["oauth"].as_object_mut().unwrap();
        for k in ["refresh_token", "expires_at", "revocation_endpoint"] {
            oauth.remove(k);
        }
        std::fs::write(file.path(), json.to_string()).unwrap();
        let loaded = file.load().unwrap().oauth.unwrap();
        assert_eq!(loaded.refresh_token, None);
        assert_eq!(loaded.expires_at, None);

        file.update(|c| c.oauth = None).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            !text.contains("oauth") && !text.contains("secret"),
            "{text}"
        );
        assert!(text.contains("future"));
    }

    #[test]
    fn debug_never_shows_tokens() {
        let shown = format!("{:?}", oauth_section());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("idp.example"));
    }
}
