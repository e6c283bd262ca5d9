//! End to end on one machine: the real `m87-server`, the real `m87 runtime run` and the real
//! `m87` CLI, on loopback with temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{M87, Server, request_id_of};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn row<'a>(devices: &'a Value, request_id: &str) -> &'a Value {
    devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["request_id"] == request_id)
        .unwrap_or_else(|| panic!("request {request_id} not listed in {devices}"))
}

#[test]
fn register_approve_second_user_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");

    // First start: admin key in a 0600 file, its path and the fingerprint printed, never the key.
    let admin = server.admin_key();
    assert!(admin.starts_with("m87u_"));
    let mode = std::fs::metadata(data.join("admin.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    server
        .proc
        .out
        .wait_for("platform admin API key written to", WAIT);
    server.proc.out.wait_for("fingerprint", WAIT);
    assert!(data.join("tls/cert.pem").exists());
    let fingerprint = server.proc.out.wait_for("fingerprint", WAIT);

    let device_dir = tmp.path().join("device");
    let device = M87::new(&server.url, &device_dir, None);
    let mut runtime = device.runtime(&["--email", "admin@localhost", "--name", "robot-1"]);
    let request_id = request_id_of(&runtime);

    let admin_cli = M87::new(&server.url, &tmp.path().join("admin"), Some(&admin));
    let devices = admin_cli.devices();
    let pending = row(&devices, &request_id);
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["name"], "robot-1");
    assert_eq!(pending["owner_scope"], "user:admin@localhost");
    assert_eq!(pending["system_info"]["platform"], "linux");
    assert!(pending["system_info"]["cpu_count"].as_u64().unwrap() >= 1);
    let table = admin_cli.ok(&["devices", "list"]);
    assert!(
        table.contains("robot-1") && table.contains("pending") && table.contains(&request_id),
        "{table}"
    );

    // A second user, created through the API by the admin, neither sees nor approves it.
    let created: Value = serde_json::from_str(&admin_cli.ok(&[
        "api-keys",
        "create",
        "--email",
        "bob@example.com",
        "--output",
        "json",
    ]))
    .unwrap();
    let bob_key = created["key"].as_str().unwrap().to_owned();
    let bob = M87::new(&server.url, &tmp.path().join("bob"), Some(&bob_key));
    assert_eq!(bob.devices(), Value::Array(vec![]));
    let err = bob.fails(&["devices", "approve", &request_id]);
    assert!(err.contains("not found"), "{err}");
    let err = bob.fails(&["devices", "reject", &request_id]);
    assert!(err.contains("not found"), "{err}");
    let err = bob.fails(&["api-keys", "create", "--email", "admin@localhost"]);
    assert!(err.contains("platform admins"), "{err}");
    assert_eq!(row(&admin_cli.devices(), &request_id)["status"], "pending");

    // The admin logs in with the key (no variable needed afterwards) and approves.
    let workstation = M87::new(&server.url, &tmp.path().join("admin"), None);
    let out = workstation.ok(&["login", "--api-key", &admin]);
    assert!(out.contains("admin@localhost"), "{out}");
    let out = workstation.ok(&["devices", "approve", &request_id]);
    assert!(out.contains("approved"), "{out}");
    let err = workstation.fails(&["devices", "approve", &request_id]);
    assert!(err.contains("already approved"), "{err}");

    // The runtime receives its key once, stores it privately and reports approval.
    runtime.out.wait_for("approved: device", WAIT);
    runtime.out.wait_for("checked in with", WAIT);
    let creds_path = device_dir.join("credentials.json");
    let mode = std::fs::metadata(&creds_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(&device_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    let device_key = creds["device"]["api_key"].as_str().unwrap().to_owned();
    assert!(device_key.starts_with("m87d_"));
    let listed = workstation.devices();
    let approved = row(&listed, &request_id);
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["id"], creds["device"]["device_id"]);
    let status: Value =
        serde_json::from_str(&device.ok(&["runtime", "status", "-o", "json"])).unwrap();
    assert_eq!(status["status"], "approved");

    // Started again, the runtime uses its stored key and does not register again.
    runtime.kill();
    let mut again = device.runtime(&["--email", "admin@localhost"]);
    again.out.wait_for("using stored credentials", WAIT);
    again.out.wait_for("checked in with", WAIT);
    assert!(!again.out.contains("registering"));
    again.kill();
    assert_eq!(
        workstation.devices().as_array().unwrap().len(),
        1,
        "no second registration"
    );

    // Restart the server: everything is still there, and no new admin key is made.
    let server = server.restart();
    assert!(!server.proc.out.contains("platform admin API key written"));
    assert_eq!(server.admin_key(), admin);
    assert_eq!(
        server.proc.out.wait_for("fingerprint", WAIT),
        fingerprint,
        "certificate kept"
    );
    let listed = workstation.devices();
    assert_eq!(row(&listed, &request_id)["status"], "approved");
    assert_eq!(bob.devices(), Value::Array(vec![]));
    let mut after = device.runtime(&[]);
    after.out.wait_for("checked in with", WAIT);
    after.kill();

    // Secrets never reach the server's log.
    let log = server.proc.out.all();
    for secret in [&admin, &bob_key, &device_key] {
        assert!(
            !log.contains(secret.as_str()),
            "a key leaked into the server log"
        );
    }

    // Logging out removes the stored keys.
    workstation.ok(&["logout"]);
    let err = workstation.fails(&["devices", "list"]);
    assert!(err.contains("not logged in"), "{err}");
    device.ok(&["runtime", "logout"]);
    let creds = std::fs::read_to_string(&creds_path).unwrap_or_default();
    assert!(!creds.contains("m87d_"), "device key still stored: {creds}");
}

#[test]
fn reject_a_request_and_remove_an_approved_device() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );

    // Rejected while pending: the runtime stops with a clear message.
    let refused = M87::new(&server.url, &tmp.path().join("refused"), None);
    let mut runtime = refused.runtime(&["--email", "admin@localhost", "--name", "refused-1"]);
    let request_id = request_id_of(&runtime);
    let out = admin.ok(&["devices", "reject", &request_id]);
    assert!(out.contains("rejected"), "{out}");
    assert_ne!(runtime.wait_exit(WAIT), 0);
    assert!(
        runtime.out.contains("was rejected"),
        "{}",
        runtime.out.all()
    );
    assert_eq!(row(&admin.devices(), &request_id)["status"], "rejected");
    assert!(!tmp.path().join("refused/credentials.json").exists());

    // Approved, then removed by name: its key stops working and the runtime says so.
    let removed = M87::new(&server.url, &tmp.path().join("removed"), None);
    let mut runtime = removed.runtime(&["--name", "removed-1"]);
    assert_ne!(runtime.wait_exit(WAIT), 0, "no owner: must fail");
    assert!(runtime.out.contains("--email"), "{}", runtime.out.all());
    let mut runtime = {
        let mut cmd = removed.command(&["runtime", "run", "--name", "removed-1"]);
        cmd.env("OWNER_REFERENCE", "admin@localhost");
        common::Proc::spawn(cmd)
    };
    let request_id = request_id_of(&runtime);
    admin.ok(&["devices", "approve", "removed-1"]);
    runtime.out.wait_for("checked in with", WAIT);
    let out = admin.ok(&["devices", "reject", "removed-1"]);
    assert!(out.contains("removed device"), "{out}");
    assert_ne!(runtime.wait_exit(WAIT), 0);
    assert!(
        runtime.out.contains("removed from the fleet"),
        "{}",
        runtime.out.all()
    );
    assert_eq!(row(&admin.devices(), &request_id)["status"], "removed");
    let err = admin.fails(&["devices", "reject", "removed-1"]);
    assert!(err.contains("already removed"), "{err}");
}

