//! Sync and symlinks: a symlink to a directory is a symlink on both sides (sent as a link, as
//! `cp` does), never a directory to descend into, hash or send; a symlink loop ends nothing.
//! Both roles run in-process over an in-memory pipe.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use m87_files::{NoProgress, SyncParams, SyncReport, Wire, sync_destination, sync_source};
use m87_transport::frames::FrameReader;
use m87_transport::stream::{BoxRead, BoxWrite};

/// Long enough for any of these small trees; a walk that loops never finishes.
const LIMIT: Duration = Duration::from_secs(20);

fn pipe() -> (Wire, Wire) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    (
        Wire::new(
            FrameReader::new(Box::new(ar) as BoxRead),
            Box::new(aw) as BoxWrite,
        ),
        Wire::new(
            FrameReader::new(Box::new(br) as BoxRead),
            Box::new(bw) as BoxWrite,
        ),
    )
}

/// Syncs `src` into `dst` (both existing directories); answers both sides' reports.
async fn sync(src: &Path, dst: &Path, params: SyncParams) -> (SyncReport, SyncReport) {
    let (mut s, mut d) = pipe();
    let run = async {
        tokio::join!(
            sync_source(&mut s, src, &params, &NoProgress),
            sync_destination(&mut d, dst, &params, &NoProgress),
        )
    };
    let (source, dest) = tokio::time::timeout(LIMIT, run)
        .await
        .expect("the sync finished");
    (source.unwrap(), dest.unwrap())
}

fn is_symlink_to(path: &Path, target: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(meta.is_symlink(), "{} is not a symlink", path.display());
    assert_eq!(std::fs::read_link(path).unwrap(), target);
}

/// A directory outside both roots, with a file that must never be read or sent.
fn outside(base: &Path, name: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = base.join(name);
    std::fs::create_dir_all(dir.join("deeper")).unwrap();
    std::fs::write(dir.join("secret.txt"), contents).unwrap();
    std::fs::write(dir.join("deeper/more.txt"), contents).unwrap();
    dir
}

#[tokio::test]
async fn a_symlinked_directory_is_sent_as_a_link_and_a_loop_is_harmless() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = outside(tmp.path(), "outside", b"top secret contents");
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("a.txt"), b"hello").unwrap();
    symlink(&secret, src.join("elsewhere")).unwrap();
    symlink(".", src.join("loop")).unwrap();
    symlink("..", src.join("sub/up")).unwrap();

    let (_, report) = sync(&src, &dst, SyncParams::default()).await;

    let mut created = report.created.clone();
    created.sort();
    assert_eq!(created, ["a.txt", "elsewhere", "loop", "sub", "sub/up"]);
    assert_eq!(report.files, 1, "only a.txt has contents");
    assert_eq!(report.bytes_received, 5, "nothing of the outside was sent");
    is_symlink_to(&dst.join("elsewhere"), &secret);
    is_symlink_to(&dst.join("loop"), Path::new("."));
    is_symlink_to(&dst.join("sub/up"), Path::new(".."));

    // Again: nothing to do, and nothing below the links is looked at.
    let (_, again) = sync(&src, &dst, SyncParams::default()).await;
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(again.bytes_received, 0);
}

#[tokio::test]
async fn the_destination_never_descends_into_its_own_symlinked_directories() {
    let tmp = tempfile::tempdir().unwrap();
    // The destination holds, where the source has real directories, symlinks to directories
    // outside its root, with files of the same names and sizes as the source's.
    let theirs = outside(tmp.path(), "outside", b"OUTSIDE!");
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(src.join("dir/deeper")).unwrap();
    std::fs::write(src.join("dir/secret.txt"), b"inside!!").unwrap();
    std::fs::write(src.join("dir/deeper/more.txt"), b"inside!!").unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    symlink(&theirs, dst.join("dir")).unwrap();
    symlink(".", dst.join("loop")).unwrap();

    let params = SyncParams {
        delete: true,
        ..SyncParams::default()
    };
    let (_, report) = sync(&src, &dst, params).await;

    // The link is replaced by a real directory; the outside is untouched.
    assert!(std::fs::symlink_metadata(dst.join("dir")).unwrap().is_dir());
    assert_eq!(
        std::fs::read(dst.join("dir/secret.txt")).unwrap(),
        b"inside!!"
    );
    assert_eq!(
        std::fs::read(theirs.join("secret.txt")).unwrap(),
        b"OUTSIDE!"
    );
    assert_eq!(
        std::fs::read(theirs.join("deeper/more.txt")).unwrap(),
        b"OUTSIDE!"
    );
    assert_eq!(report.files, 2);
    assert_eq!(report.deleted, ["loop"], "the loop is an extraneous link");
    assert!(std::fs::symlink_metadata(dst.join("loop")).is_err());
}

#[tokio::test]
async fn a_directory_swapped_for_a_symlink_after_the_walk_is_not_followed_by_the_source() {
    use m87_events::tunnel::files::FileMsg;
    use m87_files::wire::Incoming;

    let tmp = tempfile::tempdir().unwrap();
    let secret = outside(tmp.path(), "outside", b"OUTSIDE SECRET");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/secret.txt"), b"inside, same size").unwrap();

    // The source role on one end; the destination played by hand on the other.
    let (mut s, mut d) = pipe();
    let source = tokio::spawn(async move {
        sync_source(&mut s, &src, &SyncParams::default(), &NoProgress).await
    });
    let mut manifest = Vec::new();
    loop {
        match d.recv_msg().await.unwrap() {
            FileMsg::Entry(e) => manifest.push(e.path),
            FileMsg::End => break,
            m => panic!("unexpected {m:?}"),
        }
    }
    assert_eq!(manifest, ["dir", "dir/secret.txt"]);

    // After the walk, the directory becomes a symlink to the outside.
    let src = tmp.path().join("src");
    std::fs::rename(src.join("dir"), tmp.path().join("moved")).unwrap();
    symlink(&secret, src.join("dir")).unwrap();

    d.send(&FileMsg::Want {
        path: "dir/secret.txt".into(),
        digest: None,
        signature: None,
    })
    .await
    .unwrap();
    d.send(&FileMsg::End).await.unwrap();
    let mut answers = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, d.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Incoming::Msg(FileMsg::End) => break,
            Incoming::Data(bytes) => {
                assert!(
                    !bytes.windows(7).any(|w| w == b"OUTSIDE"),
                    "the outside file was sent"
                );
                answers.push("data".to_owned());
            }
            other => answers.push(format!("{other:?}")),
        }
    }
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].contains("Vanished"), "{answers:?}");
    d.send(&FileMsg::Done { files: 0, bytes: 0 }).await.unwrap();
    source.await.unwrap().unwrap();
}
