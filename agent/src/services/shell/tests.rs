//! `run_pty` driven over in-memory pipes, as a client would: keystrokes in, terminal bytes and
//! exit statuses out.

use super::*;
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

/// How long any one session may take before the test fails instead of hanging.
const SESSION_LIMIT: Duration = Duration::from_secs(30);

struct Client {
    writer: WriteHalf<DuplexStream>,
    reader: FrameReader<ReadHalf<DuplexStream>>,
    service: tokio::task::JoinHandle<ChannelOutcome>,
    output: Vec<u8>,
}

fn start(argv: Option<&[&str]>, cols: u16, rows: u16) -> Client {
    start_with_buffer(argv, cols, rows, 256 * 1024)
}

/// `buffer`: how many bytes the pipe between service and client holds.
fn start_with_buffer(argv: Option<&[&str]>, cols: u16, rows: u16, buffer: usize) -> Client {
    let (client, service) = tokio::io::duplex(buffer);
    let (service_r, service_w) = tokio::io::split(service);
    let argv = argv.map(|a| a.iter().map(|s| s.to_string()).collect());
    let tty = Tty {
        cols,
        rows,
        term: "xterm-256color".into(),
    };
    let service = tokio::spawn(async move {
        let reader = FrameReader::new(Box::new(service_r) as BoxRead);
        run_pty(argv, tty, reader, Box::new(service_w), None).await
    });
    let (reader, writer) = tokio::io::split(client);
    Client {
        writer,
        reader: FrameReader::new(reader),
        service,
        output: vec![],
    }
}

impl Client {
    async fn send(&mut self, frame: Frame) {
        write_frame(&mut self.writer, &frame).await.unwrap();
    }

