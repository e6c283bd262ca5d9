//! The MongoDB audit store against the SQLite one: the same event log folded into each gives
//! the same answers to every query, the same chained entries, devices, session records and
//! cursors, also when two replicas fold the MongoDB trail at the same time; and a batch that
//! another replica already committed (a replica lagging behind) never puts back an older
//! state of a session record.
//!
//! Runs against `MONGODB_URI` or a `secantusd-py` started by the harness (see `support::mongo`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit_log;

mod support;

use std::sync::Arc;

use m87_control_plane::audit::AuditTrail;
use m87_control_plane::store::EventStore;
use m87_control_plane::store::audit::{AuditBatch, AuditQuery, AuditStore, Visibility};
use m87_control_plane::store::mongo::{MongoAuditStore, connect_database};
use m87_control_plane::store::sqlite::{SqliteAuditStore, SqliteStore};
use m87_events::audit::Outcome;
use m87_events::domain::{
    DeviceConnected, DeviceDisconnected, DeviceEnrolled, MemberAdded, RegistrationRequested,
    SessionClosed, SessionOpened, SessionRecordingStored, SessionRefused,
};
use m87_events::token::Operation;
use m87_events::{
    DeviceId, DomainEvent, Metadata, RequestId, Role, Scope, SessionId, StreamId, SystemInfo,
};
use serde_json::Value;
use support::mongo::{MongoServer, unique_name};

use audit_log::{append, by};

async fn enroll(log: &dyn EventStore, device: &DeviceId, name: &str, scope: &str) {
    let request = RequestId::new();
    let scope: Scope = scope.parse().unwrap();
    append(
        log,
        StreamId::registration(&request),
        DomainEvent::RegistrationRequested(RegistrationRequested {
            request_id: request,
            device_id: device.clone(),
            name: name.parse().unwrap(),
            owner_scope: scope.clone(),
            system_info: SystemInfo::default(),
            claim_secret_hash: "ab".into(),
            expires_at: chrono::Utc::now(),
        }),
        Metadata::system("api"),
    )
    .await;
    append(
        log,
        StreamId::device(device),
        DomainEvent::DeviceEnrolled(DeviceEnrolled {
            device_id: device.clone(),
            request_id: request,
            name: name.parse().unwrap(),
            owner_scope: scope,
            system_info: SystemInfo::default(),
        }),
        by("alice@example.com"),
    )
    .await;
}

async fn open(log: &dyn EventStore, device: &DeviceId, user: &str, op: Operation) -> SessionId {
    let sid = SessionId::new();
    append(
        log,
        StreamId::session(&sid),
        DomainEvent::SessionOpened(SessionOpened {
            session_id: sid,
            device_id: device.clone(),
            operation: op,
            args: serde_json::json!({"argv": ["echo", user]}),
            expires_at: chrono::Utc::now(),
            credential: None,
            relay: Some("127.0.0.1:8084".into()),
            recorded: op == Operation::Shell,
        }),
        by(user),
    )
    .await;
    sid
}

fn closed(sid: SessionId, device: &DeviceId, exit: i32, reason: &str) -> DomainEvent {
    DomainEvent::SessionClosed(SessionClosed {
        session_id: sid,
        device_id: device.clone(),
        duration_ms: 1500,
        bytes_to_device: 7,
        bytes_from_device: 99,
        exit_code: Some(exit),
        signal: None,
        error: None,
        operation: Some(Operation::Exec),
        reason: Some(reason.into()),
        channels: vec![],
        channels_dropped: 0,
    })
}

fn refused(sid: Option<SessionId>, device: &DeviceId, by_whom: &str, code: &str) -> DomainEvent {
    DomainEvent::SessionRefused(SessionRefused {
        session_id: sid,
        device_id: Some(device.clone()),
        refused_by: by_whom.into(),
        code: code.into(),
        reason: format!("refused: {code}"),
        operation: Some(Operation::Exec),
    })
}

fn recording(sid: SessionId, device: &DeviceId) -> DomainEvent {
    DomainEvent::SessionRecordingStored(SessionRecordingStored {
        session_id: sid,
        device_id: device.clone(),
        bytes: 512,
        truncated: false,
        max_bytes: 1 << 24,
        sha256: "ab".repeat(32),
    })
}

/// Two devices: an organization's and a user's.
async fn devices(log: &dyn EventStore) -> (DeviceId, DeviceId) {
    let robot: DeviceId = "robot-1-id".parse().unwrap();
    let pi: DeviceId = "pi-2-device-id".parse().unwrap();
    enroll(log, &robot, "robot-1", "org:acme").await;
    enroll(log, &pi, "pi-2", "user:bob@example.com").await;
    (robot, pi)
}

