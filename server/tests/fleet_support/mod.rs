//! A fleet on loopback for tests: NATS (one server or a cluster), a MongoDB (SecantusDB unless
//! `MONGODB_URI` is set), control-plane replicas and relays, each the real `m87-server` binary
//! in its own process, on free ports.
//!
//! Included by the fleet tests next to `common` (the single-machine harness) and the NATS and
//! MongoDB harnesses of the control plane's tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{M87, Proc, bin};
use crate::mongo::{MongoServer, unique_name};
use crate::nats::NatsCluster;

/// The relay secret of test fleets.
pub const SECRET: &str = "test-fleet-relay-secret-0123456789abcdef";

/// A control-plane replica.
pub struct ControlPlane {
    pub proc: Proc,
    pub url: String,
    pub data_dir: PathBuf,
    pub listen: String,
}

/// A relay.
pub struct RelayNode {
    pub proc: Proc,
    pub id: String,
    /// The address devices and clients dial.
    pub address: String,
    pub data_dir: PathBuf,
    pub listen: String,
}

/// The whole fleet. Everything is stopped when it drops.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub nats: NatsCluster,
    pub mongo: Arc<MongoServer>,
    pub database: String,
    pub control_planes: Vec<ControlPlane>,
    pub relays: Vec<RelayNode>,
    pub replicas: usize,
    /// Extra environment of every control plane started from now on (`M87_AUDIT_SINKS`, …).
    pub control_plane_env: Vec<(String, String)>,
}

impl Fleet {
    /// NATS with `nats_nodes` nodes (streams and buckets replicated on all of them), a MongoDB
    /// database of its own on `mongo`, and no control plane or relay yet.
    pub async fn new(nats_nodes: usize, mongo: Arc<MongoServer>) -> Self {
        let nats = if nats_nodes <= 1 {
            NatsCluster {
                nodes: vec![crate::nats::NatsServer::start().await],
            }
        } else {
            NatsCluster::start(nats_nodes).await
        };
        Self {
            dir: tempfile::tempdir().unwrap(),
            nats,
            mongo,
            database: unique_name("fleet"),
            control_planes: Vec::new(),
            relays: Vec::new(),
            replicas: nats_nodes.min(3),
            control_plane_env: Vec::new(),
        }
    }

    fn nats_urls(&self) -> String {
        self.nats.urls().join(",")
    }

    fn signing_key(&self) -> PathBuf {
        self.dir.path().join("session-signing.key")
    }

    /// The first control plane's TLS files, which later replicas share (as behind a load
    /// balancer).
    fn shared_tls(&self) -> Option<(PathBuf, PathBuf)> {
        let first = self.control_planes.first()?;
        Some((
            first.data_dir.join("tls/cert.pem"),
            first.data_dir.join("tls/key.pem"),
        ))
    }

