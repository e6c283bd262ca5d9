//! The destination role of a sync: compare, ask, write, delete, report.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use m87_events::tunnel::files::{
    Change, Entry, EntryKind, FileMsg, MAX_CHUNK, SIGNATURES_PER_MESSAGE, validate_relative_path,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::beneath::open_regular_beneath;
use super::delta::{DELTA_THRESHOLD, Signature, block_size_for, copy_range};
use super::stream::{digest_file, receive_file};
use super::sync::{SyncParams, SyncReport};
use super::tree::{Excludes, LocalEntry, walk_async};
use super::wire::Incoming;
use super::write::{MODE_MASK, PartialFile, TreeWriter, place_symlink, remove_any, set_metadata};
use super::{Progress, TransferError, Wire};

/// A file to ask the source for.
struct Want {
    entry: Entry,
    change: Change,
    /// The sizes are equal, the mtimes not: send our digest.
    check: bool,
    /// Large enough for a delta against our copy: send our signature.
    delta: bool,
    /// Our digest: the source answers `Same` if its contents have it.
    digest: Option<String>,
    /// Our signature, for a delta.
    signature: Option<Signature>,
}

/// What the destination will do, before it does it.
#[derive(Default)]
struct Plan {
    /// Every directory of the source, with the change when it is new or replaces something.
    dirs: Vec<(Entry, Option<Change>)>,
    /// Symlinks to create or replace.
    links: Vec<(Entry, Change)>,
    /// Local paths of the wrong kind, removed first.
    removals: Vec<String>,
    /// Files to ask for (digests and signatures filled in later).
    wants: Vec<Want>,
    /// Files whose only difference is the mode.
    chmods: Vec<Entry>,
    /// Local entries the source does not have, children first.
    extraneous: Vec<LocalEntry>,
    /// Local entries below removed directories (gone with them).
    swept: Vec<String>,
}

fn plan(manifest: Vec<Entry>, local: &[LocalEntry]) -> Plan {
    let here: HashMap<&str, &Entry> = local
        .iter()
        .map(|l| (l.entry.path.as_str(), &l.entry))
        .collect();
    let mut p = Plan::default();
    let mut removed_dirs = Vec::new();
    let wanted: HashSet<String> = manifest.iter().map(|e| e.path.clone()).collect();
    for e in manifest {
        let l = here.get(e.path.as_str()).copied();
        let local_dir = l.is_some_and(|l| l.kind == EntryKind::Dir);
        match e.kind {
            EntryKind::Dir => match l {
                None => p.dirs.push((e, Some(Change::Created))),
                Some(_) if local_dir => p.dirs.push((e, None)),
                Some(_) => {
                    p.removals.push(e.path.clone());
                    p.dirs.push((e, Some(Change::Updated)));
                }
            },
            EntryKind::Symlink => match l {
                None => p.links.push((e, Change::Created)),
                Some(l) if l.kind == EntryKind::Symlink && l.target == e.target => {}
                Some(_) => {
                    if local_dir {
                        removed_dirs.push(e.path.clone());
                        p.removals.push(e.path.clone());
                    }
                    p.links.push((e, Change::Updated));
                }
            },
            EntryKind::File => {
                let want = |entry: Entry, change, check: bool, delta: bool| Want {
                    entry,
                    change,
                    check,
                    delta,
                    digest: None,
                    signature: None,
                };
                match l {
                    None => p.wants.push(want(e, Change::Created, false, false)),
                    Some(l) if l.kind != EntryKind::File => {
                        if local_dir {
                            removed_dirs.push(e.path.clone());
                            p.removals.push(e.path.clone());
                        }
                        p.wants.push(want(e, Change::Updated, false, false));
                    }
                    Some(l) if l.size != e.size => {
                        let delta = e.size > DELTA_THRESHOLD && l.size > 0;
                        p.wants.push(want(e, Change::Updated, false, delta));
                    }
                    Some(l) if l.mtime != e.mtime => {
                        let delta = e.size > DELTA_THRESHOLD;
                        p.wants.push(want(e, Change::Updated, true, delta));
                    }
                    Some(l) if l.mode & MODE_MASK != e.mode & MODE_MASK => p.chmods.push(e),
                    Some(_) => {}
                }
            }
        }
    }
    let under_removed = |path: &str| {
        removed_dirs.iter().any(|d| {
            path.len() > d.len() && path.starts_with(d.as_str()) && path.as_bytes()[d.len()] == b'/'
        })
    };
    for l in local.iter().rev() {
        if under_removed(&l.entry.path) {
            p.swept.push(l.entry.path.clone());
        } else if !wanted.contains(&l.entry.path) {
            p.extraneous.push(l.clone());
        }
    }
    p.swept.reverse();
    p
}

