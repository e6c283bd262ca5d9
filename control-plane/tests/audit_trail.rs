//! The audit trail over a real SQLite file: sessions are one record from grant to end,
//! refusals and control changes are records, filters and visibility hold, and `verify` names
//! the entry after a row is changed, removed or inserted with SQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit_log;

use std::path::Path;
use std::sync::Arc;

use m87_control_plane::audit::AuditTrail;
use m87_control_plane::audit::verify::{Tamper, verify};
use m87_control_plane::store::EventStore;
use m87_control_plane::store::audit::{AuditQuery, AuditStore, Visibility};
use m87_control_plane::store::sqlite::{SqliteAuditStore, SqliteStore};
use m87_events::audit::Outcome;
use m87_events::domain::{
    DeviceEnrolled, MemberAdded, RegistrationApproved, RegistrationRequested, SessionClosed,
    SessionOpened, SessionRefused,
};
use m87_events::token::Operation;
use m87_events::{
    DeviceId, DomainEvent, Metadata, RequestId, Role, Scope, SessionId, StreamId, SystemInfo,
};

use audit_log::{append, by};

struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    log: Arc<dyn EventStore>,
    trail: AuditTrail,
    device: DeviceId,
}

fn all(limit: usize) -> AuditQuery {
    AuditQuery {
        visibility: Visibility::All,
        device: None,
        user: None,
        actions: vec![],
        outcome: None,
        since: None,
        until: None,
        before: None,
        changed_after: None,
        limit,
    }
}

/// An org-owned device with one approved registration, an exec that failed, a shell cut by a
/// revocation, a refusal at the grant and a member change.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m87.db");
    let log: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&db).unwrap());
    let store: Arc<dyn AuditStore> = Arc::new(SqliteAuditStore::open(&db).unwrap());
    let trail = AuditTrail::new(Arc::clone(&log), store);
    let device: DeviceId = "robot-1-id".parse().unwrap();
    let request = RequestId::new();
    let scope: Scope = "org:acme".parse().unwrap();
    append(
        log.as_ref(),
        StreamId::registration(&request),
        DomainEvent::RegistrationRequested(RegistrationRequested {
            request_id: request,
            device_id: device.clone(),
            name: "robot-1".parse().unwrap(),
            owner_scope: scope.clone(),
            system_info: SystemInfo::default(),
            claim_secret_hash: "ab".into(),
            expires_at: chrono::Utc::now(),
        }),
        Metadata::system("api"),
    )
    .await;
    append(
        log.as_ref(),
        StreamId::registration(&request),
        DomainEvent::RegistrationApproved(RegistrationApproved {
            request_id: request,
            device_id: device.clone(),
        }),
        by("alice@example.com"),
    )
    .await;
    append(
        log.as_ref(),
        StreamId::device(&device),
        DomainEvent::DeviceEnrolled(DeviceEnrolled {
            device_id: device.clone(),
            request_id: request,
            name: "robot-1".parse().unwrap(),
            owner_scope: scope,
            system_info: SystemInfo::default(),
        }),
        by("alice@example.com"),
    )
    .await;
    // Bob's exec exits 3; his shell is cut when his access goes (and was recorded).
    for (op, args, exit, reason, bytes) in [
        (
            Operation::Exec,
            serde_json::json!({"argv": ["sh", "-c", "exit 3"]}),
            Some(3),
            "exit",
            10,
        ),
        (
            Operation::Shell,
            serde_json::Value::Null,
            None,
            "access_revoked",
            4242,
        ),
    ] {
        let sid = SessionId::new();
        append(
            log.as_ref(),
            StreamId::session(&sid),
            DomainEvent::SessionOpened(SessionOpened {
                session_id: sid,
                device_id: device.clone(),
                operation: op,
                args,
                expires_at: chrono::Utc::now(),
                credential: None,
                relay: Some("127.0.0.1:8084".into()),
                recorded: false,
            }),
            by("bob@example.com"),
        )
        .await;
        append(
            log.as_ref(),
            StreamId::session(&sid),
            DomainEvent::SessionClosed(SessionClosed {
                session_id: sid,
                device_id: device.clone(),
                duration_ms: 1500,
                bytes_to_device: 7,
                bytes_from_device: bytes,
                exit_code: exit,
                signal: None,
                error: None,
                operation: Some(op),
                reason: Some(reason.into()),
                channels: vec![],
                channels_dropped: 0,
            }),
            Metadata::system("device"),
        )
        .await;
        if op == Operation::Shell {
            append(
                log.as_ref(),
                StreamId::session(&sid),
                DomainEvent::SessionRecordingStored(m87_events::domain::SessionRecordingStored {
                    session_id: sid,
                    device_id: device.clone(),
                    bytes: 512,
                    truncated: false,
                    max_bytes: 1 << 24,
                    sha256: "ab".repeat(32),
                }),
                Metadata::system("device"),
            )
            .await;
        }
    }
    append(
        log.as_ref(),
        StreamId::from_raw("refusal-1".into()),
        DomainEvent::SessionRefused(SessionRefused {
            session_id: Some(SessionId::new()),
            device_id: Some(device.clone()),
            refused_by: "grant".into(),
            code: "forbidden".into(),
            reason: "viewers may read a device's status but not operate it".into(),
            operation: Some(Operation::Exec),
        }),
        by("carol@example.com"),
    )
    .await;
    append(
        log.as_ref(),
        StreamId::org(&"acme".parse().unwrap()),
        DomainEvent::MemberAdded(MemberAdded {
            org_id: "acme".parse().unwrap(),
            email: "dave@example.com".parse().unwrap(),
            role: Role::Member,
        }),
        by("alice@example.com"),
    )
    .await;
    trail.catch_up().await.unwrap();
    Fixture {
        _dir: dir,
        db,
        log,
        trail,
        device,
    }
}

