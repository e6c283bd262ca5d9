//! The tunnel wire protocol, sans-IO.
//!
//! Two kinds of QUIC connection reach a relay, told apart by ALPN:
//!
//! - a **device tunnel** ([`ALPN_TUNNEL`]), dialled by the device. Its first stream, opened by the
//!   device, carries [`Control::TunnelHello`] with the device key; the relay answers
//!   [`Control::TunnelAccepted`] (or [`Control::Refused`]) and keeps the stream open as the
//!   tunnel's control stream. Every later stream is opened by the relay towards the device.
//! - a **client session** ([`ALPN_SESSION`]), dialled by the CLI. Its first stream carries
//!   [`Control::SessionOpen`] with a signed session token; the relay verifies it, opens a stream to
//!   the device and forwards the message; the device verifies the token again and answers
//!   [`Control::SessionAccepted`]. That stream stays open for the session's life: closing it
//!   ends the session. Each operation is then its own stream whose first frame is
//!   [`Control::OpenChannel`]; the relay splices it to a new stream on the device's tunnel.
//!
//! Every stream starts with control frames ([`frame::Frame::Control`], at most
//! [`frame::MAX_CONTROL`] bytes, JSON). What follows depends on the channel: typed frames for
//! exec and shell (data, stderr, resize, signal, exit — never control bytes mixed into the data),
//! raw bytes for TCP forwards, file frames for copies. UDP forwards use QUIC datagrams.
//!
//! In a fleet, a third kind, a **relay-to-relay link** ([`ALPN_RELAY_LINK`]), joins relays: the
//! relay a client reached forwards each of the session's streams to the relay holding the
//! device's tunnel, behind a [`Control::RelayRoute`] frame (the relay node's `fleet` module
//! dials and answers these links).
//!
//! # Layout
//!
//! - [`frame`]: frames and their codec.
//! - [`files`]: the copy and sync sub-protocol.
//! - [`datagram`]: the flow-datagram format of UDP forwards (flow id + payload).
//! - [`logs`], [`metrics`], [`serial`], [`status`], [`listing`]: the device operations beyond
//!   shell, exec, forwards and files, one channel kind each (docker and unix-socket forwards
//!   carry raw bytes and need no types of their own).

pub mod datagram;
pub mod files;
pub mod frame;
pub mod listing;
pub mod logs;
pub mod metrics;
pub mod serial;
pub mod status;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, SessionId};

pub use frame::{DecodeError, ExitStatus, Frame};

/// ALPN of device tunnels.
pub const ALPN_TUNNEL: &[u8] = b"m87-tunnel/1";
/// ALPN of client sessions.
pub const ALPN_SESSION: &[u8] = b"m87-session/1";
/// ALPN of relay-to-relay links (fleet mode).
pub const ALPN_RELAY_LINK: &[u8] = b"m87-relay-link/1";
/// How long a peer may take to send the first frame of a stream.
pub const HEADER_TIMEOUT_SECS: u64 = 10;
/// Most streams a peer may have open at once on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// A control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Device → relay: the device's key, on the tunnel's first stream.
    TunnelHello {
        /// The device API key (`m87d_…`).
        api_key: String,
        /// The agent's version.
        agent_version: String,
    },
    /// Relay → device: the tunnel is registered.
    TunnelAccepted {
        /// The device the key belongs to.
        device_id: DeviceId,
        /// The relay's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_id: Option<String>,
        /// The device's address as the relay sees it (after NAT), for `m87 <device> status`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        observed_addr: Option<String>,
    },
    /// Client → relay → device: open a session with this token.
    SessionOpen {
        /// The signed session token.
        token: String,
    },
    /// Device → relay → client: the session is open.
    SessionAccepted {
        /// Its id.
        session_id: SessionId,
    },
    /// Client → relay → device: first frame of an operation stream.
    OpenChannel {
        /// The session it belongs to.
        session_id: SessionId,
        /// What to do.
        channel: Channel,
    },
    /// Device → client: the channel is open; what the channel carries follows.
    ChannelAccepted {
        /// For UDP forwards: the flow id to put in front of each datagram.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow: Option<u32>,
    },
    /// Relay → relay: the first frame of a relay-to-relay link, proving the dialling relay
    /// knows the fleet's relay secret (the link's TLS already pins the answering relay's
    /// certificate).
    RelayHello {
        /// The dialling relay's id.
        relay_id: String,
        /// The fleet's shared relay secret.
        secret: String,
    },
    /// Relay → relay: the link is accepted.
    RelayAccepted {
        /// The answering relay's id.
        relay_id: String,
    },
    /// Relay → relay: the first frame of a stream on a link: splice the rest of this stream
    /// onto a new stream of this device's tunnel. The next frame is the client's own first
    /// frame ([`Control::SessionOpen`] or [`Control::OpenChannel`]), forwarded as is.
    RelayRoute {
        /// The device whose tunnel the answering relay holds.
        device_id: DeviceId,
    },
    /// Device → client, on an `ssh` channel right after `ChannelAccepted`: the device's SSH
    /// host key (OpenSSH public key line), so `m87 ssh-proxy` can write it to m87's own
    /// known_hosts before any SSH byte flows. Raw SSH bytes follow.
    SshHostKey {
        /// `ssh-ed25519 AAAA…`.
        public_key: String,
    },
    /// Anyone: refused, with a reason for the user.
    Refused {
        /// A stable code (`unauthenticated`, `token_expired`, `device_offline`, …).
        code: String,
        /// A sentence for the user.
        message: String,
    },
}

