//! The copy and sync sub-protocol, carried on a [`super::Channel::Files`] stream.
//!
//! This module is the contract between `m87 cp` / `m87 sync` and the agent's file service. It is
//! sans-IO: message types, their framing rules and path validation; the agent crate drives them
//! over streams.
//!
//! # Framing
//!
//! Messages ([`FileMsg`]) travel as JSON in [`Frame::Control`] frames (each at most
//! [`MAX_CONTROL`](super::frame::MAX_CONTROL) bytes). File contents and delta literals travel in
//! [`Frame::Data`] frames of at most [`MAX_CHUNK`] bytes; [`Frame::Eof`] ends one file's
//! contents. Either side may send [`Frame::Error`] at any point: the transfer failed, the
//! sentence is for the user, and the sender closes the stream after it. A stream that ends
//! before the sequences below are complete is a failed transfer; a receiver never leaves a
//! partly written file under its final name.
//!
//! Paths inside a tree are relative to its root, `/`-separated, and must pass
//! [`validate_relative_path`]; the root itself is the empty path `""` (only where noted). A
//! receiver refuses any other path and never writes through a symlink inside its tree.
//!
//! ## Tree stream
//!
//! Used by push and pull: the entries of a file or a directory tree, parents before children.
//!
//! ```text
//! a file:       Control Entry{path:"", kind:file, …}  Data* Eof
//!               Control End
//! a directory:  Control Entry{path:"", kind:dir, …}
//!               ( Control Entry{kind:file, …}  Data* Eof   a file and its contents
//!               | Control Entry{kind:dir, …}               a directory
//!               | Control Entry{kind:symlink, target, …}   a symlink, recreated as one
//!               )*
//!               Control End
//! ```
//!
//! Modes and mtimes come with each entry; a directory's are applied after everything in it
//! is written. The sender follows the root if it is a symlink, and nothing below it; sockets,
//! FIFOs and devices are skipped.
//!
//! ## Push (client → device), `FileChannel::Push`
//!
//! ```text
//! client → device  Control Tree{name, kind, files, bytes}   what is coming
//! device → client  Control Ready{path}                      the resolved destination
//!                  (or Error: missing parent, directory without recursive, kind clash, …)
//! client → device  tree stream
//! device → client  Control Done{files, bytes}               everything is in place
//! ```
//!
//! The destination follows `cp`: if the requested path is an existing directory the source is
//! put inside it under `name`; otherwise the requested path becomes the copy.
//!
//! ## Pull (device → client), `FileChannel::Pull`
//!
//! ```text
//! device → client  Control Ready{path}                      the resolved source
//! device → client  Control Tree{name, kind, files, bytes}
//! device → client  tree stream
//! ```
//!
//! (or `Error` instead, e.g. no such file, directory without recursive). The client resolves its
//! local destination from `name` and `kind` as the device does for a push.
//!
//! ## Sync, `FileChannel::Sync`
//!
//! The *source* is the client when `to_device`, else the device; the other side is the
//! *destination*. Both sides leave paths matching `excludes` alone (neither sent nor deleted).
//!
//! ```text
//! device → client  Control Ready{path}                      the device's root (created if
//!                                                           needed, unless a dry run)
//! source → dest    Control Entry{…}* (no root, no digests)  the source manifest
//!                  Control End
//! dest → source    ( Control Want{path, digest?, signature?}
//!                    Control Signatures{blocks}*            when signature: until all blocks sent
//!                  )*
//!                  Control End
//! source → dest    for each Want, in order, one of:
//!                    Control Entry{…} Data* Eof             the whole file
//!                    Control Delta{…} (Control Copy{start, count} | Data)* Eof
//!                                                           copy the destination's blocks or
//!                                                           take literal bytes, in order
//!                    Control Same{path}                     digest equal: only metadata differs
//!                    Control Differs{path}                  dry run: would send
//!                    Control Vanished{path}                 gone since the manifest
//!                  Control End
//! dest → source    Control Changed{path, change}*           what changed (or would, dry run)
//!                  Control Done{files, bytes}
//! ```
//!
//! The destination decides: a file is wanted when it is missing, of another kind, or its size
//! differs; when only the mtime differs the destination sends its SHA-256 `digest` and the
//! source answers `Same` if its content is equal. A `Want` carries a `signature` (block
//! signatures of the destination's copy) when the file is large enough for a delta; the source
//! then answers with `Delta`. Directories and symlinks need no content: the destination creates
//! them from the manifest, replacing entries of another kind. After the source's `End` the
//! destination deletes extraneous entries (with `delete`; children first; a directory still
//! holding excluded entries stays), then sets directories' modes and mtimes. In a dry run the
//! source answers every `Want` with `Same` or `Differs` and the destination changes nothing.

