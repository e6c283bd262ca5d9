//! File copy and sync: the device side of a `Channel::Files` stream. The transfer engine it
//! runs (the same as the CLI's) is the `m87-files` crate.
//!
//! The frame sequences are documented in [`m87_events::tunnel::files`].
//!
//! - `push`, `pull`: the device's side of `cp`.
//! - `sync`: the device's side of a sync (it takes the role the client did not).

use std::path::PathBuf;

use m87_events::tunnel::files::FileChannel;

use super::{BoxRead, BoxWrite, ChannelOutcome};
use m87_transport::frames::FrameReader;

use m87_files::{SyncParams, TransferError, Wire};

mod pull;
mod push;
mod sync;

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
