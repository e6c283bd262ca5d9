//! A resumable, checked download of one release binary: staged next to the binary it replaces
//! (so the final rename stays on one file system), resumed with `Range` from what an earlier
//! attempt left, checked against the manifest's size and SHA-256, then renamed over the target.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use m87_events::release::Artifact;
use m87_transport::http::ApiClient;
use sha2::{Digest, Sha256};

/// Attempts before giving up; each one resumes where the last stopped.
const ATTEMPTS: u32 = 5;
/// Longest wait for the next chunk before the attempt counts as failed.
const STALL: Duration = Duration::from_secs(30);

/// The staged file for `artifact` next to `binary`: named after the binary and the checksum,
/// so a leftover from another release is never resumed into this one.
pub fn staged_path(binary: &Path, artifact: &Artifact) -> PathBuf {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "m87".into());
    let short = artifact.sha256.get(..16).unwrap_or(&artifact.sha256);
    binary.with_file_name(format!(".{name}.update-{short}.partial"))
}

/// Downloads `artifact` into `staged` (resuming what is there), with a few retries.
pub async fn fetch(client: &ApiClient, artifact: &Artifact, staged: &Path) -> anyhow::Result<()> {
    let path = format!("/releases/{}/m87", artifact.target);
    let mut last_error = None;
    for attempt in 1..=ATTEMPTS {
        match fetch_once(client, &path, artifact.size, staged).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(attempt, error = %format!("{e:#}"), "download interrupted; resuming");
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
        }
    }
    match last_error {
        Some(e) => Err(e.context(format!(
            "downloading {path} failed {ATTEMPTS} times; run the update again to resume"
        ))),
        None => bail!("downloading {path} failed"),
    }
}

async fn fetch_once(
    client: &ApiClient,
    path: &str,
    size: u64,
    staged: &Path,
) -> anyhow::Result<()> {
    let mut have = std::fs::metadata(staged).map(|m| m.len()).unwrap_or(0);
    if have > size {
        // Longer than the release: not a prefix of it; start again.
        std::fs::remove_file(staged).with_context(|| format!("removing {}", staged.display()))?;
        have = 0;
    }
    if have == size {
        return Ok(());
    }
    let mut response = client.get_from(path, have).await?;
    let resumed = response.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(staged)
        .with_context(|| format!("opening {}", staged.display()))?;
    if resumed {
        tracing::info!(from = have, "resuming the download");
    }
    loop {
        let chunk = tokio::time::timeout(STALL, response.chunk())
            .await
            .context("the download stalled")?
            .context("reading the download")?;
        let Some(chunk) = chunk else { break };
        file.write_all(&chunk)
            .with_context(|| format!("writing {}", staged.display()))?;
    }
    file.sync_all()
        .with_context(|| format!("writing {}", staged.display()))?;
    let got = std::fs::metadata(staged).map(|m| m.len()).unwrap_or(0);
    if got < size {
        bail!("the download ended after {got} of {size} bytes");
    }
    Ok(())
}

/// The SHA-256 of a file, lowercase hex.
pub fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Checks the staged file against the manifest; a mismatch removes it and is an error that says
/// the binary was left alone.
pub fn check(staged: &Path, artifact: &Artifact, binary: &Path) -> anyhow::Result<()> {
    let got = sha256_of(staged)?;
    if got != artifact.sha256 {
        let _ = std::fs::remove_file(staged);
        bail!(
            "the downloaded binary has SHA-256 {got}, but the signed manifest says {}: refusing \
             it; {} is unchanged",
            artifact.sha256,
            binary.display()
        );
    }
    Ok(())
}

/// Makes the staged file executable and renames it over `binary` in one step: a process
/// running the old binary keeps it; the next start runs the new one.
pub fn replace(staged: &Path, binary: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", staged.display()))?;
    std::fs::rename(staged, binary).with_context(|| {
        format!(
            "replacing {} (run the update as a user who may write there, e.g. with sudo)",
            binary.display()
        )
    })
}
