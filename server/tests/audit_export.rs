//! SIEM export through the real server: a real rsyslog stopped for 20 s while 500 sessions are
//! granted, and a webhook receiver down meanwhile, get every record once they come back (RFC 5424
//! with the event id in the structured data); the server restarted in the middle of an export
//! loses nothing (duplicates carry the same event id); every request is signed; the records
//! chain by hash at the receiver; a local file gets the same records as OCSF; `m87-server
//! audit-export status` shows the lag and never the secret; a bad sinks file stops the server
//! at start naming the line and key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../audit-export/tests/common/rsyslog.rs"]
#[allow(dead_code)]
mod rsyslog;
mod webhook;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{M87, Server, bin, enrolled_device, free_port};
use m87_events::api::CreateSessionRequest;
use m87_events::token::Operation;
use m87_transport::http::ApiClient;
use serde_json::Value;
use webhook::{Received, receiver};

const HMAC_KEY: &str = "test-hook-secret-0123456789";

fn event_ids(db: &std::path::Path) -> Vec<(u64, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT global_position, event_id FROM events ORDER BY global_position")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

async fn grant_many(server: &Server, device_id: &str, n: usize) {
    let client = ApiClient::new(&server.url, Some(server.admin_key()), true).unwrap();
    for i in 0..n {
        let _: Value = client
            .post(
                &format!("/v1/devices/{device_id}/sessions"),
                &CreateSessionRequest {
                    operation: Operation::Exec,
                    args: serde_json::json!({"argv": ["echo", i.to_string()]}),
                },
            )
            .await
            .unwrap();
    }
}

/// Waits until the receiver holds every event of the log.
fn wait_all(got: &Received, db: &std::path::Path, within: Duration, server: &Server) {
    let deadline = Instant::now() + within;
    loop {
        let want: HashSet<String> = event_ids(db).into_iter().map(|(_, id)| id).collect();
        let have: HashSet<String> = got
            .entries()
            .iter()
            .map(|e| e["envelope"]["event_id"].as_str().unwrap().to_owned())
            .collect();
        if want.is_subset(&have) {
            return;
        }
        if Instant::now() >= deadline {
            let conn = rusqlite::Connection::open(db).unwrap();
            let missing: Vec<String> = want
                .difference(&have)
                .map(|id| {
                    conn.query_row(
                        "SELECT global_position || ' ' || event_type FROM events WHERE event_id = ?1",
                        [id],
                        |r| r.get(0),
                    )
                    .unwrap()
                })
                .collect();
            panic!(
                "{} of {} records arrived; missing {missing:?}\nserver:\n{}",
                want.intersection(&have).count(),
                want.len(),
                server.proc.out.all()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until rsyslog wrote a record for every event of the log: RFC 5424, the event id in
/// the `m87@32473` structured data, a CEF message.
fn wait_syslog(syslog: &rsyslog::Rsyslog, db: &std::path::Path, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let want: HashSet<String> = event_ids(db).into_iter().map(|(_, id)| id).collect();
        let have: HashSet<String> = syslog
            .lines()
            .iter()
            .map(|l| {
                let m = rsyslog::parse_5424(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                assert!(m.msg.starts_with("CEF:0|m87|"), "{l}");
                let (id, params) = &m.sd[0];
                assert_eq!(id, "m87@32473");
                params
                    .iter()
                    .find(|(k, _)| k == "event_id")
                    .unwrap()
                    .1
                    .clone()
            })
            .collect();
        if want.is_subset(&have) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rsyslog has {} of {} records; its log: {}",
            want.intersection(&have).count(),
            want.len(),
            syslog.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(data: &std::path::Path, url: &str) -> String {
    let out = Command::new(bin("m87-server"))
        .args(["audit-export", "status", "--api-url", url, "--data-dir"])
        .arg(data)
        .env_remove("M87_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_the_sinks_through_an_outage_and_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let file = tmp.path().join("audit.jsonl");
    let sinks = tmp.path().join("sinks.toml");
    let syslog_dir = tmp.path().join("rsyslog");
    std::fs::create_dir_all(&syslog_dir).unwrap();
    let mut syslog = rsyslog::Rsyslog::start(&syslog_dir, free_port(), None);
    std::fs::write(
        &sinks,
        format!(
            "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
             hmac_key = \"{HMAC_KEY}\"\nformat = \"json\"\nbatch_size = 50\ntimeout = \"2s\"\n\n\
             [[sink]]\nname = \"local\"\nkind = \"file\"\npath = \"{}\"\nformat = \"ocsf\"\n\n\
             [[sink]]\nname = \"siem\"\nkind = \"syslog\"\ntransport = \"tcp\"\n\
             address = \"127.0.0.1:{}\"\nformat = \"cef\"\ntimeout = \"2s\"\n",
            file.display(),
            syslog.port
        ),
    )
    .unwrap();
    let env = [("M87_AUDIT_SINKS", sinks.to_str().unwrap())];
    let server = Server::start_with_env(&data, "127.0.0.1:0", &env);
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (runtime, _dev) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "exp-dev");
    let device_id = admin.devices()[0]["id"].as_str().unwrap().to_owned();
    let db = data.join("m87.db");

    // rsyslog is stopped and the webhook receiver down while 500 sessions are granted; rsyslog
    // comes back after 20 s.
    wait_syslog(&syslog, &db, Duration::from_secs(30));
    syslog.stop();
    let stopped = Instant::now();
    grant_many(&server, &device_id, 500).await;
    std::thread::sleep(Duration::from_secs(2));
    let shown = status(&data, &server.url);
    assert!(
        shown.contains("hook") && shown.contains("webhook"),
        "{shown}"
    );
    assert!(!shown.contains(HMAC_KEY), "the secret leaked: {shown}");
    let hook_line = shown
        .lines()
        .find(|l| l.starts_with("hook"))
        .unwrap()
        .to_owned();
    let lag: u64 = hook_line
        .split_whitespace()
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    assert!(lag >= 500, "lag while the receiver is down: {shown}");
    std::thread::sleep(Duration::from_secs(20).saturating_sub(stopped.elapsed()));
    syslog.restart();
    wait_syslog(&syslog, &db, Duration::from_secs(60));

    // It comes up: everything arrives.
    let got = Received::default();
    receiver(port, HMAC_KEY, got.clone());
    wait_all(&got, &db, Duration::from_secs(60), &server);

    // More sessions, and the server restarted in the middle of their export.
    grant_many(&server, &device_id, 200).await;
    let mut server = server;
    server.stop();
    let server = Server::start_with_env(&data, &server.addr.clone(), &env);
    wait_all(&got, &db, Duration::from_secs(30), &server);
    wait_syslog(&syslog, &db, Duration::from_secs(30));
    drop(runtime);

    // Nothing lost; duplicates only of the same event; in event order; the chain holds.
    let log = event_ids(&db);
    let all = got.entries();
    let mut first_seen: BTreeMap<u64, Value> = BTreeMap::new();
    let mut order = Vec::new();
    for e in &all {
        let p = e["envelope"]["global_position"].as_u64().unwrap();
        if !first_seen.contains_key(&p) {
            order.push(p);
        }
        let prior = first_seen.entry(p).or_insert_with(|| e.clone());
        assert_eq!(
            prior["envelope"]["event_id"], e["envelope"]["event_id"],
            "a duplicate is the same event"
        );
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "delivered out of order"
    );
    assert_eq!(first_seen.len(), log.len());
    for (p, id) in &log {
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
    // The file sink has every record too, as OCSF.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let ids: HashSet<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .inspect(|r| assert!(r["type_uid"].as_u64().is_some(), "{r}"))
            .map(|r| r["metadata"]["uid"].as_str().unwrap().to_owned())
            .collect();
        if log.iter().all(|(_, id)| ids.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the file sink has {} of {}",
            ids.len(),
            log.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = status(&data, &server.url);
    let hook_line = shown.lines().find(|l| l.starts_with("hook")).unwrap();
    let lag: u64 = hook_line
        .split_whitespace()
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(lag, 0, "{shown}");
}

#[test]
fn a_bad_sinks_file_stops_the_server_at_start_naming_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let sinks = tmp.path().join("sinks.toml");
    std::fs::write(
        &sinks,
        "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://hooks.example.com/x\"\nhmac_key = \"k\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let out = Command::new(bin("m87-server"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--quic-listen",
            "127.0.0.1:0",
        ])
        .env("M87_AUDIT_SINKS", &sinks)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("line 6") && said.contains("colour"), "{said}");
}
