//! The listing channel (`m87 <device> ls`): a directory's entries.
//!
//! The device answers `ChannelAccepted` (or `Refused` with code `unavailable` when the path
//! does not exist or cannot be read), sends `Data` frames whose bytes are entries as JSON, one
//! per line, and ends with `Exit` (0).

use serde::{Deserialize, Serialize};

/// What to list (also the session's grant arguments: the device checks they match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// The directory (or file) on the device, as `m87 cp` takes it.
    pub path: String,
    /// Include entries whose names start with a dot.
    #[serde(default)]
    pub all: bool,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// A device, socket or pipe.
    Other,
}

/// One directory entry (or the single file that was asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its name (for a single file: the path as asked).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Where a symlink points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Permission and type bits (`st_mode`).
    pub mode: u32,
    /// Last modification.
    #[serde(default)]
    pub mtime: Option<chrono::DateTime<chrono::Utc>>,
    /// Owner's user id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner's name, when the device knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Group's name, when the device knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Entry {
    /// The mode as `ls -l` shows it: `drwxr-xr-x`, `-rw-r--r--`, `lrwxrwxrwx`.
    pub fn mode_string(&self) -> String {
        let kind = match self.kind {
            EntryKind::File => '-',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::Other => match self.mode & 0o170000 {
                0o020000 => 'c',
                0o060000 => 'b',
                0o010000 => 'p',
                0o140000 => 's',
                _ => '?',
            },
        };
        let mut s = String::with_capacity(10);
        s.push(kind);
        // (read, write, execute bits, special bit, letter when special+exec, when special only)
        let triads = [
            (6, 0o4000, 's', 'S'),
            (3, 0o2000, 's', 'S'),
            (0, 0o1000, 't', 'T'),
        ];
        for (shift, special, with_x, without_x) in triads {
            let bits = (self.mode >> shift) & 0o7;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            let x = bits & 1 != 0;
            s.push(match (self.mode & special != 0, x) {
                (true, true) => with_x,
                (true, false) => without_x,
                (false, true) => 'x',
                (false, false) => '-',
            });
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(kind: EntryKind, mode: u32) -> Entry {
        Entry {
            name: "x".into(),
            kind,
            target: None,
            size: 0,
            mode,
            mtime: None,
            uid: 0,
            gid: 0,
            owner: None,
            group: None,
        }
    }

    #[test]
    fn modes_read_as_ls_shows_them() {
        assert_eq!(entry(EntryKind::Dir, 0o040755).mode_string(), "drwxr-xr-x");
        assert_eq!(entry(EntryKind::File, 0o100644).mode_string(), "-rw-r--r--");
        assert_eq!(
            entry(EntryKind::Symlink, 0o120777).mode_string(),
            "lrwxrwxrwx"
        );
        assert_eq!(entry(EntryKind::File, 0o104755).mode_string(), "-rwsr-xr-x");
        assert_eq!(entry(EntryKind::Dir, 0o041777).mode_string(), "drwxrwxrwt");
        assert_eq!(
            entry(EntryKind::Other, 0o020620).mode_string(),
            "crw--w----"
        );
        assert_eq!(
            entry(EntryKind::Other, 0o010600).mode_string(),
            "prw-------"
        );
    }

    #[test]
    fn entries_round_trip_as_json_lines() {
        let mut e = entry(EntryKind::Symlink, 0o120777);
        e.target = Some("/etc/hosts".into());
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains(r#""kind":"symlink""#), "{line}");
        assert_eq!(serde_json::from_str::<Entry>(&line).unwrap(), e);
    }
}
