//! `m87 cp` on the client side: copy a file (or with `-r` a tree) to or from the device,
//! keeping modes and mtimes. The destination follows `cp`: into an existing directory, else
//! as the named path. A received file appears under its final name only when complete.
//!
//! - [`progress`]: the progress bar (also used by `m87 sync`).

pub mod progress;

use std::path::Path;

use m87_events::tunnel::Channel;
use m87_events::tunnel::files::{EntryKind, FileChannel, FileMsg, validate_name};
use m87_files::stream::{receive_tree, send_tree};
use m87_files::tree::source_tree;
use m87_files::write::resolve_destination;
use m87_files::{TransferError, Wire};

use super::{ChannelOpener, OpenedChannel};
use progress::Bar;

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Regular files copied.
    pub files: u64,
    /// Content bytes sent (file data on the wire, without framing).
    pub bytes_sent: u64,
    /// Content bytes received.
    pub bytes_received: u64,
}

/// A transfer error as the user sees it; the device's own errors say so.
pub fn user_error(e: TransferError) -> anyhow::Error {
    match e {
        TransferError::Remote(m) => anyhow::anyhow!("device: {m}"),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Opens a files channel.
pub async fn open_files(opener: &dyn ChannelOpener, op: FileChannel) -> anyhow::Result<Wire> {
    let OpenedChannel { reader, writer, .. } = opener.open(Channel::Files(op)).await?;
    Ok(Wire::new(reader, writer))
}

/// Ends the stream after `result`: cleanly, or telling the device why we stop.
async fn conclude<T>(wire: &mut Wire, result: Result<T, TransferError>) -> anyhow::Result<T> {
    match result {
        Ok(v) => {
            wire.finish().await;
            Ok(v)
        }
        Err(e) => {
            wire.fail(&e).await;
            Err(user_error(e))
        }
    }
}

fn stats(wire: &Wire, files: u64) -> TransferStats {
    TransferStats {
        files,
        bytes_sent: wire.stats.data_sent,
        bytes_received: wire.stats.data_received,
    }
}

/// Copies `local` (a file, or with `recursive` a directory) to `remote_path` on the device.
pub async fn push(
    opener: &dyn ChannelOpener,
    local: &Path,
    remote_path: &str,
    recursive: bool,
    progress: bool,
) -> anyhow::Result<TransferStats> {
    let tree = source_tree(local, recursive).await.map_err(user_error)?;
    let mut wire = open_files(
        opener,
        FileChannel::Push {
            path: remote_path.to_owned(),
            recursive,
        },
    )
    .await?;
    let bar = Bar::new(progress, tree.bytes, &tree.name);
    let result = async {
        wire.send(&FileMsg::Tree {
            name: tree.name.clone(),
            kind: tree.kind,
            files: tree.files,
            bytes: tree.bytes,
        })
        .await?;
        match wire.recv_msg().await? {
            FileMsg::Ready { path } => tracing::debug!(%path, "device destination"),
            m => return Err(TransferError::unexpected("ready", &m)),
        }
        let files = send_tree(&mut wire, &tree.entries, &bar).await?;
        match wire.recv_msg().await? {
            FileMsg::Done { .. } => Ok(files),
            m => Err(TransferError::unexpected("done", &m)),
        }
    }
    .await;
    bar.finish();
    let files = conclude(&mut wire, result).await?;
    Ok(stats(&wire, files))
}

/// Copies `remote_path` (a file, or with `recursive` a directory) from the device to `local`.
pub async fn pull(
    opener: &dyn ChannelOpener,
    remote_path: &str,
    local: &Path,
    recursive: bool,
    progress: bool,
) -> anyhow::Result<TransferStats> {
    let mut wire = open_files(
        opener,
        FileChannel::Pull {
            path: remote_path.to_owned(),
            recursive,
        },
    )
    .await?;
    let result = async {
        match wire.recv_msg().await? {
            FileMsg::Ready { path } => tracing::debug!(%path, "device source"),
            m => return Err(TransferError::unexpected("ready", &m)),
        }
        let (name, kind, bytes) = match wire.recv_msg().await? {
            FileMsg::Tree {
                name, kind, bytes, ..
            } => (name, kind, bytes),
            m => return Err(TransferError::unexpected("tree", &m)),
        };
        validate_name(&name)
            .map_err(|e| TransferError::protocol(format!("refusing name {name:?}: {e}")))?;
        if kind == EntryKind::Dir && !recursive {
            return Err(TransferError::Local(format!(
                "'{remote_path}' is a directory (use -r to copy directories)"
            )));
        }
        let dest = resolve_destination(local, &name, kind).await?;
        let bar = Bar::new(progress, bytes, &name);
        let received = receive_tree(&mut wire, &dest, kind, &bar).await;
        bar.finish();
        Ok(received?.0)
    }
    .await;
    let files = conclude(&mut wire, result).await?;
    Ok(stats(&wire, files))
}

#[cfg(test)]
pub(crate) mod tests;