/// Reads the source's manifest, checking every path; entries we exclude are dropped.
async fn receive_manifest(
    wire: &mut Wire,
    excludes: &Excludes,
) -> Result<Vec<Entry>, TransferError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut dirs = HashSet::new();
    loop {
        let e = match wire.recv_msg().await? {
            FileMsg::Entry(e) => e,
            FileMsg::End => return Ok(out),
            m => return Err(TransferError::unexpected("an entry or end", &m)),
        };
        validate_relative_path(&e.path)
            .map_err(|err| TransferError::protocol(format!("refusing path {:?}: {err}", e.path)))?;
        if !seen.insert(e.path.clone()) {
            return Err(TransferError::protocol(format!("{:?} sent twice", e.path)));
        }
        if let Some((parent, _)) = e.path.rsplit_once('/')
            && !dirs.contains(parent)
        {
            if excludes.excludes(parent, true) {
                continue;
            }
            return Err(TransferError::protocol(format!(
                "{:?} does not follow its directory",
                e.path
            )));
        }
        if excludes.matches(&e.path, e.kind == EntryKind::Dir) {
            continue;
        }
        if e.kind == EntryKind::Symlink && e.target.as_deref().is_none_or(str::is_empty) {
            return Err(TransferError::protocol(format!(
                "symlink {:?} without target",
                e.path
            )));
        }
        if e.kind == EntryKind::Dir {
            dirs.insert(e.path.clone());
        }
        out.push(e);
    }
}

/// Fills in our digest and signature of each want that needs them (from the local file,
/// opened below `root` without passing through a symlink: a directory replaced by one since
/// the walk leaves the want without them, so nothing outside the tree is hashed).
async fn inspect(root: &Path, wants: &mut [Want], dry_run: bool) -> Result<(), TransferError> {
    for w in wants {
        let delta = w.delta && !dry_run;
        if !w.check && !delta {
            continue;
        }
        let abs = root.join(&w.entry.path);
        let Some((file, meta)) = open_regular_beneath(root, &w.entry.path).await? else {
            continue;
        };
        if !delta {
            w.digest = Some(digest_file(file, &abs).await?.1);
            continue;
        }
        let bs = block_size_for(meta.len());
        let f = file.into_std().await;
        let (sig, whole) = tokio::task::spawn_blocking(move || Signature::compute(f, bs))
            .await
            .map_err(|e| TransferError::Local(format!("{}: {e}", abs.display())))?
            .map_err(|e| TransferError::io(&abs, &e))?;
        if w.check {
            w.digest = Some(hex::encode(whole));
        }
        w.signature = Some(sig);
    }
    Ok(())
}

async fn send_wants(wire: &mut Wire, wants: &[Want]) -> Result<(), TransferError> {
    for w in wants {
        let wire_sig = w.signature.as_ref().map(Signature::to_wire);
        wire.send(&FileMsg::Want {
            path: w.entry.path.clone(),
            digest: w.digest.clone(),
            signature: wire_sig.as_ref().map(|(h, _)| *h),
        })
        .await?;
        if let Some((_, blocks)) = wire_sig {
            for chunk in blocks.chunks(SIGNATURES_PER_MESSAGE) {
                wire.send(&FileMsg::Signatures {
                    blocks: chunk.to_vec(),
                })
                .await?;
            }
        }
    }
    wire.send(&FileMsg::End).await
}

