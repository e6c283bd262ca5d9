//! `m87 <device> serial` through the real binaries. A socat pty pair stands in for the port on
//! the device: the runtime opens one end (`devtty`), the test plays the thing on the wire at
//! the other (`peer`). `m87 … serial devtty --link local` makes a local pseudo-terminal; every
//! byte value written to `local` arrives at `peer` unchanged and back, at two baud rates, and
//! the link survives a program opening and closing it. Bad ports, bad settings and a viewer are
//! refused; sessions are on the audit trail with their settings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{Proc, acme, audit_until};
use serde_json::Value;

/// A socat pty pair linked at `dir/devtty` (the device's "port") and `dir/peer`.
fn port_pair(dir: &Path) -> (Proc, PathBuf, PathBuf) {
    assert!(
        Command::new("socat").arg("-V").output().is_ok(),
        "socat is missing: install the Debian package socat (scripts/setup-test-env does)"
    );
    std::fs::create_dir_all(dir).unwrap();
    let (devtty, peer) = (dir.join("devtty"), dir.join("peer"));
    let mut cmd = Command::new("socat");
    cmd.arg("-d")
        .arg("-d")
        .arg(format!("pty,raw,echo=0,link={}", devtty.display()));
    cmd.arg(format!("pty,raw,echo=0,link={}", peer.display()));
    let socat = Proc::spawn(cmd);
    socat
        .out
        .wait_for("starting data transfer loop", Duration::from_secs(10));
    (socat, devtty, peer)
}

/// Opens a terminal device for reading and writing.
fn open_tty(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// Reads exactly `n` bytes from `tty` within 20 s.
fn read_exactly(tty: &std::fs::File, n: usize) -> Vec<u8> {
    let mut tty = tty.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; n];
        let result = tty.read_exact(&mut buf).map(|()| buf);
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the bytes did not arrive within 20 s")
        .unwrap()
}

/// Every byte value, twice, in an order that is not sorted.
fn all_bytes() -> Vec<u8> {
    (0..512u32).map(|i| (i * 7 % 256) as u8).collect()
}

#[test]
fn bytes_pass_unchanged_both_ways_through_a_linked_pty_at_two_baud_rates() {
    let a = acme();
    for baud in ["9600", "115200"] {
        let dir = a.tmp.path().join(format!("baud-{baud}"));
        let (_socat, devtty, peer) = port_pair(&dir);
        let local = dir.join("local");
        let mut serial = Proc::spawn(a.bob.command(&[
            "acme-bot",
            "serial",
            devtty.to_str().unwrap(),
            "--link",
            local.to_str().unwrap(),
            "--baud",
            baud,
        ]));
        let line = serial
            .out
            .wait_for("Ctrl-C to stop", Duration::from_secs(30));
        assert!(
            line.starts_with(&format!(
                "serial {} on acme-bot at {baud} baud: /dev/pts/",
                devtty.display()
            )),
            "{line}"
        );
        assert!(
            line.contains(&format!("(linked at {})", local.display())),
            "{line}"
        );
        let pts = std::fs::read_link(&local).unwrap();
        assert!(line.contains(&pts.display().to_string()), "{line}");

        let peer = open_tty(&peer);
        // Twice: a terminal program may open and close the link as often as it likes.
        for round in 0..2 {
            let mut near = open_tty(&local);
            near.write_all(&all_bytes()).unwrap();
            assert_eq!(
                read_exactly(&peer, 512),
                all_bytes(),
                "to the port, round {round}"
            );
            (&peer).write_all(b"\x00ok\r\n\x03\x1d\xff").unwrap();
            assert_eq!(
                read_exactly(&near, 8),
                b"\x00ok\r\n\x03\x1d\xff",
                "from the port, round {round}"
            );
            drop(near);
        }

        // Ctrl-C ends it: exit 0, the link is gone.
        Command::new("kill")
            .args(["-INT", &serial.child.id().to_string()])
            .status()
            .unwrap();
        assert_eq!(
            serial.wait_exit(Duration::from_secs(20)),
            0,
            "{}",
            serial.out.all()
        );
        assert!(
            std::fs::symlink_metadata(&local).is_err(),
            "the link is removed"
        );
    }

    // The port goes away on the device: m87 says so, exits 1 and removes its link.
    let dir = a.tmp.path().join("gone");
    let (mut socat, devtty, _peer) = port_pair(&dir);
    let local = dir.join("local");
    let mut serial = Proc::spawn(a.bob.command(&[
        "acme-bot",
        "serial",
        devtty.to_str().unwrap(),
        "--link",
        local.to_str().unwrap(),
    ]));
    let line = serial
        .out
        .wait_for("Ctrl-C to stop", Duration::from_secs(30));
    assert!(line.contains("at 115200 baud"), "the default rate: {line}");
    socat.kill();
    assert_eq!(
        serial.wait_exit(Duration::from_secs(20)),
        1,
        "{}",
        serial.out.all()
    );
    assert!(
        serial.out.contains(&format!(
            "error: the device closed serial port {}",
            devtty.display()
        )),
        "{}",
        serial.out.all()
    );
    assert!(
        std::fs::symlink_metadata(&local).is_err(),
        "the link is removed"
    );

    // The sessions are on the record with their settings.
    let records = audit_until(&a.alice, "serial", |r| {
        r.iter().filter(|x| x["outcome"] != "open").count() >= 3
    });
    for baud in [9600, 115200] {
        let r = records
            .iter()
            .find(|r| r["args"]["baud"] == baud)
            .unwrap_or_else(|| panic!("no record at {baud}: {records:#?}"));
        assert_eq!(r["user"], "bob@example.com");
        assert!(
            r["args"]["path"].as_str().unwrap().ends_with("/devtty"),
            "{r}"
        );
        assert_eq!(r["args"]["data_bits"], 8);
        assert_eq!(r["args"]["parity"], "none");
        assert_eq!(r["args"]["stop_bits"], 1);
    }
}

