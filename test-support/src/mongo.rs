//! A MongoDB for the tests.
//!
//! With `MONGODB_URI` set, the tests use that server (a real `mongod` replica set, say). Otherwise
//! they start SecantusDB's `secantusd-py` (a MongoDB wire-compatible single-node replica set,
//! installed by `scripts/setup-test-env`) on a free loopback port with `--storage-path :memory:`:
//! found through `SECANTUSD_BIN`, else `.test-env/venv/bin/secantusd-py` in the repository, else
//! `PATH`. The server is shared by the tests of one process that run at the same time and killed
//! when the last of them drops it. Each test uses its own database ([`unique_name`]).
//!
//! A server that cannot be started fails the test with the reason; nothing is skipped.
//!
//! Used by the control plane's integration tests and its store conformance unit tests, and by the
//! server's fleet tests, through `m87_test_support::mongo`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A MongoDB server for the tests: either `MONGODB_URI` or a `secantusd-py` this process started.
#[derive(Debug)]
pub struct MongoServer {
    uri: String,
    child: Option<Child>,
    log: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

static SHARED: Mutex<Weak<MongoServer>> = Mutex::new(Weak::new());

impl MongoServer {
    /// The server shared by the tests running now (started if none is).
    pub fn shared() -> Arc<MongoServer> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(Self::start());
        *shared = Arc::downgrade(&server);
        server
    }

    /// A server of the caller's own: `MONGODB_URI` when set, else a new `secantusd-py` (which
    /// the caller may stop by dropping it).
    pub fn start() -> MongoServer {
        if let Ok(uri) = std::env::var("MONGODB_URI")
            && !uri.trim().is_empty()
        {
            return MongoServer {
                uri,
                child: None,
                log: None,
                _dir: None,
            };
        }
        Self::start_secantus()
    }

    /// A new `secantusd-py`, even when `MONGODB_URI` is set.
    pub fn start_secantus() -> MongoServer {
        let bin = secantusd_bin();
        let mut last_error = String::new();
        for _ in 0..3 {
            match try_start(&bin) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!(
            "cannot start the MongoDB test server {}: {last_error}\n\
             Run scripts/setup-test-env to install SecantusDB into .test-env/venv, or set \
             SECANTUSD_BIN to a secantusd-py, or MONGODB_URI to a running MongoDB replica set.",
            bin.display()
        );
    }

    /// The connection string (`mongodb://…`), without a trailing `?` part unless
    /// `MONGODB_URI` had one.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The connection string with `options` (`key=value&…`) added.
    pub fn uri_with(&self, options: &str) -> String {
        let separator = if self.uri.contains('?') {
            "&"
        } else if self.uri.ends_with('/') || self.uri.matches('/').count() > 2 {
            "?"
        } else {
            "/?"
        };
        format!("{}{separator}{options}", self.uri)
    }

    /// A client for a new, uniquely named database (`prefix` names the test).
    pub async fn database(&self, prefix: &str) -> mongodb::Database {
        let client = mongodb::Client::with_uri_str(&self.uri)
            .await
            .expect("MongoDB test URI parses");
        client.database(&unique_name(prefix))
    }

    /// The server's process id, when this process started it (to pause it with SIGSTOP, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether this process started the server (false with `MONGODB_URI`).
    pub fn is_ours(&self) -> bool {
        self.child.is_some()
    }

    /// The server's log so far (empty with `MONGODB_URI`).
    pub fn log(&self) -> String {
        self.log
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A database name no other test (or earlier run against the same `MONGODB_URI`) uses.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let clean: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "m87t_{clean}_{}_{}_{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A loopback port nothing listens on (bound and released).
pub fn closed_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

fn secantusd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SECANTUSD_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the repository");
    let venv = repo.join(".test-env/venv/bin/secantusd-py");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("secantusd-py")
}

fn try_start(bin: &Path) -> Result<MongoServer, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let log_path = dir.path().join("secantusd.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("cannot create its log: {e}"))?;
    let err_log = log
        .try_clone()
        .map_err(|e| format!("cannot create its log: {e}"))?;
    let port = closed_port();
    let mut child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--storage-path", ":memory:", "--log-level", "WARNING"])
        // Its own directory, so no ./secantusd.toml of the caller's is picked up.
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "it exited with {status} before accepting connections; its log:\n{log}"
            ));
        }
        if TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_millis(200),
        )
        .is_ok()
        {
            return Ok(MongoServer {
                uri: format!("mongodb://127.0.0.1:{port}/"),
                child: Some(child),
                log: Some(log_path),
                _dir: Some(dir),
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "it did not accept connections on port {port} within {START_TIMEOUT:?}; its log:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