#[tokio::test]
async fn sessions_are_one_record_from_grant_to_end_and_refusals_are_records() {
    let f = fixture().await;
    let records = f.trail.store().query(&all(100)).await.unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    // Newest first; the closings and the enrollment are folded into their records.
    assert_eq!(
        actions,
        ["org", "exec", "shell", "exec", "approve", "register"]
    );
    let exec = &records[3];
    assert_eq!(exec.outcome, Outcome::Failed);
    assert_eq!(exec.exit_code, Some(3));
    assert_eq!(exec.user.as_deref(), Some("bob@example.com"));
    assert_eq!(exec.source_ip.as_deref(), Some("192.0.2.7"));
    assert_eq!(exec.args["argv"][2], "exit 3");
    assert_eq!(exec.relay.as_deref(), Some("127.0.0.1:8084"));
    assert_eq!(exec.duration_ms, Some(1500));
    assert_eq!(exec.device_name.as_deref(), Some("robot-1"));
    let shell = &records[2];
    assert_eq!(shell.reason.as_deref(), Some("access_revoked"));
    assert_eq!(shell.outcome, Outcome::Failed, "a cut session failed");
    assert_eq!(shell.bytes_from_device, Some(4242));
    assert_eq!(shell.recording.as_ref().map(|r| r.bytes), Some(512));
    let refused = &records[1];
    assert_eq!(refused.outcome, Outcome::Refused);
    assert_eq!(refused.refused_by.as_deref(), Some("grant"));
    assert_eq!(refused.reason.as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn filters_and_visibility() {
    let f = fixture().await;
    let store = f.trail.store();
    let q = |edit: &dyn Fn(&mut AuditQuery)| {
        let mut q = all(100);
        edit(&mut q);
        q
    };
    let count = |q: AuditQuery| async move { store.query(&q).await.unwrap().len() };
    assert_eq!(count(q(&|q| q.actions = vec!["exec".into()])).await, 2);
    assert_eq!(count(q(&|q| q.outcome = Some(Outcome::Refused))).await, 1);
    assert_eq!(
        count(q(&|q| q.user = Some("bob@example.com".into()))).await,
        2
    );
    assert_eq!(
        count(q(&|q| q.device = Some(f.device.to_string()))).await,
        5
    );
    assert_eq!(count(q(&|q| q.limit = 2)).await, 2);
    let newest = store.query(&all(1)).await.unwrap()[0].position;
    assert_eq!(count(q(&|q| q.before = Some(newest))).await, 5, "paging");
    // The org's admin sees the org's device and members; bob only his own sessions; a
    // stranger nothing.
    let scoped = |scopes: &[&str], user: &str| Visibility::Scoped {
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        user: user.into(),
    };
    let admin = scoped(&["user:alice@example.com", "org:acme"], "alice@example.com");
    assert_eq!(count(q(&|q| q.visibility = admin.clone())).await, 6);
    let bob = scoped(&["user:bob@example.com"], "bob@example.com");
    let seen = store
        .query(&q(&|q| q.visibility = bob.clone()))
        .await
        .unwrap();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|r| r.user.as_deref() == Some("bob@example.com"))
    );
    let eve = scoped(&["user:eve@example.com"], "eve@example.com");
    assert_eq!(count(q(&|q| q.visibility = eve.clone())).await, 0);
}

