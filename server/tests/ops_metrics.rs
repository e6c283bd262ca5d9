//! `m87 <device> metrics` through the real binaries: NDJSON samples with every field, one line
//! of text per sample when piped, the full-screen view in a real terminal (tmux) that redraws
//! on resize and restores the terminal on `q`, an organization viewer allowed (read-only
//! operation), and every session in the audit trail with its interval.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::tmux::{Tmux, shell_line};
use common::{M87, Server, acme, audit_until};
use serde_json::Value;

/// Checks that a sample has every field, with figures a real machine has.
fn assert_sane(sample: &Value) {
    let time = sample["time"].as_str().expect("time");
    assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
    let cpu = &sample["cpu"];
    let cores = cpu["cores"].as_array().expect("cores");
    assert!(!cores.is_empty(), "{sample}");
    for c in cores.iter().chain([&cpu["total_percent"]]) {
        let p = c.as_f64().expect("a percentage");
        assert!((0.0..=100.0).contains(&p), "{p} in {sample}");
    }
    let m = &sample["memory"];
    let total = m["total_bytes"].as_u64().unwrap();
    assert!(total > 0, "{sample}");
    assert!(m["used_bytes"].as_u64().unwrap() <= total);
    assert!(m["available_bytes"].as_u64().unwrap() <= total);
    assert!(m["swap_used_bytes"].as_u64().unwrap() <= m["swap_total_bytes"].as_u64().unwrap());
    for l in ["one", "five", "fifteen"] {
        assert!(sample["load"][l].as_f64().unwrap() >= 0.0, "{sample}");
    }
    let mounts = sample["mounts"].as_array().unwrap();
    assert!(!mounts.is_empty(), "no mount in {sample}");
    for mount in mounts {
        assert!(mount["mount_point"].as_str().unwrap().starts_with('/'));
        assert!(!mount["fs"].as_str().unwrap().is_empty());
        assert!(mount["used_bytes"].as_u64().unwrap() <= mount["total_bytes"].as_u64().unwrap());
        assert!(mount["read_bytes_per_sec"].as_f64().unwrap() >= 0.0);
        assert!(mount["written_bytes_per_sec"].as_f64().unwrap() >= 0.0);
    }
    let interfaces = sample["interfaces"].as_array().unwrap();
    let lo = interfaces
        .iter()
        .find(|i| i["name"] == "lo")
        .unwrap_or_else(|| panic!("no lo in {sample}"));
    assert!(lo["rx_total_bytes"].as_u64().unwrap() > 0, "{lo}");
    assert!(lo["rx_bytes_per_sec"].as_f64().unwrap() >= 0.0);
    assert!(lo["tx_bytes_per_sec"].as_f64().unwrap() >= 0.0);
    assert!(lo["tx_total_bytes"].is_u64());
    for t in sample["temperatures"].as_array().expect("temperatures") {
        assert!(t["label"].is_string() && t["celsius"].is_f64(), "{t}");
    }
    let processes = sample["processes"].as_array().unwrap();
    assert!(!processes.is_empty() && processes.len() <= 10, "{sample}");
    for p in processes {
        assert!(p["pid"].as_u64().unwrap() > 0);
        assert!(p["name"].is_string() && p["cpu_percent"].as_f64().unwrap() >= 0.0);
        assert!(p["memory_bytes"].is_u64());
    }
}

