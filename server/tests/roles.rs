//! Organization roles against the running server, through the real CLI: a member cannot
//! approve (403), a viewer cannot operate (403), a stranger does not see the device (404), a
//! member operates it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{M87, Proc, Server, request_id_of, user};

struct Fleet {
    _tmp: tempfile::TempDir,
    _server: Server,
    _runtime: Proc,
    admin: M87,
    member: M87,
    viewer: M87,
    stranger: M87,
    request_id: String,
}

/// An organization `acme` with a member and a viewer, and a device asking to join it.
fn fleet() -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let root = M87::new(
        &server.url,
        &tmp.path().join("root"),
        Some(&server.admin_key()),
    );
    let admin = user(&server, &root, &tmp.path().join("a"), "alice@example.com");
    let member = user(&server, &root, &tmp.path().join("b"), "bob@example.com");
    let viewer = user(&server, &root, &tmp.path().join("c"), "carol@example.com");
    let stranger = user(&server, &root, &tmp.path().join("e"), "eve@example.com");
    admin.ok(&["org", "create", "acme", "--name", "Acme Robots"]);
    admin.ok(&[
        "org",
        "members",
        "add",
        "acme",
        "bob@example.com",
        "--role",
        "member",
    ]);
    admin.ok(&[
        "org",
        "members",
        "add",
        "acme",
        "carol@example.com",
        "--role",
        "viewer",
    ]);
    let members = admin.ok(&["org", "members", "list", "acme"]);
    assert!(
        members.contains("carol@example.com") && members.contains("viewer"),
        "{members}"
    );
    let device = M87::new(&server.url, &tmp.path().join("dev"), None);
    let runtime = device.runtime(&["--org", "acme", "--name", "acme-bot"]);
    let request_id = request_id_of(&runtime);
    Fleet {
        _tmp: tmp,
        _server: server,
        _runtime: runtime,
        admin,
        member,
        viewer,
        stranger,
        request_id,
    }
}

#[test]
fn a_member_cannot_approve() {
    let f = fleet();
    let err = f.member.fails(&["devices", "approve", &f.request_id]);
    assert!(
        err.contains("only admins") || err.contains("do not administer"),
        "{err}"
    );
    let listed = f.member.devices();
    assert_eq!(listed[0]["status"], "pending", "nothing changed: {listed}");
}

#[test]
fn a_viewer_cannot_operate_and_a_member_can() {
    let f = fleet();
    f.admin.ok(&["devices", "approve", &f.request_id]);
    f._runtime
        .out
        .wait_for("tunnel connected to relay", Duration::from_secs(30));
    let err = f.viewer.fails(&["acme-bot", "exec", "--", "true"]);
    assert!(err.contains("viewers"), "{err}");
    assert_eq!(
        f.viewer.devices()[0]["status"],
        "approved",
        "viewers still see the device"
    );
    let out = f
        .member
        .ok(&["acme-bot", "exec", "--", "echo", "member here"]);
    assert_eq!(out, "member here\n");
}

#[test]
fn a_stranger_does_not_see_the_device() {
    let f = fleet();
    f.admin.ok(&["devices", "approve", &f.request_id]);
    assert_eq!(f.stranger.devices(), serde_json::json!([]));
    let err = f.stranger.fails(&["acme-bot", "exec", "--", "true"]);
    assert!(err.contains("not found"), "{err}");
    let err = f.stranger.fails(&["org", "members", "list", "acme"]);
    assert!(err.contains("not found"), "{err}");
}
