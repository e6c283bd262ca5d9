//! Test harness: the real `m87-server` and `m87` binaries on loopback, port 0, temporary
//! directories; every process is killed when its handle drops.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod pty;
pub mod tmux;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A built binary of this workspace.
pub fn bin(name: &str) -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_m87-server"));
    let path = server.parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Lines a child printed, on stdout and stderr together.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(&self, stream: impl Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.0.lock().unwrap().push(line);
            }
        });
    }

    pub fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// Waits for a line containing `needle`; returns that line.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line containing {needle:?} within {timeout:?}; got:\n{}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

/// A running child process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub out: Lines,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a test process");
        let out = Lines::default();
        out.follow(child.stdout.take().unwrap());
        out.follow(child.stderr.take().unwrap());
        Self { child, out }
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain.
                std::thread::sleep(Duration::from_millis(100));
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit; output:\n{}",
                self.out.all()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The certificate fingerprints of the servers this test process started, by URL: the `m87`
/// commands against them pin it (`M87_API_FINGERPRINT`), as a user following the README does.
fn pins() -> &'static Mutex<HashMap<String, String>> {
    static PINS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    PINS.get_or_init(Mutex::default)
}

/// Remembers that the server at `url` has the certificate fingerprint in `data_dir`.
pub fn remember_pin(url: &str, data_dir: &Path) -> String {
    let fingerprint = std::fs::read_to_string(data_dir.join("tls/fingerprint"))
        .expect("the server wrote its fingerprint")
        .trim()
        .to_owned();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    pins()
        .lock()
        .unwrap()
        .insert(url.to_owned(), fingerprint.clone());
    fingerprint
}

/// The fingerprint remembered for `url`.
pub fn pin_of(url: &str) -> Option<String> {
    pins().lock().unwrap().get(url).cloned()
}

/// A running `m87-server`.
pub struct Server {
    pub proc: Proc,
    pub url: String,
    pub addr: String,
    pub data_dir: PathBuf,
    /// Its certificate's fingerprint, from `<data-dir>/tls/fingerprint`.
    pub fingerprint: String,
}

impl Server {
    /// Starts the server on `listen` (use `127.0.0.1:0` for a free port) with its data in
    /// `data_dir`, and waits until it serves.
    pub fn start(data_dir: &Path, listen: &str) -> Self {
        Self::start_with_env(data_dir, listen, &[])
    }

    /// [`Server::start`] with more environment for the server (e.g. `OAUTH_ISSUER`).
    pub fn start_with_env(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin("m87-server"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["--api-listen", listen])
            .args(["--quic-listen", "127.0.0.1:0"])
            .env("M87_EXPIRY_SWEEP_SECS", "1")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let proc = Proc::spawn(cmd);
        let line = proc
            .out
            .wait_for("m87-server listening on https://", Duration::from_secs(30));
        let url = line.split_whitespace().last().unwrap().to_owned();
        let addr = url.trim_start_matches("https://").to_owned();
        let fingerprint = remember_pin(&url, data_dir);
        Self {
            proc,
            url,
            addr,
            data_dir: data_dir.to_path_buf(),
            fingerprint,
        }
    }

    /// The bootstrap admin key.
    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.key"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Stops the server (SIGTERM, as an operator or systemd would) and waits for it to exit.
    pub fn stop(&mut self) {
        let pid = self.proc.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.proc.wait_exit(Duration::from_secs(20));
    }

    /// Stops the server and starts it again on the same address and data directory.
    pub fn restart(mut self) -> Self {
        self.stop();
        let (dir, addr) = (self.data_dir.clone(), self.addr.clone());
        drop(self);
        Self::start(&dir, &addr)
    }
}

/// The `m87` command against a server, with its own configuration directory.
pub struct M87 {
    pub url: String,
    pub config_dir: PathBuf,
    pub api_key: Option<String>,
}

impl M87 {
    pub fn new(url: &str, config_dir: &Path, api_key: Option<&str>) -> Self {
        Self {
            url: url.to_owned(),
            config_dir: config_dir.to_path_buf(),
            api_key: api_key.map(str::to_owned),
        }
    }

