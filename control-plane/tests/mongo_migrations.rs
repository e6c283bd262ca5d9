//! MongoDB schema migrations: applied once and recorded, idempotent, upgrading an older
//! database in place, safe when several control planes start together, and refusing a database
//! from a newer m87.
//!
//! Runs against `MONGODB_URI` or a `secantusd-py` started by the harness (see `support::mongo`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use m87_control_plane::store::mongo::MongoStore;
use m87_control_plane::store::{EventStore, StreamAppend};
use m87_events::domain::DeviceRemoved;
use m87_events::{DomainEvent, Metadata, StreamId};
use m87_migrations::mongo::{
    LOCK_COLLECTION, LOCK_ID, LockOptions, MIGRATIONS_COLLECTION, MigrateError, STEPS,
    current_version, migrate, migrate_with,
};
use mongodb::Database;
use mongodb::bson::{self, Document, doc};
use support::mongo::{MongoServer, closed_port};

async fn index_names(db: &Database, collection: &str) -> Vec<String> {
    db.collection::<Document>(collection)
        .list_index_names()
        .await
        .unwrap()
}

#[tokio::test]
async fn applies_once_records_and_creates_the_indexes() {
    let server = MongoServer::shared();
    let db = server.database("migrate_once").await;
    assert_eq!(current_version(&db).await.unwrap(), 0);
    assert_eq!(migrate(&db).await.unwrap(), vec![1, 2, 3]);
    assert_eq!(migrate(&db).await.unwrap(), Vec::<u32>::new());
    assert_eq!(current_version(&db).await.unwrap(), 3);

    let records: Vec<Document> = {
        let mut cursor = db
            .collection::<Document>(MIGRATIONS_COLLECTION)
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .unwrap();
        let mut out = Vec::new();
        while cursor.advance().await.unwrap() {
            out.push(cursor.deserialize_current().unwrap());
        }
        out
    };
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].get_str("name").unwrap(), "event log");
    assert_eq!(records[2].get_str("name").unwrap(), "audit trail");
    assert!(records[1].get_datetime("applied_at").is_ok());

    let events = index_names(&db, "events").await;
    assert!(
        events.contains(&"events_stream_version".to_owned()),
        "{events:?}"
    );
    assert!(
        events.contains(&"events_global_position".to_owned()),
        "{events:?}"
    );
    let read_models = index_names(&db, "read_models").await;
    assert!(
        read_models.contains(&"read_models_collection_id".to_owned()),
        "{read_models:?}"
    );
    let counter = db
        .collection::<Document>("counters")
        .find_one(doc! { "_id": "global_position" })
        .await
        .unwrap()
        .expect("the counter is seeded");
    assert_eq!(counter.get_i64("value").unwrap(), 0);
    let collections = db.list_collection_names().await.unwrap();
    assert!(collections.contains(&"projection_checkpoints".to_owned()));
    // The lock is released.
    assert_eq!(
        db.collection::<Document>(LOCK_COLLECTION)
            .count_documents(doc! {})
            .await
            .unwrap(),
        0
    );

    // The unique index holds even for a writer that bypasses the store's version check.
    let dup = db
        .collection::<Document>("events")
        .insert_many([
            doc! { "_id": "e1", "stream_id": "s", "stream_version": 1_i64, "global_position": 1_i64 },
            doc! { "_id": "e2", "stream_id": "s", "stream_version": 1_i64, "global_position": 2_i64 },
        ])
        .await
        .unwrap_err();
    assert_eq!(m87_migrations::mongo::error_code(&dup), Some(11000));
}