#[test]
fn json_samples_text_lines_a_viewer_and_the_audit_trail() {
    let a = acme();
    let out = a.alice.ok(&[
        "acme-bot",
        "metrics",
        "-o",
        "json",
        "--interval",
        "1s",
        "--count",
        "3",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let samples: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    samples.iter().for_each(assert_sane);
    let times: Vec<&str> = samples
        .iter()
        .map(|s| s["time"].as_str().unwrap())
        .collect();
    assert!(times[0] < times[1] && times[1] < times[2], "{times:?}");

    // Piped without -o json: one line of text per sample.
    let text = a
        .alice
        .ok(&["acme-bot", "metrics", "--interval", "500ms", "--count", "2"]);
    let text_lines: Vec<&str> = text.lines().collect();
    assert_eq!(text_lines.len(), 2, "{text}");
    for l in &text_lines {
        assert!(
            l.contains(" cpu ") && l.contains(" mem ") && l.contains(" load "),
            "{l}"
        );
    }

    // Too short an interval is refused before any session.
    let err = a
        .alice
        .fails(&["acme-bot", "metrics", "-o", "json", "--interval", "100ms"]);
    assert!(err.contains("200 ms"), "{err}");

    // Carol, a viewer, may watch (a read-only operation).
    let out = a.carol.ok(&[
        "acme-bot",
        "metrics",
        "-o",
        "json",
        "--interval",
        "200ms",
        "--count",
        "1",
    ]);
    assert_sane(&serde_json::from_str(out.trim()).unwrap());
    let err = a.carol.fails(&["acme-bot", "exec", "--", "true"]);
    assert!(err.contains("viewers"), "{err}");

    let records = audit_until(&a.alice, "metrics", |r| {
        r.len() >= 3 && r.iter().all(|x| x["outcome"] != "open")
    });
    let by = |user: &str, ms: u64| {
        records
            .iter()
            .find(|r| r["user"] == user && r["args"]["interval_ms"] == ms)
            .unwrap_or_else(|| panic!("no metrics record of {user} at {ms} ms: {records:#?}"))
    };
    let alice = by("alice@example.com", 1000);
    assert_eq!(alice["outcome"], "ok", "{alice}");
    assert_eq!(alice["device_name"], "acme-bot");
    by("alice@example.com", 500);
    let carol = by("carol@example.com", 200);
    assert_eq!(carol["outcome"], "ok", "{carol}");
    assert!(
        carol["bytes_from_device"].as_u64().unwrap() > 100,
        "{carol}"
    );
    let _ = &a.tmp;
}

/// The screen's lines, trailing blanks cut.
fn last_line(screen: &str) -> String {
    screen.lines().last().unwrap_or("").trim_end().to_owned()
}

#[test]
fn the_live_view_draws_redraws_on_resize_and_restores_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) =
        common::enrolled_device(&server, &admin, &tmp.path().join("dev"), "robot-1");
    let tmux = Tmux::start(tmp.path(), 100, 30);
    tmux.wait("a shell prompt", |s| s.contains('$'));
    let command = admin.command(&["robot-1", "metrics", "--interval", "500ms"]);
    tmux.type_line(&format!("{}; echo \"exit=$?\"", shell_line(&command)));

    let screen = tmux.wait("the CPU line", |s| {
        s.contains("CPU ") && s.contains("Processes") && s.contains("robot-1")
    });
    assert!(
        screen.contains("Disks") && screen.contains("Network"),
        "{screen}"
    );
    assert!(screen.contains("Mem "), "{screen}");
    assert_eq!(tmux.display("#{alternate_on}"), "1");
    // The bottom panel's lower border spans the 100 columns.
    let bottom = last_line(&screen);
    assert!(bottom.starts_with('└') && bottom.ends_with('┘'), "{screen}");
    assert_eq!(bottom.chars().count(), 100, "{screen}");

    tmux.ok(&["resize-window", "-t", "m87", "-x", "140", "-y", "40"]);
    let screen = tmux.wait("a redraw at 140x40", |s| {
        let bottom = last_line(s);
        s.lines().count() == 40
            && bottom.starts_with('└')
            && bottom.chars().count() == 140
            && s.contains("CPU ")
    });
    assert!(screen.contains("Processes"), "{screen}");

    tmux.ok(&["send-keys", "-t", "m87", "q"]);
    // The line the shell prints after m87 exits (not the typed command, which has "exit=$?").
    let exited = |s: &str| s.lines().any(|l| l.starts_with("exit="));
    let screen = tmux.wait("the view ended", exited);
    assert!(screen.lines().any(|l| l.trim_end() == "exit=0"), "{screen}");
    assert!(
        !screen.contains("Processes"),
        "the view is left on screen:\n{screen}"
    );
    assert_eq!(tmux.display("#{alternate_on}"), "0");
    // The terminal is back in its normal mode: typed text echoes, Enter runs the line.
    tmux.type_line("echo restored-$((6*7))");
    let screen = tmux.wait("the typed line to run", |s| s.contains("restored-42"));
    assert!(
        screen.contains("echo restored-$((6*7))"),
        "typed text did not echo:\n{screen}"
    );

    // Ctrl-C quits as well, with the same clean exit.
    tmux.ok(&["send-keys", "-t", "m87", "clear", "Enter"]);
    tmux.type_line(&format!("{}; echo \"ctrl-c=$?\"", shell_line(&command)));
    tmux.wait("the view again", |s| s.contains("Processes"));
    tmux.ok(&["send-keys", "-t", "m87", "C-c"]);
    let screen = tmux.wait("the view ended by Ctrl-C", |s| {
        s.lines().any(|l| l.starts_with("ctrl-c="))
    });
    assert!(
        screen.lines().any(|l| l.trim_end() == "ctrl-c=0"),
        "{screen}"
    );
    assert_eq!(tmux.display("#{alternate_on}"), "0");

    // A terminal that goes away (the pane closed, as with a dropped SSH link) ends the view.
    let pid_file = tmp.path().join("view.pid");
    tmux.type_line(&format!(
        "sh -c 'echo $$ > {}; exec \"$0\" \"$@\"' {}",
        pid_file.display(),
        shell_line(&command)
    ));
    tmux.wait("the view again", |s| s.contains("Processes"));
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    tmux.ok(&["kill-server"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_dir.exists() && !is_zombie(&proc_dir) {
        assert!(
            Instant::now() < deadline,
            "m87 (pid {pid}) still runs after its terminal went away"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the process has exited and waits for its parent to reap it.
fn is_zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|rest| rest.starts_with('Z'))
    })
}
