//! Frames: the unit of every tunnel stream, sans-IO.
//!
//! A frame is one type byte, a 4-byte big-endian payload length and the payload. Decoding tells
//! an incomplete buffer (read more) from an invalid one (close the stream): an unknown type, a
//! payload over the limit, or a payload that does not fit its type.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest payload of any frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest payload of a control frame (JSON messages, stream headers).
pub const MAX_CONTROL: usize = 16 * 1024;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 5;

/// How a remote process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON control message (see [`super::Control`]), at most [`MAX_CONTROL`] bytes.
    Control(Bytes),
    /// Payload bytes: stdin towards the device, stdout (or PTY output) towards the client.
    Data(Bytes),
    /// Standard error of a remote process.
    Stderr(Bytes),
    /// The sender will send no more `Data` (end of stdin or of a file).
    Eof,
    /// The terminal's new size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Deliver this signal number to the remote process (group).
    Signal(i32),
    /// The remote process ended.
    Exit(ExitStatus),
    /// The channel failed; a sentence for the user.
    Error(String),
}

const T_CONTROL: u8 = 0x01;
const T_DATA: u8 = 0x02;
const T_STDERR: u8 = 0x03;
const T_EOF: u8 = 0x04;
const T_RESIZE: u8 = 0x05;
const T_SIGNAL: u8 = 0x06;
const T_EXIT: u8 = 0x07;
const T_ERROR: u8 = 0x08;

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes are needed; not an error of the peer.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// At least this many more bytes.
        needed: usize,
    },
    /// The type byte is not a known frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The declared payload is larger than allowed for its type.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The limit for this type.
        max: usize,
    },
    /// The payload does not fit the frame type.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl DecodeError {
    /// Whether the bytes so far are fine and more are needed.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, DecodeError::Incomplete { .. })
    }
}

impl Frame {
    /// A control frame carrying `message` as JSON.
    pub fn control<T: serde::Serialize>(message: &T) -> Self {
        Frame::Control(Bytes::from(serde_json::to_vec(message).unwrap_or_default()))
    }

