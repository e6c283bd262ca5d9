//! PTY sessions: the login shell (`m87 <device> shell`) and `exec -t`.
//!
//! The program runs in a new session with the PTY as its controlling terminal, so job control,
//! Ctrl-C (a byte that the line discipline turns into SIGINT) and window-size changes behave as
//! on a local terminal; stdout and stderr are one stream, as on any terminal.
//!
//! - The master side is non-blocking and polled by the runtime ([`AsyncFd`]): no thread is ever
//!   parked on it, and dropping it at the end hangs the terminal up even when a background job
//!   still holds the other side open.
//! - The child is waited for on a blocking thread with `waitid(WNOWAIT)`: once it exits it stays
//!   a zombie — so neither its pid nor its process group id can be reused — until this service
//!   has stopped signalling it; only then is it reaped.
//! - After the child exits, what it wrote is drained from the master (until EIO, within
//!   [`DRAIN_IDLE`], [`DRAIN_MAX`] and [`DRAIN_MAX_BYTES`]) before the `Exit` frame is sent.

pub(crate) mod account;
pub mod record;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use bytes::{Buf, Bytes};
use m87_events::tunnel::{ExitStatus, Frame, Tty};
use portable_pty::{CommandBuilder, MasterPty, PtySize};
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};

use super::exec::signal_group;
use super::{BoxRead, BoxWrite, ChannelOutcome};
use account::{Account, term_name};
use m87_transport::frames::{FrameReader, write_frame};
use record::Recorder;

/// Size of each read from the PTY (and so the largest data frame sent).
const CHUNK: usize = 64 * 1024;
/// The size used when the client sends a zero dimension.
const DEFAULT_SIZE: (u16, u16) = (80, 24);
/// After the child exits: how long to wait for more output before concluding there is none.
const DRAIN_IDLE: Duration = Duration::from_millis(200);
/// After the child exits: the most time spent waiting for output, all waits together (a
/// background job may keep the terminal open and trickle output).
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// After the child exits: the most output still relayed. A terminal buffers a few tens of KiB;
/// more than this is a background job's, which could go on forever.
const DRAIN_MAX_BYTES: usize = 1 << 20;
/// When the client is gone: how long the program has between SIGHUP and SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(1);
/// How long to wait for the program to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Keystrokes buffered while the program does not read them; beyond this the client is not
/// read (backpressure through the stream).
const MAX_PENDING_INPUT: usize = 1 << 20;

/// The master side of the PTY, non-blocking, registered with the runtime.
type Master = AsyncFd<OwnedFd>;

/// Runs `argv` (or, with `None`, the user's login shell) in a PTY of `tty`'s size and relays it:
/// the client's `Data` frames are keystrokes, `Resize` resizes the PTY, `Signal` goes to the
/// terminal's foreground process group and `Eof` sends the terminal's EOF character. The PTY's
/// output comes back as `Data` frames, then `Exit`. If the client goes away first, the program
/// gets SIGHUP, then SIGKILL. With a `recorder`, the output, keystrokes and resizes are
/// recorded as they are relayed.
pub async fn run_pty(
    argv: Option<Vec<String>>,
    tty: Tty,
    mut reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    recorder: Option<&Recorder>,
) -> ChannelOutcome {
    let (master, mut child) = match spawn(argv, &tty) {
        Ok(spawned) => spawned,
        Err(e) => {
            let _ = write_frame(&mut writer, &Frame::Error(e.message.clone())).await;
            let _ = write_frame(&mut writer, &Frame::Exit(ExitStatus::Code(e.code))).await;
            let _ = writer.shutdown().await;
            return ChannelOutcome {
                exit: Some(ExitStatus::Code(e.code)),
                error: Some(e.message),
            };
        }
    };
    let pid = child.pid;
    if let Some(r) = recorder {
        let (cols, rows) = effective_size(&tty);
        let shell = Account::current().shell;
        r.start(cols, rows, term_name(&tty.term), shell.to_str());
    }
    let exit = {
        let input = pump_input(&mut reader, &master, pid, recorder);
        let output = pump_output(&master, &mut child, &mut writer, recorder);
        tokio::select! {
            status = output => status,
            () = input => None,
        }
    };
    if exit.is_none() {
        // The client is gone (or cannot be written to) before the program ended.
        child.hang_up(&master).await;
    }
    ChannelOutcome {
        exit,
        error: exit.is_none().then(|| "client disconnected".to_owned()),
    }
}

