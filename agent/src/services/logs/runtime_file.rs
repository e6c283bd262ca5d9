//! The runtime's own log: JSON lines (time, level, target, fields) in a file rotated by size
//! (`runtime.log`, then `runtime.log.1` … `runtime.log.N`, the highest number the oldest), kept
//! by the `file-rotate` crate, and read back here for `m87 <device> logs`.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use m87_events::tunnel::logs::{LogLine, LogsRequest};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

use super::{BoxWrite, ClientWatch, Ended, LogsError, Sink, accepted};

/// Size at which the runtime's log file is rotated.
pub const MAX_FILE_BYTES: usize = 10 * 1024 * 1024;
/// Rotated files kept besides the current one.
pub const ROTATED_FILES: usize = 2;
/// How often a follower looks for new lines when no change notice arrived (inotify, through
/// the `notify` crate, wakes it sooner; without it this is the only check).
pub const POLL: Duration = Duration::from_millis(500);
/// Longest line kept whole; longer ones are cut (the runtime writes far shorter ones).
const MAX_LINE: usize = 64 * 1024;

/// The rotating file the runtime's log is written to.
pub type RotatingFile = FileRotate<AppendCount>;

/// The writer the runtime's tracing output goes to: `path`, rotated once it passes `max_bytes`
/// (whole lines stay in one file), with `rotated` older files kept.
pub fn rotating_writer(
    path: &Path,
    max_bytes: usize,
    rotated: usize,
) -> std::io::Result<Mutex<RotatingFile>> {
    let dir = path.parent().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the log path has no directory",
        )
    })?;
    std::fs::create_dir_all(dir)?;
    // Fail here, with the reason, rather than losing every line later.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(Mutex::new(FileRotate::new(
        path,
        AppendCount::new(rotated),
        ContentLimit::BytesSurpassed(max_bytes.max(1)),
        Compression::None,
        None,
    )))
}

/// The log's files, oldest first: `path.N` … `path.1`, then `path`.
pub fn files_oldest_first(path: &Path) -> Vec<PathBuf> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return vec![path.to_path_buf()];
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let prefix = format!("{name}.");
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name();
            let n = file.to_str()?.strip_prefix(&prefix)?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut all: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    all.push(path.to_path_buf());
    all
}

#[derive(Deserialize)]
struct Raw {
    timestamp: Option<String>,
    level: Option<String>,
    target: Option<String>,
    #[serde(default)]
    fields: serde_json::Map<String, serde_json::Value>,
}

/// One line of the runtime's log as a [`LogLine`]; a line that is not the runtime's JSON is
/// kept as its message, without time or level.
pub fn parse_line(line: &str) -> LogLine {
    let Ok(mut raw) = serde_json::from_str::<Raw>(line) else {
        return LogLine {
            time: None,
            level: String::new(),
            source: String::new(),
            message: line.to_owned(),
        };
    };
    let mut message = match raw.fields.remove("message") {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    for (key, value) in raw.fields {
        let value = match value {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        message.push_str(&format!(" {key}={value}"));
    }
    LogLine {
        time: raw.timestamp.and_then(|t| t.parse::<DateTime<Utc>>().ok()),
        level: raw.level.unwrap_or_default(),
        source: raw.target.unwrap_or_default(),
        message,
    }
}

/// Serves the runtime's log at `path` (none: the runtime keeps no log file).
pub async fn serve(
    path: Option<PathBuf>,
    request: &LogsRequest,
    writer: &mut BoxWrite,
    mut closed: ClientWatch,
) -> Result<Ended, LogsError> {
    let Some(path) = path else {
        return Err(LogsError::Unavailable(
            "this runtime keeps no log file (it is written by `m87 runtime run`, to \
             <config dir>/logs/runtime.log or M87_RUNTIME_LOG)"
                .into(),
        ));
    };
    let mut sink = accepted(writer).await?;
    let mut tail = Tail::new(request);
    let mut current = None;
    for file in files_oldest_first(&path) {
        let Ok(opened) = tokio::fs::File::open(&file).await else {
            continue;
        };
        let mut reader = Reader::new(opened);
        while let Some(line) = reader.next_line().await {
            if tail.keep(parse_line(&line), &mut sink).await.is_err() {
                return Ok(Ended::ClientLeft);
            }
        }
        current = Some(reader);
    }
    if tail.finish(&mut sink).await.is_err() {
        return Ok(Ended::ClientLeft);
    }
    if !request.follow {
        return Ok(Ended::Done);
    }
    follow(&path, current, request, &mut sink, &mut closed).await
}

/// Wakes a follower when something in the log's directory changes (lines appended, a file
/// rotated); `None` when the system offers no such notices (the follower then polls).
fn watch_changes(path: &Path) -> Option<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    use notify::Watcher;
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        // A full channel already holds a wake-up.
        let _ = tx.try_send(());
    })
    .ok()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .ok()?;
    Some((watcher, rx))
}

