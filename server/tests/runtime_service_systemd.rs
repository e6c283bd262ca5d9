//! The runtime as a systemd service under a real systemd: `scripts/systemd-sandbox` boots the
//! host's systemd as PID 1 of private PID and mount namespaces (private /etc, /run, /tmp,
//! /var/lib; none of the host's units), and the real `m87` enables, starts, reports, stops,
//! logs out and removes the service there against the real server on the host's loopback.
//!
//! Needs root (namespaces, cgroups), so it is opt-in:
//! `cargo build -p m87 -p m87-server --bins && sudo cargo test -p m87-server --test
//! runtime_service_systemd -- --ignored`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{M87, Server, bin, pin_of};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn sandbox_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/systemd-sandbox")
}

/// A booted sandbox; killed and its cgroups removed on drop.
struct Sandbox {
    name: String,
    launcher: Child,
    systemd: u32,
}

impl Sandbox {
    fn boot(test: &str) -> Self {
        assert!(
            is_root(),
            "this test boots systemd in namespaces and needs root: sudo cargo test -p m87-server \
             --test runtime_service_systemd -- --ignored"
        );
        // One cgroup per sandbox: tests of one process run side by side.
        let name = format!("m87-sandbox-{}-{test}", std::process::id());
        let launcher = Command::new(sandbox_script())
            .args(["boot", &name])
            .spawn()
            .expect("running scripts/systemd-sandbox (needs util-linux's unshare)");
        let deadline = Instant::now() + WAIT;
        // The launcher execs unshare, whose one child execs systemd.
        let systemd = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", launcher.id()))
                    .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "the sandbox's systemd never started"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let sandbox = Self {
            name,
            launcher,
            systemd,
        };
        loop {
            let out = sandbox.run(&["systemctl", "is-system-running"], &[]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return sandbox;
            }
            assert!(
                Instant::now() < deadline,
                "the sandbox's systemd is {state:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `argv` in the sandbox as root with `env` set.
    fn run(&self, argv: &[&str], env: &[(&str, &str)]) -> Output {
        // Nothing in a test waits on the sandbox for long; a hang fails instead of blocking.
        let mut cmd = Command::new("timeout");
        cmd.args([
            "60",
            "nsenter",
            "-t",
            &self.systemd.to_string(),
            "-m",
            "-p",
            "--",
            "env",
        ]);
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.args(argv).output().expect("nsenter (util-linux)")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // SIGKILL to a PID namespace's init ends every process in it.
        let _ = Command::new("kill")
            .args(["-KILL", &self.systemd.to_string()])
            .status();
        let _ = self.launcher.wait();
        let _ = Command::new(sandbox_script())
            .args(["cleanup", &self.name])
            .status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `m87 ARGS` in the sandbox as root, talking to `server`; stdout, after checking success.
fn m87_in(sandbox: &Sandbox, server: &Server, args: &[&str]) -> String {
    let m87 = bin("m87");
    let mut argv = vec![m87.to_str().unwrap()];
    argv.extend_from_slice(args);
    let pin = pin_of(&server.url).expect("the server's pin");
    let env = [
        ("M87_API_URL", server.url.as_str()),
        ("M87_API_FINGERPRINT", pin.as_str()),
        ("M87_APPROVAL_POLL_SECS", "1"),
        ("M87_CHECK_INTERVAL_SECS", "1"),
    ];
    let out = sandbox.run(&argv, &env);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "m87 {args:?} failed:\n{stdout}{stderr}"
    );
    stdout
}

fn status(sandbox: &Sandbox, server: &Server) -> Value {
    serde_json::from_str(&m87_in(
        sandbox,
        server,
        &["runtime", "status", "--system", "-o", "json"],
    ))
    .unwrap()
}

fn wait_status(
    sandbox: &Sandbox,
    server: &Server,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(sandbox, server);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pending_request(admin: &M87, name: &str) -> Option<String> {
    admin.devices().as_array().unwrap().iter().find_map(|d| {
        (d["name"] == name && d["status"] == "pending")
            .then(|| d["request_id"].as_str().unwrap().to_owned())
    })
}

#[test]
#[ignore = "boots systemd in namespaces: needs root (see the file's overview)"]
fn the_system_service_enrols_reports_stops_and_logs_out_under_a_real_systemd() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let sandbox = Sandbox::boot("system");

    let out = m87_in(
        &sandbox,
        &server,
        &[
            "runtime",
            "enable",
            "--now",
            "--system",
            "--email",
            "admin@localhost",
            "--name",
            "sd-1",
        ],
    );
    assert!(out.contains("created the system user `m87`"), "{out}");
    assert!(
        out.contains("enabled and started m87-runtime.service"),
        "{out}"
    );
    let deadline = Instant::now() + WAIT;
    let request = loop {
        if let Some(r) = pending_request(&admin, "sd-1") {
            break r;
        }
        assert!(Instant::now() < deadline, "the service never registered");
        std::thread::sleep(Duration::from_millis(250));
    };
    admin.ok(&["devices", "approve", &request]);

    let up = wait_status(&sandbox, &server, "the tunnel", |s| {
        s["tunnel"]["connected"] == true
    });
    assert_eq!(up["status"], "approved");
    assert_eq!(up["config_dir"], "/var/lib/m87");
    assert_eq!(up["service"]["mode"], "system");
    assert_eq!(up["service"]["state"]["active"], "active");
    assert_eq!(up["service"]["state"]["sub"], "running");
    assert_eq!(up["service"]["state"]["enabled"], "enabled");
    assert_eq!(up["service"]["state"]["main_pid"], up["runtime"]["pid"]);
    assert!(up["tunnel"]["relay"].is_string(), "{up}");

    // Sessions run as the dedicated user, without a way to gain privileges.
    let who = admin.ok(&[
        "sd-1",
        "exec",
        "--",
        "sh",
        "-c",
        "id -un; grep NoNewPrivs /proc/self/status",
    ]);
    assert!(who.starts_with("m87\n"), "{who}");
    assert!(who.contains("NoNewPrivs:\t1"), "{who}");

    assert!(
        m87_in(&sandbox, &server, &["runtime", "stop"]).contains("stopped m87-runtime.service")
    );
    let stopped = status(&sandbox, &server);
    assert_eq!(
        stopped["service"]["state"]["active"], "inactive",
        "{stopped}"
    );
    assert_eq!(stopped["runtime"]["running"], false, "{stopped}");
    m87_in(&sandbox, &server, &["runtime", "start"]);
    let started = wait_status(&sandbox, &server, "the tunnel after start", |s| {
        s["tunnel"]["connected"] == true
    });
    // Enabling again rewrites the unit and restarts the running service with it.
    let out = m87_in(
        &sandbox,
        &server,
        &["runtime", "enable", "--now", "--system", "--name", "sd-1"],
    );
    assert!(!out.contains("created the system user"), "{out}");
    let unit = sandbox.run(&["cat", "/etc/systemd/system/m87-runtime.service"], &[]);
    let unit = String::from_utf8_lossy(&unit.stdout).into_owned();
    assert!(!unit.contains("--email"), "the unit was rewritten: {unit}");
    wait_status(&sandbox, &server, "the restarted runtime", |s| {
        s["tunnel"]["connected"] == true && s["runtime"]["pid"] != started["runtime"]["pid"]
    });

    // logout stops the service, then forgets the key.
    let out = m87_in(&sandbox, &server, &["runtime", "logout", "--system"]);
    let stop_at = out
        .find("stopped m87-runtime.service")
        .unwrap_or_else(|| panic!("{out}"));
    let removed_at = out
        .find("removed this device's credentials")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(stop_at < removed_at, "{out}");
    let after = status(&sandbox, &server);
    assert_eq!(after["service"]["state"]["active"], "inactive", "{after}");
    assert_eq!(after["status"], "not registered", "{after}");

    let out = m87_in(
        &sandbox,
        &server,
        &["runtime", "disable", "--now", "--system"],
    );
    assert!(
        out.contains("stopped and removed m87-runtime.service"),
        "{out}"
    );
    let gone = sandbox.run(
        &["test", "-e", "/etc/systemd/system/m87-runtime.service"],
        &[],
    );
    assert!(!gone.status.success(), "the unit file is removed");
    assert_eq!(status(&sandbox, &server)["service"], Value::Null);
}

/// `m87 ARGS` in the sandbox as the user `uid` (home /tmp/home-dev, its manager's runtime dir).
fn m87_as(sandbox: &Sandbox, server: &Server, uid: &str, args: &[&str]) -> String {
    let m87 = bin("m87");
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    let mut argv = vec![
        "setpriv",
        &reuid,
        &regid,
        "--init-groups",
        m87.to_str().unwrap(),
    ];
    argv.extend_from_slice(args);
    let pin = pin_of(&server.url).expect("the server's pin");
    let runtime_dir = format!("/run/user/{uid}");
    let env = [
        ("HOME", "/tmp/home-dev"),
        ("USER", "dev"),
        ("XDG_RUNTIME_DIR", runtime_dir.as_str()),
        ("M87_CONFIG_DIR", ""),
        ("M87_API_URL", server.url.as_str()),
        ("M87_API_FINGERPRINT", pin.as_str()),
        ("M87_APPROVAL_POLL_SECS", "1"),
    ];
    let out = sandbox.run(&argv, &env);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "m87 {args:?} as {uid} failed:\n{stdout}{stderr}"
    );
    stdout
}

#[test]
#[ignore = "boots systemd in namespaces: needs root (see the file's overview)"]
fn a_user_service_runs_as_its_user_under_a_real_systemd() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let sandbox = Sandbox::boot("user");
    let made = sandbox.run(
        &[
            "useradd",
            "--create-home",
            "--home-dir",
            "/tmp/home-dev",
            "dev",
        ],
        &[],
    );
    assert!(made.status.success(), "{made:?}");
    let uid = String::from_utf8_lossy(&sandbox.run(&["id", "-u", "dev"], &[]).stdout)
        .trim()
        .to_owned();
    // What logind does at the user's first login.
    let started = sandbox.run(&["systemctl", "start", &format!("user@{uid}.service")], &[]);
    assert!(started.status.success(), "{started:?}");

    let out = m87_as(
        &sandbox,
        &server,
        &uid,
        &[
            "runtime",
            "enable",
            "--now",
            "--email",
            "admin@localhost",
            "--name",
            "sd-user",
        ],
    );
    assert!(
        out.contains("wrote /tmp/home-dev/.config/systemd/user/m87-runtime.service"),
        "{out}"
    );
    assert!(out.contains("loginctl enable-linger dev"), "{out}");
    let deadline = Instant::now() + WAIT;
    let request = loop {
        if let Some(r) = pending_request(&admin, "sd-user") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the user service never registered"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    admin.ok(&["devices", "approve", &request]);
    let deadline = Instant::now() + WAIT;
    let up = loop {
        let s: Value = serde_json::from_str(&m87_as(
            &sandbox,
            &server,
            &uid,
            &["runtime", "status", "-o", "json"],
        ))
        .unwrap();
        if s["tunnel"]["connected"] == true {
            break s;
        }
        assert!(Instant::now() < deadline, "no tunnel: {s}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(up["service"]["mode"], "user");
    assert_eq!(up["service"]["state"]["active"], "active");
    assert_eq!(up["config_dir"], "/tmp/home-dev/.config/m87");
    let who = admin.ok(&["sd-user", "exec", "--", "id", "-un"]);
    assert_eq!(who.trim(), "dev");

    let out = m87_as(&sandbox, &server, &uid, &["runtime", "logout"]);
    assert!(out.starts_with("stopped m87-runtime.service"), "{out}");
    let out = m87_as(&sandbox, &server, &uid, &["runtime", "disable", "--now"]);
    assert!(out.contains("stopped and removed"), "{out}");
}
