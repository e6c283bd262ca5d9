//! SQLite schema steps.
//!
//! Each step has a version, a name and SQL that is safe to run twice, or (an added column)
//! that only its transaction guards: it commits with its record or not at all. [`migrate`] applies the
//! steps newer than what `schema_migrations` records, each in its own transaction together with
//! its record, so a crash between steps leaves a database that the next start finishes upgrading.

use rusqlite::{Connection, params};

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Monotonic version, from 1.
    pub version: u32,
    /// What the step does.
    pub name: &'static str,
    /// The SQL: idempotent, or all-or-nothing in the step's transaction.
    pub sql: &'static str,
}

/// Every step, in order.
pub const STEPS: &[Step] = &[
    Step {
        version: 1,
        name: "event log",
        sql: "
            CREATE TABLE IF NOT EXISTS events (
                global_position INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id        TEXT    NOT NULL UNIQUE,
                stream_id       TEXT    NOT NULL,
                stream_version  INTEGER NOT NULL,
                event_type      TEXT    NOT NULL,
                schema_version  INTEGER NOT NULL,
                data            TEXT    NOT NULL,
                metadata        TEXT    NOT NULL,
                recorded_at     TEXT    NOT NULL
            );
            CREATE UNIQUE INDEX IF NOT EXISTS events_stream_version
                ON events (stream_id, stream_version);
        ",
    },
    Step {
        version: 2,
        name: "read models and projection checkpoints",
        sql: "
            CREATE TABLE IF NOT EXISTS read_models (
                collection TEXT NOT NULL,
                id         TEXT NOT NULL,
                doc        TEXT NOT NULL,
                PRIMARY KEY (collection, id)
            );
            CREATE TABLE IF NOT EXISTS projection_checkpoints (
                name     TEXT PRIMARY KEY,
                position INTEGER NOT NULL
            );
        ",
    },
    Step {
        version: 3,
        name: "audit trail",
        sql: "
            CREATE TABLE IF NOT EXISTS audit (
                position   INTEGER PRIMARY KEY,
                seq        INTEGER NOT NULL,
                time_ms    INTEGER NOT NULL,
                listing    INTEGER NOT NULL,
                device_id  TEXT,
                scope      TEXT,
                user       TEXT,
                action     TEXT NOT NULL,
                outcome    TEXT NOT NULL,
                session_id TEXT,
                entry      TEXT NOT NULL,
                prev_hash  TEXT NOT NULL,
                hash       TEXT NOT NULL,
                record     TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS audit_device ON audit (device_id, position);
            CREATE INDEX IF NOT EXISTS audit_user ON audit (user, position);
            CREATE INDEX IF NOT EXISTS audit_scope ON audit (scope, position);
            CREATE INDEX IF NOT EXISTS audit_session ON audit (session_id);
            CREATE INDEX IF NOT EXISTS audit_seq ON audit (seq);
            CREATE TABLE IF NOT EXISTS audit_devices (
                device_id TEXT PRIMARY KEY,
                doc       TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS audit_cursors (
                sink   TEXT PRIMARY KEY,
                cursor TEXT NOT NULL
            );
        ",
    },
    Step {
        version: 4,
        name: "audit time windows",
        // `time_hw`: the highest time of the entries up to this one, never decreasing along
        // the trail, so a time bound becomes a position bound found by one index seek; the
        // entries whose time is below it (written after the clock went back) are few and
        // have their own partial index. Runs once, with its record, in one transaction (an
        // added column cannot be added again).
        sql: "
            ALTER TABLE audit ADD COLUMN time_hw INTEGER;
            UPDATE audit SET time_hw = w.hw
              FROM (SELECT position AS p, MAX(time_ms) OVER (ORDER BY position) AS hw FROM audit) AS w
             WHERE w.p = audit.position;
            CREATE INDEX IF NOT EXISTS audit_time_hw ON audit (time_hw);
            CREATE INDEX IF NOT EXISTS audit_late ON audit (position) WHERE time_ms < time_hw;
        ",
    },
];

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// SQLite refused a statement.
    #[error("schema migration {version} ({name}) failed: {source}")]
    Step {
        /// The failing step.
        version: u32,
        /// Its name.
        name: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The bookkeeping table could not be read or created.
    #[error("cannot read applied schema migrations: {0}")]
    Bookkeeping(#[from] rusqlite::Error),
    /// The database was written by a newer m87.
    #[error(
        "database schema version {found} is newer than this build knows ({known}); upgrade m87"
    )]
    TooNew {
        /// Highest recorded version.
        found: u32,
        /// Highest version this build has.
        known: u32,
    },
}

/// The highest recorded schema version, 0 for a new database.
pub fn current_version(conn: &Connection) -> Result<u32, MigrateError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            name       TEXT NOT NULL,
            applied_at TEXT NOT NULL
        );",
    )?;
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?)
}

