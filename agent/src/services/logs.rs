//! `m87 <device> logs`: the runtime's log, a systemd unit's journal, a container's log.

use m87_events::tunnel::logs::LogsRequest;
use m87_transport::frames::FrameReader;

use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext, unavailable};

/// Serves one logs channel.
pub async fn serve(
    _request: LogsRequest,
    _reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    _ctx: &ServiceContext,
) -> ChannelOutcome {
    unavailable(
        &mut writer,
        "logs are not served by this runtime yet".into(),
    )
    .await
}
