//! Profiles against two real servers: a login in each profile, `devices list` and `status`
//! under each show its own server, and the credentials files stay apart; `default` is the
//! credentials file that existed before profiles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{M87, Server, bin, enrolled_device};
use serde_json::Value;

/// `m87 ARGS` as a user at a workstation: no server, key or pin in the environment, only the
/// configuration directory (and `env`).
fn m87(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin("m87"))
        .args(args)
        .env("M87_CONFIG_DIR", config)
        .env_remove("M87_API_URL")
        .env_remove("M87_API_KEY")
        .env_remove("M87_API_FINGERPRINT")
        .env_remove("M87_TRUST_INVALID_CERT")
        .env_remove("M87_PROFILE")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn ok(config: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = m87(config, args, env);
    assert!(
        out.status.success(),
        "m87 {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(config: &Path, args: &[&str]) -> String {
    let out = m87(config, args, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "m87 {args:?} should fail: {out:?}"
    );
    String::from_utf8(out.stderr).unwrap()
}

fn json(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    serde_json::from_str(&ok(config, args, env)).unwrap()
}

fn device_names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn two_servers_side_by_side_with_their_own_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let one = Server::start(&tmp.path().join("one"), "127.0.0.1:0");
    let two = Server::start(&tmp.path().join("two"), "127.0.0.1:0");
    // A device on each server, so each list is recognisably its server's.
    let admin1 = M87::new(&one.url, &tmp.path().join("a1"), Some(&one.admin_key()));
    let admin2 = M87::new(&two.url, &tmp.path().join("a2"), Some(&two.admin_key()));
    let _d1 = enrolled_device(&one, &admin1, &tmp.path().join("d1"), "one-bot");
    let _d2 = enrolled_device(&two, &admin2, &tmp.path().join("d2"), "two-bot");

    let cfg = tmp.path().join("workstation");
    // `default`: logged in to server one as before profiles existed.
    ok(
        &cfg,
        &[
            "login",
            "--api-key",
            &one.admin_key(),
            "--api-url",
            &one.url,
            "--fingerprint",
            &one.fingerprint,
        ],
        &[],
    );
    // `lab`: server two.
    ok(
        &cfg,
        &[
            "profile",
            "add",
            "lab",
            "--api-url",
            &two.url,
            "--fingerprint",
            &two.fingerprint,
        ],
        &[],
    );
    ok(
        &cfg,
        &["--profile", "lab", "login", "--api-key", &two.admin_key()],
        &[],
    );

    let default_creds = cfg.join("credentials.json");
    let lab_creds = cfg.join("profiles/lab/credentials.json");
    let d: Value = serde_json::from_slice(&std::fs::read(&default_creds).unwrap()).unwrap();
    let l: Value = serde_json::from_slice(&std::fs::read(&lab_creds).unwrap()).unwrap();
    assert_eq!(d["user"]["api_url"], one.url.as_str());
    assert_eq!(l["user"]["api_url"], two.url.as_str());
    assert_eq!(d["user"]["api_key"], one.admin_key().as_str());
    assert_eq!(l["user"]["api_key"], two.admin_key().as_str());
    assert!(d["servers"].get(&two.url).is_none(), "{d}");
    assert!(l["servers"].get(&one.url).is_none(), "{l}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&lab_creds).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Each profile shows its own server, by flag (anywhere on the line) or M87_PROFILE.
    let list = ["devices", "list", "-o", "json"];
    assert_eq!(device_names(&json(&cfg, &list, &[])), ["one-bot"]);
    assert_eq!(
        device_names(&json(
            &cfg,
            &["devices", "list", "--profile", "lab", "-o", "json"],
            &[]
        )),
        ["two-bot"]
    );
    assert_eq!(
        device_names(&json(&cfg, &list, &[("M87_PROFILE", "lab")])),
        ["two-bot"]
    );
    let status = json(&cfg, &["status", "-o", "json"], &[("M87_PROFILE", "lab")]);
    assert_eq!(status["profile"], "lab");
    assert_eq!(status["server"], two.url.as_str());
    let text = ok(&cfg, &["status"], &[]);
    assert!(
        text.contains("profile:") && text.contains("default"),
        "{text}"
    );
    assert!(text.contains(&one.url), "{text}");
    // A device operation under a profile given after the operation.
    let hello = ok(
        &cfg,
        &["two-bot", "exec", "--profile", "lab", "--", "echo", "hi"],
        &[],
    );
    assert_eq!(hello.trim(), "hi");

    // `use` switches; the list marks it; the flag still wins.
    ok(&cfg, &["profile", "use", "lab"], &[]);
    assert_eq!(device_names(&json(&cfg, &list, &[])), ["two-bot"]);
    assert_eq!(
        device_names(&json(
            &cfg,
            &["--profile", "default", "devices", "list", "-o", "json"],
            &[]
        )),
        ["one-bot"]
    );
    let profiles = json(&cfg, &["profile", "list", "-o", "json"], &[]);
    let current: Vec<&str> = profiles
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["current"] == true)
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(current, ["lab"], "{profiles}");
    assert_eq!(profiles[0]["server"], one.url.as_str(), "{profiles}");

    // Logging out of one profile leaves the other logged in.
    ok(&cfg, &["logout"], &[]);
    let l: Value = serde_json::from_slice(&std::fs::read(&lab_creds).unwrap()).unwrap();
    assert!(
        l.get("user").is_none() && l["servers"].get(&two.url).is_some(),
        "{l}"
    );
    let d: Value = serde_json::from_slice(&std::fs::read(&default_creds).unwrap()).unwrap();
    assert!(d.get("user").is_some(), "{d}");
    assert_eq!(
        device_names(&json(
            &cfg,
            &["--profile", "default", "devices", "list", "-o", "json"],
            &[]
        )),
        ["one-bot"]
    );

    // Removing the profile in use is refused, and changes nothing.
    let err = fails(&cfg, &["profile", "remove", "lab"]);
    assert!(err.contains("profile use default"), "{err}");
    assert!(cfg.join("profiles/lab/profile.json").exists());
    ok(&cfg, &["profile", "use", "default"], &[]);
    ok(&cfg, &["profile", "remove", "lab"], &[]);
    assert!(!cfg.join("profiles/lab").exists());
    assert!(default_creds.exists());
}
