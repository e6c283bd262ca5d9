//! The frames of a files stream, with the errors a transfer can end in and byte counts.

use std::time::Duration;

use bytes::Bytes;
use m87_events::tunnel::Frame;
use m87_events::tunnel::files::FileMsg;
use tokio::io::AsyncWriteExt;

use m87_transport::frames::{FrameIoError, FrameReader, write_frame};
use m87_transport::stream::{BoxRead, BoxWrite};

/// How long to wait for the peer's error message after our write failed.
const ERROR_GRACE: Duration = Duration::from_secs(3);
/// Longest error sentence sent.
const MAX_ERROR_LEN: usize = 4096;

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The peer reported a failure (its sentence).
    #[error("{0}")]
    Remote(String),
    /// This side failed or refused (a file could not be read or written, a bad request).
    #[error("{0}")]
    Local(String),
    /// The peer sent something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The stream broke or ended early.
    #[error("the transfer was interrupted: {0}")]
    Stream(String),
}

impl TransferError {
    /// A local I/O failure on `path`.
    pub fn io(path: &std::path::Path, err: &std::io::Error) -> Self {
        TransferError::Local(format!("{}: {err}", path.display()))
    }

    /// A protocol violation.
    pub fn protocol(what: impl Into<String>) -> Self {
        TransferError::Protocol(what.into())
    }

    /// "expected X, got Y".
    pub fn unexpected(expected: &str, got: &FileMsg) -> Self {
        TransferError::Protocol(format!("expected {expected}, got {}", got.name()))
    }
}

impl From<FrameIoError> for TransferError {
    fn from(e: FrameIoError) -> Self {
        match e {
            FrameIoError::Invalid(_) | FrameIoError::UnexpectedFrame => {
                TransferError::Protocol(e.to_string())
            }
            FrameIoError::Io(_) | FrameIoError::Truncated => TransferError::Stream(e.to_string()),
        }
    }
}

/// What arrives on a files stream (errors become [`TransferError::Remote`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message.
    Msg(FileMsg),
    /// Content bytes.
    Data(Bytes),
    /// End of one file's contents.
    Eof,
}

/// Byte counts of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Content bytes sent (payloads of `Data` frames: file contents, delta literals).
    pub data_sent: u64,
    /// Content bytes received.
    pub data_received: u64,
    /// All bytes sent, frames and their headers included.
    pub frame_bytes_sent: u64,
    /// All bytes received, frames and their headers included.
    pub frame_bytes_received: u64,
}

/// Both directions of a files stream.
pub struct Wire {
    reader: FrameReader<BoxRead>,
    writer: BoxWrite,
    /// What went over it so far.
    pub stats: WireStats,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Wire {
    /// Wraps an accepted channel.
    pub fn new(reader: FrameReader<BoxRead>, writer: BoxWrite) -> Self {
        Self {
            reader,
            writer,
            stats: WireStats::default(),
        }
    }

    async fn send_frame(&mut self, frame: &Frame) -> Result<(), TransferError> {
        match write_frame(&mut self.writer, frame).await {
            Ok(()) => {
                self.stats.frame_bytes_sent += frame.encoded_len() as u64;
                Ok(())
            }
            Err(e) => Err(self.explain_write_failure(e).await),
        }
    }

    /// Our write failed: the peer probably closed the stream after sending an error; prefer
    /// its reason to ours.
    async fn explain_write_failure(&mut self, e: std::io::Error) -> TransferError {
        let read_error = async {
            loop {
                match self.reader.next().await {
                    Ok(Some(Frame::Error(m))) => return Some(m),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return None,
                }
            }
        };
        match tokio::time::timeout(ERROR_GRACE, read_error).await {
            Ok(Some(m)) => TransferError::Remote(m),
            _ => TransferError::Stream(format!("cannot send: {e}")),
        }
    }

    /// Sends a message.
    pub async fn send(&mut self, msg: &FileMsg) -> Result<(), TransferError> {
        let frame = msg
            .to_frame()
            .map_err(|e| TransferError::Local(format!("cannot send {}: {e}", msg.name())))?;
        self.send_frame(&frame).await
    }

    /// Sends content bytes (at most [`m87_events::tunnel::files::MAX_CHUNK`]).
    pub async fn send_data(&mut self, data: Bytes) -> Result<(), TransferError> {
        let n = data.len() as u64;
        self.send_frame(&Frame::Data(data)).await?;
        self.stats.data_sent += n;
        Ok(())
    }

    /// Ends one file's contents.
    pub async fn send_eof(&mut self) -> Result<(), TransferError> {
        self.send_frame(&Frame::Eof).await
    }

    /// The next message, data or end of file. A peer's `Error` becomes
    /// [`TransferError::Remote`]; the end of the stream here is an interruption.
    pub async fn recv(&mut self) -> Result<Incoming, TransferError> {
        let frame = self.reader.next().await?;
        if let Some(f) = &frame {
            self.stats.frame_bytes_received += f.encoded_len() as u64;
        }
        match frame {
            Some(Frame::Control(payload)) => Ok(Incoming::Msg(
                FileMsg::parse(&payload).map_err(|e| TransferError::Protocol(e.to_string()))?,
            )),
            Some(Frame::Data(d)) => {
                self.stats.data_received += d.len() as u64;
                Ok(Incoming::Data(d))
            }
            Some(Frame::Eof) => Ok(Incoming::Eof),
            Some(Frame::Error(m)) => Err(TransferError::Remote(m)),
            Some(_) => Err(TransferError::protocol(
                "unexpected frame type on a files stream",
            )),
            None => Err(TransferError::Stream("the peer closed the stream".into())),
        }
    }

    /// The next message (not data).
    pub async fn recv_msg(&mut self) -> Result<FileMsg, TransferError> {
        match self.recv().await? {
            Incoming::Msg(m) => Ok(m),
            Incoming::Data(_) => Err(TransferError::protocol("expected a message, got data")),
            Incoming::Eof => Err(TransferError::protocol(
                "expected a message, got end of file",
            )),
        }
    }

    /// Ends our side of the stream cleanly.
    pub async fn finish(&mut self) {
        let _ = self.writer.flush().await;
        let _ = self.writer.shutdown().await;
    }

    /// Tells the peer why we stop (unless the failure is theirs or the stream is gone), then
    /// ends our side.
    pub async fn fail(&mut self, err: &TransferError) {
        if matches!(err, TransferError::Local(_) | TransferError::Protocol(_)) {
            let mut message = err.to_string();
            if message.len() > MAX_ERROR_LEN {
                let mut cut = MAX_ERROR_LEN;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
            }
            let _ = write_frame(&mut self.writer, &Frame::Error(message)).await;
        }
        self.finish().await;
    }

    /// The stream's parts (tests drive the protocol by hand with them).
    pub fn into_parts(self) -> (FrameReader<BoxRead>, BoxWrite) {
        (self.reader, self.writer)
    }
}
