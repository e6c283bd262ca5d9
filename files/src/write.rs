//! Writing received entries safely.
//!
//! - A file is written to a temporary file in its final directory
//!   (`.name.m87-partial-<random>`, mode 0600), then its mode and mtime are set, it is fsync'd
//!   and renamed into place; until then the final name is untouched, and a failed or
//!   interrupted transfer removes the temporary file.
//! - Paths from the peer are validated, and every directory between the root and an entry
//!   must be a real directory (not a symlink), so nothing is written outside the root.
//! - Directories get their mode and mtime after their contents are written.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;
use m87_events::tunnel::files::{Entry, EntryKind, Mtime, validate_relative_path};
use tokio::io::AsyncWriteExt;

use super::TransferError;

/// Permission bits restored on received entries (set-user/group-id bits are dropped).
pub const MODE_MASK: u32 = 0o1777;
/// Marks temporary files of transfers in progress.
pub const PARTIAL_MARKER: &str = ".m87-partial-";

/// The [`FileTime`] of a wire mtime.
pub fn file_time(m: Mtime) -> FileTime {
    FileTime::from_unix_time(m.secs, m.nanos)
}

/// A sibling temporary name for `dest`: `.name.m87-partial-<random>`.
pub fn partial_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Keep the temporary name under NAME_MAX.
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let tmp = format!(
        ".{}{PARTIAL_MARKER}{:016x}",
        &name[..cut],
        rand::random::<u64>()
    );
    dest.with_file_name(tmp)
}

/// Whether a file name is one of our temporary files.
pub fn is_partial_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(PARTIAL_MARKER)
}

/// A file being received: written under a temporary name, renamed into place by
/// [`PartialFile::commit`]. Dropped or [`PartialFile::abort`]ed, the temporary file is removed.
#[derive(Debug)]
pub struct PartialFile {
    file: Option<tokio::fs::File>,
    temp: PathBuf,
    dest: PathBuf,
    written: u64,
    done: bool,
}

impl PartialFile {
    /// Starts receiving a file that will be `dest`.
    pub async fn create(dest: &Path) -> Result<Self, TransferError> {
        let temp = partial_path(dest);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .await
            .map_err(|e| TransferError::io(dest, &e))?;
        Ok(Self {
            file: Some(file),
            temp,
            dest: dest.to_path_buf(),
            written: 0,
            done: false,
        })
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), TransferError> {
        let Some(file) = self.file.as_mut() else {
            return Err(TransferError::Local("file already closed".into()));
        };
        file.write_all(data)
            .await
            .map_err(|e| TransferError::io(&self.dest, &e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Sets mode and mtime, fsyncs, and renames the file into place.
    pub async fn commit(mut self, mode: u32, mtime: Mtime) -> Result<(), TransferError> {
        let Some(mut file) = self.file.take() else {
            return Err(TransferError::Local("file already closed".into()));
        };
        if let Err(e) = file.flush().await {
            return Err(TransferError::io(&self.dest, &e));
        }
        let file = file.into_std().await;
        let (temp, dest) = (self.temp.clone(), self.dest.clone());
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.set_permissions(std::fs::Permissions::from_mode(mode & MODE_MASK))?;
            filetime::set_file_handle_times(&file, None, Some(file_time(mtime)))?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&temp, &dest)
        })
        .await;
        match result {
            Ok(Ok(())) => {
                self.done = true;
                Ok(())
            }
            Ok(Err(e)) => {
                self.abort().await;
                Err(TransferError::io(&self.dest, &e))
            }
            Err(e) => {
                self.abort().await;
                Err(TransferError::Local(format!(
                    "{}: writing failed: {e}",
                    self.dest.display()
                )))
            }
        }
    }

    /// Gives up: removes the temporary file.
    pub async fn abort(&mut self) {
        if self.done {
            return;
        }
        self.file = None;
        self.done = true;
        let _ = tokio::fs::remove_file(&self.temp).await;
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.done {
            // Only reached when the transfer's future is dropped mid-file (cancellation):
            // one unlink, best effort.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Creates (or replaces) the symlink `dest` → `target` atomically and sets its mtime.
pub async fn place_symlink(dest: &Path, target: &str, mtime: Mtime) -> Result<(), TransferError> {
    if target.is_empty() || target.contains('\0') {
        return Err(TransferError::protocol(format!(
            "invalid symlink target for {}",
            dest.display()
        )));
    }
    let temp = partial_path(dest);
    let (target, dest_owned) = (target.to_owned(), dest.to_path_buf());
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::os::unix::fs::symlink(&target, &temp)?;
        if let Err(e) = std::fs::rename(&temp, &dest_owned) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        let t = file_time(mtime);
        filetime::set_symlink_file_times(&dest_owned, t, t)
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(TransferError::io(dest, &e)),
        Err(e) => Err(TransferError::Local(format!("{}: {e}", dest.display()))),
    }
}

/// Sets mode and mtime of an existing file or directory (not following symlinks is not
/// needed: callers only pass real files and directories).
pub async fn set_metadata(path: &Path, mode: u32, mtime: Mtime) -> Result<(), TransferError> {
    let p = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & MODE_MASK))?;
        filetime::set_file_mtime(&p, file_time(mtime))
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(TransferError::io(path, &e)),
        Err(e) => Err(TransferError::Local(format!("{}: {e}", path.display()))),
    }
}

/// Removes whatever is at `path` (a directory with its contents); a missing path is fine.
pub async fn remove_any(path: &Path) -> Result<(), TransferError> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(path).await,
        Ok(_) => tokio::fs::remove_file(path).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| TransferError::io(path, &e))
}

