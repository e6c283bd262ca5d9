//! `install.sh` against the real server, run with `sh` as a user would run the one-liner:
//! `curl --pinnedpubkey … -k https://SERVER/install.sh | sh -s -- …` into a temporary root. The
//! server serves this test's own `m87` as the release; the installed binary's SHA-256 matches.
//! An unsupported architecture, a missing systemd and a binary that does not match the signed
//! manifest each stop the script with a clear message before anything is written. With
//! systemd, the script starts `m87 runtime enable --now [--system] --email …` with the server's
//! URL and fingerprint (checked with a stand-in binary). The binary route honours `Range`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod release_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use release_support::{m87_bytes, pubkey_pin, release_dir, server_with, sha256_file, target};

/// `curl -fsS --pinnedpubkey PIN -k URL/install.sh | sh -s -- ARGS`, with `path_prefix` put
/// in front of PATH (a fake `uname`) and `env` set for the script.
fn one_liner(
    url: &str,
    pin: &str,
    args: &[&str],
    path_prefix: Option<&Path>,
    env: &[(&str, &str)],
) -> Output {
    let args: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let line = format!(
        "set -o pipefail 2>/dev/null; curl -fsS --pinnedpubkey '{pin}' -k {url}/install.sh | sh -s -- {}",
        args.join(" ")
    );
    let path = match path_prefix {
        Some(p) => format!("{}:{}", p.display(), std::env::var("PATH").unwrap()),
        None => std::env::var("PATH").unwrap(),
    };
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &line]).env("PATH", path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn require_curl() {
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is not installed; install.sh tests need it (apt-get install curl)"
    );
}

#[test]
fn the_one_liner_installs_the_served_binary_into_a_root() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let releases = release_dir(dir.path(), "0.1.0", &m87_bytes(), None);
    let server = server_with(dir.path(), &releases);
    let root = dir.path().join("root");
    let out = one_liner(
        &server.url,
        &pubkey_pin(&server),
        &["--root", root.to_str().unwrap(), "--no-service"],
        None,
        &[],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "install.sh failed: {err}");
    let installed = root.join("usr/local/bin/m87");
    assert_eq!(
        sha256_file(&installed),
        sha256_file(&releases.join(format!("m87-{}", target())))
    );
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(err.contains("installed"), "{err}");
    assert!(err.contains("--no-service"), "{err}");
    // The installed binary runs.
    let help = Command::new(&installed).arg("--help").output().unwrap();
    assert!(help.status.success());
}

