//! The services behind each channel. Each takes the channel's request, a frame reader over what
//! the client sends and a writer towards the client, and returns how it ended. They know nothing
//! of QUIC, so tests drive them over `tokio::io::duplex`.
//!
//! - [`exec`]: run a program with pipes.
//! - [`shell`]: PTY sessions (login shell, `exec -t`).
//! - [`forward`]: TCP and UDP forwards.
//! - [`files`]: copy and sync.

pub mod exec;
pub mod files;
pub mod forward;
pub mod shell;

use std::sync::Arc;

use bytes::Bytes;
use m87_events::tunnel::{Channel, ExitStatus};
use tokio::sync::mpsc;

use m87_transport::frames::FrameReader;

pub use m87_transport::stream::{BoxRead, BoxWrite};

/// How a channel ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelOutcome {
    /// The remote process's end, for exec and shell.
    pub exit: Option<ExitStatus>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// QUIC datagrams of the tunnel, routed by flow id (UDP forwards).
pub trait DatagramPort: Send + Sync {
    /// Allocates a flow; datagrams for it arrive on the receiver (payload without the flow id).
    fn open_flow(&self) -> (u32, mpsc::Receiver<Bytes>);
    /// Sends a payload on a flow.
    fn send(&self, flow: u32, payload: Bytes) -> Result<(), String>;
    /// Releases a flow.
    fn close_flow(&self, flow: u32);
}

/// What services may use besides their stream.
#[derive(Clone)]
pub struct ServiceContext {
    /// The tunnel's datagrams.
    pub datagrams: Arc<dyn DatagramPort>,
    /// The session's terminal recorder, when its grant asks for a recording.
    pub recorder: Option<Arc<shell::record::Recorder>>,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext").finish_non_exhaustive()
    }
}

/// Serves one accepted channel. The caller has already sent `ChannelAccepted` for every channel
/// but UDP forwards (which answer with their flow id themselves).
pub async fn serve(
    channel: Channel,
    reader: FrameReader<BoxRead>,
    writer: BoxWrite,
    ctx: &ServiceContext,
) -> ChannelOutcome {
    match channel {
        Channel::Exec { argv, tty: None } => exec::run(argv, reader, writer).await,
        Channel::Exec {
            argv,
            tty: Some(tty),
        } => shell::run_pty(Some(argv), tty, reader, writer, ctx.recorder.as_deref()).await,
        Channel::Shell { tty } => {
            shell::run_pty(None, tty, reader, writer, ctx.recorder.as_deref()).await
        }
        Channel::Forward { host, port } => forward::tcp(&host, port, reader, writer).await,
        Channel::UdpForward { host, port } => forward::udp(&host, port, reader, writer, ctx).await,
        Channel::Files(op) => files::serve(op, reader, writer).await,
    }
}
