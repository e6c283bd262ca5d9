//! The programs of SSH session channels: `exec` without a terminal runs the command with pipes
//! (stdout as data, stderr as extended data, the exit status passed back); with a terminal, and
//! the interactive shell, run through the agent's PTY service ([`crate::services::shell`]),
//! whose frames are translated to and from SSH channel messages. `direct-tcpip` channels are
//! spliced with their TCP connection.

use std::process::Stdio;

use m87_events::tunnel::{ExitStatus, Frame, Tty};
use m87_transport::frames::{FrameReader, write_frame};
use russh::server::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::process::Command;

use crate::services::exec::{exit_status, signal_group};
use crate::services::shell::account::Account;
use crate::services::{BoxRead, ServiceContext};

/// Buffer between an SSH channel and the PTY service.
const PTY_PIPE: usize = 256 * 1024;

/// What a session channel asked to run.
pub(super) enum Request {
    /// A command line, run by the user's shell.
    Exec(String),
    /// The user's login shell.
    Shell,
}

/// A session channel's program and what the client asked for before it.
pub(super) struct Job {
    pub request: Request,
    pub tty: Option<Tty>,
    pub env: Vec<(String, String)>,
    pub account: Account,
    pub ctx: ServiceContext,
}

/// Runs a session channel's program to its end.
pub(super) async fn run(mut channel: Channel<Msg>, job: Job) {
    match &job.request {
        Request::Exec(cmd) => job.ctx.note("ssh_exec", super::short(cmd)),
        Request::Shell => job.ctx.note("ssh_shell", String::new()),
    }
    match (&job.request, job.tty.clone()) {
        (Request::Exec(cmd), None) => exec(&mut channel, cmd, &job).await,
        (_, tty) => {
            let tty = tty.unwrap_or(Tty {
                cols: 80,
                rows: 24,
                term: String::new(),
            });
            pty(channel, argv(&job), tty, &job.ctx).await;
        }
    }
}

/// The argv for the PTY service: the environment first (through `env`), then the shell.
fn argv(job: &Job) -> Option<Vec<String>> {
    let shell = job.account.shell.display().to_string();
    let tail = match &job.request {
        Request::Exec(cmd) => vec![shell, "-c".into(), cmd.clone()],
        Request::Shell if job.env.is_empty() => return None,
        Request::Shell => vec![shell, "-l".into()],
    };
    let mut argv = Vec::new();
    if !job.env.is_empty() {
        argv.push("env".to_owned());
        argv.extend(job.env.iter().map(|(k, v)| format!("{k}={v}")));
    }
    argv.extend(tail);
    Some(argv)
}

/// The number of an SSH signal name.
fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::TERM => libc::SIGTERM,
        Sig::USR1 => libc::SIGUSR1,
        Sig::Custom(_) => return None,
    })
}

/// Sends the program's end to the client and closes the channel.
async fn finish(channel: &Channel<Msg>, status: ExitStatus) {
    let code = match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    };
    let _ = channel
        .exit_status(u32::try_from(code).unwrap_or(255))
        .await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// `exec` without a terminal: the user's shell runs the command line in the home directory.
async fn exec(channel: &mut Channel<Msg>, command: &str, job: &Job) {
    let spawned = Command::new(&job.account.shell)
        .arg("-c")
        .arg(command)
        .current_dir(&job.account.home)
        .envs(job.env.iter().cloned())
        .env("HOME", &job.account.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let message = format!("m87: cannot run {}: {e}\r\n", job.account.shell.display());
            let mut err = channel.make_writer_ext(Some(1));
            let _ = err.write_all(message.as_bytes()).await;
            finish(channel, ExitStatus::Code(127)).await;
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    let out = child
        .stdout
        .take()
        .map(|o| copy_out(o, channel.make_writer()));
    let err = child
        .stderr
        .take()
        .map(|e| copy_out(e, channel.make_writer_ext(Some(1))));
    let stdin = child.stdin.take();
    let done = async move {
        for task in [out, err].into_iter().flatten() {
            let _ = task.await;
        }
        child.wait().await.ok().map(exit_status)
    };
    match exec_input(channel, stdin, pid, done).await {
        Some(status) => finish(channel, status).await,
        None => signal_group(pid, libc::SIGKILL),
    }
}

/// Copies a program's output to the channel, to its end.
fn copy_out(
    mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    mut to: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from, &mut to).await;
        let _ = to.flush().await;
    })
}

