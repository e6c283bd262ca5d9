//! What a running runtime tells about itself, and the lock that keeps it alone on its state
//! directory.
//!
//! - `runtime.lock`: an exclusive file lock ([`std::fs::File::try_lock`]) held for the
//!   runtime's life. A second runtime on the same directory cannot take it and refuses to start
//!   ([`LiveError::AlreadyRunning`]); the kernel drops the lock when the process ends, however it
//!   ends, so a crash never leaves a stale lock behind.
//! - `runtime-state.json`: the live state (phase, tunnel connected or not and since when, the
//!   relay, the last tunnel error), written atomically (0600) on every change, read by
//!   `m87 runtime status`. It is trusted only while the lock is held: [`read`] says whether a
//!   runtime holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use m87_transport::credentials::write_private;

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "runtime.lock";
/// The live state's file name in the state directory.
pub const STATE_FILE: &str = "runtime-state.json";

/// Why the lock or the live state failed.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// Another runtime holds the state directory.
    #[error(
        "another m87 runtime{pid} is already running on {dir}; stop it first (`m87 runtime stop` \
         when it runs as the service), or give this one its own M87_CONFIG_DIR"
    )]
    AlreadyRunning {
        /// The state directory.
        dir: PathBuf,
        /// " (pid N)" when the holder wrote its pid.
        pid: String,
    },
    /// The lock or state file could not be used.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Where the runtime is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Started; registering or about to.
    Starting,
    /// Waiting for a registration request's approval.
    Pending,
    /// Enrolled: keeping the tunnel up.
    Enrolled,
}

/// The tunnel as the runtime last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelInfo {
    /// Whether a tunnel connection is up.
    pub connected: bool,
    /// Since when it is up (connected) or down (not connected).
    pub since: Option<DateTime<Utc>>,
    /// The relay's address (the current one, or the last one when down).
    pub relay: Option<String>,
    /// The relay's id, as it told it.
    pub relay_id: Option<String>,
    /// Why it is down, when it went down with an error.
    pub last_error: Option<String>,
}

/// The live state file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    /// The runtime's process id.
    pub pid: u32,
    /// The runtime's version.
    pub version: String,
    /// When this runtime started.
    pub started_at: DateTime<Utc>,
    /// Where it is in its life.
    pub phase: Phase,
    /// The tunnel.
    pub tunnel: TunnelInfo,
}

/// The lock and the live state of the runtime running in this process; cheap to clone.
#[derive(Debug, Clone)]
pub struct Live {
    inner: Arc<Mutex<(LiveState, PathBuf)>>,
    dir: PathBuf,
    // Held (never read) so the lock lasts as long as any clone.
    _lock: Arc<File>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LiveError + '_ {
    move |source| LiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Live {
    /// Takes the state directory's lock (refusing when another runtime holds it) and writes a
    /// first live state.
    pub fn acquire(dir: &Path) -> Result<Self, LiveError> {
        let lock_path = dir.join(LOCK_FILE);
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut held = String::new();
                let _ = file.read_to_string(&mut held);
                let pid = match held.trim() {
                    "" => String::new(),
                    p => format!(" (pid {p})"),
                };
                return Err(LiveError::AlreadyRunning {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let pid = std::process::id();
        file.set_len(0).map_err(io_err(&lock_path))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err(&lock_path))?;
        file.write_all(pid.to_string().as_bytes())
            .map_err(io_err(&lock_path))?;
        let state = LiveState {
            pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Utc::now(),
            phase: Phase::Starting,
            tunnel: TunnelInfo::default(),
        };
        let live = Self {
            inner: Arc::new(Mutex::new((state, dir.join(STATE_FILE)))),
            dir: dir.to_path_buf(),
            _lock: Arc::new(file),
        };
        live.update(|_| {});
        Ok(live)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes the live state and writes it; a failed write is logged, never fatal (the
    /// runtime's work matters more than its report).
    pub fn update(&self, change: impl FnOnce(&mut LiveState)) {
        let Ok(mut guard) = self.inner.lock() else {
            return;
        };
        change(&mut guard.0);
        let (state, path) = &*guard;
        let written = serde_json::to_vec_pretty(state)
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_private(&self.dir, path, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!("cannot write the runtime's live state: {e}");
        }
    }

    /// Sets the phase.
    pub fn phase(&self, phase: Phase) {
        self.update(|s| s.phase = phase);
    }

    /// Records a tunnel connection to `relay`.
    pub fn connected(&self, relay: &str, relay_id: Option<String>) {
        self.update(|s| {
            s.tunnel = TunnelInfo {
                connected: true,
                since: Some(Utc::now()),
                relay: Some(relay.to_owned()),
                relay_id,
                last_error: None,
            }
        });
    }

    /// Records that the tunnel is down (`error`: why, when it failed).
    pub fn disconnected(&self, error: Option<String>) {
        self.update(|s| {
            let was_up = s.tunnel.connected || s.tunnel.since.is_none();
            s.tunnel.connected = false;
            if was_up {
                s.tunnel.since = Some(Utc::now());
            }
            s.tunnel.last_error = error;
        });
    }
}

/// What `m87 runtime status` reads from a state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether a runtime holds the lock now.
    pub running: bool,
    /// The live state file, when there is one (stale when `running` is false).
    pub state: Option<LiveState>,
}

/// Reads the live state of `dir` and whether a runtime holds its lock (probed with a shared
/// lock that is released at once).
pub fn read(dir: &Path) -> Result<Observed, LiveError> {
    let lock_path = dir.join(LOCK_FILE);
    let running = match File::open(&lock_path) {
        Ok(f) => match f.try_lock_shared() {
            Ok(()) => false,
            Err(TryLockError::WouldBlock) => true,
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(&lock_path)(e)),
    };
    let state_path = dir.join(STATE_FILE);
    let state = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&state_path)(e)),
    };
    Ok(Observed { running, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_the_state_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let first = Live::acquire(dir.path()).unwrap();
        let err = Live::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(&err, LiveError::AlreadyRunning { pid, .. } if pid.contains(&std::process::id().to_string())),
            "{err}"
        );
        first.connected("127.0.0.1:4433", Some("relay-1".into()));
        let seen = read(dir.path()).unwrap();
        assert!(seen.running);
        let state = seen.state.unwrap();
        assert!(state.tunnel.connected);
        assert_eq!(state.tunnel.relay.as_deref(), Some("127.0.0.1:4433"));
        first.disconnected(Some("connection lost".into()));
        let state = read(dir.path()).unwrap().state.unwrap();
        assert!(!state.tunnel.connected);
        assert_eq!(state.tunnel.last_error.as_deref(), Some("connection lost"));
        drop(first);
        assert!(!read(dir.path()).unwrap().running, "the lock goes with it");
        Live::acquire(dir.path()).unwrap();
    }
}
