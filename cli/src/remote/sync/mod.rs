//! `m87 sync` on the client side: make a directory on one side match the other, sending only
//! what changed (size and mtime, then digests; large files as block deltas), optionally
//! deleting extraneous entries, leaving excluded paths alone; `--watch` re-syncs on change.
//!
//! - [`watch`]: local → device on every change, with filesystem notifications.

mod watch;

use std::path::Path;

use m87_events::tunnel::files::{FileChannel, FileMsg};
use m87_files::sync::{check_source_root, prepare_destination_root};
use m87_files::tree::Excludes;
use m87_files::{SyncParams, TransferError, sync_destination, sync_source};

use super::ChannelOpener;
use super::cp::progress::Bar;
use super::cp::{open_files, user_error};

pub use m87_files::SyncReport;
pub use watch::watch;

/// How to sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOptions {
    /// Remove entries of the destination that the source does not have (`--delete`).
    pub delete: bool,
    /// Glob patterns of paths to leave alone on both sides (`--exclude`, repeatable).
    pub excludes: Vec<String>,
    /// Only report what would change (`-n`).
    pub dry_run: bool,
    /// Draw a progress bar on standard error (only on a terminal).
    pub progress: bool,
}

/// Syncs the local directory `local` and `remote_path` on the device: with `to_device` the
/// device's copy is made to match `local`, else `local` is made to match the device's.
/// Returns what changed on the destination (or would, in a dry run) and the bytes moved.
pub async fn sync(
    opener: &dyn ChannelOpener,
    local: &Path,
    remote_path: &str,
    to_device: bool,
    opts: SyncOptions,
) -> anyhow::Result<SyncReport> {
    Excludes::new(&opts.excludes).map_err(user_error)?;
    if to_device {
        check_source_root(local).await.map_err(user_error)?;
    }
    let params = SyncParams {
        delete: opts.delete,
        excludes: opts.excludes.clone(),
        dry_run: opts.dry_run,
    };
    let mut wire = open_files(
        opener,
        FileChannel::Sync {
            path: remote_path.to_owned(),
            to_device,
            delete: opts.delete,
            excludes: opts.excludes,
            dry_run: opts.dry_run,
        },
    )
    .await?;
    let bar = Bar::new(opts.progress, 0, "sync");
    let result = async {
        match wire.recv_msg().await? {
            FileMsg::Ready { path } => tracing::debug!(%path, "device directory"),
            m => return Err(TransferError::unexpected("ready", &m)),
        }
        if to_device {
            sync_source(&mut wire, local, &params, &bar).await
        } else {
            prepare_destination_root(local, params.dry_run).await?;
            sync_destination(&mut wire, local, &params, &bar).await
        }
    }
    .await;
    bar.finish();
    match result {
        Ok(report) => {
            wire.finish().await;
            Ok(report)
        }
        Err(e) => {
            wire.fail(&e).await;
            Err(user_error(e))
        }
    }
}

#[cfg(test)]
mod tests;
