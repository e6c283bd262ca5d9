//! `m87 <device> ls`: a directory's entries (or the single file asked for), sorted by name,
//! as JSON lines in `Data` frames, then `Exit` (0). Paths are resolved as `m87 cp` resolves
//! them: `~` and relative paths from the agent's home directory.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use m87_events::tunnel::listing::{Entry, EntryKind, ListRequest};
use m87_events::tunnel::{ExitStatus, Frame};
use m87_transport::frames::{FrameReader, write_frame};
use tokio::io::AsyncWriteExt;

use super::files::resolve_device_path;
use super::{BoxRead, BoxWrite, ChannelOutcome, accept, unavailable};

/// Entries per `Data` frame.
const ENTRIES_PER_FRAME: usize = 256;

/// Lists the path.
pub async fn serve(
    request: ListRequest,
    _reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
) -> ChannelOutcome {
    let listed = tokio::task::spawn_blocking(move || list(&request)).await;
    let entries = match listed {
        Ok(Ok(entries)) => entries,
        Ok(Err(message)) => return unavailable(&mut writer, message).await,
        Err(e) => return unavailable(&mut writer, format!("listing failed: {e}")).await,
    };
    match send(&mut writer, &entries).await {
        Ok(()) => ChannelOutcome {
            exit: Some(ExitStatus::Code(0)),
            error: None,
        },
        Err(e) => ChannelOutcome {
            exit: None,
            error: Some(format!("client disconnected: {e}")),
        },
    }
}

async fn send(writer: &mut BoxWrite, entries: &[Entry]) -> std::io::Result<()> {
    accept(writer).await?;
    for chunk in entries.chunks(ENTRIES_PER_FRAME) {
        let mut lines = Vec::new();
        for entry in chunk {
            serde_json::to_writer(&mut lines, entry).map_err(std::io::Error::other)?;
            lines.push(b'\n');
        }
        write_frame(writer, &Frame::Data(Bytes::from(lines))).await?;
    }
    write_frame(writer, &Frame::Exit(ExitStatus::Code(0))).await?;
    writer.shutdown().await
}

/// The entries of `request.path` sorted by name, or a sentence naming the path and the error.
pub fn list(request: &ListRequest) -> Result<Vec<Entry>, String> {
    let path = resolve_device_path(&request.path).map_err(|e| format!("{}: {e}", request.path))?;
    let failed = |e: std::io::Error| format!("cannot list {}: {e}", path.display());
    let meta = std::fs::symlink_metadata(&path).map_err(failed)?;
    let names = Names::load();
    if !meta.is_dir() {
        return Ok(vec![entry(request.path.clone(), &path, &meta, &names)]);
    }
    let mut entries = Vec::new();
    for item in std::fs::read_dir(&path).map_err(failed)? {
        let item = item.map_err(failed)?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && !request.all {
            continue;
        }
        let full = item.path();
        // An entry that vanished meanwhile is left out.
        if let Ok(meta) = std::fs::symlink_metadata(&full) {
            entries.push(entry(name, &full, &meta, &names));
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn entry(name: String, path: &Path, meta: &Metadata, names: &Names) -> Entry {
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        EntryKind::Symlink
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    let target = (kind == EntryKind::Symlink)
        .then(|| std::fs::read_link(path).ok())
        .flatten()
        .map(|t| t.to_string_lossy().into_owned());
    Entry {
        name,
        kind,
        target,
        size: meta.len(),
        mode: meta.mode(),
        mtime: chrono::DateTime::from_timestamp(meta.mtime(), meta.mtime_nsec() as u32),
        uid: meta.uid(),
        gid: meta.gid(),
        owner: names.users.get(&meta.uid()).cloned(),
        group: names.groups.get(&meta.gid()).cloned(),
    }
}

/// User and group names by id, from the device's user database.
struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn load() -> Self {
        let users = sysinfo::Users::new_with_refreshed_list()
            .map(|u| u.iter().map(|u| (**u.id(), u.name().to_owned())).collect())
            .unwrap_or_default();
        let groups = sysinfo::Groups::new_with_refreshed_list()
            .map(|g| g.iter().map(|g| (**g.id(), g.name().to_owned())).collect())
            .unwrap_or_default();
        Self { users, groups }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn names(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn a_directory_is_listed_by_name_with_kinds_and_dotfiles_only_with_all() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "hello").unwrap();
        std::fs::create_dir(dir.path().join("a-dir")).unwrap();
        std::fs::write(dir.path().join(".hidden"), "").unwrap();
        std::os::unix::fs::symlink("b.txt", dir.path().join("c-link")).unwrap();
        let path = dir.path().display().to_string();
        let plain = list(&ListRequest {
            path: path.clone(),
            all: false,
        })
        .unwrap();
        assert_eq!(names(&plain), ["a-dir", "b.txt", "c-link"]);
        assert_eq!(plain[0].kind, EntryKind::Dir);
        assert_eq!((plain[1].kind, plain[1].size), (EntryKind::File, 5));
        assert_eq!(plain[2].kind, EntryKind::Symlink);
        assert_eq!(plain[2].target.as_deref(), Some("b.txt"));
        assert_eq!(plain[1].uid, rustix::process::getuid().as_raw());
        assert_eq!(plain[1].mode & 0o170000, 0o100000);
        let all = list(&ListRequest { path, all: true }).unwrap();
        assert_eq!(names(&all), [".hidden", "a-dir", "b.txt", "c-link"]);
    }

    #[test]
    fn a_file_is_listed_alone_and_a_missing_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let one = list(&ListRequest {
            path: file.display().to_string(),
            all: false,
        })
        .unwrap();
        assert_eq!(names(&one), [file.display().to_string().as_str()]);
        let missing = dir.path().join("nope");
        let err = list(&ListRequest {
            path: missing.display().to_string(),
            all: false,
        })
        .unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("No such file"), "{err}");
    }
}
