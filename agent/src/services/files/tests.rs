//! The device side driven by hand over in-memory pipes: what a malicious or broken peer can
//! and cannot do. (The CLI's component tests cover the happy paths with both real sides.)

use std::path::Path;

use bytes::Bytes;
use m87_events::tunnel::Frame;
use m87_events::tunnel::files::{Entry, EntryKind, FileChannel, FileMsg, Mtime};

use super::*;
use m87_transport::frames::write_frame;

/// Starts the service; returns the client's ends and the service's task.
fn start(op: FileChannel) -> (Wire, tokio::task::JoinHandle<ChannelOutcome>) {
    let (client, device) = tokio::io::duplex(1 << 20);
    let (dr, dw) = tokio::io::split(device);
    let task = tokio::spawn(serve(
        op,
        FrameReader::new(Box::new(dr) as BoxRead),
        Box::new(dw) as BoxWrite,
    ));
    let (cr, cw) = tokio::io::split(client);
    (
        Wire::new(FrameReader::new(Box::new(cr) as BoxRead), Box::new(cw)),
        task,
    )
}

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode: 0o755,
        mtime: Mtime {
            secs: 1_600_000_000,
            nanos: 0,
        },
        size: 0,
        digest: None,
        target: None,
    }
}

/// Reads until the device's error; returns it.
async fn device_error(wire: &mut Wire) -> String {
    loop {
        match wire.recv().await {
            Ok(_) => {}
            Err(TransferError::Remote(m)) => return m,
            Err(e) => panic!("expected an error from the device, got {e}"),
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Pushes a directory whose entries are `evil` (after `setup`), and returns the device's error.
async fn push_dir(dest: &Path, evil: Vec<FileMsg>) -> String {
    let (mut wire, task) = start(FileChannel::Push {
        path: dest.display().to_string(),
        recursive: true,
    });
    wire.send(&FileMsg::Tree {
        name: "d".into(),
        kind: EntryKind::Dir,
        files: 1,
        bytes: 5,
    })
    .await
    .unwrap();
    assert!(matches!(
        wire.recv_msg().await.unwrap(),
        FileMsg::Ready { .. }
    ));
    wire.send(&FileMsg::Entry(entry("", EntryKind::Dir)))
        .await
        .unwrap();
    for m in evil {
        // The device may already have given up: later writes may fail.
        if wire.send(&m).await.is_err() {
            break;
        }
        if let FileMsg::Entry(e) = &m
            && e.kind == EntryKind::File
        {
            let _ = wire.send_data(Bytes::from_static(b"evil!")).await;
            let _ = wire.send_eof().await;
        }
    }
    let _ = wire.send(&FileMsg::End).await;
    let err = device_error(&mut wire).await;
    let outcome = task.await.unwrap();
    assert!(outcome.error.is_some());
    err
}

#[tokio::test]
async fn push_refuses_paths_outside_the_target() {
    let base = tempfile::tempdir().unwrap();
    let dest = base.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    for bad in ["../x", "/tmp/m87-evil-x", "a/../../x", "a//b", "./x", ".."] {
        let err = push_dir(&dest, vec![FileMsg::Entry(entry(bad, EntryKind::File))]).await;
        assert!(err.contains("refusing path"), "{bad}: {err}");
    }
    assert_eq!(names(base.path()), ["dest"]);
    assert_eq!(names(&dest.join("d")), Vec::<String>::new());
    assert!(!Path::new("/tmp/m87-evil-x").exists());
}

#[tokio::test]
async fn push_never_writes_through_a_symlink() {
    let base = tempfile::tempdir().unwrap();
    let dest = base.path().join("dest");
    let outside = base.path().join("outside");
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let mut link = entry("link", EntryKind::Symlink);
    link.target = Some(outside.display().to_string());
    let err = push_dir(
        &dest,
        vec![
            FileMsg::Entry(link),
            FileMsg::Entry(entry("link/evil", EntryKind::File)),
        ],
    )
    .await;
    assert!(err.contains("not a directory"), "{err}");
    assert!(names(&outside).is_empty());
    // The symlink itself was created, as a symlink.
    assert!(
        std::fs::symlink_metadata(dest.join("d/link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn push_refuses_bad_names_and_directories_without_recursive() {
    let base = tempfile::tempdir().unwrap();
    for (name, kind, recursive) in [
        ("..", EntryKind::File, false),
        ("a/b", EntryKind::File, false),
        ("d", EntryKind::Dir, false),
    ] {
        let (mut wire, task) = start(FileChannel::Push {
            path: base.path().display().to_string(),
            recursive,
        });
        wire.send(&FileMsg::Tree {
            name: name.into(),
            kind,
            files: 0,
            bytes: 0,
        })
        .await
        .unwrap();
        let err = device_error(&mut wire).await;
        assert!(
            err.contains("refusing name") || err.contains("use -r"),
            "{name}: {err}"
        );
        task.await.unwrap();
    }
    assert!(names(base.path()).is_empty());
}

#[tokio::test]
async fn sync_refuses_a_manifest_leaving_the_root() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    for bad in ["../x", "/etc/x", "a/b"] {
        let (mut wire, task) = start(FileChannel::Sync {
            path: root.display().to_string(),
            to_device: true,
            delete: true,
            excludes: vec![],
            dry_run: false,
        });
        assert!(matches!(
            wire.recv_msg().await.unwrap(),
            FileMsg::Ready { .. }
        ));
        wire.send(&FileMsg::Entry(entry(bad, EntryKind::File)))
            .await
            .unwrap();
        wire.send(&FileMsg::End).await.unwrap();
        let err = device_error(&mut wire).await;
        assert!(err.contains("protocol error"), "{bad}: {err}");
        task.await.unwrap();
    }
    assert_eq!(names(base.path()), ["root"]);
    assert!(names(&root).is_empty());
}

#[tokio::test]
async fn broken_stream_mid_file_leaves_nothing() {
    let base = tempfile::tempdir().unwrap();
    let (mut wire, task) = start(FileChannel::Push {
        path: base.path().join("f").display().to_string(),
        recursive: false,
    });
    wire.send(&FileMsg::Tree {
        name: "f".into(),
        kind: EntryKind::File,
        files: 1,
        bytes: 10 << 20,
    })
    .await
    .unwrap();
    assert!(matches!(
        wire.recv_msg().await.unwrap(),
        FileMsg::Ready { .. }
    ));
    let mut e = entry("", EntryKind::File);
    e.size = 10 << 20;
    wire.send(&FileMsg::Entry(e)).await.unwrap();
    wire.send_data(Bytes::from(vec![7u8; 200_000]))
        .await
        .unwrap();
    // Make sure the device started writing, then cut the stream.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (reader, mut writer) = wire.into_parts();
    let _ = write_frame(&mut writer, &Frame::Data(Bytes::from_static(b"x"))).await;
    drop(writer);
    drop(reader);
    let outcome = task.await.unwrap();
    assert!(outcome.error.unwrap().contains("interrupted"));
    assert!(names(base.path()).is_empty(), "{:?}", names(base.path()));
}
