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
}
