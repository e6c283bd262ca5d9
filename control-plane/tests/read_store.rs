//! The read-store contract, written once and run against every `ReadStore`: memory, SQLite and
//! MongoDB (`MONGODB_URI` or a `secantusd-py` started by the harness, see `support::mongo`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use m87_control_plane::store::memory::MemoryReadStore;
use m87_control_plane::store::mongo::MongoReadStore;
use m87_control_plane::store::sqlite::SqliteReadStore;
use m87_control_plane::store::{Change, ReadStore};
use serde_json::{Value, json};
use support::mongo::MongoServer;

const A: &str = "suite_a";
const B: &str = "suite_b";

fn put(collection: &'static str, id: &str, doc: Value) -> Change {
    Change::Put {
        collection,
        id: id.to_owned(),
        doc,
    }
}

fn delete(collection: &'static str, id: &str) -> Change {
    Change::Delete {
        collection,
        id: id.to_owned(),
    }
}

/// Runs every check. `make` returns handles on one fresh, empty store each time it is called:
/// several handles when the backend can have several (connections, control planes), which the
/// concurrency check uses.
async fn suite(mut make: impl AsyncFnMut() -> Vec<Arc<dyn ReadStore>>) {
    starts_empty(&make().await[0]).await;
    commit_applies_and_moves_the_checkpoint(&make().await[0]).await;
    commit_at_or_before_the_checkpoint_does_nothing(&make().await[0]).await;
    put_replaces_and_delete_removes(&make().await[0]).await;
    list_is_per_collection_and_ordered_by_id(&make().await[0]).await;
    checkpoints_are_per_projection(&make().await[0]).await;
    reset_empties_its_collections_and_checkpoint_only(&make().await[0]).await;
    documents_round_trip(&make().await[0]).await;
    concurrent_commits_of_one_position_apply_once(make().await).await;
}

async fn starts_empty(store: &Arc<dyn ReadStore>) {
    assert_eq!(store.checkpoint("p").await.unwrap(), 0);
    assert_eq!(store.get(A, "x").await.unwrap(), None);
    assert!(store.list(A).await.unwrap().is_empty());
}

async fn commit_applies_and_moves_the_checkpoint(store: &Arc<dyn ReadStore>) {
    let applied = store
        .commit(
            "p",
            3,
            vec![put(A, "x", json!({"v": 1})), put(B, "y", json!({"w": 2}))],
        )
        .await
        .unwrap();
    assert!(applied);
    assert_eq!(store.get(A, "x").await.unwrap(), Some(json!({"v": 1})));
    assert_eq!(store.get(B, "y").await.unwrap(), Some(json!({"w": 2})));
    assert_eq!(
        store.get(B, "x").await.unwrap(),
        None,
        "ids are per collection"
    );
    assert_eq!(store.checkpoint("p").await.unwrap(), 3);
    // A commit with no changes still moves the checkpoint.
    assert!(store.commit("p", 4, vec![]).await.unwrap());
    assert_eq!(store.checkpoint("p").await.unwrap(), 4);
}

async fn commit_at_or_before_the_checkpoint_does_nothing(store: &Arc<dyn ReadStore>) {
    assert!(
        store
            .commit("p", 5, vec![put(A, "x", json!({"v": 1}))])
            .await
            .unwrap()
    );
    for position in [5, 4, 1] {
        let applied = store
            .commit(
                "p",
                position,
                vec![put(A, "x", json!({"v": 2})), put(A, "new", json!({}))],
            )
            .await
            .unwrap();
        assert!(!applied, "position {position} applied again");
    }
    assert_eq!(store.get(A, "x").await.unwrap(), Some(json!({"v": 1})));
    assert_eq!(store.get(A, "new").await.unwrap(), None);
    assert_eq!(store.checkpoint("p").await.unwrap(), 5);
}

