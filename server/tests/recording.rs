//! Session recording through the real binaries: a shell on an organization's device, driven
//! through a pseudo-terminal as a person would, is recorded by the device, stored by the server,
//! replayed by `m87 audit play` and saved as asciicast v2 by `m87 audit recording`; only those
//! allowed read it; with the organization's policy off the next session is not recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::pty::Terminal;
use common::{M87, Proc, Server, request_id_of, user};

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

/// Runs `m87 DEVICE shell` as `who` in a pseudo-terminal, types `echo secret-word` and `exit`;
/// returns everything the terminal showed.
fn shell_session(who: &M87, device: &str) -> String {
    let Terminal {
        mut child,
        screen,
        mut keys,
        ..
    } = Terminal::shell(who, device);
    // The word is printed by the shell as well as echoed: split it in what is typed, so the
    // output (the joined word) shows the command ran.
    keys.write_all(b"echo secret-\"word\"\r").unwrap();
    wait_until("the command's output", || {
        screen.lock().unwrap().contains("secret-word")
    });
    keys.write_all(b"exit\r").unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "m87 shell did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    screen.lock().unwrap().clone()
}

fn last_session(data: &std::path::Path) -> serde_json::Value {
    events_of_type(data, "SessionOpened").pop().unwrap()
}

/// Each line after the header is `[seconds, "o"|"i"|"r", text]`.
fn assert_asciicast_v2(text: &str) {
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{header}");
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert!(header["timestamp"].is_i64(), "{header}");
    assert_eq!(header["env"]["TERM"], "xterm", "{header}");
    let mut count = 0;
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let event = event.as_array().unwrap();
        assert_eq!(event.len(), 3, "{line}");
        assert!(event[0].is_number(), "{line}");
        assert!(
            ["o", "i", "r"].contains(&event[1].as_str().unwrap()),
            "{line}"
        );
        assert!(event[2].is_string(), "{line}");
        count += 1;
    }
    assert!(count > 2, "{text}");
}

