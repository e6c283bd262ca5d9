//! `m87 <device> metrics`: a live view of the device's load, or NDJSON samples.
//!
//! - `-o json`: each sample as one line of JSON (the device's [`MetricsSample`]), until
//!   `--count` samples or Ctrl-C.
//! - On a terminal: a full-screen view ([`tui`], ratatui on crossterm) redrawn on every sample;
//!   `q`, Esc or Ctrl-C quits.
//! - Otherwise (a pipe, a file, `watch`): one compact line of text per sample ([`text`]).
//!
//! Layout: [`text`] formats figures and the compact line, [`view`] draws one sample onto a
//! ratatui frame (no terminal needed, so it is tested with ratatui's test backend), [`tui`]
//! owns the terminal.

pub mod text;
pub mod tui;
pub mod view;

use std::io::{IsTerminal, Write};

use anyhow::Context;
use m87_events::token::Operation;
use m87_events::tunnel::metrics::{MAX_INTERVAL_MS, MIN_INTERVAL_MS, MetricsSample};
use m87_events::tunnel::{Channel, Frame};
use m87_transport::frames::write_frame;

use crate::remote::{ChannelOpener, OpenError, OpenedChannel};
use crate::session::QuicSession;

/// `metrics` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How often to sample: `1s`, `500ms`, `2m`, or a number of seconds (200ms at least).
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// Stop after this many samples.
    #[arg(long)]
    pub count: Option<u64>,
}

/// How samples are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One JSON object per line.
    Json,
    /// One compact line of text per sample.
    Text,
    /// The full-screen view.
    Tui,
}

/// Runs it; returns the exit code.
pub async fn run(
    client: &m87_transport::http::ApiClient,
    device: &str,
    args: Args,
    output: crate::output::Output,
) -> anyhow::Result<i32> {
    let mode = if output == crate::output::Output::Json {
        Mode::Json
    } else if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        Mode::Tui
    } else {
        Mode::Text
    };
    let interval_ms =
        parse_interval(&args.interval).map_err(|e| anyhow::anyhow!("--interval {e}"))?;
    let grant = serde_json::json!({ "interval_ms": interval_ms });
    let session = QuicSession::open(client, device, Operation::Metrics, grant).await?;
    let name = session.device.name.to_string();
    let result = session
        .explain(view_samples(&session, &name, interval_ms, args.count, mode).await)
        .await;
    session.close().await;
    result
}

/// Opens the metrics channel and shows its samples in `mode`; returns the exit code.
pub async fn view_samples(
    opener: &dyn ChannelOpener,
    device: &str,
    interval_ms: u32,
    count: Option<u64>,
    mode: Mode,
) -> anyhow::Result<i32> {
    let channel = match opener.open(Channel::Metrics { interval_ms }).await {
        Ok(c) => c,
        Err(OpenError::Refused { message, .. }) => {
            anyhow::bail!("the device refused metrics: {message}")
        }
        Err(e) => return Err(e).context("could not open the metrics channel"),
    };
    match mode {
        Mode::Tui => tui::run(channel, device, interval_ms, count).await,
        Mode::Json | Mode::Text => print_samples(channel, count, mode).await,
    }
}

/// Prints each sample on a line of its own until `count` samples (or the stream ends).
async fn print_samples(
    mut channel: OpenedChannel,
    count: Option<u64>,
    mode: Mode,
) -> anyhow::Result<i32> {
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let Some(sample) = next_sample(&mut channel).await? else {
            anyhow::bail!("the device ended the metrics stream");
        };
        seen += 1;
        let line = match mode {
            Mode::Json => serde_json::to_string(&sample)?,
            _ => text::line(&sample),
        };
        let mut out = std::io::stdout().lock();
        let written = writeln!(out, "{line}").and_then(|()| out.flush());
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                // The reader has had enough (`| head -n 3`): a normal end.
                break;
            }
            return Err(e).context("could not write to standard output");
        }
    }
    let _ = write_frame(&mut channel.writer, &Frame::Eof).await;
    Ok(0)
}

/// The next sample on the channel; `None` when the device ended the stream.
pub async fn next_sample(channel: &mut OpenedChannel) -> anyhow::Result<Option<MetricsSample>> {
    loop {
        match channel.reader.next().await {
            Ok(Some(Frame::Data(json))) => {
                let sample = serde_json::from_slice(&json).context(
                    "the device sent a sample this m87 cannot read; use the same m87 version on both sides",
                )?;
                return Ok(Some(sample));
            }
            Ok(Some(Frame::Error(message))) => anyhow::bail!("the device: {message}"),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(None),
            Err(e) => anyhow::bail!("the session broke: {e}"),
        }
    }
}

/// Parses `1s`, `500ms`, `2m`, `1.5s` or a plain number of seconds into milliseconds within
/// the allowed range.
pub fn parse_interval(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (text, 1000.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an interval: write e.g. 1s, 500ms or 2m"))?;
    let ms = (value * unit_ms).round();
    if !ms.is_finite() || ms < f64::from(MIN_INTERVAL_MS) || ms > f64::from(MAX_INTERVAL_MS) {
        return Err(format!(
            "{text:?} is outside {MIN_INTERVAL_MS}ms…{}h: the device samples at most every {MIN_INTERVAL_MS} ms",
            MAX_INTERVAL_MS / 3_600_000
        ));
    }
    // In range, so it fits.
    Ok(ms as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::testing::LocalOpener;

    #[test]
    fn intervals_parse_with_units_and_bounds() {
        assert_eq!(parse_interval("1s"), Ok(1000));
        assert_eq!(parse_interval("500ms"), Ok(500));
        assert_eq!(parse_interval("1.5s"), Ok(1500));
        assert_eq!(parse_interval("2m"), Ok(120_000));
        assert_eq!(parse_interval("3"), Ok(3000));
        assert_eq!(parse_interval("200ms"), Ok(200));
        assert!(parse_interval("100ms").unwrap_err().contains("200 ms"));
        assert!(parse_interval("2h").is_err());
        assert!(
            parse_interval("soon")
                .unwrap_err()
                .contains("not an interval")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn samples_come_from_the_agents_service() {
        let opener = LocalOpener::default();
        let mut channel = opener
            .open(Channel::Metrics { interval_ms: 200 })
            .await
            .unwrap();
        let a = next_sample(&mut channel).await.unwrap().unwrap();
        let b = next_sample(&mut channel).await.unwrap().unwrap();
        assert!(b.time > a.time);
        assert!(a.memory.total_bytes > 0);
        assert!(text::line(&b).contains("cpu "));
    }
}
