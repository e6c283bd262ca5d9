//! TCP and UDP forwards. (Implementation in progress.)

use m87_events::tunnel::Frame;
use tokio::io::AsyncWriteExt;

use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext};
use crate::frames::{FrameReader, write_frame};

async fn unsupported(mut writer: BoxWrite, what: &str) -> ChannelOutcome {
    let message = format!("this device's agent cannot {what} yet");
    let _ = write_frame(&mut writer, &Frame::Error(message.clone())).await;
    let _ = writer.shutdown().await;
    ChannelOutcome {
        exit: None,
        error: Some(message),
    }
}

/// A TCP connection to `host:port`, spliced with the channel.
pub async fn tcp(
    host: &str,
    port: u16,
    reader: FrameReader<BoxRead>,
    writer: BoxWrite,
) -> ChannelOutcome {
    let _ = (host, port, reader);
    unsupported(writer, "forward TCP").await
}

/// A UDP flow to `host:port` over the tunnel's datagrams.
pub async fn udp(
    host: &str,
    port: u16,
    reader: FrameReader<BoxRead>,
    writer: BoxWrite,
    ctx: &ServiceContext,
) -> ChannelOutcome {
    let _ = (host, port, reader, ctx);
    unsupported(writer, "forward UDP").await
}
