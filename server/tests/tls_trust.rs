//! How `m87` trusts its server: never over plain `http://`; a self-signed server by its
//! certificate's fingerprint (`m87 login --fingerprint`, stored per server), with no need for
//! `M87_TRUST_INVALID_CERT`; a wrong pin refused naming both fingerprints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{M87, Server, free_port};

/// `m87 ARGS` with `config_dir`, and neither a pin nor `M87_TRUST_INVALID_CERT` from the
/// harness: only what `env` says.
fn m87(config_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::bin("m87"));
    cmd.args(args)
        .env("M87_CONFIG_DIR", config_dir)
        .env_remove("M87_API_URL")
        .env_remove("M87_API_KEY")
        .env_remove("M87_API_FINGERPRINT")
        .env_remove("M87_TRUST_INVALID_CERT")
        .env_remove("M87_ALLOW_HTTP_LOOPBACK")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn plain_http_is_refused_wherever_the_url_comes_from() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let http = format!("http://127.0.0.1:{port}");
    let remote = "http://m87.example:8085";

    // M87_API_URL.
    for url in [http.as_str(), remote] {
        let out = m87(
            tmp.path(),
            &["devices", "list"],
            &[("M87_API_URL", url), ("M87_API_KEY", "m87u_secret")],
        );
        assert!(!out.status.success(), "{url} accepted");
        let err = stderr(&out);
        assert!(
            err.contains("clear text") && err.contains("https://"),
            "{err}"
        );
    }
    // `m87 login --api-url`.
    let out = m87(
        tmp.path(),
        &["login", "--api-key", "m87u_secret", "--api-url", remote],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("clear text"), "{}", stderr(&out));
    // A URL stored in the credentials file (written by an older build, or by hand).
    std::fs::write(
        tmp.path().join("credentials.json"),
        format!(r#"{{"user": {{"api_key": "m87u_secret", "api_url": "{remote}"}}}}"#),
    )
    .unwrap();
    let out = m87(tmp.path(), &["devices", "list"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("clear text"), "{}", stderr(&out));
    // The device runtime.
    let out = m87(
        &tmp.path().join("device"),
        &["runtime", "run", "--email", "a@example.com"],
        &[("M87_API_URL", remote)],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("clear text"), "{}", stderr(&out));

    // The opt-in for tests lets plain http:// reach a loopback address only.
    let allow = [("M87_ALLOW_HTTP_LOOPBACK", "1"), ("M87_API_KEY", "m87u_x")];
    let out = m87(
        tmp.path(),
        &["devices", "list"],
        &[allow[0], allow[1], ("M87_API_URL", &http)],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach") && !err.contains("clear text"),
        "{err}"
    );
    let out = m87(
        tmp.path(),
        &["devices", "list"],
        &[allow[0], allow[1], ("M87_API_URL", remote)],
    );
    assert!(stderr(&out).contains("clear text"), "{}", stderr(&out));
}

#[test]
fn login_pins_the_server_by_its_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let key = server.admin_key();
    let url = server.url.as_str();
    let fingerprint = std::fs::read_to_string(server.data_dir.join("tls/fingerprint")).unwrap();
    let fingerprint = fingerprint.trim();
    assert!(
        server
            .proc
            .out
            .contains(&format!("TLS certificate fingerprint: {fingerprint}")),
        "the printed fingerprint is the one in the data directory"
    );

    // Without a pin, the self-signed certificate is not trusted; the error says what to do.
    let fresh = tmp.path().join("fresh");
    let out = m87(&fresh, &["login", "--api-key", &key, "--api-url", url], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--fingerprint"), "{}", stderr(&out));

    // A wrong pin: refused, naming both fingerprints.
    let wrong = format!("SHA256:{}", ["00"; 32].join(":"));
    let out = m87(
        &fresh,
        &[
            "login",
            "--api-key",
            &key,
            "--api-url",
            url,
            "--fingerprint",
            &wrong,
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&wrong) && err.contains(fingerprint), "{err}");
    assert!(!fresh.join("credentials.json").exists(), "nothing stored");

    // The right pin: logged in, and the pin is stored for that server.
    let workstation = tmp.path().join("workstation");
    let out = m87(
        &workstation,
        &[
            "login",
            "--api-key",
            &key,
            "--api-url",
            url,
            "--fingerprint",
            fingerprint,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let creds: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workstation.join("credentials.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(creds["servers"][url]["fingerprint"], fingerprint);

    // Later commands check the stored pin, with nothing in the environment.
    let out = m87(&workstation, &["devices", "list", "-o", "json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    // M87_API_FINGERPRINT does the same without storing; a wrong one is refused.
    let admin = M87::new(url, &tmp.path().join("env"), Some(&key));
    admin.ok(&["devices", "list"]);
    let out = m87(
        &tmp.path().join("env"),
        &["devices", "list"],
        &[
            ("M87_API_URL", url),
            ("M87_API_KEY", &key),
            ("M87_API_FINGERPRINT", &wrong),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&wrong), "{}", stderr(&out));

    // M87_TRUST_INVALID_CERT still works in an emergency, with a warning.
    let out = m87(
        &tmp.path().join("emergency"),
        &["devices", "list"],
        &[
            ("M87_API_URL", url),
            ("M87_API_KEY", &key),
            ("M87_TRUST_INVALID_CERT", "true"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: M87_TRUST_INVALID_CERT"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_device_pins_the_server_with_runtime_run_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let device_dir = tmp.path().join("device");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(common::bin("m87"));
        cmd.args(["runtime", "run"])
            .args(extra)
            .env("M87_CONFIG_DIR", &device_dir)
            .env("M87_API_URL", &server.url)
            .env("M87_APPROVAL_POLL_SECS", "1")
            .env("M87_CHECK_INTERVAL_SECS", "1")
            .env_remove("M87_API_FINGERPRINT")
            .env_remove("M87_TRUST_INVALID_CERT")
            .env_remove("OWNER_REFERENCE")
            .env_remove("RUST_LOG");
        common::Proc::spawn(cmd)
    };

    // A wrong pin: the runtime never registers, and says why.
    let wrong = format!("SHA256:{}", ["AB"; 32].join(":"));
    let mut refused = run(&["--email", "admin@localhost", "--fingerprint", &wrong]);
    refused
        .out
        .wait_for(&server.fingerprint, std::time::Duration::from_secs(30));
    refused.kill();
    assert!(
        !refused.out.contains("registration request"),
        "{}",
        refused.out.all()
    );

    // The right one: registered, approved, enrolled; the pin is kept with the key.
    let runtime = run(&[
        "--email",
        "admin@localhost",
        "--name",
        "pinned-1",
        "--fingerprint",
        &server.fingerprint,
    ]);
    let request_id = common::request_id_of(&runtime);
    admin.ok(&["devices", "approve", &request_id]);
    runtime.out.wait_for(
        "tunnel connected to relay",
        std::time::Duration::from_secs(30),
    );
    drop(runtime);
    let creds: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(device_dir.join("credentials.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        creds["servers"][server.url.as_str()]["fingerprint"],
        server.fingerprint.as_str()
    );
    // Started again with nothing said about trust: it checks the stored pin and checks in.
    let again = run(&[]);
    again
        .out
        .wait_for("checked in with", std::time::Duration::from_secs(30));
    assert!(!again.out.contains("warning"), "{}", again.out.all());
}
