//! The logs service driven over in-memory pipes as a client would: requests in, JSON lines,
//! refusals and exits out.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use m87_events::tunnel::logs::{LogLine, LogSource, LogsRequest};
use m87_events::tunnel::{Control, ExitStatus, Frame};
use m87_transport::frames::FrameReader;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use super::container::{Decoder, logs_path, valid_name};
use super::runtime_file::{files_oldest_first, parse_line, rotating_writer};
use crate::services::{BoxRead, ChannelOutcome, DatagramPort, ServiceContext, ServiceSettings};

const LIMIT: Duration = Duration::from_secs(20);

struct NoDatagrams;
impl DatagramPort for NoDatagrams {
    fn open_flow(&self) -> (u32, tokio::sync::mpsc::Receiver<Bytes>) {
        (0, tokio::sync::mpsc::channel(1).1)
    }
    fn send(&self, _: u32, _: Bytes) -> Result<(), String> {
        Ok(())
    }
    fn close_flow(&self, _: u32) {}
}

struct Client {
    writer: WriteHalf<DuplexStream>,
    reader: FrameReader<ReadHalf<DuplexStream>>,
    service: tokio::task::JoinHandle<ChannelOutcome>,
}

fn start(request: LogsRequest, settings: ServiceSettings) -> Client {
    let (client, service) = tokio::io::duplex(64 * 1024);
    let (service_r, service_w) = tokio::io::split(service);
    let ctx = ServiceContext::new(Arc::new(NoDatagrams), settings);
    let service = tokio::spawn(async move {
        let reader = FrameReader::new(Box::new(service_r) as BoxRead);
        super::serve(request, reader, Box::new(service_w), &ctx).await
    });
    let (reader, writer) = tokio::io::split(client);
    Client {
        writer,
        reader: FrameReader::new(reader),
        service,
    }
}

impl Client {
    /// The first frame: accepted, or the refusal's message.
    async fn answer(&mut self) -> Result<(), String> {
        let frame = tokio::time::timeout(LIMIT, self.reader.next()).await;
        match frame.unwrap().unwrap().unwrap() {
            Frame::Control(bytes) => match Frame::parse_control::<Control>(&bytes).unwrap() {
                Control::ChannelAccepted { .. } => Ok(()),
                Control::Refused { code, message } => {
                    assert_eq!(code, "unavailable");
                    Err(message)
                }
                other => panic!("unexpected control {other:?}"),
            },
            other => panic!("unexpected frame {other:?}"),
        }
    }

    /// Lines until `Exit` (returned) or until `want` lines came (then `None`).
    async fn lines(&mut self, want: Option<usize>) -> (Vec<LogLine>, Option<ExitStatus>) {
        let mut lines = Vec::new();
        loop {
            if want.is_some_and(|w| lines.len() >= w) {
                return (lines, None);
            }
            let frame = tokio::time::timeout(LIMIT, self.reader.next()).await;
            match frame.expect("no frame in time").unwrap() {
                Some(Frame::Data(bytes)) => {
                    for l in String::from_utf8(bytes.to_vec()).unwrap().lines() {
                        lines.push(serde_json::from_str(l).unwrap());
                    }
                }
                Some(Frame::Exit(status)) => return (lines, Some(status)),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
}

fn request(source: LogSource, lines: Option<u32>, follow: bool) -> LogsRequest {
    LogsRequest {
        source,
        lines,
        since: None,
        until: None,
        follow,
    }
}

fn runtime_settings(path: &Path) -> ServiceSettings {
    ServiceSettings {
        runtime_log: Some(path.to_path_buf()),
        ..Default::default()
    }
}

fn json_line(time: &str, message: &str) -> String {
    format!(
        r#"{{"timestamp":"{time}","level":"INFO","fields":{{"message":"{message}","n":1}},"target":"m87_agent::x"}}"#
    )
}

#[test]
fn a_runtime_line_keeps_time_level_source_and_fields() {
    let line = parse_line(&json_line("2026-01-01T10:00:00.5Z", "hello"));
    assert_eq!(line.level, "INFO");
    assert_eq!(line.source, "m87_agent::x");
    assert_eq!(line.message, "hello n=1");
    assert_eq!(
        line.time.unwrap().to_rfc3339(),
        "2026-01-01T10:00:00.500+00:00"
    );
    let plain = parse_line("not json");
    assert_eq!((plain.time, plain.message.as_str()), (None, "not json"));
}

#[test]
fn the_writer_rotates_by_size_and_the_reader_reads_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/runtime.log");
    let writer = rotating_writer(&path, 100, 2).unwrap();
    for i in 0..12 {
        // One write per line, as the tracing layer writes.
        let line = json_line("2026-01-01T10:00:00Z", &format!("line {i:02}")) + "\n";
        writer.lock().unwrap().write_all(line.as_bytes()).unwrap();
    }
    let files = files_oldest_first(&path);
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["runtime.log.2", "runtime.log.1", "runtime.log"]);
    let all: Vec<String> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|l| parse_line(&l).message)
        .collect();
    // Three files of about one line each (each write passes 100 bytes): the newest three.
    assert_eq!(all, ["line 09 n=1", "line 10 n=1", "line 11 n=1"]);
}

