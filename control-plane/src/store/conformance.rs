//! The store conformance suite, written once and run against every [`EventStore`].

use std::sync::Arc;

use m87_events::domain::{ApiKeyRevoked, DeviceRemoved};
use m87_events::{DomainEvent, KeyId, Metadata, StreamId};

use super::{EventStore, StoreError, StreamAppend};

fn removed(n: u32) -> DomainEvent {
    DomainEvent::DeviceRemoved(DeviceRemoved {
        device_id: format!("device-{n:04}").parse().unwrap(),
    })
}

fn stream(name: &str) -> StreamId {
    StreamId::from_raw(name.to_owned())
}

fn append(name: &str, expected: u64, events: Vec<DomainEvent>) -> Vec<StreamAppend> {
    vec![StreamAppend {
        stream_id: stream(name),
        expected_version: expected,
        events,
    }]
}

/// Runs every check against a fresh, empty store made by `make`.
pub async fn run_all<S: EventStore>(make: impl Fn() -> S) {
    append_and_read_stream(&make()).await;
    conflicts_change_nothing(&make()).await;
    multi_stream_batches_are_atomic(&make()).await;
    global_order_and_read_from_position(&make()).await;
    concurrent_appends_exactly_one_wins(Arc::new(make())).await;
    metadata_round_trips(&make()).await;
}

async fn append_and_read_stream(store: &impl EventStore) {
    assert_eq!(store.head().await.unwrap(), 0);
    let stored = store
        .append(
            append("a", 0, vec![removed(1), removed(2)]),
            Metadata::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [1, 2]
    );
    store
        .append(append("a", 2, vec![removed(3)]), Metadata::system("test"))
        .await
        .unwrap();
    let read = store.read_stream(&stream("a")).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        vec![removed(1), removed(2), removed(3)]
    );
    assert_eq!(read[0].event_id, stored[0].event_id);
    assert!(store.read_stream(&stream("none")).await.unwrap().is_empty());
}

async fn conflicts_change_nothing(store: &impl EventStore) {
    store
        .append(append("a", 0, vec![removed(1)]), Metadata::system("test"))
        .await
        .unwrap();
    for expected in [0, 2] {
        let err = store
            .append(
                append("a", expected, vec![removed(9)]),
                Metadata::system("test"),
            )
            .await
            .unwrap_err();
        match err {
            StoreError::Conflict {
                stream_id, actual, ..
            } => {
                assert_eq!(stream_id, stream("a"));
                assert_eq!(actual, 1);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(store.head().await.unwrap(), 1);
    assert_eq!(store.read_stream(&stream("a")).await.unwrap().len(), 1);
}

async fn multi_stream_batches_are_atomic(store: &impl EventStore) {
    store
        .append(append("b", 0, vec![removed(1)]), Metadata::system("test"))
        .await
        .unwrap();
    let mut batch = append("a", 0, vec![removed(2)]);
    batch.extend(append("b", 0, vec![removed(3)])); // b is at 1: the whole batch fails
    assert!(matches!(
        store.append(batch, Metadata::system("test")).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(store.read_stream(&stream("a")).await.unwrap().is_empty());
    let mut batch = append("a", 0, vec![removed(2)]);
    batch.extend(append("b", 1, vec![removed(3)]));
    let stored = store.append(batch, Metadata::system("test")).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(store.head().await.unwrap(), 3);
}

async fn global_order_and_read_from_position(store: &impl EventStore) {
    for i in 0..10u32 {
        let name = format!("s{}", i % 3);
        let version = store.read_stream(&stream(&name)).await.unwrap().len() as u64;
        store
            .append(
                append(&name, version, vec![removed(i)]),
                Metadata::system("test"),
            )
            .await
            .unwrap();
    }
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        all.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        (0..10).map(removed).collect::<Vec<_>>()
    );
    let page = store.read_all(4, 3).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        [5, 6, 7]
    );
    assert!(store.read_all(10, 5).await.unwrap().is_empty());
    assert_eq!(store.head().await.unwrap(), 10);
}

async fn concurrent_appends_exactly_one_wins<S: EventStore>(store: Arc<S>) {
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .append(
                    append("race", 0, vec![removed(i)]),
                    Metadata::system("test"),
                )
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.read_stream(&stream("race")).await.unwrap().len(), 1);
}

async fn metadata_round_trips(store: &impl EventStore) {
    let meta = Metadata {
        actor: m87_events::Actor::User {
            email: "a@example.com".parse().unwrap(),
            key_id: Some(KeyId::new()),
            subject: None,
        },
        source_ip: Some("192.0.2.7".parse().unwrap()),
        correlation_id: m87_events::CorrelationId::new(),
    };
    let event = DomainEvent::ApiKeyRevoked(ApiKeyRevoked {
        key_id: KeyId::new(),
    });
    let stored = store
        .append(append("m", 0, vec![event.clone()]), meta.clone())
        .await
        .unwrap();
    let read = store.read_all(0, 10).await.unwrap();
    assert_eq!(read, stored);
    assert_eq!(read[0].metadata, meta);
    assert_eq!(read[0].event, event);
    assert_eq!(read[0].schema_version, 1);
}

#[tokio::test]
async fn memory_store_conforms() {
    run_all(super::memory::MemoryStore::new).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        super::sqlite::SqliteStore::open(&dir.path().join(format!("store-{n}.db"))).unwrap()
    })
    .await;
}

/// The MongoDB test server harness, shared with the integration tests.
use m87_test_support::mongo as mongo_harness;

#[tokio::test]
async fn mongo_store_conforms() {
    let server = mongo_harness::MongoServer::shared();
    // `run_all` makes its stores synchronously; a MongoDB store is opened (and migrated)
    // asynchronously, so each gets its own database up front.
    let mut stores = Vec::new();
    for _ in 0..8 {
        let db = server.database("conformance").await;
        stores.push(super::mongo::MongoStore::open(&db).await.unwrap());
    }
    let stores = std::sync::Mutex::new(stores);
    run_all(|| {
        stores
            .lock()
            .unwrap()
            .pop()
            .expect("run_all needs more MongoDB stores than prepared; raise the count above")
    })
    .await;
}
