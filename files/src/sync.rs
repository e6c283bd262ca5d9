//! Sync: what the two roles (`sync_source`, `sync_destination`, in modules of their own) share:
//! parameters, the report, and checks of the roots. The device's side of a sync channel is in
//! the agent.
//!
//! The *source* sends its manifest; the *destination* compares it with its own tree, asks for
//! what changed (with its digest when only the mtime differs, and with block signatures for a
//! delta when the file is large), writes what arrives, deletes extraneous entries when asked,
//! and reports every change. See [`m87_events::tunnel::files`] for the frames.

use std::path::Path;

use m87_events::tunnel::files::Change;

use super::{TransferError, Wire};

/// What a sync does besides copying changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncParams {
    /// Remove entries of the destination that the source does not have.
    pub delete: bool,
    /// Glob patterns of paths neither side touches (see [`super::tree::Excludes`]).
    pub excludes: Vec<String>,
    /// Only report what would change.
    pub dry_run: bool,
}

/// What a sync changed on the destination (or would, in a dry run), and what it cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Paths (relative to the synced directory) that did not exist.
    pub created: Vec<String>,
    /// Paths whose contents, kind or link target changed.
    pub updated: Vec<String>,
    /// Paths removed.
    pub deleted: Vec<String>,
    /// Files whose contents were transferred (whole or as a delta).
    pub files: u64,
    /// Content bytes this side sent (file data and delta literals).
    pub bytes_sent: u64,
    /// Content bytes this side received.
    pub bytes_received: u64,
    /// All bytes this side sent, protocol messages (manifests, signatures) included.
    pub wire_bytes_sent: u64,
    /// All bytes this side received.
    pub wire_bytes_received: u64,
    /// Nothing was changed: this is what would have changed.
    pub dry_run: bool,
}

impl SyncReport {
    /// Whether nothing changed (or would).
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }

    /// Adds one change.
    pub fn record(&mut self, path: String, change: Change) {
        match change {
            Change::Created => self.created.push(path),
            Change::Updated => self.updated.push(path),
            Change::Deleted => self.deleted.push(path),
        }
    }

    /// Copies the wire's byte counts.
    pub fn count_bytes(&mut self, wire: &Wire) {
        self.bytes_sent = wire.stats.data_sent;
        self.bytes_received = wire.stats.data_received;
        self.wire_bytes_sent = wire.stats.frame_bytes_sent;
        self.wire_bytes_received = wire.stats.frame_bytes_received;
    }
}

/// Checks the root of a sync's source: an existing directory.
pub async fn check_source_root(root: &Path) -> Result<(), TransferError> {
    match tokio::fs::metadata(root).await {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(TransferError::Local(format!(
            "'{}' is not a directory",
            root.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TransferError::Local(format!(
            "'{}': No such directory",
            root.display()
        ))),
        Err(e) => Err(TransferError::io(root, &e)),
    }
}

/// Prepares the root of a sync's destination: an existing directory, or created (one level,
/// its parent must exist) unless this is a dry run.
pub async fn prepare_destination_root(root: &Path, dry_run: bool) -> Result<(), TransferError> {
    match tokio::fs::metadata(root).await {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(TransferError::Local(format!(
            "'{}' is not a directory",
            root.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent_ok = match root.parent() {
                Some(p) if !p.as_os_str().is_empty() => tokio::fs::metadata(p)
                    .await
                    .map(|m| m.is_dir())
                    .unwrap_or(false),
                _ => true,
            };
            if !parent_ok {
                return Err(TransferError::Local(format!(
                    "cannot create '{}': No such file or directory",
                    root.display()
                )));
            }
            if dry_run {
                return Ok(());
            }
            tokio::fs::create_dir(root)
                .await
                .map_err(|e| TransferError::io(root, &e))
        }
        Err(e) => Err(TransferError::io(root, &e)),
    }
}