async fn follow(
    path: &Path,
    mut current: Option<Reader>,
    request: &LogsRequest,
    sink: &mut Sink<'_>,
    closed: &mut ClientWatch,
) -> Result<Ended, LogsError> {
    let (_watcher, mut changes) = match watch_changes(path) {
        Some((w, rx)) => (Some(w), Some(rx)),
        None => (None, None),
    };
    loop {
        if let Some(reader) = current.as_mut() {
            while let Some(line) = reader.next_line().await {
                let line = parse_line(&line);
                if line.within(request.since, request.until) && sink.push(&line).await.is_err() {
                    return Ok(Ended::ClientLeft);
                }
            }
        }
        if sink.flush().await.is_err() {
            return Ok(Ended::ClientLeft);
        }
        if request.until.is_some_and(|u| Utc::now() >= u) {
            return Ok(Ended::Done);
        }
        let changed = async {
            match changes.as_mut() {
                Some(rx) => {
                    let _ = rx.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = closed.closed() => return Ok(Ended::ClientLeft),
            _ = changed => {}
            _ = tokio::time::sleep(POLL) => {}
        }
        current = reopen_if_rotated(path, current).await;
    }
}

/// After rotation (the path names another file) the old file has been read to its end: read
/// the new one from its start. A file cut short is read again from its start.
async fn reopen_if_rotated(path: &Path, current: Option<Reader>) -> Option<Reader> {
    let Ok(on_disk) = tokio::fs::metadata(path).await else {
        return current;
    };
    if let Some(mut reader) = current {
        let same = reader.inode().await == Some(on_disk.ino());
        if same && on_disk.len() >= reader.position {
            return Some(reader);
        }
        if same {
            let _ = reader.inner.seek(SeekFrom::Start(0)).await;
            reader.position = 0;
            return Some(reader);
        }
        // Lines written to the old file between the last read and the rotation.
        if reader.has_more().await {
            return Some(reader);
        }
    }
    tokio::fs::File::open(path).await.ok().map(Reader::new)
}

/// Whole lines from a file that may still be growing: a line without its newline yet waits.
struct Reader {
    inner: BufReader<tokio::fs::File>,
    partial: Vec<u8>,
    position: u64,
}

impl Reader {
    fn new(file: tokio::fs::File) -> Self {
        Self {
            inner: BufReader::new(file),
            partial: Vec::new(),
            position: 0,
        }
    }

    async fn next_line(&mut self) -> Option<String> {
        loop {
            let before = self.partial.len();
            let n = self.inner.read_until(b'\n', &mut self.partial).await.ok()?;
            self.position += n as u64;
            if n == 0 {
                return None;
            }
            if self.partial.last() == Some(&b'\n') {
                let mut bytes = std::mem::take(&mut self.partial);
                bytes.pop();
                bytes.truncate(MAX_LINE);
                let line = String::from_utf8_lossy(&bytes).trim_end().to_owned();
                if line.is_empty() {
                    continue;
                }
                return Some(line);
            }
            if self.partial.len() == before {
                return None;
            }
        }
    }

    async fn inode(&mut self) -> Option<u64> {
        self.inner.get_ref().metadata().await.ok().map(|m| m.ino())
    }

    async fn has_more(&mut self) -> bool {
        match self.inner.get_ref().metadata().await {
            Ok(m) => m.len() > self.position,
            Err(_) => false,
        }
    }
}

/// Applies since/until and `-n`: without `-n` lines go straight out; with it only the last N
/// are held (bounded by N and by the log's rotation limits).
struct Tail {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    last: Option<usize>,
    held: VecDeque<LogLine>,
}

impl Tail {
    fn new(request: &LogsRequest) -> Self {
        Self {
            since: request.since,
            until: request.until,
            last: request.lines.map(|n| n as usize),
            held: VecDeque::new(),
        }
    }

    async fn keep(&mut self, line: LogLine, sink: &mut Sink<'_>) -> std::io::Result<()> {
        if !line.within(self.since, self.until) {
            return Ok(());
        }
        match self.last {
            None => sink.push(&line).await,
            Some(0) => Ok(()),
            Some(n) => {
                if self.held.len() == n {
                    self.held.pop_front();
                }
                self.held.push_back(line);
                Ok(())
            }
        }
    }

    async fn finish(&mut self, sink: &mut Sink<'_>) -> std::io::Result<()> {
        while let Some(line) = self.held.pop_front() {
            sink.push(&line).await?;
        }
        sink.flush().await
    }
}
