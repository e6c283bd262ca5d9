//! The JetStream event bus against a real `nats-server` (see `m87_test_support::nats`): round
//! trip, duplicates dropped by event id, the publisher surviving a NATS restart, durable
//! consumers, and a replicated stream on a 3-node cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use m87_test_support::nats as nats_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use m87_control_plane::bus::nats::{DurableOptions, JetStreamBus, JetStreamConfig};
use m87_control_plane::bus::{EventBus, Publisher};
use m87_control_plane::store::memory::MemoryStore;
use m87_control_plane::store::sqlite::SqliteStore;
use m87_control_plane::store::{EventStore, StreamAppend};
use m87_events::domain::{AccessRevoked, DeviceConnected};
use m87_events::{DeviceId, DomainEvent, EventEnvelope, Metadata, StreamId};
use nats_support::{NatsCluster, NatsServer};
use tokio::sync::{broadcast, watch};

fn config(servers: Vec<String>) -> JetStreamConfig {
    JetStreamConfig {
        servers,
        request_timeout: Duration::from_secs(2),
        max_reconnect_delay: Duration::from_millis(200),
        ..JetStreamConfig::default()
    }
}

fn device(i: usize) -> DeviceId {
    format!("device-{i:04}").parse().unwrap()
}

/// Appends one event to `device-<i>`'s presence stream (or an access revocation every 7th).
async fn append_one(store: &dyn EventStore, i: usize, version: u64) -> EventEnvelope {
    let d = device(i % 10);
    let (stream_id, event) = if i.is_multiple_of(7) {
        (
            StreamId::device(&d),
            DomainEvent::AccessRevoked(AccessRevoked {
                device_id: d.clone(),
                scope: "user:bob@example.com".parse().unwrap(),
            }),
        )
    } else {
        (
            StreamId::presence(&d),
            DomainEvent::DeviceConnected(DeviceConnected {
                device_id: d.clone(),
                relay_id: "relay-a".into(),
                remote_addr: format!("10.0.0.{}:4433", i % 250),
            }),
        )
    };
    let mut out = store
        .append(
            vec![StreamAppend {
                stream_id,
                expected_version: version,
                events: vec![event],
            }],
            Metadata::system("test"),
        )
        .await
        .unwrap();
    out.pop().unwrap()
}

/// Appends `n` events, each on its own stream version, and returns them.
async fn append_many(store: &dyn EventStore, n: usize) -> Vec<EventEnvelope> {
    let mut versions = std::collections::HashMap::<StreamId, u64>::new();
    let mut out = Vec::new();
    for i in 1..=n {
        let env = append_with_versions(store, i, &mut versions).await;
        out.push(env);
    }
    out
}

async fn append_with_versions(
    store: &dyn EventStore,
    i: usize,
    versions: &mut std::collections::HashMap<StreamId, u64>,
) -> EventEnvelope {
    let d = device(i % 10);
    let stream = if i.is_multiple_of(7) {
        StreamId::device(&d)
    } else {
        StreamId::presence(&d)
    };
    let v = versions.entry(stream).or_default();
    let env = append_one(store, i, *v).await;
    *v += 1;
    env
}

/// Every message on the stream, in stream order, decoded.
async fn stream_contents(bus: &JetStreamBus) -> Vec<EventEnvelope> {
    let mut stream = bus.context().get_stream(bus.stream_name()).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let msg = stream.get_raw_message(seq).await.unwrap();
        out.push(serde_json::from_slice(&msg.payload).unwrap());
    }
    assert_eq!(out.len() as u64, state.messages, "the stream has gaps");
    out
}

async fn recv(rx: &mut broadcast::Receiver<EventEnvelope>) -> EventEnvelope {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no event on the live feed within 5 s")
        .expect("the live feed closed or lagged")
}