#[test]
fn a_shell_on_an_org_device_is_recorded_replayed_saved_and_shown_only_to_those_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let root = M87::new(
        &server.url,
        &tmp.path().join("root"),
        Some(&server.admin_key()),
    );
    let alice = user(&server, &root, &tmp.path().join("a"), "alice@example.com");
    let bob = user(&server, &root, &tmp.path().join("b"), "bob@example.com");
    let carol = user(&server, &root, &tmp.path().join("c"), "carol@example.com");
    let eve = user(&server, &root, &tmp.path().join("e"), "eve@example.com");
    alice.ok(&["org", "create", "acme"]);
    alice.ok(&["org", "members", "add", "acme", "bob@example.com"]);
    alice.ok(&["org", "members", "add", "acme", "carol@example.com"]);
    let device = M87::new(&server.url, &tmp.path().join("dev"), None);
    let runtime: Proc = device.runtime(&["--org", "acme", "--name", "rec-bot"]);
    alice.ok(&["devices", "approve", &request_id_of(&runtime)]);
    runtime.out.wait_for("tunnel connected to relay", WAIT);

    // On by default for an organization.
    let policy: serde_json::Value =
        serde_json::from_str(&bob.ok(&["org", "policy", "show", "acme", "-o", "json"])).unwrap();
    assert_eq!(
        (&policy["record_sessions"], &policy["default"]),
        (&serde_json::json!(true), &serde_json::json!(true))
    );
    let shown = bob.ok(&["devices", "policy", "show", "rec-bot"]);
    assert!(
        shown.contains("record-sessions inherit") && shown.contains("policy of org acme"),
        "{shown}"
    );

    // Bob, a member, opens a shell; he is told it is recorded.
    let screen = shell_session(&bob, "rec-bot");
    assert!(
        screen.contains("m87: this session is recorded (policy of org acme)"),
        "{screen}"
    );
    let opened = last_session(&data);
    assert_eq!(opened["recorded"], true, "{opened}");
    let session = opened["session_id"].as_str().unwrap().to_owned();
    wait_until("the recording to be stored", || {
        events_of_type(&data, "SessionRecordingStored")
            .iter()
            .any(|e| e["session_id"] == session.as_str())
    });
    let stored = events_of_type(&data, "SessionRecordingStored")
        .pop()
        .unwrap();
    assert_eq!(stored["truncated"], false, "{stored}");
    let file = data
        .join("recordings")
        .join(format!("session-{session}.cast"));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        stored["bytes"].as_u64().unwrap(),
        std::fs::metadata(&file).unwrap().len()
    );

    // The session's audit record links the recording.
    let listed: serde_json::Value =
        serde_json::from_str(&alice.ok(&["audit", "--action", "shell", "-o", "json"])).unwrap();
    let record = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["session_id"] == session.as_str())
        .unwrap_or_else(|| panic!("no audit record of {session}: {listed:#}"));
    assert_eq!(record["recorded"], true, "{record}");
    assert_eq!(record["recording"]["bytes"], stored["bytes"], "{record}");
    let details = alice.ok(&["audit", "--action", "shell", "--details"]);
    assert!(
        details.contains(&format!("m87 audit play {session}")),
        "{details}"
    );

    // Replayed, by the user who ran it.
    let played = bob.ok(&["audit", "play", &session, "--speed", "100"]);
    assert!(played.contains("secret-word"), "{played}");
    // Saved as asciicast v2, by an admin of the organization; the keystrokes are in it.
    let cast = tmp.path().join("f.cast");
    alice.ok(&["audit", "recording", &session, "-o", cast.to_str().unwrap()]);
    let text = std::fs::read_to_string(&cast).unwrap();
    assert_asciicast_v2(&text);
    assert!(text.contains(r#""i","echo secret-"#), "{text}");
    // To standard output, by a platform admin.
    assert_eq!(root.ok(&["audit", "recording", &session, "-o", "-"]), text);

    // A stranger, and a member who did not run it: as if it did not exist.
    for other in [&eve, &carol] {
        let err = other.fails(&["audit", "play", &session]);
        assert!(err.contains("has no recording you may read"), "{err}");
    }

    // With the organization's policy off, the next session is not recorded nor announced.
    let err = bob.fails(&["org", "policy", "set", "acme", "record-sessions", "off"]);
    assert!(err.contains("only admins"), "{err}");
    alice.ok(&["org", "policy", "set", "acme", "record-sessions", "off"]);
    let screen = shell_session(&bob, "rec-bot");
    assert!(!screen.contains("recorded"), "{screen}");
    let opened = last_session(&data);
    assert_ne!(opened["session_id"].as_str().unwrap(), session);
    assert_eq!(opened.get("recorded"), None, "{opened}");
    let unrecorded = opened["session_id"].as_str().unwrap();
    let err = alice.fails(&["audit", "recording", unrecorded, "-o", "-"]);
    assert!(err.contains("has no recording you may read"), "{err}");

    // The device's own policy wins over its organization's.
    alice.ok(&[
        "devices",
        "policy",
        "set",
        "rec-bot",
        "record-sessions",
        "on",
    ]);
    let shown = alice.ok(&["devices", "policy", "show", "rec-bot"]);
    assert!(shown.contains("policy of device rec-bot"), "{shown}");
    let out = bob.run(&["rec-bot", "exec", "-t", "--", "echo", "tty-word"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("m87: this session is recorded (policy of device rec-bot)"),
        "{out:?}"
    );
    let opened = last_session(&data);
    assert_eq!(opened["recorded"], true, "{opened}");
    // Commands without a terminal are never recorded.
    bob.ok(&["rec-bot", "exec", "--", "true"]);
    assert_eq!(last_session(&data).get("recorded"), None);
}

#[test]
fn a_recording_stops_at_its_cap_while_the_session_goes_on_and_large_ones_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    // A personal device, with a cap of 200 000 bytes: more than a plain request body may be.
    let device = M87::new(&server.url, &tmp.path().join("dev"), None);
    let mut cmd = device.command(&[
        "runtime",
        "run",
        "--email",
        "admin@localhost",
        "--name",
        "cap-bot",
    ]);
    cmd.env("M87_RECORDING_MAX_BYTES", "200000");
    let runtime = Proc::spawn(cmd);
    admin.ok(&["devices", "approve", &request_id_of(&runtime)]);
    runtime.out.wait_for("tunnel connected to relay", WAIT);

    // Personal devices are not recorded unless their own policy says so.
    let out = admin.run(&["cap-bot", "exec", "-t", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("recorded"));
    assert_eq!(last_session(&data).get("recorded"), None);
    admin.ok(&[
        "devices",
        "policy",
        "set",
        "cap-bot",
        "record-sessions",
        "on",
    ]);

    // About 500 kB of output: the session runs to its end, the recording stops at the cap.
    let script = "i=0; while [ $i -lt 40000 ]; do echo line-$i; i=$((i+1)); done; echo end-mark";
    let out = admin.run(&["cap-bot", "exec", "-t", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("line-39999") && stdout.contains("end-mark"));
    let session = last_session(&data)["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until("the recording to be stored", || {
        !events_of_type(&data, "SessionRecordingStored").is_empty()
    });
    let stored = events_of_type(&data, "SessionRecordingStored")
        .pop()
        .unwrap();
    assert_eq!(stored["session_id"], session.as_str());
    assert_eq!(stored["truncated"], true, "{stored}");
    assert_eq!(stored["max_bytes"], 200_000, "{stored}");
    let bytes = stored["bytes"].as_u64().unwrap();
    assert!((150_000..=200_000).contains(&bytes), "{stored}");
    let saved = admin.ok(&["audit", "recording", &session, "-o", "-"]);
    assert_eq!(saved.len() as u64, bytes);
    assert_asciicast_v2(&saved);
    assert!(saved.contains("line-1\\r\\n") && !saved.contains("end-mark"));
    // The device removed its temporary copy.
    let leftover = std::env::temp_dir().join(format!("m87-recording-{session}.cast"));
    assert!(!leftover.exists());
}
