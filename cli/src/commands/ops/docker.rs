//! `m87 <device> docker ARGS…`: the local `docker` CLI against the device's Docker socket.
//!
//! The local `docker` must exist (checked before anything is asked of the server). The session
//! is granted for `Operation::Docker` with `{"argv": ARGS}`; a private socket
//! (`$TMPDIR/m87-docker-…/docker.sock`, directory 0700, socket 0600) stands in for the
//! device's, each connection docker makes to it is one `Channel::Docker` in the session, and
//! `docker ARGS…` runs with `DOCKER_HOST=unix://…` and this terminal's stdin, stdout and
//! stderr. docker starts while the session is granted and opened (its first connection waits
//! for it; a refused grant stops docker before it says anything). Its exit code is ours. Ctrl-C in the terminal reaches docker (it is in the same
//! process group); m87 ignores it and waits for docker, so docker decides what Ctrl-C means
//! (`logs -f` stops, `compose up` stops its containers). SIGTERM to m87 is passed to docker.
//! The socket directory is removed on every exit.

use std::ffi::OsStr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use m87_events::token::Operation;
use m87_events::tunnel::Channel;
use m87_transport::stream::splice;
use tokio::net::UnixStream;
use tokio::signal::unix::{SignalKind, signal};

use crate::remote::forward::unix::{MAX_SOCKET_PATH, SocketFile};
use crate::remote::{ChannelOpener, OpenError};
use crate::session::QuicSession;
use std::future::Future;

/// `docker` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The docker command and its arguments, as you would give them to `docker`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// The error when there is no local `docker` program.
pub const DOCKER_MISSING: &str = "the docker CLI is not installed on this machine: `m87 <device> \
     docker` runs your local `docker` against the device's engine (install it, e.g. \
     `apt-get install docker.io` on Debian/Ubuntu or Docker's docker-ce-cli package)";

/// Environment variables that would point docker elsewhere than the device.
const DOCKER_ENV_OVERRIDES: [&str; 4] = [
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS",
];

/// How long the end of the session may take to go out once docker is done (QUIC's draining
/// period after it is not waited for: docker's answer is already there).
const CLOSE_WAIT: Duration = Duration::from_millis(20);

/// Runs it; returns docker's exit code.
pub async fn run(
    client: &m87_transport::http::ApiClient,
    device: &str,
    args: Args,
    _output: crate::output::Output,
) -> anyhow::Result<i32> {
    let docker = find_program(OsStr::new("docker")).context(DOCKER_MISSING)?;
    let dir = SocketDir::create()?;
    let socket = SocketFile::bind(&dir.path().join("docker.sock"))?;
    let grant = serde_json::json!({ "argv": args.args });
    // docker starts while the session is granted and opened; its connections wait for it.
    let opening = QuicSession::open(client, device, Operation::Docker, grant);
    let (code, session) = run_docker(&docker, &args.args, socket, opening).await;
    drop(dir);
    if let Some(session) = session {
        close(session).await;
    }
    code
}

/// Closes the session once the connection tasks have let go of it.
async fn close(mut session: Arc<QuicSession>) {
    for _ in 0..200 {
        match Arc::try_unwrap(session) {
            Ok(session) => return session.close_within(CLOSE_WAIT).await,
            Err(still_shared) => session = still_shared,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The session once it is open; docker's connections wait for it.
type Ready = tokio::sync::watch::Receiver<Option<Arc<QuicSession>>>;

/// Runs `docker ARGS…` against `socket` while `opening` opens the session, serving docker's
/// connections in it, until docker exits. A refused grant stops docker (it is only waiting
/// for its first answer) and is the error. Returns docker's exit code and the session.
async fn run_docker(
    docker: &Path,
    args: &[String],
    socket: SocketFile,
    opening: impl Future<Output = anyhow::Result<QuicSession>>,
) -> (anyhow::Result<i32>, Option<Arc<QuicSession>>) {
    let (ready_tx, ready) = tokio::sync::watch::channel(None);
    let mut child = match start_docker(docker, args, socket.path()) {
        Ok(started) => started,
        Err(e) => return (Err(e), None),
    };
    let pid = child.child.id().and_then(|id| i32::try_from(id).ok());
    let refusal = Arc::new(Refusal {
        pid,
        reported: Mutex::new(false),
    });
    let serving = socket.accept_each(|stream| {
        let (ready, refusal) = (ready.clone(), Arc::clone(&refusal));
        async move { serve_connection(ready, stream, &refusal).await }
    });
    tokio::pin!(serving, opening);
    let mut session = None;
    let status = loop {
        tokio::select! {
            opened = &mut opening, if session.is_none() => match opened {
                Ok(opened) => {
                    let opened = Arc::new(opened);
                    ready_tx.send_replace(Some(Arc::clone(&opened)));
                    session = Some(opened);
                }
                Err(e) => {
                    send_signal(pid, rustix::process::Signal::KILL);
                    let _ = child.child.wait().await;
                    return (Err(e), None);
                }
            },
            status = child.child.wait() => break status,
            () = &mut serving => {}
            _ = child.interrupts.recv() => {} // docker got it too, from the terminal
            _ = child.terms.recv() => send_signal(pid, rustix::process::Signal::TERM),
        }
    };
    // docker may end without ever connecting (`docker --help`): the grant still completes.
    if session.is_none() {
        match opening.await {
            Ok(opened) => session = Some(Arc::new(opened)),
            Err(e) => return (Err(e), None),
        }
    }
    let code = match status {
        Err(e) => Err(anyhow::anyhow!("waiting for docker: {e}")),
        Ok(_) if refusal.was_reported() => Ok(1),
        Ok(status) => Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))),
    };
    (code, session)
}

