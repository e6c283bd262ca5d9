//! The client side of remote operations: a session on a device, and channels opened in it.
//!
//! - [`exec`]: `m87 <device> exec`.
//! - [`shell`]: `m87 <device> shell` (and `exec -t`).
//! - [`forward`]: `m87 <device> forward`.
//! - [`cp`] and [`sync`]: `m87 cp`, `m87 sync`.
//! - [`serial`]: `m87 <device> serial` (a local pseudo-terminal, or this terminal).

pub mod cp;
pub mod exec;
pub mod forward;
pub mod serial;
pub mod shell;
pub mod sync;

use async_trait::async_trait;
use bytes::Bytes;
use m87_events::tunnel::Channel;
use m87_transport::frames::FrameReader;
use m87_transport::stream::{BoxRead, BoxWrite};
use tokio::sync::mpsc;

/// An accepted channel: frames from the device, a writer towards it.
pub struct OpenedChannel {
    /// What the device sends.
    pub reader: FrameReader<BoxRead>,
    /// Towards the device.
    pub writer: BoxWrite,
    /// For UDP forwards: the flow id the device assigned.
    pub flow: Option<u32>,
}

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The device (or relay) refused it.
    #[error("{message}")]
    Refused {
        /// Stable code.
        code: String,
        /// For the user.
        message: String,
    },
    /// The session broke.
    #[error("session lost: {0}")]
    Lost(String),
}

/// Opens channels in an established session. The real one runs over QUIC through the relay;
/// tests use one that runs the agent's services over in-memory pipes.
#[async_trait]
pub trait ChannelOpener: Send + Sync {
    /// Opens one channel and waits for the device to accept it.
    async fn open(&self, channel: Channel) -> Result<OpenedChannel, OpenError>;
    /// Sends a UDP datagram on a flow.
    fn send_datagram(&self, flow: u32, payload: Bytes) -> Result<(), OpenError>;
    /// Datagrams arriving for `flow`.
    fn datagrams(&self, flow: u32) -> mpsc::Receiver<Bytes>;
}

#[cfg(test)]
pub mod testing;