/// Why the program could not be started, with the exit code to report (as a shell would).
#[derive(Debug)]
struct SpawnError {
    code: i32,
    message: String,
}

/// Opens the PTY and starts the program in it.
fn spawn(argv: Option<Vec<String>>, tty: &Tty) -> Result<(Master, PtyChild), SpawnError> {
    let account = Account::current();
    let mut program = None;
    let mut cmd = match argv {
        None => {
            // portable-pty runs $SHELL with argv[0] = "-<name>": a login shell.
            let mut cmd = CommandBuilder::new_default_prog();
            cmd.env("SHELL", &account.shell);
            cmd
        }
        Some(argv) => {
            let Some(first) = argv.first() else {
                return Err(SpawnError {
                    code: 127,
                    message: "no command given".into(),
                });
            };
            program = Some(first.clone());
            CommandBuilder::from_argv(argv.into_iter().map(OsString::from).collect())
        }
    };
    cmd.env("TERM", term_name(&tty.term));
    cmd.env("HOME", &account.home);
    if let Some(name) = &account.name {
        for var in ["USER", "LOGNAME"] {
            if cmd.get_env(var).is_none() {
                cmd.env(var, name);
            }
        }
    }
    cmd.cwd(&account.home);

    let (cols, rows) = effective_size(tty);
    let cannot = |what: &str, e: &dyn std::fmt::Display| SpawnError {
        code: 126,
        message: format!("cannot {what}: {e}"),
    };
    let pair = portable_pty::native_pty_system()
        .openpty(PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| cannot("open a terminal", &e))?;
    // Register the master before starting anything, so no error path leaves a program running.
    let master = async_master(&*pair.master).map_err(|e| cannot("open a terminal", &e))?;
    let child = pair.slave.spawn_command(cmd).map_err(|e| {
        let message = match &program {
            Some(p) => format!("cannot run {p}: {e:#}"),
            None => format!("cannot start the shell {}: {e:#}", account.shell.display()),
        };
        let found = program
            .as_deref()
            .is_none_or(|p| program_exists(p, &account.home));
        SpawnError {
            code: if found { 126 } else { 127 },
            message,
        }
    })?;
    // The child holds the terminal side now; ours would keep the master from seeing EOF.
    drop(pair.slave);
    drop(pair.master);
    let Some(pid) = child.process_id() else {
        let mut child = child;
        let _ = child.kill();
        return Err(SpawnError {
            code: 126,
            message: "the program started without a process id".into(),
        });
    };
    Ok((master, PtyChild::watch(pid, child)))
}

/// The terminal's size: as the client asked, or the default when it sent a zero dimension.
fn effective_size(tty: &Tty) -> (u16, u16) {
    if tty.cols == 0 || tty.rows == 0 {
        DEFAULT_SIZE
    } else {
        (tty.cols, tty.rows)
    }
}