/// Applies every pending step of `steps`; returns the versions applied now.
pub fn migrate_with(conn: &mut Connection, steps: &[Step]) -> Result<Vec<u32>, MigrateError> {
    let known = steps.iter().map(|s| s.version).max().unwrap_or(0);
    let found = current_version(conn)?;
    if found > known {
        return Err(MigrateError::TooNew { found, known });
    }
    let mut applied = Vec::new();
    for step in steps.iter().filter(|s| s.version > found) {
        let wrap = |source| MigrateError::Step {
            version: step.version,
            name: step.name,
            source,
        };
        let tx = conn.transaction().map_err(wrap)?;
        tx.execute_batch(step.sql).map_err(wrap)?;
        tx.execute(
            "INSERT OR IGNORE INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![step.version, step.name, chrono::Utc::now().to_rfc3339()],
        )
        .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        applied.push(step.version);
    }
    Ok(applied)
}

/// Applies every pending step of [`STEPS`].
pub fn migrate(conn: &mut Connection) -> Result<Vec<u32>, MigrateError> {
    migrate_with(conn, STEPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_once_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m87.db");
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(migrate(&mut conn).unwrap(), Vec::<u32>::new());
        drop(conn);
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(current_version(&conn).unwrap(), 4);
        assert!(migrate(&mut conn).unwrap().is_empty());
    }

    #[test]
    fn older_database_upgrades_in_place_keeping_data() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate_with(&mut conn, &STEPS[..1]).unwrap(), vec![1]);
        conn.execute(
            "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata, recorded_at)
             VALUES ('e1', 's', 1, 'T', 1, '{}', '{}', 'now')",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), vec![2, 3, 4]);
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('read_models', 'projection_checkpoints')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2);
    }

    #[test]
    fn audit_time_high_water_is_filled_for_existing_entries() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate_with(&mut conn, &STEPS[..3]).unwrap(), vec![1, 2, 3]);
        // The clock went back at position 3.
        for (position, time) in [(1, 100), (2, 200), (3, 150), (4, 300)] {
            conn.execute(
                "INSERT INTO audit (position, seq, time_ms, listing, action, outcome, entry,
                                    prev_hash, hash, record)
                 VALUES (?1, ?1, ?2, 1, 'exec', 'ok', '', '', '', '{}')",
                [position, time],
            )
            .unwrap();
        }
        assert_eq!(migrate(&mut conn).unwrap(), vec![4]);
        let hw: Vec<(i64, i64)> = conn
            .prepare("SELECT position, time_hw FROM audit ORDER BY position")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(hw, vec![(1, 100), (2, 200), (3, 200), (4, 300)]);
        let late: Vec<i64> = conn
            .prepare("SELECT position FROM audit WHERE time_ms < time_hw")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(late, vec![3]);
    }

    #[test]
    fn newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations VALUES (99, 'future', 'now')",
            [],
        )
        .unwrap();
        assert!(matches!(
            migrate(&mut conn).unwrap_err(),
            MigrateError::TooNew { found: 99, .. }
        ));
    }
}
