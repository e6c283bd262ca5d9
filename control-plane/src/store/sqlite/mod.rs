//! The SQLite backend (single machine): one file in the data directory, WAL journal, full sync.
//! The event log and the read models share the file; each store has its own connection.
//!
//! # Layout
//!
//! - [`SqliteStore`] (`events.rs`): the event store.
//! - [`SqliteReadStore`] (`read.rs`): the read store (projection documents and checkpoints).
//! - here: opening the database, and running blocking work off the async runtime.

mod events;
mod read;

pub use events::SqliteStore;
pub use read::SqliteReadStore;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::StoreError;

/// Opens (creating if needed) the database at `path` with m87's settings and brings its schema
/// up to date.
pub fn open_database(path: &Path) -> Result<Connection, StoreError> {
    let unavailable = |e: rusqlite::Error| {
        StoreError::Unavailable(format!("cannot open {}: {e}", path.display()))
    };
    let mut conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(unavailable)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(unavailable)?;
    m87_migrations::sqlite::migrate(&mut conn)
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(conn)
}

/// Runs blocking SQLite work off the async runtime.
async fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let conn = Arc::clone(conn);
    tokio::task::spawn_blocking(move || {
        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        work(&mut guard)
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}
