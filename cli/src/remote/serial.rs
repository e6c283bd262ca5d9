//! `m87 <device> serial`, client side: the device's port as a local pseudo-terminal (`--link`)
//! or in this terminal.
//!
//! The pseudo-terminal is opened with rustix (`openpt`, `grantpt`, `unlockpt`); its slave side
//! is put in raw mode so bytes pass unchanged, and this process keeps both sides open for the
//! whole session, so tools such as picocom, minicom or screen may open and close it as often as
//! they like. In this terminal, the terminal is in raw mode (every key goes to the port) and
//! `Ctrl-]` quits, as in telnet.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::OptionalActions;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::OpenedChannel;
use super::shell::RawModeGuard;

/// The key that ends a session in this terminal: `Ctrl-]`.
pub const ESCAPE: u8 = 0x1d;

/// How a serial session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The user stopped it (Ctrl-C with `--link`, `Ctrl-]` in the terminal, end of input).
    ByUser,
    /// The device closed the port (it went away, or the runtime ended the channel).
    ByDevice,
}

/// A local pseudo-terminal: the master, which this process reads and writes, and the slave's
/// path, which other programs open.
pub struct Pty {
    master: AsyncFd<OwnedFd>,
    /// Held open so the master never sees a hang-up while no program has the slave open.
    _slave: OwnedFd,
    /// The slave's path (`/dev/pts/7`).
    pub path: PathBuf,
}

