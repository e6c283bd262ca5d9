//! `m87 runtime status` against the real server: what a running runtime publishes about its
//! enrolment, tunnel and relay (pending, then connected to the relay it printed, then down when
//! the server goes away, then not running); a second runtime on the same state directory is
//! refused while the first runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{M87, Server, request_id_of};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn status(device: &M87) -> Value {
    serde_json::from_str(&device.ok(&["runtime", "status", "-o", "json"])).unwrap()
}

fn wait_for_status(device: &M87, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(device);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn status_shows_the_enrolment_the_tunnel_and_the_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let device = M87::new(&server.url, &tmp.path().join("device"), None);
    let mut runtime = device.runtime(&["--email", "admin@localhost", "--name", "svc-1"]);
    let request_id = request_id_of(&runtime);

    let pending = wait_for_status(&device, "the pending phase", |s| {
        s["runtime"]["phase"] == "pending"
    });
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["runtime"]["running"], true);
    assert_eq!(pending["runtime"]["pid"], runtime.child.id());
    assert_eq!(pending["tunnel"]["connected"], false);
    assert_eq!(pending["service"], Value::Null, "no unit is installed");

    admin.ok(&["devices", "approve", &request_id]);
    let line = runtime.out.wait_for("tunnel connected to relay", WAIT);
    let relay = line.split_whitespace().last().unwrap().to_owned();
    let up = wait_for_status(&device, "the tunnel", |s| s["tunnel"]["connected"] == true);
    assert_eq!(up["status"], "approved");
    assert_eq!(up["runtime"]["phase"], "enrolled");
    assert_eq!(up["tunnel"]["relay"], relay.as_str());
    assert!(up["tunnel"]["since"].is_string(), "{up}");
    let table = device.ok(&["runtime", "status"]);
    assert!(table.contains("tunnel       connected since "), "{table}");
    assert!(table.contains(&format!("relay        {relay}")), "{table}");
    assert!(table.contains("runtime      running (pid "), "{table}");

    // One runtime per state directory.
    let err = device.fails(&["runtime", "run"]);
    assert!(
        err.contains(&format!(
            "another m87 runtime (pid {}) is already running on",
            runtime.child.id()
        )),
        "{err}"
    );

    // The server goes away: the runtime still runs, its tunnel is down and says why.
    server.stop();
    let down = wait_for_status(&device, "the tunnel to go down", |s| {
        s["tunnel"]["connected"] == false
    });
    assert_eq!(down["runtime"]["running"], true);
    assert_eq!(
        down["tunnel"]["relay"],
        relay.as_str(),
        "the last relay is named"
    );
    assert!(down["tunnel"]["last_error"].is_string(), "{down}");
    let table = device.ok(&["runtime", "status"]);
    assert!(table.contains("tunnel       down since "), "{table}");
    assert!(table.contains(&format!("relay        {relay}")) && table.contains("(last)"));

    runtime.kill();
    let gone = status(&device);
    assert_eq!(gone["runtime"]["running"], false, "{gone}");
    assert_eq!(
        gone["tunnel"]["connected"], false,
        "a dead runtime's file is not believed"
    );
    assert_eq!(gone["status"], "approved");
    let table = device.ok(&["runtime", "status"]);
    assert!(
        table.contains("runtime      not running on this state directory"),
        "{table}"
    );
}