    /// `m87 ARGS` against this server: its certificate pinned when this process started it,
    /// else (servers started elsewhere, such as fleet control planes) not checked.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("m87"));
        match pin_of(&self.url) {
            Some(pin) => cmd
                .env("M87_API_FINGERPRINT", pin)
                .env_remove("M87_TRUST_INVALID_CERT"),
            None => cmd
                .env("M87_TRUST_INVALID_CERT", "true")
                .env_remove("M87_API_FINGERPRINT"),
        };
        cmd.args(args)
            .env("M87_CONFIG_DIR", &self.config_dir)
            .env("M87_API_URL", &self.url)
            .env("M87_APPROVAL_POLL_SECS", "1")
            .env("M87_CHECK_INTERVAL_SECS", "1")
            .env_remove("M87_API_KEY")
            .env_remove("OWNER_REFERENCE")
            .env_remove("RUST_LOG");
        if let Some(k) = &self.api_key {
            cmd.env("M87_API_KEY", k);
        }
        cmd
    }

    /// Runs to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "m87 {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "m87 {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        // The warning that M87_TRUST_INVALID_CERT is set (servers this process did not start).
        let stderr: String = stderr
            .lines()
            .filter(|l| !l.starts_with("warning: M87_TRUST_INVALID_CERT"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "one-line error expected, got: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
        stderr
    }

    /// `m87 devices list -o json`.
    pub fn devices(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["devices", "list", "--output", "json"])).unwrap()
    }

    /// Starts `m87 runtime run` in the background.
    pub fn runtime(&self, args: &[&str]) -> Proc {
        let mut all = vec!["runtime", "run"];
        all.extend_from_slice(args);
        Proc::spawn(self.command(&all))
    }
}

/// A new user `email` with an API key made by `admin`, with its own config directory `dir`.
pub fn user(server: &Server, admin: &M87, dir: &Path, email: &str) -> M87 {
    let created: serde_json::Value =
        serde_json::from_str(&admin.ok(&["api-keys", "create", "--email", email, "-o", "json"]))
            .unwrap();
    M87::new(&server.url, dir, created["key"].as_str())
}

/// The request id a runtime printed.
pub fn request_id_of(runtime: &Proc) -> String {
    let line = runtime
        .out
        .wait_for("registration request", Duration::from_secs(30));
    line.split_whitespace()
        .nth(2)
        .expect("request id in the line")
        .to_owned()
}

/// Starts a runtime for a new device named `name`, approves it as `admin`, and waits until its
/// tunnel is up. Returns the runtime process and the device's M87 (with its config dir).
pub fn enrolled_device(server: &Server, admin: &M87, dir: &Path, name: &str) -> (Proc, M87) {
    let device = M87::new(&server.url, dir, None);
    let runtime = device.runtime(&["--email", "admin@localhost", "--name", name]);
    let request_id = request_id_of(&runtime);
    admin.ok(&["devices", "approve", &request_id]);
    runtime
        .out
        .wait_for("tunnel connected to relay", Duration::from_secs(30));
    (runtime, device)
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP server "on the device" that echoes everything back, then closes after the client
/// half-closes; returns its port.
pub fn echo_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = stream.try_clone().unwrap();
                let mut w = stream;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// A UDP server "on the device" that answers each datagram with `echo:` and the datagram;
/// returns its port.
pub fn udp_echo_server() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
    port
}

/// Organization `acme` (alice its admin, bob a member, carol a viewer), eve a stranger, and the
/// device `acme-bot`, approved by alice and connected. The server, the runtime and the
/// temporary directory live as long as this.
pub struct Acme {
    pub tmp: tempfile::TempDir,
    pub server: Server,
    /// The platform admin.
    pub root: M87,
    pub alice: M87,
    pub bob: M87,
    pub carol: M87,
    pub eve: M87,
    /// The device's own `m87` (its config dir).
    pub device: M87,
    pub runtime: Proc,
}

/// [`Acme`], its runtime started with nothing more than its owner and name.
pub fn acme() -> Acme {
    acme_with(&[])
}

/// [`Acme`], its runtime started with `runtime_args` besides its owner and name.
pub fn acme_with(runtime_args: &[&str]) -> Acme {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let root = M87::new(
        &server.url,
        &tmp.path().join("root"),
        Some(&server.admin_key()),
    );
    let alice = user(&server, &root, &tmp.path().join("a"), "alice@example.com");
    let bob = user(&server, &root, &tmp.path().join("b"), "bob@example.com");
    let carol = user(&server, &root, &tmp.path().join("c"), "carol@example.com");
    let eve = user(&server, &root, &tmp.path().join("e"), "eve@example.com");
    alice.ok(&["org", "create", "acme", "--name", "Acme"]);
    for (who, role) in [
        ("bob@example.com", "member"),
        ("carol@example.com", "viewer"),
    ] {
        alice.ok(&["org", "members", "add", "acme", who, "--role", role]);
    }
    let device = M87::new(&server.url, &tmp.path().join("dev"), None);
    let args = [&["--org", "acme", "--name", "acme-bot"], runtime_args].concat();
    let runtime = device.runtime(&args);
    let request_id = request_id_of(&runtime);
    alice.ok(&["devices", "approve", &request_id]);
    runtime
        .out
        .wait_for("tunnel connected to relay", Duration::from_secs(30));
    Acme {
        tmp,
        server,
        root,
        alice,
        bob,
        carol,
        eve,
        device,
        runtime,
    }
}

/// Polls `m87 audit --action ACTION -o json`, as `m87`, until `done` holds of the records
/// (at most 20 s), and returns them.
pub fn audit_until(
    m87: &M87,
    action: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = m87.ok(&["audit", "--action", action, "-o", "json"]);
        let records: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "the {action} records never matched: {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