/// `rounds` of: an exec that exits, a shell cut by a revocation and then recorded, a session
/// refused by the relay and then closed, a refusal at the grant, a tunnel coming and going, a
/// member added. Returns the last shell's session.
async fn write_log(
    log: &dyn EventStore,
    (robot, pi): &(DeviceId, DeviceId),
    rounds: std::ops::Range<usize>,
) -> SessionId {
    let mut shell = None;
    for i in rounds {
        let device = if i % 2 == 0 { robot } else { pi };
        let meta = || Metadata::system("device");
        let exec = open(log, device, "bob@example.com", Operation::Exec).await;
        let sh = open(log, device, "carol@example.com", Operation::Shell).await;
        let cut = open(log, device, "dave@example.com", Operation::Exec).await;
        let stream = |s: &SessionId| StreamId::session(s);
        append(log, stream(&exec), closed(exec, device, 3, "exit"), meta()).await;
        append(
            log,
            stream(&cut),
            refused(Some(cut), device, "relay", "device_offline"),
            meta(),
        )
        .await;
        append(
            log,
            stream(&sh),
            closed(sh, device, 0, "access_revoked"),
            meta(),
        )
        .await;
        append(log, stream(&sh), recording(sh, device), meta()).await;
        append(
            log,
            stream(&cut),
            closed(cut, device, 1, "relay_lost"),
            meta(),
        )
        .await;
        let other = StreamId::from_raw(format!("refusal-{i}"));
        let grant = refused(Some(SessionId::new()), device, "grant", "forbidden");
        append(log, other, grant, by("eve@example.com")).await;
        let presence = StreamId::from_raw(format!("presence-{i}"));
        let up = DomainEvent::DeviceConnected(DeviceConnected {
            device_id: device.clone(),
            relay_id: "relay-1".into(),
            remote_addr: "198.51.100.4:5000".into(),
        });
        append(log, presence.clone(), up, meta()).await;
        let down = DomainEvent::DeviceDisconnected(DeviceDisconnected {
            device_id: device.clone(),
            relay_id: "relay-1".into(),
            reason: "closed".into(),
        });
        append(log, presence, down, meta()).await;
        let org = StreamId::org(&"acme".parse().unwrap());
        let member = DomainEvent::MemberAdded(MemberAdded {
            org_id: "acme".parse().unwrap(),
            email: format!("m{i}@example.com").parse().unwrap(),
            role: Role::Member,
        });
        append(log, org, member, by("alice@example.com")).await;
        shell = Some(sh);
    }
    shell.unwrap()
}

fn query(f: impl FnOnce(&mut AuditQuery)) -> AuditQuery {
    let mut q = AuditQuery {
        visibility: Visibility::All,
        device: None,
        user: None,
        actions: vec![],
        outcome: None,
        since: None,
        until: None,
        before: None,
        changed_after: None,
        limit: 1000,
    };
    f(&mut q);
    q
}

/// The queries `m87 audit` makes, each as JSON for comparing.
async fn answers(store: &dyn AuditStore, device: &DeviceId, shell: &SessionId) -> Vec<Value> {
    let queries = [
        query(|_| {}),
        query(|q| q.limit = 7),
        query(|q| q.device = Some(device.to_string())),
        query(|q| q.user = Some("carol@example.com".into())),
        query(|q| q.actions = vec!["exec".into()]),
        query(|q| q.actions = vec!["connect".into(), "disconnect".into()]),
        query(|q| q.outcome = Some(Outcome::Failed)),
        query(|q| q.outcome = Some(Outcome::Refused)),
        query(|q| q.before = Some(40)),
        query(|q| q.changed_after = Some(20)),
        query(|q| {
            q.visibility = Visibility::Scoped {
                scopes: vec!["org:acme".into()],
                user: "eve@example.com".into(),
            }
        }),
    ];
    let mut out = Vec::new();
    for q in &queries {
        out.push(serde_json::to_value(store.query(q).await.unwrap()).unwrap());
    }
    let entries: Vec<Value> = store
        .entries(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| serde_json::json!([e.position, e.entry, e.prev_hash, e.hash]))
        .collect();
    out.push(Value::Array(entries));
    out.push(serde_json::to_value(store.head().await.unwrap()).unwrap());
    out.push(serde_json::to_value(store.device(device.as_str()).await.unwrap()).unwrap());
    out.push(serde_json::to_value(store.session(&shell.to_string()).await.unwrap()).unwrap());
    out
}

