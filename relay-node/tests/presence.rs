//! The presence registry: one suite against the in-process map and the NATS KV bucket (a real
//! `nats-server`, see `m87_test_support::nats`), plus what only the NATS one does:
//! the cache fed by the watch, shared between relays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use m87_test_support::nats as nats_support;

use std::time::{Duration, Instant};

use chrono::Utc;
use m87_events::DeviceId;
use m87_relay_node::presence::{
    InProcessPresence, NatsPresence, NatsPresenceConfig, Presence, PresenceEntry, PresenceError,
    PresenceRegistry,
};
use nats_support::NatsServer;

const TTL: Duration = Duration::from_secs(1);

fn device(name: &str) -> DeviceId {
    format!("device-{name}").parse().unwrap()
}

fn entry(relay: &str, epoch: u64) -> PresenceEntry {
    PresenceEntry {
        relay_id: relay.to_owned(),
        relay_addr: format!("127.0.0.{}:4433", epoch % 250 + 1).parse().unwrap(),
        epoch,
        connected_at: Utc::now(),
    }
}

async fn nats(server: &NatsServer) -> NatsPresence {
    NatsPresence::new(
        server.client().await,
        NatsPresenceConfig {
            ttl: TTL,
            request_timeout: Duration::from_secs(1),
            ..NatsPresenceConfig::default()
        },
    )
    .await
    .unwrap()
}

