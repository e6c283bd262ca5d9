//! `m87 <device> ls` through the real binaries: plain names, `-la` long lines with modes,
//! sizes and link targets, `-o json` entries, a missing path refused with a clear line, and a
//! viewer refused; both on the audit trail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{acme, audit_until};
use serde_json::Value;

#[test]
fn a_directory_is_listed_plain_long_and_as_json() {
    let a = acme();
    let dir = a.tmp.path().join("on-device");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("notes.txt"), "twelve bytes").unwrap();
    std::fs::write(dir.join(".hidden"), "").unwrap();
    std::os::unix::fs::symlink("notes.txt", dir.join("link")).unwrap();
    let path = dir.to_str().unwrap();

    let plain = a.bob.ok(&["acme-bot", "ls", path]);
    assert_eq!(plain, "link\nnotes.txt\nsub\n");

    let long = a.bob.ok(&["acme-bot", "ls", "-la", path]);
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines.len(), 4, "{long}");
    assert!(
        lines[0].starts_with("-rw") && lines[0].ends_with(" .hidden"),
        "{long}"
    );
    assert!(
        lines[1].starts_with("lrwxrwxrwx ") && lines[1].ends_with(" link -> notes.txt"),
        "{long}"
    );
    assert!(
        lines[2].starts_with("-rw")
            && lines[2].contains(" 12 ")
            && lines[2].ends_with(" notes.txt"),
        "{long}"
    );
    assert!(
        lines[3].starts_with("drwx") && lines[3].ends_with(" sub"),
        "{long}"
    );
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let me = String::from_utf8(me.stdout).unwrap();
    assert!(
        lines[2].contains(&format!(" {} ", me.trim())),
        "owner names: {long}"
    );
    // -l and -a apart mean the same.
    assert_eq!(a.bob.ok(&["acme-bot", "ls", "-l", "-a", path]), long);

    let json = a.bob.ok(&["acme-bot", "ls", "-o", "json", path]);
    let entries: Vec<Value> = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["link", "notes.txt", "sub"]);
    assert_eq!(entries[0]["kind"], "symlink");
    assert_eq!(entries[0]["target"], "notes.txt");
    assert_eq!(entries[1]["kind"], "file");
    assert_eq!(entries[1]["size"], 12);
    assert_eq!(entries[1]["mode"].as_u64().unwrap() & 0o170000, 0o100000);
    assert!(entries[1]["mtime"].is_string());
    assert!(entries[1]["uid"].is_u64());
    assert_eq!(entries[2]["kind"], "dir");

    // A single file is listed alone.
    let file = dir.join("notes.txt");
    assert_eq!(
        a.bob.ok(&["acme-bot", "ls", file.to_str().unwrap()]),
        format!("{}\n", file.display())
    );

    // The listing is on the record with its arguments.
    let records = audit_until(&a.alice, "ls", |r| {
        r.iter()
            .any(|x| x["args"]["all"] == true && x["outcome"] != "open")
    });
    let listed = records
        .iter()
        .find(|r| r["args"]["path"] == path && r["args"]["all"] == true)
        .unwrap();
    assert_eq!(listed["user"], "bob@example.com");
    assert_eq!(listed["outcome"], "ok", "{listed}");
}

#[test]
fn a_missing_path_is_a_clear_error_and_a_viewer_is_refused() {
    let a = acme();
    let missing = a.tmp.path().join("not-there");
    let missing = missing.to_str().unwrap();
    let err = a.bob.fails(&["acme-bot", "ls", missing]);
    assert!(
        err.contains(missing) && err.contains("No such file"),
        "{err}"
    );

    let err = a.carol.fails(&["acme-bot", "ls", "/"]);
    assert!(err.contains("viewers"), "{err}");
    let records = audit_until(&a.alice, "ls", |r| {
        r.iter().any(|x| x["user"] == "carol@example.com")
    });
    let refused = records
        .iter()
        .find(|r| r["user"] == "carol@example.com")
        .unwrap();
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert_eq!(refused["refused_by"], "grant", "{refused}");
}
