//! `m87 <device> logs` through the real binaries: the runtime's own log (all of it, the last
//! N lines, a time window, following it until Ctrl-C), a container's log through a Docker API
//! socket, a unit's journal through journalctl (journald started here if it is not running),
//! bad inputs, and the audit trail (a viewer refused, a read recorded with its arguments).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Acme, Proc, acme_with, audit_until};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

impl Acme {
    fn log_file(&self) -> PathBuf {
        self.device.config_dir.join("logs/runtime.log")
    }

    /// `alice: m87 acme-bot logs ARGS -o json`, as parsed lines.
    fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let out = self
            .alice
            .ok(&[&["acme-bot", "logs"], args, &["-o", "json"]].concat());
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn messages(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls until `done` holds for the text of `path`.
fn file_until(path: &Path, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; the file holds:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`Acme`] whose runtime offers `docker` as its Docker API socket.
fn docker_acme(docker: &Path) -> Acme {
    acme_with(&["--docker-socket", docker.to_str().unwrap()])
}

#[test]
fn the_runtime_log_shows_its_lines_the_last_n_and_a_time_window() {
    let dir = tempfile::tempdir().unwrap();
    let a = docker_acme(&dir.path().join("no-docker.sock"));
    // The runtime keeps its log where the docs say, as JSON lines.
    file_until(&a.log_file(), "no tunnel line in the log file", |t| {
        t.contains("tunnel connected to relay")
    });

    let table = a.alice.ok(&["acme-bot", "logs"]);
    let connected = table
        .lines()
        .find(|l| l.contains("tunnel connected to relay"))
        .unwrap_or_else(|| panic!("no tunnel line in:\n{table}"));
    let cols: Vec<&str> = connected.split_whitespace().collect();
    assert!(
        cols[0].parse::<chrono::DateTime<chrono::Utc>>().is_ok(),
        "{connected}"
    );
    assert_eq!(cols[1..3], ["INFO", "m87_agent::console"], "{connected}");

    let all = a.json_lines(&[]);
    let tunnel = all
        .iter()
        .find(|l| l["message"].as_str().unwrap().contains("tunnel connected"))
        .unwrap();
    assert_eq!(tunnel["level"], "INFO");
    let t: chrono::DateTime<chrono::Utc> = tunnel["time"].as_str().unwrap().parse().unwrap();

    // -n 2: exactly the last two, the newest being this very session's opening.
    let last = a.json_lines(&["-n", "2"]);
    assert_eq!(last.len(), 2, "{last:#?}");
    let newest = last[1]["message"].as_str().unwrap();
    assert!(
        newest.contains("session accepted") && newest.contains("op=logs"),
        "{last:#?}"
    );
    // A window: since just after the tunnel line leaves it out; until that instant keeps
    // it and nothing later.
    let after = t + chrono::Duration::milliseconds(1);
    let after_text = after.to_rfc3339();
    let since = a.json_lines(&["--since", &after_text]);
    assert!(!since.is_empty());
    assert!(
        messages(&since)
            .iter()
            .all(|m| !m.contains("tunnel connected"))
    );
    let until = a.json_lines(&["--until", &after_text]);
    assert!(
        messages(&until)
            .iter()
            .any(|m| m.contains("tunnel connected"))
    );
    for line in &until {
        let time: chrono::DateTime<chrono::Utc> = line["time"].as_str().unwrap().parse().unwrap();
        assert!(time < after, "{line}");
    }
    // Durations count back from now.
    let recent = a.json_lines(&["--since", "10m"]);
    assert!(
        messages(&recent)
            .iter()
            .any(|m| m.contains("tunnel connected"))
    );
}

#[test]
fn following_picks_up_new_lines_and_ctrl_c_stops_the_device_reading() {
    let dir = tempfile::tempdir().unwrap();
    let a = docker_acme(&dir.path().join("no-docker.sock"));
    let mut follow = Proc::spawn(a.alice.command(&["acme-bot", "logs", "-f", "-n", "5"]));
    follow.out.wait_for("op=logs", WAIT);
    // Something new on the device after the follower started: an exec session.
    a.alice.ok(&["acme-bot", "exec", "--", "true"]);
    follow.out.wait_for("op=exec", WAIT);

    let status = Command::new("kill")
        .args(["-INT", &follow.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(follow.wait_exit(WAIT), 0, "{}", follow.out.all());
    // The device's reader noticed the closed stream and stopped...
    file_until(&a.log_file(), "the device never stopped reading", |t| {
        t.contains("logs reader stopped: the client closed the stream")
    });
    // ...and the session is closed on the record.
    let records = audit_until(&a.alice, "logs", |r| {
        r.iter()
            .any(|x| x["args"]["follow"] == true && x["outcome"] != "open")
    });
    let followed = records
        .iter()
        .find(|x| x["args"]["follow"] == true)
        .unwrap();
    assert_eq!(followed["args"]["lines"], 5);
    assert_eq!(followed["args"]["source"]["type"], "runtime");
    let _ = &a.runtime;
}

#[test]
fn a_viewer_is_refused_and_a_read_is_recorded_with_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let a = docker_acme(&dir.path().join("no-docker.sock"));
    let err = a.carol.fails(&["acme-bot", "logs"]);
    assert!(err.contains("viewer"), "{err}");
    a.alice
        .ok(&["acme-bot", "logs", "-n", "3", "--since", "1h"]);
    let records = audit_until(&a.alice, "logs", |r| {
        r.iter().any(|x| x["outcome"] == "refused") && r.iter().any(|x| x["outcome"] == "ok")
    });
    let refused = records.iter().find(|x| x["outcome"] == "refused").unwrap();
    assert_eq!(refused["user"], "carol@example.com");
    let ok = records.iter().find(|x| x["outcome"] == "ok").unwrap();
    assert_eq!(ok["user"], "alice@example.com");
    assert_eq!(ok["args"]["lines"], 3);
    assert_eq!(ok["args"]["source"]["type"], "runtime");
    assert!(ok["args"]["since"].is_string(), "{ok}");
}

/// Container logs themselves are tested against a real dockerd in `ops_docker.rs`; here, what
/// a user gets without one, and bad arguments.
#[test]
fn bad_inputs_and_a_device_without_a_docker_api_get_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = docker_acme(&dir.path().join("no-docker.sock"));
    let err = a.alice.fails(&["acme-bot", "logs", "--container", "web"]);
    assert!(
        err.contains("no-docker.sock"),
        "names the socket it tried: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let err = a
        .alice
        .fails(&["acme-bot", "logs", "--unit", "x", "--container", "web"]);
    assert!(
        err.contains("give one of --unit, --container or --runtime"),
        "{err}"
    );
    let err = a.alice.fails(&["acme-bot", "logs", "--since", "yesterday"]);
    assert!(err.contains("--since"), "{err}");
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Whether a journald answers on its socket (a socket file left by a stopped one does not).
fn journald_answers() -> bool {
    std::os::unix::net::UnixDatagram::unbound().is_ok_and(|s| s.connect(JOURNAL_SOCKET).is_ok())
}

/// Makes sure a journald runs: this environment has no systemd as PID 1, so unless one is
/// already running it is started here, as root, on its usual sockets, and stopped when the
/// returned process is dropped.
fn journald() -> Option<Proc> {
    let journalctl = Command::new("journalctl").arg("--version").output();
    assert!(
        journalctl.is_ok_and(|o| o.status.success()),
        "journalctl is missing: install Debian's package systemd (scripts/setup-test-env)"
    );
    if journald_answers() {
        return None;
    }
    let daemon = Path::new("/lib/systemd/systemd-journald");
    assert!(
        daemon.exists(),
        "systemd-journald is missing: install Debian's package systemd (scripts/setup-test-env)"
    );
    let started = Proc::spawn(Command::new(daemon));
    let deadline = Instant::now() + WAIT;
    while !journald_answers() {
        assert!(
            Instant::now() < deadline,
            "systemd-journald did not start (the test must run as root to start it): {}",
            started.out.all()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(started)
}

/// Writes `message` to the journal as a line about `unit` (a root process may name the unit
/// its message is about, which `journalctl -u` shows).
fn journal_line(unit: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let fields = dir.path().join("fields");
    std::fs::write(
        &fields,
        format!(
            "MESSAGE={message}\nOBJECT_SYSTEMD_UNIT={unit}\nPRIORITY=4\nSYSLOG_IDENTIFIER=demo\n"
        ),
    )
    .unwrap();
    let status = Command::new("logger")
        .arg(format!("--journald={}", fields.display()))
        .status()
        .expect("logger is missing: install Debian's package bsdutils");
    assert!(status.success());
}

#[test]
fn a_units_journal_is_read_with_journalctl() {
    let _journald = journald();
    let unit = format!("m87-test-{}.service", std::process::id());
    journal_line(&unit, "first line");
    journal_line(&unit, "second line");
    let dir = tempfile::tempdir().unwrap();
    let a = docker_acme(&dir.path().join("no-docker.sock"));
    let deadline = Instant::now() + WAIT;
    let lines = loop {
        let lines = a.json_lines(&["--unit", &unit]);
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(messages(&lines), ["first line", "second line"]);
    assert_eq!(lines[0]["level"], "warning");
    assert_eq!(lines[0]["source"], "demo");
    assert_eq!(
        messages(&a.json_lines(&["--unit", &unit, "-n", "1"])),
        ["second line"]
    );

    // Following the unit: a line written after it started shows up; Ctrl-C ends it.
    let mut follow = Proc::spawn(
        a.alice
            .command(&["acme-bot", "logs", "-f", "--unit", &unit, "-n", "1"]),
    );
    follow.out.wait_for("second line", WAIT);
    journal_line(&unit, "third line");
    let third = follow.out.wait_for("third line", WAIT);
    assert!(third.contains(" warning demo third line"), "{third}");
    let status = Command::new("kill")
        .args(["-INT", &follow.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(follow.wait_exit(WAIT), 0, "{}", follow.out.all());

    let err = a
        .alice
        .fails(&["acme-bot", "logs", "--unit", "m87-no-such-unit"]);
    assert!(err.contains("no unit named \"m87-no-such-unit\""), "{err}");
}
