//! The copy and sync sub-protocol, carried on a [`super::Channel::Files`] stream.
//!
//! This module is the contract between `m87 cp` / `m87 sync` and the agent's file service.

use serde::{Deserialize, Serialize};

use crate::token::Operation;

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
