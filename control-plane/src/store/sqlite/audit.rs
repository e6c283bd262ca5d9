//! The SQLite audit store: the `audit` table (one row per event, indexed by device, user,
//! scope and session), each device's owner, and the export cursors, in the database file of
//! the event log (its own connection).

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use m87_events::audit::{AuditRecord, GENESIS};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::{blocking, open_database, unavailable};
use crate::store::StoreError;
use crate::store::audit::{
    AuditBatch, AuditQuery, AuditRow, AuditStore, DeviceInfo, StoredEntry, Visibility,
};

/// The SQLite audit store.
#[derive(Debug, Clone)]
pub struct SqliteAuditStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteAuditStore {
    /// Opens the audit store in the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Arc::new(Mutex::new(open_database(path)?)),
        })
    }
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        position: 0,
        reason: format!("audit record: {e}"),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(corrupt)
}

/// Inserts an entry; `time_hw` is the highest time of the entries up to it (see the schema
/// step "audit time windows").
fn insert_row(
    tx: &rusqlite::Transaction<'_>,
    row: &AuditRow,
    time_hw: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO audit (position, seq, time_ms, listing, device_id, scope, user,
             action, outcome, session_id, entry, prev_hash, hash, record, time_hw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .map_err(unavailable)?
    .execute(params![
        row.position as i64,
        row.seq as i64,
        row.record.time.timestamp_millis(),
        row.listing.code(),
        row.device_id,
        row.scope,
        row.user,
        row.record.action,
        row.record.outcome.as_str(),
        row.session_id,
        row.entry,
        row.prev_hash,
        row.hash,
        to_json(&row.record)?,
        time_hw,
    ])
    .map_err(unavailable)?;
    Ok(())
}

/// Who may read: one condition per way of seeing a record (none: everything). With a device
/// or a user asked for, their index narrows best: the conditions are written `+column` so
/// SQLite does not walk a whole organization's index instead.
fn visibility(q: &AuditQuery, args: &mut Vec<Sql>) -> Vec<String> {
    let Visibility::Scoped { scopes, user } = &q.visibility else {
        return vec![];
    };
    let plus = if q.device.is_some() || q.user.is_some() {
        "+"
    } else {
        ""
    };
    args.push(Sql::Text(user.clone()));
    let mut ors = vec![format!("{plus}user = ?{}", args.len())];
    for s in scopes {
        args.push(Sql::Text(s.clone()));
        ors.push(format!("{plus}scope = ?{}", args.len()));
    }
    ors
}

/// The WHERE clause and its parameters for a query, but for who may read it.
fn filter(q: &AuditQuery) -> (String, Vec<Sql>) {
    let mut clauses = vec![if q.wants_presence() {
        "listing IN (1, 2)".to_owned()
    } else {
        "listing = 1".to_owned()
    }];
    let mut args: Vec<Sql> = Vec::new();
    fn push(clause: &str, v: Sql, args: &mut Vec<Sql>, clauses: &mut Vec<String>) {
        args.push(v);
        clauses.push(clause.replace('?', &format!("?{}", args.len())));
    }
    if let Some(d) = &q.device {
        push(
            "device_id = ?",
            Sql::Text(d.clone()),
            &mut args,
            &mut clauses,
        );
    }
    if let Some(u) = &q.user {
        push("user = ?", Sql::Text(u.clone()), &mut args, &mut clauses);
    }
    if !q.actions.is_empty() {
        let mut marks = Vec::new();
        for a in &q.actions {
            args.push(Sql::Text(a.clone()));
            marks.push(format!("?{}", args.len()));
        }
        clauses.push(format!("action IN ({})", marks.join(", ")));
    }
    if let Some(o) = q.outcome {
        push(
            "outcome = ?",
            Sql::Text(o.as_str().to_owned()),
            &mut args,
            &mut clauses,
        );
    }
    if let Some(t) = q.since {
        push(
            "time_ms >= ?",
            Sql::Integer(t.timestamp_millis()),
            &mut args,
            &mut clauses,
        );
    }
    if let Some(t) = q.until {
        push(
            "time_ms < ?",
            Sql::Integer(t.timestamp_millis()),
            &mut args,
            &mut clauses,
        );
    }
    if let Some(b) = q.before {
        push(
            "position < ?",
            Sql::Integer(b as i64),
            &mut args,
            &mut clauses,
        );
    }
    if let Some(c) = q.changed_after {
        push("seq > ?", Sql::Integer(c as i64), &mut args, &mut clauses);
    }
    (clauses.join(" AND "), args)
}

/// Following (`changed_after`): the records changed since, oldest change first.
fn following_sql(q: &AuditQuery) -> (String, Vec<Sql>) {
    let (mut clause, mut args) = filter(q);
    let ors = visibility(q, &mut args);
    if !ors.is_empty() {
        clause = format!("{clause} AND ({})", ors.join(" OR "));
    }
    let sql = format!(
        "SELECT record FROM audit WHERE {clause} ORDER BY seq ASC LIMIT {}",
        q.limit
    );
    (sql, args)
}

/// The positions a time window can hold, found through `time_hw` (the highest time up to an
/// entry, never decreasing along the trail): every entry at or after `since` lies at or after
/// `from`; every entry before `until` lies before `to`, or is late (its time below the high
/// water, written after the clock went back), and late entries have their own index.
#[derive(Debug, Default)]
struct Window {
    from: Option<i64>,
    to: Option<i64>,
    /// Nothing is at or after `since`.
    empty: bool,
}

/// The first position whose time high water reaches `t` (ms): one index seek. It is also the
/// first entry recorded at or after `t`: the high water rises only at an entry that sets it,
/// and every entry before has a time below `t`.
fn first_reaching(conn: &Connection, t: i64) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached(
        "SELECT position FROM audit WHERE time_hw >= ?1 ORDER BY time_hw, position LIMIT 1",
    )
    .and_then(|mut s| s.query_row([t], |r| r.get(0)).optional())
    .map_err(unavailable)
}

