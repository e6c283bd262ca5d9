//! SIEM export in fleet mode, with the real binaries: two control-plane replicas on one MongoDB
//! (SecantusDB unless `MONGODB_URI` is set) share one sinks file with a webhook sink. Exactly
//! one exports; it is killed (SIGKILL) while records keep being made through the other, which
//! takes over within 10 s from the saved cursor; every event of the log arrives (duplicates
//! only of the same event), signed, chained by hash. Both replicas list the same audit records
//! and `m87-server audit verify` finds the MongoDB trail intact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fleet_support;
mod webhook;

use m87_test_support::{mongo, nats};

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{M87, bin, free_port};
use fleet_support::{Fleet, enroll};
use futures_util::TryStreamExt;
use m87_events::api::{CreateOrgRequest, CreateSessionRequest};
use m87_events::token::Operation;
use m87_transport::http::ApiClient;
use mongo::MongoServer;
use mongodb::bson::{Document, doc};
use serde_json::Value;
use webhook::{Received, receiver};

const HMAC_KEY: &str = "fleet-hook-secret-0123456789";

/// The MongoDB event log: global position → event id.
async fn event_log(db: &mongodb::Database) -> BTreeMap<u64, String> {
    let docs: Vec<Document> = db
        .collection::<Document>("events")
        .find(doc! {})
        .projection(doc! { "global_position": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter()
        .map(|d| {
            let p = match d.get("global_position").unwrap() {
                mongodb::bson::Bson::Int64(p) => *p as u64,
                mongodb::bson::Bson::Int32(p) => *p as u64,
                other => panic!("global_position {other:?}"),
            };
            (p, d.get_str("_id").unwrap().to_owned())
        })
        .collect()
}

/// Waits until the receiver holds every event of the log.
async fn wait_all(got: &Received, db: &mongodb::Database, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let log = event_log(db).await;
        let have: HashSet<String> = got
            .entries()
            .iter()
            .map(|e| e["envelope"]["event_id"].as_str().unwrap().to_owned())
            .collect();
        let missing: Vec<(&u64, &String)> =
            log.iter().filter(|(_, id)| !have.contains(*id)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events never reached the sink: {missing:?}",
            missing.len(),
            log.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether each control plane exports to the sink `hook` (`GET /v1/audit/export`).
async fn active(clients: &[&ApiClient]) -> Vec<bool> {
    let mut out = Vec::new();
    for c in clients {
        let status: Vec<Value> = c.get("/v1/audit/export").await.unwrap();
        let hook = status.iter().find(|s| s["name"] == "hook").unwrap();
        out.push(hook["active"].as_bool().unwrap());
    }
    out
}

/// Makes records through `client` until `stop`: a session granted, an organization created.
fn keep_making_records(
    client: ApiClient,
    device: String,
    tag: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let _: Value = client
                .post(
                    &format!("/v1/devices/{device}/sessions"),
                    &CreateSessionRequest {
                        operation: Operation::Exec,
                        args: serde_json::json!({"argv": ["echo", format!("{tag}-{n}")]}),
                    },
                )
                .await
                .unwrap();
            let _: Value = client
                .post(
                    "/v1/orgs",
                    &CreateOrgRequest {
                        id: format!("{tag}-{n}").parse().unwrap(),
                        name: None,
                    },
                )
                .await
                .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n
    })
}

/// `m87 audit -o json`, every record.
fn audit_json(m87: &M87) -> Vec<Value> {
    let out = m87.ok(&["audit", "--max", "1000", "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

/// Checks the deliveries: every event of `log` arrived, duplicates are the same event, and
/// the records chain by hash from the genesis.
fn check_deliveries(all: &[Value], log: &BTreeMap<u64, String>) {
    let mut first_seen: BTreeMap<u64, Value> = BTreeMap::new();
    for e in all {
        let p = e["envelope"]["global_position"].as_u64().unwrap();
        let prior = first_seen.entry(p).or_insert_with(|| e.clone());
        assert_eq!(prior, e, "a duplicate is the same entry (position {p})");
    }
    assert_eq!(
        first_seen.keys().collect::<Vec<_>>(),
        log.keys().collect::<Vec<_>>(),
        "the sink got exactly the positions of the log"
    );
    for (p, id) in log {
        assert_eq!(first_seen[p]["envelope"]["event_id"], id.as_str());
    }
    let mut prev = m87_events::audit::GENESIS.to_owned();
    for e in first_seen.values() {
        assert_eq!(
            e["prev_hash"],
            prev.as_str(),
            "the chain breaks at {}",
            e["envelope"]["global_position"]
        );
        prev = e["hash"].as_str().unwrap().to_owned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_exports_and_the_other_takes_over_within_10s_losing_nothing() {
    let mut fleet = Fleet::new(1, MongoServer::shared()).await;
    let port = free_port();
    let sinks = fleet.path("sinks.toml");
    std::fs::write(
        &sinks,
        format!(
            "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
             hmac_key = \"{HMAC_KEY}\"\nformat = \"json\"\nbatch_size = 20\ntimeout = \"2s\"\n"
        ),
    )
    .unwrap();
    fleet.control_plane_env = vec![(
        "M87_AUDIT_SINKS".to_owned(),
        sinks.to_str().unwrap().to_owned(),
    )];
    let got = Received::default();
    receiver(port, HMAC_KEY, got.clone());
    fleet.start_control_plane();
    fleet.start_control_plane();
    fleet.start_relay();
    fleet.wait_for_relays(1);
    let key = fleet.admin_key();
    let (admin0, admin1) = (fleet.admin(0), fleet.admin(1));
    let cp0 = fleet.control_planes[0].url.clone();
    let (_runtime, device) = enroll(&admin0, &cp0, &fleet.path("device"), "audited");
    let api: Vec<ApiClient> = fleet
        .control_planes
        .iter()
        .map(|cp| ApiClient::new(&cp.url, Some(key.clone()), true).unwrap())
        .collect();
    let db = fleet.database().await;

    // Records made through both replicas at once: every one reaches the sink.
    let stop = Arc::new(AtomicBool::new(false));
    let makers = [
        keep_making_records(api[0].clone(), device.clone(), "a", stop.clone()),
        keep_making_records(api[1].clone(), device.clone(), "b", stop.clone()),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for m in makers {
        assert!(m.await.unwrap() > 0);
    }
    wait_all(&got, &db, Duration::from_secs(20)).await;

    // Exactly one replica exports.
    let clients: Vec<&ApiClient> = api.iter().collect();
    let mut shown = active(&clients).await;
    for _ in 0..3 {
        let again = active(&clients).await;
        assert_eq!(
            again, shown,
            "the exporting replica changed while both live"
        );
        shown = again;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        shown.iter().filter(|a| **a).count(),
        1,
        "exactly one replica exports: {shown:?}"
    );
    let exporting = shown.iter().position(|a| *a).unwrap();
    // One exporter: so far each entry arrived once, in order, never interleaved with another's.
    let positions: Vec<u64> = got
        .entries()
        .iter()
        .map(|e| e["envelope"]["global_position"].as_u64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "deliveries interleaved or repeated while one replica exported: {positions:?}"
    );
    let survivor = 1 - exporting;

    // Both replicas list the same records.
    let (list0, list1) = (audit_json(&admin0), audit_json(&admin1));
    assert!(list0.len() > 20, "{list0:?}");
    assert_eq!(list0, list1, "the replicas' audit listings differ");

    // The exporter crashes while records keep being made through the survivor.
    let stop = Arc::new(AtomicBool::new(false));
    let maker = keep_making_records(api[survivor].clone(), device.clone(), "c", stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.kill_control_plane(exporting);
    let killed_at = Instant::now();
    let deadline = killed_at + Duration::from_secs(10);
    let taken_over = loop {
        if let Some(at) = got.first_new_after(killed_at) {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery within 10 s of the exporter's death; survivor:\n{}",
            fleet.control_planes[survivor].proc.out.all()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let takeover = taken_over - killed_at;
    println!("takeover: first delivery by the survivor {takeover:?} after the kill");
    assert!(takeover < Duration::from_secs(10), "{takeover:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(maker.await.unwrap() > 0);
    wait_all(&got, &db, Duration::from_secs(20)).await;
    let survivor_only = vec![&api[survivor]];
    assert_eq!(active(&survivor_only).await, vec![true]);
    check_deliveries(&got.entries(), &event_log(&db).await);

    // The crashed replica comes back: both list the same records again.
    fleet.restart_control_plane(exporting);
    let restarted = fleet.admin(exporting);
    let survivor_cli = fleet.admin(survivor);
    let (a, b) = (audit_json(&restarted), audit_json(&survivor_cli));
    assert_eq!(
        a, b,
        "the replicas' audit listings differ after the restart"
    );
    assert!(a.iter().any(|r| r["args"]["argv"][1] == "c-0"), "{a:?}");

    // The chain in MongoDB verifies.
    let out = Command::new(bin("m87-server"))
        .args(["audit", "verify", "--mongodb-uri", fleet.mongo.uri()])
        .args(["--mongodb-database", &fleet.database])
        .arg("--data-dir")
        .arg(fleet.path("verify"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("audit trail intact"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
