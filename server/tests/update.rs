//! `m87 update` and `m87 runtime update` against the real server serving a "newer" release (the
//! test's own `m87` with bytes appended, as version 99.0.0): a copy of m87 in a temporary
//! directory is replaced and matches the served SHA-256; `--check` changes nothing; a binary
//! that does not match the signed manifest is refused and the old one stays; a leftover partial
//! download is resumed (a corrupted leftover proves it: the result is refused, and the next run
//! succeeds); a manifest signed by another key than the remembered one is refused; a device
//! checks the manifest with its control plane's session key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod release_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{M87, Server, enrolled_device};
use release_support::{m87_bytes, newer_m87_bytes, release_dir, server_with, sha256_file};

struct Setup {
    _dir: tempfile::TempDir,
    server: Server,
    cli: M87,
    binary: PathBuf,
    served: PathBuf,
}

/// A server serving `newer` as 99.0.0 (checksum `sha256`, else the file's own), a CLI with its
/// own config directory, and a copy of m87 to update.
fn setup(sha256: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let releases = release_dir(dir.path(), "99.0.0", &newer_m87_bytes(), sha256);
    let server = server_with(dir.path(), &releases);
    let cli = M87::new(&server.url, &dir.path().join("cli"), None);
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let binary = bin_dir.join("m87");
    std::fs::write(&binary, m87_bytes()).unwrap();
    let served = releases.join(format!("m87-{}", release_support::target()));
    Setup {
        _dir: dir,
        server,
        cli,
        binary,
        served,
    }
}

fn update(m87: &M87, binary: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["update", "--path", binary.to_str().unwrap()];
    args.extend_from_slice(extra);
    m87.run(&args)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn leftovers(binary: &Path) -> Vec<String> {
    std::fs::read_dir(binary.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "m87")
        .collect()
}

/// The staged file name the CLI uses for the served release.
fn staged(s: &Setup) -> PathBuf {
    let sha = sha256_file(&s.served);
    s.binary
        .with_file_name(format!(".m87.update-{}.partial", &sha[..16]))
}

#[test]
fn update_replaces_the_binary_with_the_served_release() {
    let s = setup(None);
    let out = update(&s.cli, &s.binary, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("to 99.0.0"), "{stdout}");
    assert_eq!(sha256_file(&s.binary), sha256_file(&s.served));
    assert!(
        leftovers(&s.binary).is_empty(),
        "{:?}",
        leftovers(&s.binary)
    );
    // The server's release key was remembered for next time.
    let keys = std::fs::read_to_string(s.cli.config_dir.join("release-keys.json")).unwrap();
    assert!(keys.contains(&s.server.url), "{keys}");
    // Up to date now? The updated file is still version 0.1.0 inside, so a second run with
    // -o json still reports 99.0.0 as newer; --check says so without changing anything.
    let out = update(&s.cli, &s.binary, &["--check", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["available"], "99.0.0");
    assert_eq!(report["updated"], false);
}

#[test]
fn check_only_reports() {
    let s = setup(None);
    let before = sha256_file(&s.binary);
    let out = update(&s.cli, &s.binary, &["--check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("m87 99.0.0 is available (this is 0.1.0)"),
        "{stdout}"
    );
    assert_eq!(sha256_file(&s.binary), before);
    assert!(leftovers(&s.binary).is_empty());
}

#[test]
fn a_binary_that_does_not_match_the_signed_manifest_is_refused() {
    let s = setup(Some(&"ab".repeat(32)));
    let before = sha256_file(&s.binary);
    let out = update(&s.cli, &s.binary, &[]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("but the signed manifest says") && stderr.contains("is unchanged"),
        "{stderr}"
    );
    assert_eq!(sha256_file(&s.binary), before);
    assert!(
        leftovers(&s.binary).is_empty(),
        "{:?}",
        leftovers(&s.binary)
    );
}

#[test]
fn a_leftover_partial_download_is_resumed() {
    let s = setup(None);
    let served = std::fs::read(&s.served).unwrap();
    let half = served.len() / 2;
    // A corrupted first half: resuming appends only the rest, so the result cannot verify.
    let mut corrupted = served[..half].to_vec();
    corrupted[100] ^= 0xff;
    std::fs::write(staged(&s), &corrupted).unwrap();
    let before = sha256_file(&s.binary);
    let out = update(&s.cli, &s.binary, &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("refusing it"), "{stderr}");
    assert_eq!(sha256_file(&s.binary), before);
    // A good first half: resumed, verified, installed.
    std::fs::write(staged(&s), &served[..half]).unwrap();
    let out = update(&s.cli, &s.binary, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(sha256_file(&s.binary), sha256_file(&s.served));
    assert!(leftovers(&s.binary).is_empty());
}

#[test]
fn a_manifest_signed_by_another_key_is_refused() {
    let s = setup(None);
    std::fs::create_dir_all(&s.cli.config_dir).unwrap();
    let other = "A".repeat(43);
    std::fs::write(
        s.cli.config_dir.join("release-keys.json"),
        serde_json::json!({ s.server.url.clone(): other }).to_string(),
    )
    .unwrap();
    let before = sha256_file(&s.binary);
    let out = update(&s.cli, &s.binary, &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("signs its releases with another key"),
        "{stderr}"
    );
    assert_eq!(sha256_file(&s.binary), before);
    // M87_RELEASE_KEY set to another key: the signature does not verify.
    let out = s
        .cli
        .command(&["update", "--path", s.binary.to_str().unwrap()])
        .env("M87_RELEASE_KEY", &other)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("signature does not verify"), "{stderr}");
    assert_eq!(sha256_file(&s.binary), before);
}

#[test]
fn runtime_update_checks_with_the_devices_key_and_replaces_the_binary() {
    let s = setup(None);
    let admin = M87::new(
        &s.server.url,
        &s._dir.path().join("admin"),
        Some(&s.server.admin_key()),
    );
    let (mut runtime, device) =
        enrolled_device(&s.server, &admin, &s._dir.path().join("dev"), "dev-1");
    let out = device.run(&["runtime", "update", "--path", s.binary.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("to 99.0.0"), "{stdout}");
    assert!(stderr.contains("m87-runtime.service"), "{stderr}");
    assert_eq!(sha256_file(&s.binary), sha256_file(&s.served));
    // No TOFU file: the device used its control plane's session key.
    assert!(!device.config_dir.join("release-keys.json").exists());
    runtime.kill();
}
