//! The MongoDB event store beyond the shared conformance suite: several control planes
//! appending at once leave a gap-free global order that a concurrent reader sees exactly once,
//! an unreachable server is `Unavailable` (and 503 at the API), and bad documents are `Corrupt`.
//!
//! Runs against `MONGODB_URI` or a `secantusd-py` started by the harness (see `support::mongo`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use m87_control_plane::api::error::ApiError;
use m87_control_plane::service::ServiceError;
use m87_control_plane::store::ReadStore;
use m87_control_plane::store::mongo::MongoReadStore;
use m87_control_plane::store::mongo::{MongoStore, connect_database};
use m87_control_plane::store::{EventStore, StoreError, StreamAppend};
use m87_events::domain::DeviceRemoved;
use m87_events::{DomainEvent, EventId, Metadata, StreamId};
use mongodb::bson::doc;
use support::mongo::{MongoServer, closed_port, unique_name};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Control planes (each its own client and connection pool).
const CONTROL_PLANES: usize = 3;
/// Writing tasks per control plane.
const WRITERS: usize = 3;
/// Appends per writer; every third one is a two-stream batch.
const APPENDS: u32 = 18;

fn removed(n: u32) -> DomainEvent {
    DomainEvent::DeviceRemoved(DeviceRemoved {
        device_id: format!("device-{n:05}").parse().unwrap(),
    })
}

fn stream(name: &str) -> StreamId {
    StreamId::from_raw(name.to_owned())
}

