//! Keeping the stored OpenID Connect session usable: refresh the access token shortly before it
//! expires, one refresh at a time across every `m87` process of the user.
//!
//! Refreshes are serialised by an exclusive `flock` on `credentials.lock` next to the
//! credentials file. Whoever takes the lock re-reads the file first: another process may have
//! refreshed already (then its tokens are used as they are). Providers rotate refresh tokens,
//! so two processes refreshing with the same one would make the second fail; the lock prevents
//! that.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use m87_transport::credentials::{CredentialsError, CredentialsFile, OAuthCredentials};

use super::http::OidcHttp;
use super::oidc::{self, RefreshError};

/// Refresh when the access token expires within this margin.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// How long to wait for another process's refresh before giving up.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// The state of an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Good for longer than [`REFRESH_MARGIN`] (or of unknown lifetime).
    Fresh,
    /// Still valid, but not for long: refresh now.
    ExpiresSoon,
    /// Expired.
    Expired,
}

/// Whether a token obtained at `obtained_at` and expiring at `expires_at` needs refreshing at
/// `now`: when less than [`REFRESH_MARGIN`] is left, or less than half its lifetime for tokens
/// that live shorter than twice the margin (so that a short-lived token is not refreshed on
/// every use).
pub fn freshness(
    expires_at: Option<DateTime<Utc>>,
    obtained_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Freshness {
    let Some(expires_at) = expires_at else {
        // The provider named no lifetime: use the token until the server refuses it.
        return Freshness::Fresh;
    };
    let margin = chrono::TimeDelta::from_std(REFRESH_MARGIN).unwrap_or(chrono::TimeDelta::MAX);
    let lifetime = expires_at - obtained_at;
    let margin = if lifetime > chrono::TimeDelta::zero() {
        margin.min(lifetime / 2)
    } else {
        margin
    };
    if expires_at <= now {
        Freshness::Expired
    } else if expires_at - now <= margin {
        Freshness::ExpiresSoon
    } else {
        Freshness::Fresh
    }
}

/// Why the session could not give an access token.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The refresh token no longer works (or there is none): a new login is needed.
    #[error("your session has expired: run m87 login")]
    Expired,
    /// The access token expired and the provider could not be reached to renew it.
    #[error("your session has expired and could not be renewed ({0}): run m87 login")]
    Unrenewable(String),
    /// Someone logged out meanwhile.
    #[error("not logged in: run `m87 login --api-key KEY` or set M87_API_KEY")]
    LoggedOut,
    /// The credentials file could not be read or written.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The lock file could not be taken.
    #[error("locking {path}: {reason}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// An exclusive lock on the credentials, held until dropped (closing the file releases it).
#[derive(Debug)]
pub struct CredentialsLock {
    _file: File,
}

/// The lock file of `file`: `credentials.lock` in the same directory.
pub fn lock_path(file: &CredentialsFile) -> PathBuf {
    file.dir().join("credentials.lock")
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Takes the exclusive lock on `file`'s credentials, waiting (without blocking the runtime)
/// for whoever holds it, at most a minute.
pub async fn lock(file: &CredentialsFile) -> Result<CredentialsLock, SessionError> {
    let path = lock_path(file);
    let lock_error = |reason: String| SessionError::Lock {
        path: path.clone(),
        reason,
    };
    let handle = open_lock_file(&path).map_err(|e| lock_error(e.to_string()))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        match rustix::fs::flock(
            &handle,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => return Ok(CredentialsLock { _file: handle }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                if Instant::now() >= deadline {
                    return Err(lock_error(format!(
                        "another m87 holds it for more than {} s",
                        LOCK_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => return Err(lock_error(e.to_string())),
        }
    }
}

/// The session to use now: `session` if its access token is fresh, else the session after a
/// refresh (by this process, or by another one that held the lock first). The refreshed
/// tokens (with a rotated refresh token) are saved.
pub async fn ensure_fresh(
    file: &CredentialsFile,
    session: OAuthCredentials,
    http: &OidcHttp,
) -> Result<OAuthCredentials, SessionError> {
    if freshness(session.expires_at, session.updated_at, Utc::now()) == Freshness::Fresh {
        return Ok(session);
    }
    let _lock = lock(file).await?;
    // Another process may have refreshed (or logged out) while this one waited.
    let Some(current) = file.load()?.oauth else {
        return Err(SessionError::LoggedOut);
    };
    let state = freshness(current.expires_at, current.updated_at, Utc::now());
    if state == Freshness::Fresh {
        return Ok(current);
    }
    match oidc::refresh(http, &current).await {
        Ok(renewed) => {
            file.update(|c| c.oauth = Some(renewed.clone()))?;
            tracing::debug!(expires_at = ?renewed.expires_at, "renewed the session");
            Ok(renewed)
        }
        Err(RefreshError::Rejected(reason)) => {
            tracing::debug!(%reason, "the provider refused to renew the session");
            Err(SessionError::Expired)
        }
        Err(RefreshError::Unavailable(reason)) if state == Freshness::ExpiresSoon => {
            tracing::warn!(%reason, "could not renew the session yet; using the current token");
            Ok(current)
        }
        Err(RefreshError::Unavailable(reason)) => Err(SessionError::Unrenewable(reason)),
    }
}

/// Runs `future` to completion from synchronous code, whether or not a Tokio runtime is
/// running on this thread: on a thread of its own with a runtime of its own.
pub fn block_on<F>(future: F) -> anyhow::Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let run = || {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|rt| rt.block_on(future))
                })
                .join()
        })
    };
    let joined = match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(run)
        }
        _ => run(),
    };
    match joined {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot start an async runtime: {e}")),
        Err(_) => Err(anyhow::anyhow!("renewing the session failed unexpectedly")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn refresh_decision() {
        let now = Utc::now();
        let secs = chrono::TimeDelta::seconds;
        let hour_ago = now - secs(3600);
        let at = |t| freshness(Some(t), hour_ago, now);
        assert_eq!(at(now - secs(1)), Freshness::Expired);
        assert_eq!(at(now), Freshness::Expired);
        assert_eq!(at(now + secs(10)), Freshness::ExpiresSoon);
        assert_eq!(at(now + secs(30)), Freshness::ExpiresSoon);
        assert_eq!(at(now + secs(31)), Freshness::Fresh);
        assert_eq!(at(now + secs(3600)), Freshness::Fresh);
        assert_eq!(freshness(None, hour_ago, now), Freshness::Fresh);
        // A token living 10 s is refreshed in its last 5 s, not on every use.
        let issued = now - secs(2);
        assert_eq!(
            freshness(Some(issued + secs(10)), issued, now),
            Freshness::Fresh
        );
        let issued = now - secs(6);
        assert_eq!(
            freshness(Some(issued + secs(10)), issued, now),
            Freshness::ExpiresSoon
        );
        // An odd clock (issued "after" expiry) falls back to the fixed margin.
        assert_eq!(
            freshness(Some(now + secs(20)), now + secs(60), now),
            Freshness::ExpiresSoon
        );
    }

    /// A fake token endpoint: answers every request with new tokens after `delay`, and counts
    /// the requests. Test-only; the real flow is tested against a real provider in
    /// `server/tests/oidc.rs`.
    async fn fake_token_endpoint(
        delay: Duration,
        answer: &'static str,
        status: &'static str,
    ) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, b) = (Arc::clone(&count), Arc::clone(&bodies));
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (c, b) = (Arc::clone(&c), Arc::clone(&b));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body = loop {
                        let n = stream.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "request ended early");
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                break text[end + 4..end + 4 + length].to_owned();
                            }
                        }
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    b.lock().unwrap().push(body);
                    tokio::time::sleep(delay).await;
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    stream.write_all(response.as_bytes()).await.unwrap();
                    stream.shutdown().await.unwrap();
                });
            }
        });
        (url, count, bodies)
    }

    fn session(token_endpoint: &str, expires_in: i64) -> OAuthCredentials {
        OAuthCredentials {
            access_token: "old-access".into(),
            refresh_token: Some("old-refresh".into()),
            expires_at: Some(Utc::now() + chrono::TimeDelta::seconds(expires_in)),
            refresh_expires_at: None,
            issuer: "http://127.0.0.1:1".into(),
            client_id: "m87-cli".into(),
            audience: "https://m87.test/api".into(),
            token_endpoint: token_endpoint.into(),
            revocation_endpoint: None,
            api_url: "https://127.0.0.1:8085".into(),
            updated_at: Utc::now() - chrono::TimeDelta::hours(1),
        }
    }

    const NEW_TOKENS: &str = r#"{"access_token":"new-access","token_type":"Bearer","expires_in":3600,"refresh_token":"new-refresh","scope":"openid offline_access"}"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_refreshing_at_once_call_the_token_endpoint_once() {
        let (url, count, bodies) =
            fake_token_endpoint(Duration::from_millis(300), NEW_TOKENS, "200 OK").await;
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::in_dir(dir.path());
        let stale = session(&url, -5);
        file.update(|c| c.oauth = Some(stale.clone())).unwrap();
        let http = OidcHttp::new(false).unwrap();

        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (file, stale, http) = (file.clone(), stale.clone(), http.clone());
                tokio::spawn(async move { ensure_fresh(&file, stale, &http).await })
            })
            .collect();
        for task in tasks {
            let renewed = task.await.unwrap().unwrap();
            assert_eq!(renewed.access_token, "new-access");
            assert_eq!(renewed.refresh_token.as_deref(), Some("new-refresh"));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "one refresh for both");
        let body = bodies.lock().unwrap()[0].clone();
        assert!(body.contains("grant_type=refresh_token"), "{body}");
        assert!(body.contains("refresh_token=old-refresh"), "{body}");
        assert!(body.contains("client_id=m87-cli"), "{body}");
        assert!(
            body.contains("resource=https%3A%2F%2Fm87.test%2Fapi"),
            "{body}"
        );

        let stored = file.load().unwrap().oauth.unwrap();
        assert_eq!(stored.access_token, "new-access");
        assert_eq!(stored.refresh_token.as_deref(), Some("new-refresh"));
        let expires = stored.expires_at.unwrap() - Utc::now();
        assert!(expires > chrono::TimeDelta::seconds(3500), "{expires}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(file.path()).unwrap().permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600);

        // Fresh now: no further call.
        let again = ensure_fresh(&file, stored, &http).await.unwrap();
        assert_eq!(again.access_token, "new-access");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_refresh_means_the_session_expired() {
        let (url, count, _) = fake_token_endpoint(
            Duration::ZERO,
            r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
            "400 Bad Request",
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::in_dir(dir.path());
        let stale = session(&url, 10);
        file.update(|c| c.oauth = Some(stale.clone())).unwrap();
        let err = ensure_fresh(&file, stale, &OidcHttp::new(false).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::Expired), "{err:?}");
        assert_eq!(err.to_string(), "your session has expired: run m87 login");
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // The tokens are left as they were.
        assert_eq!(
            file.load().unwrap().oauth.unwrap().refresh_token.as_deref(),
            Some("old-refresh")
        );
    }

    #[tokio::test]
    async fn an_unreachable_provider_keeps_a_still_valid_token_only() {
        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        drop(listener);
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::in_dir(dir.path());
        let http = OidcHttp::new(false).unwrap();

        let soon = session(&url, 10);
        file.update(|c| c.oauth = Some(soon.clone())).unwrap();
        let kept = ensure_fresh(&file, soon, &http).await.unwrap();
        assert_eq!(kept.access_token, "old-access");

        let expired = session(&url, -1);
        file.update(|c| c.oauth = Some(expired.clone())).unwrap();
        let err = ensure_fresh(&file, expired, &http).await.unwrap_err();
        assert!(matches!(err, SessionError::Unrenewable(_)), "{err:?}");
        assert!(err.to_string().starts_with("your session has expired"));
    }

    #[tokio::test]
    async fn a_fresh_token_needs_no_lock_and_no_provider() {
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::in_dir(dir.path());
        let fresh = session("http://127.0.0.1:1/token", 600);
        let same = ensure_fresh(&file, fresh.clone(), &OidcHttp::new(false).unwrap())
            .await
            .unwrap();
        assert_eq!(same, fresh);
        assert!(!lock_path(&file).exists());
    }

    #[tokio::test]
    async fn the_lock_is_exclusive_between_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::in_dir(dir.path());
        let first = lock(&file).await.unwrap();
        let waiting = tokio::spawn({
            let file = file.clone();
            async move { lock(&file).await.map(|_| Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the second lock waits");
        let released = Instant::now();
        drop(first);
        let taken = waiting.await.unwrap().unwrap();
        assert!(taken >= released);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(lock_path(&file)).unwrap().permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn block_on_works_outside_and_inside_a_runtime() {
        assert_eq!(block_on(async { 1 }).unwrap(), 1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            block_on(async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                2
            })
            .unwrap()
        });
        assert_eq!(got, 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { block_on(async { 3 }).unwrap() }), 3);
    }
}
