//! Terminal recordings in asciicast v2 (the format asciinema plays): a header line, then one
//! JSON array per event: `[seconds, "o", text]` output, `[seconds, "i", text]` input,
//! `[seconds, "r", "COLSxROWS"]` resize.
//!
//! [`CastWriter`] writes one with a size cap: once the next line would pass it, nothing more is
//! written and the recording is marked truncated (the session goes on). Terminal bytes become
//! JSON strings: a UTF-8 sequence split across two reads is joined before it is written, and
//! bytes that are not UTF-8 become U+FFFD. [`parse`] reads a recording back.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

/// The default size cap of one session's recording: 16 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The header line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always 2.
    pub version: u32,
    /// Terminal width in columns at the start.
    pub width: u16,
    /// Terminal height in rows at the start.
    pub height: u16,
    /// When the recording started (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// `TERM` and `SHELL` of the recorded session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<HeaderEnv>,
    /// A title: the session and what ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// The `env` object of the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderEnv {
    /// The terminal type.
    #[serde(rename = "TERM", default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// The shell.
    #[serde(rename = "SHELL", default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

/// The kind of a recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// What the terminal showed (`"o"`).
    Output,
    /// What the user typed (`"i"`).
    Input,
    /// The window changed size (`"r"`, data `COLSxROWS`).
    Resize,
}

impl EventKind {
    /// The code in the file.
    pub fn code(self) -> &'static str {
        match self {
            EventKind::Output => "o",
            EventKind::Input => "i",
            EventKind::Resize => "r",
        }
    }
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the start.
    pub time: f64,
    /// What it is.
    pub kind: EventKind,
    /// Its text.
    pub data: String,
}

/// How a finished recording turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Bytes written.
    pub bytes: u64,
    /// Whether the cap was reached (later events were dropped).
    pub truncated: bool,
}

/// Writes a recording, at most `max_bytes` of it.
#[derive(Debug)]
pub struct CastWriter<W: Write> {
    out: W,
    written: u64,
    max_bytes: u64,
    truncated: bool,
    /// The incomplete UTF-8 sequence at the end of the last output, then of the last input.
    pending: [Vec<u8>; 2],
}

impl<W: Write> CastWriter<W> {
    /// Starts a recording with `header` (its `version` is set to 2).
    pub fn new(out: W, mut header: Header, max_bytes: u64) -> io::Result<Self> {
        header.version = 2;
        let mut writer = Self {
            out,
            written: 0,
            max_bytes,
            truncated: false,
            pending: [Vec::new(), Vec::new()],
        };
        let line = serde_json::to_string(&header).map_err(io::Error::other)?;
        writer.line(&line)?;
        Ok(writer)
    }

    /// Records terminal output `data` at `time` seconds.
    pub fn output(&mut self, time: f64, data: &[u8]) -> io::Result<()> {
        self.text(0, EventKind::Output, time, data)
    }

    /// Records keystrokes `data` at `time` seconds.
    pub fn input(&mut self, time: f64, data: &[u8]) -> io::Result<()> {
        self.text(1, EventKind::Input, time, data)
    }

    /// Records a window size change.
    pub fn resize(&mut self, time: f64, cols: u16, rows: u16) -> io::Result<()> {
        self.event(time, EventKind::Resize, &format!("{cols}x{rows}"))
    }

    /// Whether the cap was reached.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Writes what is left of split sequences (as U+FFFD), flushes, and returns the output.
    pub fn finish(mut self, time: f64) -> io::Result<(W, Summary)> {
        for (slot, kind) in [(0, EventKind::Output), (1, EventKind::Input)] {
            let rest = std::mem::take(&mut self.pending[slot]);
            if !rest.is_empty() {
                self.event(time, kind, &String::from_utf8_lossy(&rest))?;
            }
        }
        self.out.flush()?;
        let summary = Summary {
            bytes: self.written,
            truncated: self.truncated,
        };
        Ok((self.out, summary))
    }

    fn text(&mut self, slot: usize, kind: EventKind, time: f64, data: &[u8]) -> io::Result<()> {
        if self.truncated || data.is_empty() {
            return Ok(());
        }
        let mut bytes = std::mem::take(&mut self.pending[slot]);
        bytes.extend_from_slice(data);
        let (text, rest) = decode(&bytes);
        self.pending[slot] = rest.to_vec();
        if text.is_empty() {
            return Ok(());
        }
        self.event(time, kind, &text)
    }

    fn event(&mut self, time: f64, kind: EventKind, data: &str) -> io::Result<()> {
        if self.truncated {
            return Ok(());
        }
        let time = (time.max(0.0) * 1e6).round() / 1e6;
        let line = serde_json::to_string(&(time, kind.code(), data)).map_err(io::Error::other)?;
        self.line(&line)
    }