#[tokio::test]
async fn publish_and_subscribe_round_trip() {
    let server = NatsServer::start().await;
    let bus = JetStreamBus::connect(config(vec![server.url()]))
        .await
        .unwrap();
    let mut rx = bus.subscribe();
    let store = MemoryStore::new();
    let events = append_many(&store, 8).await;
    for e in &events {
        bus.publish(e).await.unwrap();
    }
    for e in &events {
        assert_eq!(&recv(&mut rx).await, e);
    }
    // One subject per event type.
    let stream = bus.context().get_stream(bus.stream_name()).await.unwrap();
    let subjects = stream
        .info_with_subjects("m87.events.>")
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    let mut subjects: Vec<(String, usize)> = subjects.into_iter().map(|s| s.unwrap()).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        vec![
            ("m87.events.AccessRevoked".to_owned(), 1),
            ("m87.events.DeviceConnected".to_owned(), 7)
        ]
    );
    assert_eq!(stream_contents(&bus).await, events);
    assert_eq!(bus.last_published_position().await.unwrap(), Some(8));
}

#[tokio::test]
async fn a_duplicate_publish_is_dropped() {
    let server = NatsServer::start().await;
    let bus = JetStreamBus::connect(config(vec![server.url()]))
        .await
        .unwrap();
    // A second control plane connecting finds the stream as it is.
    let other = JetStreamBus::connect(config(vec![server.url()]))
        .await
        .unwrap();
    assert_eq!(bus.last_published_position().await.unwrap(), None);
    let store = MemoryStore::new();
    let events = append_many(&store, 2).await;
    bus.publish(&events[0]).await.unwrap();
    bus.publish(&events[0]).await.unwrap();
    other.publish(&events[0]).await.unwrap();
    assert_eq!(stream_contents(&bus).await, vec![events[0].clone()]);
    bus.publish(&events[1]).await.unwrap();
    other.publish(&events[0]).await.unwrap();
    other.publish(&events[1]).await.unwrap();
    assert_eq!(stream_contents(&bus).await, events);
}

/// Writes `n` events into the store at a steady pace, telling the publisher after each.
fn spawn_writer(
    store: Arc<dyn EventStore>,
    publisher: Publisher,
    n: usize,
    pace: Duration,
) -> tokio::task::JoinHandle<Vec<EventEnvelope>> {
    tokio::spawn(async move {
        let mut versions = std::collections::HashMap::new();
        let mut out = Vec::new();
        for i in 1..=n {
            out.push(append_with_versions(store.as_ref(), i, &mut versions).await);
            publisher.notify();
            tokio::time::sleep(pace).await;
        }
        out
    })
}

