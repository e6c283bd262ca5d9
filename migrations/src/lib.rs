//! Versioned, idempotent schema steps for m87's stores, and upcasters that bring old event
//! versions up to the current schema before they are decoded.
//!
//! # Layout
//!
//! - [`sqlite`]: the SQLite schema steps, applied at start and recorded in `schema_migrations`.
//! - [`mongo`]: the MongoDB schema steps (fleet mode), applied under a lock and recorded in the
//!   `schema_migrations` collection.
//! - [`upcast`]: event upcasters, keyed by event type and the version they upgrade from.

pub mod mongo;
pub mod sqlite;
pub mod upcast;
