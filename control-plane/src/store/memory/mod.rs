//! The in-memory backend: the twin of the real ones, for fast tests and a store-less service.
//!
//! # Layout
//!
//! - [`MemoryStore`] (`events.rs`): the event store.
//! - [`MemoryReadStore`] (`read.rs`): the read store.
//! - [`MemoryAuditStore`] (`audit.rs`): the audit trail.

mod audit;
mod events;
mod read;

pub use audit::MemoryAuditStore;
pub use events::MemoryStore;
pub use read::MemoryReadStore;