async fn mongo_store(server: &MongoServer) -> Arc<dyn AuditStore> {
    let db = connect_database(server.uri(), &unique_name("audit"))
        .await
        .unwrap();
    Arc::new(MongoAuditStore::open(&db).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_folding_mongodb_at_once_agree_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m87.db");
    let log: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&db).unwrap());
    let both = devices(log.as_ref()).await;
    let device = both.0.clone();
    let sqlite: Arc<dyn AuditStore> = Arc::new(SqliteAuditStore::open(&db).unwrap());
    let single = AuditTrail::new(Arc::clone(&log), Arc::clone(&sqlite));
    // Two replicas (each its own trail and client) fold the same log into one database at
    // once, again after each few rounds, so their batches overlap in many ways.
    let server = MongoServer::shared();
    let db_name = unique_name("audit");
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let db = connect_database(server.uri(), &db_name).await.unwrap();
        let store: Arc<dyn AuditStore> = Arc::new(MongoAuditStore::open(&db).await.unwrap());
        replicas.push(AuditTrail::new(Arc::clone(&log), store));
    }
    let mut shell = None;
    let (mut a, mut b) = (0, 0);
    for k in 0..6 {
        shell = Some(write_log(log.as_ref(), &both, k * 2..k * 2 + 2).await);
        let (ra, rb) = tokio::join!(replicas[0].catch_up(), replicas[1].catch_up());
        (a, b) = (ra.unwrap(), rb.unwrap());
    }
    let shell = shell.unwrap();
    single.catch_up().await.unwrap();
    let want = answers(sqlite.as_ref(), &device, &shell).await;
    assert_eq!(a, b);
    assert_eq!(want[12][0], a, "the head is the log's last position");
    for replica in &replicas {
        let got = answers(replica.store().as_ref(), &device, &shell).await;
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w, g, "answer {i} differs between SQLite and MongoDB");
        }
    }
    // The shell's record: cut, recorded; the session refused by the relay then closed.
    let shell_record = sqlite.session(&shell.to_string()).await.unwrap().unwrap();
    assert_eq!(shell_record.outcome, Outcome::Failed);
    assert!(shell_record.recording.is_some());
    // Cursors round-trip on both.
    for store in [&sqlite, replicas[0].store()] {
        assert_eq!(store.cursor("hook").await.unwrap(), None);
        store.save_cursor("hook", "{\"position\":3}").await.unwrap();
        store.save_cursor("hook", "{\"position\":9}").await.unwrap();
        assert_eq!(
            store.cursor("hook").await.unwrap().as_deref(),
            Some("{\"position\":9}")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_never_puts_back_an_older_session_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m87.db");
    let log: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&db).unwrap());
    let sqlite: Arc<dyn AuditStore> = Arc::new(SqliteAuditStore::open(&db).unwrap());
    let server = MongoServer::shared();
    let mongo = mongo_store(&server).await;
    let device: DeviceId = "robot-1-id".parse().unwrap();
    enroll(log.as_ref(), &device, "robot-1", "org:acme").await;
    let sh = open(log.as_ref(), &device, "carol@example.com", Operation::Shell).await;
    let close = closed(sh, &device, 0, "access_revoked");
    append(
        log.as_ref(),
        StreamId::session(&sh),
        close,
        Metadata::system("device"),
    )
    .await;
    for store in [&sqlite, &mongo] {
        let trail = AuditTrail::new(Arc::clone(&log), Arc::clone(store));
        trail.catch_up().await.unwrap();
    }
    // What a replica that folded the closing has to write (and has not written yet).
    let stale = mongo.session(&sh.to_string()).await.unwrap().unwrap();
    assert_eq!(stale.recording, None);
    let closed_at = stale.seq;
    // Meanwhile the other replica folds the recording.
    let rec = recording(sh, &device);
    append(
        log.as_ref(),
        StreamId::session(&sh),
        rec,
        Metadata::system("device"),
    )
    .await;
    for store in [&sqlite, &mongo] {
        let trail = AuditTrail::new(Arc::clone(&log), Arc::clone(store));
        trail.catch_up().await.unwrap();
        let batch = AuditBatch {
            rows: vec![],
            sessions: vec![(sh.to_string(), stale.clone(), closed_at)],
            devices: vec![],
        };
        store.commit(batch).await.unwrap();
        let now = store.session(&sh.to_string()).await.unwrap().unwrap();
        assert!(
            now.recording.is_some() && now.seq > closed_at,
            "an older state came back: {now:?}"
        );
    }
}
