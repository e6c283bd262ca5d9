//! `m87 <device> logs`: the runtime's log, a systemd unit's journal, a container's log.
//!
//! Each source checks what it needs first and refuses with `unavailable` (naming what is
//! missing) before accepting. Then lines travel as [`LogLine`]s in JSON, one per line, in `Data`
//! frames of up to [`BATCH`] bytes, written through the stream (a slow client slows the reader
//! down; nothing piles up in memory). A read ends with `Exit` 0; a follower ends when the client
//! closes its side of the stream.
//!
//! - [`runtime_file`]: the runtime's own rotated log file (and the writer that keeps it).
//! - [`journal`]: `journalctl` for a unit.
//! - [`container`]: a container's log through the Docker API.

pub mod container;
pub mod journal;
pub mod runtime_file;

use bytes::Bytes;
use m87_events::tunnel::logs::{LogLine, LogSource, LogsRequest};
use m87_events::tunnel::{ExitStatus, Frame};
use m87_transport::frames::{FrameReader, write_frame};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext, accept, unavailable};

pub use runtime_file::{RotatingFile, rotating_writer};

/// Bytes of JSON lines gathered into one `Data` frame before it is sent.
pub const BATCH: usize = 32 * 1024;

/// How a source's read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Everything asked for was sent.
    Done,
    /// The client closed the stream (a follower's normal end).
    ClientLeft,
}

/// Why a source could not serve.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// What the source needs is not on the device (sent before accepting, as `unavailable`).
    #[error("{0}")]
    Unavailable(String),
    /// The read failed after the channel was accepted.
    #[error("{0}")]
    Failed(String),
}

/// Serves one logs channel.
pub async fn serve(
    request: LogsRequest,
    reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    ctx: &ServiceContext,
) -> ChannelOutcome {
    let closed = ClientWatch::start(reader);
    let result = match &request.source {
        LogSource::Runtime => {
            let path = ctx.settings.runtime_log.clone();
            runtime_file::serve(path, &request, &mut writer, closed).await
        }
        LogSource::Unit { name } => journal::serve(name, &request, &mut writer, closed).await,
        LogSource::Container { name } => {
            let socket = super::docker::socket(ctx);
            container::serve(socket, name, &request, &mut writer, closed).await
        }
    };
    match result {
        Ok(Ended::Done) => {
            let _ = write_frame(&mut writer, &Frame::Exit(ExitStatus::Code(0))).await;
            let _ = writer.shutdown().await;
            ChannelOutcome {
                exit: Some(ExitStatus::Code(0)),
                error: None,
            }
        }
        Ok(Ended::ClientLeft) => {
            tracing::info!(
                source = source_name(&request.source),
                "logs reader stopped: the client closed the stream"
            );
            let _ = writer.shutdown().await;
            ChannelOutcome::default()
        }
        Err(LogsError::Unavailable(message)) => unavailable(&mut writer, message).await,
        Err(LogsError::Failed(message)) => {
            let _ = write_frame(&mut writer, &Frame::Error(message.clone())).await;
            let _ = write_frame(&mut writer, &Frame::Exit(ExitStatus::Code(1))).await;
            let _ = writer.shutdown().await;
            ChannelOutcome {
                exit: Some(ExitStatus::Code(1)),
                error: Some(message),
            }
        }
    }
}

fn source_name(source: &LogSource) -> String {
    match source {
        LogSource::Runtime => "runtime".to_owned(),
        LogSource::Unit { name } => format!("unit {name}"),
        LogSource::Container { name } => format!("container {name}"),
    }
}

/// Accepts the channel (after the source found what it needs) and gives the sink to write to.
pub async fn accepted(writer: &mut BoxWrite) -> Result<Sink<'_>, LogsError> {
    accept(writer)
        .await
        .map_err(|e| LogsError::Failed(format!("cannot accept the channel: {e}")))?;
    Ok(Sink {
        writer,
        buf: Vec::with_capacity(BATCH),
    })
}

/// Where a source writes its lines: JSON lines gathered into `Data` frames.
pub struct Sink<'a> {
    writer: &'a mut BoxWrite,
    buf: Vec<u8>,
}

impl Sink<'_> {
    /// Adds a line; sends a frame once [`BATCH`] bytes are gathered. Fails when the client is gone.
    pub async fn push(&mut self, line: &LogLine) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.buf, line).map_err(std::io::Error::other)?;
        self.buf.push(b'\n');
        if self.buf.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is gathered.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH)));
        write_frame(self.writer, &Frame::Data(data)).await?;
        self.writer.flush().await
    }
}

/// Notices when the client closes its side of the stream (end of stream or reset); anything it
/// sends before that is ignored.
pub struct ClientWatch {
    task: JoinHandle<()>,
    closed: watch::Receiver<bool>,
}

impl ClientWatch {
    /// Starts reading the client's side.
    pub fn start(mut reader: FrameReader<BoxRead>) -> Self {
        let (tx, closed) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok(Some(_)) = reader.next().await {}
            let _ = tx.send(true);
        });
        Self { task, closed }
    }

    /// Completes once the client has closed the stream.
    pub async fn closed(&mut self) {
        let _ = self.closed.wait_for(|c| *c).await;
    }
}

impl Drop for ClientWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests;