/// One writer: appends to its own two streams, tracking their versions, and returns the
/// event ids with the positions the store answered.
async fn writer(store: Arc<MongoStore>, name: String) -> Vec<(EventId, u64)> {
    let (a, b) = (stream(&format!("{name}-a")), stream(&format!("{name}-b")));
    let (mut va, mut vb) = (0_u64, 0_u64);
    let mut stored = Vec::new();
    for i in 0..APPENDS {
        let mut batch = vec![StreamAppend {
            stream_id: a.clone(),
            expected_version: va,
            events: vec![removed(i)],
        }];
        if i % 3 == 2 {
            batch.push(StreamAppend {
                stream_id: b.clone(),
                expected_version: vb,
                events: vec![removed(i)],
            });
        }
        let envelopes = store
            .append(batch, Metadata::system("concurrency-test"))
            .await
            .unwrap_or_else(|e| panic!("{name}: append {i} failed: {e}"));
        for env in &envelopes {
            if env.stream_id == a {
                va += 1;
            } else {
                vb += 1;
            }
            stored.push((env.event_id, env.global_position));
        }
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_control_planes_leave_no_gap_and_a_tailing_reader_sees_each_event_once() {
    let server = MongoServer::shared();
    let database = unique_name("concurrent");
    let mut planes = Vec::new();
    for _ in 0..CONTROL_PLANES {
        planes.push(Arc::new(
            MongoStore::connect(server.uri(), &database).await.unwrap(),
        ));
    }
    let reader = MongoStore::connect(server.uri(), &database).await.unwrap();
    let per_writer = APPENDS as usize + APPENDS as usize / 3;
    let total = (CONTROL_PLANES * WRITERS * per_writer) as u64;

    // A reader that tails the log while the writers run, as the publisher and projector do:
    // small pages, always asking for what comes after the last position it saw.
    let tail = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut last = 0_u64;
        let deadline = Instant::now() + Duration::from_secs(240);
        while last < total {
            assert!(
                Instant::now() < deadline,
                "tailer stuck at {last} of {total}"
            );
            let page = reader.read_all(last, 7).await.unwrap();
            if page.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for env in page {
                assert_eq!(
                    env.global_position,
                    last + 1,
                    "the tailer saw position {} right after {last}: an event was skipped",
                    env.global_position
                );
                last = env.global_position;
                seen.push((env.event_id, env.global_position));
            }
        }
        seen
    });

    let started = Instant::now();
    let mut writers = JoinSet::new();
    for (p, store) in planes.iter().enumerate() {
        for w in 0..WRITERS {
            writers.spawn(writer(Arc::clone(store), format!("cp{p}-w{w}")));
        }
    }
    let mut answered = BTreeMap::new();
    while let Some(done) = writers.join_next().await {
        for (id, position) in done.unwrap() {
            assert!(
                answered.insert(position, id).is_none(),
                "position {position} handed out twice"
            );
        }
    }
    let writing = started.elapsed();
    let seen = tail.await.unwrap();
    eprintln!(
        "{total} events from {} concurrent writers on {CONTROL_PLANES} control planes in {writing:?}",
        CONTROL_PLANES * WRITERS
    );

    let all = planes[0].read_all(0, 10_000).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "the log has a gap or a duplicate"
    );
    let ids: HashSet<_> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len() as u64, total, "an event id appears twice");
    assert_eq!(
        all.iter()
            .map(|e| (e.global_position, e.event_id))
            .collect::<BTreeMap<_, _>>(),
        answered,
        "positions answered to the writers differ from the log"
    );
    assert_eq!(
        seen,
        all.iter()
            .map(|e| (e.event_id, e.global_position))
            .collect::<Vec<_>>(),
        "the tailer did not see every event exactly once, in order"
    );
    assert_eq!(planes[1].head().await.unwrap(), total);
    // Each stream's versions are 1..=n in stream order.
    for p in 0..CONTROL_PLANES {
        for w in 0..WRITERS {
            for (suffix, n) in [("a", APPENDS as u64), ("b", APPENDS as u64 / 3)] {
                let events = planes[2]
                    .read_stream(&stream(&format!("cp{p}-w{w}-{suffix}")))
                    .await
                    .unwrap();
                assert_eq!(
                    events.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
                    (1..=n).collect::<Vec<_>>()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_planes_racing_for_one_stream_exactly_one_wins_each_round() {
    let server = MongoServer::shared();
    let database = unique_name("race");
    let mut planes = Vec::new();
    for _ in 0..4 {
        planes.push(Arc::new(
            MongoStore::connect(server.uri(), &database).await.unwrap(),
        ));
    }
    for round in 0..5_u64 {
        let mut tasks = JoinSet::new();
        for (p, store) in planes.iter().enumerate() {
            let store = Arc::clone(store);
            tasks.spawn(async move {
                store
                    .append(
                        vec![StreamAppend {
                            stream_id: stream("contended"),
                            expected_version: round,
                            events: vec![removed(p as u32)],
                        }],
                        Metadata::system("race"),
                    )
                    .await
            });
        }
        let mut wins = 0;
        while let Some(result) = tasks.join_next().await {
            match result.unwrap() {
                Ok(_) => wins += 1,
                Err(StoreError::Conflict {
                    expected, actual, ..
                }) => {
                    assert_eq!(expected, round);
                    assert_eq!(actual, round + 1);
                }
                Err(other) => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    let events = planes[0].read_stream(&stream("contended")).await.unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(planes[0].head().await.unwrap(), 5);
}

#[tokio::test]
async fn unreachable_server_is_unavailable_quickly() {
    let uri = format!(
        "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=500&connectTimeoutMS=500",
        closed_port()
    );
    let started = Instant::now();
    let err = MongoStore::connect(&uri, "m87_unreachable")
        .await
        .unwrap_err();
    let took = started.elapsed();
    match &err {
        StoreError::Unavailable(message) => {
            assert!(message.contains("cannot reach MongoDB"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // The API answers 503 with Retry-After, without the driver's details.
    let api = ApiError::from(ServiceError::from(err));
    assert_eq!(api.status.as_u16(), 503);
    assert_eq!(api.retry_after, Some(5));
    assert!(!api.message.contains("127.0.0.1"), "{}", api.message);
}

/// A TCP relay to the server that the test can cut, as a network partition would.
struct Relay {
    port: u16,
    tasks: JoinSet<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { port, tasks }
    }

    /// Closes the listener and every relayed connection.
    async fn cut(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Splits `mongodb://[user@]host[,host…][/db][?options]` into the `user@` part, the first host
/// and the rest.
fn split_uri(uri: &str) -> (&str, &str, &str) {
    let rest = uri
        .strip_prefix("mongodb://")
        .expect("MONGODB_URI must be a mongodb:// URI for this test (not mongodb+srv)");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    (user, hosts.split(',').next().unwrap(), tail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_is_unavailable_for_every_operation() {
    let server = MongoServer::shared();
    // Through a relay to the server (with MONGODB_URI: to its first host, which must then be
    // the primary); directConnection makes the driver talk only to the relay, not to the
    // members it would discover.
    let (user, host, tail) = split_uri(server.uri());
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(host)
        .unwrap()
        .next()
        .unwrap();
    let relay = Relay::start(upstream).await;
    let separator = if tail.contains('?') {
        "&"
    } else if tail.is_empty() {
        "/?"
    } else {
        "?"
    };
    let uri = format!(
        "mongodb://{user}127.0.0.1:{}{tail}{separator}\
         directConnection=true&serverSelectionTimeoutMS=700&connectTimeoutMS=700",
        relay.port
    );
    let db = connect_database(&uri, &unique_name("goes_away"))
        .await
        .unwrap();
    let store = MongoStore::open(&db).await.unwrap();
    let read = MongoReadStore::open(&db).await.unwrap();
    store
        .append(
            vec![StreamAppend {
                stream_id: stream("s"),
                expected_version: 0,
                events: vec![removed(1)],
            }],
            Metadata::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(store.head().await.unwrap(), 1);

    relay.cut().await;
    let append = store.append(
        vec![StreamAppend {
            stream_id: stream("s"),
            expected_version: 1,
            events: vec![removed(2)],
        }],
        Metadata::system("test"),
    );
    expect_unavailable("append", append).await;
    expect_unavailable("read_all", store.read_all(0, 10)).await;
    expect_unavailable("read_stream", store.read_stream(&stream("s"))).await;
    expect_unavailable("head", store.head()).await;
    expect_unavailable("checkpoint", read.checkpoint("devices")).await;
    expect_unavailable("commit", read.commit("devices", 1, vec![])).await;
    expect_unavailable("list", read.list("devices")).await;
}

/// `op` fails with `Unavailable` within a few server selection timeouts.
async fn expect_unavailable<T: std::fmt::Debug>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = op.await;
    let took = started.elapsed();
    match result {
        Err(StoreError::Unavailable(message)) => {
            assert!(
                message.contains("cannot reach MongoDB"),
                "{what}: {message}"
            )
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "{what} took {took:?}");
}

#[tokio::test]
async fn undecodable_documents_are_corrupt_with_their_position() {
    let server = MongoServer::shared();
    let db = server.database("corrupt").await;
    let store = MongoStore::open(&db).await.unwrap();
    db.collection("events")
        .insert_one(doc! {
            "_id": "not-an-event-id",
            "global_position": 1_i64,
            "stream_id": "s",
            "stream_version": 1_i64,
            "event_type": "DeviceRemoved",
            "schema_version": 1_i64,
            "data": "{not json",
            "metadata": "{}",
            "recorded_at": "2026-01-01T00:00:00Z",
        })
        .await
        .unwrap();
    match store.read_all(0, 10).await {
        Err(StoreError::Corrupt { position: 1, .. }) => {}
        other => panic!("expected Corrupt at 1, got {other:?}"),
    }
    db.collection("events")
        .insert_one(doc! { "_id": "x", "global_position": 2_i64, "stream_id": "t" })
        .await
        .unwrap();
    match store.read_stream(&stream("t")).await {
        Err(StoreError::Corrupt {
            position: 2,
            reason,
        }) => {
            assert!(reason.contains("field"), "{reason}")
        }
        other => panic!("expected Corrupt at 2, got {other:?}"),
    }
}
