//! The m87 file-transfer engine, used on both ends of a files channel: the CLI and the device
//! run the same code (the protocol is symmetric: whichever side receives files uses the same
//! safe writer, whichever sends uses the same tree walker). The device's side of a channel —
//! which path a request names and which role it takes — is the agent's
//! (`agent/src/services/files`).
//!
//! The frame sequences are documented in [`m87_events::tunnel::files`].
//!
//! # Layout
//!
//! - [`beneath`]: opening a file inside a tree without following a symlink below its root
//!   (what the sync roles read, hash and send).
//! - [`wire`]: frames of a files stream, counted (content bytes each way); [`TransferError`].
//! - [`tree`]: walking local trees into manifest entries; exclude patterns ([`tree::Excludes`]).
//! - [`write`](mod@write): writing safely: temporary file, fsync, metadata, rename; never through a
//!   symlink inside the tree; where a copy ends up (`cp` rules).
//! - [`stream`]: sending and receiving tree streams (push and pull).
//! - [`delta`]: the rsync-style delta algorithm (pure).
//! - [`sync`]: the two roles of a sync (source and destination) and their report; the roles
//!   themselves are in `sync_source` and `sync_dest`.
//! - [`Progress`]: how a transfer reports progress.

pub mod beneath;
pub mod delta;
pub mod stream;
pub mod sync;
mod sync_dest;
mod sync_source;
pub mod tree;
pub mod wire;
pub mod write;

pub use sync::{SyncParams, SyncReport};
pub use sync_dest::sync_destination;
pub use sync_source::sync_source;
pub use wire::{TransferError, Wire};

/// Reports transfer progress (the CLI draws a bar; the agent ignores it).
pub trait Progress: Send + Sync {
    /// The transfer will move about `total` content bytes.
    fn begin(&self, total: u64) {
        let _ = total;
    }
    /// `bytes` more content bytes were moved (or found already in place, for deltas).
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