#[test]
fn bad_ports_bad_settings_and_viewers_are_refused() {
    let a = acme();
    let dir = a.tmp.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("local");

    let err = a.bob.fails(&[
        "acme-bot",
        "serial",
        "/dev/m87-no-such-port",
        "--link",
        local.to_str().unwrap(),
    ]);
    assert!(
        err.contains("/dev/m87-no-such-port") && err.contains("No such file"),
        "{err}"
    );
    assert!(
        std::fs::symlink_metadata(&local).is_err(),
        "no link was left behind"
    );

    // Settings no port can have are refused here, before any grant.
    for (flag, value, says) in [
        ("--baud", "0", "baud rate 0"),
        ("--baud", "5000000", "baud rate 5000000"),
        ("--data-bits", "9", "data bits"),
        ("--stop-bits", "3", "stop bits"),
    ] {
        let err = a
            .bob
            .fails(&["acme-bot", "serial", "/dev/ttyS0", flag, value]);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    // A file in the way of the link is never overwritten.
    let file = dir.join("file");
    std::fs::write(&file, "keep").unwrap();
    let err = a.bob.fails(&[
        "acme-bot",
        "serial",
        "/dev/ttyS0",
        "--link",
        file.to_str().unwrap(),
    ]);
    assert!(err.contains("not a symlink"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");

    let err = a.carol.fails(&["acme-bot", "serial", "/dev/ttyS0"]);
    assert!(err.contains("viewers"), "{err}");

    let records = audit_until(&a.alice, "serial", |r| {
        r.iter().any(|x| x["user"] == "carol@example.com")
            && r.iter()
                .any(|x| x["user"] == "bob@example.com" && x["outcome"] != "open")
    });
    let refused = records
        .iter()
        .find(|r| r["user"] == "carol@example.com")
        .unwrap();
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert_eq!(refused["refused_by"], "grant", "{refused}");
    // Only the session that reached the device was granted: the bad settings never were.
    let bobs: Vec<&Value> = records
        .iter()
        .filter(|r| r["user"] == "bob@example.com")
        .collect();
    assert_eq!(bobs.len(), 1, "{bobs:#?}");
    assert_eq!(bobs[0]["args"]["path"], "/dev/m87-no-such-port");
}
