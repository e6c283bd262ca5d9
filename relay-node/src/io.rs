//! Reading the first frames of a stream within size and time limits, and close codes.

use std::time::Duration;

use bytes::BytesMut;
use m87_events::tunnel::{Control, Frame, HEADER_TIMEOUT_SECS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a peer may take to finish its handshake or send a stream's first frame.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(HEADER_TIMEOUT_SECS);

/// Close code: shutting down.
pub const CLOSE_SHUTDOWN: quinn::VarInt = quinn::VarInt::from_u32(0);
/// Close code: the peer broke the protocol (garbage, oversized or late header).
pub const CLOSE_PROTOCOL: quinn::VarInt = quinn::VarInt::from_u32(1);
/// Close code: authentication failed.
pub const CLOSE_UNAUTHENTICATED: quinn::VarInt = quinn::VarInt::from_u32(2);
/// Close code: a newer tunnel of the same device replaced this one.
pub const CLOSE_REPLACED: quinn::VarInt = quinn::VarInt::from_u32(3);
/// Close code: the session ended (device gone, or refused).
pub const CLOSE_SESSION_ENDED: quinn::VarInt = quinn::VarInt::from_u32(4);

/// Why a stream's first frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Not within [`HEADER_TIMEOUT`].
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

/// Reads exactly one control frame (no byte beyond it), within the time limit. Returns the
/// message and its raw encoding (to forward as is).
pub async fn read_control(
    recv: &mut quinn::RecvStream,
) -> Result<(Control, bytes::Bytes), HeaderError> {
    tokio::time::timeout(HEADER_TIMEOUT, async {
        let mut header = [0u8; m87_events::tunnel::frame::HEADER_LEN];
        AsyncReadExt::read_exact(recv, &mut header)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => HeaderError::Ended,
                _ => HeaderError::Io(e),
            })?;
        // Decoding the header alone tells the payload length and refuses oversized ones.
        let needed = match Frame::decode(&header) {
            Ok(_) => 0,
            Err(m87_events::tunnel::DecodeError::Incomplete { needed }) => needed,
            Err(e) => return Err(HeaderError::Invalid(e.to_string())),
        };
        let mut buf = BytesMut::with_capacity(header.len() + needed);
        buf.extend_from_slice(&header);
        buf.resize(header.len() + needed, 0);
        AsyncReadExt::read_exact(recv, &mut buf[header.len()..])
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => HeaderError::Ended,
                _ => HeaderError::Io(e),
            })?;
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

/// Writes one control message.
pub async fn write_control(send: &mut quinn::SendStream, message: &Control) -> std::io::Result<()> {
    AsyncWriteExt::write_all(send, &Frame::control(message).to_bytes()).await
}

/// Writes a refusal and finishes the stream.
pub async fn refuse(send: &mut quinn::SendStream, code: &str, message: &str) {
    let _ = write_control(
        send,
        &Control::Refused {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    )
    .await;
    let _ = send.finish();
}