/// Relays the client's data, EOF and signals to the program until it ends (its status) or the
/// client goes away (`None`).
async fn exec_input(
    channel: &mut Channel<Msg>,
    mut stdin: Option<tokio::process::ChildStdin>,
    pid: u32,
    done: impl std::future::Future<Output = Option<ExitStatus>>,
) -> Option<ExitStatus> {
    tokio::pin!(done);
    loop {
        tokio::select! {
            status = &mut done => return status,
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(n) = signal_number(&signal) {
                        signal_group(pid, n);
                    }
                }
                Some(ChannelMsg::Close) | None => return None,
                Some(_) => {}
            },
        }
    }
}

/// The PTY shell (or `exec` with a terminal), through the PTY service.
async fn pty(mut channel: Channel<Msg>, argv: Option<Vec<String>>, tty: Tty, ctx: &ServiceContext) {
    let (ours, theirs) = tokio::io::duplex(PTY_PIPE);
    let (their_read, their_write) = tokio::io::split(theirs);
    let recorder = ctx.recorder.clone();
    let service = tokio::spawn(async move {
        crate::services::shell::run_pty(
            argv,
            tty,
            FrameReader::new(Box::new(their_read) as BoxRead),
            Box::new(their_write),
            recorder.as_deref(),
        )
        .await
    });
    let (our_read, mut our_write) = tokio::io::split(ours);
    let mut frames = FrameReader::new(Box::new(our_read) as BoxRead);
    let mut out = channel.make_writer();
    let mut exit = None;
    loop {
        tokio::select! {
            frame = frames.next() => match frame {
                Ok(Some(Frame::Data(d))) => {
                    if out.write_all(&d).await.is_err() {
                        break;
                    }
                }
                Ok(Some(Frame::Error(m))) => {
                    let _ = out.write_all(format!("m87: {m}\r\n").as_bytes()).await;
                }
                Ok(Some(Frame::Exit(status))) => exit = Some(status),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            msg = channel.wait() => {
                if !to_pty(msg, &mut our_write).await {
                    // The client is gone: closing our side makes the service hang up.
                    let _ = our_write.shutdown().await;
                    break;
                }
            }
        }
    }
    let _ = out.flush().await;
    drop(frames);
    match exit {
        Some(status) => finish(&channel, status).await,
        None => service.abort(),
    }
}

/// Passes one channel message to the PTY service; false when the client is gone.
async fn to_pty(msg: Option<ChannelMsg>, pty: &mut WriteHalf<DuplexStream>) -> bool {
    let frame = match msg {
        Some(ChannelMsg::Data { data }) => Frame::Data(bytes::Bytes::copy_from_slice(&data)),
        Some(ChannelMsg::Eof) => Frame::Eof,
        Some(ChannelMsg::WindowChange {
            col_width,
            row_height,
            ..
        }) => Frame::Resize {
            cols: u16::try_from(col_width).unwrap_or(u16::MAX),
            rows: u16::try_from(row_height).unwrap_or(u16::MAX),
        },
        Some(ChannelMsg::Signal { signal }) => match signal_number(&signal) {
            Some(n) => Frame::Signal(n),
            None => return true,
        },
        Some(ChannelMsg::Close) | None => return false,
        Some(_) => return true,
    };
    write_frame(pty, &frame).await.is_ok()
}

/// A `direct-tcpip` channel (`ssh -L`): bytes both ways with the TCP connection.
pub(super) async fn splice_tcp(channel: Channel<Msg>, mut stream: tokio::net::TcpStream) {
    let mut chan = channel.into_stream();
    let _ = tokio::io::copy_bidirectional(&mut chan, &mut stream).await;
}
