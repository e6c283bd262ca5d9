//! `m87 <device> shell` and `exec -t`: a remote PTY on the local terminal.
//!
//! The local terminal is put in raw mode for the session, so every keystroke — Ctrl-C, Ctrl-Z
//! and Ctrl-D included — is just bytes for the remote terminal, which interprets them; its
//! output is written here unchanged. Window-size changes (SIGWINCH) are sent as `Resize`
//! frames. The terminal's settings are restored however the session ends: a [`RawModeGuard`]
//! puts them back when dropped, which also happens while a panic unwinds.
//!
//! Standard input is read on a dedicated thread rather than through `tokio::io::stdin`: a read
//! parked on the terminal would otherwise keep the runtime from shutting down after the
//! session until the user pressed a key.

use std::convert::Infallible;
use std::os::fd::AsFd;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use m87_events::tunnel::{Channel, ExitStatus, Frame, Tty};
use m87_transport::frames::write_frame;
use rustix::termios::{OptionalActions, Termios};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::{ChannelOpener, OpenedChannel};

/// `TERM` for the remote side when ours is unset.
const DEFAULT_TERM: &str = "xterm-256color";
/// The size used when there is no terminal (or it reports none): columns, rows.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// Opens a login shell on the device in a PTY sized like the local terminal and connects it to
/// this terminal until the shell exits. Returns the shell's exit status.
pub async fn shell(opener: &dyn ChannelOpener) -> anyhow::Result<ExitStatus> {
    let term = std::env::var("TERM").ok();
    let mut stdout = tokio::io::stdout();
    let channel = |tty| Channel::Shell { tty };
    run_on_terminal(opener, channel, rustix::stdio::stdin(), term, &mut stdout).await
}

/// Runs `argv` on the device in a PTY (`m87 <device> exec -t`) connected to this terminal.
/// Returns the program's exit status.
pub async fn exec_tty(opener: &dyn ChannelOpener, argv: Vec<String>) -> anyhow::Result<ExitStatus> {
    let term = std::env::var("TERM").ok();
    let mut stdout = tokio::io::stdout();
    let channel = |tty| Channel::Exec {
        argv,
        tty: Some(tty),
    };
    run_on_terminal(opener, channel, rustix::stdio::stdin(), term, &mut stdout).await
}

/// Opens the channel `channel` makes for a PTY like the terminal on `input` (with `term` as
/// `TERM`), and connects them: `input` (in raw mode, if it is a terminal) to the remote PTY,
/// its output to `output`, until the remote program exits or SIGTERM/SIGHUP arrives.
async fn run_on_terminal<F>(
    opener: &dyn ChannelOpener,
    channel: impl FnOnce(Tty) -> Channel,
    input: F,
    term: Option<String>,
    output: &mut (dyn AsyncWrite + Unpin + Send),
) -> anyhow::Result<ExitStatus>
where
    F: AsFd + Send + Sync + 'static,
{
    let input = Arc::new(input);
    let terminal = rustix::termios::isatty(&input);
    let opened = opener.open(channel(local_tty(&input, term))).await?;

    let raw = RawModeGuard::enable(Arc::clone(&input))?;
    let keys = read_input(Arc::clone(&input));
    let resizes = if terminal {
        watch_window_size(input)
    } else {
        mpsc::channel(1).1
    };
    let ended = tokio::select! {
        ended = relay(opened, keys, resizes, output) => ended,
        signal = termination() => Err(anyhow::anyhow!("interrupted by signal {signal}")),
    };
    // Back to the normal terminal before anything else is printed.
    drop(raw);
    let Ended { status, error } = ended?;
    match (status, error) {
        (Some(s), Some(m)) => {
            eprintln!("error: {m}");
            Ok(s)
        }
        (Some(s), None) => Ok(s),
        (None, Some(m)) => anyhow::bail!("{m}"),
        (None, None) => anyhow::bail!("the device closed the terminal without an exit status"),
    }
}

/// The PTY to ask for: the size of the terminal on `fd` (80x24 if it is not one) and `term`
/// (from `$TERM`; [`DEFAULT_TERM`] if unset).
fn local_tty(fd: impl AsFd, term: Option<String>) -> Tty {
    let (cols, rows) = if rustix::termios::isatty(&fd) {
        window_size(&fd).unwrap_or(DEFAULT_SIZE)
    } else {
        DEFAULT_SIZE
    };
    Tty {
        cols,
        rows,
        term: term
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_TERM.to_owned()),
    }
}

/// The size of the terminal on `fd` (columns, rows), unless it is not a terminal or reports
/// no size.
fn window_size(fd: impl AsFd) -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(fd).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// The local terminal in raw mode; its previous settings are restored on drop (including
/// while a panic unwinds). On something that is not a terminal it does nothing.
pub struct RawModeGuard<F: AsFd> {
    fd: F,
    saved: Option<Termios>,
}