/// Whether `program` names an existing file, as `PATH` lookup would find it (for 127 vs 126).
fn program_exists(program: &str, cwd: &std::path::Path) -> bool {
    if program.contains('/') {
        return cwd.join(program).exists();
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// A non-blocking duplicate of the PTY master, registered with the runtime.
///
/// portable-pty offers the master only as a raw descriptor (or as blocking reader and writer
/// objects that would each park a thread, possibly forever when a background job keeps the
/// terminal open). An owned, registered descriptor lets the runtime poll it and lets the
/// service close it — hanging the terminal up — exactly when the session ends. These are the
/// only two `unsafe` operations of the PTY service.
fn async_master(master: &dyn MasterPty) -> io::Result<Master> {
    let raw = master
        .as_raw_fd()
        .ok_or_else(|| io::Error::other("the terminal has no file descriptor"))?;
    // SAFETY: `raw` is the descriptor owned by `master`, which is borrowed for this whole
    // function and so stays open while `borrowed` is used — only to duplicate it, here.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    let owned = rustix::io::fcntl_dupfd_cloexec(borrowed, 0)?;
    rustix::io::ioctl_fionbio(&owned, true)?;
    // SAFETY: an `OwnedFd` stays open and keeps returning the same descriptor until dropped,
    // and the `AsyncFd` takes ownership of it, so nothing else can close it meanwhile.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register(owned) };
    Ok(registered?)
}

/// Reads what is available from the master; `Ok(0)` once the terminal side is closed (EIO).
async fn read_master(master: &Master, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = master.readable().await?;
        match ready.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
        {
            Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                return Ok(0);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Writes some of `data` to the master once it accepts input.
async fn write_master(master: &Master, data: &[u8]) -> io::Result<usize> {
    loop {
        let mut ready = master.writable().await?;
        match ready.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// The terminal's foreground process group, if it has one.
fn foreground_group(master: &Master) -> Option<u32> {
    let pgrp = rustix::termios::tcgetpgrp(master.get_ref()).ok()?;
    u32::try_from(pgrp.as_raw_pid()).ok()
}

/// The bytes that end the program's input: the EOF character, when the terminal is in canonical
/// mode (in raw mode it would be an ordinary keystroke).
fn eof_input(master: &Master) -> Option<Bytes> {
    use rustix::termios::{LocalModes, SpecialCodeIndex};
    let termios = rustix::termios::tcgetattr(master.get_ref()).ok()?;
    let eof = termios.special_codes[SpecialCodeIndex::VEOF];
    (termios.local_modes.contains(LocalModes::ICANON) && eof != 0)
        .then(|| Bytes::copy_from_slice(&[eof]))
}

/// Client → PTY: keystrokes, resizes, signals. Returns when the client is gone.
async fn pump_input(
    reader: &mut FrameReader<BoxRead>,
    master: &Master,
    pid: u32,
    recorder: Option<&Recorder>,
) {
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let mut pending_len = 0usize;
    // Whether keystrokes still go to the terminal: not after `Eof` or a failed write.
    let mut accepting = true;
    loop {
        let next = pending.front().cloned().unwrap_or_default();
        tokio::select! {
            frame = reader.next(), if pending_len < MAX_PENDING_INPUT => match frame {
                Ok(Some(Frame::Data(d))) => {
                    if accepting && !d.is_empty() {
                        if let Some(r) = recorder {
                            r.input(&d);
                        }
                        pending_len += d.len();
                        pending.push_back(d);
                    }
                }
                Ok(Some(Frame::Eof)) => {
                    if accepting && let Some(eof) = eof_input(master) {
                        pending_len += eof.len();
                        pending.push_back(eof);
                    }
                    accepting = false;
                }
                Ok(Some(Frame::Resize { cols, rows })) => {
                    if cols > 0 && rows > 0 {
                        let size = rustix::termios::Winsize {
                            ws_row: rows,
                            ws_col: cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // The kernel sends SIGWINCH to the foreground group.
                        let _ = rustix::termios::tcsetwinsize(master.get_ref(), size);
                        if let Some(r) = recorder {
                            r.resize(cols, rows);
                        }
                    }
                }
                Ok(Some(Frame::Signal(sig))) => {
                    signal_group(foreground_group(master).unwrap_or(pid), sig);
                }
                Ok(Some(_)) => {}
                // The client went away (or sent garbage).
                Ok(None) | Err(_) => return,
            },
            written = write_master(master, &next), if !next.is_empty() => match written {
                Ok(n) => {
                    pending_len = pending_len.saturating_sub(n);
                    if let Some(front) = pending.front_mut() {
                        if n >= front.len() {
                            pending.pop_front();
                        } else {
                            front.advance(n);
                        }
                    }
                }
                Err(_) => {
                    // The terminal side is closed: the program is ending.
                    pending.clear();
                    pending_len = 0;
                    accepting = false;
                }
            },
        }
    }
}

/// PTY → client: output until the program exits and its output is drained, then `Exit`.
/// `None` when the client cannot be written to.
async fn pump_output(
    master: &Master,
    child: &mut PtyChild,
    writer: &mut BoxWrite,
    recorder: Option<&Recorder>,
) -> Option<ExitStatus> {
    let mut buf = vec![0u8; CHUNK];
    let mut eof = false;
    let status = loop {
        tokio::select! {
            // Once the program is gone, what is left is read below, within bounds.
            biased;
            status = child.wait() => break status,
            read = read_master(master, &mut buf), if !eof => match read {
                Ok(n) if n > 0 => {
                    if let Some(r) = recorder {
                        r.output(&buf[..n]);
                    }
                    let data = Frame::Data(Bytes::copy_from_slice(&buf[..n]));
                    write_frame(writer, &data).await.ok()?;
                }
                _ => eof = true,
            },
        }
    };
    // Output written just before the exit is still in the terminal. Read it until the terminal
    // side is closed (EIO) — or, since a job left in the background may hold it open, until
    // nothing comes for a while, the waits add up, or more arrives than a terminal buffers.
    // Time spent writing to a slow client does not count.
    let mut wait_budget = DRAIN_MAX;
    let mut byte_budget = DRAIN_MAX_BYTES;
    while !eof && byte_budget > 0 {
        let started = Instant::now();
        match timeout(DRAIN_IDLE.min(wait_budget), read_master(master, &mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                wait_budget = wait_budget.saturating_sub(started.elapsed());
                byte_budget = byte_budget.saturating_sub(n);
                if let Some(r) = recorder {
                    r.output(&buf[..n]);
                }
                let data = Frame::Data(Bytes::copy_from_slice(&buf[..n]));
                write_frame(writer, &data).await.ok()?;
            }
            _ => eof = true,
        }
    }
    write_frame(writer, &Frame::Exit(status)).await.ok()?;
    let _ = writer.shutdown().await;
    Some(status)
}

/// The program in the PTY: its pid, and its exit status once known.
///
/// Until this is dropped the program is not reaped, so signalling `pid` (and its group) cannot
/// hit an unrelated process. Dropping it before the program exited (the service's future was
/// cancelled) kills the program's process group.
struct PtyChild {
    pid: u32,
    status: Option<ExitStatus>,
    exited: oneshot::Receiver<ExitStatus>,
    /// Dropped last: lets the waiting thread reap the zombie.
    _reap: std::sync::mpsc::Sender<()>,
}

impl PtyChild {
    /// Starts waiting for `child` on a blocking thread.
    fn watch(pid: u32, mut child: Box<dyn portable_pty::Child + Send + Sync>) -> Self {
        let (exited_tx, exited) = oneshot::channel();
        let (reap, reap_rx) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let status = match wait_without_reaping(pid) {
                Ok(status) => status,
                // Cannot happen for our own child; reap and report what is known.
                Err(_) => match child.wait() {
                    Ok(s) => ExitStatus::Code(i32::try_from(s.exit_code()).unwrap_or(-1)),
                    Err(_) => ExitStatus::Code(-1),
                },
            };
            let _ = exited_tx.send(status);
            // Returns once the `PtyChild` is dropped.
            let _ = reap_rx.recv();
            let _ = child.wait();
        });
        Self {
            pid,
            status: None,
            exited,
            _reap: reap,
        }
    }

    /// Waits for the program to exit. Cancel-safe.
    async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = (&mut self.exited).await.unwrap_or(ExitStatus::Code(-1));
        self.status = Some(status);
        status
    }

    /// Ends the program because its client is gone: SIGHUP (and SIGCONT, for stopped jobs) to its
    /// group and the terminal's foreground group, then SIGKILL if it is still there.
    async fn hang_up(&mut self, master: &Master) {
        if self.status.is_some() {
            return;
        }
        let groups = [
            Some(self.pid),
            foreground_group(master).filter(|g| *g != self.pid),
        ];
        for group in groups.iter().flatten() {
            signal_group(*group, libc::SIGHUP);
            signal_group(*group, libc::SIGCONT);
        }
        if timeout(HANGUP_GRACE, self.wait()).await.is_ok() {
            return;
        }
        for group in groups.iter().flatten() {
            signal_group(*group, libc::SIGKILL);
        }
        let _ = timeout(KILL_WAIT, self.wait()).await;
    }
}

impl Drop for PtyChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            signal_group(self.pid, libc::SIGKILL);
        }
    }
}

/// Blocks until `pid` exits and returns how, leaving it a zombie (`waitid` with `WNOWAIT`).
fn wait_without_reaping(pid: u32) -> io::Result<ExitStatus> {
    use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        match waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Ok(Some(s)) => {
                return Ok(match (s.exit_status(), s.terminating_signal()) {
                    (Some(code), _) => ExitStatus::Code(code),
                    (None, Some(signal)) => ExitStatus::Signal(signal),
                    (None, None) => ExitStatus::Code(-1),
                });
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
