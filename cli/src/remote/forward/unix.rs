//! Unix-socket forwards — `/local.sock:/remote.sock` (a local socket file) and
//! `8080:/run/app.sock` (a local TCP port) to a socket on the device — and the private local
//! socket file they and `m87 <device> docker` listen on.
//!
//! Each local connection opens its own `Channel::UnixForward` (or `Channel::Docker`) channel;
//! the device connects first and then accepts or refuses (see `agent/src/services/forward.rs`,
//! "Unix sockets"), after which the channel carries raw bytes both ways.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use m87_events::tunnel::Channel;
use m87_transport::stream::splice;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;

use super::ACCEPT_BACKOFF;
use crate::remote::{ChannelOpener, OpenError, OpenedChannel};

/// The longest unix socket path the system takes (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Where a unix-socket forward listens locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalEnd {
    /// A TCP port on the bind address.
    Port(u16),
    /// A socket file, made private to this user and removed on exit.
    Path(PathBuf),
}

impl fmt::Display for LocalEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalEnd::Port(port) => write!(f, "{port}"),
            LocalEnd::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A forward to a unix socket on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// The local end.
    pub local: LocalEnd,
    /// The socket's absolute path on the device.
    pub remote_path: String,
}

impl SocketSpec {
    /// The channel one local connection opens.
    pub fn channel(&self) -> Channel {
        Channel::UnixForward {
            path: self.remote_path.clone(),
        }
    }

    /// The grant's target for it: `{"path": …, "proto": "unix"}`.
    pub fn grant_target(&self) -> serde_json::Value {
        serde_json::json!({ "path": self.remote_path, "proto": "unix" })
    }
}

/// In the form [`parse_socket_spec`] reads: `/local.sock:/remote.sock`, `8080:/run/app.sock`.
impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.local, self.remote_path)
    }
}

/// Whether a forward spec names a unix socket on the device (`…:/path`, or a spec that starts
/// with a path) rather than a port.
pub fn is_socket_spec(spec: &str) -> bool {
    let spec = spec.trim();
    spec.starts_with('/') || spec.contains(":/")
}

/// Parses `LOCAL:/remote/path`, where LOCAL is a port or a socket file path; the error says
/// what is wrong.
pub fn parse_socket_spec(spec: &str) -> Result<SocketSpec, String> {
    let spec = spec.trim();
    let Some(split) = spec.find(":/") else {
        return Err(format!(
            "give the device's socket too, as in {spec}:/run/app.sock (LOCAL:/REMOTE.sock)"
        ));
    };
    let (local, remote) = (&spec[..split], &spec[split + 1..]);
    check_socket_path(remote, "the device's socket path")?;
    let local = if !local.is_empty() && local.bytes().all(|b| b.is_ascii_digit()) {
        LocalEnd::Port(super::spec::parse_port(local)?)
    } else {
        check_socket_path(local, "the local socket path")?;
        LocalEnd::Path(PathBuf::from(local))
    };
    Ok(SocketSpec {
        local,
        remote_path: remote.to_owned(),
    })
}

fn check_socket_path(path: &str, what: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err(format!("{what} is missing"));
    }
    if path.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "{what} is {} bytes long; unix socket paths are at most {MAX_SOCKET_PATH}",
            path.len()
        ));
    }
    if path.ends_with('/') {
        return Err(format!("{what} {path:?} names a directory, not a socket"));
    }
    Ok(())
}

/// A listening socket file that only this user may use (mode 0600); removed when dropped.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    listener: UnixListener,
}

impl SocketFile {
    /// Listens on `path`. A leftover socket nobody listens on is replaced; a socket in use, or
    /// a file that is not a socket, is an error naming it (never overwritten).
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                anyhow::bail!(
                    "{} exists and is not a socket; refusing to overwrite it (remove it or \
                     choose another path)",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "{} is in use: another program listens on it (stop it or choose another \
                     path)",
                    path.display()
                );
            }
            std::fs::remove_file(path).map_err(|e| {
                anyhow::anyhow!("cannot replace the stale socket {}: {e}", path.display())
            })?;
        }
        // Created 0600 from the start: the umask covers the moment between bind and chmod.
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
        let bound = UnixListener::bind(path);
        rustix::process::umask(old);
        let listener =
            bound.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
        let file = Self {
            path: path.to_path_buf(),
            listener,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", path.display()))?;
        Ok(file)
    }

    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections until dropped; each one is handed to `serve` in its own task
    /// (aborted when this future is dropped).
    pub async fn accept_each<F, Fut>(&self, mut serve: F)
    where
        F: FnMut(tokio::net::UnixStream) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(serve(stream));
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot accept a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Pipes one local connection through a channel of its own: opens `channel`, and once the
/// device has accepted, splices raw bytes both ways until both directions end. Returns the
/// device's refusal (or the lost session) if it did not accept.
pub async fn pipe_connection<S>(
    opener: &dyn ChannelOpener,
    channel: Channel,
    mut local: S,
) -> Result<(), OpenError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let OpenedChannel { reader, writer, .. } = opener.open(channel).await?;
    match splice(&mut local, reader, writer).await {
        Ok((up, down)) => tracing::debug!(up, down, "socket connection ended"),
        Err(e) => tracing::debug!(error = %e, "socket connection broke"),
    }
    Ok(())
}

/// A bound local end of a unix-socket forward.
#[derive(Debug)]
pub enum BoundSocket {
    /// `8080:/run/app.sock`.
    Tcp(SocketSpec, TcpListener),
    /// `/local.sock:/remote.sock`.
    Unix(SocketSpec, SocketFile),
}