impl Window {
    fn of(conn: &Connection, q: &AuditQuery) -> Result<Self, StoreError> {
        let first_reaching = |t: i64| first_reaching(conn, t);
        let mut w = Window::default();
        if let Some(since) = q.since {
            w.from = first_reaching(since.timestamp_millis())?;
            w.empty = w.from.is_none();
        }
        if let Some(until) = q.until {
            w.to = first_reaching(until.timestamp_millis())?;
        }
        Ok(w)
    }
}

/// A page, newest first: the positions of each way of seeing a record (each its own index
/// scan, newest first, stopping at the page size), merged, then the page's records. One
/// `OR` across the visibility conditions would let SQLite collect every visible position
/// and sort them, which is slow for an organization with most of the trail.
fn page_sql(q: &AuditQuery, w: &Window) -> (String, Vec<Sql>) {
    let (mut common, mut args) = filter(q);
    if let Some(from) = w.from {
        args.push(Sql::Integer(from));
        common = format!("{common} AND position >= ?{}", args.len());
    }
    let ors = visibility(q, &mut args);
    let ways = if ors.is_empty() {
        vec!["1".to_owned()]
    } else {
        ors
    };
    let n = q.limit;
    let mut parts = Vec::new();
    let mut scan = |table: &str, cond: String| {
        parts.push(format!(
            "SELECT position FROM (SELECT position FROM {table} WHERE {cond}
               ORDER BY position DESC LIMIT {n})"
        ));
    };
    let to = w.to.map(|to| {
        args.push(Sql::Integer(to));
        args.len()
    });
    for way in &ways {
        match to {
            None => scan("audit", format!("{common} AND {way}")),
            Some(t) => {
                scan("audit", format!("{common} AND {way} AND position < ?{t}"));
                scan(
                    "audit INDEXED BY audit_late",
                    format!("{common} AND {way} AND time_ms < time_hw AND position >= ?{t}"),
                );
            }
        }
    }
    let sql = format!(
        "SELECT record FROM audit WHERE position IN ({}) ORDER BY position DESC LIMIT {n}",
        parts.join(" UNION ALL ")
    );
    (sql, args)
}

