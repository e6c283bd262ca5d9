//! `m87 <device> docker`: each connection of the local `docker` CLI is a channel carrying raw
//! bytes to the device's Docker (or Podman) API socket.

use std::path::PathBuf;

use m87_transport::frames::FrameReader;

use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext, unavailable};

/// The socket the device offers: the runtime's setting, else the first of Docker's and
/// Podman's usual sockets that exists.
pub fn socket(ctx: &ServiceContext) -> Option<PathBuf> {
    ctx.settings.docker_socket.clone()
}

/// Serves one connection.
pub async fn serve(
    _reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    _ctx: &ServiceContext,
) -> ChannelOutcome {
    unavailable(
        &mut writer,
        "docker is not served by this runtime yet".into(),
    )
    .await
}
