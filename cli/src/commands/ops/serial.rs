//! `m87 <device> serial PORT`: a device's serial port as a local pseudo-terminal (`--link`)
//! or in this terminal (`Ctrl-]` quits).

use std::path::PathBuf;

use m87_events::token::Operation;
use m87_events::tunnel::Channel;
use m87_events::tunnel::serial::{Parity, SerialSettings};

use crate::remote::serial::{Ended, Link, Pty, run_pty, run_terminal};
use crate::remote::{ChannelOpener, OpenError};
use crate::session::QuicSession;

/// `serial` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The port on the device (`/dev/ttyUSB0`).
    pub port: String,
    /// Baud rate.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Data bits (5 to 8).
    #[arg(long, default_value_t = 8)]
    pub data_bits: u8,
    /// Parity.
    #[arg(long, value_enum, default_value_t = ParityArg::None)]
    pub parity: ParityArg,
    /// Stop bits (1 or 2).
    #[arg(long, default_value_t = 1)]
    pub stop_bits: u8,
    /// Make a local pseudo-terminal for the port and link it at PATH (for picocom, minicom,
    /// screen, or a program of yours), until Ctrl-C. Without it, this terminal is connected
    /// in raw mode and `Ctrl-]` quits.
    #[arg(long, value_name = "PATH")]
    pub link: Option<PathBuf>,
}

/// Parity on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ParityArg {
    /// No parity bit.
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

impl Args {
    fn settings(&self) -> SerialSettings {
        SerialSettings {
            path: self.port.clone(),
            baud: self.baud,
            data_bits: self.data_bits,
            parity: match self.parity {
                ParityArg::None => Parity::None,
                ParityArg::Odd => Parity::Odd,
                ParityArg::Even => Parity::Even,
            },
            stop_bits: self.stop_bits,
        }
    }
}

/// Runs it; returns the exit code: 0 when stopped by the user, 1 when the device closed the
/// port or refused it.
pub async fn run(
    client: &m87_transport::http::ApiClient,
    device: &str,
    args: Args,
    _output: crate::output::Output,
) -> anyhow::Result<i32> {
    let settings = args.settings();
    // Everything that can be checked here is, before any grant is asked for.
    settings.validate().map_err(anyhow::Error::msg)?;
    if let Some(link) = &args.link {
        Link::check(link)?;
    }
    let grant = serde_json::to_value(&settings)?;
    let session = QuicSession::open(client, device, Operation::Serial, grant).await?;
    let result = session
        .explain(serve(&session, settings, args.link).await)
        .await;
    session.close().await;
    result
}

async fn serve(
    session: &QuicSession,
    settings: SerialSettings,
    link: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let (port, baud) = (settings.path.clone(), settings.baud);
    let opened = match session.open(Channel::Serial(settings)).await {
        Ok(opened) => opened,
        Err(OpenError::Refused { message, .. }) => anyhow::bail!("{message}"),
        Err(e) => return Err(e.into()),
    };
    let name = session.device.name.to_string();
    let ended = match link {
        Some(link) => {
            let pty = Pty::open()?;
            let _link = Link::create(&link, &pty.path)?;
            println!(
                "serial {port} on {name} at {baud} baud: {} (linked at {}); Ctrl-C to stop",
                pty.path.display(),
                link.display()
            );
            run_pty(&pty, opened).await?
        }
        None => {
            eprintln!("serial {port} on {name} at {baud} baud; Ctrl-] to quit\r");
            run_terminal(opened).await?
        }
    };
    match ended {
        Ended::ByUser => Ok(0),
        Ended::ByDevice => {
            eprintln!("error: the device closed serial port {port}");
            Ok(1)
        }
    }
}
