//! The `m87` binary on its own: help, argument errors and device state without a server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn m87(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m87"))
        .args(args)
        .env("M87_CONFIG_DIR", config)
        .env_remove("M87_API_KEY")
        .env_remove("M87_API_URL")
        .env_remove("OWNER_REFERENCE")
        .output()
        .unwrap()
}

#[test]
fn help_explains_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = m87(dir.path(), &["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "login",
        "devices",
        "api-keys",
        "runtime",
        "M87_API_URL",
        "--output",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let out = m87(dir.path(), &["runtime", "run", "--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("OWNER_REFERENCE") && text.contains("--email"),
        "{text}"
    );
}

#[test]
fn device_help_lists_every_operation_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = m87(dir.path(), &["robot-1", "--help"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (list, examples) = text.split_once("Examples:").expect("an Examples section");
    for op in [
        "exec", "shell", "forward", "docker", "logs", "metrics", "serial", "status", "ls", "audit",
        "access",
    ] {
        assert!(
            list.lines()
                .any(|l| l.trim_start().starts_with(&format!("{op} "))),
            "no line for {op}: {text}"
        );
        assert!(
            examples.contains(&format!("m87 robot-1 {op} ")),
            "no example of {op}: {text}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_before_anything_happens() {
    let dir = tempfile::tempdir().unwrap();
    let out = m87(dir.path(), &["runtime", "run", "--email", "not-an-email"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid email"));
    let out = m87(
        dir.path(),
        &["runtime", "run", "--email", "a@b.c", "--org", "acme"],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = m87(dir.path(), &["api-keys", "revoke", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!dir.path().join("credentials.json").exists());
}

#[test]
fn runtime_status_and_logout_without_registration() {
    let dir = tempfile::tempdir().unwrap();
    let out = m87(dir.path(), &["runtime", "status", "--output", "json"]);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "not registered");
    let out = m87(dir.path(), &["runtime", "logout"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no stored credentials"));
    let out = m87(dir.path(), &["devices", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim(),
        "error: not logged in: run `m87 login --api-key KEY` or set M87_API_KEY"
    );
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_m87"))
        .args(["runtime", "run", "--email", "a@example.com"])
        .env("M87_CONFIG_DIR", dir.path())
        .env("M87_API_URL", "ftp://nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with https://"));
}