impl<F: AsFd> RawModeGuard<F> {
    /// Puts the terminal on `fd` in raw mode: no echo, no line editing, no signals from keys,
    /// no output processing. Does nothing (and succeeds) when `fd` is not a terminal.
    pub fn enable(fd: F) -> anyhow::Result<Self> {
        if !rustix::termios::isatty(&fd) {
            return Ok(Self { fd, saved: None });
        }
        let saved = rustix::termios::tcgetattr(&fd)
            .map_err(|e| anyhow::anyhow!("cannot read the terminal's settings: {e}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&fd, OptionalActions::Now, &raw)
            .map_err(|e| anyhow::anyhow!("cannot put the terminal in raw mode: {e}"))?;
        Ok(Self {
            fd,
            saved: Some(saved),
        })
    }

    /// Whether raw mode is on (that is, `fd` is a terminal).
    #[cfg(test)]
    pub fn is_active(&self) -> bool {
        self.saved.is_some()
    }
}

impl<F: AsFd> Drop for RawModeGuard<F> {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            let _ = rustix::termios::tcsetattr(&self.fd, OptionalActions::Now, &saved);
        }
    }
}

/// What is typed on `input` (our standard input), chunk by chunk, read on a thread of its own;
/// the channel closes at end of input. The thread ends then, or at the first chunk after the
/// receiver is gone: a read parked on the terminal outlives the session, harmlessly, since
/// nothing waits for it.
pub(crate) fn read_input<F: AsFd + Send + Sync + 'static>(input: Arc<F>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(16);
    let reader = move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rustix::io::read(&input, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        return;
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                // Left non-blocking by someone else: poll it gently.
                Err(rustix::io::Errno::AGAIN) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
    };
    // If no thread can be started, the receiver just sees end of input.
    let _ = std::thread::Builder::new()
        .name("m87-stdin".into())
        .spawn(reader);
    rx
}

/// The size of the terminal on `fd` each time the window changes (SIGWINCH). The watching task
/// ends when the receiver is dropped.
fn watch_window_size<F: AsFd + Send + Sync + 'static>(fd: Arc<F>) -> mpsc::Receiver<(u16, u16)> {
    let (tx, rx) = mpsc::channel(4);
    if let Ok(mut winch) = signal(SignalKind::window_change()) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    got = winch.recv() => {
                        if got.is_none() {
                            return;
                        }
                        if let Some(size) = window_size(&fd)
                            && tx.send(size).await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
    rx
}

/// The number of the first of SIGTERM or SIGHUP to arrive (never, if they cannot be watched).
async fn termination() -> i32 {
    let watch = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
        kind.as_raw_value()
    };
    tokio::select! {
        n = watch(SignalKind::terminate()) => n,
        n = watch(SignalKind::hangup()) => n,
    }
}

/// How the session ended.
#[derive(Debug, Default)]
struct Ended {
    /// The remote program's exit status.
    status: Option<ExitStatus>,
    /// A message from the device.
    error: Option<String>,
}

/// Relays a PTY channel: `input` chunks become `Data` frames (its end an `Eof` frame),
/// `resizes` become `Resize` frames, and the device's `Data` is written to `output`. Ends at
/// the device's `Exit` frame or the end of the channel.
async fn relay(
    opened: OpenedChannel,
    mut input: mpsc::Receiver<Bytes>,
    mut resizes: mpsc::Receiver<(u16, u16)>,
    output: &mut (dyn AsyncWrite + Unpin + Send),
) -> anyhow::Result<Ended> {
    let OpenedChannel {
        mut reader,
        mut writer,
        ..
    } = opened;
    // Keyboard → device. It never finishes on its own: the writer must stay open (closing it
    // tells the device we are gone) until the device ends the session.
    let to_device = async {
        let (mut input_open, mut resizes_open) = (true, true);
        while input_open || resizes_open {
            let frame = tokio::select! {
                // A resize queued before keystrokes applies to them.
                biased;
                size = resizes.recv(), if resizes_open => match size {
                    Some((cols, rows)) => Frame::Resize { cols, rows },
                    None => {
                        resizes_open = false;
                        continue;
                    }
                },
                chunk = input.recv(), if input_open => match chunk {
                    Some(data) => Frame::Data(data),
                    None => {
                        input_open = false;
                        Frame::Eof
                    }
                },
            };
            if write_frame(&mut writer, &frame).await.is_err() {
                // The device is gone; the other side notices the end of the channel.
                break;
            }
        }
        std::future::pending::<Infallible>().await
    };
    // Device → screen.
    const SCREEN: &str = "cannot write the remote terminal's output";
    let from_device = async {
        let mut ended = Ended::default();
        loop {
            match reader.next().await {
                Ok(Some(Frame::Data(d))) => {
                    output.write_all(&d).await.context(SCREEN)?;
                    output.flush().await.context(SCREEN)?;
                }
                Ok(Some(Frame::Stderr(d))) => {
                    let mut stderr = tokio::io::stderr();
                    stderr.write_all(&d).await.context(SCREEN)?;
                    stderr.flush().await.context(SCREEN)?;
                }
                Ok(Some(Frame::Exit(s))) => {
                    ended.status = Some(s);
                    return Ok(ended);
                }
                Ok(Some(Frame::Error(m))) => ended.error = Some(m),
                Ok(Some(_)) => {}
                Ok(None) => return Ok(ended),
                Err(e) => anyhow::bail!("the session broke: {e}"),
            }
        }
    };
    tokio::select! {
        ended = from_device => ended,
        never = to_device => match never {},
    }
}

#[cfg(test)]
mod tests;
