//! `m87 runtime enable|start|…` without a server: the unit it writes passes
//! `systemd-analyze verify`, the commands say so when no systemd can be reached, and a second
//! runtime on one state directory refuses to start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `m87` with its state in `config` and HOME (so `~/.config/systemd/user`) in `home`.
fn m87(config: &Path, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_m87"));
    cmd.args(args)
        .env("M87_CONFIG_DIR", config)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("M87_API_KEY")
        .env_remove("M87_API_URL")
        .env_remove("OWNER_REFERENCE")
        .env_remove("M87_API_FINGERPRINT")
        .env_remove("M87_TRUST_INVALID_CERT");
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `systemd-analyze verify` on `unit`, failing the test with the package name when missing.
fn verify(unit: &Path, user: bool) -> Output {
    let mut cmd = Command::new("systemd-analyze");
    let runtime_dir = tempfile::tempdir().unwrap();
    if user {
        // A user manager's paths need XDG_RUNTIME_DIR (a login session's directory).
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime_dir.path());
    }
    cmd.args(["verify", "--man=no"]).arg(unit);
    cmd.output()
        .unwrap_or_else(|e| panic!("systemd-analyze is needed (Debian package systemd): {e}"))
}

fn printed_unit(system: bool) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["runtime", "enable", "--print", "--email", "me@example.com"];
    args.extend(["--name", "robot-1", "--api-url", "https://m87.example:8443"]);
    if system {
        args.push("--system");
    }
    let out = m87(&dir.path().join("state"), dir.path(), &args)
        .env("M87_APPROVAL_POLL_SECS", "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    text(&out)
}

#[test]
fn the_system_unit_passes_systemd_analyze_verify() {
    let (unit, path) = printed_unit(true);
    assert_eq!(path.trim(), "# /etc/systemd/system/m87-runtime.service");
    for line in [
        "User=m87\n",
        "StateDirectory=m87\n",
        "Environment=\"M87_CONFIG_DIR=/var/lib/m87\"\n",
        "Environment=\"M87_API_URL=https://m87.example:8443\"\n",
        "Environment=\"M87_APPROVAL_POLL_SECS=2\"\n",
        "Restart=on-failure\n",
        "RestartPreventExitStatus=78\n",
        "NoNewPrivileges=yes\n",
        "PrivateTmp=yes\n",
        "WantedBy=multi-user.target\n",
    ] {
        assert!(unit.contains(line), "no {line:?} in\n{unit}");
    }
    assert!(
        unit.contains("\"runtime\" \"run\" \"--email\" \"me@example.com\" \"--name\" \"robot-1\""),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m87-runtime.service");
    std::fs::write(&file, &unit).unwrap();
    let out = verify(&file, false);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "verify failed:\n{stdout}{stderr}\n{unit}"
    );
    assert!(
        !stderr.contains("m87-runtime.service:"),
        "verify warns about the unit:\n{stderr}"
    );
}

#[test]
fn the_user_unit_passes_systemd_analyze_verify() {
    let (unit, path) = printed_unit(false);
    assert!(
        path.trim()
            .ends_with("/.config/systemd/user/m87-runtime.service"),
        "{path}"
    );
    assert!(!unit.contains("User="), "{unit}");
    assert!(unit.contains("WantedBy=default.target\n"), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m87-runtime.service");
    std::fs::write(&file, &unit).unwrap();
    let out = verify(&file, true);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "verify failed:\n{stdout}{stderr}\n{unit}"
    );
    assert!(
        !stderr.contains("m87-runtime.service:"),
        "verify warns about the unit:\n{stderr}"
    );
}

#[test]
fn without_a_reachable_systemd_the_commands_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = m87(
        &state,
        dir.path(),
        &["runtime", "enable", "--email", "me@example.com"],
    )
    .output()
    .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    if Path::new("/run/systemd/system").is_dir() {
        // XDG_RUNTIME_DIR points at an empty directory: no user manager there.
        assert!(err.contains("no systemd user manager"), "{err}");
    } else {
        assert!(
            err.contains(
                "systemd is not running here; run `m87 runtime run` under your own supervisor"
            ),
            "{err}"
        );
    }
    assert!(
        !dir.path()
            .join(".config/systemd/user/m87-runtime.service")
            .exists(),
        "nothing is written when systemd cannot take it"
    );
    let out = m87(&state, dir.path(), &["runtime", "start"])
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("no m87-runtime.service is installed"), "{err}");
    let out = m87(&state, dir.path(), &["runtime", "status", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["service"], serde_json::Value::Null);
    assert_eq!(status["runtime"]["running"], false);
    assert_eq!(status["tunnel"]["connected"], false);
}

#[test]
fn a_second_runtime_on_the_same_state_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Nothing listens on port 1: the first runtime keeps retrying its registration.
    let mut first = m87(
        &state,
        dir.path(),
        &["runtime", "run", "--email", "me@example.com"],
    )
    .env("M87_API_URL", "https://127.0.0.1:1")
    .env("M87_RUNTIME_LOG", "off")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.join("runtime-state.json").exists() {
        assert!(Instant::now() < deadline, "the first runtime never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = m87(
        &state,
        dir.path(),
        &["runtime", "run", "--email", "me@example.com"],
    )
    .env("M87_API_URL", "https://127.0.0.1:1")
    .env("M87_RUNTIME_LOG", "off")
    .output()
    .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success(), "the second runtime ran: {err}");
    assert!(
        err.contains(&format!(
            "another m87 runtime (pid {}) is already running on {}",
            first.id(),
            state.display()
        )),
        "{err}"
    );
    let out = m87(&state, dir.path(), &["runtime", "status", "-o", "json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["runtime"]["running"], true, "{status}");
    assert_eq!(status["runtime"]["pid"], first.id(), "{status}");
    first.kill().unwrap();
    first.wait().unwrap();
    let out = m87(&state, dir.path(), &["runtime", "status", "-o", "json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["runtime"]["running"], false,
        "a killed runtime holds nothing: {status}"
    );
}

#[test]
fn a_runtime_that_restarting_cannot_help_exits_with_the_code_the_unit_does_not_restart_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = m87(&dir.path().join("state"), dir.path(), &["runtime", "run"])
        .env("M87_API_URL", "https://127.0.0.1:1")
        .env("M87_RUNTIME_LOG", "off")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("give --email EMAIL, --org ID or OWNER_REFERENCE"),
        "{err}"
    );
}
