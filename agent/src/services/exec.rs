//! `exec` without a TTY: the program runs with pipes; stdout and stderr travel as separate frame
//! kinds, each in order; the exit code or signal ends the channel.

use std::process::Stdio;

use bytes::Bytes;
use m87_events::tunnel::{ExitStatus, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::{BoxRead, ChannelOutcome};
use m87_transport::frames::{FrameReader, write_frame};

/// Size of each output read (and so the largest data frame sent).
const CHUNK: usize = 64 * 1024;

/// Sends a signal to a process group.
pub fn signal_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes two integers and touches no memory; a stale pid gets ESRCH.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// Turns a process's status into the wire form.
pub fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(sig)) => ExitStatus::Signal(sig),
        (None, None) => ExitStatus::Code(-1),
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, tx: mpsc::Sender<Frame>, stderr: bool) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let data = Bytes::copy_from_slice(&buf[..n]);
                let frame = if stderr {
                    Frame::Stderr(data)
                } else {
                    Frame::Data(data)
                };
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs `argv` and relays it over the channel.
pub async fn run(
    argv: Vec<String>,
    mut reader: FrameReader<BoxRead>,
    mut writer: impl AsyncWrite + Unpin + Send,
) -> ChannelOutcome {
    let Some((program, args)) = argv.split_first() else {
        let _ = write_frame(&mut writer, &Frame::Error("no command given".into())).await;
        let _ = write_frame(&mut writer, &Frame::Exit(ExitStatus::Code(127))).await;
        return ChannelOutcome {
            exit: Some(ExitStatus::Code(127)),
            error: Some("no command given".into()),
        };
    };
    let spawned = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let message = format!("cannot run {program}: {e}");
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let _ = write_frame(&mut writer, &Frame::Error(message.clone())).await;
            let _ = write_frame(&mut writer, &Frame::Exit(ExitStatus::Code(code))).await;
            let _ = writer.shutdown().await;
            return ChannelOutcome {
                exit: Some(ExitStatus::Code(code)),
                error: Some(message),
            };
        }
    };
    let pid = child.id().unwrap_or(0);
    let (tx, mut rx) = mpsc::channel::<Frame>(16);
    let out = child
        .stdout
        .take()
        .map(|o| tokio::spawn(pump(o, tx.clone(), false)));
    let err = child
        .stderr
        .take()
        .map(|e| tokio::spawn(pump(e, tx.clone(), true)));
    drop(tx);
    let mut stdin = child.stdin.take();

    // Client → program: stdin, signals. Ends at the client's end of stream.
    let input = async move {
        loop {
            match reader.next().await {
                Ok(Some(Frame::Data(d))) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&d).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Ok(Some(Frame::Eof)) => stdin = None,
                Ok(Some(Frame::Signal(sig))) => signal_group(pid, sig),
                Ok(Some(_)) => {}
                // The client went away (or sent garbage): stop the program.
                Ok(None) | Err(_) => return,
            }
        }
    };
    // Program → client: output frames in order, then the exit status.
    let output = async {
        while let Some(frame) = rx.recv().await {
            if write_frame(&mut writer, &frame).await.is_err() {
                return None;
            }
        }
        if let Some(t) = out {
            let _ = t.await;
        }
        if let Some(t) = err {
            let _ = t.await;
        }
        let status = child.wait().await.ok().map(exit_status)?;
        let _ = write_frame(&mut writer, &Frame::Exit(status)).await;
        let _ = writer.shutdown().await;
        Some(status)
    };
    tokio::pin!(input);
    tokio::pin!(output);
    let exit = tokio::select! {
        status = &mut output => status,
        () = &mut input => {
            // The client is gone before the program ended: end the program's group.
            signal_group(pid, libc::SIGKILL);
            None
        }
    };
    ChannelOutcome {
        exit,
        error: exit.is_none().then(|| "client disconnected".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exec(argv: &[&str], stdin: &[u8]) -> (Vec<u8>, Vec<u8>, Option<ExitStatus>) {
        let (client, service) = tokio::io::duplex(256 * 1024);
        let (service_r, service_w) = tokio::io::split(service);
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let task = tokio::spawn(async move {
            let reader = FrameReader::new(Box::new(service_r) as BoxRead);
            run(argv, reader, service_w).await
        });
        let (client_r, mut client_w) = tokio::io::split(client);
        if !stdin.is_empty() {
            write_frame(&mut client_w, &Frame::Data(Bytes::copy_from_slice(stdin)))
                .await
                .unwrap();
        }
        write_frame(&mut client_w, &Frame::Eof).await.unwrap();
        let mut r = FrameReader::new(client_r);
        let (mut out, mut err, mut exit) = (vec![], vec![], None);
        while let Some(f) = r.next().await.unwrap() {
            match f {
                Frame::Data(d) => out.extend_from_slice(&d),
                Frame::Stderr(d) => err.extend_from_slice(&d),
                Frame::Exit(s) => exit = Some(s),
                Frame::Error(m) => err.extend_from_slice(m.as_bytes()),
                _ => {}
            }
        }
        assert_eq!(task.await.unwrap().exit, exit);
        (out, err, exit)
    }

    #[tokio::test]
    async fn separates_streams_and_reports_exit() {
        let (out, err, exit) = exec(&["sh", "-c", "echo out; echo err >&2; exit 3"], b"").await;
        assert_eq!(out, b"out\n");
        assert_eq!(err, b"err\n");
        assert_eq!(exit, Some(ExitStatus::Code(3)));
    }

    #[tokio::test]
    async fn streams_stdin_and_reports_signals() {
        let (out, _, exit) = exec(&["cat"], b"hello stdin").await;
        assert_eq!(out, b"hello stdin");
        assert_eq!(exit, Some(ExitStatus::Code(0)));
        let (_, _, exit) = exec(&["sh", "-c", "kill -TERM $$"], b"").await;
        assert_eq!(exit, Some(ExitStatus::Signal(15)));
    }

    #[tokio::test]
    async fn missing_program_is_127() {
        let (_, err, exit) = exec(&["/no/such/program"], b"").await;
        assert_eq!(exit, Some(ExitStatus::Code(127)));
        assert!(String::from_utf8_lossy(&err).contains("cannot run"));
    }
}
