//! `m87 <device> serial`: a serial port, raw bytes both ways.

use m87_events::tunnel::serial::SerialSettings;
use m87_transport::frames::FrameReader;

use super::{BoxRead, BoxWrite, ChannelOutcome, unavailable};

/// Opens the port and serves the channel until either side closes it.
pub async fn serve(
    _settings: SerialSettings,
    _reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
) -> ChannelOutcome {
    unavailable(
        &mut writer,
        "serial ports are not served by this runtime yet".into(),
    )
    .await
}
