//! Local trees as manifest entries: walking (symlinks are never followed inside a tree),
//! exclude patterns, and the source of a copy.

use std::ffi::OsString;
use std::fs::Metadata;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use m87_events::tunnel::files::{Entry, EntryKind, Mtime, validate_name};

use super::TransferError;
use super::beneath::open_dir_beneath;

/// A manifest entry with where it lives here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    /// The entry (path relative to the tree's root).
    pub entry: Entry,
    /// Its absolute path.
    pub abs: PathBuf,
}

/// Builds the entry for `abs` from its (not followed) metadata; `None` for what a copy skips
/// (sockets, FIFOs, devices).
pub fn entry_from_metadata(
    rel: String,
    abs: &Path,
    meta: &Metadata,
) -> Result<Option<Entry>, TransferError> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        EntryKind::File
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        return Ok(None);
    };
    let target = match kind {
        EntryKind::Symlink => Some(link_target(
            abs,
            std::fs::read_link(abs).map_err(|e| TransferError::io(abs, &e))?,
        )?),
        _ => None,
    };
    let mtime = Mtime {
        secs: meta.mtime(),
        nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
    };
    Ok(Some(entry(
        rel,
        kind,
        meta.mode(),
        mtime,
        meta.len(),
        target,
    )))
}

/// The entry for `name` in the directory `dir` (at `abs`), from `fstatat` without following
/// it; `None` for what a copy skips, what `excludes` leaves out, and what vanished.
fn entry_in_dir(
    rel: String,
    dir: &OwnedFd,
    name: &str,
    abs: &Path,
    excludes: &Excludes,
) -> Result<Option<Entry>, TransferError> {
    use rustix::fs::{AtFlags, FileType};
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(TransferError::io(abs, &e.into())),
    };
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => return Ok(None),
    };
    if excludes.matches(&rel, kind == EntryKind::Dir) {
        return Ok(None);
    }
    let target = match kind {
        EntryKind::Symlink => match rustix::fs::readlinkat(dir, name, Vec::new()) {
            Ok(t) => Some(link_target(
                abs,
                PathBuf::from(OsString::from_vec(t.into_bytes())),
            )?),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(TransferError::io(abs, &e.into())),
        },
        _ => None,
    };
    let mtime = Mtime {
        secs: st.st_mtime,
        nanos: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
    };
    let size = u64::try_from(st.st_size).unwrap_or(0);
    Ok(Some(entry(rel, kind, st.st_mode, mtime, size, target)))
}

fn link_target(abs: &Path, target: PathBuf) -> Result<String, TransferError> {
    target.into_os_string().into_string().map_err(|_| {
        TransferError::Local(format!(
            "{}: symlink target is not valid UTF-8",
            abs.display()
        ))
    })
}

fn entry(
    path: String,
    kind: EntryKind,
    mode: u32,
    mtime: Mtime,
    size: u64,
    target: Option<String>,
) -> Entry {
    Entry {
        path,
        kind,
        mode: mode & 0o7777,
        mtime,
        size: if kind == EntryKind::File { size } else { 0 },
        digest: None,
        target,
    }
}

/// Exclude patterns (`--exclude`), as globs:
///
/// - a pattern without `/` matches an entry's name at any depth (`*.log`, `node_modules`);
/// - a pattern with a `/` inside, or starting with `/`, matches the path from the root
///   (`build/*.o`, `/dist`), `*` not crossing `/` and `**` crossing it;
/// - a trailing `/` matches directories only (`cache/`).
///
/// An excluded directory excludes everything below it.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    matcher: GlobMatcher,
    anchored: bool,
    dir_only: bool,
}

impl Excludes {
    /// No exclusions.
    pub fn none() -> Self {
        Self::default()
    }

    /// Compiles patterns; an invalid one is an error naming it.
    pub fn new(patterns: &[String]) -> Result<Self, TransferError> {
        let mut rules = Vec::with_capacity(patterns.len());
        for p in patterns {
            let dir_only = p.ends_with('/');
            let trimmed = p.trim_end_matches('/');
            let anchored = trimmed.contains('/');
            let trimmed = trimmed.trim_start_matches('/');
            if trimmed.is_empty() {
                return Err(TransferError::Local(format!(
                    "invalid exclude pattern {p:?}: empty"
                )));
            }
            let glob = GlobBuilder::new(trimmed)
                .literal_separator(true)
                .build()
                .map_err(|e| TransferError::Local(format!("invalid exclude pattern {p:?}: {e}")))?;
            rules.push(Rule {
                matcher: glob.compile_matcher(),
                anchored,
                dir_only,
            });
        }
        Ok(Self { rules })
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether the entry at `rel` (relative to the root) is excluded by itself.
    pub fn matches(&self, rel: &str, is_dir: bool) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        self.rules.iter().any(|r| {
            (is_dir || !r.dir_only)
                && if r.anchored {
                    r.matcher.is_match(rel)
                } else {
                    r.matcher.is_match(name)
                }
        })
    }