/// Terminal settings for a PTY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tty {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// `TERM` for the remote side.
    pub term: String,
}

/// What an operation stream does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Channel {
    /// Run a program (argv, no shell). Frames: client sends `Data`/`Eof` (stdin), `Resize`,
    /// `Signal`; device sends `Data` (stdout), `Stderr`, then `Exit`.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
        /// Run in a PTY of this size (stdout and stderr are then one stream).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tty: Option<Tty>,
    },
    /// An interactive login shell in a PTY; frames as for `Exec`.
    Shell {
        /// The terminal.
        tty: Tty,
    },
    /// A TCP connection from the device to `host:port`; after `ChannelAccepted` the stream
    /// carries raw bytes both ways.
    Forward {
        /// Host as the device resolves it.
        host: String,
        /// Port.
        port: u16,
    },
    /// A UDP flow from the device to `host:port`; datagrams carry the flow id (4 bytes, big
    /// endian) and the payload. The stream stays open for the flow's life.
    UdpForward {
        /// Host as the device resolves it.
        host: String,
        /// Port.
        port: u16,
    },
    /// File copy and sync (see [`files`]).
    Files(files::FileChannel),
    /// A connection to a unix socket on the device; after `ChannelAccepted` raw bytes both
    /// ways (a forward: granted as a target `{"path", "proto": "unix"}`).
    UnixForward {
        /// The socket's path on the device.
        path: String,
    },
    /// A connection to the device's Docker API socket (which one is the runtime's setting);
    /// after `ChannelAccepted` raw bytes both ways.
    Docker,
    /// Read a log (see [`logs`]).
    Logs(logs::LogsRequest),
    /// Live metrics samples (see [`metrics`]).
    Metrics {
        /// How often to send a sample (milliseconds).
        interval_ms: u32,
    },
    /// A serial port (see [`serial`]).
    Serial(serial::SerialSettings),
    /// The device's health report (see [`status`]).
    Status,
    /// A directory listing (see [`listing`]).
    List(listing::ListRequest),
    /// An SSH connection to the device's embedded SSH server: after `ChannelAccepted` and
    /// [`Control::SshHostKey`], raw SSH bytes both ways.
    Ssh {
        /// The login the SSH client asks for (`%r`), checked by the device's SSH server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
}

impl Channel {
    /// The operation a session token must allow for this channel.
    pub fn operation(&self) -> crate::token::Operation {
        use crate::token::Operation;
        match self {
            Channel::Exec { .. } => Operation::Exec,
            Channel::Shell { .. } => Operation::Shell,
            Channel::Forward { .. } | Channel::UdpForward { .. } | Channel::UnixForward { .. } => {
                Operation::Forward
            }
            Channel::Files(f) => f.operation(),
            Channel::Docker => Operation::Docker,
            Channel::Logs(_) => Operation::Logs,
            Channel::Metrics { .. } => Operation::Metrics,
            Channel::Serial(_) => Operation::Serial,
            Channel::Status => Operation::Status,
            Channel::List(_) => Operation::List,
            Channel::Ssh { .. } => Operation::Ssh,
        }
    }

    /// Whether the device's service answers `ChannelAccepted` (or `Refused`) itself, after
    /// checking what the channel needs (a socket, a port, a unit), rather than the session
    /// accepting it before the service starts.
    pub fn answers_itself(&self) -> bool {
        !matches!(
            self,
            Channel::Exec { .. }
                | Channel::Shell { .. }
                | Channel::Forward { .. }
                | Channel::Files(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Fuzz target for the control-message decoder: arbitrary bytes (and arbitrary JSON-ish
        /// text) never panic; whatever parses re-encodes and parses to the same message.
        #[test]
        fn control_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), text in "\\PC{0,200}") {
            for input in [bytes.as_slice(), text.as_bytes()] {
                if let Ok(m) = Frame::parse_control::<Control>(input) {
                    let f = Frame::control(&m);
                    let Frame::Control(p) = f else { panic!("not a control frame") };
                    prop_assert_eq!(Frame::parse_control::<Control>(&p).unwrap(), m);
                }
            }
        }
    }

    #[test]
    fn control_messages_round_trip_through_frames() {
        let msgs = vec![
            Control::TunnelHello {
                api_key: "m87d_x".into(),
                agent_version: "0.1".into(),
            },
            Control::SessionAccepted {
                session_id: SessionId::new(),
            },
            Control::OpenChannel {
                session_id: SessionId::new(),
                channel: Channel::Exec {
                    argv: vec!["ls".into(), "-l".into()],
                    tty: None,
                },
            },
            Control::OpenChannel {
                session_id: SessionId::new(),
                channel: Channel::Forward {
                    host: "127.0.0.1".into(),
                    port: 80,
                },
            },
            Control::ChannelAccepted { flow: Some(7) },
            Control::Refused {
                code: "token_expired".into(),
                message: "session token expired".into(),
            },
        ];
        for m in msgs {
            let f = Frame::control(&m);
            let Frame::Control(payload) = Frame::decode(&f.to_bytes()).unwrap().0 else {
                panic!()
            };
            assert_eq!(Frame::parse_control::<Control>(&payload).unwrap(), m);
        }
        assert!(Frame::parse_control::<Control>(br#"{"type":"nope"}"#).is_err());
        assert!(Frame::parse_control::<Control>(b"garbage").is_err());
    }
}
