//! The source role of a sync: send the manifest, answer what the destination wants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use m87_events::tunnel::files::{EntryKind, FileMsg, SignatureHeader};

use super::beneath::open_regular_beneath;
use super::delta::{Op, Signature, check_header, copy_range, diff};
use super::stream::{digest_file, send_contents};
use super::sync::{SyncParams, SyncReport};
use super::tree::{Excludes, entry_from_metadata, walk_async};
use super::{Progress, TransferError, Wire};

/// A file the destination asked for.
struct Wanted {
    path: String,
    abs: PathBuf,
    size: u64,
    digest: Option<String>,
    signature: Option<Signature>,
}

/// Runs the source side of a sync of `root` (an existing directory) over `wire`, after
/// `Ready`. Returns the destination's report of what changed.
pub async fn sync_source(
    wire: &mut Wire,
    root: &Path,
    params: &SyncParams,
    progress: &dyn Progress,
) -> Result<SyncReport, TransferError> {
    let excludes = Excludes::new(&params.excludes)?;
    let local = walk_async(root.to_path_buf(), excludes).await?;
    for e in &local {
        wire.send(&FileMsg::Entry(e.entry.clone())).await?;
    }
    wire.send(&FileMsg::End).await?;
    let by_path: HashMap<&str, (&PathBuf, EntryKind, u64)> = local
        .iter()
        .map(|e| (e.entry.path.as_str(), (&e.abs, e.entry.kind, e.entry.size)))
        .collect();

    let mut wants = Vec::new();
    loop {
        match wire.recv_msg().await? {
            FileMsg::Want {
                path,
                digest,
                signature,
            } => {
                let Some(&(abs, kind, size)) = by_path.get(path.as_str()) else {
                    return Err(TransferError::protocol(format!(
                        "asked for {path:?}, which is not in the manifest"
                    )));
                };
                if kind != EntryKind::File {
                    return Err(TransferError::protocol(format!(
                        "asked for {path:?}, which is not a file"
                    )));
                }
                let signature = match signature {
                    Some(h) => Some(receive_signature(wire, h).await?),
                    None => None,
                };
                wants.push(Wanted {
                    path,
                    abs: abs.clone(),
                    size,
                    digest,
                    signature,
                });
            }
            FileMsg::End => break,
            m => return Err(TransferError::unexpected("want or end", &m)),
        }
    }

    progress.begin(wants.iter().map(|w| w.size).sum());
    for w in wants {
        answer(wire, root, w, params.dry_run, progress).await?;
    }
    wire.send(&FileMsg::End).await?;

    let mut report = SyncReport {
        dry_run: params.dry_run,
        ..SyncReport::default()
    };
    loop {
        match wire.recv_msg().await? {
            FileMsg::Changed { path, change } => report.record(path, change),
            FileMsg::Done { files, .. } => {
                report.files = files;
                break;
            }
            m => return Err(TransferError::unexpected("changed or done", &m)),
        }
    }
    report.count_bytes(wire);
    Ok(report)
}

async fn receive_signature(
    wire: &mut Wire,
    header: SignatureHeader,
) -> Result<Signature, TransferError> {
    check_header(&header).map_err(TransferError::protocol)?;
    let expected = header.blocks();
    let mut blocks = Vec::new();
    while (blocks.len() as u64) < expected {
        match wire.recv_msg().await? {
            FileMsg::Signatures { blocks: b } if !b.is_empty() => blocks.extend(b),
            m => return Err(TransferError::unexpected("signatures", &m)),
        }
    }
    Signature::from_wire(header, &blocks).map_err(TransferError::protocol)
}

/// Answers one want: `Vanished`, `Same`, `Differs` (dry run), the whole file or a delta. The
/// file is opened below `root` without passing through a symlink (a directory replaced by one
/// since the walk makes the file `Vanished`), so nothing outside the tree is hashed or sent.
async fn answer(
    wire: &mut Wire,
    root: &Path,
    w: Wanted,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let Some((mut file, meta)) = open_regular_beneath(root, &w.path).await? else {
        return wire.send(&FileMsg::Vanished { path: w.path }).await;
    };
    if let Some(theirs) = &w.digest {
        let (f, ours) = digest_file(file, &w.abs).await?;
        if &ours == theirs {
            progress.advance(w.size);
            return wire.send(&FileMsg::Same { path: w.path }).await;
        }
        file = f;
    }
    if dry_run {
        return wire.send(&FileMsg::Differs { path: w.path }).await;
    }
    let Some(mut entry) = entry_from_metadata(w.path.clone(), &w.abs, &meta)? else {
        return wire.send(&FileMsg::Vanished { path: w.path }).await;
    };
    entry.digest = None;
    match w.signature {
        None => {
            wire.send(&FileMsg::Entry(entry)).await?;
            send_contents(wire, file, &w.abs, progress).await?;
        }
        Some(sig) => {
            wire.send(&FileMsg::Delta(entry)).await?;
            send_delta(wire, file, sig, &w.abs, progress).await?;
        }
    }
    Ok(())
}

/// Sends `Copy` and `Data` for a file against the destination's signature, then `Eof`. The
/// rolling search runs on a blocking thread; ops come back through a channel.
async fn send_delta(
    wire: &mut Wire,
    file: tokio::fs::File,
    sig: Signature,
    path: &Path,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let (block_size, basis_len) = (sig.block_size, sig.len);
    let input = file.into_std().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Op>(8);
    let task = tokio::task::spawn_blocking(move || {
        diff(&sig, input, |op| {
            tx.blocking_send(op)
                .map_err(|_| std::io::Error::other("the transfer stopped"))
        })
    });
    while let Some(op) = rx.recv().await {
        match op {
            Op::Copy { start, count } => {
                wire.send(&FileMsg::Copy { start, count }).await?;
                let len = copy_range(block_size, basis_len, start, count).map_or(0, |r| r.1);
                progress.advance(len);
            }
            Op::Literal(bytes) => {
                let n = bytes.len() as u64;
                wire.send_data(Bytes::from(bytes)).await?;
                progress.advance(n);
            }
        }
    }
    match task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(TransferError::io(path, &e)),
        Err(e) => return Err(TransferError::Local(format!("{}: {e}", path.display()))),
    }
    wire.send_eof().await
}
