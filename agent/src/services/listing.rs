//! `m87 <device> ls`: a directory's entries.

use m87_events::tunnel::listing::ListRequest;
use m87_transport::frames::FrameReader;

use super::{BoxRead, BoxWrite, ChannelOutcome, unavailable};

/// Lists the path.
pub async fn serve(
    _request: ListRequest,
    _reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
) -> ChannelOutcome {
    unavailable(&mut writer, "ls is not served by this runtime yet".into()).await
}