/// Positions of the listed entries that a time window (ms) holds, newest first, read with
/// a plain scan of the table: the reference for the indexed query.
fn in_window(db: &Path, since: Option<i64>, until: Option<i64>, scope: Option<&str>) -> Vec<u64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT position, time_ms, scope, user FROM audit WHERE listing = 1 ORDER BY position DESC")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .filter(|(_, t, _, _)| since.is_none_or(|s| *t >= s) && until.is_none_or(|u| *t < u))
    .filter(|(_, _, sc, user)| {
        scope.is_none_or(|s| {
            sc.as_deref() == Some(s) || user.as_deref() == Some("alice@example.com")
        })
    })
    .map(|(p, ..)| p as u64)
    .collect()
}

#[tokio::test]
async fn time_windows_hold_every_entry_even_after_the_clock_went_back() {
    let f = fixture().await;
    // Spread the entries one second apart, then put the clock back for two of them, as a
    // clock stepped back by NTP would have recorded them, and recompute the high water as
    // the store keeps it.
    sql(
        &f.db,
        "UPDATE audit SET time_ms = 1000000 + position * 1000;
         UPDATE audit SET time_ms = 1000000 + 1500 WHERE position IN (5, 6);
         UPDATE audit SET time_hw = w.hw
           FROM (SELECT position AS p, MAX(time_ms) OVER (ORDER BY position) AS hw FROM audit) AS w
          WHERE w.p = audit.position;",
    );
    let store = f.trail.store();
    let head = store.query(&all(1)).await.unwrap()[0].position as i64;
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap();
    let admin = Visibility::Scoped {
        scopes: vec!["user:alice@example.com".into(), "org:acme".into()],
        user: "alice@example.com".into(),
    };
    let mut checked = 0;
    for since in [
        None,
        Some(0),
        Some(1_001_000),
        Some(1_001_500),
        Some(1_004_000),
        Some(9_999_999),
    ] {
        for until in [
            None,
            Some(1_001_600),
            Some(1_003_000),
            Some(1_000_000 + head * 1000),
        ] {
            for (vis, scope) in [(Visibility::All, None), (admin.clone(), Some("org:acme"))] {
                let mut q = all(100);
                q.visibility = vis;
                q.since = since.map(at);
                q.until = until.map(at);
                let got: Vec<u64> = store
                    .query(&q)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.position)
                    .collect();
                let want = in_window(&f.db, since, until, scope);
                assert_eq!(got, want, "since {since:?} until {until:?} scope {scope:?}");
                checked += usize::from(!want.is_empty());
            }
        }
    }
    assert!(checked > 10, "most windows hold records");
    // The late entries are found by a window that ends before the clock went forward again.
    let mut q = all(100);
    q.until = Some(at(1_001_600));
    let got: Vec<u64> = store
        .query(&q)
        .await
        .unwrap()
        .iter()
        .map(|r| r.position)
        .collect();
    assert!(
        got.contains(&5) || got.contains(&6),
        "late entries in {got:?}"
    );
}

fn sql(db: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(statement).unwrap();
}

async fn check(db: &Path) -> Option<(Tamper, u64)> {
    let log = SqliteStore::open(db).unwrap();
    let trail = SqliteAuditStore::open(db).unwrap();
    verify(&trail, &log)
        .await
        .unwrap()
        .finding
        .map(|f| (f.kind, f.position))
}