#[test]
fn the_script_names_this_server_and_its_pins() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let releases = release_dir(dir.path(), "0.1.0", b"binary", None);
    let server = server_with(dir.path(), &releases);
    let pin = pubkey_pin(&server);
    let out = Command::new("curl")
        .args(["-fsS", "--pinnedpubkey", &pin, "-k"])
        .arg(format!("{}/install.sh", server.url))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.starts_with("#!/bin/sh"));
    assert!(
        script.contains(&format!("URL='{}'", server.url)),
        "{script}"
    );
    assert!(script.contains(&format!("PIN='{pin}'")));
    assert!(script.contains(&format!("FINGERPRINT='{}'", server.fingerprint)));
    // A wrong pin is refused by curl: the script is never run from an impostor.
    let wrong = Command::new("curl")
        .args([
            "-fsS",
            "-k",
            "--pinnedpubkey",
            "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ])
        .arg(format!("{}/install.sh", server.url))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}

#[test]
fn an_unsupported_architecture_is_refused_before_anything_changes() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let releases = release_dir(dir.path(), "0.1.0", &m87_bytes(), None);
    let server = server_with(dir.path(), &releases);
    let fake = dir.path().join("fake-bin");
    std::fs::create_dir_all(&fake).unwrap();
    let uname = fake.join("uname");
    std::fs::write(
        &uname,
        "#!/bin/sh\ncase \"$1\" in -m) echo riscv64 ;; *) echo Linux ;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&uname, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    let out = one_liner(
        &server.url,
        &pubkey_pin(&server),
        &["--root", root.to_str().unwrap(), "--no-service"],
        Some(&fake),
        &[],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("architecture (riscv64) is not supported")
            && err.contains("x86_64 and aarch64"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(!root.exists(), "install.sh wrote into the root");
}

#[test]
fn without_systemd_the_script_says_so_before_anything_changes() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let releases = release_dir(dir.path(), "0.1.0", &m87_bytes(), None);
    let server = server_with(dir.path(), &releases);
    let root = dir.path().join("root");
    let no_systemd = dir.path().join("no-systemd-here");
    let out = one_liner(
        &server.url,
        &pubkey_pin(&server),
        &[
            "--root",
            root.to_str().unwrap(),
            "--email",
            "me@example.com",
        ],
        None,
        &[("M87_SYSTEMD_DIR", no_systemd.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("systemd is not running here"), "{err}");
    assert!(err.contains("--no-service"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(!root.exists(), "install.sh wrote into the root");
}

#[test]
fn with_systemd_the_script_enables_the_runtime_service() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    // A stand-in m87 that writes down how it was started (`m87 runtime enable` is the service
    // part of m87; here only what install.sh asks of it is checked).
    let record = dir.path().join("started-with");
    let stand_in = format!(
        "#!/bin/sh\n{{ echo \"$*\"; echo \"url=$M87_API_URL\"; echo \"pin=$M87_API_FINGERPRINT\"; }} > '{}'\n",
        record.display()
    );
    let releases = release_dir(dir.path(), "0.1.0", stand_in.as_bytes(), None);
    let server = server_with(dir.path(), &releases);
    let systemd = dir.path().join("run-systemd-system");
    std::fs::create_dir_all(&systemd).unwrap();
    let root = dir.path().join("root");
    let out = one_liner(
        &server.url,
        &pubkey_pin(&server),
        &[
            "--root",
            root.to_str().unwrap(),
            "--email",
            "me@example.com",
            "--name",
            "robot-1",
        ],
        None,
        &[("M87_SYSTEMD_DIR", systemd.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let started = std::fs::read_to_string(&record).unwrap();
    let system = if rustix::process::geteuid().is_root() {
        " --system"
    } else {
        ""
    };
    assert!(
        started.starts_with(&format!(
            "runtime enable --now{system} --email me@example.com --name robot-1\n"
        )),
        "{started}"
    );
    assert!(
        started.contains(&format!("url={}\n", server.url)),
        "{started}"
    );
    assert!(
        started.contains(&format!("pin={}\n", server.fingerprint)),
        "{started}"
    );
}

#[test]
fn a_binary_that_does_not_match_the_manifest_is_not_installed() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let other = "0".repeat(64);
    let releases = release_dir(dir.path(), "0.1.0", &m87_bytes(), Some(&other));
    let server = server_with(dir.path(), &releases);
    let root = dir.path().join("root");
    let out = one_liner(
        &server.url,
        &pubkey_pin(&server),
        &["--root", root.to_str().unwrap(), "--no-service"],
        None,
        &[],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("signed manifest says") && err.contains("refusing"),
        "{err}"
    );
    assert!(!root.exists(), "install.sh wrote into the root");
}

#[test]
fn the_binary_route_resumes_with_range_and_the_manifest_is_signed() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let releases = release_dir(dir.path(), "0.1.0", &body, None);
    let server = server_with(dir.path(), &releases);
    let pin = pubkey_pin(&server);
    let url = format!("{}/releases/{}/m87", server.url, target());
    let out = Command::new("curl")
        .args([
            "-fsS",
            "-k",
            "--pinnedpubkey",
            &pin,
            "-D",
            "-",
            "-r",
            "100000-",
        ])
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = out.stdout;
    let split = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&text[..split]).to_lowercase();
    assert!(headers.contains(" 206"), "{headers}");
    assert!(
        headers.contains("content-range: bytes 100000-199999/200000"),
        "{headers}"
    );
    assert_eq!(&text[split + 4..], &body[100_000..]);
    // Past the end: 416.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--pinnedpubkey",
            &pin,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-r", "200000-"])
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "416");
    // The manifest carries the session key's signature.
    let out = Command::new("curl")
        .args(["-fsS", "-k", "--pinnedpubkey", &pin])
        .arg(format!("{}/v1/releases", server.url))
        .output()
        .unwrap();
    let signed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(signed["manifest"]["version"], "0.1.0");
    assert_eq!(signed["manifest"]["artifacts"][0]["size"], 200_000);
    assert!(signed["signature"].as_str().unwrap().len() > 80);
    // An unknown target is a 404 naming what is served.
    let out = Command::new("curl")
        .args(["-sS", "-k", "--pinnedpubkey", &pin])
        .arg(format!(
            "{}/releases/mips-unknown-linux-musl/m87",
            server.url
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no m87 binary for mips-unknown-linux-musl"),
        "{text}"
    );
}