async fn wait_published(publisher: &Publisher, position: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while publisher.published() < position {
        assert!(
            Instant::now() < deadline,
            "the publisher reached {} of {position} within {timeout:?}",
            publisher.published()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_publisher_survives_a_nats_restart() {
    publisher_survives(false).await;
}

#[tokio::test]
async fn the_publisher_survives_a_nats_crash() {
    publisher_survives(true).await;
}

/// 300 events through the publisher while NATS goes down twice: gracefully, or killed.
async fn publisher_survives(crash: bool) {
    let started = Instant::now();
    let mut server = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&dir.path().join("events.db")).unwrap());
    let bus = JetStreamBus::connect(config(vec![server.url()]))
        .await
        .unwrap();
    let mut feed = bus.subscribe();
    let (_stop, shutdown) = watch::channel(false);
    let publisher = Publisher::spawn(
        Arc::clone(&store),
        Arc::new(bus.clone()) as Arc<dyn EventBus>,
        0,
        shutdown,
    );
    const N: usize = 300;
    let writer = spawn_writer(
        Arc::clone(&store),
        publisher.clone(),
        N,
        Duration::from_millis(4),
    );

    // Down while the events keep coming: stored, not yet published.
    wait_published(&publisher, 60, Duration::from_secs(10)).await;
    if crash {
        server.kill();
    } else {
        server.stop();
    }
    let stopped_at = publisher.published();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        store.head().await.unwrap() > publisher.published(),
        "events were stored while NATS was down"
    );
    server.start_again().await;
    // And down once more, briefly.
    wait_published(&publisher, stopped_at + 60, Duration::from_secs(15)).await;
    if crash {
        server.kill();
    } else {
        server.stop();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.start_again().await;

    let stored = writer.await.unwrap();
    assert_eq!(stored.len(), N);
    wait_published(&publisher, N as u64, Duration::from_secs(20)).await;

    let on_stream = stream_contents(&bus).await;
    assert_eq!(
        on_stream.len(),
        N,
        "the stream holds every stored event once"
    );
    assert_eq!(on_stream, stored, "in the store's order");
    assert_eq!(bus.last_published_position().await.unwrap(), Some(N as u64));

    // The live feed came back after the restarts: it delivers the newest event (it may have
    // missed some while NATS was down; the projector catches those up from the store).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while last < N as u64 {
        assert!(Instant::now() < deadline, "the live feed stopped at {last}");
        match tokio::time::timeout(Duration::from_secs(1), feed.recv()).await {
            Ok(Ok(e)) => {
                assert!(e.global_position > last, "the live feed went backwards");
                last = e.global_position;
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("the live feed closed: {e}"),
            Err(_) => {}
        }
    }
    eprintln!(
        "publisher test (crash: {crash}) took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_durable_consumer_delivers_in_order_and_resumes() {
    let server = NatsServer::start().await;
    let bus = JetStreamBus::connect(config(vec![server.url()]))
        .await
        .unwrap();
    let store = MemoryStore::new();
    let events = append_many(&store, 20).await;
    for e in &events {
        bus.publish(e).await.unwrap();
    }
    let quick = DurableOptions {
        ack_wait: Duration::from_secs(1),
        ..DurableOptions::default()
    };
    {
        let mut audit = bus.durable_with("audit", quick.clone()).await.unwrap();
        for e in &events[..12] {
            let d = tokio::time::timeout(Duration::from_secs(5), audit.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(&d.envelope, e);
            d.ack().await.unwrap();
        }
        // Taken but not acknowledged: delivered again to the next reader.
        let d = audit.next().await.unwrap().unwrap();
        assert_eq!(d.envelope, events[12]);
    }
    let mut audit = bus.durable_with("audit", quick).await.unwrap();
    for (i, e) in events[12..].iter().enumerate() {
        let d = tokio::time::timeout(Duration::from_secs(5), audit.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&d.envelope, e);
        assert_eq!(d.delivered, if i == 0 { 2 } else { 1 }, "{d:?}");
        d.ack().await.unwrap();
    }

    // A filtered consumer sees only its event types.
    let mut relay = bus
        .durable_with(
            "relay-a",
            DurableOptions {
                event_types: vec!["AccessRevoked".into()],
                ..DurableOptions::default()
            },
        )
        .await
        .unwrap();
    let revoked: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.event, DomainEvent::AccessRevoked(_)))
        .collect();
    assert_eq!(revoked.len(), 2);
    for e in revoked {
        let d = tokio::time::timeout(Duration::from_secs(5), relay.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&d.envelope, e);
        d.ack().await.unwrap();
    }
    assert!(
        bus.durable("bad.name").await.is_err(),
        "consumer names with dots are refused"
    );
}

#[tokio::test]
async fn a_replicated_stream_keeps_every_event_when_a_node_restarts() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3).await;
    let bus = JetStreamBus::connect(JetStreamConfig {
        replicas: 3,
        ..config(cluster.urls())
    })
    .await
    .unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let (_stop, shutdown) = watch::channel(false);
    let publisher = Publisher::spawn(
        Arc::clone(&store),
        Arc::new(bus.clone()) as Arc<dyn EventBus>,
        0,
        shutdown,
    );
    const N: usize = 120;
    let writer = spawn_writer(
        Arc::clone(&store),
        publisher.clone(),
        N,
        Duration::from_millis(5),
    );
    wait_published(&publisher, 40, Duration::from_secs(10)).await;
    // The first node is the one the client most likely talks to.
    cluster.nodes[0].stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[0].start_again().await;
    let stored = writer.await.unwrap();
    wait_published(&publisher, N as u64, Duration::from_secs(30)).await;
    let on_stream = stream_contents(&bus).await;
    assert_eq!(on_stream.len(), N);
    assert_eq!(on_stream, stored);
    eprintln!("cluster test took {:?}", started.elapsed());
}