    /// The command of control-plane replica `index` on `listen`.
    fn control_plane_command(&self, index: usize, listen: &str) -> Command {
        let data_dir = self.dir.path().join(format!("cp{index}"));
        let mut cmd = Command::new(bin("m87-server"));
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .arg("control-plane")
            .args(["--api-listen", listen])
            .env("M87_MONGODB_URI", self.mongo.uri())
            .env("M87_MONGODB_DATABASE", &self.database)
            .env("M87_NATS_URL", self.nats_urls())
            .env("M87_NATS_REPLICAS", self.replicas.to_string())
            .env("M87_SESSION_SIGNING_KEY", self.signing_key())
            .env("M87_RELAY_SECRET", SECRET)
            .env("M87_EXPIRY_SWEEP_SECS", "1")
            .env("RUST_LOG", "info,async_nats=warn")
            .envs(self.control_plane_env.iter().map(|(k, v)| (k, v)));
        if index > 0
            && let Some((cert, key)) = self.shared_tls()
        {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        cmd
    }

    /// Starts a control-plane replica and waits until it serves.
    pub fn start_control_plane(&mut self) -> usize {
        let index = self.control_planes.len();
        let cp = self.spawn_control_plane(index, "127.0.0.1:0");
        self.control_planes.push(cp);
        index
    }

    fn spawn_control_plane(&self, index: usize, listen: &str) -> ControlPlane {
        let proc = Proc::spawn(self.control_plane_command(index, listen));
        let line = proc.out.wait_for(
            "control plane listening on https://",
            Duration::from_secs(60),
        );
        let url = line.split_whitespace().last().unwrap().to_owned();
        ControlPlane {
            proc,
            listen: url.trim_start_matches("https://").to_owned(),
            url,
            data_dir: self.dir.path().join(format!("cp{index}")),
        }
    }

    /// Kills control plane `index` with SIGKILL.
    pub fn kill_control_plane(&mut self, index: usize) {
        self.control_planes[index].proc.kill();
    }

    /// Starts control plane `index` again on its address.
    pub fn restart_control_plane(&mut self, index: usize) {
        let listen = self.control_planes[index].listen.clone();
        self.control_planes[index].proc.kill();
        let cp = self.spawn_control_plane(index, &listen);
        self.control_planes[index] = cp;
    }

    /// Starts relay `relay-<n>` and waits until it listens.
    pub fn start_relay(&mut self) -> usize {
        let index = self.relays.len();
        let relay = self.spawn_relay(index, "127.0.0.1:0");
        self.relays.push(relay);
        index
    }

    fn spawn_relay(&self, index: usize, listen: &str) -> RelayNode {
        let id = format!("relay-{}", index + 1);
        let data_dir = self.dir.path().join(&id);
        let cps: Vec<&str> = self.control_planes.iter().map(|c| c.url.as_str()).collect();
        let mut cmd = Command::new(bin("m87-server"));
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .arg("relay")
            .args(["--relay-id", &id])
            .args(["--quic-listen", listen])
            .env("M87_CONTROL_PLANE_URL", cps.join(","))
            .env("M87_TRUST_INVALID_CERT", "true")
            .env("M87_NATS_URL", self.nats_urls())
            .env("M87_NATS_REPLICAS", self.replicas.to_string())
            .env("M87_RELAY_SECRET", SECRET)
            .env("RUST_LOG", "info,async_nats=warn");
        let proc = Proc::spawn(cmd);
        let line = proc
            .out
            .wait_for("m87-server relay listening on", Duration::from_secs(60));
        let address = line
            .split("devices and clients dial ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap()
            .to_owned();
        RelayNode {
            proc,
            id,
            listen: address.clone(),
            address,
            data_dir,
        }
    }

    /// Kills relay `index` with SIGKILL, as a crash would.
    pub fn kill_relay(&mut self, index: usize) {
        self.relays[index].proc.kill();
    }

    /// The relay (index) whose address is `address`.
    pub fn relay_at(&self, address: &str) -> Option<usize> {
        self.relays
            .iter()
            .position(|r| address.contains(&r.address))
    }

    /// The CLI against control plane `cp`, as the platform admin.
    pub fn admin(&self, cp: usize) -> M87 {
        let key = self.admin_key();
        M87::new(
            &self.control_planes[cp].url,
            &self.dir.path().join(format!("admin-cli-{cp}")),
            Some(&key),
        )
    }

    /// The bootstrap admin key (written by whichever replica made it).
    pub fn admin_key(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for cp in &self.control_planes {
                if let Ok(k) = std::fs::read_to_string(cp.data_dir.join("admin.key")) {
                    return k.trim().to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no control plane wrote admin.key"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every control plane lists `count` relays to devices (their directory
    /// refreshes every 2 s).
    pub fn wait_for_relays(&self, count: usize) {
        for cp in &self.control_planes {
            cp.proc.out.wait_for(
                &format!(
                    "relays changed relays=[{}]",
                    (1..=count)
                        .map(|i| format!("\"relay-{i}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Duration::from_secs(20),
            );
        }
    }

    /// A path in the fleet's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client of the fleet's MongoDB database.
    pub async fn database(&self) -> mongodb::Database {
        mongodb::Client::with_uri_str(self.mongo.uri())
            .await
            .unwrap()
            .database(&self.database)
    }

    /// A NATS client.
    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::connect(self.nats.urls()).await.unwrap()
    }

    /// The relay id the presence registry names for `device`, if any.
    pub async fn presence_of(&self, device: &str) -> Option<String> {
        let js = async_nats::jetstream::new(self.nats_client().await);
        let kv = js.get_key_value("m87_presence").await.ok()?;
        let value = kv.get(device).await.ok()??;
        let entry: serde_json::Value = serde_json::from_slice(&value).ok()?;
        entry["relay_id"].as_str().map(str::to_owned)
    }
}

/// Starts a runtime for a new device named `name` against `api_url`, approves it as `admin`,
/// and waits until its tunnel is up. Returns the runtime and the device's id.
pub fn enroll(admin: &M87, api_url: &str, dir: &Path, name: &str) -> (Proc, String) {
    let device = M87::new(api_url, dir, None);
    let runtime = device.runtime(&["--email", "admin@localhost", "--name", name]);
    let request_id = crate::common::request_id_of(&runtime);
    admin.ok(&["devices", "approve", &request_id]);
    runtime
        .out
        .wait_for("tunnel connected to relay", Duration::from_secs(30));
    let devices = admin.devices();
    let id = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .and_then(|d| d["id"].as_str())
        .unwrap()
        .to_owned();
    (runtime, id)
}

/// How many times `needle` appears in the process's output.
pub fn count(proc: &Proc, needle: &str) -> usize {
    proc.out.all().matches(needle).count()
}

/// Waits until `proc` printed `needle` at least `n` times.
pub fn wait_for_nth(proc: &Proc, needle: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while count(proc, needle) < n {
        assert!(
            Instant::now() < deadline,
            "{needle:?} printed fewer than {n} times within {timeout:?}:\n{}",
            proc.out.all()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