    /// Whether `rel` or any directory above it is excluded.
    pub fn excludes(&self, rel: &str, is_dir: bool) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let mut end = 0;
        while let Some(i) = rel[end..].find('/') {
            if self.matches(&rel[..end + i], true) {
                return true;
            }
            end += i + 1;
        }
        self.matches(rel, is_dir)
    }
}

/// Walks the tree under `root` (not including the root): parents before children, names in
/// byte order, symlinks not followed, excluded entries and everything below them left out,
/// sockets/FIFOs/devices skipped, entries that vanish during the walk skipped. Each directory
/// is listed through a descriptor opened below the root without passing through a symlink
/// ([`open_dir_beneath`]), so a directory replaced by a symlink during the walk is never
/// listed (it is left out, as if it had vanished). Blocking.
pub fn walk(root: &Path, excludes: &Excludes) -> Result<Vec<LocalEntry>, TransferError> {
    let mut out = Vec::new();
    // Directories still to list: (absolute, relative prefix).
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let fd = match open_dir_beneath(root, &prefix) {
            Ok(Some(fd)) => fd,
            Ok(None) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !prefix.is_empty() => continue,
            Err(e) => return Err(TransferError::io(&dir, &e)),
        };
        let mut subdirs = Vec::new();
        for name in list_names(&fd, &dir)? {
            let abs = dir.join(&name);
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let Some(entry) = entry_in_dir(rel.clone(), &fd, &name, &abs, excludes)? else {
                continue;
            };
            if entry.kind == EntryKind::Dir {
                subdirs.push((abs.clone(), rel));
            }
            out.push(LocalEntry { entry, abs });
        }
        // Depth first, in name order: push in reverse so the first name is listed next. Its
        // entries are appended after all of this directory's entries, so parents always come
        // before children.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// The names in the directory open as `fd` (at `dir`), in byte order; each must be UTF-8.
fn list_names(fd: &OwnedFd, dir: &Path) -> Result<Vec<String>, TransferError> {
    let listing = rustix::fs::Dir::read_from(fd).map_err(|e| TransferError::io(dir, &e.into()))?;
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(|e| TransferError::io(dir, &e.into()))?;
        let bytes = item.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let name = std::str::from_utf8(bytes).map_err(|_| {
            TransferError::Local(format!(
                "{}: file name is not valid UTF-8",
                dir.join(std::ffi::OsStr::from_bytes(bytes)).display()
            ))
        })?;
        names.push(name.to_owned());
    }
    names.sort_unstable();
    Ok(names)
}

/// The source of a copy: the root (a file, or a directory with everything below it).
#[derive(Debug, Clone)]
pub struct SourceTree {
    /// The source's last path component.
    pub name: String,
    /// The root's kind (file or directory).
    pub kind: EntryKind,
    /// The root (path `""`) followed by the tree.
    pub entries: Vec<LocalEntry>,
    /// Regular files in it.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
}

/// The last component of `path`, lexically if it has one (`/a/b` → `b`), else of its
/// canonical form (`.`, `a/..`).
pub fn source_name(path: &Path) -> Result<String, TransferError> {
    let name = match path.file_name() {
        Some(n) => n.to_owned(),
        None => std::fs::canonicalize(path)
            .map_err(|e| TransferError::io(path, &e))?
            .file_name()
            .map(|n| n.to_owned())
            .ok_or_else(|| {
                TransferError::Local(format!(
                    "{}: cannot copy the root directory",
                    path.display()
                ))
            })?,
    };
    let name = name.to_str().ok_or_else(|| {
        TransferError::Local(format!("{}: name is not valid UTF-8", path.display()))
    })?;
    validate_name(name).map_err(|e| TransferError::Local(format!("{}: {e}", path.display())))?;
    Ok(name.to_owned())
}

/// Reads the source of a copy: `path` itself is followed if it is a symlink; below it nothing
/// is. A missing source, or a directory without `recursive`, is an error naming it.
pub async fn source_tree(path: &Path, recursive: bool) -> Result<SourceTree, TransferError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || source_tree_blocking(&path, recursive))
        .await
        .map_err(|e| TransferError::Local(format!("reading the source failed: {e}")))?
}

