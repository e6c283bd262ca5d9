//! `m87 <device> status`: the device's health report.

use m87_transport::frames::FrameReader;

use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext, unavailable};

/// Sends the report.
pub async fn serve(
    _reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    _ctx: &ServiceContext,
) -> ChannelOutcome {
    unavailable(
        &mut writer,
        "status is not served by this runtime yet".into(),
    )
    .await
}
