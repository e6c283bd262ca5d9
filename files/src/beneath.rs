//! Opening a file inside a tree without following a symlink anywhere below the tree's root.
//!
//! A walk sees a directory; by the time a file in it is read (to hash it, to build a delta
//! signature from it, or to send it), the directory may have been replaced by a symlink — to
//! `/etc`, or to itself. Opening `root/dir/file` by path would follow it (`O_NOFOLLOW` guards
//! only the last name). Here each directory on the way is opened with `O_NOFOLLOW |
//! O_DIRECTORY` relative to the one before, and the file itself with `O_NOFOLLOW`, so whatever
//! is reached is inside the tree. The root itself is followed: it is what the user named.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::TransferError;

/// Opens the directory `rel` below `root` (`""`: the root itself), passing through no
/// symlink below the root; `None` when it is gone or is not a directory there. Blocking.
pub fn open_dir_beneath(root: &Path, rel: &str) -> std::io::Result<Option<OwnedFd>> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root_fd = rustix::fs::open(root, dir_flags, Mode::empty()).map_err(std::io::Error::from)?;
    if rel.is_empty() {
        return Ok(Some(root_fd));
    }
    let names: Vec<&str> = rel.split('/').collect();
    if names
        .iter()
        .any(|n| n.is_empty() || *n == "." || *n == "..")
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{rel:?} is not a plain relative path"),
        ));
    }
    let mut dir = root_fd;
    for name in names {
        let next = rustix::fs::openat(&dir, name, dir_flags | OFlags::NOFOLLOW, Mode::empty());
        dir = match gone(next)? {
            Some(fd) => fd,
            None => return Ok(None),
        };
    }
    Ok(Some(dir))
}

/// Opens `rel` (names separated by `/`, as in a manifest) below `root` for reading. `None`
/// when it is gone, is not a regular file, or could be reached only through a symlink.
/// Blocking.
pub fn open_file_beneath(
    root: &Path,
    rel: &str,
) -> std::io::Result<Option<(std::fs::File, std::fs::Metadata)>> {
    let names: Vec<&str> = rel.split('/').collect();
    if names
        .iter()
        .any(|n| n.is_empty() || *n == "." || *n == "..")
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{rel:?} is not a plain relative path"),
        ));
    }
    let Some((file_name, dirs)) = names.split_last() else {
        return Ok(None);
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir: OwnedFd = match gone(rustix::fs::open(root, dir_flags, Mode::empty()))? {
        Some(fd) => fd,
        None => return Ok(None),
    };
    for name in dirs {
        let next = rustix::fs::openat(&dir, *name, dir_flags | OFlags::NOFOLLOW, Mode::empty());
        dir = match gone(next)? {
            Some(fd) => fd,
            None => return Ok(None),
        };
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let Some(fd) = gone(rustix::fs::openat(&dir, *file_name, flags, Mode::empty()))? else {
        return Ok(None);
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// `None` for what means "not here as a plain path": missing, a symlink (`ELOOP`), or a
/// non-directory on the way (`ENOTDIR`).
fn gone(result: Result<OwnedFd, Errno>) -> std::io::Result<Option<OwnedFd>> {
    match result {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// [`open_file_beneath`] off the async threads, as a tokio file; errors name the path.
pub async fn open_regular_beneath(
    root: &Path,
    rel: &str,
) -> Result<Option<(tokio::fs::File, std::fs::Metadata)>, TransferError> {
    let (root, rel) = (root.to_path_buf(), rel.to_owned());
    let abs = root.join(&rel);
    let opened = tokio::task::spawn_blocking(move || open_file_beneath(&root, &rel))
        .await
        .map_err(|e| TransferError::Local(format!("{}: {e}", abs.display())))?
        .map_err(|e| TransferError::io(&abs, &e))?;
    Ok(opened.map(|(f, m)| (tokio::fs::File::from_std(f), m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(root: &Path, rel: &str) -> Option<String> {
        use std::io::Read;
        let (mut f, _) = open_file_beneath(root, rel).unwrap()?;
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        Some(s)
    }

    #[test]
    fn files_are_reached_only_through_real_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a/b/f"), "inside").unwrap();
        std::fs::write(outside.join("f"), "outside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        std::os::unix::fs::symlink("f", root.join("a/b/flink")).unwrap();
        std::os::unix::fs::symlink(".", root.join("a/loop")).unwrap();

        assert_eq!(read(&root, "a/b/f").as_deref(), Some("inside"));
        assert_eq!(
            read(&root, "a/link/f"),
            None,
            "through a symlinked directory"
        );
        assert_eq!(read(&root, "a/b/flink"), None, "a symlink itself");
        assert_eq!(read(&root, "a/loop/loop/b/f"), None, "through a loop");
        assert_eq!(read(&root, "a/b"), None, "a directory is not a file");
        assert_eq!(read(&root, "a/b/f/x"), None, "below a file");
        assert_eq!(read(&root, "missing/f"), None);
        assert!(open_file_beneath(&root, "a/../a/b/f").is_err());
        assert!(open_file_beneath(&root, "/etc/passwd").is_err());
    }
}