fn source_tree_blocking(path: &Path, recursive: bool) -> Result<SourceTree, TransferError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TransferError::Local(format!(
                "cannot access '{}': No such file or directory",
                path.display()
            ))
        } else {
            TransferError::io(path, &e)
        }
    })?;
    if meta.is_dir() && !recursive {
        return Err(TransferError::Local(format!(
            "'{}' is a directory (use -r to copy directories)",
            path.display()
        )));
    }
    if !meta.is_dir() && !meta.is_file() {
        return Err(TransferError::Local(format!(
            "'{}' is not a regular file or directory",
            path.display()
        )));
    }
    let name = source_name(path)?;
    let root = entry_from_metadata(String::new(), path, &meta)?
        .ok_or_else(|| TransferError::Local(format!("'{}' cannot be copied", path.display())))?;
    let kind = root.kind;
    let mut entries = vec![LocalEntry {
        entry: root,
        abs: path.to_path_buf(),
    }];
    if kind == EntryKind::Dir {
        entries.extend(walk(path, &Excludes::none())?);
    }
    let (files, bytes) = entries
        .iter()
        .filter(|e| e.entry.kind == EntryKind::File)
        .fold((0, 0), |(f, b), e| (f + 1, b + e.entry.size));
    Ok(SourceTree {
        name,
        kind,
        entries,
        files,
        bytes,
    })
}

/// Walks `root` off the async threads.
pub async fn walk_async(
    root: PathBuf,
    excludes: Excludes,
) -> Result<Vec<LocalEntry>, TransferError> {
    tokio::task::spawn_blocking(move || walk(&root, &excludes))
        .await
        .map_err(|e| TransferError::Local(format!("walking the tree failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &[&str]) -> Excludes {
        Excludes::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exclude_patterns() {
        let e = ex(&["*.log", "node_modules", "/dist", "build/*.o", "cache/"]);
        assert!(e.excludes("a.log", false));
        assert!(e.excludes("x/y/a.log", false));
        assert!(e.excludes("node_modules", true));
        assert!(e.excludes("web/node_modules/x/y.js", false));
        assert!(e.excludes("dist", true));
        assert!(!e.excludes("src/dist", true));
        assert!(e.excludes("build/a.o", false));
        assert!(!e.excludes("build/sub/a.o", false));
        assert!(e.excludes("cache", true));
        assert!(!e.excludes("cache", false));
        assert!(e.excludes("a/cache/b", false));
        assert!(!e.excludes("src/main.rs", false));
        assert!(!Excludes::none().excludes("a.log", false));
        assert!(ex(&["**/gen/*.rs"]).excludes("a/b/gen/x.rs", false));
        assert!(Excludes::new(&["[".to_string()]).is_err());
        assert!(Excludes::new(&["/".to_string()]).is_err());
    }

    #[test]
    fn a_directory_reached_through_a_symlink_is_never_opened_or_listed() {
        let d = tempfile::tempdir().unwrap();
        let (r, outside) = (d.path().join("root"), d.path().join("outside"));
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"x").unwrap();
        // "a/b" is a symlink to a directory outside: never opened as a directory below the root.
        std::fs::remove_dir(r.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&outside, r.join("a/b")).unwrap();
        assert!(open_dir_beneath(&r, "a/b").unwrap().is_none());
        assert!(open_dir_beneath(&r, "a").unwrap().is_some());
        let got = walk(&r, &Excludes::none()).unwrap();
        let paths: Vec<_> = got.iter().map(|e| e.entry.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b"]);
        assert_eq!(got[1].entry.kind, EntryKind::Symlink);
    }

    #[test]
    fn walk_lists_parents_first_and_never_follows_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("b/c")).unwrap();
        std::fs::write(r.join("a.txt"), b"1").unwrap();
        std::fs::write(r.join("b/c/d.txt"), b"22").unwrap();
        std::fs::write(r.join("b/skip.log"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("b/link")).unwrap();
        let got = walk(r, &ex(&["*.log"])).unwrap();
        let paths: Vec<_> = got.iter().map(|e| e.entry.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "b", "b/c", "b/link", "b/c/d.txt"]);
        let link = &got[3].entry;
        assert_eq!(link.kind, EntryKind::Symlink);
        assert_eq!(link.target.as_deref(), Some("/etc"));
        assert_eq!(got[4].entry.size, 2);
    }
}