    fn line(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.written + len > self.max_bytes {
            self.truncated = true;
            return Ok(());
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.written += len;
        Ok(())
    }
}

/// The text of `bytes` (invalid sequences as U+FFFD) and the incomplete sequence at its end,
/// kept for the next read.
fn decode(bytes: &[u8]) -> (String, &[u8]) {
    let mut text = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                return (text, &[]);
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // `valid` is valid UTF-8 by the error's own account.
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[n..];
                    }
                    None => return (text, after),
                }
            }
        }
    }
}

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The first line is not a version 2 header.
    #[error("not an asciicast v2 recording: {0}")]
    Header(String),
    /// An event line is not `[seconds, "o"|"i"|"r", text]`.
    #[error("line {line} is not an asciicast v2 event: {reason}")]
    Event {
        /// The line number (1 is the header).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a recording: its header and events. Unknown event codes (such as markers) are skipped.
pub fn parse(text: &str) -> Result<(Header, Vec<Event>), ParseError> {
    let mut lines = text.lines();
    let first = lines
        .next()
        .ok_or_else(|| ParseError::Header("empty".into()))?;
    let header: Header =
        serde_json::from_str(first).map_err(|e| ParseError::Header(e.to_string()))?;
    if header.version != 2 {
        return Err(ParseError::Header(format!("version {}", header.version)));
    }
    let mut events = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| ParseError::Event {
            line: i + 2,
            reason,
        };
        let (time, code, data): (f64, String, String) =
            serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let kind = match code.as_str() {
            "o" => EventKind::Output,
            "i" => EventKind::Input,
            "r" => EventKind::Resize,
            _ => continue,
        };
        if !time.is_finite() || time < 0.0 {
            return Err(bad(format!("time {time}")));
        }
        events.push(Event { time, kind, data });
    }
    Ok((header, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            version: 0,
            width: 80,
            height: 24,
            timestamp: Some(1_700_000_000),
            env: Some(HeaderEnv {
                term: Some("xterm".into()),
                shell: Some("/bin/sh".into()),
            }),
            title: Some("t".into()),
        }
    }

    #[test]
    fn a_recording_reads_back_as_written() {
        let mut w = CastWriter::new(Vec::new(), header(), DEFAULT_MAX_BYTES).unwrap();
        w.output(0.5, b"hello \x1b[1mworld\x1b[0m\r\n").unwrap();
        w.input(1.25, b"ls\r").unwrap();
        w.resize(2.0, 120, 40).unwrap();
        let (bytes, summary) = w.finish(3.0).unwrap();
        assert_eq!(summary.bytes, bytes.len() as u64);
        assert!(!summary.truncated);
        let text = String::from_utf8(bytes).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["version"], 2);
        assert_eq!(first["env"]["TERM"], "xterm");
        let (h, events) = parse(&text).unwrap();
        assert_eq!((h.width, h.height), (80, 24));
        assert_eq!(
            events,
            vec![
                Event {
                    time: 0.5,
                    kind: EventKind::Output,
                    data: "hello \x1b[1mworld\x1b[0m\r\n".into()
                },
                Event {
                    time: 1.25,
                    kind: EventKind::Input,
                    data: "ls\r".into()
                },
                Event {
                    time: 2.0,
                    kind: EventKind::Resize,
                    data: "120x40".into()
                },
            ]
        );
    }

    #[test]
    fn utf8_split_across_reads_is_joined_and_garbage_replaced() {
        let mut w = CastWriter::new(Vec::new(), header(), DEFAULT_MAX_BYTES).unwrap();
        let euro = "€".as_bytes(); // three bytes
        w.output(0.1, &[b'a', euro[0]]).unwrap();
        w.output(0.2, &euro[1..2]).unwrap();
        w.output(0.3, &[euro[2], b'b']).unwrap();
        w.output(0.4, &[0xff, b'c']).unwrap();
        // A sequence cut off at the end is written, replaced, when the recording ends.
        w.output(0.5, &euro[..2]).unwrap();
        let (bytes, _) = w.finish(0.6).unwrap();
        let (_, events) = parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
        let text: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(text, vec!["a", "€b", "\u{fffd}c", "\u{fffd}"]);
    }

    #[test]
    fn the_cap_stops_recording_and_says_so() {
        let mut w = CastWriter::new(Vec::new(), header(), 300).unwrap();
        for i in 0..100 {
            w.output(f64::from(i), b"0123456789").unwrap();
        }
        assert!(w.truncated());
        let (bytes, summary) = w.finish(100.0).unwrap();
        assert!(summary.truncated);
        assert!(bytes.len() <= 300, "{}", bytes.len());
        assert_eq!(summary.bytes, bytes.len() as u64);
        // What was written is whole lines and still parses.
        let (_, events) = parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
        assert!(!events.is_empty() && events.len() < 100);
    }

    #[test]
    fn bad_recordings_are_named() {
        assert!(matches!(parse(""), Err(ParseError::Header(_))));
        assert!(matches!(
            parse("{\"version\": 1, \"width\": 1, \"height\": 1}"),
            Err(ParseError::Header(_))
        ));
        let bad = "{\"version\": 2, \"width\": 1, \"height\": 1}\n[1, \"o\"]\n";
        assert!(matches!(parse(bad), Err(ParseError::Event { line: 2, .. })));
    }
}
