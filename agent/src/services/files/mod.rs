//! File copy and sync: the device side of a `Channel::Files` stream, and the pieces the CLI
//! reuses for its side (the protocol is symmetric: whichever side receives files uses the same
//! safe writer, whichever sends uses the same tree walker).
//!
//! The frame sequences are documented in [`m87_events::tunnel::files`].
//!
//! - [`wire`]: frames of a files stream, counted (content bytes each way).
//! - [`tree`]: walking local trees into manifest entries; exclude patterns.
//! - [`write`]: writing safely: temporary file, fsync, metadata, rename; never through a
//!   symlink inside the tree; where a copy ends up (`cp` rules).
//! - [`stream`]: sending and receiving tree streams (push and pull).
//! - [`delta`]: the rsync-style delta algorithm (pure).
//! - [`sync`]: the two roles of a sync (source and destination).
//! - `push`, `pull`: the device's side of `cp`.

pub mod delta;
mod pull;
mod push;
pub mod stream;
pub mod sync;
mod sync_dest;
mod sync_source;
pub mod tree;
pub mod wire;
pub mod write;

use std::path::PathBuf;

use m87_events::tunnel::files::FileChannel;

use super::{BoxRead, BoxWrite, ChannelOutcome};
use m87_transport::frames::FrameReader;

pub use sync::{SyncParams, SyncReport, sync_destination, sync_source};
pub use wire::{TransferError, Wire};

/// Reports transfer progress (the CLI draws a bar; the agent ignores it).
pub trait Progress: Send + Sync {
    /// The transfer will move about `total` content bytes.
    fn begin(&self, total: u64) {
        let _ = total;
    }
    /// `bytes` more content bytes were moved (or found already in place, for deltas).
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// Serves a files channel: push, pull or sync (see [`m87_events::tunnel::files`]).
pub async fn serve(
    op: FileChannel,
    reader: FrameReader<BoxRead>,
    writer: BoxWrite,
) -> ChannelOutcome {
    let mut wire = Wire::new(reader, writer);
    let result = match op {
        FileChannel::Push { path, recursive } => push::serve(&mut wire, &path, recursive).await,
        FileChannel::Pull { path, recursive } => pull::serve(&mut wire, &path, recursive).await,
        FileChannel::Sync {
            path,
            to_device,
            delete,
            excludes,
            dry_run,
        } => {
            let params = SyncParams {
                delete,
                excludes,
                dry_run,
            };
            sync::serve(&mut wire, &path, to_device, &params).await
        }
    };
    match result {
        Ok(()) => {
            wire.finish().await;
            ChannelOutcome::default()
        }
        Err(e) => {
            tracing::debug!(error = %e, "files channel failed");
            wire.fail(&e).await;
            ChannelOutcome {
                exit: None,
                error: Some(e.to_string()),
            }
        }
    }
}

/// A device path as the user wrote it, made absolute: `~` and relative paths are relative to
/// the agent's home directory (as with `scp`).
pub fn resolve_device_path(path: &str) -> Result<PathBuf, TransferError> {
    if path.contains('\0') {
        return Err(TransferError::Local("path contains a NUL byte".into()));
    }
    if path.starts_with('/') {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .ok_or_else(|| TransferError::Local("the agent has no home directory".into()))?;
    let rest = path
        .strip_prefix("~/")
        .or_else(|| (path == "~").then_some(""))
        .unwrap_or(path);
    if rest.is_empty() {
        Ok(home)
    } else {
        Ok(home.join(rest))
    }
}

#[cfg(test)]
mod tests;
