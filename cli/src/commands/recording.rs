//! `m87 audit play SESSION [--speed N]` and `m87 audit recording SESSION -o FILE`: a recorded
//! session's terminal, replayed here or saved as asciicast v2.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use m87_events::SessionId;
use m87_events::asciicast::{Event, EventKind};

use crate::context::user_client;

/// The longest pause replayed (before the speed applies): a recording of a terminal left idle
/// for an hour plays without the hour.
pub const MAX_IDLE: Duration = Duration::from_secs(2);

/// The recording of `session`, as the server keeps it.
async fn fetch(session: SessionId) -> anyhow::Result<Vec<u8>> {
    let client = user_client()?;
    match client
        .get_bytes(&format!("/v1/sessions/{session}/recording"))
        .await
    {
        Ok(cast) => Ok(cast),
        Err(e) if e.status() == Some(404) => anyhow::bail!(
            "session {session} has no recording you may read (it was not recorded, its \
             recording is not uploaded yet, or it is not yours to read)"
        ),
        Err(e) => Err(e.into()),
    }
}

/// How long to wait before `next`, after an event at `previous` seconds, at `speed`.
pub fn pause(previous: f64, next: f64, speed: f64) -> Duration {
    let gap = Duration::from_secs_f64((next - previous).max(0.0)).min(MAX_IDLE);
    gap.div_f64(speed)
}

/// Writes the output events of a recording to `out`, pausing between them as recorded.
async fn replay(events: &[Event], speed: f64, out: &mut impl Write) -> anyhow::Result<()> {
    let mut previous = 0.0;
    for event in events.iter().filter(|e| e.kind == EventKind::Output) {
        tokio::time::sleep(pause(previous, event.time, speed)).await;
        previous = event.time;
        out.write_all(event.data.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

/// `m87 audit play SESSION [--speed N]`.
pub async fn play(session: SessionId, speed: f64) -> anyhow::Result<()> {
    if !(speed.is_finite() && speed > 0.0) {
        anyhow::bail!("--speed must be a positive number, not {speed}");
    }
    let cast = fetch(session).await?;
    let (_, events) = m87_events::asciicast::parse(&String::from_utf8_lossy(&cast))
        .context("reading the recording")?;
    let mut stdout = std::io::stdout().lock();
    replay(&events, speed, &mut stdout).await?;
    writeln!(stdout)?;
    Ok(())
}

/// The arguments of `m87 audit recording` (its `-o` names a file, so they are parsed here,
/// apart from the global `-o` that picks the output format).
#[derive(Debug, Parser)]
#[command(name = "m87 audit recording")]
struct SaveArgs {
    /// The session id.
    session: SessionId,
    /// Where to write the asciicast (`-` for standard output).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: String,
}

/// `m87 audit recording SESSION -o FILE`.
pub async fn save(args: &[String]) -> anyhow::Result<()> {
    let argv = std::iter::once("m87 audit recording".to_owned()).chain(args.iter().cloned());
    let args = match SaveArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            std::process::exit(e.exit_code());
        }
    };
    let cast = fetch(args.session).await?;
    if args.output == "-" {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&cast)?;
        stdout.flush()?;
        return Ok(());
    }
    // What was typed may be in it: readable by this user only.
    m87_transport::private_file::write_private_file(std::path::Path::new(&args.output), &cast)
        .with_context(|| format!("writing {}", args.output))?;
    eprintln!(
        "saved the recording of session {} to {} ({} bytes)",
        args.session,
        args.output,
        cast.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_follow_the_recording_scaled_and_capped() {
        assert_eq!(pause(1.0, 1.5, 1.0), Duration::from_millis(500));
        assert_eq!(pause(1.0, 1.5, 2.0), Duration::from_millis(250));
        assert_eq!(pause(0.0, 3600.0, 1.0), MAX_IDLE);
        assert_eq!(pause(0.0, 3600.0, 100.0), MAX_IDLE / 100);
        assert_eq!(pause(2.0, 1.0, 1.0), Duration::ZERO);
    }

    #[tokio::test]
    async fn replay_writes_the_output_only() {
        let events = vec![
            Event {
                time: 0.1,
                kind: EventKind::Input,
                data: "typed".into(),
            },
            Event {
                time: 0.2,
                kind: EventKind::Output,
                data: "shown ".into(),
            },
            Event {
                time: 9.0,
                kind: EventKind::Resize,
                data: "10x10".into(),
            },
            Event {
                time: 100.0,
                kind: EventKind::Output,
                data: "later".into(),
            },
        ];
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        replay(&events, 100.0, &mut out).await.unwrap();
        assert_eq!(out, b"shown later");
        // 0.2 s, then the 99.8 s gap capped at 2 s: 22 ms at 100 times the speed.
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
