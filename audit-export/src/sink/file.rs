//! A local JSON-lines file for log shippers: appended, synced to disk after every batch, and
//! rotated by size (`path` → `path.1` → … → `path.<keep>`, the oldest dropped).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use m87_events::audit::AuditEntry;
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

use super::{Delivered, Sink, SinkError};
use crate::config::{FileConfig, Format};
use crate::format;

/// A file sink.
pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    format: Format,
    file: Option<(File, u64)>,
    /// The file's length after the last complete batch: a batch cut off half-way is cut
    /// back to it before the next one, so the file never holds half a line.
    committed: Option<u64>,
}

impl FileSink {
    /// A sink for `config`; the file is opened (and created, mode 0600) at the first batch.
    pub fn new(config: &FileConfig) -> Self {
        Self {
            path: config.path.clone(),
            max_bytes: config.max_bytes,
            keep: config.keep,
            format: config.format,
            file: None,
            committed: None,
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            remove_if_there(&self.path).await?;
            self.committed = Some(0);
            return Ok(());
        }
        remove_if_there(&self.rotated(self.keep)).await?;
        for n in (1..self.keep).rev() {
            rename_if_there(&self.rotated(n), &self.rotated(n + 1)).await?;
        }
        rename_if_there(&self.path, &self.rotated(1)).await?;
        self.committed = Some(0);
        Ok(())
    }

    async fn open(&mut self) -> std::io::Result<&mut (File, u64)> {
        if self.file.is_none() {
            let mut opts = OpenOptions::new();
            opts.create(true).append(true);
            #[cfg(unix)]
            opts.mode(0o600);
            let f = opts.open(&self.path).await?;
            let mut len = f.metadata().await?.len();
            if let Some(c) = self.committed.filter(|c| *c < len) {
                f.set_len(c).await?;
                len = c;
            }
            self.file = Some((f, len));
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("file not open"))
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = self.open().await?.1;
        if len > 0 && len + data.len() as u64 > self.max_bytes {
            self.rotate().await?;
        }
        let (f, len) = self.open().await?;
        f.write_all(data).await?;
        f.flush().await?;
        f.sync_data().await?;
        *len += data.len() as u64;
        self.committed = Some(*len);
        Ok(())
    }
}

async fn remove_if_there(p: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_file(p).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

async fn rename_if_there(from: &Path, to: &Path) -> std::io::Result<()> {
    match tokio::fs::rename(from, to).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[async_trait]
impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn deliver(&mut self, batch: &[AuditEntry]) -> Result<Delivered, SinkError> {
        let mut data = Vec::with_capacity(batch.len() * 1024);
        for e in batch {
            data.extend_from_slice(format::to_line(self.format, e).as_bytes());
            data.push(b'\n');
        }
        if let Err(e) = self.write(&data).await {
            self.file = None;
            return Err(SinkError::Retry(format!(
                "writing {}: {e}",
                self.path.display()
            )));
        }
        Ok(Delivered::all())
    }

    fn reset(&mut self) {
        self.file = None;
    }
}
