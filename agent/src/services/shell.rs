//! PTY sessions: the login shell and `exec -t`. (Implementation in progress.)

use m87_events::tunnel::{Frame, Tty};
use tokio::io::AsyncWriteExt;

use super::{BoxRead, BoxWrite, ChannelOutcome};
use crate::frames::{FrameReader, write_frame};

/// Runs `argv` (or the login shell) in a PTY of `tty`'s size.
pub async fn run_pty(
    argv: Option<Vec<String>>,
    tty: Tty,
    reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
) -> ChannelOutcome {
    let _ = (argv, tty, reader);
    let message = "this device's agent cannot open terminals yet".to_owned();
    let _ = write_frame(&mut writer, &Frame::Error(message.clone())).await;
    let _ = writer.shutdown().await;
    ChannelOutcome {
        exit: None,
        error: Some(message),
    }
}