use serde::{Deserialize, Serialize};

use super::frame::{DecodeError, Frame, MAX_CONTROL};
use crate::token::Operation;

/// Largest `Data` payload of a files stream (file contents, delta literals).
pub const MAX_CHUNK: usize = 256 * 1024;
/// Most block signatures in one [`FileMsg::Signatures`] message (keeps it under the control
/// frame limit).
pub const SIGNATURES_PER_MESSAGE: usize = 96;
/// Longest relative path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// What a files stream does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FileChannel {
    /// Client → device: write what follows under `path`.
    Push {
        /// Destination on the device.
        path: String,
        /// Whether directories may be sent.
        recursive: bool,
    },
    /// Device → client: send `path`.
    Pull {
        /// Source on the device.
        path: String,
        /// Whether a directory may be sent.
        recursive: bool,
    },
    /// Synchronise a tree between the client and `path` on the device.
    Sync {
        /// The device side of the sync.
        path: String,
        /// `true`: client → device; `false`: device → client.
        to_device: bool,
        /// Remove files on the receiving side that the sending side does not have.
        delete: bool,
        /// Glob patterns of paths to leave alone.
        excludes: Vec<String>,
        /// Only report what would change.
        dry_run: bool,
    },
}

impl FileChannel {
    /// The operation a session token must allow.
    pub fn operation(&self) -> Operation {
        match self {
            FileChannel::Push { .. } | FileChannel::Pull { .. } => Operation::Copy,
            FileChannel::Sync { .. } => Operation::Sync,
        }
    }

    /// The device-side path.
    pub fn path(&self) -> &str {
        match self {
            FileChannel::Push { path, .. }
            | FileChannel::Pull { path, .. }
            | FileChannel::Sync { path, .. } => path,
        }
    }
}

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
}

impl EntryKind {
    /// A word for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink => "symlink",
        }
    }
}

/// A modification time: seconds since the Unix epoch and nanoseconds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Mtime {
    /// Whole seconds since 1970-01-01T00:00:00Z (negative before).
    pub secs: i64,
    /// Nanoseconds, below 1,000,000,000.
    pub nanos: u32,
}

/// One entry of a manifest or tree stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Path relative to the tree's root (`""` for the root itself, where allowed).
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most; set-id bits are not restored).
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// Size in bytes (files; `0` otherwise). Informational for contents: `Eof` ends a file.
    #[serde(default)]
    pub size: u64,
    /// SHA-256 of the contents, lowercase hex, when the sender computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A symlink's target, as stored in the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The signature of one block of the destination's copy of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSignature {
    /// The weak rolling checksum (rsync style: two 16-bit sums).
    pub weak: u32,
    /// SHA-256 of the block, lowercase hex.
    pub strong: String,
}

/// Announces the block signatures following a [`FileMsg::Want`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureHeader {
    /// Bytes per block (the last block may be shorter).
    pub block_size: u32,
    /// Length of the destination's copy; the number of blocks is `len / block_size` rounded up.
    pub len: u64,
}

impl SignatureHeader {
    /// How many blocks the signature has.
    pub fn blocks(&self) -> u64 {
        if self.block_size == 0 {
            0
        } else {
            self.len.div_ceil(u64::from(self.block_size))
        }
    }
}

