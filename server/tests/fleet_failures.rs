//! Fleet failures, with the real binaries, counted end to end: after each fault, the events in
//! the MongoDB store are gap-free, the JetStream stream holds each of them exactly once, every
//! projection has applied all of them, and the read models equal a replay of the log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fleet_support;

use m87_test_support::{mongo, nats};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_support::Fleet;
use futures_util::TryStreamExt;
use m87_control_plane::projections::{Projector, all_projections};
use m87_control_plane::store::EventStore;
use m87_control_plane::store::ReadStore;
use m87_control_plane::store::memory::MemoryReadStore;
use m87_control_plane::store::mongo::MongoReadStore;
use m87_control_plane::store::mongo::MongoStore;
use mongo::MongoServer;
use mongodb::bson::doc;
use serde_json::{Value, json};

const CLAIM: &str = "claim-secret-0123456789abcdef0123456789";

/// The REST API of one control plane, as the platform admin.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn new(base: &str, key: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            http: reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
            base: base.to_owned(),
            key: key.to_owned(),
        }
    }

    /// POST with the admin key; (status, body) or None when the server could not be reached.
    async fn post(&self, path: &str, body: &Value, auth: bool) -> Option<(u16, Value)> {
        let mut r = self.http.post(format!("{}{path}", self.base)).json(body);
        if auth {
            r = r.bearer_auth(&self.key);
        }
        let resp = r.send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn get(&self, path: &str) -> Option<(u16, Value)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Registers device `name`; the request id when the server accepted it.
    async fn register(&self, name: &str) -> Option<String> {
        let body = json!({
            "device_id": format!("{name}-0000"),
            "name": name,
            "owner_scope": "user:admin@localhost",
            "system_info": {
                "hostname": name, "platform": "linux", "architecture": "x86_64",
                "os_version": "Debian 12", "kernel": "6.1", "cpu_count": 2, "memory_bytes": 1024
            },
            "claim_secret": CLAIM,
        });
        match self.post("/v1/registrations", &body, false).await {
            Some((201, v)) => v["request_id"].as_str().map(str::to_owned),
            _ => None,
        }
    }

    /// Approves a request; the status code, or None when unreachable.
    async fn approve(&self, request: &str) -> Option<u16> {
        self.post(
            &format!("/v1/registrations/{request}/approve"),
            &json!({}),
            true,
        )
        .await
        .map(|(s, _)| s)
    }

    /// The approved devices' names.
    async fn approved(&self) -> Option<BTreeSet<String>> {
        let (status, v) = self.get("/v1/devices").await?;
        if status != 200 {
            return None;
        }
        Some(
            v.as_array()?
                .iter()
                .filter(|d| d["status"] == "approved")
                .filter_map(|d| d["name"].as_str().map(str::to_owned))
                .collect(),
        )
    }
}

/// Waits for `check` for up to `timeout`.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The counts, end to end.
#[derive(Debug, PartialEq)]
struct Counts {
    stored: u64,
    highest_position: u64,
    on_stream: u64,
    checkpoints: Vec<(String, u64)>,
}

async fn counts(fleet: &Fleet) -> Counts {
    let db = fleet.database().await;
    let events = db.collection::<mongodb::bson::Document>("events");
    let stored = events.count_documents(doc! {}).await.unwrap();
    let highest_position = events
        .find_one(doc! {})
        .sort(doc! { "global_position": -1 })
        .await
        .unwrap()
        .and_then(|d| d.get_i64("global_position").ok())
        .unwrap_or(0) as u64;
    let js = async_nats::jetstream::new(fleet.nats_client().await);
    let on_stream = match js.get_stream("M87_EVENTS").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    };
    let checkpoints: Vec<(String, u64)> = db
        .collection::<mongodb::bson::Document>("projection_checkpoints")
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|d| {
            (
                d.get_str("_id").unwrap().to_owned(),
                d.get_i64("position")
                    .or_else(|_| d.get_i32("position").map(i64::from))
                    .unwrap() as u64,
            )
        })
        .collect();
    Counts {
        stored,
        highest_position,
        on_stream,
        checkpoints,
    }
}