#[test]
fn cli_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let wrong = M87::new(
        &server.url,
        &tmp.path().join("w"),
        Some("m87u_wrongwrongwrong"),
    );
    let err = wrong.fails(&["devices", "list"]);
    assert!(
        err.contains("invalid api key") && err.contains("m87 login"),
        "{err}"
    );
    let admin = M87::new(
        &server.url,
        &tmp.path().join("a"),
        Some(&server.admin_key()),
    );
    let err = admin.fails(&["devices", "approve", "no-such-device"]);
    assert!(err.contains("no pending registration request"), "{err}");
    let err = admin.fails(&["devices", "approve", "01a20299-2909-75d0-b4ed-9ff6c41df9fd"]);
    assert!(err.contains("not found"), "{err}");
    let offline = M87::new("https://127.0.0.1:9", &tmp.path().join("o"), Some("m87u_x"));
    let err = offline.fails(&["devices", "list"]);
    assert!(err.contains("cannot reach"), "{err}");
    let keys: Value = serde_json::from_str(&admin.ok(&["api-keys", "list", "-o", "json"])).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    let id = keys[0]["id"].as_str().unwrap().to_owned();
    let created: Value =
        serde_json::from_str(&admin.ok(&["api-keys", "create", "--name", "ci", "-o", "json"]))
            .unwrap();
    let ci = M87::new(&server.url, &tmp.path().join("ci"), created["key"].as_str());
    ci.ok(&["devices", "list"]);
    admin.ok(&["api-keys", "revoke", created["id"].as_str().unwrap()]);
    let err = ci.fails(&["devices", "list"]);
    assert!(err.contains("revoked"), "{err}");
    assert_ne!(id, created["id"].as_str().unwrap());
}