#[tokio::test]
async fn an_older_database_upgrades_in_place_keeping_its_events() {
    let server = MongoServer::shared();
    let db = server.database("migrate_upgrade").await;
    assert_eq!(
        migrate_with(&db, &STEPS[..1], LockOptions::default())
            .await
            .unwrap(),
        vec![1]
    );
    db.collection::<Document>("events")
        .insert_one(doc! { "_id": "old", "stream_id": "s", "stream_version": 1_i64, "global_position": 1_i64 })
        .await
        .unwrap();
    assert_eq!(migrate(&db).await.unwrap(), vec![2, 3]);
    assert_eq!(
        db.collection::<Document>("events")
            .count_documents(doc! {})
            .await
            .unwrap(),
        1
    );
    assert!(
        db.list_collection_names()
            .await
            .unwrap()
            .contains(&"read_models".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_planes_starting_together_apply_each_step_once() {
    let server = MongoServer::shared();
    let name = support::mongo::unique_name("migrate_race");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let client = mongodb::Client::with_uri_str(server.uri()).await.unwrap();
        let db = client.database(&name);
        tasks.spawn(async move { migrate(&db).await.unwrap() });
    }
    let mut applied = Vec::new();
    while let Some(done) = tasks.join_next().await {
        applied.extend(done.unwrap());
    }
    applied.sort();
    assert_eq!(
        applied,
        vec![1, 2, 3],
        "each step is applied by exactly one"
    );

    // And the stores they open work together on the result.
    let store = MongoStore::connect(server.uri(), &name).await.unwrap();
    store
        .append(
            vec![StreamAppend {
                stream_id: StreamId::from_raw("s".into()),
                expected_version: 0,
                events: vec![DomainEvent::DeviceRemoved(DeviceRemoved {
                    device_id: "device-1".parse().unwrap(),
                })],
            }],
            Metadata::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(store.head().await.unwrap(), 1);
}

#[tokio::test]
async fn an_expired_lock_is_taken_over_and_a_live_one_waited_for() {
    let server = MongoServer::shared();
    let db = server.database("migrate_lock").await;
    let locks = db.collection::<Document>(LOCK_COLLECTION);

    // A holder that died an hour ago.
    let past = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 3_600_000);
    locks
        .insert_one(doc! { "_id": LOCK_ID, "owner": "dead", "expires_at": past })
        .await
        .unwrap();
    assert_eq!(migrate(&db).await.unwrap(), vec![1, 2, 3]);
    assert_eq!(locks.count_documents(doc! {}).await.unwrap(), 0);

    // A live holder: the migration waits, then gives up naming it.
    let future = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 3_600_000);
    locks
        .insert_one(doc! { "_id": LOCK_ID, "owner": "alive", "expires_at": future })
        .await
        .unwrap();
    let options = LockOptions {
        ttl: Duration::from_secs(60),
        wait: Duration::from_millis(600),
        poll: Duration::from_millis(50),
    };
    let started = Instant::now();
    match migrate_with(&db, STEPS, options).await {
        Err(MigrateError::LockTimeout { owner, .. }) => assert_eq!(owner, "alive"),
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(600));

    // Once the holder lets go, the waiter proceeds.
    let db2 = db.clone();
    let waiter = tokio::spawn(async move {
        migrate_with(
            &db2,
            STEPS,
            LockOptions {
                wait: Duration::from_secs(20),
                ..options
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "it waits while the lock is held");
    locks.delete_one(doc! { "_id": LOCK_ID }).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Vec::<u32>::new());
}

#[tokio::test]
async fn a_database_from_a_newer_m87_is_refused() {
    let server = MongoServer::shared();
    let db = server.database("migrate_too_new").await;
    migrate(&db).await.unwrap();
    db.collection::<Document>(MIGRATIONS_COLLECTION)
        .insert_one(doc! { "_id": 99_i64, "name": "future", "applied_at": bson::DateTime::now() })
        .await
        .unwrap();
    match migrate(&db).await {
        Err(MigrateError::TooNew { found: 99, known }) => assert_eq!(known, 3),
        other => panic!("expected TooNew, got {other:?}"),
    }
    // The store refuses to open on it, saying why.
    match MongoStore::open(&db).await {
        Err(m87_control_plane::store::StoreError::Unavailable(message)) => {
            assert!(message.contains("newer"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_such() {
    let uri = format!(
        "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=300",
        closed_port()
    );
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    match migrate(&client.database("m87_unreachable")).await {
        Err(e @ MigrateError::Unreachable(_)) => {
            assert!(e.to_string().starts_with("cannot reach MongoDB"), "{e}")
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}
