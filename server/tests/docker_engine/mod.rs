//! A `dockerd` of a test's own and the busybox image built offline for it (used by
//! `ops_docker.rs`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image the tests build: busybox in an otherwise empty file system.
pub const IMAGE: &str = "m87-test-busybox:1";

/// A program on PATH, or a failure naming the Debian package that brings it.
pub fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed: install Debian's {package} package \
                 (scripts/setup-test-env does)"
            )
        })
}

/// A `dockerd` of the test's own: private socket, data root, exec root and pid file, no
/// bridge network and no iptables rules (containers run with `--network none`).
pub struct Dockerd {
    child: Child,
    /// The daemon's API socket.
    pub socket: PathBuf,
}

impl Dockerd {
    pub fn start(dir: &Path) -> Self {
        let dockerd = require("dockerd", "docker.io");
        require("docker", "docker.io");
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("d.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new(dockerd)
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .args(["--bridge=none", "--iptables=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Self { child, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        d
    }

    /// The local `docker` CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Imports [`IMAGE`] from the busybox-static binary.
    pub fn import_busybox(&self, dir: &Path) {
        let busybox = require("busybox", "busybox-static");
        let root = dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "sleep", "touch", "test", "[", "wc", "tty",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let tar = dir.join("rootfs.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        let out = self.docker(&["import", tar.to_str().unwrap(), IMAGE]);
        assert!(out.status.success(), "{out:?}");
        let out = self.docker(&["run", "--rm", "--network", "none", IMAGE, "echo", "static"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "static\n",
            "busybox must be statically linked (Debian's busybox-static): {out:?}"
        );
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.docker(&["rm", "-f", "ticker"]);
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
