//! Shared by the install and update tests: a releases directory with a manifest, as
//! `scripts/build-dist` writes it, and a server that serves it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use crate::common::{Server, bin};

/// This machine's release target.
pub fn target() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64-unknown-linux-musl",
        _ => "x86_64-unknown-linux-musl",
    }
}

/// SHA-256 of a file, lowercase hex (coreutils' sha256sum: the debug build of sha2 is slow on
/// a 60 MB test binary).
pub fn sha256_file(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils) is needed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A releases directory in `dir` serving `binary` (bytes) as version `version` for this
/// machine's target, with the manifest's checksum `sha256` (the binary's own when `None`).
pub fn release_dir(dir: &Path, version: &str, binary: &[u8], sha256: Option<&str>) -> PathBuf {
    let releases = dir.join("releases");
    std::fs::create_dir_all(&releases).unwrap();
    let file = format!("m87-{}", target());
    std::fs::write(releases.join(&file), binary).unwrap();
    let sum = sha256
        .map(str::to_owned)
        .unwrap_or_else(|| sha256_file(&releases.join(&file)));
    let manifest = serde_json::json!({
        "version": version,
        "artifacts": [{ "target": target(), "file": file, "size": binary.len(), "sha256": sum }],
    });
    std::fs::write(
        releases.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    releases
}

/// The test's own `m87`, the binary a release serves.
pub fn m87_bytes() -> Vec<u8> {
    std::fs::read(bin("m87")).unwrap()
}

/// A "newer" build: the test's `m87` with bytes appended (still the same program, another
/// checksum).
pub fn newer_m87_bytes() -> Vec<u8> {
    let mut bytes = m87_bytes();
    bytes.extend_from_slice(b"\nm87 test release 99.0.0\n");
    bytes
}

/// A server with its data in `dir/data`, serving `releases`.
pub fn server_with(dir: &Path, releases: &Path) -> Server {
    Server::start_with_env(
        &dir.join("data"),
        "127.0.0.1:0",
        &[("M87_RELEASES_DIR", releases.to_str().unwrap())],
    )
}

/// The curl pin of a self-signed server, as it wrote it to `<data-dir>/tls/pubkey-pin`.
pub fn pubkey_pin(server: &Server) -> String {
    std::fs::read_to_string(server.data_dir.join("tls/pubkey-pin"))
        .unwrap()
        .trim()
        .to_owned()
}
