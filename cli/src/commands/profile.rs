//! `m87 profile add|use|list|remove`: several servers or accounts side by side (see
//! [`crate::profile`]).

use anyhow::bail;
use m87_transport::http::{allow_http_loopback_from_env, check_api_url};
use m87_transport::tls::Fingerprint;
use serde::Serialize;

use crate::output::{Output, print_json, print_table};
use crate::profile::{self, Profile, ProfileName, Source};

/// `m87 profile …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ProfileCommand {
    /// Add a profile for a server (it starts logged out).
    Add {
        /// Its name: lowercase letters, digits, '-' and '_'.
        name: ProfileName,
        /// The server.
        #[arg(long)]
        api_url: String,
        /// Trust the server by its certificate's SHA-256 (SHA256:AB:CD:…), stored in this
        /// profile's credentials.
        #[arg(long, value_name = "SHA256:…")]
        fingerprint: Option<Fingerprint>,
    },
    /// Use this profile from now on (M87_PROFILE and --profile still win).
    Use {
        /// The profile.
        name: ProfileName,
    },
    /// The profiles, the one in use marked with `*`.
    #[command(alias = "ls")]
    List,
    /// Remove a profile and its stored login (not the one in use, never `default`).
    #[command(alias = "rm")]
    Remove {
        /// The profile.
        name: ProfileName,
    },
}

/// `m87 profile add NAME --api-url URL [--fingerprint SHA256:…]`.
pub fn add(
    name: &ProfileName,
    api_url: &str,
    fingerprint: Option<Fingerprint>,
) -> anyhow::Result<()> {
    let url = api_url.trim().trim_end_matches('/').to_owned();
    check_api_url(&url, allow_http_loopback_from_env())?;
    let created = profile::create(name, &url)?;
    if let Some(pin) = fingerprint {
        created
            .credentials_file()?
            .update(|c| c.set_pin(&url, pin))?;
    }
    println!(
        "added profile {name} for {url}; log in with `m87 --profile {name} login`, \
         make it the default with `m87 profile use {name}`"
    );
    Ok(())
}

/// `m87 profile use NAME`.
pub fn use_profile(name: &ProfileName) -> anyhow::Result<()> {
    if profile::load(name)?.is_none() {
        return Err(profile::unknown(name, "`m87 profile use`"));
    }
    profile::set_current(name)?;
    println!("now using profile {name}");
    if let Ok(env) = std::env::var("M87_PROFILE")
        && !env.trim().is_empty()
        && env.trim() != name.as_str()
    {
        eprintln!(
            "note: M87_PROFILE={} is set and wins over this choice",
            env.trim()
        );
    }
    Ok(())
}

/// One row of `m87 profile list`.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    current: bool,
    server: Option<String>,
    login: &'static str,
    credentials: String,
}

fn row(p: &Profile, current: &ProfileName) -> anyhow::Result<Row> {
    let file = p.credentials_file()?;
    let creds = file.load()?;
    let server = creds
        .user
        .as_ref()
        .map(|u| u.api_url.clone())
        .or(creds.oauth.as_ref().map(|o| o.api_url.clone()))
        .or(p.config.api_url.clone());
    let login = match (&creds.user, &creds.oauth) {
        (Some(_), _) => "api key",
        (None, Some(_)) => "oidc",
        (None, None) => "-",
    };
    Ok(Row {
        name: p.name.to_string(),
        current: &p.name == current,
        server,
        login,
        credentials: file.path().display().to_string(),
    })
}

/// `m87 profile list`: every profile, the one in use marked.
pub fn list(out: Output) -> anyhow::Result<()> {
    let (current, _) = profile::chosen()?;
    let rows = profile::all()?
        .iter()
        .map(|p| row(p, &current))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if out == Output::Json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            vec![
                if r.current { "*" } else { "" }.to_owned(),
                r.name,
                r.server.unwrap_or_else(|| "-".into()),
                r.login.to_owned(),
                r.credentials,
            ]
        })
        .collect();
    print_table(&["", "NAME", "SERVER", "LOGIN", "CREDENTIALS"], &table);
    Ok(())
}

/// `m87 profile remove NAME`: refused for `default` and for the profile in use.
pub fn remove(name: &ProfileName) -> anyhow::Result<()> {
    if name.is_default() {
        bail!("the default profile cannot be removed (`m87 logout` forgets its login)");
    }
    if profile::load(name)?.is_none() {
        return Err(profile::unknown(name, "`m87 profile remove`"));
    }
    let (current, source) = profile::chosen()?;
    let stored = profile::stored_choice()?.is_some_and(|s| s == name.as_str());
    if &current == name || stored {
        let how = match source {
            Source::Flag if &current == name => "it is named by --profile",
            Source::Env if &current == name => "M87_PROFILE names it",
            _ => "it is the one in use (`m87 profile use`)",
        };
        bail!(
            "profile {name} cannot be removed: {how}; `m87 profile use default` (or another) \
             first"
        );
    }
    profile::delete(name)?;
    println!("removed profile {name} and its stored credentials");
    Ok(())
}