fn kind_clash(dest: &Path, existing_dir: bool, kind: EntryKind) -> Option<TransferError> {
    if existing_dir && kind != EntryKind::Dir {
        Some(TransferError::Local(format!(
            "cannot overwrite directory '{}' with non-directory",
            dest.display()
        )))
    } else if !existing_dir && kind == EntryKind::Dir {
        Some(TransferError::Local(format!(
            "cannot overwrite non-directory '{}' with directory",
            dest.display()
        )))
    } else {
        None
    }
}

/// Where a copy of `name` (a file or directory) goes when the user asked for `target`, as
/// `cp` does it: into an existing directory `target` as `target/name`, else as `target`
/// itself (whose parent must exist). A directory never replaces a non-directory or the other
/// way round.
pub async fn resolve_destination(
    target: &Path,
    name: &str,
    kind: EntryKind,
) -> Result<PathBuf, TransferError> {
    use std::os::unix::ffi::OsStrExt;
    let trailing_slash = target.as_os_str().as_bytes().ends_with(b"/");
    match tokio::fs::metadata(target).await {
        Ok(m) if m.is_dir() => {
            let dest = target.join(name);
            match tokio::fs::metadata(&dest).await {
                Ok(dm) => match kind_clash(&dest, dm.is_dir(), kind) {
                    Some(e) => Err(e),
                    None => Ok(dest),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dest),
                Err(e) => Err(TransferError::io(&dest, &e)),
            }
        }
        Ok(m) => {
            if trailing_slash {
                return Err(TransferError::Local(format!(
                    "'{}': Not a directory",
                    target.display()
                )));
            }
            match kind_clash(target, m.is_dir(), kind) {
                Some(e) => Err(e),
                None => Ok(target.to_path_buf()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if trailing_slash && kind != EntryKind::Dir {
                return Err(TransferError::Local(format!(
                    "'{}': No such directory",
                    target.display()
                )));
            }
            let parent = match target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            match tokio::fs::metadata(&parent).await {
                Ok(pm) if pm.is_dir() => Ok(target.to_path_buf()),
                Ok(_) => Err(TransferError::Local(format!(
                    "'{}': Not a directory",
                    parent.display()
                ))),
                Err(_) => Err(TransferError::Local(format!(
                    "cannot create '{}': No such file or directory",
                    target.display()
                ))),
            }
        }
        Err(e) => Err(TransferError::io(target, &e)),
    }
}

/// Writes entries below a root directory, checking every path.
#[derive(Debug)]
pub struct TreeWriter {
    root: PathBuf,
    /// Relative directories known to be real directories (created or checked).
    checked: HashSet<String>,
    /// Directories whose mode and mtime are set at the end.
    dir_meta: Vec<(PathBuf, u32, Mtime)>,
}

impl TreeWriter {
    /// Writes below `root` (which must exist).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            checked: HashSet::new(),
            dir_meta: Vec::new(),
        }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `rel`, after checking it (see
    /// [`validate_relative_path`]) and that every directory above it, below the root, is a
    /// real directory and not a symlink.
    pub async fn path_for(&mut self, rel: &str) -> Result<PathBuf, TransferError> {
        validate_relative_path(rel)
            .map_err(|e| TransferError::protocol(format!("refusing path {rel:?}: {e}")))?;
        let mut end = 0;
        while let Some(i) = rel[end..].find('/') {
            let dir = &rel[..end + i];
            if !self.checked.contains(dir) {
                let abs = self.root.join(dir);
                match tokio::fs::symlink_metadata(&abs).await {
                    Ok(m) if m.is_dir() => {
                        self.checked.insert(dir.to_owned());
                    }
                    Ok(_) => {
                        return Err(TransferError::protocol(format!(
                            "refusing path {rel:?}: {dir:?} is not a directory"
                        )));
                    }
                    Err(e) => return Err(TransferError::io(&abs, &e)),
                }
            }
            end += i + 1;
        }
        Ok(self.root.join(rel))
    }

    /// Makes sure the directory `rel` exists (replacing a non-directory when `replace`, else
    /// refusing), and remembers its metadata for [`TreeWriter::finish`].
    pub async fn make_dir(&mut self, entry: &Entry, replace: bool) -> Result<bool, TransferError> {
        let abs = self.path_for(&entry.path).await?;
        let created = match tokio::fs::symlink_metadata(&abs).await {
            Ok(m) if m.is_dir() => false,
            Ok(_) if replace => {
                remove_any(&abs).await?;
                create_dir(&abs).await?;
                true
            }
            Ok(_) => {
                return Err(kind_clash(&abs, false, EntryKind::Dir)
                    .unwrap_or_else(|| TransferError::Local("kind clash".into())));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_dir(&abs).await?;
                true
            }
            Err(e) => return Err(TransferError::io(&abs, &e)),
        };
        self.checked.insert(entry.path.clone());
        self.dir_meta.push((abs, entry.mode, entry.mtime));
        Ok(created)
    }

    /// Remembers the root's metadata for [`TreeWriter::finish`].
    pub fn root_meta(&mut self, mode: u32, mtime: Mtime) {
        self.dir_meta.push((self.root.clone(), mode, mtime));
    }

    /// Sets directories' modes and mtimes, deepest first.
    pub async fn finish(&mut self) -> Result<(), TransferError> {
        let mut dirs = std::mem::take(&mut self.dir_meta);
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (path, mode, mtime) in dirs {
            set_metadata(&path, mode, mtime).await?;
        }
        Ok(())
    }
}

/// Creates one directory, owner-writable until [`TreeWriter::finish`] sets its mode.
pub async fn create_dir(path: &Path) -> Result<(), TransferError> {
    let mut b = tokio::fs::DirBuilder::new();
    b.mode(0o700);
    b.create(path)
        .await
        .map_err(|e| TransferError::io(path, &e))
}