/// What a sync did (or would do) to one path of the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// It did not exist.
    Created,
    /// Its contents (or kind, or link target) changed.
    Updated,
    /// It was removed (`delete`).
    Deleted,
}

/// A message of the files sub-protocol (see the module docs for the sequences).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FileMsg {
    /// Announces a tree: the source's name (one path component), the root's kind, and how many
    /// files and content bytes follow.
    Tree {
        /// The source's last path component.
        name: String,
        /// The root's kind.
        kind: EntryKind,
        /// Regular files in the tree.
        files: u64,
        /// Their total size.
        bytes: u64,
    },
    /// Device → client: the device path the operation works on, resolved.
    Ready {
        /// Absolute path on the device.
        path: String,
    },
    /// An entry; for a file in a tree stream or a sync answer, its contents follow.
    Entry(Entry),
    /// A file sent as a delta against the destination's copy: `Copy` and `Data` follow.
    Delta(Entry),
    /// Delta instruction: copy blocks `start..start + count` of the destination's copy.
    Copy {
        /// First block index.
        start: u64,
        /// Number of consecutive blocks.
        count: u64,
    },
    /// Ends a tree stream, a manifest, a list of wants, or the answers to them.
    End,
    /// Sync, destination → source: send this file.
    Want {
        /// The file, as in the source's manifest.
        path: String,
        /// The destination's SHA-256 of its copy: answer `Same` if equal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        /// Block signatures of the destination's copy follow: answer with a `Delta`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<SignatureHeader>,
    },
    /// Block signatures, in block order, after a `Want` with a signature.
    Signatures {
        /// The next blocks (at most [`SIGNATURES_PER_MESSAGE`]).
        blocks: Vec<BlockSignature>,
    },
    /// Sync answer: the contents are equal; only metadata needs updating.
    Same {
        /// The file.
        path: String,
    },
    /// Sync answer in a dry run: the file would be sent.
    Differs {
        /// The file.
        path: String,
    },
    /// Sync answer: the file is gone (or no longer a file) since the manifest.
    Vanished {
        /// The file.
        path: String,
    },
    /// Sync report line: what happened to a path of the destination.
    Changed {
        /// The path.
        path: String,
        /// What happened.
        change: Change,
    },
    /// The receiving side finished: files written and content bytes received.
    Done {
        /// Files written.
        files: u64,
        /// Content bytes received (file data and delta literals).
        bytes: u64,
    },
}

/// A message too large for one control frame (a very long path, mostly).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message of {len} bytes exceeds the control frame limit of {max}")]
pub struct MessageTooLarge {
    /// Encoded length.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

impl FileMsg {
    /// The control frame carrying this message.
    pub fn to_frame(&self) -> Result<Frame, MessageTooLarge> {
        let frame = Frame::control(self);
        let len = frame.encoded_len() - super::frame::HEADER_LEN;
        if len > MAX_CONTROL {
            return Err(MessageTooLarge {
                len,
                max: MAX_CONTROL,
            });
        }
        Ok(frame)
    }

    /// Parses a control frame's payload.
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        Frame::parse_control(payload)
    }

    /// A short name for protocol errors ("expected End, got want").
    pub fn name(&self) -> &'static str {
        match self {
            FileMsg::Tree { .. } => "tree",
            FileMsg::Ready { .. } => "ready",
            FileMsg::Entry(_) => "entry",
            FileMsg::Delta(_) => "delta",
            FileMsg::Copy { .. } => "copy",
            FileMsg::End => "end",
            FileMsg::Want { .. } => "want",
            FileMsg::Signatures { .. } => "signatures",
            FileMsg::Same { .. } => "same",
            FileMsg::Differs { .. } => "differs",
            FileMsg::Vanished { .. } => "vanished",
            FileMsg::Changed { .. } => "changed",
            FileMsg::Done { .. } => "done",
        }
    }
}

