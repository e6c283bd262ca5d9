//! `m87 cp` against the real agent service in-process (the "device" is another temp dir).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use m87_events::tunnel::files::{Entry, EntryKind, Mtime};
use m87_events::tunnel::{Channel, Control, Frame};
use m87_transport::frames::{FrameReader, write_control, write_frame};
use m87_transport::stream::{BoxRead, BoxWrite};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::*;
use crate::remote::testing::LocalOpener;
use crate::remote::{ChannelOpener, OpenError, OpenedChannel};

/// A temporary directory, in memory when possible (fsync there costs nothing, so the tests
/// measure this code rather than the disk).
pub(crate) fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// Deterministic pseudo-random bytes.
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

pub(crate) fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    filetime::set_symlink_file_times(
        p,
        filetime::FileTime::from_unix_time(secs, nanos),
        filetime::FileTime::from_unix_time(secs, nanos),
    )
    .unwrap();
}

pub(crate) fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What a user compares: per path, kind, mode, mtime, and the SHA-256 or link target.
pub(crate) fn snapshot(root: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for item in std::fs::read_dir(root.join(&rel)).unwrap() {
            let item = item.unwrap();
            let rel = rel.join(item.file_name());
            let abs = root.join(&rel);
            let m = std::fs::symlink_metadata(&abs).unwrap();
            let what = if m.is_dir() {
                stack.push(rel.clone());
                "dir".to_owned()
            } else if m.file_type().is_symlink() {
                format!("link->{}", std::fs::read_link(&abs).unwrap().display())
            } else {
                sha256_file(&abs)
            };
            let mtime = format!("{}.{}", m.mtime(), m.mtime_nsec());
            let mode = if m.file_type().is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            out.push((
                rel.display().to_string(),
                format!("{what} {mode:o} {mtime}"),
            ));
        }
    }
    out.sort();
    out
}

/// Every file name below `root` (temporary files would show up here).
pub(crate) fn all_names(root: &Path) -> Vec<String> {
    snapshot(root).into_iter().map(|(p, _)| p).collect()
}

