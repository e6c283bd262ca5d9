//! `m87 update [--check]` and `m87 runtime update [--check]`: replace this binary with the
//! release the control plane serves.
//!
//! Both read `GET /v1/releases`, verify its signature ([`trust`] says with which key), compare
//! the version with this build's, download the binary for this machine resumably next to the
//! binary ([`download`]), check its size and SHA-256 against the signed manifest, and rename it
//! over the binary in one step. `--check` only reports. `m87 runtime update` then restarts
//! `m87-runtime.service` when that unit exists.

mod download;
mod trust;

use std::cmp::Ordering;
use std::path::PathBuf;

use anyhow::{Context, bail};
use m87_events::release::{Artifact, Manifest, SignedManifest, compare_versions, current_target};
use m87_events::token::SessionVerifier;
use m87_transport::http::ApiClient;
use serde::Serialize;

use crate::context::{api_client, credentials_file, user_api_url};
use crate::output::{Output, print_json};

/// The runtime's systemd unit, restarted by `m87 runtime update`.
pub const RUNTIME_UNIT: &str = "m87-runtime.service";

/// What `update` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only report whether a newer release is served.
    pub check: bool,
    /// The binary to replace (default: this one).
    pub path: Option<PathBuf>,
}

/// What `update` found or did, as `-o json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    /// This build's version.
    current: String,
    /// The version the server serves.
    available: String,
    /// Whether the served version is newer.
    newer: bool,
    /// Whether the binary was replaced.
    updated: bool,
    /// The binary.
    path: String,
}

/// `m87 update`: the CLI from the server it is logged in to (`M87_API_URL`, else the login's).
pub async fn update(opts: Options, out: Output) -> anyhow::Result<()> {
    let file = credentials_file()?;
    let creds = file.load()?;
    let url = user_api_url()?;
    let client = api_client(&url, None, &creds)?;
    let signed = releases(&client).await?;
    let verifier = trust::cli_key(file.dir(), client.base_url(), &signed)?;
    apply(&client, &signed, &verifier, &opts, out).await?;
    Ok(())
}

/// `m87 runtime update`: the device's binary from the server it is enrolled with, checked with
/// that server's session key; then restarts the service when it is installed.
pub async fn runtime_update(opts: Options, system: bool, out: Output) -> anyhow::Result<()> {
    // The runtime's own state (never a profile's): the unit's M87_CONFIG_DIR, or the caller's.
    let target = crate::service::target(system)?;
    let creds = m87_transport::credentials::CredentialsFile::in_dir(&target.config_dir)
        .load()
        .with_context(|| {
            format!(
                "reading the runtime's state in {}",
                target.config_dir.display()
            )
        })?;
    let Some(device) = creds.device.clone() else {
        bail!(
            "this machine is not enrolled as a device (no device credentials); \
             `m87 update` updates the CLI"
        );
    };
    let client = api_client(&device.api_url, Some(device.api_key), &creds)?;
    let signed = releases(&client).await?;
    let verifier = trust::device_key(&client).await?;
    let updated = apply(&client, &signed, &verifier, &opts, out).await?;
    if updated {
        match target.mode {
            Some(mode) => crate::service::control("restart", mode == crate::service::Mode::System)?,
            None => eprintln!(
                "{RUNTIME_UNIT} is not installed; restart the runtime yourself to run the new version"
            ),
        }
    }
    Ok(())
}

async fn releases(client: &ApiClient) -> anyhow::Result<SignedManifest> {
    client.get("/v1/releases").await.with_context(|| {
        format!(
            "reading the release manifest from {}/v1/releases",
            client.base_url()
        )
    })
}

/// Verifies, compares and (unless `--check`) replaces; true when the binary was replaced.
async fn apply(
    client: &ApiClient,
    signed: &SignedManifest,
    verifier: &SessionVerifier,
    opts: &Options,
    out: Output,
) -> anyhow::Result<bool> {
    let manifest = signed.verify(verifier)?;
    let binary = match &opts.path {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this binary")?,
    };
    let current = env!("CARGO_PKG_VERSION");
    let newer = compare_versions(&manifest.version, current) == Ordering::Greater;
    let mut report = Report {
        current: current.to_owned(),
        available: manifest.version.clone(),
        newer,
        updated: false,
        path: binary.display().to_string(),
    };
    if opts.check || !newer {
        print_report(&report, opts.check, out)?;
        return Ok(false);
    }
    let artifact = artifact_for(&manifest)?;
    let staged = download::staged_path(&binary, artifact);
    download::fetch(client, artifact, &staged).await?;
    download::check(&staged, artifact, &binary)?;
    download::replace(&staged, &binary)?;
    report.updated = true;
    print_report(&report, false, out)?;
    Ok(true)
}

fn artifact_for(manifest: &Manifest) -> anyhow::Result<&Artifact> {
    let target = current_target().context("this machine's platform has no m87 release")?;
    manifest.artifact(target).with_context(|| {
        format!(
            "the server publishes m87 {} but no binary for {target}",
            manifest.version
        )
    })
}

fn print_report(report: &Report, check: bool, out: Output) -> anyhow::Result<()> {
    if out == Output::Json {
        return print_json(report);
    }
    let (current, available, path) = (&report.current, &report.available, &report.path);
    if report.updated {
        println!("updated {path} from m87 {current} to {available}");
    } else if report.newer && check {
        println!(
            "m87 {available} is available (this is {current}); run `m87 update` to install it"
        );
    } else if report.newer {
        println!("m87 {available} is available (this is {current})");
    } else {
        println!("m87 {current} is up to date (the server serves {available})");
    }
    Ok(())
}
