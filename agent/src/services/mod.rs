//! The services behind each channel. Each takes the channel's request, a frame reader over what
//! the client sends and a writer towards the client, and returns how it ended. They know nothing
//! of QUIC, so tests drive them over `tokio::io::duplex`.
//!
//! - [`exec`]: run a program with pipes.
//! - [`shell`]: PTY sessions (login shell, `exec -t`).
//! - [`forward`]: TCP and UDP forwards.
//! - [`files`]: copy and sync.
//! - [`docker`]: the device's Docker (or Podman) API socket.
//! - [`logs`]: the runtime's log, a systemd unit's journal, a container's log.
//! - [`metrics`]: live samples, one sampler shared by every viewer.
//! - [`serial`]: serial ports.
//! - [`status`]: the health report.
//! - [`listing`]: directory listings.
//! - [`ssh`]: the embedded SSH server behind `m87 ssh-proxy` (OpenSSH's `ssh`, `scp`, `sftp`).
//!
//! Unix-socket forwards live in [`forward`] beside the TCP and UDP ones.

pub mod docker;
pub mod exec;
pub mod files;
pub mod forward;
pub mod listing;
pub mod logs;
pub mod metrics;
pub mod serial;
pub mod shell;
pub mod ssh;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use m87_events::admission::RefusalCode;
use m87_events::tunnel::{Channel, Control, ExitStatus};
use tokio::sync::mpsc;

use m87_transport::frames::{FrameReader, write_control};

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

/// The runtime's settings for the device operations (`m87 runtime run` options).
#[derive(Debug, Clone, Default)]
pub struct ServiceSettings {
    /// The Docker API socket offered to `m87 <device> docker` and container logs; absent:
    /// the first of the usual places that exists (see [`docker::socket`]).
    pub docker_socket: Option<PathBuf>,
    /// The runtime's own log file, read by `m87 <device> logs`; absent: the runtime keeps no
    /// log file and `logs` without `--unit`/`--container` says so.
    pub runtime_log: Option<PathBuf>,
}

/// The tunnel connection a channel arrived on, as the status report tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// The relay's address as the device dialled it.
    pub relay_addr: String,
    /// The relay's id, as it told it.
    pub relay_id: Option<String>,
    /// The device's address as the relay sees it (after NAT).
    pub observed_addr: Option<String>,
    /// When this tunnel connection was accepted.
    pub connected_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What services may use besides their stream.
#[derive(Clone)]
pub struct ServiceContext {
    /// The tunnel's datagrams.
    pub datagrams: Arc<dyn DatagramPort>,
    /// The session's terminal recorder, when its grant asks for a recording.
    pub recorder: Option<Arc<shell::record::Recorder>>,
    /// The runtime's settings.
    pub settings: Arc<ServiceSettings>,
    /// The metrics sampler every viewer of this runtime shares.
    pub metrics: Arc<metrics::Hub>,
    /// The tunnel connection the channel arrived on.
    pub link: Arc<LinkInfo>,
    /// Where a channel notes what it did inside it (an SSH session's commands and file
    /// paths), for the session's closing report; none outside a session.
    pub activity: Option<Arc<dyn Activity>>,
}

/// The session's record of what happens inside one channel (the commands an SSH connection
/// runs, the paths its SFTP reads and writes): each note becomes one entry of the session's
/// closing report, as a channel of its own does.
pub trait Activity: Send + Sync {
    /// Notes one action: a kind (`ssh_exec`, `sftp_write`, …) and its target.
    fn note(&self, kind: &'static str, target: String);
}

impl ServiceContext {
    /// A context with these datagrams and settings, no recorder, and a sampler of its own.
    pub fn new(datagrams: Arc<dyn DatagramPort>, settings: ServiceSettings) -> Self {
        Self {
            datagrams,
            recorder: None,
            settings: Arc::new(settings),
            metrics: Arc::default(),
            link: Arc::default(),
            activity: None,
        }
    }

    /// Notes an action in the session's report, when there is a session.
    pub fn note(&self, kind: &'static str, target: String) {
        if let Some(a) = &self.activity {
            a.note(kind, target);
        }
    }
}

/// Accepts a channel whose service answers itself ([`Channel::answers_itself`]).
pub async fn accept(writer: &mut BoxWrite) -> std::io::Result<()> {
    write_control(writer, &Control::ChannelAccepted { flow: None }).await
}

/// Refuses a channel whose service answers itself: what it needs is not on the device. The
/// message names what is missing and where; it is the channel's outcome too.
pub async fn unavailable(writer: &mut BoxWrite, message: String) -> ChannelOutcome {
    let refusal = Control::Refused {
        code: RefusalCode::Unavailable.as_str().to_owned(),
        message: message.clone(),
    };
    let _ = write_control(writer, &refusal).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(writer).await;
    ChannelOutcome {
        exit: None,
        error: Some(message),
    }
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext").finish_non_exhaustive()
    }
}

/// Serves one channel. The caller has already sent `ChannelAccepted` for every channel but those
/// that answer themselves ([`Channel::answers_itself`]: UDP forwards with their flow id, and
/// the operations that first check what they need on the device).
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
        Channel::UnixForward { path } => forward::unix(&path, reader, writer).await,
        Channel::Docker => docker::serve(reader, writer, ctx).await,
        Channel::Logs(request) => logs::serve(request, reader, writer, ctx).await,
        Channel::Metrics { interval_ms } => metrics::serve(interval_ms, reader, writer, ctx).await,
        Channel::Serial(settings) => serial::serve(settings, reader, writer).await,
        Channel::Status => status::serve(reader, writer, ctx).await,
        Channel::List(request) => listing::serve(request, reader, writer).await,
        Channel::Ssh { user } => ssh::serve(user, reader, writer, ctx).await,
    }
}