/// What `reg` answers for `d` once the news of `want` has reached it (another instance's
/// cache lags by the watch's delivery delay).
async fn sees(reg: &dyn PresenceRegistry, d: &DeviceId, want: Option<u64>) -> Option<Presence> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let found = reg.lookup(d).await.unwrap();
        if found.as_ref().map(|p| p.revision) == want {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "lookup of {d} still answers {found:?}, not revision {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Register, look up, refresh, and remove only what is still one's own. `a` and `b` are two
/// relays' views of one registry.
async fn register_lookup_and_owner_checks(a: &dyn PresenceRegistry, b: &dyn PresenceRegistry) {
    let d = device("0001");
    assert_eq!(a.lookup(&d).await.unwrap(), None);

    // The writer reads its own write at once; the other relay soon.
    let on_a = entry("relay-a", 1);
    let rev_a = a.register(&d, &on_a).await.unwrap();
    let found = a.lookup(&d).await.unwrap().unwrap();
    assert_eq!((found.entry, found.revision), (on_a.clone(), rev_a));
    assert_eq!(sees(b, &d, Some(rev_a)).await.unwrap().entry, on_a);

    // Heartbeat: a new revision, same entry.
    let rev_a2 = a.refresh(&d, &on_a, rev_a).await.unwrap();
    assert!(rev_a2 > rev_a);
    assert_eq!(a.lookup(&d).await.unwrap().unwrap().revision, rev_a2);
    sees(b, &d, Some(rev_a2)).await;

    // The device reconnects to relay B; the late close of A's tunnel (with a stale revision)
    // removes nothing.
    let on_b = entry("relay-b", 7);
    let rev_b = b.register(&d, &on_b).await.unwrap();
    assert!(rev_b > rev_a2);
    assert!(!a.remove_if_owner(&d, rev_a2).await.unwrap());
    assert!(!a.remove_if_owner(&d, rev_a).await.unwrap());
    assert_eq!(sees(a, &d, Some(rev_b)).await.unwrap().entry, on_b);
    assert_eq!(b.lookup(&d).await.unwrap().unwrap().entry, on_b);

    // A's heartbeat learns it lost the device, and writes nothing.
    match a.refresh(&d, &on_a, rev_a2).await {
        Err(PresenceError::Superseded {
            relay_id, epoch, ..
        }) => {
            assert_eq!((relay_id.as_str(), epoch), ("relay-b", 7));
        }
        other => panic!("expected Superseded, got {other:?}"),
    }
    assert_eq!(b.lookup(&d).await.unwrap().unwrap().revision, rev_b);

    // B's own removal works, once.
    assert!(b.remove_if_owner(&d, rev_b).await.unwrap());
    assert!(!b.remove_if_owner(&d, rev_b).await.unwrap());
    assert_eq!(b.lookup(&d).await.unwrap(), None);
    sees(a, &d, None).await;

    // A refresh after the entry is gone claims it again (the tunnel is still up).
    let rev = b.refresh(&d, &on_b, rev_b).await.unwrap();
    assert!(rev > rev_b);
    assert_eq!(b.lookup(&d).await.unwrap().unwrap().revision, rev);
    sees(a, &d, Some(rev)).await;
}

/// Entries vanish after the TTL without a refresh, and stay with one.
async fn ttl_expiry_and_refresh(a: &dyn PresenceRegistry, b: &dyn PresenceRegistry) {
    let idle = device("idle-0001");
    let alive = device("alive-0001");
    a.register(&idle, &entry("relay-a", 1)).await.unwrap();
    let on_b = entry("relay-b", 2);
    let mut rev = b.register(&alive, &on_b).await.unwrap();
    let started = Instant::now();
    // Refresh every third of the TTL for 2.5 TTLs.
    while started.elapsed() < TTL * 5 / 2 {
        tokio::time::sleep(TTL / 3).await;
        rev = b.refresh(&alive, &on_b, rev).await.unwrap();
    }
    assert_eq!(
        a.lookup(&idle).await.unwrap(),
        None,
        "expired without refresh"
    );
    assert_eq!(
        b.lookup(&idle).await.unwrap(),
        None,
        "expired without refresh"
    );
    let p = sees(a, &alive, Some(rev))
        .await
        .expect("kept by its refresh");
    assert_eq!(p.entry, on_b);
}

#[tokio::test]
async fn in_process_register_lookup_and_owner_checks() {
    let r = InProcessPresence::new(TTL);
    register_lookup_and_owner_checks(&r, &r).await;
}

#[tokio::test]
async fn in_process_ttl_expiry_and_refresh() {
    let r = InProcessPresence::new(TTL);
    ttl_expiry_and_refresh(&r, &r).await;
}

#[tokio::test]
async fn nats_register_lookup_and_owner_checks() {
    let server = NatsServer::start().await;
    let a = nats(&server).await;
    let b = nats(&server).await;
    register_lookup_and_owner_checks(&a, &b).await;
}

#[tokio::test]
async fn nats_ttl_expiry_and_refresh() {
    let server = NatsServer::start().await;
    let a = nats(&server).await;
    let b = nats(&server).await;
    ttl_expiry_and_refresh(&a, &b).await;
    // Gone from the caches too, not only from the bucket.
    assert_eq!(a.cached(&device("idle-0001")), None);
    assert_eq!(b.cached(&device("idle-0001")), None);
    assert!(b.cached(&device("alive-0001")).is_some());
    // This server (2.11+) writes a marker when an entry expires, which is what told the caches.
    let js = async_nats::jetstream::new(server.client().await);
    let mut stream = js.get_stream("KV_m87_presence").await.unwrap();
    let config = &stream.info().await.unwrap().config;
    assert_eq!(config.max_age, TTL);
    assert_eq!(config.subject_delete_marker_ttl, Some(TTL));
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_cache_follows_other_relays_through_the_watch() {
    let server = NatsServer::start().await;
    let d = device("0002");
    // An entry from before the relay started is in its cache once the watch is current.
    let early = nats(&server).await;
    let rev0 = early.register(&d, &entry("relay-0", 1)).await.unwrap();
    let a = nats(&server).await;
    let b = nats(&server).await;
    eventually("the watch catching up", || {
        a.cache_is_current().then_some(())
    })
    .await;
    assert_eq!(a.cached(&d).unwrap().revision, rev0);

    // Relay B registers; A's cache sees it without asking.
    let on_b = entry("relay-b", 3);
    let rev_b = b.register(&d, &on_b).await.unwrap();
    let seen = eventually("A seeing B's registration", || {
        a.cached(&d).filter(|p| p.revision == rev_b)
    })
    .await;
    assert_eq!(seen.entry, on_b);
    assert_eq!(a.lookup(&d).await.unwrap().unwrap().entry, on_b);

    // B removes it; A's cache drops it.
    assert!(b.remove_if_owner(&d, rev_b).await.unwrap());
    eventually("A seeing the removal", || {
        a.cached(&d).is_none().then_some(())
    })
    .await;
    assert_eq!(a.lookup(&d).await.unwrap(), None);
}

#[tokio::test]
async fn nats_presence_comes_back_after_a_nats_restart() {
    let mut server = NatsServer::start().await;
    let a = nats(&server).await;
    let d = device("0003");
    let on_a = entry("relay-a", 1);
    let rev = a.register(&d, &on_a).await.unwrap();
    server.stop();
    assert!(a.refresh(&d, &on_a, rev).await.is_err(), "NATS is down");
    server.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let rev = loop {
        match a.refresh(&d, &on_a, rev).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "refresh still fails: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let b = nats(&server).await;
    assert_eq!(b.lookup(&d).await.unwrap().unwrap().revision, rev);
    eventually("A's watch resuming", || {
        a.cached(&d).filter(|p| p.revision == rev)
    })
    .await;
}
