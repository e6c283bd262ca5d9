//! Reaching a device through the relay with the real binaries: exec, session tokens, offline
//! devices, and resilience to relay and runtime restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{M87, Server, enrolled_device};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(30);

fn events_of_type(data: &std::path::Path, event_type: &str) -> Vec<serde_json::Value> {
    let conn = rusqlite::Connection::open(data.join("m87.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT data FROM events WHERE event_type = ?1 ORDER BY global_position")
        .unwrap();
    stmt.query_map([event_type], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn exec_streams_exit_codes_stdin_and_large_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "exec-dev");

    let listed = admin.devices();
    assert_eq!(listed[0]["online"], true, "{listed}");
    let table = admin.ok(&["devices", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("exec-dev") && l.contains("online")),
        "{table}"
    );

    // stdout and stderr separately, exit code 3.
    let out = admin.run(&[
        "exec-dev",
        "exec",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-err\n");
    assert_eq!(out.status.code(), Some(3));

    // Exit 0, and a prefix of the name works.
    let out = admin.run(&["exec-d", "exec", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));

    // Killed by a signal: 128 + 9.
    let out = admin.run(&["exec-dev", "exec", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137));

    // stdin streams with -i.
    let mut child = admin
        .command(&["exec-dev", "exec", "-i", "--", "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello through the relay\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "HELLO THROUGH THE RELAY\n"
    );
    assert!(out.status.success());

    // 50 MB of output arrives whole.
    let out = admin.run(&[
        "exec-dev",
        "exec",
        "--",
        "sh",
        "-c",
        "yes 0123456789abcdef | head -c 50000000",
    ]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 50_000_000);
    let expected: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(50_000_000)
        .collect();
    assert_eq!(Sha256::digest(&out.stdout), Sha256::digest(&expected));

    // A missing program: the error and 127.
    let out = admin.run(&["exec-dev", "exec", "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run"));

    // Every session is recorded, opened and closed, with its command line and exit code.
    wait_until("session closed events", || {
        events_of_type(&data, "SessionClosed").len() >= 6
    });
    let opened = events_of_type(&data, "SessionOpened");
    assert!(
        opened
            .iter()
            .any(|e| e["args"]["argv"] == serde_json::json!(["sh", "-c", "kill -9 $$"]))
    );
    let closed = events_of_type(&data, "SessionClosed");
    assert!(closed.iter().any(|e| e["exit_code"] == 3));
    assert!(closed.iter().any(|e| e["signal"] == 9));
    assert!(
        closed
            .iter()
            .any(|e| e["bytes_from_device"].as_u64().unwrap() >= 50_000_000)
    );
}

#[test]
fn offline_devices_fail_fast_with_last_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (mut runtime, _device) =
        enrolled_device(&server, &admin, &tmp.path().join("dev"), "gone-dev");
    runtime.kill();
    wait_until("the device to be offline", || {
        admin.devices()[0]["online"] == false
    });
    let started = Instant::now();
    let err = admin.fails(&["gone-dev", "exec", "--", "true"]);
    assert!(err.contains("device offline (last seen"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let listed = admin.devices();
    assert!(listed[0]["last_seen"].is_string(), "{listed}");
    let table = admin.ok(&["devices", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("gone-dev") && l.contains("offline, last seen ")),
        "{table}"
    );
}

#[test]
fn runtime_reconnects_after_relay_restart_and_replaces_its_own_tunnel() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (runtime, device) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "phoenix");
    assert!(
        admin
            .run(&["phoenix", "exec", "--", "true"])
            .status
            .success()
    );

    // The relay (here: the whole server) stops and starts: back online within 5 s.
    let server = server.restart();
    let restarted = Instant::now();
    wait_until("the runtime to reconnect", || {
        runtime
            .out
            .all()
            .matches("tunnel connected to relay")
            .count()
            >= 2
    });
    assert!(
        restarted.elapsed() < Duration::from_secs(5),
        "reconnected after {:?}",
        restarted.elapsed()
    );
    let out = admin.run(&["phoenix", "exec", "--", "echo", "again"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");

    // SIGKILL the runtime and start it again: its new tunnel replaces the old at once.
    let mut runtime = runtime;
    runtime.kill();
    let again = device.runtime(&[]);
    again.out.wait_for("tunnel connected to relay", WAIT);
    let out = admin.run(&["phoenix", "exec", "--", "echo", "replaced"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "replaced\n");
    drop(server);
}

#[test]
fn revoking_access_ends_open_sessions_and_refuses_new_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) =
        enrolled_device(&server, &admin, &tmp.path().join("dev"), "shared-dev");
    let created: serde_json::Value = serde_json::from_str(&admin.ok(&[
        "api-keys",
        "create",
        "--email",
        "bob@example.com",
        "-o",
        "json",
    ]))
    .unwrap();
    let bob = M87::new(
        &server.url,
        &tmp.path().join("bob"),
        created["key"].as_str(),
    );

    // Not shared: Bob cannot see it. Shared: Bob runs a long command.
    let err = bob.fails(&["shared-dev", "exec", "--", "true"]);
    assert!(err.contains("not found"), "{err}");
    admin.ok(&["shared-dev", "access", "add", "user:bob@example.com"]);
    let listed = admin.ok(&["shared-dev", "access", "list"]);
    assert!(listed.contains("user:bob@example.com"), "{listed}");
    let mut long = common::Proc::spawn(bob.command(&[
        "shared-dev",
        "exec",
        "--",
        "sh",
        "-c",
        "echo started; sleep 60",
    ]));
    long.out.wait_for("started", WAIT);

    // Revoked: the open session ends within a second or two, new ones are refused.
    let revoked = Instant::now();
    admin.ok(&["shared-dev", "access", "remove", "user:bob@example.com"]);
    let code = long.wait_exit(Duration::from_secs(10));
    assert_ne!(code, 0);
    assert!(
        revoked.elapsed() < Duration::from_secs(5),
        "session ended after {:?}",
        revoked.elapsed()
    );
    let err = bob.fails(&["shared-dev", "exec", "--", "true"]);
    assert!(err.contains("not found"), "{err}");
}
