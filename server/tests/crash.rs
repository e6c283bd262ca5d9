//! Crash consistency of the single-machine server: SIGKILL in the middle of a burst of appends
//! from 8 concurrent clients, then a restart. Every acknowledged event is in the log, none
//! twice, and rebuilding the read models from the log (server stopped) gives what the running
//! server had.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, bin};
use serde_json::{Value, json};

/// Generous limits, so the burst measures the store and not the registration limits.
const ENV: &[(&str, &str)] = &[
    ("M87_REGISTRATIONS_PER_MINUTE", "1000000"),
    ("M87_REGISTRATIONS_PER_PREFIX", "1000000"),
    ("M87_REGISTRATIONS_PER_SCOPE", "1000000"),
    ("M87_MAX_PENDING_PER_SCOPE", "1000000"),
];
const CLIENTS: usize = 8;
/// Acknowledged appends to wait for before the kill.
const ACKED_BEFORE_KILL: usize = 300;

/// What a 2xx answer acknowledged: the stream it created.
#[derive(Debug, Clone)]
struct Acked {
    stream_id: String,
    event_type: &'static str,
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn registration(device: &str) -> Value {
    json!({
        "device_id": device,
        "name": device,
        "owner_scope": "user:admin@localhost",
        "system_info": {
            "hostname": "h", "platform": "linux", "architecture": "x86_64",
            "os_version": "Debian 12", "kernel": "6.1", "cpu_count": 4, "memory_bytes": 1024
        },
        "claim_secret": "0123456789abcdef0123456789abcdef-claim",
    })
}

/// One append; `Some` when the server acknowledged it with a 2xx.
async fn append_once(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    client: usize,
    n: usize,
) -> Option<Acked> {
    let (path, body) = if client.is_multiple_of(2) {
        (
            "/v1/api-keys",
            json!({ "name": format!("burst-{client}-{n}") }),
        )
    } else {
        let device = format!("crash-{client}-{n:05}");
        ("/v1/registrations", registration(&device))
    };
    let resp = http
        .post(format!("{url}{path}"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let v: Value = resp.json().await.ok()?;
    Some(if client.is_multiple_of(2) {
        Acked {
            stream_id: format!("apikey-{}", v["id"].as_str()?),
            event_type: "ApiKeyCreated",
        }
    } else {
        Acked {
            stream_id: format!("registration-{}", v["request_id"].as_str()?),
            event_type: "RegistrationRequested",
        }
    })
}

/// Runs `CLIENTS` clients appending as fast as they can until `stop`.
fn burst(
    url: &str,
    admin: &str,
    acked: &Arc<Mutex<Vec<Acked>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|client| {
            let (url, admin) = (url.to_owned(), admin.to_owned());
            let (acked, stop) = (Arc::clone(acked), Arc::clone(stop));
            tokio::spawn(async move {
                let http = http();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    match append_once(&http, &url, &admin, client, n).await {
                        Some(a) => acked.lock().unwrap().push(a),
                        // The server is gone: do not spin.
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect()
}

fn db(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join("m87.db")).unwrap()
}

fn count(conn: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> i64 {
    conn.query_row(sql, params, |r| r.get(0)).unwrap()
}

/// Read-model documents (collection, id, JSON) and projection checkpoints (name, position).
type ReadModels = (Vec<(String, String, String)>, Vec<(String, i64)>);

/// Every read-model document and every checkpoint, in order.
fn read_models(data: &Path) -> ReadModels {
    let conn = db(data);
    let mut stmt = conn
        .prepare("SELECT collection, id, doc FROM read_models ORDER BY collection, id")
        .unwrap();
    let docs = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut stmt = conn
        .prepare("SELECT name, position FROM projection_checkpoints ORDER BY name")
        .unwrap();
    let checkpoints = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (docs, checkpoints)
}

/// Waits until every projection of the running server has applied the whole log.
fn wait_projected(data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let conn = db(data);
        let head = count(
            &conn,
            "SELECT COALESCE(MAX(global_position), 0) FROM events",
            [],
        );
        let behind = count(
            &conn,
            "SELECT COUNT(*) FROM projection_checkpoints WHERE position < ?1",
            [head],
        );
        let all = count(&conn, "SELECT COUNT(*) FROM projection_checkpoints", []);
        if all > 0 && behind == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "projections did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn get_json(http: &reqwest::Client, url: &str, admin: &str, path: &str) -> Value {
    let resp = http
        .get(format!("{url}{path}"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json::<Value>().await.unwrap()
}

/// The REST answers an approver reads.
async fn rest_view(url: &str, admin: &str) -> (Value, Value) {
    let http = http();
    (
        get_json(&http, url, admin, "/v1/devices").await,
        get_json(&http, url, admin, "/v1/api-keys").await,
    )
}

/// Every acknowledged append is in the log exactly once, and the log has no duplicates.
fn assert_log_holds(data: &Path, acked: &[Acked]) {
    let conn = db(data);
    for a in acked {
        let n = count(
            &conn,
            "SELECT COUNT(*) FROM events WHERE stream_id = ?1 AND event_type = ?2",
            [&a.stream_id, a.event_type],
        );
        assert_eq!(
            n, 1,
            "acknowledged {} {} found {n} times",
            a.event_type, a.stream_id
        );
    }
    let dup_ids = count(
        &conn,
        "SELECT COUNT(*) - COUNT(DISTINCT event_id) FROM events",
        [],
    );
    assert_eq!(dup_ids, 0, "duplicate event ids");
    let dup_versions = count(
        &conn,
        "SELECT COUNT(*) FROM (SELECT stream_id, stream_version FROM events \
         GROUP BY stream_id, stream_version HAVING COUNT(*) > 1)",
        [],
    );
    assert_eq!(dup_versions, 0, "duplicate stream versions");
    // Every stream's versions run 1..=n without a gap.
    let gaps = count(
        &conn,
        "SELECT COUNT(*) FROM (SELECT stream_id FROM events GROUP BY stream_id \
         HAVING MIN(stream_version) != 1 OR MAX(stream_version) != COUNT(*))",
        [],
    );
    assert_eq!(gaps, 0, "streams with gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_burst_keeps_every_acknowledged_event_once_and_rebuilds_equal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_with_env(&data, "127.0.0.1:0", ENV);
    let admin = server.admin_key();

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = burst(&server.url, &admin, &acked, &stop);
    let deadline = Instant::now() + Duration::from_secs(15);
    while acked.lock().unwrap().len() < ACKED_BEFORE_KILL {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SIGKILL while the clients keep appending.
    server.proc.kill();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ACKED_BEFORE_KILL);
    assert!(acked.iter().any(|a| a.event_type == "ApiKeyCreated"));
    assert!(
        acked
            .iter()
            .any(|a| a.event_type == "RegistrationRequested")
    );
    drop(server);

    // Restarted: the log holds every acknowledged append once; the read models catch up.
    let mut server = Server::start_with_env(&data, "127.0.0.1:0", ENV);
    assert_log_holds(&data, &acked);
    wait_projected(&data);
    let rest_before = rest_view(&server.url, &admin).await;
    let listed = rest_before.0.as_array().unwrap().len() + rest_before.1.as_array().unwrap().len();
    assert!(
        listed >= acked.len(),
        "{listed} rows for {} acknowledged",
        acked.len()
    );
    let (docs_before, checkpoints_before) = read_models(&data);
    server.stop();

    // Rebuilt from the log while stopped: the same documents and checkpoints.
    let out = Command::new(bin("m87-server"))
        .args(["projections", "rebuild", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rebuild failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (docs_after, checkpoints_after) = read_models(&data);
    assert_eq!(docs_after.len(), docs_before.len());
    assert!(
        docs_after == docs_before,
        "read models differ after the rebuild"
    );
    assert_eq!(checkpoints_after, checkpoints_before);

    // And the server answers as before.
    let server = Server::start_with_env(&data, "127.0.0.1:0", ENV);
    assert_eq!(rest_view(&server.url, &admin).await, rest_before);
    assert_log_holds(&data, &acked);
}