impl BoundSocket {
    /// Binds the local end of `spec` (a port on `bind`, or a socket file).
    pub async fn bind(spec: SocketSpec, bind: std::net::IpAddr) -> anyhow::Result<Self> {
        match &spec.local {
            LocalEnd::Port(port) => {
                let addr = std::net::SocketAddr::new(bind, *port);
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!("cannot listen on {addr}/tcp (forward {spec}): {e}")
                })?;
                Ok(Self::Tcp(spec, listener))
            }
            LocalEnd::Path(path) => {
                let file = SocketFile::bind(path)?;
                Ok(Self::Unix(spec, file))
            }
        }
    }

    /// The local end as users see it (`127.0.0.1:8080` or the socket's path) and the spec.
    pub fn local_display(&self) -> (String, &SocketSpec) {
        match self {
            Self::Tcp(spec, l) => (
                l.local_addr()
                    .map_or_else(|_| spec.local.to_string(), |a| a.to_string()),
                spec,
            ),
            Self::Unix(spec, file) => (file.path().display().to_string(), spec),
        }
    }

    /// Forwards every connection until dropped.
    pub async fn serve(self, opener: Arc<dyn ChannelOpener>) {
        match self {
            Self::Tcp(spec, listener) => accept_tcp(opener, Arc::new(spec), listener).await,
            Self::Unix(spec, file) => {
                let spec = Arc::new(spec);
                file.accept_each(|stream| {
                    forward_one(Arc::clone(&opener), Arc::clone(&spec), stream)
                })
                .await;
            }
        }
    }
}

async fn accept_tcp(opener: Arc<dyn ChannelOpener>, spec: Arc<SocketSpec>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(forward_one(Arc::clone(&opener), Arc::clone(&spec), stream));
                }
                Err(e) => {
                    tracing::warn!(forward = %spec, error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward_one<S>(opener: Arc<dyn ChannelOpener>, spec: Arc<SocketSpec>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = pipe_connection(opener.as_ref(), spec.channel(), stream).await {
        tracing::warn!("cannot forward to {}: {e}", spec.remote_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::testing::LocalOpener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn error(spec: &str) -> String {
        parse_socket_spec(spec).unwrap_err()
    }

    #[test]
    fn socket_specs_are_told_from_port_specs() {
        for s in [
            "/tmp/a.sock:/run/b.sock",
            "8080:/run/app.sock",
            "./a.sock:/b",
            "/x",
        ] {
            assert!(is_socket_spec(s), "{s}");
        }
        for s in [
            "8080",
            "8080:80",
            "53/udp",
            "8080:[::1]:80/tcp",
            "8080:10.0.0.5:80",
        ] {
            assert!(!is_socket_spec(s), "{s}");
        }
    }

    #[test]
    fn local_ends_are_ports_or_paths() {
        assert_eq!(
            parse_socket_spec("/tmp/l.sock:/run/app.sock").unwrap(),
            SocketSpec {
                local: LocalEnd::Path("/tmp/l.sock".into()),
                remote_path: "/run/app.sock".into()
            }
        );
        let tcp = parse_socket_spec("8080:/run/app.sock").unwrap();
        assert_eq!(tcp.local, LocalEnd::Port(8080));
        assert_eq!(tcp.to_string(), "8080:/run/app.sock");
        assert_eq!(
            tcp.grant_target(),
            serde_json::json!({"path": "/run/app.sock", "proto": "unix"})
        );
        assert_eq!(
            tcp.channel(),
            Channel::UnixForward {
                path: "/run/app.sock".into()
            }
        );
    }

    #[test]
    fn bad_socket_specs_say_why() {
        assert!(error("/run/app.sock").contains("give the device's socket too"));
        assert!(error("0:/run/app.sock").contains("port 0 is not allowed"));
        assert!(error("70000:/run/app.sock").contains("out of range"));
        assert!(error(":/run/app.sock").contains("the local socket path is missing"));
        assert!(error("/tmp/x:/run/").contains("names a directory"));
        let long = format!("8080:/{}", "a".repeat(120));
        assert!(error(&long).contains("at most 107"), "{}", error(&long));
    }

    #[tokio::test]
    async fn socket_files_are_private_and_removed_and_never_overwrite_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let file = SocketFile::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = SocketFile::bind(&path).unwrap_err().to_string();
        assert!(err.contains("is in use"), "{err}");
        drop(file);
        assert!(!path.exists());
        // A socket left behind by a process that died is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        drop(SocketFile::bind(&path).unwrap());
        std::fs::write(&path, "precious").unwrap();
        let err = SocketFile::bind(&path).unwrap_err().to_string();
        assert!(
            err.contains("is not a socket; refusing to overwrite it"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    /// A unix echo server "on the device".
    fn echo_server(path: &Path) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
    }

    #[tokio::test]
    async fn a_local_socket_reaches_the_device_socket_and_a_missing_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote.sock");
        echo_server(&remote);
        let local = dir.path().join("local.sock");
        let spec = SocketSpec {
            local: LocalEnd::Path(local.clone()),
            remote_path: remote.to_str().unwrap().into(),
        };
        let bound = BoundSocket::bind(spec, [127, 0, 0, 1].into())
            .await
            .unwrap();
        let task = tokio::spawn(bound.serve(Arc::new(LocalOpener::default())));
        let mut s = tokio::net::UnixStream::connect(&local).await.unwrap();
        s.write_all(b"through the tunnel").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back).await.unwrap();
        assert_eq!(back, "through the tunnel");
        task.abort();
        let _ = task.await;
        assert!(!local.exists(), "the local socket is removed");

        let missing = Channel::UnixForward {
            path: "/nonexistent/app.sock".into(),
        };
        let (a, _b) = tokio::io::duplex(64);
        let err = pipe_connection(&LocalOpener::default(), missing, a)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot connect to unix socket /nonexistent/app.sock on the device"),
            "{err}"
        );
    }
}