/// A tree of `n` small files in 10 directories, with a symlink, an empty and a read-only
/// directory, assorted modes and mtimes.
pub(crate) fn make_tree(root: &Path, n: usize) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..n {
        let dir = root.join(format!("dir{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(format!("file{i:04}.txt"));
        std::fs::write(&f, noise(i as u64, (i * 37) % 3000)).unwrap();
        set_mode(&f, if i % 3 == 0 { 0o755 } else { 0o640 });
        set_mtime(&f, 1_500_000_000 + i as i64, (i as u32) * 1000);
    }
    std::os::unix::fs::symlink("dir1/file0001.txt", root.join("link")).unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    std::fs::create_dir(root.join("ro")).unwrap();
    std::fs::write(root.join("ro/inside"), b"read only dir").unwrap();
    set_mtime(&root.join("ro/inside"), 1_400_000_000, 5);
    set_mode(&root.join("ro"), 0o555);
    for i in 0..10 {
        set_mtime(&root.join(format!("dir{i}")), 1_450_000_000 + i, 0);
    }
    set_mtime(&root.join("ro"), 1_460_000_000, 1);
    set_mtime(&root.join("link"), 1_470_000_000, 2);
}

/// Mode bits and mtime of a path, as `ls -l --full-time` would show them.
pub(crate) fn mode_and_mtime(p: &Path) -> (u32, filetime::FileTime) {
    let m = std::fs::metadata(p).unwrap();
    (
        m.permissions().mode() & 0o7777,
        filetime::FileTime::from_last_modification_time(&m),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_file_both_ways_keeps_bytes_mode_and_mtime() {
    let opener = LocalOpener::default();
    let local = tempdir();
    let device = tempdir();
    let src = local.path().join("big.bin");
    let data = noise(42, 20 << 20);
    let digest = hex::encode(Sha256::digest(&data));
    std::fs::write(&src, &data).unwrap();
    set_mode(&src, 0o640);
    set_mtime(&src, 1_650_000_000, 123_456_789);
    let expected = (
        0o640,
        filetime::FileTime::from_unix_time(1_650_000_000, 123_456_789),
    );

    // Into an existing directory: the file goes inside it.
    let dev = device.path().display().to_string();
    let s = push(&opener, &src, &dev, false, false).await.unwrap();
    assert_eq!(s.files, 1);
    assert_eq!(s.bytes_sent, 20 << 20);
    assert_eq!(s.bytes_received, 0);
    let on_device = device.path().join("big.bin");
    assert_eq!(all_names(device.path()), ["big.bin"]);
    assert!(std::fs::read(&on_device).unwrap() == data);
    assert_eq!(mode_and_mtime(&on_device), expected);

    // Back, under a new name.
    let back = local.path().join("back.bin");
    let s = pull(
        &opener,
        &on_device.display().to_string(),
        &back,
        false,
        false,
    )
    .await
    .unwrap();
    assert_eq!((s.files, s.bytes_received, s.bytes_sent), (1, 20 << 20, 0));
    assert_eq!(sha256_file(&back), digest);
    assert_eq!(mode_and_mtime(&back), expected);
    assert_eq!(all_names(local.path()), ["back.bin", "big.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_1000_files_both_ways() {
    let opener = LocalOpener::default();
    let local = tempdir();
    let device = tempdir();
    let src = local.path().join("tree");
    make_tree(&src, 1000);
    let expected = snapshot(&src);

    let s = push(
        &opener,
        &src,
        &device.path().display().to_string(),
        true,
        false,
    )
    .await
    .unwrap();
    assert_eq!(s.files, 1001);
    assert_eq!(snapshot(&device.path().join("tree")), expected);

    // Back into a path that does not exist yet: it becomes the copy.
    let back = local.path().join("back");
    let remote = device.path().join("tree").display().to_string();
    let s = pull(&opener, &remote, &back, true, false).await.unwrap();
    assert_eq!(s.files, 1001);
    assert_eq!(snapshot(&back), expected);

    // Again, onto the existing copy: cp puts it inside.
    pull(&opener, &remote, &back, true, false).await.unwrap();
    assert_eq!(snapshot(&back.join("tree")), expected);
    for d in [&src, &back, &back.join("tree"), &device.path().join("tree")] {
        set_mode(&d.join("ro"), 0o755); // let the temp dirs be removed
    }
}

#[tokio::test]
async fn cp_rules_and_clear_errors() {
    let opener = LocalOpener::default();
    let local = tempdir();
    let device = tempdir();
    let dev = |p: &str| device.path().join(p).display().to_string();
    let f = local.path().join("f.txt");
    std::fs::write(&f, b"hello").unwrap();
    let d = local.path().join("d");
    std::fs::create_dir(&d).unwrap();

    // A file onto a new name, then over it.
    push(&opener, &f, &dev("g.txt"), false, false)
        .await
        .unwrap();
    std::fs::write(&f, b"hello again").unwrap();
    push(&opener, &f, &dev("g.txt"), false, false)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(device.path().join("g.txt")).unwrap(),
        b"hello again"
    );

    // A directory without -r, on either side.
    let e = push(&opener, &d, &dev(""), false, false).await.unwrap_err();
    assert!(e.to_string().contains("is a directory (use -r"), "{e}");
    assert!(e.to_string().contains(&d.display().to_string()), "{e}");
    std::fs::create_dir(device.path().join("rd")).unwrap();
    let e = pull(&opener, &dev("rd"), local.path(), false, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is a directory (use -r"), "{e}");

    // Missing sources are named.
    let missing = local.path().join("nope");
    let e = push(&opener, &missing, &dev(""), false, false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("nope") && e.to_string().contains("No such file"),
        "{e}"
    );
    let e = pull(&opener, &dev("gone.txt"), local.path(), false, false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("gone.txt") && e.to_string().contains("No such file"),
        "{e}"
    );

    // Missing parent on the device; a file onto a directory's name inside; dir onto a file.
    let e = push(&opener, &f, &dev("no/such/dir/x"), false, false)
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("device: "), "{e}");
    std::fs::create_dir_all(device.path().join("box/f.txt")).unwrap();
    let e = push(&opener, &f, &dev("box"), false, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot overwrite directory"), "{e}");
    let e = push(&opener, &d, &dev("g.txt"), true, false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("cannot overwrite non-directory"),
        "{e}"
    );
    // A trailing slash means "a directory".
    let e = push(&opener, &f, &dev("newdir/"), false, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("No such directory"), "{e}");
}

/// Opens a push by hand, ready to send the root entry.
async fn raw_push(opener: &LocalOpener, path: &Path, name: &str, kind: EntryKind) -> Wire {
    let mut wire = open_files(
        opener,
        FileChannel::Push {
            path: path.display().to_string(),
            recursive: true,
        },
    )
    .await
    .unwrap();
    wire.send(&FileMsg::Tree {
        name: name.into(),
        kind,
        files: 1,
        bytes: 1 << 20,
    })
    .await
    .unwrap();
    assert!(matches!(
        wire.recv_msg().await.unwrap(),
        FileMsg::Ready { .. }
    ));
    wire
}

fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode: 0o644,
        mtime: Mtime::default(),
        size,
        digest: None,
        target: None,
    }
}

#[tokio::test]
async fn an_interrupted_push_leaves_no_file_and_no_temp_file() {
    let opener = LocalOpener::default();
    let device = tempdir();
    let dest = device.path().join("file.bin");
    let mut wire = raw_push(&opener, &dest, "file.bin", EntryKind::File).await;
    wire.send(&FileMsg::Entry(entry("", EntryKind::File, 1 << 20)))
        .await
        .unwrap();
    wire.send_data(Bytes::from(vec![1u8; 100_000]))
        .await
        .unwrap();
    // The stream ends mid-file.
    let (mut reader, mut writer) = wire.into_parts();
    tokio::io::AsyncWriteExt::shutdown(&mut writer)
        .await
        .unwrap();
    // The device gives up and closes its side (it has nobody to tell why).
    while let Ok(Some(_)) = reader.next().await {}
    assert!(
        all_names(device.path()).is_empty(),
        "{:?}",
        all_names(device.path())
    );

    // The same with an existing file: it keeps its old contents.
    std::fs::write(&dest, b"old").unwrap();
    let mut wire = raw_push(&opener, &dest, "file.bin", EntryKind::File).await;
    wire.send(&FileMsg::Entry(entry("", EntryKind::File, 1 << 20)))
        .await
        .unwrap();
    wire.send_data(Bytes::from(vec![1u8; 100_000]))
        .await
        .unwrap();
    drop(wire);
    // Nothing to wait on but the file system: the service ends on its own.
    for _ in 0..100 {
        if all_names(device.path()) == ["file.bin"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(all_names(device.path()), ["file.bin"]);
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
}

#[tokio::test]
async fn path_traversal_from_the_client_is_refused() {
    let opener = LocalOpener::default();
    let device = tempdir();
    let target = device.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let outside = device.path().join("outside-x");
    for bad in [
        "../x",
        "../outside-x",
        &outside.display().to_string(),
        "/etc/x",
    ] {
        let mut wire = raw_push(&opener, &target, "d", EntryKind::Dir).await;
        wire.send(&FileMsg::Entry(entry("", EntryKind::Dir, 0)))
            .await
            .unwrap();
        let result = async {
            wire.send(&FileMsg::Entry(entry(bad, EntryKind::File, 4)))
                .await?;
            wire.send_data(Bytes::from_static(b"evil")).await?;
            wire.send_eof().await?;
            wire.send(&FileMsg::End).await?;
            wire.recv_msg().await
        }
        .await;
        match result {
            Err(TransferError::Remote(m)) => assert!(m.contains("refusing path"), "{m}"),
            other => panic!("{bad}: expected a refusal, got {other:?}"),
        }
    }
    assert!(!outside.exists());
    assert!(!Path::new("/etc/x").exists());
    assert_eq!(all_names(device.path()), ["target", "target/d"]);
}

/// A device that answers every pull with a tree trying to escape the destination.
struct EvilDevice {
    frames: Vec<Frame>,
}

#[async_trait]
impl ChannelOpener for EvilDevice {
    async fn open(&self, _channel: Channel) -> Result<OpenedChannel, OpenError> {
        let (client, mut device) = tokio::io::duplex(1 << 20);
        write_control(&mut device, &Control::ChannelAccepted { flow: None })
            .await
            .map_err(|e| OpenError::Lost(e.to_string()))?;
        for f in &self.frames {
            write_frame(&mut device, f)
                .await
                .map_err(|e| OpenError::Lost(e.to_string()))?;
        }
        tokio::spawn(async move {
            // Keep the device's end open until the client is done.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut device, &mut sink).await;
        });
        let (r, w) = tokio::io::split(client);
        let mut reader = FrameReader::new(Box::new(r) as BoxRead);
        let _ = reader.control().await;
        Ok(OpenedChannel {
            reader,
            writer: Box::new(w) as BoxWrite,
            flow: None,
        })
    }

    fn send_datagram(&self, _flow: u32, _payload: Bytes) -> Result<(), OpenError> {
        Ok(())
    }

    fn datagrams(&self, _flow: u32) -> mpsc::Receiver<Bytes> {
        mpsc::channel(1).1
    }
}

fn msg(m: FileMsg) -> Frame {
    m.to_frame().unwrap()
}

#[tokio::test]
async fn a_malicious_device_cannot_write_outside_the_destination() {
    let local = tempdir();
    let dest = local.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let tree = |name: &str| {
        msg(FileMsg::Tree {
            name: name.into(),
            kind: EntryKind::Dir,
            files: 1,
            bytes: 4,
        })
    };
    let ready = msg(FileMsg::Ready { path: "/x".into() });
    let mut link = entry("link", EntryKind::Symlink, 0);
    link.target = Some(local.path().display().to_string());
    let cases = vec![
        vec![ready.clone(), tree("..")],
        vec![ready.clone(), tree("a/b")],
        vec![
            ready.clone(),
            tree("d"),
            msg(FileMsg::Entry(entry("", EntryKind::Dir, 0))),
            msg(FileMsg::Entry(entry("../escape", EntryKind::File, 4))),
            Frame::Data(Bytes::from_static(b"evil")),
            Frame::Eof,
        ],
        vec![
            ready.clone(),
            tree("d"),
            msg(FileMsg::Entry(entry("", EntryKind::Dir, 0))),
            msg(FileMsg::Entry(link)),
            msg(FileMsg::Entry(entry("link/escape", EntryKind::File, 4))),
            Frame::Data(Bytes::from_static(b"evil")),
            Frame::Eof,
        ],
    ];
    for frames in cases {
        let opener = EvilDevice { frames };
        let e = pull(&opener, "/x", &dest, true, false).await.unwrap_err();
        assert!(e.to_string().contains("refusing"), "{e}");
    }
    assert!(!local.path().join("escape").exists());
    let names = all_names(local.path());
    assert!(names.iter().all(|n| n.starts_with("dest")), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("escape")), "{names:?}");
}