#[tokio::test]
async fn without_a_log_file_the_runtime_log_is_unavailable() {
    let mut client = start(
        request(LogSource::Runtime, None, false),
        ServiceSettings::default(),
    );
    let refused = client.answer().await.unwrap_err();
    assert!(refused.contains("keeps no log file"), "{refused}");
}

#[tokio::test]
async fn the_last_lines_within_the_window_are_read_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runtime.log");
    std::fs::write(
        dir.path().join("runtime.log.1"),
        format!(
            "{}\n{}\n",
            json_line("2026-01-01T10:00:00Z", "a"),
            json_line("2026-01-01T10:01:00Z", "b")
        ),
    )
    .unwrap();
    std::fs::write(
        &path,
        format!(
            "{}\n{}\n",
            json_line("2026-01-01T10:02:00Z", "c"),
            json_line("2026-01-01T10:03:00Z", "d")
        ),
    )
    .unwrap();
    let all = request(LogSource::Runtime, None, false);
    let mut client = start(all.clone(), runtime_settings(&path));
    client.answer().await.unwrap();
    let (lines, exit) = client.lines(None).await;
    let messages: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages, ["a n=1", "b n=1", "c n=1", "d n=1"]);
    assert_eq!(exit, Some(ExitStatus::Code(0)));

    let mut last = all.clone();
    last.lines = Some(3);
    last.since = Some("2026-01-01T10:00:30Z".parse().unwrap());
    last.until = Some("2026-01-01T10:03:00Z".parse().unwrap());
    let mut client = start(last, runtime_settings(&path));
    client.answer().await.unwrap();
    let (lines, _) = client.lines(None).await;
    let messages: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages, ["b n=1", "c n=1"]);
}

#[tokio::test]
async fn a_follower_sees_appended_lines_and_rotation_and_stops_when_the_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runtime.log");
    std::fs::write(
        &path,
        format!("{}\n", json_line("2026-01-01T10:00:00Z", "old")),
    )
    .unwrap();
    let mut client = start(
        request(LogSource::Runtime, Some(1), true),
        runtime_settings(&path),
    );
    client.answer().await.unwrap();
    let (lines, _) = client.lines(Some(1)).await;
    assert_eq!(lines[0].message, "old n=1");

    let append = |text: &str| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "{}", json_line("2026-01-01T10:00:01Z", text)).unwrap();
    };
    append("appended");
    let (lines, _) = client.lines(Some(1)).await;
    assert_eq!(lines[0].message, "appended n=1");

    // Rotate as file-rotate does: rename, then a new file at the path.
    append("just before rotation");
    std::fs::rename(&path, dir.path().join("runtime.log.1")).unwrap();
    append_new(&path, "after rotation");
    let (lines, _) = client.lines(Some(2)).await;
    let messages: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages, ["just before rotation n=1", "after rotation n=1"]);

    client.writer.shutdown().await.unwrap();
    let outcome = tokio::time::timeout(LIMIT, client.service)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, ChannelOutcome::default());
}

fn append_new(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "{}", json_line("2026-01-01T10:00:02Z", text)).unwrap();
}

#[test]
fn the_decoder_splits_frames_and_lines() {
    let mut frames = Vec::new();
    let mut frame = |stream: u8, text: &str| {
        frames.extend_from_slice(&[stream, 0, 0, 0]);
        frames.extend_from_slice(&(text.len() as u32).to_be_bytes());
        frames.extend_from_slice(text.as_bytes());
    };
    frame(
        1,
        "2026-01-01T10:00:00.123456789Z hello\n2026-01-01T10:00:01Z wor",
    );
    frame(2, "2026-01-01T10:00:02Z oops\n");
    frame(1, "ld\n");
    let mut decoder = Decoder::new(false, "web");
    // In two pieces, cut inside a header.
    decoder.feed(&frames[..5]);
    decoder.feed(&frames[5..]);
    decoder.finish();
    let got: Vec<_> = decoder
        .lines
        .iter()
        .map(|l| (l.level.as_str(), l.message.as_str(), l.source.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("stdout", "hello", "web"),
            ("stderr", "oops", "web"),
            ("stdout", "world", "web")
        ]
    );
    assert_eq!(
        decoder.lines[0].time.unwrap().timestamp_subsec_nanos(),
        123_456_789
    );

    let mut tty = Decoder::new(true, "t");
    tty.feed(b"2026-01-01T10:00:00Z one\r\nno time here");
    tty.finish();
    let got: Vec<_> = tty
        .lines
        .iter()
        .map(|l| (l.time.is_some(), l.message.as_str()))
        .collect();
    assert_eq!(got, [(true, "one"), (false, "no time here")]);
}