    async fn keys(&mut self, keys: &str) {
        self.send(Frame::Data(Bytes::copy_from_slice(keys.as_bytes())))
            .await;
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Reads output until it contains `needle`.
    async fn wait_for(&mut self, needle: &str) {
        let read = async {
            while !self.text().contains(needle) {
                match self.reader.next().await.unwrap() {
                    Some(Frame::Data(d)) => self.output.extend_from_slice(&d),
                    other => panic!("expected output, got {other:?}"),
                }
            }
        };
        if timeout(SESSION_LIMIT, read).await.is_err() {
            panic!("{needle:?} never appeared in {:?}", self.text());
        }
    }

    /// Reads everything up to the end of the channel: the output, the exit status and any error
    /// message. Checks that `Exit` is the last frame and matches what the service returned.
    async fn finish(mut self) -> (String, Option<ExitStatus>, Option<String>) {
        let mut exit = None;
        let mut error = None;
        let read = async {
            while let Some(frame) = self.reader.next().await.unwrap() {
                assert_eq!(exit, None, "{frame:?} after the exit status");
                match frame {
                    Frame::Data(d) => self.output.extend_from_slice(&d),
                    Frame::Exit(s) => exit = Some(s),
                    Frame::Error(m) => error = Some(m),
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        if timeout(SESSION_LIMIT, read).await.is_err() {
            panic!("the session did not end; output so far: {:?}", self.text());
        }
        let outcome = self.service.await.unwrap();
        assert_eq!(outcome.exit, exit);
        drop(self.writer);
        let text = String::from_utf8_lossy(&self.output).into_owned();
        (text, exit, error)
    }
}

#[tokio::test]
async fn program_sees_the_terminal_size_and_its_exit_code_comes_back() {
    let client = start(Some(&["sh", "-c", "stty size; echo hi; exit 4"]), 100, 30);
    let (out, exit, error) = client.finish().await;
    assert!(out.contains("30 100"), "{out:?}");
    assert!(out.contains("hi\r\n"), "{out:?}");
    assert_eq!(exit, Some(ExitStatus::Code(4)));
    assert_eq!(error, None);
}

#[tokio::test]
async fn resize_reaches_an_interactive_shell() {
    let mut client = start(Some(&["sh"]), 80, 24);
    client
        .send(Frame::Resize {
            cols: 120,
            rows: 40,
        })
        .await;
    client.keys("stty size; exit 9\n").await;
    let (out, exit, _) = client.finish().await;
    assert!(out.contains("40 120"), "{out:?}");
    assert_eq!(exit, Some(ExitStatus::Code(9)));
}

#[tokio::test]
async fn without_argv_the_login_shell_runs() {
    let expected = Account::current().login_argv0();
    let mut client = start(None, 80, 24);
    client.keys("echo \"zero=$0\"\n").await;
    client.wait_for(&format!("zero={expected}")).await;
    client.keys("exit 7\n").await;
    let (_, exit, _) = client.finish().await;
    assert_eq!(exit, Some(ExitStatus::Code(7)));
}

#[tokio::test]
async fn all_output_before_the_exit_is_delivered() {
    let script = r"head -c 300000 /dev/zero | tr '\000' x; exit 3";
    let client = start(Some(&["sh", "-c", script]), 80, 24);
    let (out, exit, _) = client.finish().await;
    assert_eq!(out.bytes().filter(|b| *b == b'x').count(), 300_000);
    assert_eq!(exit, Some(ExitStatus::Code(3)));
}

#[tokio::test]
async fn output_still_in_the_terminal_when_the_program_exits_is_delivered() {
    // A slow client: the program's ~11 KB fit in the PTY's buffer (about 19 KB on Linux), so
    // it exits while nearly all of it is still there, unread.
    let client = start_with_buffer(Some(&["sh", "-c", "seq 1 2000; exit 3"]), 80, 24, 1024);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (out, exit, _) = client.finish().await;
    let lines: Vec<&str> = out.split_terminator("\r\n").collect();
    let expected: Vec<String> = (1..=2000).map(|n| n.to_string()).collect();
    assert_eq!(lines, expected);
    assert_eq!(exit, Some(ExitStatus::Code(3)));
}

#[tokio::test]
async fn a_background_job_holding_the_terminal_does_not_hold_up_the_exit() {
    // One job is silent, the other never stops writing; both ignore the hangup.
    for script in [
        "trap '' HUP; sleep 5 & echo started; exit 6",
        "trap '' HUP; yes & sleep 0.2; exit 6",
    ] {
        let started = Instant::now();
        let (out, exit, _) = start(Some(&["sh", "-c", script]), 80, 24).finish().await;
        assert_eq!(exit, Some(ExitStatus::Code(6)), "{script}");
        assert!(started.elapsed() < Duration::from_secs(10), "{script}");
        assert!(
            out.contains("started") || out.contains("y\r\n"),
            "{script}: {out:?}"
        );
    }
}

#[tokio::test]
async fn ctrl_c_is_a_keystroke_the_terminal_turns_into_sigint() {
    let mut client = start(Some(&["sleep", "30"]), 80, 24);
    client.keys("\x03").await;
    let (_, exit, _) = client.finish().await;
    assert_eq!(exit, Some(ExitStatus::Signal(libc::SIGINT)));
}

#[tokio::test]
async fn signal_frames_reach_the_foreground_group() {
    let mut client = start(Some(&["sh", "-c", "sleep 30; echo not reached"]), 80, 24);
    client.send(Frame::Signal(libc::SIGTERM)).await;
    let (out, exit, _) = client.finish().await;
    assert_eq!(exit, Some(ExitStatus::Signal(libc::SIGTERM)));
    assert!(!out.contains("not reached"), "{out:?}");
}

#[tokio::test]
async fn eof_ends_the_programs_input() {
    let mut client = start(Some(&["cat"]), 80, 24);
    client.keys("hello\n").await;
    client.send(Frame::Eof).await;
    let (out, exit, _) = client.finish().await;
    // Once echoed by the terminal, once written back by cat.
    assert_eq!(out.matches("hello\r\n").count(), 2, "{out:?}");
    assert_eq!(exit, Some(ExitStatus::Code(0)));
}

#[tokio::test]
async fn missing_program_is_127_and_says_why() {
    let (_, exit, error) = start(Some(&["/no/such/program"]), 80, 24).finish().await;
    assert_eq!(exit, Some(ExitStatus::Code(127)));
    assert!(error.unwrap().contains("cannot run /no/such/program"));
    let (_, exit, error) = start(Some(&[]), 80, 24).finish().await;
    assert_eq!(exit, Some(ExitStatus::Code(127)));
    assert_eq!(error.as_deref(), Some("no command given"));
}

/// Reads the `pid=N` line the scripts below print.
async fn printed_pid(client: &mut Client) -> u32 {
    client.wait_for("pid=").await;
    client.wait_for("\n").await;
    let text = client.text();
    text.split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

/// Waits until process `pid` is gone: killed and reaped, not even a zombie left.
async fn assert_gone(pid: u32) {
    let proc_dir = format!("/proc/{pid}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&proc_dir).exists() {
        assert!(Instant::now() < deadline, "process {pid} is still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_vanished_client_ends_the_program_even_if_it_ignores_sighup() {
    let script = "trap '' HUP; echo pid=$$; exec sleep 60";
    let mut client = start(Some(&["sh", "-c", script]), 80, 24);
    let pid = printed_pid(&mut client).await;
    let Client {
        mut writer,
        reader,
        service,
        ..
    } = client;
    writer.shutdown().await.unwrap();
    drop((writer, reader));
    let outcome = timeout(Duration::from_secs(10), service)
        .await
        .expect("the service did not notice the client left")
        .unwrap();
    assert_eq!(outcome.exit, None);
    assert_eq!(outcome.error.as_deref(), Some("client disconnected"));
    assert_gone(pid).await;
}

#[tokio::test]
async fn a_cancelled_service_kills_the_program() {
    let mut client = start(Some(&["sh", "-c", "echo pid=$$; exec sleep 60"]), 80, 24);
    let pid = printed_pid(&mut client).await;
    client.service.abort();
    assert_gone(pid).await;
}