    /// Parses a control frame's JSON payload.
    pub fn parse_control<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
        serde_json::from_slice(payload).map_err(|_| DecodeError::Malformed("control"))
    }

    fn kind(&self) -> u8 {
        match self {
            Frame::Control(_) => T_CONTROL,
            Frame::Data(_) => T_DATA,
            Frame::Stderr(_) => T_STDERR,
            Frame::Eof => T_EOF,
            Frame::Resize { .. } => T_RESIZE,
            Frame::Signal(_) => T_SIGNAL,
            Frame::Exit(_) => T_EXIT,
            Frame::Error(_) => T_ERROR,
        }
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Control(b) | Frame::Data(b) | Frame::Stderr(b) => b.len(),
                Frame::Eof => 0,
                Frame::Resize { .. } => 4,
                Frame::Signal(_) => 4,
                Frame::Exit(_) => 5,
                Frame::Error(m) => m.len(),
            }
    }

    /// Appends the encoded frame to `dst`. Payloads over the limits are the caller's bug; they
    /// are encoded anyway and refused by the peer's decoder.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_u8(self.kind());
        let len = (self.encoded_len() - HEADER_LEN) as u32;
        dst.put_u32(len);
        match self {
            Frame::Control(b) | Frame::Data(b) | Frame::Stderr(b) => dst.put_slice(b),
            Frame::Eof => {}
            Frame::Resize { cols, rows } => {
                dst.put_u16(*cols);
                dst.put_u16(*rows);
            }
            Frame::Signal(n) => dst.put_i32(*n),
            Frame::Exit(ExitStatus::Code(c)) => {
                dst.put_u8(0);
                dst.put_i32(*c);
            }
            Frame::Exit(ExitStatus::Signal(s)) => {
                dst.put_u8(1);
                dst.put_i32(*s);
            }
            Frame::Error(m) => dst.put_slice(m.as_bytes()),
        }
    }

    /// The encoded frame as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes one frame from the start of `src`; returns it with the number of bytes used.
    pub fn decode(src: &[u8]) -> Result<(Frame, usize), DecodeError> {
        if src.len() < HEADER_LEN {
            return Err(DecodeError::Incomplete {
                needed: HEADER_LEN - src.len(),
            });
        }
        let kind = src[0];
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
        let max = match kind {
            T_CONTROL | T_ERROR => MAX_CONTROL,
            T_DATA | T_STDERR => MAX_PAYLOAD,
            T_EOF => 0,
            T_RESIZE | T_SIGNAL => 4,
            T_EXIT => 5,
            other => return Err(DecodeError::UnknownType(other)),
        };
        if len > max {
            return Err(DecodeError::TooLarge { len, max });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            return Err(DecodeError::Incomplete {
                needed: total - src.len(),
            });
        }
        let mut p = &src[HEADER_LEN..total];
        let frame = match kind {
            T_CONTROL => Frame::Control(Bytes::copy_from_slice(p)),
            T_DATA => Frame::Data(Bytes::copy_from_slice(p)),
            T_STDERR => Frame::Stderr(Bytes::copy_from_slice(p)),
            T_EOF => Frame::Eof,
            T_RESIZE if len == 4 => Frame::Resize {
                cols: p.get_u16(),
                rows: p.get_u16(),
            },
            T_RESIZE => return Err(DecodeError::Malformed("resize")),
            T_SIGNAL if len == 4 => Frame::Signal(p.get_i32()),
            T_SIGNAL => return Err(DecodeError::Malformed("signal")),
            T_EXIT if len == 5 => match p.get_u8() {
                0 => Frame::Exit(ExitStatus::Code(p.get_i32())),
                1 => Frame::Exit(ExitStatus::Signal(p.get_i32())),
                _ => return Err(DecodeError::Malformed("exit")),
            },
            T_EXIT => return Err(DecodeError::Malformed("exit")),
            _ => match std::str::from_utf8(p) {
                Ok(m) => Frame::Error(m.to_owned()),
                Err(_) => return Err(DecodeError::Malformed("error")),
            },
        };
        Ok((frame, total))
    }

    /// Decodes one frame from the front of `buf` and removes its bytes; `Ok(None)` when `buf`
    /// holds only part of a frame.
    pub fn decode_from(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match Frame::decode(buf) {
            Ok((frame, used)) => {
                buf.advance(used);
                Ok(Some(frame))
            }
            Err(e) if e.is_incomplete() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Control(Bytes::from_static(br#"{"type":"x"}"#)),
            Frame::Data(Bytes::from_static(b"hello")),
            Frame::Data(Bytes::new()),
            Frame::Stderr(Bytes::from_static(b"oops")),
            Frame::Eof,
            Frame::Resize {
                cols: 120,
                rows: 40,
            },
            Frame::Signal(15),
            Frame::Exit(ExitStatus::Code(3)),
            Frame::Exit(ExitStatus::Signal(9)),
            Frame::Error("no such file".into()),
        ]
    }

    #[test]
    fn round_trips_and_reports_incomplete() {
        for f in samples() {
            let bytes = f.to_bytes();
            assert_eq!(bytes.len(), f.encoded_len());
            assert_eq!(Frame::decode(&bytes).unwrap(), (f.clone(), bytes.len()));
            for cut in 0..bytes.len() {
                assert!(Frame::decode(&bytes[..cut]).unwrap_err().is_incomplete());
            }
        }
    }

    #[test]
    fn decode_from_consumes_a_stream_of_frames() {
        let mut buf = BytesMut::new();
        for f in samples() {
            f.encode(&mut buf);
        }
        let mut out = vec![];
        while let Some(f) = Frame::decode_from(&mut buf).unwrap() {
            out.push(f);
        }
        assert_eq!(out, samples());
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_frames_are_refused() {
        assert_eq!(
            Frame::decode(&[0x7f, 0, 0, 0, 0]).unwrap_err(),
            DecodeError::UnknownType(0x7f)
        );
        let big = (MAX_CONTROL as u32 + 1).to_be_bytes();
        assert!(matches!(
            Frame::decode(&[T_CONTROL, big[0], big[1], big[2], big[3]]).unwrap_err(),
            DecodeError::TooLarge { .. }
        ));
        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(
            Frame::decode(&[T_DATA, huge[0], huge[1], huge[2], huge[3]]).unwrap_err(),
            DecodeError::TooLarge { .. }
        ));
        assert_eq!(
            Frame::decode(&[T_RESIZE, 0, 0, 0, 2, 1, 1]).unwrap_err(),
            DecodeError::Malformed("resize")
        );
        assert_eq!(
            Frame::decode(&[T_EXIT, 0, 0, 0, 5, 7, 0, 0, 0, 0]).unwrap_err(),
            DecodeError::Malformed("exit")
        );
        assert_eq!(
            Frame::decode(&[T_ERROR, 0, 0, 0, 1, 0xff]).unwrap_err(),
            DecodeError::Malformed("error")
        );
        assert!(matches!(
            Frame::decode(&[T_EOF, 0, 0, 0, 1, 0]).unwrap_err(),
            DecodeError::TooLarge { .. }
        ));
    }

    proptest! {
        /// The fuzz target: arbitrary bytes never panic the decoder, and whatever decodes
        /// re-encodes to the same bytes.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((frame, used)) = Frame::decode(&bytes) {
                prop_assert_eq!(&frame.to_bytes()[..], &bytes[..used]);
            }
        }

        #[test]
        fn data_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..4096), cols in any::<u16>(), rows in any::<u16>(), code in any::<i32>()) {
            for f in [Frame::Data(Bytes::from(payload.clone())), Frame::Resize { cols, rows }, Frame::Exit(ExitStatus::Code(code))] {
                let b = f.to_bytes();
                prop_assert_eq!(Frame::decode(&b).unwrap().0, f);
            }
        }
    }
}
