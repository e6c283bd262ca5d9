//! Recording a session's terminal as asciicast v2, into a private temporary file that the
//! runtime uploads to the control plane after the session and then removes.
//!
//! The recorder sees exactly what the PTY service relays: the terminal's output, the client's
//! keystrokes and resizes. It never slows the session down and never ends it: a write that
//! fails stops the recording (the upload then says so), and past the size cap nothing more is
//! recorded (`truncated`).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use m87_events::asciicast::{CastWriter, DEFAULT_MAX_BYTES, Header, HeaderEnv, Summary};

/// The environment variable that sets the size cap of one session's recording, in bytes.
pub const MAX_BYTES_ENV: &str = "M87_RECORDING_MAX_BYTES";

/// The size cap: `M87_RECORDING_MAX_BYTES` when it is a positive number, else 16 MiB.
pub fn max_bytes_from_env() -> u64 {
    match std::env::var(MAX_BYTES_ENV) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                tracing::warn!(value = %v, "{MAX_BYTES_ENV} is not a positive number of bytes; using 16 MiB");
                DEFAULT_MAX_BYTES
            }
        },
        Err(_) => DEFAULT_MAX_BYTES,
    }
}

enum State {
    /// No terminal opened yet in this session.
    Idle,
    /// Recording.
    Writing(CastWriter<BufWriter<File>>),
    /// Finished, or failed.
    Done,
}

/// A finished recording, ready to upload.
#[derive(Debug)]
pub struct Finished {
    /// The private temporary file holding it.
    pub path: PathBuf,
    /// Its size and whether it was truncated.
    pub summary: Summary,
    /// The cap it was recorded under.
    pub max_bytes: u64,
}

/// The recorder of one session: created when the session is admitted with a recording grant,
/// started by its first terminal channel.
pub struct Recorder {
    path: PathBuf,
    title: String,
    max_bytes: u64,
    started: Instant,
    state: Mutex<State>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder writing to `dir/m87-recording-<name>.cast` once a terminal opens.
    pub fn new(dir: &Path, name: &str, title: String, max_bytes: u64) -> Self {
        Self {
            path: dir.join(format!("m87-recording-{name}.cast")),
            title,
            max_bytes,
            started: Instant::now(),
            state: Mutex::new(State::Idle),
        }
    }

    fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Starts the recording for a terminal of this size (the first terminal of the session;
    /// later ones are recorded into the same file, their size as a resize).
    pub fn start(&self, cols: u16, rows: u16, term: &str, shell: Option<&str>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *state {
            State::Idle => {}
            State::Writing(w) => {
                let _ = w.resize(self.seconds(), cols, rows);
                return;
            }
            State::Done => return,
        }
        let header = Header {
            version: 2,
            width: cols,
            height: rows,
            timestamp: Some(chrono::Utc::now().timestamp()),
            env: Some(HeaderEnv {
                term: Some(term.to_owned()),
                shell: shell.map(str::to_owned),
            }),
            title: Some(self.title.clone()),
        };
        *state = match create_private(&self.path)
            .and_then(|f| CastWriter::new(BufWriter::new(f), header, self.max_bytes))
        {
            Ok(w) => State::Writing(w),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot record the session");
                State::Done
            }
        };
    }

    fn with_writer(
        &self,
        f: impl FnOnce(&mut CastWriter<BufWriter<File>>, f64) -> std::io::Result<()>,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let State::Writing(w) = &mut *state {
            let was_truncated = w.truncated();
            if let Err(e) = f(w, self.seconds()) {
                tracing::warn!(error = %e, "session recording failed; the session goes on unrecorded");
                *state = State::Done;
            } else if !was_truncated && w.truncated() {
                tracing::warn!(
                    max_bytes = self.max_bytes,
                    "session recording reached its size cap; the rest is not recorded"
                );
            }
        }
    }

    /// Records terminal output.
    pub fn output(&self, data: &[u8]) {
        self.with_writer(|w, t| w.output(t, data));
    }

    /// Records keystrokes.
    pub fn input(&self, data: &[u8]) {
        self.with_writer(|w, t| w.input(t, data));
    }

    /// Records a resize.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.with_writer(|w, t| w.resize(t, cols, rows));
    }

    /// Ends the recording. `None` when no terminal was opened or recording failed (the file,
    /// if any, is removed then).
    pub fn finish(&self) -> Option<Finished> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::replace(&mut *state, State::Done);
        let summary = match previous {
            State::Writing(w) => w
                .finish(self.seconds())
                .and_then(|(buf, summary)| {
                    buf.into_inner()
                        .map_err(std::io::IntoInnerError::into_error)?
                        .sync_all()?;
                    Ok(summary)
                })
                .map_err(|e| tracing::warn!(error = %e, "cannot finish the session recording"))
                .ok(),
            State::Idle | State::Done => None,
        };
        match summary {
            Some(summary) => Some(Finished {
                path: self.path.clone(),
                summary,
                max_bytes: self.max_bytes,
            }),
            None => {
                let _ = std::fs::remove_file(&self.path);
                None
            }
        }
    }
}

/// A new file only this user can read (0600); an existing one is replaced.
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_a_terminal_into_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::new(dir.path(), "s1", "title".into(), 1 << 20);
        r.output(b"before any terminal is not recorded");
        r.start(80, 24, "xterm", Some("/bin/sh"));
        r.input(b"echo hi\r");
        r.output(b"hi\r\n");
        r.resize(100, 30);
        let done = r.finish().unwrap();
        let mode = std::fs::metadata(&done.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&done.path).unwrap();
        assert_eq!(done.summary.bytes, text.len() as u64);
        let (header, events) = m87_events::asciicast::parse(&text).unwrap();
        assert_eq!((header.width, header.height), (80, 24));
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, vec!["echo hi\r", "hi\r\n", "100x30"]);
    }

    #[test]
    fn a_session_without_a_terminal_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::new(dir.path(), "s2", "t".into(), 1 << 20);
        assert!(r.finish().is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