/// Runs the destination side of a sync into `root` over `wire`, after `Ready`. `root` exists
/// (or, in a dry run, may not). Returns what changed (or would).
pub async fn sync_destination(
    wire: &mut Wire,
    root: &Path,
    params: &SyncParams,
    progress: &dyn Progress,
) -> Result<SyncReport, TransferError> {
    let dry = params.dry_run;
    let excludes = Excludes::new(&params.excludes)?;
    let manifest = receive_manifest(wire, &excludes).await?;
    let local = if tokio::fs::metadata(root).await.is_ok() {
        walk_async(root.to_path_buf(), excludes).await?
    } else {
        Vec::new()
    };
    let mut p = plan(manifest, &local);
    inspect(root, &mut p.wants, dry).await?;
    send_wants(wire, &p.wants).await?;

    let mut report = SyncReport {
        dry_run: dry,
        ..SyncReport::default()
    };
    let mut changes: Vec<(String, Change)> = Vec::new();
    let mut tree = TreeWriter::new(root);
    // Structure first: wrong kinds out, directories and symlinks in.
    if !dry {
        for path in &p.removals {
            remove_any(&tree.path_for(path).await?).await?;
        }
    }
    changes.extend(p.swept.iter().map(|s| (s.clone(), Change::Deleted)));
    for (dir, change) in &p.dirs {
        if !dry {
            tree.make_dir(dir, true).await?;
        }
        if let Some(c) = change {
            changes.push((dir.path.clone(), *c));
        }
    }
    for (link, change) in &p.links {
        if !dry {
            let abs = tree.path_for(&link.path).await?;
            let target = link.target.as_deref().unwrap_or_default();
            place_symlink(&abs, target, link.mtime).await?;
        }
        changes.push((link.path.clone(), *change));
    }

    // Contents, in the order asked.
    progress.begin(p.wants.iter().map(|w| w.entry.size).sum());
    let mut files = 0u64;
    for w in &p.wants {
        let path = &w.entry.path;
        let same_path = |other: &str| {
            if other == path {
                Ok(())
            } else {
                Err(TransferError::protocol(format!(
                    "expected an answer for {path:?}, got one for {other:?}"
                )))
            }
        };
        match wire.recv_msg().await? {
            FileMsg::Entry(e) if !dry && e.kind == EntryKind::File => {
                same_path(&e.path)?;
                let abs = tree.path_for(path).await?;
                receive_file(wire, &abs, &e, progress).await?;
                files += 1;
                changes.push((path.clone(), w.change));
            }
            FileMsg::Delta(e) if !dry && e.kind == EntryKind::File => {
                same_path(&e.path)?;
                let Some(sig) = &w.signature else {
                    return Err(TransferError::protocol(format!(
                        "unasked delta for {path:?}"
                    )));
                };
                let abs = tree.path_for(path).await?;
                let basis = (root, path.as_str());
                receive_delta(wire, &abs, basis, &e, sig, progress).await?;
                files += 1;
                changes.push((path.clone(), w.change));
            }
            FileMsg::Same { path: p2 } if w.digest.is_some() => {
                same_path(&p2)?;
                if !dry {
                    let abs = tree.path_for(path).await?;
                    set_metadata(&abs, w.entry.mode, w.entry.mtime).await?;
                }
                progress.advance(w.entry.size);
            }
            FileMsg::Differs { path: p2 } if dry => {
                same_path(&p2)?;
                changes.push((path.clone(), w.change));
            }
            FileMsg::Vanished { path: p2 } => same_path(&p2)?,
            m => return Err(TransferError::unexpected("an answer", &m)),
        }
    }
    match wire.recv_msg().await? {
        FileMsg::End => {}
        m => return Err(TransferError::unexpected("end", &m)),
    }

    if params.delete {
        for l in &p.extraneous {
            if dry || delete_one(&l.abs, l.entry.kind).await? {
                changes.push((l.entry.path.clone(), Change::Deleted));
            }
        }
    }
    if !dry {
        for e in &p.chmods {
            set_metadata(&tree.path_for(&e.path).await?, e.mode, e.mtime).await?;
        }
        tree.finish().await?;
    }

    for (path, change) in changes {
        wire.send(&FileMsg::Changed {
            path: path.clone(),
            change,
        })
        .await?;
        report.record(path, change);
    }
    report.files = files;
    wire.send(&FileMsg::Done {
        files,
        bytes: wire.stats.data_received,
    })
    .await?;
    report.count_bytes(wire);
    Ok(report)
}

