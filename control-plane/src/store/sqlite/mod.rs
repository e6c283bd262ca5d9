//! The SQLite backend (single machine): one file in the data directory, WAL journal, full sync.
//! The event log and the read models share the file; each store has its own connection.
//!
//! # Layout
//!
//! - [`SqliteStore`] (`events.rs`): the event store.
//! - [`SqliteReadStore`] (`read.rs`): the read store (projection documents and checkpoints).
//! - [`SqliteAuditStore`] (`audit.rs`): the audit trail (chained entries, listing records).
//! - here: opening the database (its files 0600), and running blocking work off the async
//!   runtime.

mod audit;
mod events;
mod read;

pub use audit::SqliteAuditStore;
pub use events::SqliteStore;
pub use read::SqliteReadStore;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::StoreError;

/// Mode of the database file and of its `-wal` and `-shm` files: the owner's only.
pub const DATABASE_MODE: u32 = 0o600;

/// Opens (creating if needed) the database at `path` with m87's settings and brings its schema
/// up to date. The file is created 0600 (SQLite gives its `-wal` and `-shm` files the mode of
/// the database file); an existing file, and its `-wal` and `-shm`, are set to 0600.
pub fn open_database(path: &Path) -> Result<Connection, StoreError> {
    restrict_database_files(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot protect {}: {e}", path.display())))?;
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

/// Creates the database file 0600 when missing, and sets the database file and its `-wal` and
/// `-shm` files to 0600 when their modes differ.
fn restrict_database_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // Never open (and so close) a descriptor of an existing database: closing any descriptor
    // of a file drops every POSIX lock this process holds on it, including those of SQLite
    // connections already open on it (a second store on the same file), which breaks WAL
    // coordination. Only a missing file is created here; modes are set by path.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DATABASE_MODE)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let meta = match std::fs::metadata(&file) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.permissions().mode() & 0o777 != DATABASE_MODE {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(DATABASE_MODE))?;
        }
    }
    Ok(())
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
