//! OpenSSH through m87 with Debian's real `ssh`, `scp`, `sftp`, `rsync` and the real binaries,
//! on a device with no sshd: `m87 ssh enable` writes the block (the test's HOME; OpenSSH reads it
//! with `-F`: it takes `~` from the password database). Exit codes, files (SHA-256), `ssh -L`, a
//! shell in tmux, the audit trail, a removed member, an unknown device and a viewer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::tmux::{Tmux, shell_line};
use common::{Acme, M87, Proc, acme, audit_until};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Fails with the Debian package to install when `program` is missing.
fn need(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{program} is not installed: apt-get install {package} (scripts/setup-test-env installs it)"
    );
}

/// An operator's machine: a HOME with the m87 block in `.ssh/config`, acting as `who`.
struct Client<'a> {
    who: &'a M87,
    home: PathBuf,
}

impl<'a> Client<'a> {
    fn enable(who: &'a M87, home: &Path) -> Self {
        need("ssh", "openssh-client");
        let out = Self::m87(who, home, &["ssh", "enable"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            who,
            home: home.to_path_buf(),
        }
    }

    /// `m87 ARGS` as `who` with this HOME.
    fn m87(who: &M87, home: &Path, args: &[&str]) -> Command {
        let mut cmd = who.command(args);
        cmd.env("HOME", home);
        cmd
    }

    fn config(&self) -> PathBuf {
        self.home.join(".ssh/config")
    }

    /// `program ARGS` with m87's environment (the ProxyCommand inherits it).
    fn tool(&self, program: &str, args: &[&str]) -> Command {
        let base = self.who.command(&[]);
        let mut cmd = Command::new(program);
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.env("HOME", &self.home).env("LANG", "C.UTF-8");
        cmd.args(args);
        cmd
    }

    /// `ssh -F CONFIG -o BatchMode=yes ARGS`.
    fn ssh(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut all = vec!["-F", config.to_str().unwrap(), "-o", "BatchMode=yes"];
        all.extend_from_slice(args);
        self.tool("ssh", &all)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// The `ssh` audit records' details (kind, target) once `done` holds for them.
fn ssh_details(m87: &M87, done: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
    let pairs = |records: &[Value]| -> Vec<(String, String)> {
        records
            .iter()
            .flat_map(|r| r["details"].as_array().cloned().unwrap_or_default())
            .map(|d| {
                (
                    d["kind"].as_str().unwrap_or("").to_owned(),
                    d["target"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let records = audit_until(m87, "ssh", |r| done(&pairs(r)));
    pairs(&records)
}

fn has(details: &[(String, String)], kind: &str, target: &str) -> bool {
    details.iter().any(|(k, t)| k == kind && t.contains(target))
}

#[test]
fn ssh_runs_commands_with_their_exit_codes_and_they_are_audited() {
    let a = acme();
    let client = Client::enable(&a.bob, &a.tmp.path().join("home-bob"));

    let out = client.ssh(&["acme-bot.m87", "uname", "-a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("Linux "),
        "{}",
        text(&out.stdout)
    );
    // No host-key prompt, no warning: the key was written before the first byte.
    assert!(
        !text(&out.stderr).contains("authenticity"),
        "{}",
        text(&out.stderr)
    );

    let out = client.ssh(&["acme-bot.m87", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"));

    // Environment requests (LANG, as Debian's ssh_config sends it) reach the command.
    let out = client.ssh(&["-o", "SendEnv=LANG", "acme-bot.m87", "echo lang=$LANG"]);
    assert_eq!(text(&out.stdout), "lang=C.UTF-8\n", "{}", text(&out.stderr));

    // Another login is refused at the SSH level, saying why.
    let out = client.ssh(&["nobody@acme-bot.m87", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(err.contains("logging in as nobody is refused"), "{err}");

    // An unknown subsystem is refused; the connection survives it (the exit is ssh's own).
    let out = client.ssh(&["-s", "acme-bot.m87", "no-such-subsystem"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("subsystem request failed"),
        "{}",
        text(&out.stderr)
    );

    let details = ssh_details(&a.alice, |d| {
        has(d, "ssh_exec", "exit 7") && has(d, "ssh_refused", "subsystem")
    });
    assert!(has(&details, "ssh_exec", "uname -a"), "{details:?}");
    assert!(has(&details, "ssh_refused", "login nobody"), "{details:?}");
    assert!(
        has(&details, "ssh_refused", "subsystem no-such-subsystem"),
        "{details:?}"
    );
    let list = a.alice.ok(&["audit", "--action", "ssh", "--details"]);
    assert!(list.contains("ssh_exec uname -a"), "{list}");
    assert!(list.contains("bob@example.com"), "{list}");
    drop(a.runtime);
}

#[test]
fn an_unknown_device_or_a_viewer_fails_at_once_with_m87s_reason() {
    let a = acme();
    let client = Client::enable(&a.bob, &a.tmp.path().join("home"));
    let started = Instant::now();
    let out = client.ssh(&["no-such-device.m87", "true"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(
        err.contains("m87: device \"no-such-device\" not found"),
        "{err}"
    );
    // An organization viewer may not reach a shell, so no SSH either.
    let carol = Client::enable(&a.carol, &a.tmp.path().join("home-carol"));
    let err = text(&carol.ssh(&["acme-bot.m87", "true"]).stderr);
    assert!(
        err.contains("m87: ") && err.contains("viewers may read"),
        "{err}"
    );
    drop(a.runtime);
}

#[test]
fn scp_sftp_and_rsync_move_files_intact_and_their_paths_are_audited() {
    need("scp", "openssh-client");
    need("sftp", "openssh-client");
    need("rsync", "rsync");
    let a = acme();
    let client = Client::enable(&a.bob, &a.tmp.path().join("home"));
    let config = client.config();
    let config = config.to_str().unwrap();
    let local = a.tmp.path().join("local");
    let remote = a.tmp.path().join("on-device");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&remote).unwrap();
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(local.join("blob"), &blob).unwrap();
    let run = |program: &str, args: &[&str]| {
        let out = client
            .tool(program, args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\nruntime:\n{}",
            text(&out.stderr),
            a.runtime.out.all()
        );
    };

    // scp both ways (OpenSSH 9's scp speaks SFTP).
    let up = format!("acme-bot.m87:{}/blob", remote.display());
    run(
        "scp",
        &[
            "-F",
            config,
            "-o",
            "BatchMode=yes",
            local.join("blob").to_str().unwrap(),
            &up,
        ],
    );
    assert_eq!(sha256(&remote.join("blob")), sha256(&local.join("blob")));
    let back = local.join("blob.back");
    run(
        "scp",
        &[
            "-F",
            config,
            "-o",
            "BatchMode=yes",
            &up,
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(sha256(&back), sha256(&local.join("blob")));

    // sftp in batch mode: mkdir, put, rename, ls, rm.
    let batch = local.join("batch");
    std::fs::write(
        &batch,
        format!(
            "mkdir {r}/made\nput {l} {r}/made/put\nrename {r}/made/put {r}/made/renamed\n\
             ls {r}/made\nrm {r}/blob\n",
            r = remote.display(),
            l = local.join("blob").display()
        ),
    )
    .unwrap();
    let out = client
        .tool(
            "sftp",
            &[
                "-F",
                config,
                "-o",
                "BatchMode=yes",
                "-b",
                batch.to_str().unwrap(),
                "acme-bot.m87",
            ],
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("renamed"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        sha256(&remote.join("made/renamed")),
        sha256(&local.join("blob"))
    );
    assert!(!remote.join("blob").exists());

    // rsync -a -e ssh of a tree.
    let tree = local.join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/one"), "one\n").unwrap();
    std::fs::write(tree.join("a/b/two"), "two\n").unwrap();
    let ssh = format!("ssh -F {config} -o BatchMode=yes");
    let dest = format!("acme-bot.m87:{}/", remote.display());
    run("rsync", &["-a", "-e", &ssh, tree.to_str().unwrap(), &dest]);
    assert_eq!(
        std::fs::read_to_string(remote.join("tree/a/b/two")).unwrap(),
        "two\n"
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("tree/a/one")).unwrap(),
        "one\n"
    );

    let details = ssh_details(&a.alice, |d| has(d, "ssh_exec", "rsync --server"));
    for (kind, target) in [
        ("sftp_write", "on-device/blob"),
        ("sftp_read", "on-device/blob"),
        ("sftp_mkdir", "on-device/made"),
        ("sftp_write", "made/put"),
        ("sftp_rename", "made/renamed"),
        ("sftp_remove", "on-device/blob"),
    ] {
        assert!(has(&details, kind, target), "{kind} {target}: {details:?}");
    }
    drop(a.runtime);
}

/// A one-shot HTTP server on loopback: answers every request with `body`.
fn http_server(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    port
}

#[test]
fn ssh_local_forward_reaches_a_device_side_http_server() {
    let a = acme();
    let client = Client::enable(&a.bob, &a.tmp.path().join("home"));
    let target = http_server("hello through ssh -L\n");
    let local = common::free_port();
    let spec = format!("{local}:127.0.0.1:{target}");
    let config = client.config();
    let mut forward = Proc::spawn({
        let mut c = client.tool(
            "ssh",
            &[
                "-F",
                config.to_str().unwrap(),
                "-o",
                "BatchMode=yes",
                "-N",
                "-L",
                &spec,
                "acme-bot.m87",
            ],
        );
        c.stdin(Stdio::null());
        c
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", local)) {
            let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = conn.read_to_string(&mut answer);
            if answer.contains("200 OK") {
                break answer;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the forward never answered: {}",
            forward.out.all()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.ends_with("hello through ssh -L\n"), "{body}");
    forward.kill();
    let details = ssh_details(&a.alice, |d| {
        has(d, "ssh_forward", &format!("127.0.0.1:{target}"))
    });
    assert!(!details.is_empty());
    drop(a.runtime);
}

#[test]
fn a_removed_members_ssh_session_ends() {
    let a: Acme = acme();
    let client = Client::enable(&a.bob, &a.tmp.path().join("home"));
    let config = client.config();
    let mut session = Proc::spawn({
        let mut c = client.tool(
            "ssh",
            &[
                "-F",
                config.to_str().unwrap(),
                "-o",
                "BatchMode=yes",
                "acme-bot.m87",
                "echo started; sleep 60",
            ],
        );
        c.stdin(Stdio::null());
        c
    });
    session.out.wait_for("started", Duration::from_secs(30));
    a.alice
        .ok(&["org", "members", "remove", "acme", "bob@example.com"]);
    // OpenSSH sees its connection close: 255, as for any lost connection.
    assert_eq!(session.wait_exit(Duration::from_secs(20)), 255);
    let records = audit_until(&a.alice, "ssh", |r| {
        r.iter().any(|x| x["reason"] == "access_revoked")
    });
    let cut = records
        .iter()
        .find(|x| x["reason"] == "access_revoked")
        .unwrap();
    assert_eq!(cut["user"], "bob@example.com", "{cut}");
    assert_eq!(cut["outcome"], "failed", "{cut}");
    drop(a.runtime);
}

#[test]
fn an_interactive_shell_in_a_real_terminal_resizes_takes_ctrl_c_and_exits_with_its_code() {
    let a = acme();
    let client = Client::enable(&a.bob, &a.tmp.path().join("home"));
    let tmux = Tmux::start(a.tmp.path(), 100, 30);
    let config = client.config();
    let ssh = client.tool("ssh", &["-F", config.to_str().unwrap(), "acme-bot.m87"]);
    tmux.wait("a local prompt", |s| s.contains('$'));
    tmux.type_line(&format!("{}; echo \"ssh=$?\"", shell_line(&ssh)));
    tmux.type_line("export PS1='remote> '");
    tmux.wait("the remote prompt", |s| s.contains("remote> "));
    tmux.type_line("echo tty=$(tty) size=$(stty size)");
    tmux.wait("the terminal and its size", |s| {
        s.contains("tty=/dev/pts/") && s.contains("size=30 100")
    });
    tmux.ok(&["resize-window", "-t", "m87", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.type_line("echo resized=$(stty size)");
    tmux.wait("the new size", |s| s.contains("resized=40 120"));
    tmux.type_line("sleep 100");
    std::thread::sleep(Duration::from_millis(500));
    tmux.ok(&["send-keys", "-t", "m87", "C-c"]);
    tmux.type_line("echo after=$((6*7))");
    tmux.wait("ctrl-c ended sleep", |s| s.contains("after=42"));
    tmux.type_line("exit 3");
    tmux.wait("ssh's exit code", |s| s.contains("ssh=3"));
    let details = ssh_details(&a.alice, |d| has(d, "ssh_shell", ""));
    assert!(!details.is_empty());
    drop(a.runtime);
}

#[test]
fn ssh_enable_writes_one_private_block_disable_removes_exactly_it() {
    let tmp = tempfile::tempdir().unwrap();
    let who = M87::new("https://127.0.0.1:9", &tmp.path().join("cfg"), None);
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |args: &[&str]| Client::m87(&who, &home, args).output().unwrap();

    // Missing ~/.ssh and config: created 0700 and 0600.
    let out = run(&["ssh", "enable"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home.join(".ssh")), 0o700);
    let config = home.join(".ssh/config");
    assert_eq!(mode(&config), 0o600);
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.starts_with("# BEGIN m87"), "{written}");
    assert!(written.contains("Host *.m87"), "{written}");
    assert!(written.contains("ssh-proxy %h %r"), "{written}");
    assert!(written.contains("StrictHostKeyChecking yes"), "{written}");

    // The rest of a config is kept; enable twice is one block; disable gives the file back.
    let mine = "Host work\n    User alice\n";
    std::fs::write(&config, mine).unwrap();
    assert!(run(&["ssh", "enable"]).status.success());
    assert!(run(&["ssh", "enable"]).status.success());
    let both = std::fs::read_to_string(&config).unwrap();
    assert_eq!(both.matches("# BEGIN m87").count(), 1, "{both}");
    assert!(both.ends_with(mine), "{both}");
    assert!(run(&["ssh", "disable"]).status.success());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), mine);

    // A `Host *.m87` m87 did not write: refused, naming the file and line.
    std::fs::write(&config, "Host a\n\nHost *.m87\n    User x\n").unwrap();
    let out = run(&["ssh", "enable"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:3", config.display())), "{err}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "Host a\n\nHost *.m87\n    User x\n"
    );
}

/// Ansible as an operator runs it: an inventory of `*.m87` hosts, OpenSSH with m87's block
/// (ControlMaster on, as Ansible's defaults have it), host-key checking on, modules sent with
/// sftp and run with the device's python3.
#[test]
fn ansible_reaches_m87_hosts_through_the_block() {
    let ansible = ansible_bin();
    let a = acme();
    let client = Client::enable(&a.bob, &a.tmp.path().join("home-bob"));
    let work = a.tmp.path().join("ansible");
    std::fs::create_dir_all(&work).unwrap();
    let payload = work.join("payload.txt");
    std::fs::write(&payload, "delivered by ansible through m87\n").unwrap();
    let remote = a.tmp.path().join("device-copy.txt");
    let run = |module: &str, args: &str| {
        let ssh_args = format!(
            "-F {} -o ControlMaster=auto -o ControlPersist=2s",
            client.config().display()
        );
        let mut cmd = client.tool(ansible.to_str().unwrap(), &[]);
        // The device's own python (this machine's PATH may lead to a pyenv shim first).
        cmd.args(["all", "-i", "acme-bot.m87,", "-m", module])
            .args(["-e", "ansible_python_interpreter=/usr/bin/python3"])
            .args(if args.is_empty() {
                vec![]
            } else {
                vec!["-a", args]
            })
            .env("ANSIBLE_SSH_ARGS", ssh_args)
            .env("ANSIBLE_HOME", work.join("home"))
            .env("ANSIBLE_LOCAL_TEMP", work.join("local"))
            .env("ANSIBLE_CONFIG", work.join("none.cfg"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_HOST_KEY_CHECKING", "True")
            .current_dir(&work)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run("ansible.builtin.ping", "");
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(said.contains("acme-bot.m87 | SUCCESS") && said.contains("\"ping\": \"pong\""));

    let args = format!("src={} dest={}", payload.display(), remote.display());
    let out = run("ansible.builtin.copy", &args);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(sha256(&remote), sha256(&payload));

    let out = run("ansible.builtin.command", "uname -s");
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("Linux"), "{}", text(&out.stdout));

    // Each module ran as an exec of the device's python, on the record as bob's ssh session.
    let details = ssh_details(&a.alice, |d| has(d, "sftp_write", "AnsiballZ_command"));
    assert!(has(&details, "ssh_exec", "python3"), "{details:?}");
}

/// Ansible from `scripts/setup-test-env` (.test-env/ansible), else ANSIBLE_BIN.
fn ansible_bin() -> PathBuf {
    let bin = std::env::var_os("ANSIBLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-env/ansible/bin/ansible")
        });
    assert!(
        bin.exists(),
        "{} is missing: scripts/setup-test-env installs ansible-core from PyPI",
        bin.display()
    );
    bin
}
