//! The MongoDB backend (fleet mode): several control planes share one replica set.
//!
//! # Layout
//!
//! - [`MongoStore`] (`events.rs`): the event store, and how it keeps the global order gap-free.
//! - [`MongoReadStore`] (`read.rs`): the read store (projection documents and checkpoints).
//! - [`MongoAuditStore`] (`audit.rs`): the audit trail.
//! - `transaction.rs`: one multi-document transaction with retries on write conflicts, shared by
//!   both stores.
//! - here: connecting, the schema migration, and collection handles and errors shared by both.

mod audit;
mod events;
mod read;
mod transaction;

pub use audit::MongoAuditStore;
pub use events::MongoStore;
pub use read::MongoReadStore;

use std::time::Duration;

use m87_migrations::mongo::is_unreachable;
use mongodb::bson::Document;
use mongodb::error::Error as MongoError;
use mongodb::options::{ClientOptions, CollectionOptions, ReadConcern, WriteConcern};
use mongodb::{Client, Collection, Database};

use super::StoreError;

/// Connects to the MongoDB at `uri` and selects `database`. Nothing is sent yet: an unreachable
/// server shows on the first operation, after the URI's `serverSelectionTimeoutMS` (5 s unless
/// the URI says otherwise).
pub async fn connect_database(uri: &str, database: &str) -> Result<Database, StoreError> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| StoreError::Unavailable(format!("invalid MongoDB URI: {e}")))?;
    if options.app_name.is_none() {
        options.app_name = Some("m87-control-plane".to_owned());
    }
    // An unreachable database should answer 503 within seconds, not after the driver's 30 s
    // default; a URI that sets these keeps its own.
    if options.server_selection_timeout.is_none() {
        options.server_selection_timeout = Some(Duration::from_secs(5));
    }
    if options.connect_timeout.is_none() {
        options.connect_timeout = Some(Duration::from_secs(5));
    }
    let client = Client::with_options(options)
        .map_err(|e| StoreError::Unavailable(format!("cannot set up the MongoDB client: {e}")))?;
    Ok(client.database(database))
}

/// Brings the schema of `db` up to date (see [`m87_migrations::mongo`]); returns the versions
/// applied now.
pub async fn migrate(db: &Database) -> Result<Vec<u32>, StoreError> {
    m87_migrations::mongo::migrate(db)
        .await
        .map_err(|e| StoreError::Unavailable(format!("MongoDB schema migration: {e}")))
}

/// A collection handle with majority read and write concern.
fn collection(db: &Database, name: &str) -> Collection<Document> {
    db.collection_with_options(
        name,
        CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .write_concern(WriteConcern::majority())
            .build(),
    )
}

/// Turns a driver error into [`StoreError::Unavailable`] that says what was being done.
fn unavailable(what: &str, e: &MongoError) -> StoreError {
    if is_unreachable(e) {
        StoreError::Unavailable(format!("cannot reach MongoDB while {what}: {e}"))
    } else {
        StoreError::Unavailable(format!("MongoDB failed while {what}: {e}"))
    }
}
