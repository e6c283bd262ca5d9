//! Frames over async byte streams (QUIC streams, or `tokio::io::duplex` in tests).

use bytes::BytesMut;
use m87_events::tunnel::{Control, Frame, frame::DecodeError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why frames could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    /// The stream failed.
    #[error("stream error: {0}")]
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
}
