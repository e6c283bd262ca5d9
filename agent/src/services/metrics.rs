//! `m87 <device> metrics`: live samples; one sampler shared by every viewer.

use m87_transport::frames::FrameReader;

use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext, unavailable};

/// The sampler every viewer of a runtime shares.
#[derive(Debug, Default)]
pub struct Hub {}

/// Serves one viewer.
pub async fn serve(
    _interval_ms: u32,
    _reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    _ctx: &ServiceContext,
) -> ChannelOutcome {
    unavailable(
        &mut writer,
        "metrics are not served by this runtime yet".into(),
    )
    .await
}
