//! Reading the first frames of a stream within size and time limits (with
//! [`m87_transport::frames`]), refusals, and close codes.

use std::time::Duration;

use m87_events::tunnel::{Control, HEADER_TIMEOUT_SECS};

use m87_transport::frames::HeaderError;

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

/// Reads exactly one control frame (no byte beyond it), within [`HEADER_TIMEOUT`]. Returns the
/// message and its raw encoding (to forward as is).
pub async fn read_control(
    recv: &mut quinn::RecvStream,
) -> Result<(Control, bytes::Bytes), HeaderError> {
    m87_transport::frames::read_header(recv, HEADER_TIMEOUT).await
}

/// Writes a refusal and finishes the stream.
pub async fn refuse(send: &mut quinn::SendStream, code: &str, message: &str) {
    let _ = m87_transport::frames::write_refusal(send, code, message).await;
    let _ = send.finish();
}