impl Pty {
    /// Opens a pseudo-terminal with its slave in raw mode.
    pub fn open() -> anyhow::Result<Self> {
        let failed = |what: &str, e: rustix::io::Errno| {
            anyhow::anyhow!("cannot create a local pseudo-terminal ({what}: {e})")
        };
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)
            .map_err(|e| failed("openpt", e))?;
        rustix::pty::grantpt(&master).map_err(|e| failed("grantpt", e))?;
        rustix::pty::unlockpt(&master).map_err(|e| failed("unlockpt", e))?;
        let name = rustix::pty::ptsname(&master, Vec::new()).map_err(|e| failed("ptsname", e))?;
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        let slave = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| failed("opening the slave", e))?;
        let mut raw = rustix::termios::tcgetattr(&slave).map_err(|e| failed("tcgetattr", e))?;
        raw.make_raw();
        rustix::termios::tcsetattr(&slave, OptionalActions::Now, &raw)
            .map_err(|e| failed("tcsetattr", e))?;
        let flags = rustix::fs::fcntl_getfl(&master).map_err(|e| failed("fcntl", e))?;
        rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK)
            .map_err(|e| failed("fcntl", e))?;
        // SAFETY: an `OwnedFd` stays open and keeps returning the same descriptor until
        // dropped, and the `AsyncFd` takes ownership of it, so nothing else can close it
        // meanwhile (as in the agent's PTY service).
        #[allow(unsafe_code)]
        let master = unsafe { AsyncFd::register(master) }
            .map_err(|e| anyhow::anyhow!("cannot watch the pseudo-terminal: {e}"))?;
        Ok(Self {
            master,
            _slave: slave,
            path,
        })
    }

    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| rustix::io::read(fd, &mut *buf).map_err(io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd, buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

/// A symlink to the pseudo-terminal, removed on drop.
#[derive(Debug)]
pub struct Link {
    path: PathBuf,
}

impl Link {
    /// Whether `path` may be used for the link: absent, or a symlink (replaced). Anything else
    /// is refused, so a file is never overwritten.
    pub fn check(path: &Path) -> anyhow::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_symlink() => anyhow::bail!(
                "{} exists and is not a symlink; choose another --link path",
                path.display()
            ),
            _ => Ok(()),
        }
    }

    /// Points `path` at `target`.
    pub fn create(path: &Path, target: &Path) -> anyhow::Result<Self> {
        Self::check(path)?;
        if std::fs::symlink_metadata(path).is_ok() {
            std::fs::remove_file(path)
                .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))?;
        }
        std::os::unix::fs::symlink(target, path)
            .map_err(|e| anyhow::anyhow!("cannot create the link {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Moves bytes between `pty` and the channel until Ctrl-C (or SIGTERM) or the device ends.
pub async fn run_pty(pty: &Pty, opened: OpenedChannel) -> anyhow::Result<Ended> {
    let (from_device, to_device) = raw_halves(opened);
    let to_pty = async {
        copy_to_pty(from_device, pty).await;
        Ended::ByDevice
    };
    let from_pty = async {
        copy_from_pty(pty, to_device).await;
        Ended::ByDevice
    };
    Ok(tokio::select! {
        ended = to_pty => ended,
        ended = from_pty => ended,
        () = interrupted() => Ended::ByUser,
    })
}

/// Connects this terminal (raw mode, restored on every exit) to the channel until `Ctrl-]`,
/// end of input, a termination signal or the device ending.
pub async fn run_terminal(opened: OpenedChannel) -> anyhow::Result<Ended> {
    let input = Arc::new(std::io::stdin());
    let raw = RawModeGuard::enable(Arc::clone(&input))?;
    let keys = super::shell::read_input(input);
    let (mut from_device, to_device) = raw_halves(opened);
    let output = async {
        let mut out = tokio::io::stdout();
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from_device.read(&mut buf).await {
            if n == 0 || out.write_all(&buf[..n]).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
        Ended::ByDevice
    };
    let ended = tokio::select! {
        ended = output => ended,
        ended = send_keys(keys, to_device) => ended,
        () = terminated() => Ended::ByUser,
    };
    drop(raw);
    Ok(ended)
}

/// Sends typed keys until `Ctrl-]` (the bytes before it are sent) or end of input.
async fn send_keys(
    mut keys: tokio::sync::mpsc::Receiver<Bytes>,
    mut to_device: impl AsyncWrite + Unpin,
) -> Ended {
    while let Some(chunk) = keys.recv().await {
        let (send, quit) = match chunk.iter().position(|&b| b == ESCAPE) {
            Some(i) => (&chunk[..i], true),
            None => (&chunk[..], false),
        };
        if to_device.write_all(send).await.is_err() || to_device.flush().await.is_err() {
            return Ended::ByDevice;
        }
        if quit {
            break;
        }
    }
    Ended::ByUser
}

/// The channel as raw byte streams (after `ChannelAccepted`, the serial channel carries no
/// frames): what the device sends (with what the frame reader had already buffered), and the
/// writer towards it.
fn raw_halves(opened: OpenedChannel) -> (impl AsyncRead + Unpin, impl AsyncWrite + Unpin) {
    let (inner, buffered) = opened.reader.into_parts();
    let from = std::io::Cursor::new(buffered.freeze()).chain(inner);
    (from, opened.writer)
}

async fn copy_to_pty(mut from_device: impl AsyncRead + Unpin, pty: &Pty) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from_device.read(&mut buf).await {
        if n == 0 || pty.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn copy_from_pty(pty: &Pty, mut to_device: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pty.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if to_device.write_all(&buf[..n]).await.is_err() || to_device.flush().await.is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Ctrl-C, SIGTERM or SIGHUP.
async fn interrupted() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated() => {}
    }
}

/// SIGTERM or SIGHUP (in raw mode Ctrl-C is a byte for the port, not a signal).
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn the_pty_passes_bytes_unchanged_and_survives_reopening() {
        let pty = Pty::open().unwrap();
        for round in 0..2 {
            // A program opens the slave, writes, reads, and closes it again.
            let mut slave = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&pty.path)
                .unwrap();
            use std::io::{Read, Write};
            slave.write_all(b"a\r\nb\x03\x1d").unwrap();
            let mut got = [0u8; 6];
            let mut n = 0;
            while n < got.len() {
                n += pty.read(&mut got[n..]).await.unwrap();
            }
            assert_eq!(&got, b"a\r\nb\x03\x1d", "round {round}");
            pty.write_all(b"\r\nok\n").await.unwrap();
            let mut back = [0u8; 5];
            slave.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"\r\nok\n", "round {round}");
        }
    }

    #[tokio::test]
    async fn the_agent_service_carries_bytes_between_the_channel_and_the_port() {
        use m87_events::tunnel::Channel;
        use m87_events::tunnel::serial::{Parity, SerialSettings};
        // The device's "port": the slave side of a pseudo-terminal; the test holds its master.
        let port = Pty::open().unwrap();
        let settings = SerialSettings {
            path: port.path.display().to_string(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        };
        let opener = crate::remote::testing::LocalOpener::default();
        let opened = crate::remote::ChannelOpener::open(&opener, Channel::Serial(settings))
            .await
            .unwrap();
        let (mut from_device, mut to_device) = raw_halves(opened);
        to_device.write_all(b"AT\r\x00\xff").await.unwrap();
        to_device.flush().await.unwrap();
        let mut got = [0u8; 5];
        let mut n = 0;
        while n < got.len() {
            n += port.read(&mut got[n..]).await.unwrap();
        }
        assert_eq!(&got, b"AT\r\x00\xff");
        port.write_all(b"OK\r\n").await.unwrap();
        let mut back = [0u8; 4];
        from_device.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"OK\r\n");
    }

    #[tokio::test]
    async fn a_missing_port_is_refused_by_the_agent_service() {
        use m87_events::tunnel::Channel;
        use m87_events::tunnel::serial::{Parity, SerialSettings};
        let settings = SerialSettings {
            path: "/dev/m87-missing".into(),
            baud: 115_200,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        };
        let opener = crate::remote::testing::LocalOpener::default();
        let Err(super::super::OpenError::Refused { code, message }) =
            crate::remote::ChannelOpener::open(&opener, Channel::Serial(settings)).await
        else {
            panic!("refused expected");
        };
        assert_eq!(code, "unavailable");
        assert!(message.contains("/dev/m87-missing"), "{message}");
    }

    #[test]
    fn a_link_never_replaces_a_file_and_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "keep").unwrap();
        let err = Link::create(&file, Path::new("/dev/null")).unwrap_err();
        assert!(err.to_string().contains("not a symlink"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
        let link = dir.path().join("tty");
        std::os::unix::fs::symlink("/old", &link).unwrap();
        let made = Link::create(&link, Path::new("/dev/null")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/null"));
        drop(made);
        assert!(std::fs::symlink_metadata(&link).is_err());
    }

    #[tokio::test]
    async fn ctrl_bracket_quits_after_sending_what_came_before_it() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Bytes::from_static(b"hello")).await.unwrap();
        tx.send(Bytes::from_static(b" x\x1dignored")).await.unwrap();
        let mut sent = Vec::new();
        assert_eq!(send_keys(rx, &mut sent).await, Ended::ByUser);
        assert_eq!(sent, b"hello x");
    }
}
