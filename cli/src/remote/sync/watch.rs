//! `m87 sync --watch`: an initial sync, then a re-sync shortly after each change, from
//! filesystem notifications (inotify and friends through `notify`, not polling).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use m87_files::tree::Excludes;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{SyncOptions, SyncReport, sync};
use crate::remote::ChannelOpener;
use crate::remote::cp::user_error;

/// Quiet time after a change before syncing (more changes in it are folded in).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait after the first change of a burst, however busy the tree.
const MAX_DELAY: Duration = Duration::from_millis(800);

/// Whether an event may mean the tree changed (reads and opens do not; changes only to
/// excluded paths do not). Paths are judged as files (no `stat` here): a directory-only
/// pattern then excludes what is inside the directory, and at worst an event on the
/// directory itself costs a sync that finds nothing to do.
fn relevant(root: &Path, excludes: &Excludes, event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    if event.paths.is_empty() || excludes.is_empty() {
        return true;
    }
    event.paths.iter().any(|p| match p.strip_prefix(root) {
        Ok(rel) => match rel.to_str() {
            Some("") => true,
            Some(rel) => !excludes.excludes(rel, false),
            None => true,
        },
        Err(_) => true,
    })
}

/// Syncs `local` to `remote_path` on the device, then again within a second of every change
/// under `local` (changes are debounced for about 200 ms), until `shutdown` completes.
/// `on_sync` gets each sync's report. A failed sync ends the watch with its error.
pub async fn watch(
    opener: Arc<dyn ChannelOpener>,
    local: PathBuf,
    remote_path: String,
    opts: SyncOptions,
    mut on_sync: impl FnMut(&SyncReport) + Send,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let excludes = Excludes::new(&opts.excludes).map_err(user_error)?;
    let root = tokio::fs::canonicalize(&local)
        .await
        .map_err(|e| anyhow::anyhow!("'{}': {e}", local.display()))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    tokio::pin!(shutdown);

    loop {
        let report = tokio::select! {
            report = sync(&*opener, &root, &remote_path, true, opts.clone()) => report?,
            () = &mut shutdown => return Ok(()),
        };
        on_sync(&report);

        // Wait for a change.
        loop {
            let event = tokio::select! {
                event = rx.recv() => event,
                () = &mut shutdown => return Ok(()),
            };
            match event {
                None => anyhow::bail!("the file watcher stopped"),
                Some(Ok(e)) if !relevant(&root, &excludes, &e) => {}
                // An error (such as an overflowed queue) may hide changes: sync.
                Some(_) => break,
            }
        }
        // Let the burst settle: until DEBOUNCE passes without events, at most MAX_DELAY.
        let deadline = Instant::now() + MAX_DELAY;
        loop {
            let quiet = (Instant::now() + DEBOUNCE).min(deadline);
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        anyhow::bail!("the file watcher stopped");
                    }
                }
                () = tokio::time::sleep_until(quiet) => break,
                () = &mut shutdown => return Ok(()),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
    }
}
