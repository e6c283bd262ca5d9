//! Profiles: several servers or accounts side by side, each with its own credentials file.
//!
//! - `default` is `<config>/credentials.json`, the file that existed before profiles, so
//!   nothing changes for someone who never adds one.
//! - Every other profile `NAME` lives in `<config>/profiles/NAME/`: `profile.json` (its server)
//!   and its own `credentials.json` (API key, OpenID Connect session, certificate pins).
//! - The profile in use is `--profile NAME`, else `M87_PROFILE`, else the one `m87 profile use`
//!   stored in `<config>/current-profile`, else `default`.
//! - The device runtime's credentials (`m87 runtime …`) are not per profile: they are always
//!   `<config>/credentials.json` (see [`runtime_credentials_file`]).
//!
//! `<config>` is `M87_CONFIG_DIR`, else `~/.config/m87`.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, bail};
use m87_transport::credentials::{CredentialsFile, config_dir, write_private};
use serde::{Deserialize, Serialize};

/// The profile that always exists: `<config>/credentials.json`.
pub const DEFAULT_PROFILE: &str = "default";

/// A profile's name: 1–63 lowercase letters, digits, `-` and `_`, starting with a letter or a
/// digit (it is a directory name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProfileName(String);

impl std::str::FromStr for ProfileName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok_first = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let ok_rest = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok_first && ok_rest && s.len() <= 63 {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "invalid profile name {s:?}: use 1-63 lowercase letters, digits, '-' and '_', \
                 starting with a letter or digit"
            ))
        }
    }
}

impl std::fmt::Display for ProfileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ProfileName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the `default` profile.
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_PROFILE
    }

    fn default_profile() -> Self {
        Self(DEFAULT_PROFILE.to_owned())
    }
}

/// What `profile.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProfileConfig {
    /// The server this profile talks to (until a login stores another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

/// Where the choice of profile came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--profile`.
    Flag,
    /// `M87_PROFILE`.
    Env,
    /// `m87 profile use` (`<config>/current-profile`).
    Stored,
    /// Nothing chose one.
    Default,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Self::Flag => "--profile",
            Self::Env => "M87_PROFILE",
            Self::Stored => "`m87 profile use`",
            Self::Default => "the default",
        }
    }
}

/// A profile that exists.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Its name.
    pub name: ProfileName,
    /// Its settings (empty for `default`).
    pub config: ProfileConfig,
}

impl Profile {
    /// Its credentials file.
    pub fn credentials_file(&self) -> anyhow::Result<CredentialsFile> {
        Ok(CredentialsFile::in_dir(profile_dir(&self.name)?))
    }
}

/// `--profile`, as parsed (before the command, or after a device's operation).
static FLAG: Mutex<Option<ProfileName>> = Mutex::new(None);

/// Records the `--profile` given on the command line, before the command runs; `None` keeps
/// an earlier choice (a `--profile` before the device name stays when none follows it).
pub fn select(flag: Option<ProfileName>) {
    if let Some(name) = flag
        && let Ok(mut chosen) = FLAG.lock()
    {
        *chosen = Some(name);
    }
}

fn flag() -> Option<ProfileName> {
    FLAG.lock().ok().and_then(|f| f.clone())
}

/// `<config>/profiles/NAME`, or `<config>` for `default`.
pub fn profile_dir(name: &ProfileName) -> anyhow::Result<PathBuf> {
    let config = config_dir().context("locating the configuration directory")?;
    Ok(if name.is_default() {
        config
    } else {
        config.join("profiles").join(name.as_str())
    })
}

fn current_file() -> anyhow::Result<PathBuf> {
    Ok(config_dir()
        .context("locating the configuration directory")?
        .join("current-profile"))
}

