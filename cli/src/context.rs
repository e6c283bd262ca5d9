//! Where the CLI finds its server and key: the environment first, then the credentials file.

use anyhow::{Context, bail};
use m87_agent::credentials::CredentialsFile;
use m87_agent::http::{ApiClient, api_url_from_env, trust_invalid_cert_from_env};

/// The server used when nothing else says which.
pub const DEFAULT_API_URL: &str = "https://127.0.0.1:8085";

/// The credentials file in the configuration directory.
pub fn credentials_file() -> anyhow::Result<CredentialsFile> {
    CredentialsFile::default_location().context("locating the configuration directory")
}

/// The API URL for user commands: `M87_API_URL`, else the one stored at login, else the default.
pub fn user_api_url() -> anyhow::Result<String> {
    if let Some(url) = api_url_from_env() {
        return Ok(url);
    }
    Ok(credentials_file()?
        .load()?
        .user
        .map(|u| u.api_url)
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned()))
}

/// A client acting as the user: `M87_API_KEY`, else the stored key.
pub fn user_client() -> anyhow::Result<ApiClient> {
    let key = match std::env::var("M87_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
    {
        Some(k) => k.trim().to_owned(),
        None => match credentials_file()?.load()?.user {
            Some(u) => u.api_key,
            None => bail!("not logged in: run `m87 login --api-key KEY` or set M87_API_KEY"),
        },
    };
    Ok(ApiClient::new(
        &user_api_url()?,
        Some(key),
        trust_invalid_cert_from_env(),
    )?)
}
