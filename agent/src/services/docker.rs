//! `m87 <device> docker`: each connection of the local `docker` CLI is a channel carrying raw
//! bytes to the device's Docker (or Podman) API socket, exactly as a unix-socket forward
//! (see [`super::forward`]'s "Unix sockets"): the service connects, then accepts and splices,
//! or refuses with `unavailable` naming where it looked.

use std::path::{Path, PathBuf};

use m87_transport::frames::FrameReader;

use super::forward::{connect_unix, splice_unix};
use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext, unavailable};

/// Docker's socket.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Podman's system-wide socket (`podman system service` run as root, or its systemd unit).
const PODMAN_ROOT_SOCKET: &str = "/run/podman/podman.sock";

/// Where the runtime looks for a socket when none is configured, in order: Docker's, then the
/// runtime user's rootless Podman socket (`$XDG_RUNTIME_DIR/podman/podman.sock`, then
/// `/run/user/<uid>/podman/podman.sock`), then the system-wide Podman socket.
pub fn candidates() -> Vec<PathBuf> {
    let mut places = vec![PathBuf::from(DOCKER_SOCKET)];
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        places.push(Path::new(&dir).join("podman/podman.sock"));
    }
    let uid = rustix::process::getuid().as_raw();
    let user = PathBuf::from(format!("/run/user/{uid}/podman/podman.sock"));
    if !places.contains(&user) {
        places.push(user);
    }
    places.push(PathBuf::from(PODMAN_ROOT_SOCKET));
    places
}

/// The socket the device offers: the runtime's setting (`--docker-socket`), else the first of
/// [`candidates`] that exists.
pub fn socket(ctx: &ServiceContext) -> Option<PathBuf> {
    ctx.settings
        .docker_socket
        .clone()
        .or_else(|| candidates().into_iter().find(|p| p.exists()))
}

/// The refusal when no socket is configured and none of the usual places has one.
fn no_socket_message() -> String {
    let looked: Vec<String> = candidates()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "no Docker or Podman socket on this device (looked in {}); start dockerd or \
         `podman system service`, or give `m87 runtime run --docker-socket PATH`",
        looked.join(", ")
    )
}

/// Serves one connection of the docker CLI.
pub async fn serve(
    reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    ctx: &ServiceContext,
) -> ChannelOutcome {
    let Some(path) = socket(ctx) else {
        return unavailable(&mut writer, no_socket_message()).await;
    };
    match connect_unix(&path).await {
        Ok(stream) => splice_unix(stream, &path.display().to_string(), reader, writer).await,
        Err(e) => {
            let message = format!(
                "cannot connect to the container engine's socket {} on the device: {e}; \
                 is dockerd (or `podman system service`) running?",
                path.display()
            );
            unavailable(&mut writer, message).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::services::ServiceSettings;
    use m87_events::tunnel::Control;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct NoDatagrams;

    impl crate::services::DatagramPort for NoDatagrams {
        fn open_flow(&self) -> (u32, tokio::sync::mpsc::Receiver<bytes::Bytes>) {
            (0, tokio::sync::mpsc::channel(1).1)
        }
        fn send(&self, _: u32, _: bytes::Bytes) -> Result<(), String> {
            Ok(())
        }
        fn close_flow(&self, _: u32) {}
    }

    fn ctx(socket: Option<PathBuf>) -> ServiceContext {
        let settings = ServiceSettings {
            docker_socket: socket,
            runtime_log: None,
        };
        ServiceContext::new(Arc::new(NoDatagrams), settings)
    }

    /// Runs the service on one end of a pipe; returns the client's reader and writer.
    fn start(
        ctx: ServiceContext,
    ) -> (
        FrameReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
    ) {
        let (client, device) = tokio::io::duplex(64 * 1024);
        let (r, w) = tokio::io::split(device);
        tokio::spawn(async move {
            serve(FrameReader::new(Box::new(r) as BoxRead), Box::new(w), &ctx).await
        });
        let (r, w) = tokio::io::split(client);
        (FrameReader::new(r), w)
    }

    #[test]
    fn the_configured_socket_wins_and_the_usual_places_come_in_order() {
        let configured = PathBuf::from("/srv/engine.sock");
        assert_eq!(socket(&ctx(Some(configured.clone()))), Some(configured));
        let places = candidates();
        assert_eq!(places[0], Path::new("/var/run/docker.sock"));
        assert_eq!(places.last().unwrap(), Path::new("/run/podman/podman.sock"));
        let uid = rustix::process::getuid().as_raw();
        assert!(places.contains(&PathBuf::from(format!(
            "/run/user/{uid}/podman/podman.sock"
        ))));
        let message = no_socket_message();
        assert!(
            message.starts_with(
                "no Docker or Podman socket on this device (looked in /var/run/docker.sock, "
            ),
            "{message}"
        );
        assert!(
            message.ends_with("or give `m87 runtime run --docker-socket PATH`"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn connections_reach_the_configured_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 19];
            s.read_exact(&mut request).await.unwrap();
            assert_eq!(&request, b"GET /_ping HTTP/1.1");
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nOK").await.unwrap();
        });
        let (mut reader, mut w) = start(ctx(Some(path)));
        assert_eq!(
            reader.control().await.unwrap(),
            Some(Control::ChannelAccepted { flow: None })
        );
        w.write_all(b"GET /_ping HTTP/1.1").await.unwrap();
        let (mut r, _) = reader.into_parts();
        let mut answer = vec![];
        r.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\nOK");
    }

    #[tokio::test]
    async fn a_configured_socket_that_is_not_there_is_refused_naming_it() {
        let (mut reader, _w) = start(ctx(Some("/nonexistent/m87/docker.sock".into())));
        let Some(Control::Refused { code, message }) = reader.control().await.unwrap() else {
            panic!("expected a refusal");
        };
        assert_eq!(code, "unavailable");
        assert_eq!(
            message,
            "cannot connect to the container engine's socket /nonexistent/m87/docker.sock on \
             the device: No such file or directory (os error 2); is dockerd (or `podman system \
             service`) running?"
        );
    }
}
