//! `m87 <device> status` through the real binaries: a healthy device exits 0 with "online" and
//! a CHECKS section; `-o json` has the report, the checks and the verdict; a stopped runtime
//! is "offline" (exit 1) without a session; an unknown device or one the caller cannot see is
//! exit 2; an organization viewer may run it, and it is on the audit trail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{M87, acme};
use serde_json::Value;

fn run(m87: &M87, args: &[&str]) -> (i32, String, String) {
    let out = m87.run(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_connected_device_reports_its_health_and_a_stopped_one_is_offline() {
    let mut a = acme();

    // -o json: the report, the checks, the verdict.
    let (code, out, err) = run(&a.bob, &["acme-bot", "status", "-o", "json"]);
    let status: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(status["device"], "acme-bot");
    assert_eq!(status["online"], true);
    let report = &status["report"];
    assert_eq!(report["runtime_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["arch"], std::env::consts::ARCH);
    assert!(report["hostname"].is_string(), "{report}");
    assert!(report["kernel"].is_string(), "{report}");
    assert!(report["uptime_secs"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["load"].as_array().unwrap().len(), 3);
    let total = report["memory_total"].as_u64().unwrap();
    assert!(total > 0 && report["memory_used"].as_u64().unwrap() <= total);
    assert!(!report["disks"].as_array().unwrap().is_empty(), "{report}");
    assert!(
        report["interfaces"].to_string().contains("127.0.0.1/8"),
        "{report}"
    );
    assert!(
        report["relay_addr"].as_str().unwrap().contains(':'),
        "{report}"
    );
    assert!(
        report["observed_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{report}"
    );
    let checks = status["checks"].as_array().unwrap();
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
    };
    // Same machine, same build: the clock and the version always pass.
    assert_eq!(check("clock")["ok"], true, "{checks:?}");
    assert_eq!(check("runtime version")["ok"], true, "{checks:?}");
    check("memory");
    check("disk /");
    let healthy = checks.iter().all(|c| c["ok"] == true);
    assert_eq!(status["healthy"], healthy);
    assert_eq!(code, if healthy { 0 } else { 1 }, "{out}{err}");

    // The table: online, the summary, the checks.
    let (code, out, err) = run(&a.bob, &["acme-bot", "status"]);
    assert_eq!(code, if healthy { 0 } else { 1 }, "{out}{err}");
    assert!(out.starts_with("acme-bot: online, "), "{out}");
    assert!(out.contains("\nCHECKS\n"), "{out}");
    assert!(out.contains(" clock "), "{out}");
    assert!(out.contains("runtime "), "{out}");

    // The runtime stops: offline, with when it was last seen, and exit 1.
    a.runtime.kill();
    wait_until("the device to be offline", || {
        a.bob.devices()[0]["online"] == false
    });
    let (code, out, err) = run(&a.bob, &["acme-bot", "status"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("acme-bot: offline (last seen 20"), "{out}");
    let (code, out, _) = run(&a.bob, &["acme-bot", "status", "-o", "json"]);
    assert_eq!(code, 1);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["online"], false);
    assert!(status["last_seen"].is_string(), "{status}");
}

#[test]
fn unknown_devices_and_no_access_are_errors_and_viewers_may_ask() {
    let a = acme();
    for (who, device) in [(&a.bob, "no-such-bot"), (&a.eve, "acme-bot")] {
        let (code, out, err) = run(who, &[device, "status"]);
        assert_eq!(code, 2, "{out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("not found"), "{err}");
    }

    // A viewer may read the status (read-only), and it is recorded.
    let (code, out, err) = run(&a.carol, &["acme-bot", "status"]);
    assert!(code == 0 || code == 1, "{out}{err}");
    assert!(out.starts_with("acme-bot: online, "), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = a.alice.ok(&["audit", "--action", "status", "-o", "json"]);
        let records: Vec<Value> = serde_json::from_str(&out).unwrap();
        let carol = records
            .iter()
            .find(|r| r["user"] == "carol@example.com" && r["outcome"] != "open");
        if let Some(r) = carol {
            assert_eq!(r["device_name"], "acme-bot", "{r}");
            assert_ne!(r["outcome"], "refused", "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "no status record: {records:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
