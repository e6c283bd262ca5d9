//! `m87 cp` and `m87 sync` with the real binaries: a 100 MB file and a tree of 1,000 files both
//! ways with matching digests, modes and mtimes kept, sync sends only what changed, `--watch`
//! picks up a change, and an interrupted copy leaves no partial file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{M87, Proc, Server, enrolled_device};
use sha2::{Digest, Sha256};

fn digest(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A tree of `n` small files in nested directories, one of them executable.
fn make_tree(root: &Path, n: usize) {
    for i in 0..n {
        let dir = root
            .join(format!("d{}", i % 10))
            .join(format!("e{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(i % 50 + 1),
        )
        .unwrap();
    }
    let exe = root.join("d0/e0/f0.txt");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o751)).unwrap();
}

fn tree_digest(root: &Path) -> Vec<(String, String, u32)> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
                out.push((
                    p.strip_prefix(root).unwrap().display().to_string(),
                    digest(&p),
                    mode,
                ));
            }
        }
    }
    out.sort();
    out
}

fn big_file(path: &Path, mb: usize) {
    let mut data = Vec::with_capacity(mb << 20);
    let mut x: u32 = 12345;
    while data.len() < mb << 20 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, &data).unwrap();
}

#[test]
fn copy_files_and_trees_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) =
        enrolled_device(&server, &admin, &tmp.path().join("dev"), "files-dev");
    let local = tmp.path().join("local");
    let remote = tmp.path().join("remote");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&remote).unwrap();

    // 100 MB to the device and back, same digest, mode and mtime kept.
    let big = local.join("big.bin");
    big_file(&big, 100);
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mtime = filetime_of(&big);
    let out = admin.ok(&[
        "cp",
        big.to_str().unwrap(),
        &format!("files-dev:{}/big.bin", remote.display()),
    ]);
    assert!(out.contains("copied 1 file"), "{out}");
    assert_eq!(digest(&remote.join("big.bin")), digest(&big));
    assert_eq!(
        std::fs::metadata(remote.join("big.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert_eq!(filetime_of(&remote.join("big.bin")), mtime);
    let back = tmp.path().join("back.bin");
    admin.ok(&[
        "cp",
        &format!("files-dev:{}/big.bin", remote.display()),
        back.to_str().unwrap(),
    ]);
    assert_eq!(digest(&back), digest(&big));

    // A tree of 1,000 files, both ways.
    let tree = local.join("tree");
    make_tree(&tree, 1000);
    admin.ok(&[
        "cp",
        "-r",
        tree.to_str().unwrap(),
        &format!("files-dev:{}/", remote.display()),
    ]);
    assert_eq!(tree_digest(&remote.join("tree")), tree_digest(&tree));
    let pulled = tmp.path().join("pulled");
    admin.ok(&[
        "cp",
        "-r",
        &format!("files-dev:{}/tree", remote.display()),
        pulled.to_str().unwrap(),
    ]);
    assert_eq!(tree_digest(&pulled), tree_digest(&tree));
    assert_eq!(tree_digest(&pulled).len(), 1000);

    // Clear errors.
    let err = admin.fails(&[
        "cp",
        tree.to_str().unwrap(),
        &format!("files-dev:{}/x", remote.display()),
    ]);
    assert!(err.contains("-r") || err.contains("directory"), "{err}");
    let err = admin.fails(&[
        "cp",
        "/no/such/file",
        &format!("files-dev:{}/x", remote.display()),
    ]);
    assert!(err.contains("/no/such/file"), "{err}");
    let err = admin.fails(&["cp", "a", "b"]);
    assert!(err.contains("<device>:/path"), "{err}");
}

fn filetime_of(p: &Path) -> (i64, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec() as u32)
}

#[test]
fn interrupted_copy_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "cut-dev");
    let remote = tmp.path().join("remote");
    std::fs::create_dir_all(&remote).unwrap();
    let big = tmp.path().join("huge.bin");
    big_file(&big, 300);
    let mut cp = Proc::spawn(admin.command(&[
        "cp",
        big.to_str().unwrap(),
        &format!("cut-dev:{}/huge.bin", remote.display()),
    ]));
    // Kill the copy as soon as bytes are arriving.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let partial = std::fs::read_dir(&remote)
            .unwrap()
            .flatten()
            .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false));
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "the copy never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    cp.kill();
    // The device notices the broken stream and removes its temporary file.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names: Vec<String> = std::fs::read_dir(&remote)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n == "huge.bin"),
            "a partial file under the final name: {names:?}"
        );
        if names.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "temporary files left behind: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sync_sends_only_changes_and_watch_follows_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) = enrolled_device(&server, &admin, &tmp.path().join("dev"), "sync-dev");
    let local = tmp.path().join("site");
    let remote = tmp.path().join("remote-site");
    make_tree(&local, 1000);
    let target = format!("sync-dev:{}", remote.display());

    let first: serde_json::Value =
        serde_json::from_str(&admin.ok(&["sync", "-o", "json", local.to_str().unwrap(), &target]))
            .unwrap();
    assert_eq!(
        first["created"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p.as_str().unwrap().ends_with(".txt"))
            .count(),
        1000
    );
    assert_eq!(tree_digest(&remote), tree_digest(&local));

    // Nothing changed: nothing sent.
    let again: serde_json::Value =
        serde_json::from_str(&admin.ok(&["sync", "-o", "json", local.to_str().unwrap(), &target]))
            .unwrap();
    assert_eq!(again["bytes_sent"], 0, "{again}");

    // One file changed: only it is sent.
    let changed = local.join("d3/e3/f3.txt");
    std::fs::write(&changed, "a new version of file 3\n").unwrap();
    let third: serde_json::Value =
        serde_json::from_str(&admin.ok(&["sync", "-o", "json", local.to_str().unwrap(), &target]))
            .unwrap();
    assert_eq!(
        third["updated"],
        serde_json::json!(["d3/e3/f3.txt"]),
        "{third}"
    );
    assert_eq!(
        third["bytes_sent"].as_u64().unwrap(),
        std::fs::metadata(&changed).unwrap().len()
    );
    assert_eq!(tree_digest(&remote), tree_digest(&local));

    // Reverse direction, dry run, delete.
    std::fs::write(remote.join("extra.txt"), "only on the device").unwrap();
    let dry = admin.ok(&["sync", "-n", "--delete", local.to_str().unwrap(), &target]);
    assert!(dry.contains("would delete  extra.txt"), "{dry}");
    assert!(remote.join("extra.txt").exists());
    admin.ok(&["sync", "--delete", local.to_str().unwrap(), &target]);
    assert!(!remote.join("extra.txt").exists());
    let pulled = tmp.path().join("pulled");
    admin.ok(&["sync", &target, pulled.to_str().unwrap()]);
    assert_eq!(tree_digest(&pulled), tree_digest(&local));

    // --watch re-syncs within seconds of a change.
    let watch = Proc::spawn(admin.command(&["sync", "--watch", local.to_str().unwrap(), &target]));
    watch.out.wait_for("watching", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(local.join("d1/new.txt"), "created while watching\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(remote.join("d1/new.txt"))
        .ok()
        .as_deref()
        != Some("created while watching\n")
    {
        assert!(
            Instant::now() < deadline,
            "--watch did not sync the change: {}",
            watch.out.all()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
