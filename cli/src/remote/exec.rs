//! `m87 <device> exec`: runs a command, stdout and stderr to ours, its exit status as ours.

use std::io::Write;

use bytes::Bytes;
use m87_events::tunnel::{Channel, ExitStatus, Frame};
use tokio::io::AsyncReadExt;

use super::{ChannelOpener, OpenedChannel};
use m87_transport::frames::write_frame;

/// What the process ended with, as this CLI's exit code: the code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    }
}

/// Runs `argv` on the device; with `stdin`, streams our standard input to it. Returns the
/// remote exit status.
pub async fn run(
    opener: &dyn ChannelOpener,
    argv: Vec<String>,
    stdin: bool,
) -> anyhow::Result<ExitStatus> {
    let OpenedChannel {
        mut reader,
        mut writer,
        ..
    } = opener.open(Channel::Exec { argv, tty: None }).await?;
    let input = async move {
        if stdin {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if write_frame(&mut writer, &Frame::Data(Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                        {
                            return writer;
                        }
                    }
                }
            }
        }
        let _ = write_frame(&mut writer, &Frame::Eof).await;
        writer
    };
    let input = tokio::spawn(input);
    let mut stdout = std::io::stdout().lock();
    let mut status = None;
    let mut remote_error = None;
    loop {
        match reader.next().await {
            Ok(Some(Frame::Data(d))) => {
                stdout.write_all(&d)?;
                stdout.flush()?;
            }
            Ok(Some(Frame::Stderr(d))) => {
                let mut e = std::io::stderr().lock();
                e.write_all(&d)?;
                e.flush()?;
            }
            Ok(Some(Frame::Exit(s))) => status = Some(s),
            Ok(Some(Frame::Error(m))) => remote_error = Some(m),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => anyhow::bail!("the session broke: {e}"),
        }
    }
    input.abort();
    match (status, remote_error) {
        (Some(s), Some(m)) => {
            eprintln!("error: {m}");
            Ok(s)
        }
        (Some(s), None) => Ok(s),
        (None, Some(m)) => anyhow::bail!("{m}"),
        (None, None) => anyhow::bail!("the device closed the channel without an exit status"),
    }
}

/// What a command run by [`capture`] printed and how it ended.
#[derive(Debug)]
pub struct Captured {
    /// Its standard output, at most the cap.
    pub stdout: Vec<u8>,
    /// Its standard error, at most the cap.
    pub stderr: Vec<u8>,
    /// Bytes of standard output beyond the cap, read and dropped.
    pub stdout_dropped: u64,
    /// Bytes of standard error beyond the cap, read and dropped.
    pub stderr_dropped: u64,
    /// How it ended; `None` when it was still running at the deadline.
    pub status: Option<ExitStatus>,
    /// An error the device reported besides the exit status.
    pub error: Option<String>,
}

/// Appends `d` to `buf` up to `cap` bytes; counts the rest in `dropped`.
fn keep(buf: &mut Vec<u8>, dropped: &mut u64, d: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len()).min(d.len());
    buf.extend_from_slice(&d[..room]);
    *dropped += (d.len() - room) as u64;
}

/// Runs `argv` on the device for a program rather than a terminal (`m87 mcp`): sends `stdin`
/// then end-of-file, keeps at most `cap` bytes of each output stream, and stops waiting at
/// `deadline` (the caller then ends the session, which ends the command).
pub async fn capture(
    opener: &dyn ChannelOpener,
    argv: Vec<String>,
    stdin: Vec<u8>,
    cap: usize,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Captured> {
    let OpenedChannel {
        mut reader,
        mut writer,
        ..
    } = opener.open(Channel::Exec { argv, tty: None }).await?;
    let input = tokio::spawn(async move {
        for chunk in stdin.chunks(64 * 1024) {
            let data = Frame::Data(Bytes::copy_from_slice(chunk));
            if write_frame(&mut writer, &data).await.is_err() {
                return writer;
            }
        }
        let _ = write_frame(&mut writer, &Frame::Eof).await;
        writer
    });
    let mut c = Captured {
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_dropped: 0,
        stderr_dropped: 0,
        status: None,
        error: None,
    };
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, reader.next()).await else {
            break;
        };
        match frame {
            Ok(Some(Frame::Data(d))) => keep(&mut c.stdout, &mut c.stdout_dropped, &d, cap),
            Ok(Some(Frame::Stderr(d))) => keep(&mut c.stderr, &mut c.stderr_dropped, &d, cap),
            Ok(Some(Frame::Exit(s))) => c.status = Some(s),
            Ok(Some(Frame::Error(m))) => c.error = Some(m),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => anyhow::bail!("the session broke: {e}"),
        }
    }
    input.abort();
    if let (None, Some(m)) = (&c.status, &c.error) {
        anyhow::bail!("{m}");
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::testing::LocalOpener;

    #[tokio::test]
    async fn exit_codes_and_signals_come_back() {
        let opener = LocalOpener::default();
        let s = run(
            &opener,
            vec!["sh".into(), "-c".into(), "exit 3".into()],
            false,
        )
        .await
        .unwrap();
        assert_eq!(exit_code(s), 3);
        let s = run(
            &opener,
            vec!["sh".into(), "-c".into(), "kill -KILL $$".into()],
            false,
        )
        .await
        .unwrap();
        assert_eq!(exit_code(s), 137);
    }

    #[tokio::test]
    async fn captured_output_is_capped_and_stdin_arrives() {
        let opener = LocalOpener::default();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        let argv = vec![
            "sh".into(),
            "-c".into(),
            "cat; echo oops >&2; exit 4".into(),
        ];
        let c = capture(&opener, argv, b"0123456789".to_vec(), 4, deadline)
            .await
            .unwrap();
        assert_eq!(c.stdout, b"0123");
        assert_eq!(c.stdout_dropped, 6);
        assert_eq!(c.stderr, b"oops");
        assert_eq!(c.stderr_dropped, 1);
        assert_eq!(c.status.map(exit_code), Some(4));
    }

    #[tokio::test]
    async fn a_command_past_its_deadline_has_no_status() {
        let opener = LocalOpener::default();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        let argv = vec!["sh".into(), "-c".into(), "echo started; sleep 30".into()];
        let c = capture(&opener, argv, Vec::new(), 1024, deadline)
            .await
            .unwrap();
        assert_eq!(c.stdout, b"started\n");
        assert!(c.status.is_none());
    }
}