#[test]
fn container_names_and_paths() {
    assert!(valid_name("web-1_a.b"));
    assert!(!valid_name("../x"));
    assert!(!valid_name(""));
    let mut r = request(LogSource::Container { name: "web".into() }, Some(5), true);
    r.since = Some("2026-01-01T10:00:00Z".parse().unwrap());
    assert_eq!(
        logs_path("web", &r),
        "/containers/web/logs?stdout=1&stderr=1&timestamps=1&follow=1&tail=5&since=1767261600"
    );
}

/// A Docker API that knows one container, `web`, over a unix socket: answers inspect and a
/// logs request (the one it saw is kept) with two lines in the API's frame format.
async fn fake_docker(socket: &Path) -> Arc<std::sync::Mutex<Vec<String>>> {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                record.lock().unwrap().push(target.clone());
                let (status, body) = if target == "/containers/web/json" {
                    ("200 OK", br#"{"Config":{"Tty":false}}"#.to_vec())
                } else if target.starts_with("/containers/web/logs") {
                    let mut body = Vec::new();
                    for (stream, text) in [
                        (1u8, "2026-01-01T10:00:00Z first\n"),
                        (2, "2026-01-01T10:00:01Z second\n"),
                    ] {
                        body.extend_from_slice(&[stream, 0, 0, 0]);
                        body.extend_from_slice(&(text.len() as u32).to_be_bytes());
                        body.extend_from_slice(text.as_bytes());
                    }
                    ("200 OK", body)
                } else {
                    (
                        "404 Not Found",
                        br#"{"message":"No such container"}"#.to_vec(),
                    )
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                conn.write_all(head.as_bytes()).await.unwrap();
                conn.write_all(&body).await.unwrap();
            });
        }
    });
    seen
}

#[tokio::test]
async fn a_container_log_comes_through_the_docker_api() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let seen = fake_docker(&socket).await;
    let settings = ServiceSettings {
        docker_socket: Some(socket.clone()),
        ..Default::default()
    };
    let web = LogSource::Container { name: "web".into() };
    let mut client = start(request(web, Some(2), false), settings.clone());
    client.answer().await.unwrap();
    let (lines, exit) = client.lines(None).await;
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.level.as_str(), l.message.as_str()))
        .collect();
    assert_eq!(got, [("stdout", "first"), ("stderr", "second")]);
    assert_eq!(exit, Some(ExitStatus::Code(0)));
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|t| t.ends_with("timestamps=1&tail=2"))
    );

    let nosuch = LogSource::Container {
        name: "nosuch".into(),
    };
    let mut client = start(request(nosuch, None, false), settings);
    let refused = client.answer().await.unwrap_err();
    assert_eq!(refused, "no container named \"nosuch\" on the device");
}

#[tokio::test]
async fn without_a_docker_socket_container_logs_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ServiceSettings {
        docker_socket: Some(dir.path().join("absent.sock")),
        ..Default::default()
    };
    let web = LogSource::Container { name: "web".into() };
    let mut client = start(request(web, None, false), settings);
    let refused = client.answer().await.unwrap_err();
    assert!(refused.contains("cannot reach the Docker API"), "{refused}");
}

#[tokio::test]
async fn a_slow_client_holds_the_reader_back_instead_of_lines_piling_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runtime.log");
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&json_line("2026-01-01T10:00:00Z", &format!("line {i}")));
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    // The pipe holds 64 KiB; the log is about 2 MiB.
    let mut client = start(
        request(LogSource::Runtime, None, false),
        runtime_settings(&path),
    );
    client.answer().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !client.service.is_finished(),
        "the service must wait for the client, not buffer the log"
    );
    let (lines, exit) = client.lines(None).await;
    assert_eq!(lines.len(), 20_000);
    assert_eq!(lines[19_999].message, "line 19999 n=1");
    assert_eq!(exit, Some(ExitStatus::Code(0)));
}