/// The name `m87 profile use` stored, if any.
pub fn stored_choice() -> anyhow::Result<Option<String>> {
    let path = current_file()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Which profile is chosen and by what (without checking that it exists).
pub fn chosen() -> anyhow::Result<(ProfileName, Source)> {
    if let Some(name) = flag() {
        return Ok((name, Source::Flag));
    }
    if let Ok(env) = std::env::var("M87_PROFILE")
        && !env.trim().is_empty()
    {
        let name = env
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("M87_PROFILE: {e}"))?;
        return Ok((name, Source::Env));
    }
    match stored_choice()? {
        Some(stored) => {
            let name = stored.parse().map_err(|e| {
                anyhow::anyhow!("{}: {e}", current_file().unwrap_or_default().display())
            })?;
            Ok((name, Source::Stored))
        }
        None => Ok((ProfileName::default_profile(), Source::Default)),
    }
}

/// Loads profile `name`; `None` when it does not exist (`default` always does).
pub fn load(name: &ProfileName) -> anyhow::Result<Option<Profile>> {
    if name.is_default() {
        return Ok(Some(Profile {
            name: name.clone(),
            config: ProfileConfig::default(),
        }));
    }
    let path = profile_dir(name)?.join("profile.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let config = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid m87 profile", path.display()))?;
    Ok(Some(Profile {
        name: name.clone(),
        config,
    }))
}

/// The error for a profile that does not exist.
pub fn unknown(name: &ProfileName, source: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "no profile \"{name}\" (chosen by {source}): `m87 profile list` shows the profiles, \
         `m87 profile add {name} --api-url URL` creates it"
    )
}

/// The profile in use (see the module documentation); an error names a profile that does not
/// exist and how to create it.
pub fn active() -> anyhow::Result<Profile> {
    let (name, source) = chosen()?;
    load(&name)?.ok_or_else(|| unknown(&name, source.describe()))
}

/// The device runtime's credentials file: always `<config>/credentials.json`, whatever the
/// profile.
pub fn runtime_credentials_file() -> anyhow::Result<CredentialsFile> {
    CredentialsFile::default_location().context("locating the configuration directory")
}

/// Every profile, `default` first, then by name.
pub fn all() -> anyhow::Result<Vec<Profile>> {
    let mut names = vec![ProfileName::default_profile()];
    let root = config_dir()
        .context("locating the configuration directory")?
        .join("profiles");
    if let Ok(entries) = std::fs::read_dir(&root) {
        let mut others: Vec<ProfileName> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|n: &ProfileName| !n.is_default())
            .collect();
        others.sort();
        names.extend(others);
    }
    let mut profiles = Vec::new();
    for name in names {
        if let Some(p) = load(&name)? {
            profiles.push(p);
        }
    }
    Ok(profiles)
}

/// Creates profile `name` for `api_url` (refused when it exists).
pub fn create(name: &ProfileName, api_url: &str) -> anyhow::Result<Profile> {
    if name.is_default() {
        bail!("the default profile always exists; choose another name");
    }
    if load(name)?.is_some() {
        bail!("profile \"{name}\" exists: `m87 profile remove {name}` first to replace it");
    }
    let dir = profile_dir(name)?;
    let config = ProfileConfig {
        api_url: Some(api_url.to_owned()),
    };
    let json = serde_json::to_vec_pretty(&config)?;
    write_private(&dir, &dir.join("profile.json"), &json)?;
    Ok(Profile {
        name: name.clone(),
        config,
    })
}

/// Makes `name` the profile used when neither `--profile` nor `M87_PROFILE` says otherwise.
pub fn set_current(name: &ProfileName) -> anyhow::Result<()> {
    let path = current_file()?;
    if name.is_default() {
        match std::fs::remove_file(&path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    let dir = config_dir().context("locating the configuration directory")?;
    write_private(&dir, &path, format!("{name}\n").as_bytes())?;
    Ok(())
}

/// Deletes profile `name` and its credentials.
pub fn delete(name: &ProfileName) -> anyhow::Result<()> {
    let dir = profile_dir(name)?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["default", "prod", "eu-west_2", "7"] {
            assert!(good.parse::<ProfileName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "Prod",
            "../x",
            "a/b",
            "-x",
            "_x",
            ".",
            "a b",
            &"x".repeat(64),
        ] {
            let err = bad.parse::<ProfileName>().unwrap_err();
            assert!(err.contains("invalid profile name"), "{bad}: {err}");
        }
    }
}
