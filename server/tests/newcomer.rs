//! The CLI as a newcomer meets it, against the real server and runtime: a mistyped command
//! is answered with "did you mean" unless a device has that name; global flags after a
//! device's operation; `sync -e`; rejected devices out of prefix matching; why a session
//! ended when access goes; `m87 login` named when the server offers OIDC sign-in; a TLS
//! failure as one helpful line; `m87 version` for a viewer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::pty::Terminal;
use common::{M87, Proc, Server, acme, enrolled_device, request_id_of};
use m87_test_support::oidc::DEFAULT_AUDIENCE;
use m87_test_support::tokens::{LocalIssuer, generate_rsa_key};
use serde_json::Value;

#[test]
fn typos_global_flags_sync_exclude_and_prefixes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    // A device whose name is one swap away from `status`.
    let (_runtime, _device) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "stauts");

    // A typo of a command that is no device: the command is suggested, nothing else happens.
    let out = admin.run(&["devcies", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean `devices`?"), "{err}");
    // A device that happens to be close to a command is still the device.
    let listed = admin.ok(&["stauts", "exec", "--", "echo", "hello"]);
    assert_eq!(listed.trim(), "hello");

    // Global flags after the device's operation.
    let access: Value =
        serde_json::from_str(&admin.ok(&["stauts", "access", "list", "-o", "json"])).unwrap();
    assert_eq!(access["owner_scope"], "user:admin@localhost", "{access}");

    // sync -e PATTERN is --exclude.
    let src = tmp.path().join("site");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), "hi").unwrap();
    std::fs::write(src.join("debug.log"), "noise").unwrap();
    let remote = tmp.path().join("remote-site");
    let dst = format!("stauts:{}", remote.display());
    admin.ok(&["sync", "-e", "*.log", src.to_str().unwrap(), &dst]);
    assert!(remote.join("index.html").exists());
    assert!(
        !remote.join("debug.log").exists(),
        "the excluded file was sent"
    );

    // A rejected request named like the device does not make its prefix ambiguous.
    let other = M87::new(&server.url, &tmp.path().join("dev2"), None);
    let runtime2 = other.runtime(&["--email", "admin@localhost", "--name", "stauts-old"]);
    let request = request_id_of(&runtime2);
    admin.ok(&["devices", "reject", &request]);
    let shown: Value =
        serde_json::from_str(&admin.ok(&["devices", "show", "stau", "-o", "json"])).unwrap();
    assert_eq!(shown["name"], "stauts", "{shown}");
}

#[test]
fn a_revoked_member_is_told_why_the_session_ended() {
    let a = acme();
    let mut exec = Proc::spawn(a.bob.command(&[
        "acme-bot",
        "exec",
        "--",
        "sh",
        "-c",
        "echo started; sleep 60",
    ]));
    exec.out.wait_for("started", Duration::from_secs(30));
    let port = common::free_port().to_string();
    let mut forward = Proc::spawn(
        a.bob
            .command(&["acme-bot", "forward", &format!("{port}:80")]),
    );
    forward
        .out
        .wait_for("press Ctrl-C", Duration::from_secs(30));
    let mut shell = Terminal::shell(&a.bob, "acme-bot");
    shell.keys.write_all(b"echo shell-$((6*7))\r").unwrap();
    shell.wait_for("shell-42");

    a.alice
        .ok(&["org", "members", "remove", "acme", "bob@example.com"]);
    let code = exec.wait_exit(Duration::from_secs(20));
    assert_ne!(code, 0);
    let said = exec.out.all();
    assert!(
        said.contains("error: the session ended: access to this device was revoked"),
        "{said}"
    );
    assert!(!said.contains("stream error"), "{said}");
    assert_ne!(forward.wait_exit(Duration::from_secs(20)), 0);
    let said = forward.out.all();
    assert!(
        said.contains("the session ended: access to this device was revoked"),
        "{said}"
    );
    assert_ne!(shell.wait_exit(), 0);
    shell.wait_for("the session ended: access to this device was revoked");

    // A viewer reads the versions of the CLI, the server and the device's runtime.
    let v: Value =
        serde_json::from_str(&a.carol.ok(&["version", "acme-bot", "-o", "json"])).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(v["cli"], version, "{v}");
    assert_eq!(v["server"]["version"], version, "{v}");
    assert_eq!(v["runtime"]["version"], version, "{v}");

    // The device is removed while its admin runs a command on it.
    let mut exec = Proc::spawn(a.alice.command(&[
        "acme-bot",
        "exec",
        "--",
        "sh",
        "-c",
        "echo started; sleep 60",
    ]));
    exec.out.wait_for("started", Duration::from_secs(30));
    a.alice.ok(&["devices", "reject", "acme-bot"]);
    assert_ne!(exec.wait_exit(Duration::from_secs(20)), 0);
    let said = exec.out.all();
    assert!(
        said.contains("the session ended: the device was removed"),
        "{said}"
    );
    drop(a.runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_hint_names_oidc_and_tls_failures_read_as_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let key = generate_rsa_key("key-1");
    let issuer = LocalIssuer::start(&[&key]).await;
    let env = [
        ("OAUTH_ISSUER", issuer.url.as_str()),
        ("OAUTH_AUDIENCE", DEFAULT_AUDIENCE),
    ];
    let data = tmp.path().join("data");
    let server = tokio::task::block_in_place(|| Server::start_with_env(&data, "127.0.0.1:0", &env));
    let nobody = M87::new(&server.url, &tmp.path().join("nobody"), None);
    let err = tokio::task::block_in_place(|| nobody.fails(&["devices", "list"]));
    assert!(
        err.contains(&format!("run `m87 login` (signs in with {}", issuer.url))
            && err.contains("--api-key"),
        "{err}"
    );
    // Without OIDC at the server, the hint is the API key.
    let plain = tmp.path().join("plain");
    let plain_server = tokio::task::block_in_place(|| Server::start(&plain, "127.0.0.1:0"));
    let nobody = M87::new(&plain_server.url, &tmp.path().join("nobody2"), None);
    let err = tokio::task::block_in_place(|| nobody.fails(&["devices", "list"]));
    assert!(
        err.contains("not logged in: run `m87 login --api-key KEY`"),
        "{err}"
    );

    // The server's certificate is not trusted: one line that says what to do.
    let out = std::process::Command::new(common::bin("m87"))
        .args([
            "login",
            "--api-key",
            "m87u_x",
            "--api-url",
            &plain_server.url,
        ])
        .env("M87_CONFIG_DIR", tmp.path().join("tls"))
        .env_remove("M87_API_FINGERPRINT")
        .env_remove("M87_TRUST_INVALID_CERT")
        .env_remove("M87_API_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("rustls_platform_verifier"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--fingerprint"), "{err}");
}

#[test]
fn a_session_through_a_relay_that_goes_away_says_so() {
    let mut a = acme();
    let mut exec = Proc::spawn(a.bob.command(&[
        "acme-bot",
        "exec",
        "--",
        "sh",
        "-c",
        "echo started; sleep 60",
    ]));
    exec.out.wait_for("started", Duration::from_secs(30));
    a.server.stop();
    assert_ne!(exec.wait_exit(Duration::from_secs(60)), 0);
    let said = exec.out.all();
    assert!(
        said.contains("error: the relay was lost (relay shutting down); run the command again"),
        "{said}"
    );
    assert!(!said.contains("stream error"), "{said}");
}
