//! Boxed stream halves (a QUIC stream, or `tokio::io::duplex` in tests) and the byte splice a
//! forward uses once its channel has switched from frames to raw bytes.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::frames::FrameReader;

/// A boxed receive side.
pub type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
/// A boxed send side.
pub type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// Size of each direction's buffer when splicing a connection with a channel.
pub const SPLICE_BUFFER: usize = 128 * 1024;

/// Splices a byte stream with a channel that has switched to raw bytes: what `reader` already
/// buffered goes first, then both directions are copied with [`SPLICE_BUFFER`]-sized buffers,
/// passing a half-close from either side on to the other. Returns the bytes copied from
/// `stream` to the channel and from the channel to `stream`.
pub async fn splice<S>(
    stream: &mut S,
    reader: FrameReader<BoxRead>,
    writer: BoxWrite,
) -> io::Result<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (inner, buffered) = reader.into_parts();
    // Copy the leftover out so the reader's large buffer is freed.
    let leftover = io::Cursor::new(Bytes::copy_from_slice(&buffered));
    drop(buffered);
    let mut channel = tokio::io::join(leftover.chain(inner), writer);
    tokio::io::copy_bidirectional_with_sizes(stream, &mut channel, SPLICE_BUFFER, SPLICE_BUFFER)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::write_frame;
    use m87_events::tunnel::Frame;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn bytes_buffered_behind_the_last_frame_come_first_and_half_closes_pass() {
        // The channel: the peer sent a frame and then raw bytes; the reader buffered them all.
        let (mut peer, channel) = tokio::io::duplex(1024);
        let (channel_read, channel_write) = tokio::io::split(channel);
        write_frame(&mut peer, &Frame::Eof).await.unwrap();
        peer.write_all(b"early ").await.unwrap();
        let mut reader = FrameReader::new(Box::new(channel_read) as BoxRead);
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Eof));
        peer.write_all(b"late").await.unwrap();
        peer.shutdown().await.unwrap();

        let (mut local, mut target) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            splice(&mut local, reader, Box::new(channel_write) as BoxWrite).await
        });
        let mut got = Vec::new();
        target.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early late");
        target.write_all(b"answer").await.unwrap();
        target.shutdown().await.unwrap();
        let mut back = Vec::new();
        peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
        assert_eq!(task.await.unwrap().unwrap(), (6, 10));
    }
}
