//! Frames over async byte streams (QUIC streams, or `tokio::io::duplex` in tests): a buffering
//! [`FrameReader`], writers for frames, control messages and refusals, and [`read_header`],
//! which reads exactly one control frame within a time limit (a relay reading a stream's first
//! frame before it decides where the stream goes).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use m87_events::tunnel::{Control, Frame, frame::DecodeError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why frames could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    /// The stream failed (with its causes: a closed connection says why the peer closed it).
    #[error("stream error: {}", with_causes(.0))]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a frame.
    #[error("peer sent an invalid frame: {0}")]
    Invalid(#[from] DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// A control frame was expected.
    #[error("expected a control message, got another frame")]
    UnexpectedFrame,
}

/// `e` and its causes, for people: a lost QUIC connection reads "connection lost: closed by
/// peer: <the peer's reason>".
fn with_causes(e: &std::io::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.get_ref().and_then(|inner| inner.source());
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads frames from a byte stream, buffering partial ones.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next frame, or `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameIoError> {
        loop {
            if let Some(frame) = Frame::decode_from(&mut self.buf)? {
                return Ok(Some(frame));
            }
            self.buf.reserve(64 * 1024);
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameIoError::Truncated)
                };
            }
        }
    }

    /// The next frame, which must be a control message.
    pub async fn control(&mut self) -> Result<Option<Control>, FrameIoError> {
        match self.next().await? {
            Some(Frame::Control(payload)) => Ok(Some(Frame::parse_control(&payload)?)),
            Some(_) => Err(FrameIoError::UnexpectedFrame),
            None => Ok(None),
        }
    }

    /// The stream and the bytes read past the last frame (for switching to raw bytes).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.to_bytes()).await
}

/// Writes one control message.
pub async fn write_control<W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &Control,
) -> std::io::Result<()> {
    write_frame(w, &Frame::control(message)).await
}

/// Writes a refusal.
pub async fn write_refusal<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    write_control(
        w,
        &Control::Refused {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    )
    .await
}

/// Why a stream's first frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Not within the time limit.
    #[error("timed out waiting for the stream header")]
    Timeout,
    /// The stream ended first.
    #[error("stream ended before its header")]
    Ended,
    /// The bytes are not a valid control frame.
    #[error("invalid stream header: {0}")]
    Invalid(String),
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

fn ended_or_io(e: std::io::Error) -> HeaderError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => HeaderError::Ended,
        _ => HeaderError::Io(e),
    }
}

/// Reads exactly one control frame (no byte beyond it) within `limit`. Returns the message and
/// its raw encoding (to forward as is). The frame header alone tells the payload length, so an
/// oversized frame is refused before its payload is read.
pub async fn read_header<R: AsyncRead + Unpin>(
    recv: &mut R,
    limit: Duration,
) -> Result<(Control, Bytes), HeaderError> {
    tokio::time::timeout(limit, async {
        let mut header = [0u8; m87_events::tunnel::frame::HEADER_LEN];
        recv.read_exact(&mut header).await.map_err(ended_or_io)?;
        let needed = match Frame::decode(&header) {
            Ok(_) => 0,
            Err(DecodeError::Incomplete { needed }) => needed,
            Err(e) => return Err(HeaderError::Invalid(e.to_string())),
        };
        let mut buf = BytesMut::with_capacity(header.len() + needed);
        buf.extend_from_slice(&header);
        buf.resize(header.len() + needed, 0);
        recv.read_exact(&mut buf[header.len()..])
            .await
            .map_err(ended_or_io)?;
        let raw = buf.freeze();
        match Frame::decode(&raw) {
            Ok((Frame::Control(payload), _)) => Frame::parse_control::<Control>(&payload)
                .map(|c| (c, raw.clone()))
                .map_err(|e| HeaderError::Invalid(e.to_string())),
            Ok(_) => Err(HeaderError::Invalid("expected a control frame".into())),
            Err(e) => Err(HeaderError::Invalid(e.to_string())),
        }
    })
    .await
    .map_err(|_| HeaderError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn frames_cross_a_byte_stream_in_pieces() {
        let (mut a, b) = tokio::io::duplex(7); // tiny buffer: frames arrive in pieces
        let writer = tokio::spawn(async move {
            for i in 0..50u8 {
                write_frame(&mut a, &Frame::Data(Bytes::from(vec![i; 100])))
                    .await
                    .unwrap();
            }
            write_frame(&mut a, &Frame::Eof).await.unwrap();
        });
        let mut r = FrameReader::new(b);
        for i in 0..50u8 {
            assert_eq!(
                r.next().await.unwrap(),
                Some(Frame::Data(Bytes::from(vec![i; 100])))
            );
        }
        assert_eq!(r.next().await.unwrap(), Some(Frame::Eof));
        writer.await.unwrap();
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0x7f, 0, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            FrameReader::new(b).next().await,
            Err(FrameIoError::Invalid(_))
        ));
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0x02, 0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        assert!(matches!(
            FrameReader::new(b).next().await,
            Err(FrameIoError::Truncated)
        ));
    }

    #[tokio::test]
    async fn a_header_is_read_exactly_and_nothing_beyond_it() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let hello = Control::Refused {
            code: "c".into(),
            message: "m".into(),
        };
        write_control(&mut a, &hello).await.unwrap();
        a.write_all(b"raw bytes after").await.unwrap();
        let (control, raw) = read_header(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(control, hello);
        assert_eq!(raw, Frame::control(&hello).to_bytes());
        let mut rest = [0u8; 15];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"raw bytes after");
    }

    #[tokio::test]
    async fn a_header_that_is_not_a_control_frame_ends_early_or_is_late_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &Frame::Eof).await.unwrap();
        assert!(matches!(
            read_header(&mut b, Duration::from_secs(5)).await,
            Err(HeaderError::Invalid(_))
        ));
        let (a, mut b) = tokio::io::duplex(1024);
        drop(a);
        assert!(matches!(
            read_header(&mut b, Duration::from_secs(5)).await,
            Err(HeaderError::Ended)
        ));
        let (_a, mut b) = tokio::io::duplex(1024);
        assert!(matches!(
            read_header(&mut b, Duration::from_millis(20)).await,
            Err(HeaderError::Timeout)
        ));
    }
}
