//! Tree streams (push and pull): sending a [`SourceTree`](crate::tree::SourceTree) and receiving one into a
//! destination.

use std::io::{Seek, SeekFrom};
use std::path::Path;

use bytes::BytesMut;
use m87_events::tunnel::files::{Entry, EntryKind, FileMsg, MAX_CHUNK};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::beneath::open_regular_beneath;
use super::tree::LocalEntry;
use super::wire::Incoming;
use super::write::{PartialFile, TreeWriter, create_dir, place_symlink};
use super::{Progress, TransferError, Wire};

/// Opens a regular file for reading, not following a symlink unless `follow` (nor blocking on
/// a FIFO); `None` if it is gone or no longer a regular file.
pub async fn open_regular(
    path: &Path,
    follow: bool,
) -> Result<Option<(tokio::fs::File, std::fs::Metadata)>, TransferError> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow | libc::O_NONBLOCK)
        .open(path)
        .await;
    let file = match opened {
        Ok(f) => f,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(TransferError::io(path, &e)),
    };
    let meta = file
        .metadata()
        .await
        .map_err(|e| TransferError::io(path, &e))?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// SHA-256 (lowercase hex) of an open file's contents; the file comes back rewound.
pub async fn digest_file(
    file: tokio::fs::File,
    path: &Path,
) -> Result<(tokio::fs::File, String), TransferError> {
    let mut f = file.into_std().await;
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        f.seek(SeekFrom::Start(0))?;
        Ok((f, hex::encode(h.finalize())))
    })
    .await;
    match result {
        Ok(Ok((f, d))) => Ok((tokio::fs::File::from_std(f), d)),
        Ok(Err(e)) => Err(TransferError::io(path, &e)),
        Err(e) => Err(TransferError::Local(format!("{}: {e}", path.display()))),
    }
}

/// Sends a file's contents as `Data` frames and `Eof`. The file must have been opened by the
/// caller (so that a vanished file is noticed before its header is sent).
pub async fn send_contents(
    wire: &mut Wire,
    mut file: tokio::fs::File,
    path: &Path,
    progress: &dyn Progress,
) -> Result<u64, TransferError> {
    let mut sent = 0u64;
    loop {
        let mut buf = BytesMut::with_capacity(MAX_CHUNK);
        let n = file
            .read_buf(&mut buf)
            .await
            .map_err(|e| TransferError::io(path, &e))?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        wire.send_data(buf.freeze()).await?;
        progress.advance(n as u64);
    }
    wire.send_eof().await?;
    Ok(sent)
}

/// Sends a tree stream: each entry, files with their contents, then `End`. Returns the number
/// of files sent.
pub async fn send_tree(
    wire: &mut Wire,
    entries: &[LocalEntry],
    progress: &dyn Progress,
) -> Result<u64, TransferError> {
    let mut files = 0;
    // Below the root (path ""), files are opened without passing through a symlink.
    let root = entries.iter().find(|e| e.entry.path.is_empty());
    for e in entries {
        if e.entry.kind == EntryKind::File {
            let opened = match root {
                Some(root) if !e.entry.path.is_empty() => {
                    open_regular_beneath(&root.abs, &e.entry.path).await?
                }
                _ => open_regular(&e.abs, e.entry.path.is_empty()).await?,
            };
            let Some((file, _)) = opened else {
                return Err(TransferError::Local(format!(
                    "'{}' vanished during the copy",
                    e.abs.display()
                )));
            };
            wire.send(&FileMsg::Entry(e.entry.clone())).await?;
            send_contents(wire, file, &e.abs, progress).await?;
            files += 1;
        } else {
            wire.send(&FileMsg::Entry(e.entry.clone())).await?;
        }
    }
    wire.send(&FileMsg::End).await?;
    Ok(files)
}