async fn put_replaces_and_delete_removes(store: &Arc<dyn ReadStore>) {
    store
        .commit("p", 1, vec![put(A, "x", json!({"v": 1, "old": true}))])
        .await
        .unwrap();
    store
        .commit("p", 2, vec![put(A, "x", json!({"v": 2}))])
        .await
        .unwrap();
    assert_eq!(
        store.get(A, "x").await.unwrap(),
        Some(json!({"v": 2})),
        "a put replaces the whole document"
    );
    // Within one commit, changes apply in order; deleting an absent document is no error.
    store
        .commit(
            "p",
            3,
            vec![
                delete(A, "x"),
                delete(A, "never"),
                put(A, "y", json!(1)),
                put(A, "z", json!(1)),
                delete(A, "z"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.get(A, "x").await.unwrap(), None);
    assert_eq!(store.get(A, "z").await.unwrap(), None);
    assert_eq!(store.list(A).await.unwrap(), vec![json!(1)]);
}

async fn list_is_per_collection_and_ordered_by_id(store: &Arc<dyn ReadStore>) {
    let ids = ["b", "a10", "a9", "A", "c", "a"];
    let changes = ids
        .iter()
        .map(|id| put(A, id, json!({ "id": id })))
        .chain([put(B, "other", json!({"id": "other"}))])
        .collect();
    store.commit("p", 1, changes).await.unwrap();
    let listed: Vec<Value> = store.list(A).await.unwrap();
    let mut sorted = ids.to_vec();
    sorted.sort(); // byte order, as SQLite's ORDER BY and MongoDB's string sort
    assert_eq!(
        listed,
        sorted
            .iter()
            .map(|id| json!({ "id": id }))
            .collect::<Vec<_>>()
    );
    assert_eq!(store.list(B).await.unwrap(), vec![json!({"id": "other"})]);
    assert!(store.list("suite_none").await.unwrap().is_empty());
}

async fn checkpoints_are_per_projection(store: &Arc<dyn ReadStore>) {
    assert!(store.commit("one", 10, vec![]).await.unwrap());
    assert!(store.commit("two", 2, vec![]).await.unwrap());
    assert_eq!(store.checkpoint("one").await.unwrap(), 10);
    assert_eq!(store.checkpoint("two").await.unwrap(), 2);
    assert!(store.commit("two", 3, vec![]).await.unwrap());
    assert!(!store.commit("one", 3, vec![]).await.unwrap());
}

async fn reset_empties_its_collections_and_checkpoint_only(store: &Arc<dyn ReadStore>) {
    store
        .commit(
            "p",
            7,
            vec![
                put(A, "x", json!(1)),
                put(A, "y", json!(2)),
                put(B, "z", json!(3)),
            ],
        )
        .await
        .unwrap();
    store.commit("q", 9, vec![]).await.unwrap();
    store.reset("p", &[A]).await.unwrap();
    assert!(store.list(A).await.unwrap().is_empty());
    assert_eq!(
        store.list(B).await.unwrap(),
        vec![json!(3)],
        "B was not reset"
    );
    assert_eq!(store.checkpoint("p").await.unwrap(), 0);
    assert_eq!(store.checkpoint("q").await.unwrap(), 9, "q was not reset");
    // After a reset the projection replays from the start.
    assert!(
        store
            .commit("p", 1, vec![put(A, "x", json!("again"))])
            .await
            .unwrap()
    );
    assert_eq!(store.get(A, "x").await.unwrap(), Some(json!("again")));
    // Resetting what is already empty is fine.
    store.reset("never", &[A, B]).await.unwrap();
    assert!(store.list(B).await.unwrap().is_empty());
}

async fn documents_round_trip(store: &Arc<dyn ReadStore>) {
    let doc = json!({
        "$set": "a key MongoDB reserves",
        "a.b": "a dotted key",
        "nested": {"list": [1, -2, 3.5, null, true, "ünïcødé ✓"], "empty": {}},
        "big": u64::MAX,
        "small": i64::MIN,
        "text": "line\nbreak \"quoted\"",
    });
    store
        .commit("p", 1, vec![put(A, "weird/id with spaces", doc.clone())])
        .await
        .unwrap();
    assert_eq!(
        store.get(A, "weird/id with spaces").await.unwrap(),
        Some(doc.clone())
    );
    assert_eq!(store.list(A).await.unwrap(), vec![doc]);
}

async fn concurrent_commits_of_one_position_apply_once(stores: Vec<Arc<dyn ReadStore>>) {
    for position in 1..=3_u64 {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, store) in stores.iter().cycle().take(6).enumerate() {
            let store = Arc::clone(store);
            tasks.spawn(async move {
                store
                    .commit(
                        "p",
                        position,
                        vec![put(A, &format!("from-{position}"), json!(i))],
                    )
                    .await
                    .unwrap()
            });
        }
        let mut applied = 0;
        while let Some(done) = tasks.join_next().await {
            if done.unwrap() {
                applied += 1;
            }
        }
        assert_eq!(applied, 1, "position {position} applied {applied} times");
        assert_eq!(stores[0].checkpoint("p").await.unwrap(), position);
    }
    assert_eq!(stores[0].list(A).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_read_store_conforms() {
    suite(async || {
        let store: Arc<dyn ReadStore> = Arc::new(MemoryReadStore::new());
        vec![store]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    suite(async || {
        n += 1;
        let path = dir.path().join(format!("read-{n}.db"));
        // Two connections to one file, as two handles of one data directory.
        (0..2)
            .map(|_| Arc::new(SqliteReadStore::open(&path).unwrap()) as Arc<dyn ReadStore>)
            .collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_read_store_conforms() {
    let server = MongoServer::shared();
    suite(async || {
        let name = support::mongo::unique_name("read_store");
        let mut handles = Vec::new();
        // Three clients on one database: three control planes.
        for _ in 0..3 {
            let client = mongodb::Client::with_uri_str(server.uri()).await.unwrap();
            let store = MongoReadStore::open(&client.database(&name)).await.unwrap();
            handles.push(Arc::new(store) as Arc<dyn ReadStore>);
        }
        handles
    })
    .await;
}