/// Why a relative path from the peer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty where a name is needed.
    #[error("empty path")]
    Empty,
    /// It starts with `/`.
    #[error("absolute path")]
    Absolute,
    /// It has a `..` component.
    #[error("path leaves its directory (`..`)")]
    ParentDir,
    /// It has a `.` component.
    #[error("path has a `.` component")]
    CurrentDir,
    /// It has an empty component (`a//b`, a trailing `/`).
    #[error("path has an empty component")]
    EmptyComponent,
    /// It contains a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
    /// It is longer than [`MAX_PATH_LEN`].
    #[error("path is too long")]
    TooLong,
    /// A single name was expected and it has a `/`.
    #[error("name contains `/`")]
    Separator,
}

/// Checks a path relative to a tree's root, as received from the peer: not empty, not
/// absolute, no `..`, `.` or empty components, no NUL, at most [`MAX_PATH_LEN`] bytes. A path
/// that passes names something inside the root (as long as no component is a symlink, which
/// receivers check on the file system).
pub fn validate_relative_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." => return Err(PathError::CurrentDir),
            ".." => return Err(PathError::ParentDir),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a single name (one path component), as in [`FileMsg::Tree`].
pub fn validate_name(name: &str) -> Result<(), PathError> {
    validate_relative_path(name)?;
    if name.contains('/') {
        return Err(PathError::Separator);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Fuzz target for the file-transfer message decoder: arbitrary bytes and arbitrary
        /// JSON-ish text never panic it; whatever parses re-encodes and parses to the same message.
        #[test]
        fn file_message_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), text in "\\PC{0,200}") {
            for input in [bytes.as_slice(), text.as_bytes()] {
                if let Ok(m) = FileMsg::parse(input) {
                    prop_assert_eq!(round_trip(&m), m);
                }
            }
        }
    }

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime: Mtime {
                secs: 1_700_000_000,
                nanos: 123_456_789,
            },
            size: 42,
            digest: Some("ab".repeat(32)),
            target: (kind == EntryKind::Symlink).then(|| "../elsewhere".into()),
        }
    }

    fn round_trip(msg: &FileMsg) -> FileMsg {
        let frame = msg.to_frame().unwrap();
        let Frame::Control(payload) = Frame::decode(&frame.to_bytes()).unwrap().0 else {
            panic!("not a control frame")
        };
        FileMsg::parse(&payload).unwrap()
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let msgs = vec![
            FileMsg::Tree {
                name: "photos".into(),
                kind: EntryKind::Dir,
                files: 1000,
                bytes: 1 << 40,
            },
            FileMsg::Ready {
                path: "/home/pi/photos".into(),
            },
            FileMsg::Entry(entry("a/b.txt", EntryKind::File)),
            FileMsg::Entry(entry("", EntryKind::Dir)),
            FileMsg::Entry(Entry {
                digest: None,
                ..entry("a/link", EntryKind::Symlink)
            }),
            FileMsg::Delta(entry("big.bin", EntryKind::File)),
            FileMsg::Copy {
                start: 7,
                count: 300,
            },
            FileMsg::End,
            FileMsg::Want {
                path: "x".into(),
                digest: None,
                signature: None,
            },
            FileMsg::Want {
                path: "big.bin".into(),
                digest: Some("00".repeat(32)),
                signature: Some(SignatureHeader {
                    block_size: 65536,
                    len: 20_000_000,
                }),
            },
            FileMsg::Signatures {
                blocks: vec![
                    BlockSignature {
                        weak: u32::MAX,
                        strong: "ff".repeat(32),
                    };
                    SIGNATURES_PER_MESSAGE
                ],
            },
            FileMsg::Same { path: "s".into() },
            FileMsg::Differs { path: "d".into() },
            FileMsg::Vanished { path: "v".into() },
            FileMsg::Changed {
                path: "c".into(),
                change: Change::Deleted,
            },
            FileMsg::Done {
                files: 3,
                bytes: 99,
            },
        ];
        for m in msgs {
            assert_eq!(round_trip(&m), m, "{}", m.name());
        }
    }

    #[test]
    fn wire_format_is_stable_json() {
        let f = FileMsg::Entry(Entry {
            digest: None,
            ..entry("a", EntryKind::File)
        })
        .to_frame()
        .unwrap();
        let Frame::Control(p) = f else { panic!() };
        assert_eq!(
            std::str::from_utf8(&p).unwrap(),
            r#"{"type":"entry","path":"a","kind":"file","mode":420,"mtime":{"secs":1700000000,"nanos":123456789},"size":42}"#
        );
        assert_eq!(
            FileMsg::parse(br#"{"type":"copy","start":1,"count":2}"#).unwrap(),
            FileMsg::Copy { start: 1, count: 2 }
        );
        assert!(FileMsg::parse(br#"{"type":"copy","start":1,"count":2,"x":1}"#).is_err());
        assert!(FileMsg::parse(br#"{"type":"teleport"}"#).is_err());
        assert!(FileMsg::parse(b"garbage").is_err());
    }

    #[test]
    fn file_channels_round_trip() {
        let ops = [
            FileChannel::Push {
                path: "/tmp/x".into(),
                recursive: true,
            },
            FileChannel::Pull {
                path: "~/y".into(),
                recursive: false,
            },
            FileChannel::Sync {
                path: "/srv/app".into(),
                to_device: true,
                delete: true,
                excludes: vec!["*.log".into(), "target/".into()],
                dry_run: false,
            },
        ];
        for op in ops {
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(serde_json::from_str::<FileChannel>(&json).unwrap(), op);
        }
    }

    #[test]
    fn oversized_messages_are_refused_before_sending() {
        let long = FileMsg::Ready {
            path: "x".repeat(MAX_CONTROL),
        };
        assert!(long.to_frame().is_err());
        // A full signatures message with the largest values fits.
        let sigs = FileMsg::Signatures {
            blocks: vec![
                BlockSignature {
                    weak: u32::MAX,
                    strong: "f".repeat(64),
                };
                SIGNATURES_PER_MESSAGE
            ],
        };
        assert!(sigs.to_frame().is_ok());
        // So does an entry with a maximal path and a long target.
        let e = FileMsg::Entry(Entry {
            path: "a".repeat(MAX_PATH_LEN),
            target: Some("b".repeat(MAX_PATH_LEN)),
            ..entry("", EntryKind::Symlink)
        });
        assert!(e.to_frame().is_ok());
    }

    #[test]
    fn malicious_relative_paths_are_refused() {
        for (path, err) in [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("..", PathError::ParentDir),
            ("../x", PathError::ParentDir),
            ("a/../../x", PathError::ParentDir),
            ("a/..", PathError::ParentDir),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("./a", PathError::CurrentDir),
            ("a/./b", PathError::CurrentDir),
            ("a\0b", PathError::Nul),
        ] {
            assert_eq!(validate_relative_path(path), Err(err), "{path:?}");
        }
        assert_eq!(
            validate_relative_path(&"a".repeat(MAX_PATH_LEN + 1)),
            Err(PathError::TooLong)
        );
        for ok in [
            "a",
            "a/b/c",
            "..a",
            "a..",
            ".hidden/x",
            "sp ace/ü",
            "a\\..\\b",
        ] {
            assert_eq!(validate_relative_path(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_name("a/b"), Err(PathError::Separator));
        assert_eq!(validate_name(".."), Err(PathError::ParentDir));
        assert_eq!(validate_name("photos"), Ok(()));
    }

    #[test]
    fn signature_header_counts_blocks() {
        let h = |len| SignatureHeader {
            block_size: 10,
            len,
        };
        assert_eq!(h(0).blocks(), 0);
        assert_eq!(h(1).blocks(), 1);
        assert_eq!(h(10).blocks(), 1);
        assert_eq!(h(11).blocks(), 2);
    }
}