/// Removes one extraneous entry; a directory that still holds excluded entries stays.
async fn delete_one(abs: &Path, kind: EntryKind) -> Result<bool, TransferError> {
    let result = if kind == EntryKind::Dir {
        tokio::fs::remove_dir(abs).await
    } else {
        tokio::fs::remove_file(abs).await
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if kind == EntryKind::Dir && e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            Ok(false)
        }
        Err(e) => Err(TransferError::io(abs, &e)),
    }
}

/// Receives a delta (`Copy`, `Data`, `Eof`) for `abs`, rebuilding it from the current file
/// (`basis`: the root and the path below it, opened without passing through a symlink) into a
/// temporary file renamed into place.
async fn receive_delta(
    wire: &mut Wire,
    abs: &Path,
    basis: (&Path, &str),
    entry: &Entry,
    sig: &Signature,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let Some((mut basis, meta)) = open_regular_beneath(basis.0, basis.1).await? else {
        return Err(TransferError::Local(format!(
            "'{}' vanished during the sync",
            abs.display()
        )));
    };
    if meta.len() != sig.len {
        return Err(TransferError::Local(format!(
            "'{}' changed during the sync",
            abs.display()
        )));
    }
    let mut partial = PartialFile::create(abs).await?;
    let result = async {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match wire.recv().await? {
                Incoming::Data(d) => {
                    partial.write(&d).await?;
                    progress.advance(d.len() as u64);
                }
                Incoming::Msg(FileMsg::Copy { start, count }) => {
                    let (offset, mut len) = copy_range(sig.block_size, sig.len, start, count)
                        .ok_or_else(|| TransferError::protocol("block reference out of range"))?;
                    progress.advance(len);
                    basis
                        .seek(std::io::SeekFrom::Start(offset))
                        .await
                        .map_err(|e| TransferError::io(abs, &e))?;
                    while len > 0 {
                        let want = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
                        let n = basis
                            .read(&mut buf[..want])
                            .await
                            .map_err(|e| TransferError::io(abs, &e))?;
                        if n == 0 {
                            return Err(TransferError::Local(format!(
                                "'{}' changed during the sync",
                                abs.display()
                            )));
                        }
                        partial.write(&buf[..n]).await?;
                        len -= n as u64;
                    }
                }
                Incoming::Eof => return Ok(()),
                Incoming::Msg(m) => return Err(TransferError::unexpected("delta data", &m)),
            }
        }
    }
    .await;
    match result {
        Ok(()) => partial.commit(entry.mode, entry.mtime).await,
        Err(e) => {
            partial.abort().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inspect_never_hashes_through_a_directory_swapped_for_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("dst"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("dir/f.txt"), b"inside").unwrap();
        std::fs::write(outside.join("f.txt"), b"OUTSIDE").unwrap();
        let local = walk_async(root.clone(), Excludes::none()).await.unwrap();
        let mut theirs = local[1].entry.clone();
        assert_eq!(theirs.path, "dir/f.txt");
        theirs.mtime.secs += 1;
        let mut p = plan(vec![local[0].entry.clone(), theirs], &local);
        assert!(
            p.wants[0].check,
            "same size, other mtime: our digest is asked for"
        );

        // Between the walk and the hashing, the directory becomes a symlink to the outside.
        std::fs::rename(root.join("dir"), tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dir")).unwrap();
        inspect(&root, &mut p.wants, false).await.unwrap();
        assert_eq!(p.wants[0].digest, None, "the outside file was hashed");

        // Where the directory is real, the digest is there.
        std::fs::remove_file(root.join("dir")).unwrap();
        std::fs::rename(tmp.path().join("moved"), root.join("dir")).unwrap();
        inspect(&root, &mut p.wants, false).await.unwrap();
        assert!(p.wants[0].digest.is_some());
    }
}