#[tokio::test]
async fn verify_names_the_entry_changed_removed_or_inserted() {
    let f = fixture().await;
    let report = verify(f.trail.store().as_ref(), f.log.as_ref())
        .await
        .unwrap();
    assert_eq!(report.finding, None, "untouched");
    assert_eq!(report.checked, 10);
    let Fixture {
        _dir,
        db,
        log,
        trail,
        ..
    } = f;
    drop((log, trail));
    sql(&db, "PRAGMA wal_checkpoint(TRUNCATE);");
    let pristine = std::fs::read(&db).unwrap();
    let restore = || {
        let _ = std::fs::remove_file(db.with_extension("db-wal"));
        let _ = std::fs::remove_file(db.with_extension("db-shm"));
        std::fs::write(&db, &pristine).unwrap();
    };
    // An entry's text edited (bob's exec now `true`).
    sql(
        &db,
        "UPDATE audit SET entry = replace(entry, 'exit 3', 'true') WHERE position = 4",
    );
    assert_eq!(check(&db).await, Some((Tamper::Changed, 4)));
    restore();
    // The event edited in the log, the chain left alone.
    sql(
        &db,
        "UPDATE events SET data = replace(data, 'exit 3', 'true') WHERE global_position = 4",
    );
    assert_eq!(check(&db).await, Some((Tamper::LogChanged, 4)));
    restore();
    // An entry deleted (and its event).
    sql(
        &db,
        "DELETE FROM audit WHERE position = 6; DELETE FROM events WHERE global_position = 6",
    );
    assert_eq!(check(&db).await, Some((Tamper::Removed, 6)));
    restore();
    // An entry inserted after the last, with a made-up hash.
    sql(
        &db,
        "INSERT INTO audit (position, seq, time_ms, listing, action, outcome, entry, prev_hash, hash, record)
         SELECT 11, 11, time_ms, 1, 'exec', 'ok', entry, hash, 'f00d', record FROM audit WHERE position = 10",
    );
    assert_eq!(check(&db).await, Some((Tamper::Changed, 11)));
    restore();
    // The last entry removed and an earlier one copied in after it, hashes and all.
    sql(
        &db,
        "DELETE FROM audit WHERE position = 10;
         INSERT INTO audit (position, seq, time_ms, listing, action, outcome, entry, prev_hash, hash, record)
         SELECT 12, 12, time_ms, 1, 'org', 'ok', entry, prev_hash, hash, record FROM audit WHERE position = 9",
    );
    assert_eq!(check(&db).await, Some((Tamper::Removed, 10)));
    restore();
    // An event added to the log's middle is not in the chain.
    sql(
        &db,
        "DELETE FROM events WHERE global_position = 5;
         INSERT INTO events (global_position, event_id, stream_id, stream_version, event_type, schema_version, data, metadata, recorded_at)
         SELECT 5, '0190' || substr(event_id, 5), stream_id || 'x', stream_version, event_type, schema_version, data, metadata, recorded_at FROM events WHERE global_position = 4",
    );
    assert_eq!(check(&db).await, Some((Tamper::LogChanged, 5)));
}

#[tokio::test]
async fn a_refused_replay_stays_its_own_record_when_the_session_ends() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m87.db");
    let log: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&db).unwrap());
    let store: Arc<dyn AuditStore> = Arc::new(SqliteAuditStore::open(&db).unwrap());
    let trail = AuditTrail::new(Arc::clone(&log), store);
    let device: DeviceId = "robot-2-id".parse().unwrap();
    let sid = SessionId::new();
    let stream = StreamId::session(&sid);
    append(
        log.as_ref(),
        stream.clone(),
        DomainEvent::SessionOpened(SessionOpened {
            session_id: sid,
            device_id: device.clone(),
            operation: Operation::Exec,
            args: serde_json::json!({"argv": ["true"]}),
            expires_at: chrono::Utc::now(),
            credential: None,
            relay: None,
            recorded: false,
        }),
        by("bob@example.com"),
    )
    .await;
    // Folded between the events too: the second fold reads the grant from the store.
    trail.catch_up().await.unwrap();
    append(
        log.as_ref(),
        stream.clone(),
        DomainEvent::SessionRefused(SessionRefused {
            session_id: Some(sid),
            device_id: Some(device.clone()),
            refused_by: "relay".into(),
            code: "token_replayed".into(),
            reason: "session token was already used".into(),
            operation: None,
        }),
        Metadata::system("relay"),
    )
    .await;
    trail.catch_up().await.unwrap();
    append(
        log.as_ref(),
        stream,
        DomainEvent::SessionClosed(SessionClosed {
            session_id: sid,
            device_id: device.clone(),
            duration_ms: 5,
            bytes_to_device: 0,
            bytes_from_device: 3,
            exit_code: Some(0),
            signal: None,
            error: None,
            operation: Some(Operation::Exec),
            reason: Some("exit".into()),
            channels: vec![],
            channels_dropped: 0,
        }),
        Metadata::system("device"),
    )
    .await;
    trail.catch_up().await.unwrap();
    let records = trail.store().query(&all(10)).await.unwrap();
    let seen: Vec<(u64, &str, Outcome)> = records
        .iter()
        .map(|r| (r.position, r.event_type.as_str(), r.outcome))
        .collect();
    assert_eq!(
        seen,
        [
            (2, "SessionRefused", Outcome::Refused),
            (1, "SessionOpened", Outcome::Ok)
        ]
    );
    assert_eq!(records[0].user.as_deref(), Some("bob@example.com"));
}
