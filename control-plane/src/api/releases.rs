//! Releases: the one-line installer and the `m87` binaries it and `m87 update` download.
//!
//! - `GET /install.sh`: the POSIX installer, with this server's URL (and, for a self-signed
//!   certificate, its key pin and fingerprint) filled in.
//! - `GET /v1/releases`: the release manifest of the releases directory, signed with the
//!   control plane's Ed25519 session-signing key ([`m87_events::release::SignedManifest`]).
//! - `GET /releases/{target}/m87`: the binary for a target, with `Range` support so an
//!   interrupted download resumes.
//!
//! The directory is `M87_RELEASES_DIR`, else `<data-dir>/releases`; it holds what
//! `scripts/build-dist` writes to `dist/<version>/`: `manifest.json` and the binaries. It is
//! read at every request, so publishing a release is copying files, without a restart.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use m87_events::release::{Manifest, SignedManifest};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::AppState;
use super::error::ApiError;
use super::extract::ApiPath;

/// The manifest's file name in the releases directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The installer, with `@M87_URL@`, `@M87_PIN@`, `@M87_FINGERPRINT@` to fill in.
const INSTALL_SH: &str = include_str!("install.sh");

/// Where releases are and how the installer reaches this server.
#[derive(Debug, Clone)]
pub struct ReleasesConfig {
    /// The releases directory (`manifest.json` and the binaries).
    pub dir: PathBuf,
    /// The URL the installer downloads from (`M87_PUBLIC_URL`); else `https://` + the
    /// request's `Host`.
    pub public_url: Option<String>,
    /// For a self-signed certificate: curl's `--pinnedpubkey` value (`sha256//…`), which the
    /// installer passes to every download.
    pub tls_pin: Option<String>,
    /// For a self-signed certificate: its fingerprint (`SHA256:…`), handed to `m87`.
    pub fingerprint: Option<String>,
}

impl ReleasesConfig {
    /// The directory from `M87_RELEASES_DIR`, else `<data_dir>/releases`, and the public URL
    /// from `M87_PUBLIC_URL`.
    pub fn from_env(data_dir: &Path) -> Self {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().trim_end_matches('/').to_owned())
                .filter(|v| !v.is_empty())
        };
        Self {
            dir: env("M87_RELEASES_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join("releases")),
            public_url: env("M87_PUBLIC_URL"),
            tls_pin: None,
            fingerprint: None,
        }
    }
}

/// The OpenAPI path of the manifest (merged into the API's document); `/install.sh` and the
/// binaries are files, not API.
#[derive(utoipa::OpenApi)]
#[openapi(paths(releases))]
pub struct ReleasesApiDoc;

/// The routes.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/install.sh", get(install_sh))
        .route("/v1/releases", get(releases))
        .route("/releases/{target}/m87", get(binary))
}

fn config(s: &AppState) -> Result<&Arc<ReleasesConfig>, ApiError> {
    s.releases.as_ref().ok_or_else(no_release)
}

fn no_release() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_release",
        "this server publishes no m87 release: build one with scripts/build-dist and copy \
         dist/<version>/ to <data-dir>/releases (or set M87_RELEASES_DIR)",
    )
}

async fn read_manifest(dir: &Path) -> Result<Manifest, ApiError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_release()),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "reading the release manifest");
            return Err(no_release());
        }
    };
    Manifest::parse(&bytes).map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "the release manifest is invalid");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad_release",
            e.to_string(),
        )
    })
}

/// The release manifest, signed with the control plane's session-signing key.
#[utoipa::path(get, path = "/v1/releases", tag = "meta",
    responses((status = 200, body = SignedManifest), (status = 404, description = "no release is published")))]
async fn releases(State(s): State<AppState>) -> Result<Json<SignedManifest>, ApiError> {
    let manifest = read_manifest(&config(&s)?.dir).await?;
    Ok(Json(s.cp.sign_release(&manifest)))
}

/// A host (and port) safe to put into a shell script: letters, digits, `.-:[]`.
fn safe_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

async fn install_sh(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = config(&s)?;
    let url = match &c.public_url {
        Some(u) => u.clone(),
        None => {
            // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in `Host`.
            let host = uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
                .filter(|h| safe_host(h))
                .ok_or_else(|| ApiError::bad_request("a Host header (host[:port]) is needed"))?;
            format!("https://{host}")
        }
    };
    let script = INSTALL_SH
        .replace("@M87_URL@", &url)
        .replace("@M87_PIN@", c.tls_pin.as_deref().unwrap_or(""))
        .replace("@M87_FINGERPRINT@", c.fingerprint.as_deref().unwrap_or(""));
    Ok((
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        script,
    )
        .into_response())
}

/// A `Range: bytes=N-`, `bytes=N-M` or `bytes=-N` (the last N) header, as (first, last) within
/// `size`; `Err` when it cannot be satisfied (several ranges are not served).
fn parse_range(value: &str, size: u64) -> Result<(u64, u64), ()> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    let (first, last) = spec.split_once('-').ok_or(())?;
    if first.trim().is_empty() {
        let n: u64 = last.trim().parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        return Ok((size.saturating_sub(n), size - 1));
    }
    let first: u64 = first.trim().parse().map_err(|_| ())?;
    let last = match last.trim() {
        "" => size.saturating_sub(1),
        l => l
            .parse::<u64>()
            .map_err(|_| ())?
            .min(size.saturating_sub(1)),
    };
    if first >= size || last < first {
        return Err(());
    }
    Ok((first, last))
}

async fn binary(
    State(s): State<AppState>,
    ApiPath(target): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = config(&s)?;
    let manifest = read_manifest(&c.dir).await?;
    let artifact = manifest.artifact(&target).ok_or_else(|| {
        let have: Vec<&str> = manifest
            .artifacts
            .iter()
            .map(|a| a.target.as_str())
            .collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_release",
            format!(
                "no m87 binary for {target}; this server has: {}",
                have.join(", ")
            ),
        )
    })?;
    let path = c.dir.join(&artifact.file);
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "opening a release binary");
        ApiError::not_found("release binary")
    })?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, first, last) = match range.map(|r| parse_range(r, size)) {
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
        Some(Ok((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last),
        Some(Err(())) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let length = if size == 0 { 0 } else { last - first + 1 };
    if first > 0 {
        file.seek(SeekFrom::Start(first))
            .await
            .map_err(|_| ApiError::not_found("release binary"))?;
    }
    let mut response = Response::new(Body::from_stream(chunks(file.take(length))));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

/// The reader as a stream of 64 KiB chunks.
fn chunks(
    reader: tokio::io::Take<tokio::fs::File>,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send {
    futures_util::stream::unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), reader))
            }
            Err(e) => Some((Err(e), reader)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resume_from_an_offset_and_refuse_past_the_end() {
        assert_eq!(parse_range("bytes=10-", 100), Ok((10, 99)));
        assert_eq!(parse_range("bytes=0-9", 100), Ok((0, 9)));
        assert_eq!(parse_range("bytes=90-200", 100), Ok((90, 99)));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=-5", 100), Ok((95, 99)));
        assert_eq!(parse_range("bytes=-500", 100), Ok((0, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Err(()));
        assert_eq!(parse_range("items=0-1", 100), Err(()));
    }

    #[test]
    fn only_plain_hosts_go_into_the_script() {
        assert!(safe_host("m87.example.com:8085"));
        assert!(safe_host("[::1]:8085"));
        assert!(!safe_host("x$(reboot)"));
        assert!(!safe_host("a b"));
        assert!(!safe_host(""));
    }
}