/// docker, running, and the signals m87 watches meanwhile.
struct Docker {
    child: tokio::process::Child,
    interrupts: tokio::signal::unix::Signal,
    terms: tokio::signal::unix::Signal,
}

/// Starts `docker ARGS…` with `DOCKER_HOST` at `socket`.
fn start_docker(docker: &Path, args: &[String], socket: &Path) -> anyhow::Result<Docker> {
    // Installed before docker starts, so a Ctrl-C never ends m87 before docker.
    let interrupts = signal(SignalKind::interrupt()).context("cannot watch for Ctrl-C")?;
    let terms = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut command = tokio::process::Command::new(docker);
    command
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()));
    for name in DOCKER_ENV_OVERRIDES {
        command.env_remove(name);
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", docker.display()))?;
    Ok(Docker {
        child,
        interrupts,
        terms,
    })
}

/// The first channel the device refused: told once, and docker is stopped (it would only
/// report a broken connection after it).
struct Refusal {
    pid: Option<i32>,
    reported: Mutex<bool>,
}

impl Refusal {
    fn report(&self, error: &OpenError) {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if !*reported {
            *reported = true;
            match error {
                OpenError::Refused { message, .. } => eprintln!("error: {message}"),
                OpenError::Lost(why) => eprintln!("error: the session to the device broke: {why}"),
            }
            send_signal(self.pid, rustix::process::Signal::KILL);
        }
    }

    fn was_reported(&self) -> bool {
        *self.reported.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn send_signal(pid: Option<i32>, signal: rustix::process::Signal) {
    if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// One connection of docker's: once the session is open, its own channel, spliced until both
/// directions end. Dropped unanswered if the session never opens.
async fn serve_connection(mut ready: Ready, mut local: UnixStream, refusal: &Refusal) {
    let session = match ready.wait_for(Option::is_some).await {
        Ok(session) => session.clone(),
        Err(_) => return,
    };
    let Some(session) = session else { return };
    match session.open(Channel::Docker).await {
        Ok(opened) => {
            if let Err(e) = splice(&mut local, opened.reader, opened.writer).await {
                tracing::debug!(error = %e, "docker connection broke");
            }
        }
        // Told (and docker stopped) before its connection closes, so docker says nothing.
        Err(e) => refusal.report(&e),
    }
}

/// A private directory for the socket, removed when dropped.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("m87-docker-{}", uuid::Uuid::new_v4().simple()));
        let socket_len = dir.join("docker.sock").as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            anyhow::bail!(
                "the temporary directory {} is too deep for a unix socket ({socket_len} bytes, at \
                 most {MAX_SOCKET_PATH}); set TMPDIR to a shorter directory such as /tmp",
                std::env::temp_dir().display()
            );
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `name` as the shell would find it: itself if it holds a `/`, else the first executable file
/// of that name on `PATH`.
fn find_program(name: &OsStr) -> Option<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if Path::new(name).components().count() > 1 {
        let path = PathBuf::from(name);
        return executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path_only_when_executable() {
        assert!(find_program(OsStr::new("sh")).is_some());
        assert_eq!(find_program(OsStr::new("m87-no-such-program")), None);
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        assert_eq!(find_program(plain.as_os_str()), None);
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program(plain.as_os_str()), Some(plain));
    }

    #[test]
    fn the_socket_directory_is_private_and_removed() {
        let dir = SocketDir::create().unwrap();
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn the_missing_docker_message_is_one_line_naming_the_package() {
        assert!(!DOCKER_MISSING.contains('\n'));
        assert!(DOCKER_MISSING.contains("docker.io"));
    }
}
