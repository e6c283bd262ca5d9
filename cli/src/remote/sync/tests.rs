//! `m87 sync` against the real agent service in-process (the "device" is another temp dir).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::remote::cp::tests::{
    make_tree, mode_and_mtime, noise, set_mode, set_mtime, sha256_file, snapshot, tempdir,
};
use crate::remote::testing::LocalOpener;

fn opts() -> SyncOptions {
    SyncOptions::default()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Lets the temp dirs be removed (the trees have a read-only directory).
fn unlock(roots: &[&Path]) {
    for r in roots {
        let ro = r.join("ro");
        if ro.is_dir() {
            set_mode(&ro, 0o755);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sends_only_what_changed() {
    let opener = LocalOpener::default();
    let (local, device) = (tempdir(), tempdir());
    let src = local.path().join("src");
    make_tree(&src, 300);
    let dst = device.path().join("dst"); // created by the first sync
    let d = dst.display().to_string();
    let total: u64 = (0..300).map(|i| ((i * 37) % 3000) as u64).sum::<u64>() + 13;

    let r = sync(&opener, &src, &d, true, opts()).await.unwrap();
    assert_eq!(r.created.len(), snapshot(&src).len());
    assert!(r.updated.is_empty() && r.deleted.is_empty());
    assert_eq!((r.files, r.bytes_sent, r.bytes_received), (301, total, 0));
    assert_eq!(snapshot(&dst), snapshot(&src));

    // Nothing changed: nothing sent.
    let r = sync(&opener, &src, &d, true, opts()).await.unwrap();
    assert!(r.is_empty(), "{r:?}");
    assert_eq!((r.files, r.bytes_sent), (0, 0));

    // One file changed (same size, new contents and mtime): only it is sent.
    let f = src.join("dir3/file0003.txt");
    let len = std::fs::metadata(&f).unwrap().len() as usize;
    std::fs::write(&f, noise(999, len)).unwrap();
    set_mtime(&f, 1_700_000_000, 1);
    let r = sync(&opener, &src, &d, true, opts()).await.unwrap();
    assert_eq!(r.updated, ["dir3/file0003.txt"]);
    assert!(r.created.is_empty() && r.deleted.is_empty());
    assert_eq!((r.files, r.bytes_sent), (1, len as u64));
    assert_eq!(sha256_file(&dst.join("dir3/file0003.txt")), sha256_file(&f));
    assert_eq!(snapshot(&dst), snapshot(&src));

    // Only the mtime (contents equal, found by digest) or only the mode changed: metadata
    // follows, no contents are sent, nothing is reported.
    set_mtime(&src.join("dir4/file0004.txt"), 1_700_000_123, 7);
    set_mode(&src.join("dir5/file0005.txt"), 0o600);
    let r = sync(&opener, &src, &d, true, opts()).await.unwrap();
    assert!(r.is_empty(), "{r:?}");
    assert_eq!(r.bytes_sent, 0);
    assert_eq!(snapshot(&dst), snapshot(&src));

    // New entries are created.
    std::fs::create_dir(src.join("new")).unwrap();
    std::fs::write(src.join("new/n.txt"), b"new!").unwrap();
    let r = sync(&opener, &src, &d, true, opts()).await.unwrap();
    assert_eq!(r.created, ["new", "new/n.txt"]);
    assert_eq!(r.bytes_sent, 4);
    assert_eq!(snapshot(&dst), snapshot(&src));
    unlock(&[&src, &dst]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_with_one_changed_block_sends_a_delta() {
    let opener = LocalOpener::default();
    let (local, device) = (tempdir(), tempdir());
    let d = device.path().display().to_string();
    let big = local.path().join("big.bin");
    let mut data = noise(7, 6 << 20);
    std::fs::write(&big, &data).unwrap();
    set_mode(&big, 0o600);
    let r = sync(&opener, local.path(), &d, true, opts()).await.unwrap();
    assert_eq!(r.bytes_sent, 6 << 20);
    let on_device = device.path().join("big.bin");

    // 100 bytes changed in the middle: about one 64 KiB block goes over the wire.
    for b in &mut data[(3 << 20) + 5..(3 << 20) + 105] {
        *b = b.wrapping_add(1);
    }
    std::fs::write(&big, &data).unwrap();
    set_mtime(&big, 1_700_000_000, 42);
    let r = sync(&opener, local.path(), &d, true, opts()).await.unwrap();
    assert_eq!(r.updated, ["big.bin"]);
    assert!(r.bytes_sent <= 64 * 1024, "sent {}", r.bytes_sent);
    assert!(
        r.wire_bytes_sent < 100 * 1024,
        "sent {} in all",
        r.wire_bytes_sent
    );
    assert!(std::fs::read(&on_device).unwrap() == data);
    assert_eq!(mode_and_mtime(&on_device), mode_and_mtime(&big));

    // Bytes inserted near the start shift every block; the rolling checksum still finds them.
    data.splice(1000..1000, *b"inserted");
    std::fs::write(&big, &data).unwrap();
    let r = sync(&opener, local.path(), &d, true, opts()).await.unwrap();
    assert!(r.bytes_sent <= 64 * 1024 + 8, "sent {}", r.bytes_sent);
    assert!(std::fs::read(&on_device).unwrap() == data);

    // The other way: changed on the device, pulled as a delta.
    let mut theirs = data.clone();
    theirs[(5 << 20)..(5 << 20) + 10].copy_from_slice(b"0123456789");
    std::fs::write(&on_device, &theirs).unwrap();
    set_mtime(&on_device, 1_700_000_500, 0);
    let r = sync(&opener, local.path(), &d, false, opts())
        .await
        .unwrap();
    assert_eq!(r.updated, ["big.bin"]);
    assert!(
        r.bytes_received <= 64 * 1024,
        "received {}",
        r.bytes_received
    );
    assert_eq!(r.bytes_sent, 0);
    assert!(std::fs::read(&big).unwrap() == theirs);
    assert_eq!(mode_and_mtime(&on_device), mode_and_mtime(&big));
}

/// `src` and `dst` with differences of every kind; returns (src, dst).
fn diverged(local: &Path, device: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (src, dst) = (local.join("src"), device.join("dst"));
    for (root, files) in [
        (
            &src,
            &[
                ("a.txt", "new a"),
                ("same.txt", "same"),
                ("keep.log", "log here"),
                ("build/out.o", "object"),
                ("sub/b.txt", "b"),
            ][..],
        ),
        (
            &dst,
            &[
                ("a.txt", "old a"),
                ("same.txt", "same"),
                ("extra.txt", "extra"),
                ("olddir/deep/f", "f"),
                ("build/cached.o", "cached"),
                ("z.log", "device log"),
            ][..],
        ),
    ] {
        for (path, contents) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, contents).unwrap();
            set_mtime(&p, 1_600_000_000, 0);
        }
    }
    set_mtime(&src.join("a.txt"), 1_600_000_001, 0);
    (src, dst)
}

#[tokio::test]
async fn delete_and_exclude() {
    let opener = LocalOpener::default();
    let (local, device) = (tempdir(), tempdir());
    let (src, dst) = diverged(local.path(), device.path());
    let d = dst.display().to_string();
    let excludes = vec!["*.log".to_owned(), "build/".to_owned()];
    let o = SyncOptions {
        excludes: excludes.clone(),
        ..opts()
    };

    // Without --delete: extraneous entries stay; excluded ones are not sent.
    let r = sync(&opener, &src, &d, true, o.clone()).await.unwrap();
    assert_eq!(r.created, ["sub", "sub/b.txt"]);
    assert_eq!(r.updated, ["a.txt"]);
    assert!(r.deleted.is_empty());
    assert!(dst.join("extra.txt").exists() && dst.join("olddir/deep/f").exists());
    assert!(!dst.join("keep.log").exists() && !dst.join("build/out.o").exists());

    // With --delete: extraneous entries go, excluded ones on the device stay.
    let r = sync(&opener, &src, &d, true, SyncOptions { delete: true, ..o })
        .await
        .unwrap();
    assert_eq!(
        sorted(r.deleted),
        ["extra.txt", "olddir", "olddir/deep", "olddir/deep/f"]
    );
    assert!(r.created.is_empty() && r.updated.is_empty());
    let mut names: Vec<_> = snapshot(&dst).into_iter().map(|(p, _)| p).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "a.txt",
            "build",
            "build/cached.o",
            "same.txt",
            "sub",
            "sub/b.txt",
            "z.log"
        ]
    );
    assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"new a");
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let opener = LocalOpener::default();
    let (local, device) = (tempdir(), tempdir());
    let (src, dst) = diverged(local.path(), device.path());
    let o = SyncOptions {
        delete: true,
        dry_run: true,
        excludes: vec!["*.log".into()],
        ..opts()
    };
    let (before_src, before_dst) = (snapshot(&src), snapshot(&dst));

    let r = sync(&opener, &src, &dst.display().to_string(), true, o.clone())
        .await
        .unwrap();
    assert!(r.dry_run);
    assert_eq!(sorted(r.created), ["build/out.o", "sub", "sub/b.txt"]);
    assert_eq!(r.updated, ["a.txt"]);
    assert_eq!(
        sorted(r.deleted),
        [
            "build/cached.o",
            "extra.txt",
            "olddir",
            "olddir/deep",
            "olddir/deep/f"
        ]
    );
    assert_eq!((r.bytes_sent, r.bytes_received), (0, 0));
    assert_eq!(
        (snapshot(&src), snapshot(&dst)),
        (before_src.clone(), before_dst.clone())
    );

    // The other way, too.
    let r = sync(&opener, &src, &dst.display().to_string(), false, o.clone())
        .await
        .unwrap();
    assert_eq!(r.updated, ["a.txt"]);
    assert_eq!(sorted(r.deleted), ["build/out.o", "sub", "sub/b.txt"]);
    assert_eq!((snapshot(&src), snapshot(&dst)), (before_src, before_dst));

    // A device directory that does not exist is not created.
    let missing = device.path().join("missing");
    let r = sync(&opener, &src, &missing.display().to_string(), true, o)
        .await
        .unwrap();
    assert_eq!(r.created.len(), 6);
    assert!(!missing.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_from_the_device() {
    let opener = LocalOpener::default();
    let (local, device) = (tempdir(), tempdir());
    let remote = device.path().join("app");
    make_tree(&remote, 100);
    let dst = local.path().join("copy");
    let d = remote.display().to_string();

    let r = sync(&opener, &dst, &d, false, opts()).await.unwrap();
    assert_eq!(r.created.len(), snapshot(&remote).len());
    assert_eq!(r.bytes_sent, 0);
    assert_eq!(snapshot(&dst), snapshot(&remote));

    std::fs::write(remote.join("dir1/file0001.txt"), b"changed on the device").unwrap();
    std::fs::remove_file(remote.join("dir2/file0002.txt")).unwrap();
    std::fs::write(remote.join("dir2/added.txt"), b"added").unwrap();
    let r = sync(
        &opener,
        &dst,
        &d,
        false,
        SyncOptions {
            delete: true,
            ..opts()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.updated, ["dir1/file0001.txt"]);
    assert_eq!(r.created, ["dir2/added.txt"]);
    assert_eq!(r.deleted, ["dir2/file0002.txt"]);
    assert_eq!(r.bytes_received, 21 + 5);
    assert_eq!(snapshot(&dst), snapshot(&remote));
    unlock(&[&remote, &dst]);
}

#[tokio::test]
async fn kinds_change_and_bad_roots_are_clear_errors() {
    let opener = LocalOpener::default();
    let (local, device) = (tempdir(), tempdir());
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("was_file")).unwrap();
    std::fs::write(src.join("was_file/x"), b"x").unwrap();
    std::fs::write(src.join("was_dir"), b"now a file").unwrap();
    std::os::unix::fs::symlink("was_dir", src.join("link")).unwrap();
    let dst = device.path().join("dst");
    std::fs::create_dir_all(dst.join("was_dir/inner")).unwrap();
    std::fs::write(dst.join("was_dir/inner/y"), b"y").unwrap();
    std::fs::write(dst.join("was_file"), b"a file").unwrap();
    std::fs::write(dst.join("link"), b"not a link yet").unwrap();
    let d = dst.display().to_string();
    let r = sync(&opener, &src, &d, true, opts()).await.unwrap();
    assert_eq!(sorted(r.updated), ["link", "was_dir", "was_file"]);
    assert_eq!(r.created, ["was_file/x"]);
    assert_eq!(sorted(r.deleted), ["was_dir/inner", "was_dir/inner/y"]);
    assert_eq!(snapshot(&dst), snapshot(&src));

    let e = sync(&opener, &local.path().join("nope"), &d, true, opts())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("nope") && e.to_string().contains("No such"),
        "{e}"
    );
    let e = sync(
        &opener,
        &src,
        &dst.join("was_dir").display().to_string(),
        true,
        opts(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    let e = sync(&opener, &src, "/no/such/parent/dir", true, opts())
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("device: cannot create"), "{e}");
    let bad = SyncOptions {
        excludes: vec!["[".into()],
        ..opts()
    };
    let e = sync(&opener, &src, &d, true, bad).await.unwrap_err();
    assert!(e.to_string().contains("invalid exclude pattern"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_picks_up_changes_quickly() {
    let opener: Arc<dyn ChannelOpener> = Arc::new(LocalOpener::default());
    let (local, device) = (tempdir(), tempdir());
    let src = local.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"first").unwrap();
    let dst = device.path().join("dst");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SyncReport>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let o = SyncOptions {
        excludes: vec!["*.tmp".into()],
        ..opts()
    };
    let task = tokio::spawn(watch(
        opener,
        src.clone(),
        dst.display().to_string(),
        o,
        move |r| {
            let _ = tx.send(r.clone());
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let next = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<SyncReport>| {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no sync within 5 s")
            .expect("watch ended")
    };
    let first = next(&mut rx).await;
    assert_eq!(first.created, ["a.txt"]);

    // A new file and a changed one, in a burst: one or two syncs.
    let t = Instant::now();
    std::fs::write(src.join("b.txt"), b"second").unwrap();
    std::fs::write(src.join("a.txt"), b"first, edited").unwrap();
    std::fs::write(src.join("ignored.tmp"), b"excluded").unwrap();
    let mut seen = SyncReport::default();
    while !(seen.created.contains(&"b.txt".to_owned())
        && seen.updated.contains(&"a.txt".to_owned()))
    {
        let r = next(&mut rx).await;
        seen.created.extend(r.created);
        seen.updated.extend(r.updated);
    }
    // That the watch picks the burst up is the property; how fast is the benchmarks' business
    // (a loaded CI machine took 2.2 s here), so the bound only catches a watch that hangs.
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"first, edited");
    assert_eq!(std::fs::read(dst.join("b.txt")).unwrap(), b"second");
    assert!(!dst.join("ignored.tmp").exists());

    // A change only to an excluded file does not trigger a sync.
    std::fs::write(src.join("ignored.tmp"), b"still excluded").unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(600), rx.recv())
            .await
            .is_err()
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
