//! File copy and sync. (Implementation in progress.)

use m87_events::tunnel::Frame;
use m87_events::tunnel::files::FileChannel;
use tokio::io::AsyncWriteExt;

use super::{BoxRead, BoxWrite, ChannelOutcome};
use crate::frames::{FrameReader, write_frame};

/// Serves a files channel.
pub async fn serve(
    op: FileChannel,
    reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
) -> ChannelOutcome {
    let _ = (op, reader);
    let message = "this device's agent cannot copy files yet".to_owned();
    let _ = write_frame(&mut writer, &Frame::Error(message.clone())).await;
    let _ = writer.shutdown().await;
    ChannelOutcome {
        exit: None,
        error: Some(message),
    }
}