#[async_trait]
impl AuditStore for SqliteAuditStore {
    async fn head(&self) -> Result<(u64, String), StoreError> {
        blocking(&self.conn, |conn| {
            let head: Option<(i64, String)> = conn
                .query_row(
                    "SELECT position, hash FROM audit ORDER BY position DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            Ok(head.map_or((0, GENESIS.to_owned()), |(p, h)| (p as u64, h)))
        })
        .await
    }

    async fn device(&self, device_id: &str) -> Result<Option<DeviceInfo>, StoreError> {
        let id = device_id.to_owned();
        blocking(&self.conn, move |conn| {
            let doc: Option<String> = conn
                .query_row(
                    "SELECT doc FROM audit_devices WHERE device_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            doc.map(|d| serde_json::from_str(&d).map_err(corrupt))
                .transpose()
        })
        .await
    }

    async fn session(&self, session_id: &str) -> Result<Option<AuditRecord>, StoreError> {
        let id = session_id.to_owned();
        blocking(&self.conn, move |conn| {
            let doc: Option<String> = conn
                .query_row(
                    "SELECT record FROM audit WHERE session_id = ?1 AND listing = 1
                     ORDER BY position LIMIT 1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            doc.map(|d| serde_json::from_str(&d).map_err(corrupt))
                .transpose()
        })
        .await
    }

    async fn commit(&self, batch: AuditBatch) -> Result<(), StoreError> {
        blocking(&self.conn, move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let (head, mut time_hw): (i64, i64) = tx
                .query_row(
                    "SELECT position, COALESCE(time_hw, time_ms) FROM audit
                     ORDER BY position DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?
                .unwrap_or((0, i64::MIN));
            for row in batch.rows.iter().filter(|r| r.position as i64 > head) {
                time_hw = time_hw.max(row.record.time.timestamp_millis());
                insert_row(&tx, row, time_hw)?;
            }
            for (sid, record, seq) in &batch.sessions {
                tx.prepare_cached(
                    "UPDATE audit SET record = ?1, outcome = ?2, seq = ?3
                     WHERE position = ?4 AND session_id = ?5 AND seq < ?3",
                )
                .map_err(unavailable)?
                .execute(params![
                    to_json(record)?,
                    record.outcome.as_str(),
                    *seq as i64,
                    record.position as i64,
                    sid
                ])
                .map_err(unavailable)?;
            }
            for (id, info) in &batch.devices {
                tx.execute(
                    "INSERT INTO audit_devices (device_id, doc) VALUES (?1, ?2)
                     ON CONFLICT (device_id) DO UPDATE SET doc = excluded.doc",
                    params![id, to_json(info)?],
                )
                .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let q = q.clone();
        blocking(&self.conn, move |conn| {
            let (sql, args) = if q.changed_after.is_some() {
                following_sql(&q)
            } else {
                let window = Window::of(conn, &q)?;
                if window.empty {
                    return Ok(vec![]);
                }
                page_sql(&q, &window)
            };
            let mut stmt = conn.prepare(&sql).map_err(unavailable)?;
            let rows = stmt
                .query_map(params_from_iter(args), |r| r.get::<_, String>(0))
                .map_err(unavailable)?;
            rows.map(|r| {
                r.map_err(unavailable)
                    .and_then(|t| serde_json::from_str(&t).map_err(corrupt))
            })
            .collect()
        })
        .await
    }

    async fn entries(&self, after: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError> {
        blocking(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT position, entry, prev_hash, hash FROM audit WHERE position > ?1
                     ORDER BY position LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after as i64, limit as i64], |r| {
                    Ok(StoredEntry {
                        position: r.get::<_, i64>(0)? as u64,
                        entry: r.get(1)?,
                        prev_hash: r.get(2)?,
                        hash: r.get(3)?,
                    })
                })
                .map_err(unavailable)?;
            rows.map(|r| r.map_err(unavailable)).collect()
        })
        .await
    }

    async fn first_since(
        &self,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<u64>, StoreError> {
        let ms = time.timestamp_millis();
        blocking(&self.conn, move |conn| {
            Ok(first_reaching(conn, ms)?.map(|p| p as u64))
        })
        .await
    }

    async fn cursor(&self, sink: &str) -> Result<Option<String>, StoreError> {
        let sink = sink.to_owned();
        blocking(&self.conn, move |conn| {
            conn.query_row(
                "SELECT cursor FROM audit_cursors WHERE sink = ?1",
                [sink],
                |r| r.get(0),
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn save_cursor(&self, sink: &str, cursor: &str) -> Result<(), StoreError> {
        let (sink, cursor) = (sink.to_owned(), cursor.to_owned());
        blocking(&self.conn, move |conn| {
            conn.execute(
                "INSERT INTO audit_cursors (sink, cursor) VALUES (?1, ?2)
                 ON CONFLICT (sink) DO UPDATE SET cursor = excluded.cursor",
                params![sink, cursor],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }
}