/// Asserts the end-to-end counts once the fleet settles: no event lost or duplicated between
/// the store, the stream and every projection; the read models equal a replay of the log; the
/// stream's events are each position once, in order.
async fn assert_nothing_lost_or_doubled(fleet: &Fleet) -> Counts {
    let projections = all_projections().len();
    // Up to the 60 s MongoDB takes to abort a transaction a killed control plane left open,
    // and more.
    let deadline = Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let c = counts(fleet).await;
        let settled = c.stored > 0
            && c.stored == c.highest_position
            && c.on_stream == c.stored
            && c.checkpoints.len() == projections
            && c.checkpoints.iter().all(|(_, p)| *p == c.stored);
        if settled {
            break c;
        }
        assert!(Instant::now() < deadline, "the fleet did not settle: {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Each position exactly once on the stream, in order.
    let js = async_nats::jetstream::new(fleet.nats_client().await);
    let stream = js.get_stream("M87_EVENTS").await.unwrap();
    let mut positions = Vec::new();
    for seq in 1..=counts.on_stream {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let p: u64 = msg
            .headers
            .get("M87-Position")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        positions.push(p);
    }
    let expected: Vec<u64> = (1..=counts.stored).collect();
    assert_eq!(positions, expected, "the stream's positions");

    // The live read models equal a replay of the whole log.
    let db = fleet.database().await;
    let store: Arc<dyn EventStore> = Arc::new(MongoStore::open(&db).await.unwrap());
    let live: Arc<dyn ReadStore> = Arc::new(MongoReadStore::open(&db).await.unwrap());
    let replay: Arc<dyn ReadStore> = Arc::new(MemoryReadStore::new());
    let projector = Projector::new(Arc::clone(&store), Arc::clone(&replay), all_projections())
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    for p in all_projections() {
        for collection in p.collections() {
            assert_eq!(
                live.list(collection).await.unwrap(),
                replay.list(collection).await.unwrap(),
                "read model {collection} differs from a replay of the log"
            );
        }
    }
    counts
}

async fn two_control_planes(nats_nodes: usize, mongo: Arc<MongoServer>) -> (Fleet, Api, Api) {
    let mut fleet = Fleet::new(nats_nodes, mongo).await;
    fleet.start_control_plane();
    fleet.start_control_plane();
    let key = fleet.admin_key();
    let a = Api::new(&fleet.control_planes[0].url, &key);
    let b = Api::new(&fleet.control_planes[1].url, &key);
    (fleet, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_during_a_stream_of_approvals_loses_and_doubles_nothing() {
    let (mut fleet, a, b) = two_control_planes(1, MongoServer::shared()).await;
    const N: usize = 24;
    let apis = (a.clone(), b.clone());
    let work = tokio::spawn(async move {
        let mut approved = Vec::new();
        for i in 0..N {
            let (reg, dec) = if i % 2 == 0 {
                (&apis.0, &apis.1)
            } else {
                (&apis.1, &apis.0)
            };
            let name = format!("nats-{i}");
            let request = reg.register(&name).await.expect("registration accepted");
            assert_eq!(dec.approve(&request).await, Some(200), "approving {name}");
            approved.push(name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        approved
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    fleet.nats.nodes[0].stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.nats.nodes[0].start_again().await;
    let approved: BTreeSet<String> = work.await.unwrap().into_iter().collect();
    assert_eq!(approved.len(), N);
    for api in [&a, &b] {
        let seen = eventually(Duration::from_secs(20), || async {
            api.approved().await.as_ref() == Some(&approved)
        })
        .await;
        assert!(seen, "{} lists {:?}", api.base, api.approved().await);
    }
    let c = assert_nothing_lost_or_doubled(&fleet).await;
    // Each device: requested, approved, enrolled, credentials issued... at least 3 events.
    assert!(c.stored >= 3 * N as u64, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_mid_append_loses_and_doubles_nothing() {
    let (mut fleet, a, b) = two_control_planes(1, MongoServer::shared()).await;
    // Four writers hammer control plane 1 while it is killed; answers that arrived say what
    // must be in the store.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (a, stop) = (a.clone(), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut confirmed = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let name = format!("kill-{w}-{i}");
                if let Some(request) = a.register(&name).await
                    && a.approve(&request).await == Some(200)
                {
                    confirmed.push(name);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            confirmed
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fleet.kill_control_plane(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut confirmed = BTreeSet::new();
    for w in writers {
        confirmed.extend(w.await.unwrap());
    }
    assert!(
        !confirmed.is_empty(),
        "no approval got through before the kill"
    );
    fleet.restart_control_plane(0);
    let a = Api::new(&fleet.control_planes[0].url, &fleet.admin_key());
    // Every approval that was answered is there, on both replicas; nothing else is approved
    // except at most one per writer whose answer the kill swallowed.
    for api in [&a, &b] {
        let seen = eventually(Duration::from_secs(20), || async {
            api.approved()
                .await
                .is_some_and(|s| s.is_superset(&confirmed) && s.len() <= confirmed.len() + 4)
        })
        .await;
        assert!(
            seen,
            "{} lists {:?}; confirmed {confirmed:?}",
            api.base,
            api.approved().await
        );
    }
    assert_nothing_lost_or_doubled(&fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_approving_the_same_request_at_once_one_wins() {
    let (fleet, a, b) = two_control_planes(1, MongoServer::shared()).await;
    for i in 0..8 {
        let request = a.register(&format!("race-{i}")).await.unwrap();
        let (x, y) = tokio::join!(a.approve(&request), b.approve(&request));
        let mut answers = vec![x.unwrap(), y.unwrap()];
        answers.sort_unstable();
        assert_eq!(answers, vec![200, 409], "request {request}");
    }
    assert_nothing_lost_or_doubled(&fleet).await;
    let db = fleet.database().await;
    let approvals = db
        .collection::<mongodb::bson::Document>("events")
        .count_documents(doc! { "event_type": "RegistrationApproved" })
        .await
        .unwrap();
    assert_eq!(approvals, 8, "exactly one approval event per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_unreachable_answers_503_and_recovers_by_itself() {
    // A MongoDB of its own, to pause.
    let mongo = Arc::new(MongoServer::start_secantus());
    let pid = mongo.pid().expect("our own server");
    let mut fleet = Fleet::new(1, Arc::clone(&mongo)).await;
    fleet.start_control_plane();
    let a = Api::new(&fleet.control_planes[0].url, &fleet.admin_key());
    let first = a.register("before").await.unwrap();
    assert_eq!(a.approve(&first).await, Some(200));

    // The database stops answering (its connections stay open, as in a network partition).
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let asked = Instant::now();
    let (status, body) = a.get("/v1/devices").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{body}"
    );
    assert!(asked.elapsed() < Duration::from_secs(30));
    let (status, _) = a
        .post(
            "/v1/registrations/01a20000-0000-7000-8000-000000000000/approve",
            &json!({}),
            true,
        )
        .await
        .unwrap();
    assert_eq!(status, 503);

    // Back: it recovers without a restart.
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let recovered = eventually(Duration::from_secs(30), || async {
        a.approved().await.is_some_and(|s| s.contains("before"))
    })
    .await;
    assert!(recovered, "the API did not recover");
    let second = a.register("after").await.unwrap();
    assert_eq!(a.approve(&second).await, Some(200));
    assert_nothing_lost_or_doubled(&fleet).await;
    drop(fleet);
    drop(mongo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_pending_steps_once_and_rebuild_restores_the_read_models() {
    let (fleet, a, _b) = two_control_planes(1, MongoServer::shared()).await;
    // The control planes migrated this database at start: nothing is pending.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::bin("m87-server"))
            .args(args)
            .env("M87_MONGODB_URI", fleet.mongo.uri())
            .env("M87_MONGODB_DATABASE", &fleet.database)
            .output()
            .unwrap();
        assert!(out.status.success(), "m87-server {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let said = run(&["migrate"]);
    assert!(said.contains("up to date (version 3)"), "{said}");
    // A new database gets every step, once.
    let fresh = mongo::unique_name("migrate");
    let first = std::process::Command::new(common::bin("m87-server"))
        .args(["migrate", "--mongodb-uri", fleet.mongo.uri()])
        .args(["--mongodb-database", &fresh])
        .output()
        .unwrap();
    let first = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.contains("applied MongoDB migrations [1, 2, 3]"),
        "{first}"
    );
    let db = mongodb::Client::with_uri_str(fleet.mongo.uri())
        .await
        .unwrap()
        .database(&fresh);
    let indexes = db
        .collection::<mongodb::bson::Document>("events")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        indexes.contains(&"events_stream_version".to_owned()),
        "{indexes:?}"
    );

    // Some history, then the read models are dropped and rebuilt while the control planes run.
    for i in 0..3 {
        let request = a.register(&format!("rebuild-{i}")).await.unwrap();
        assert_eq!(a.approve(&request).await, Some(200));
    }
    let before = a.approved().await.unwrap();
    let said = run(&["projections", "rebuild"]);
    assert!(
        said.contains("rebuilt all projections up to event"),
        "{said}"
    );
    assert_eq!(a.approved().await.unwrap(), before);
    let said = run(&["projections", "rebuild", "devices"]);
    assert!(said.contains("rebuilt devices"), "{said}");
    assert_nothing_lost_or_doubled(&fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_by_a_killed_replica_does_not_keep_another_from_starting() {
    let mut fleet = Fleet::new(1, MongoServer::shared()).await;
    fleet.start_control_plane();
    let a = Api::new(&fleet.control_planes[0].url, &fleet.admin_key());
    let first = a.register("open-tx-1").await.unwrap();
    assert_eq!(a.approve(&first).await, Some(200));

    // What a control plane killed in the middle of a projection commit leaves behind: a
    // transaction that wrote a checkpoint and never ended. MongoDB keeps it (and its write
    // lock) until it aborts it, 60 s later by default.
    let client = mongodb::Client::with_uri_str(fleet.mongo.uri())
        .await
        .unwrap();
    let checkpoints = client
        .database(&fleet.database)
        .collection::<mongodb::bson::Document>("projection_checkpoints");
    let mut orphan = client.start_session().await.unwrap();
    orphan.start_transaction().await.unwrap();
    checkpoints
        .update_one(
            doc! { "_id": "devices" },
            doc! { "$set": { "held_by": "a killed control plane" } },
        )
        .session(&mut orphan)
        .await
        .unwrap();
    // New events cannot be projected meanwhile; the API still answers.
    let second = a.register("open-tx-2").await.unwrap();
    assert_eq!(a.approve(&second).await, Some(200));

    // Another replica starts regardless, and serves.
    fleet.start_control_plane();
    let b = Api::new(&fleet.control_planes[1].url, &fleet.admin_key());
    let (status, _) = b.get("/v1/devices").await.unwrap();
    assert_eq!(status, 200);

    // Once MongoDB drops the orphan, everything catches up.
    orphan.abort_transaction().await.unwrap();
    let expected: BTreeSet<String> = ["open-tx-1", "open-tx-2"].map(String::from).into();
    for api in [&a, &b] {
        let seen = eventually(Duration::from_secs(20), || async {
            api.approved().await.as_ref() == Some(&expected)
        })
        .await;
        assert!(seen, "{} lists {:?}", api.base, api.approved().await);
    }
    assert_nothing_lost_or_doubled(&fleet).await;
}
