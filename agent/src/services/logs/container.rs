//! A container's log through the device's Docker (or Podman) API socket: a plain HTTP/1.1
//! request with hyper (already in the workspace) over the unix socket, and the API's stream
//! format (8-byte frame headers for stdout and stderr unless the container has a TTY) decoded
//! here.

use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use m87_events::tunnel::logs::{LogLine, LogsRequest};
use tokio::net::UnixStream;

use super::{BoxWrite, ClientWatch, Ended, LogsError, Sink, accepted};

/// Longest line kept whole; longer ones are sent in pieces.
const MAX_LINE: usize = 64 * 1024;

/// Whether `name` can be a container name or id (what Docker accepts), so it can go in a path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The API path of the logs of `name` for `request`.
pub fn logs_path(name: &str, request: &LogsRequest) -> String {
    let mut path = format!("/containers/{name}/logs?stdout=1&stderr=1&timestamps=1");
    if request.follow {
        path.push_str("&follow=1");
    }
    if let Some(n) = request.lines {
        path.push_str(&format!("&tail={n}"));
    }
    if let Some(since) = request.since {
        path.push_str(&format!("&since={}", since.timestamp()));
    }
    if let Some(until) = request.until {
        path.push_str(&format!("&until={}", until.timestamp() + 1));
    }
    path
}

async fn get(socket: &Path, path: &str) -> Result<Response<Incoming>, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot reach the Docker API at {}: {e}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("the Docker API at {} did not answer: {e}", socket.display()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get(path)
        .header("host", "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad Docker API request: {e}"))?;
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("the Docker API at {} failed: {e}", socket.display()))
}

/// Whether the container has a TTY (its log is then one raw stream), or why it cannot be read.
async fn inspect(socket: &Path, name: &str) -> Result<bool, LogsError> {
    let response = get(socket, &format!("/containers/{name}/json"))
        .await
        .map_err(LogsError::Unavailable)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| LogsError::Unavailable(format!("the Docker API failed: {e}")))?
        .to_bytes();
    if status == StatusCode::NOT_FOUND {
        return Err(LogsError::Unavailable(format!(
            "no container named {name:?} on the device"
        )));
    }
    if !status.is_success() {
        return Err(LogsError::Unavailable(format!(
            "the Docker API refused to show container {name:?}: {}",
            api_message(&body, status)
        )));
    }
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Ok(info["Config"]["Tty"].as_bool().unwrap_or(false))
}

fn api_message(body: &[u8], status: StatusCode) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| status.to_string())
}

/// Serves the log of container `name` through the API socket (none: no Docker API on the
/// device).
pub async fn serve(
    socket: Option<PathBuf>,
    name: &str,
    request: &LogsRequest,
    writer: &mut BoxWrite,
    mut closed: ClientWatch,
) -> Result<Ended, LogsError> {
    let Some(socket) = socket else {
        return Err(LogsError::Unavailable(
            "no Docker API socket on the device (start the runtime with --docker-socket PATH)"
                .into(),
        ));
    };
    if !valid_name(name) {
        return Err(LogsError::Unavailable(format!(
            "no container named {name:?} on the device (not a container name)"
        )));
    }
    let tty = inspect(&socket, name).await?;
    let response = get(&socket, &logs_path(name, request))
        .await
        .map_err(LogsError::Unavailable)?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        let why = body.map(|b| api_message(&b, status)).unwrap_or_default();
        return Err(LogsError::Unavailable(format!(
            "the Docker API refused the log of container {name:?}: {why}"
        )));
    }
    let mut sink = accepted(writer).await?;
    let mut body = response.into_body();
    let mut decoder = Decoder::new(tty, name);
    loop {
        let frame = tokio::select! {
            _ = closed.closed() => return Ok(Ended::ClientLeft),
            frame = body.frame() => frame,
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                return Err(LogsError::Failed(format!(
                    "the Docker API stream broke: {e}"
                )));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        decoder.feed(&data);
        if send(&mut decoder, request, &mut sink).await.is_err() || sink.flush().await.is_err() {
            return Ok(Ended::ClientLeft);
        }
    }
    decoder.finish();
    if send(&mut decoder, request, &mut sink).await.is_err() || sink.flush().await.is_err() {
        return Ok(Ended::ClientLeft);
    }
    Ok(Ended::Done)
}

async fn send(
    decoder: &mut Decoder,
    request: &LogsRequest,
    sink: &mut Sink<'_>,
) -> std::io::Result<()> {
    for line in decoder.lines.drain(..) {
        if line.within(request.since, request.until) {
            sink.push(&line).await?;
        }
    }
    Ok(())
}

/// Turns the API's log stream into lines: `TIMESTAMP message` per line, in 8-byte-header
/// frames (byte 0 the stream: 1 stdout, 2 stderr; bytes 4..8 the length) unless `tty`.
#[derive(Debug)]
pub struct Decoder {
    tty: bool,
    source: String,
    frames: BytesMut,
    partial: [Vec<u8>; 2],
    /// Lines decoded and not yet taken.
    pub lines: Vec<LogLine>,
}

impl Decoder {
    /// A decoder for container `source`, with or without a TTY.
    pub fn new(tty: bool, source: &str) -> Self {
        Self {
            tty,
            source: source.to_owned(),
            frames: BytesMut::new(),
            partial: [Vec::new(), Vec::new()],
            lines: Vec::new(),
        }
    }

    /// Adds bytes from the API.
    pub fn feed(&mut self, data: &[u8]) {
        if self.tty {
            self.text(0, data);
            return;
        }
        self.frames.extend_from_slice(data);
        while self.frames.len() >= 8 {
            let stream = if self.frames[0] == 2 { 1 } else { 0 };
            let len = u32::from_be_bytes([
                self.frames[4],
                self.frames[5],
                self.frames[6],
                self.frames[7],
            ]) as usize;
            if self.frames.len() < 8 + len {
                break;
            }
            self.frames.advance(8);
            let payload = self.frames.split_to(len);
            self.text(stream, &payload);
        }
    }

    /// The stream ended: a last line without its newline is a line too.
    pub fn finish(&mut self) {
        for stream in 0..2 {
            if !self.partial[stream].is_empty() {
                let bytes = std::mem::take(&mut self.partial[stream]);
                self.line(stream, &bytes);
            }
        }
    }

    fn text(&mut self, stream: usize, data: &[u8]) {
        for piece in data.split_inclusive(|b| *b == b'\n') {
            self.partial[stream].extend_from_slice(piece);
            let whole = self.partial[stream].last() == Some(&b'\n');
            if whole || self.partial[stream].len() >= MAX_LINE {
                let mut bytes = std::mem::take(&mut self.partial[stream]);
                if whole {
                    bytes.pop();
                }
                self.line(stream, &bytes);
            }
        }
    }

    fn line(&mut self, stream: usize, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches('\r');
        let (time, message) = match text.split_once(' ') {
            Some((t, rest)) => match t.parse::<DateTime<Utc>>() {
                Ok(time) => (Some(time), rest),
                Err(_) => (None, text),
            },
            None => match text.parse::<DateTime<Utc>>() {
                Ok(time) => (Some(time), ""),
                Err(_) => (None, text),
            },
        };
        self.lines.push(LogLine {
            time,
            level: if stream == 1 { "stderr" } else { "stdout" }.to_owned(),
            source: self.source.clone(),
            message: message.to_owned(),
        });
    }
}
