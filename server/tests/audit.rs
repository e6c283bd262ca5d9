//! The audit trail through the real binaries: every kind of operation and change shows in
//! `m87 <device> audit` with who, from where, what, how it ended, how long and how many bytes;
//! each reader sees what the visibility rules allow; a session cut by a revocation has its
//! reason and true byte counts; `m87-server audit verify` passes on an untouched store and
//! names the entry after a row of the SQLite file is edited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{M87, Proc, Server, acme, bin, echo_server};
use serde_json::Value;

fn records(m87: &M87, args: &[&str]) -> Vec<Value> {
    let out = m87.ok(&[args, &["-o", "json"]].concat());
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

/// Polls `m87 <args> -o json` until `done` holds for its records.
fn records_until(m87: &M87, args: &[&str], done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = records(m87, args);
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "records never matched: {r:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn find<'a>(records: &'a [Value], action: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    records
        .iter()
        .find(|r| r["action"] == action && pred(r))
        .unwrap_or_else(|| panic!("no {action} record in {records:#?}"))
}

#[test]
fn every_operation_and_change_is_on_the_record_for_those_who_may_read_it() {
    let a = acme();
    let dir = a.tmp.path();
    // Bob: an exec that fails, files both ways, a sync, a forward with one connection.
    let out = a
        .bob
        .run(&["acme-bot", "exec", "--", "sh", "-c", "echo out; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    std::fs::write(dir.join("fw.bin"), vec![7u8; 30_000]).unwrap();
    let remote = dir.join("on-device");
    std::fs::create_dir_all(&remote).unwrap();
    let remote_file = format!("acme-bot:{}/fw.bin", remote.display());
    a.bob
        .ok(&["cp", dir.join("fw.bin").to_str().unwrap(), &remote_file]);
    a.bob
        .ok(&["cp", &remote_file, dir.join("back.bin").to_str().unwrap()]);
    // A directory without -r is refused before any session: nothing is recorded for it.
    let err = a.bob.fails(&["cp", remote.to_str().unwrap(), &remote_file]);
    assert!(err.contains("use -r"), "{err}");
    std::fs::create_dir_all(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), "hello").unwrap();
    let site = format!("acme-bot:{}/site", remote.display());
    a.bob
        .ok(&["sync", dir.join("site").to_str().unwrap(), &site]);
    let echo = echo_server();
    let local = common::free_port();
    let forward = Proc::spawn(
        a.bob
            .command(&["acme-bot", "forward", &format!("{local}:{echo}")]),
    );
    forward
        .out
        .wait_for("press Ctrl-C to stop", Duration::from_secs(30));
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        s.write_all(b"ping through the relay").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back).unwrap();
        assert_eq!(back, "ping through the relay");
    }
    let _ = Command::new("kill")
        .args(["-INT", &forward.child.id().to_string()])
        .status();
    // Carol, a viewer, is refused at the grant; alice shares the device and adds a member.
    let err = a.carol.fails(&["acme-bot", "exec", "--", "true"]);
    assert!(err.contains("viewers"), "{err}");
    a.alice
        .ok(&["acme-bot", "access", "add", "user:dave@example.com"]);
    a.alice.ok(&[
        "org",
        "members",
        "add",
        "acme",
        "dave@example.com",
        "--role",
        "viewer",
    ]);
    a.root
        .ok(&["api-keys", "create", "--email", "frank@example.com"]);

    // Alice, the org's admin, reads the device's whole record.
    let all = records_until(&a.alice, &["acme-bot", "audit", "--max", "100"], |r| {
        r.iter()
            .filter(|x| x["action"] == "forward" || x["action"] == "sync" || x["action"] == "cp")
            .all(|x| x["outcome"] != "open")
            && r.iter().any(|x| x["action"] == "forward")
    });
    let exec = find(&all, "exec", |r| r["outcome"] == "failed");
    assert_eq!(exec["user"], "bob@example.com");
    assert_eq!(exec["exit_code"], 3);
    assert_eq!(exec["args"]["argv"][2], "echo out; exit 3");
    assert_eq!(exec["source_ip"], "127.0.0.1");
    assert!(exec["key_id"].is_string(), "{exec}");
    assert!(exec["relay"].is_string(), "{exec}");
    assert_eq!(exec["reason"], "exit");
    assert!(exec["bytes_from_device"].as_u64().unwrap() >= 4, "{exec}");
    assert!(exec["duration_ms"].is_u64());
    assert_eq!(exec["device_name"], "acme-bot");
    let push = find(&all, "cp", |r| r["args"]["direction"] == "to_device");
    assert_eq!(push["outcome"], "ok");
    assert!(
        push["bytes_to_device"].as_u64().unwrap() >= 30_000,
        "{push}"
    );
    assert_eq!(push["details"][0]["kind"], "upload");
    let pull = find(&all, "cp", |r| r["args"]["direction"] == "from_device");
    assert!(
        pull["bytes_from_device"].as_u64().unwrap() >= 30_000,
        "{pull}"
    );
    let cps = all.iter().filter(|r| r["action"] == "cp").count();
    assert_eq!(cps, 2, "the refused directory copy left no record");
    find(&all, "sync", |r| {
        r["args"]["path"].as_str().unwrap().ends_with("/site")
    });
    let fwd = find(&all, "forward", |_| true);
    assert_eq!(fwd["details"][0]["kind"], "forward");
    assert_eq!(fwd["details"][0]["target"], format!("127.0.0.1:{echo}"));
    assert_eq!(fwd["details"][0]["bytes_to_device"], 22);
    let refused = find(&all, "exec", |r| r["outcome"] == "refused");
    assert_eq!(refused["user"], "carol@example.com");
    assert_eq!(refused["refused_by"], "grant");
    find(&all, "approve", |r| r["user"] == "alice@example.com");
    find(&all, "access", |r| {
        r["args"]["scope"] == "user:dave@example.com"
    });

    // The table says the same.
    let table = a.alice.ok(&["acme-bot", "audit", "--details"]);
    for needle in [
        "exit 3",
        "refused: forbidden",
        "bob@example.com",
        "echo out; exit 3",
        "upload",
    ] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }
    // Fleet-wide, alice also sees the org's membership changes; filters narrow it.
    let org = records(&a.alice, &["audit", "--action", "org"]);
    assert!(
        org.iter().any(|r| r["args"]["email"] == "dave@example.com"),
        "{org:#?}"
    );
    let failed = records(
        &a.alice,
        &["audit", "--device", "acme-bot", "--outcome", "failed"],
    );
    assert!(failed.iter().all(|r| r["outcome"] == "failed") && !failed.is_empty());

    // Bob sees only his own; carol only her refusal; eve nothing; the platform admin all,
    // including the API key made for frank.
    let mine = records(&a.bob, &["audit", "--max", "100"]);
    let about_bob =
        |r: &Value| r["user"] == "bob@example.com" || r["args"]["email"] == "bob@example.com";
    assert!(mine.len() >= 6 && mine.iter().all(about_bob), "{mine:#?}");
    let hers = records(&a.carol, &["audit"]);
    let kinds: Vec<(&str, &str)> = hers
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("exec", "refused"), ("api_key", "ok")], "{hers:#?}");
    // Eve, a stranger, sees only the key made for her.
    let evs = records(&a.eve, &["audit"]);
    assert!(
        evs.len() == 1 && evs[0]["args"]["email"] == "eve@example.com",
        "{evs:#?}"
    );
    let err = a.eve.fails(&["acme-bot", "audit"]);
    assert!(err.contains("not found"), "{err}");
    assert!(
        a.eve
            .ok(&["audit", "--action", "exec"])
            .contains("no audit records match")
    );
    let everything = records(&a.root, &["audit", "--action", "api_key", "--max", "100"]);
    assert!(
        everything
            .iter()
            .any(|r| r["args"]["email"] == "frank@example.com"),
        "{everything:#?}"
    );

    // One-off pulls in SIEM formats, oldest first (platform admins only).
    let ocsf = a
        .root
        .ok(&["audit", "export", "--format", "ocsf", "--since", "1h"]);
    let lines: Vec<Value> = ocsf
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let db = rusqlite::Connection::open(a.server.data_dir.join("m87.db")).unwrap();
    let events: i64 = db
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(
        lines.len() as i64 >= events - 2 && lines.len() as i64 <= events,
        "{} of {events}",
        lines.len()
    );
    assert!(
        lines
            .iter()
            .all(|l| l["type_uid"].as_u64().is_some() && l["metadata"]["uid"].is_string())
    );
    let cef = a.root.ok(&["audit", "export", "--format", "cef"]);
    assert!(cef.lines().all(|l| l.starts_with("CEF:0|m87|")), "{cef}");
    let err = a.alice.fails(&["audit", "export"]);
    assert!(err.contains("not found"), "{err}");
    let err = a.root.fails(&["audit", "export", "--format", "xml"]);
    assert!(err.contains("unknown format"), "{err}");

    // Bad filters are refused with a clear error.
    for (args, says) in [
        (vec!["audit", "--since", "yesterday"], "not a time"),
        (vec!["audit", "--action", "telnet"], "unknown action"),
        (vec!["audit", "--max", "5000"], "--max"),
    ] {
        let err = a.alice.fails(&args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    drop(a.runtime);
}

#[test]
fn a_session_cut_by_a_revocation_has_its_reason_and_true_byte_counts() {
    let a = acme();
    // Bob streams 200 kB, then waits; alice takes him out of the organization.
    let exec = Proc::spawn(a.bob.command(&[
        "acme-bot",
        "exec",
        "--",
        "sh",
        "-c",
        "head -c 200000 /dev/zero; echo; echo streamed; sleep 60",
    ]));
    exec.out.wait_for("streamed", Duration::from_secs(30));
    a.alice
        .ok(&["org", "members", "remove", "acme", "bob@example.com"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let cut = loop {
        let r = records(&a.alice, &["acme-bot", "audit", "--action", "exec"]);
        if r.first().is_some_and(|x| x["outcome"] != "open") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the session was not cut: {r:#?}\nserver:\n{}\nruntime:\n{}\nclient:\n{}",
            a.server.proc.out.all(),
            a.runtime.out.all(),
            exec.out.all()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let cut = &cut[0];
    assert_eq!(cut["reason"], "access_revoked", "{cut}");
    assert_eq!(cut["outcome"], "failed");
    assert!(
        cut["bytes_from_device"].as_u64().unwrap() >= 200_000,
        "{cut}"
    );
    // Bob still reads his own record.
    let own = records(&a.bob, &["audit"]);
    assert_eq!(own[0]["reason"], "access_revoked");
    drop(a.runtime);
}

#[test]
fn follow_prints_new_records_and_sessions_as_they_end() {
    let a = acme();
    let follow = Proc::spawn(a.alice.command(&["audit", "--follow", "--action", "exec"]));
    std::thread::sleep(Duration::from_secs(2));
    a.bob
        .ok(&["acme-bot", "exec", "--", "echo", "followed-command"]);
    let line = follow.out.wait_for("ok (exit 0)", Duration::from_secs(20));
    assert!(line.contains("echo followed-command"), "{line}");
    drop(a.runtime);
}

#[test]
fn verify_passes_untouched_and_names_an_edited_row() {
    let mut a = acme();
    a.bob.ok(&["acme-bot", "exec", "--", "true"]);
    let data = a.server.data_dir.clone();
    // Wait until the trail holds the closing, then stop the server.
    records_until(&a.alice, &["acme-bot", "audit", "--action", "exec"], |r| {
        r.first().is_some_and(|x| x["outcome"] == "ok")
    });
    a.server.stop();
    let verify = || {
        Command::new(bin("m87-server"))
            .args(["audit", "verify", "--data-dir"])
            .arg(&data)
            .env_remove("M87_MONGODB_URI")
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("audit trail intact"));
    let conn = rusqlite::Connection::open(data.join("m87.db")).unwrap();
    let position: i64 = conn
        .query_row(
            "SELECT position FROM audit WHERE action = 'exec' ORDER BY position LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE audit SET entry = replace(entry, '\"true\"', '\"ls\"') WHERE position = ?1",
        [position],
    )
    .unwrap();
    drop(conn);
    let bad = verify();
    assert_eq!(bad.status.code(), Some(1));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains(&format!("entry {position} was changed")),
        "{said}"
    );
}

#[test]
fn sign_ins_and_refused_authentication_are_on_the_record_a_flood_as_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &tmp.path().join("data"),
        "127.0.0.1:0",
        &[("M87_AUTH_REFUSAL_WINDOW_SECS", "2")],
    );
    let root = M87::new(
        &server.url,
        &tmp.path().join("root"),
        Some(&server.admin_key()),
    );
    let created: Value = serde_json::from_str(&root.ok(&[
        "api-keys",
        "create",
        "--email",
        "bob@example.com",
        "-o",
        "json",
    ]))
    .unwrap();
    let key = created["key"].as_str().unwrap();
    let bob = M87::new(&server.url, &tmp.path().join("b"), None);
    bob.ok(&["login", "--api-key", key]);
    // A flood of bad keys from one address.
    let mallory = M87::new(
        &server.url,
        &tmp.path().join("m"),
        Some("m87u_not-a-real-key"),
    );
    for _ in 0..40 {
        mallory.fails(&["devices", "list"]);
    }
    // Counted per address and window (2 s here, a minute by default): a handful of records
    // for the 40 refusals, together counting every one.
    let total = |r: &[Value]| {
        r.iter()
            .map(|x| x["args"]["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    let refused = records_until(&root, &["audit", "--action", "auth"], |r| total(r) >= 40);
    assert_eq!(total(&refused), 40, "{refused:#?}");
    assert!(
        refused.len() <= 5,
        "a flood is a record per window: {refused:#?}"
    );
    for r in &refused {
        assert_eq!(r["outcome"], "refused");
        assert_eq!(r["source_ip"], "127.0.0.1");
        assert!(
            r["args"]["reasons"][0]
                .as_str()
                .unwrap()
                .contains("invalid"),
            "{r}"
        );
    }
    let signed = records(&root, &["audit", "--action", "sign_in"]);
    assert_eq!(signed.len(), 1, "{signed:#?}");
    assert_eq!(signed[0]["user"], "bob@example.com");
    assert_eq!(signed[0]["args"]["method"], "api_key");
    assert_eq!(signed[0]["key_id"], created["id"]);
    // Bob sees his own sign-in; the refused flood is the platform admins' to read.
    let own = records(&bob, &["audit", "--action", "sign_in,auth"]);
    assert_eq!(own.len(), 1, "{own:#?}");
}