/// Receives a file's contents (`Data`… `Eof`) into `dest` and puts it in place with the
/// entry's mode and mtime. On any failure the temporary file is removed and `dest` untouched.
pub async fn receive_file(
    wire: &mut Wire,
    dest: &Path,
    entry: &Entry,
    progress: &dyn Progress,
) -> Result<u64, TransferError> {
    let mut partial = PartialFile::create(dest).await?;
    let result = async {
        loop {
            match wire.recv().await? {
                Incoming::Data(d) => {
                    partial.write(&d).await?;
                    progress.advance(d.len() as u64);
                }
                Incoming::Eof => return Ok(()),
                Incoming::Msg(m) => return Err(TransferError::unexpected("file data", &m)),
            }
        }
    }
    .await;
    match result {
        Ok(()) => {
            let n = partial.written();
            partial.commit(entry.mode, entry.mtime).await?;
            Ok(n)
        }
        Err(e) => {
            partial.abort().await;
            Err(e)
        }
    }
}

/// Receives a tree stream whose root (of `kind`) becomes `dest` (already resolved, see
/// [`super::write::resolve_destination`]). Returns files and content bytes received.
pub async fn receive_tree(
    wire: &mut Wire,
    dest: &Path,
    kind: EntryKind,
    progress: &dyn Progress,
) -> Result<(u64, u64), TransferError> {
    let root = match wire.recv_msg().await? {
        FileMsg::Entry(e) if e.path.is_empty() && e.kind == kind => e,
        FileMsg::Entry(e) => {
            return Err(TransferError::protocol(format!(
                "expected the root {}, got {:?} ({})",
                kind.as_str(),
                e.path,
                e.kind.as_str()
            )));
        }
        m => return Err(TransferError::unexpected("the root entry", &m)),
    };
    let (mut files, mut bytes) = (0u64, 0u64);
    match kind {
        EntryKind::File => {
            bytes += receive_file(wire, dest, &root, progress).await?;
            files += 1;
            match wire.recv_msg().await? {
                FileMsg::End => {}
                m => return Err(TransferError::unexpected("end", &m)),
            }
        }
        EntryKind::Dir => {
            match tokio::fs::metadata(dest).await {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(TransferError::Local(format!(
                        "cannot overwrite non-directory '{}' with directory",
                        dest.display()
                    )));
                }
                Err(_) => create_dir(dest).await?,
            }
            let mut tree = TreeWriter::new(dest);
            tree.root_meta(root.mode, root.mtime);
            loop {
                let entry = match wire.recv_msg().await? {
                    FileMsg::Entry(e) => e,
                    FileMsg::End => break,
                    m => return Err(TransferError::unexpected("an entry or end", &m)),
                };
                match entry.kind {
                    EntryKind::Dir => {
                        tree.make_dir(&entry, false).await?;
                    }
                    EntryKind::File => {
                        let abs = tree.path_for(&entry.path).await?;
                        if let Ok(m) = tokio::fs::symlink_metadata(&abs).await
                            && m.is_dir()
                        {
                            return Err(TransferError::Local(format!(
                                "cannot overwrite directory '{}' with non-directory",
                                abs.display()
                            )));
                        }
                        bytes += receive_file(wire, &abs, &entry, progress).await?;
                        files += 1;
                    }
                    EntryKind::Symlink => {
                        let abs = tree.path_for(&entry.path).await?;
                        if let Ok(m) = tokio::fs::symlink_metadata(&abs).await
                            && m.is_dir()
                        {
                            return Err(TransferError::Local(format!(
                                "cannot overwrite directory '{}' with non-directory",
                                abs.display()
                            )));
                        }
                        let target = entry.target.as_deref().unwrap_or_default();
                        place_symlink(&abs, target, entry.mtime).await?;
                    }
                }
            }
            tree.finish().await?;
        }
        EntryKind::Symlink => {
            return Err(TransferError::protocol("a tree's root cannot be a symlink"));
        }
    }
    Ok((files, bytes))
}
