//! `m87 <device> logs`: the runtime's log, a unit's journal or a container's log.

use std::io::Write;

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use m87_events::token::Operation;
use m87_events::tunnel::logs::{LogLine, LogSource, LogsRequest};
use m87_events::tunnel::{Channel, ExitStatus, Frame};
use m87_transport::frames::FrameReader;
use m87_transport::stream::BoxRead;
use tokio::io::AsyncWriteExt;

use crate::commands::audit::parse_when;
use crate::output::Output;
use crate::remote::{ChannelOpener, OpenError};
use crate::session::QuicSession;

/// `logs` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing new lines until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines (then new ones with -f).
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<u32>,
    /// Lines at or after this time: a duration back from now (10m, 2h, 7d) or a time
    /// (2026-12-01T10:00Z, RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Lines before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// A systemd unit's journal (nginx or nginx.service).
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
    /// A container's log, through the device's Docker API.
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// The runtime's own log (the default).
    #[arg(long)]
    pub runtime: bool,
}

/// The request these arguments ask for, with times relative to `now`.
pub fn request(args: &Args, now: DateTime<Utc>) -> anyhow::Result<LogsRequest> {
    let source = match (&args.unit, &args.container, args.runtime) {
        (None, None, _) => LogSource::Runtime,
        (Some(name), None, false) => LogSource::Unit { name: name.clone() },
        (None, Some(name), false) => LogSource::Container { name: name.clone() },
        _ => bail!("give one of --unit, --container or --runtime, not several"),
    };
    for name in [&args.unit, &args.container].into_iter().flatten() {
        if name.trim().is_empty() {
            bail!("--unit and --container need a name");
        }
    }
    let when = |flag: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| parse_when(t, now).with_context(|| format!("--{flag}")))
            .transpose()
    };
    let since = when("since", &args.since)?;
    let until = when("until", &args.until)?;
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        bail!("--since must be before --until");
    }
    Ok(LogsRequest {
        source,
        lines: args.lines,
        since,
        until,
        follow: args.follow,
    })
}

/// One line as `TIME LEVEL SOURCE MESSAGE`.
pub fn format_line(line: &LogLine) -> String {
    let time = line
        .time
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".to_owned());
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    format!(
        "{time} {:<5} {} {}",
        dash(&line.level),
        dash(&line.source),
        line.message
    )
}

/// Runs it; returns the exit code.
pub async fn run(
    client: &m87_transport::http::ApiClient,
    device: &str,
    args: Args,
    output: Output,
) -> anyhow::Result<i32> {
    let request = request(&args, Utc::now())?;
    let grant = serde_json::to_value(&request)?;
    let session = QuicSession::open(client, device, Operation::Logs, grant).await?;
    let result = session.explain(read(&session, request, output).await).await;
    session.close().await;
    result
}

async fn read(session: &QuicSession, request: LogsRequest, output: Output) -> anyhow::Result<i32> {
    let follow = request.follow;
    let opened = match session.open(Channel::Logs(request)).await {
        Ok(opened) => opened,
        Err(OpenError::Refused { message, .. }) => bail!("{message}"),
        Err(e) => return Err(e.into()),
    };
    let mut writer = opened.writer;
    let mut reader = opened.reader;
    tokio::select! {
        code = print_frames(&mut reader, output) => return code,
        _ = tokio::signal::ctrl_c() => {}
    }
    // Closing our side tells the device to stop reading.
    let _ = writer.shutdown().await;
    drop(reader);
    // Ctrl-C is how a follower ends; it interrupts a read.
    Ok(if follow { 0 } else { 130 })
}

async fn print_frames(reader: &mut FrameReader<BoxRead>, output: Output) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    loop {
        let frame = reader.next().await.context("the logs stream broke")?;
        match frame {
            Some(Frame::Data(bytes)) => {
                let mut out = stdout.lock();
                for raw in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let written = match output {
                        Output::Json => out.write_all(raw).and_then(|()| out.write_all(b"\n")),
                        Output::Table => match serde_json::from_slice::<LogLine>(raw) {
                            Ok(line) => writeln!(out, "{}", format_line(&line)),
                            Err(_) => out.write_all(raw).and_then(|()| out.write_all(b"\n")),
                        },
                    };
                    if written.is_err() {
                        // stdout closed (`| head`): stop quietly.
                        return Ok(0);
                    }
                }
                if out.flush().is_err() {
                    return Ok(0);
                }
            }
            Some(Frame::Error(message)) => eprintln!("error: {message}"),
            Some(Frame::Exit(ExitStatus::Code(code))) => return Ok(code),
            Some(Frame::Exit(ExitStatus::Signal(_))) => return Ok(1),
            Some(_) => {}
            None => bail!("the device closed the logs stream before its end"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            follow: false,
            lines: None,
            since: None,
            until: None,
            unit: None,
            container: None,
            runtime: false,
        }
    }

    #[test]
    fn the_runtime_log_is_the_default_and_sources_do_not_mix() {
        let now = Utc::now();
        assert_eq!(request(&args(), now).unwrap().source, LogSource::Runtime);
        let mut both = args();
        both.unit = Some("nginx".into());
        both.container = Some("web".into());
        let err = request(&both, now).unwrap_err().to_string();
        assert_eq!(
            err,
            "give one of --unit, --container or --runtime, not several"
        );
        let mut unit = args();
        unit.unit = Some("nginx".into());
        unit.runtime = true;
        assert!(request(&unit, now).is_err());
    }

    #[test]
    fn times_are_durations_or_instants_and_ordered() {
        let now: DateTime<Utc> = "2026-01-01T12:00:00Z".parse().unwrap();
        let mut a = args();
        a.since = Some("10m".into());
        a.until = Some("2026-01-01T11:55:00Z".into());
        let r = request(&a, now).unwrap();
        assert_eq!(r.since.unwrap().to_rfc3339(), "2026-01-01T11:50:00+00:00");
        a.since = Some("2m".into());
        let err = request(&a, now).unwrap_err().to_string();
        assert_eq!(err, "--since must be before --until");
        a.since = Some("yesterday".into());
        assert!(format!("{:#}", request(&a, now).unwrap_err()).contains("--since"));
    }

    #[test]
    fn a_line_prints_as_time_level_source_message() {
        let line = LogLine {
            time: Some("2026-01-01T10:00:00.5Z".parse().unwrap()),
            level: "INFO".into(),
            source: "m87_agent::console".into(),
            message: "tunnel connected".into(),
        };
        assert_eq!(
            format_line(&line),
            "2026-01-01T10:00:00.500Z INFO  m87_agent::console tunnel connected"
        );
    }
}
