//! `m87 <device> serial`: a serial port, raw bytes both ways.
//!
//! The port is opened with `tokio-serial` (serialport underneath) with the channel's settings
//! and no flow control; a port that cannot be opened or set up is refused with
//! `unavailable`, naming the port and the OS error. Then the channel's bytes go to the port and
//! the port's to the channel until either side closes (the client ending the channel, or the
//! port going away).

use m87_events::tunnel::serial::{Parity, SerialSettings};
use m87_transport::frames::FrameReader;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_serial::{DataBits, FlowControl, SerialPortBuilderExt, SerialStream, StopBits};

use super::{BoxRead, BoxWrite, ChannelOutcome, accept, unavailable};

/// Bytes read at once from either side.
const CHUNK: usize = 16 * 1024;

/// Opens the port and serves the channel until either side closes it.
pub async fn serve(
    settings: SerialSettings,
    reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
) -> ChannelOutcome {
    let port = match open(&settings) {
        Ok(port) => port,
        Err(message) => return unavailable(&mut writer, message).await,
    };
    if let Err(e) = accept(&mut writer).await {
        return ChannelOutcome {
            exit: None,
            error: Some(format!("client disconnected: {e}")),
        };
    }
    let (inner, buffered) = reader.into_parts();
    let from_client = std::io::Cursor::new(buffered.freeze()).chain(inner);
    let (port_read, port_write) = tokio::io::split(port);
    let ended = tokio::select! {
        r = pump(from_client, port_write) => r.map_err(|e| format!("writing to {}: {e}", settings.path)),
        r = pump(port_read, writer) => r.map_err(|e| format!("reading from {}: {e}", settings.path)),
    };
    match ended {
        Ok(()) => ChannelOutcome::default(),
        Err(message) => {
            tracing::debug!(port = %settings.path, %message, "serial: ended");
            ChannelOutcome {
                exit: None,
                error: Some(message),
            }
        }
    }
}

/// The port with `settings`, or a sentence naming the port and why it cannot be opened.
pub fn open(settings: &SerialSettings) -> Result<SerialStream, String> {
    settings.validate()?;
    let data_bits = match settings.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match settings.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let stop_bits = if settings.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    tokio_serial::new(&settings.path, settings.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(FlowControl::None)
        .open_native_async()
        .map_err(|e| {
            format!(
                "cannot open serial port {} on the device: {e}",
                settings.path
            )
        })
}

/// Copies `from` to `to` until `from` ends (Ok) or either fails; flushes after each chunk so
/// interactive bytes are not held back.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(path: &str, baud: u32) -> SerialSettings {
        SerialSettings {
            path: path.into(),
            baud,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        }
    }

    #[tokio::test]
    async fn a_missing_port_is_named_with_the_os_error() {
        let err = open(&settings("/dev/m87-no-such-port", 115_200)).unwrap_err();
        assert!(err.contains("/dev/m87-no-such-port"), "{err}");
        assert!(err.contains("No such file"), "{err}");
    }

    #[tokio::test]
    async fn bad_settings_are_refused_before_opening() {
        let err = open(&settings("/dev/ttyS0", 0)).unwrap_err();
        assert!(err.contains("baud rate 0"), "{err}");
    }
}
