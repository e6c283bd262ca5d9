//! `m87 <device> docker` and unix-socket forwards with the real binaries: the test starts its
//! own `dockerd` (Debian's docker.io) on a private socket, data root and exec root, builds a
//! local image from a busybox-static binary (no registry is needed), and points the device's
//! runtime at the daemon with `--docker-socket`. Unix-socket forwards carry 100 concurrent
//! connections and 100 MB to a unix echo server on the device side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod docker_engine;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{M87, Proc, Server, free_port, request_id_of, user};
use docker_engine::{Dockerd, IMAGE, require};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A runtime for device `name` with `args`, approved by `admin`, its tunnel up.
fn enrolled(server: &Server, admin: &M87, dir: &Path, name: &str, args: &[&str]) -> (Proc, M87) {
    let device = M87::new(&server.url, dir, None);
    let runtime = device.runtime(&[&["--email", "admin@localhost", "--name", name], args].concat());
    admin.ok(&["devices", "approve", &request_id_of(&runtime)]);
    runtime
        .out
        .wait_for("tunnel connected to relay", Duration::from_secs(30));
    (runtime, device)
}

/// `m87 ARGS` with TMPDIR set (where its docker socket directory goes), stdin from `input`.
fn m87_with_input(m87: &M87, tmpdir: &Path, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = m87
        .command(args)
        .env("TMPDIR", tmpdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `m87 ARGS` in a terminal of its own (`script` from util-linux), fed `input`; the terminal's
/// output.
fn in_terminal(m87: &M87, args: &[&str], input: &str) -> String {
    let inner = m87.command(args);
    let quote = |a: &std::ffi::OsStr| format!("'{}'", a.to_str().unwrap().replace('\'', "'\\''"));
    let line: Vec<String> = std::iter::once(inner.get_program())
        .chain(inner.get_args())
        .map(quote)
        .collect();
    let mut cmd = Command::new(require("script", "bsdutils"));
    cmd.args(["-qec", &line.join(" "), "/dev/null"]);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn audit(m87: &M87, action: &str) -> Vec<Value> {
    serde_json::from_str(&m87.ok(&["audit", "--action", action, "--max", "100", "-o", "json"]))
        .unwrap()
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "the socket directory is left behind: {left:?}"
    );
}

#[test]
fn docker_commands_run_against_the_device_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Dockerd::start(&tmp.path().join("engine"));
    engine.import_busybox(tmp.path());
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let socket = engine.socket.to_str().unwrap();
    let dev = tmp.path().join("dev");
    let (_runtime, _device) = enrolled(&server, &admin, &dev, "box", &["--docker-socket", socket]);
    let tmpdir = tmp.path().join("client-tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let run = |args: &[&str], input: &[u8]| {
        let out = m87_with_input(&admin, &tmpdir, &[&["box", "docker"], args].concat(), input);
        assert_empty(&tmpdir);
        out
    };
    let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();

    // version: the device's engine answers, as it does to the local docker CLI.
    let format = [
        "version",
        "--format",
        "{{.Server.Version}} {{.Server.APIVersion}}",
    ];
    let out = run(&format, b"");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out), text(&engine.docker(&format)));
    assert!(text(&out).contains("1.4"), "{}", text(&out));

    // run: output, stdin through the hijacked connection, the container's exit code.
    let image_args = ["run", "--rm", "--network", "none", IMAGE];
    let out = run(&[&image_args[..], &["echo", "hi"]].concat(), b"");
    assert_eq!(
        (text(&out), out.status.code()),
        ("hi\n".into(), Some(0)),
        "{out:?}"
    );
    let out = run(
        &[&image_args[..1], &["-i"], &image_args[1..], &["cat"]].concat(),
        b"piped in",
    );
    assert_eq!(text(&out), "piped in", "{out:?}");
    let out = run(&[&image_args[..], &["sh", "-c", "exit 7"]].concat(), b"");
    assert_eq!(out.status.code(), Some(7), "{out:?}");

    // build: the context (with 5 MB of data) is sent to the device's engine.
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let dockerfile = format!("FROM {IMAGE}\nCOPY hello.txt blob /\nRUN cat /hello.txt\n");
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(ctx.join("hello.txt"), "from the build context\n").unwrap();
    let blob: Vec<u8> = (0..5_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
    std::fs::write(ctx.join("blob"), &blob).unwrap();
    let build = [
        "build",
        "--network",
        "none",
        "-t",
        "m87-built:1",
        ctx.to_str().unwrap(),
    ];
    let out = run(&build, b"");
    assert!(out.status.success(), "{out:?}");
    let out = run(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "m87-built:1",
            "sh",
            "-c",
            "cat /hello.txt; wc -c < /blob",
        ],
        b"",
    );
    assert_eq!(text(&out), "from the build context\n5000000\n", "{out:?}");

    // ps shows a running container; logs -f sees a line written after it started.
    let script =
        "echo ready; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after-start; sleep 600";
    let out = engine.docker(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["ps", "--format", "{{.Names}} {{.Image}}"], b"");
    assert_eq!(text(&out), format!("ticker {IMAGE}\n"), "{out:?}");
    // exec -it: a terminal in the container, typed input reaches it.
    let script = "tty; read x; echo got $x";
    let out = in_terminal(
        &admin,
        &["box", "docker", "exec", "-it", "ticker", "sh", "-c", script],
        "hello-tty\n",
    );
    assert!(
        out.contains("/dev/pts/") && out.contains("got hello-tty"),
        "{out}"
    );
    let mut follow = admin.command(&["box", "docker", "logs", "-f", "ticker"]);
    follow.env("TMPDIR", &tmpdir).process_group(0);
    let mut follow = Proc::spawn(follow);
    follow.out.wait_for("ready", Duration::from_secs(30));
    assert!(
        engine
            .docker(&["exec", "ticker", "touch", "/tmp/go"])
            .status
            .success()
    );
    follow.out.wait_for("after-start", Duration::from_secs(30));
    // Ctrl-C as a terminal sends it: to the whole foreground group. docker ends, m87 after it.
    let pgid = follow.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", "--", &format!("-{pgid}")])
            .status()
            .unwrap()
            .success()
    );
    let code = follow.wait_exit(Duration::from_secs(30));
    assert_eq!(
        code,
        130,
        "docker's own end by SIGINT: {}",
        follow.out.all()
    );
    assert_empty(&tmpdir);

    // `m87 <device> logs --container`: the same container's log, read by the runtime through
    // the device's Docker API (not the docker CLI): all of it, the last line, and following.
    let out = admin.ok(&["box", "logs", "--container", "ticker"]);
    assert!(
        out.contains("ready") && out.contains("after-start"),
        "{out}"
    );
    let out = admin.ok(&[
        "box",
        "logs",
        "--container",
        "ticker",
        "-n",
        "1",
        "-o",
        "json",
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["message"], "after-start", "{out}");
    assert!(
        lines[0]["time"].is_string(),
        "docker's timestamps are kept: {out}"
    );
    let mut follow = Proc::spawn(admin.command(&["box", "logs", "-f", "--container", "ticker"]));
    follow.out.wait_for("after-start", Duration::from_secs(30));
    let out = engine.docker(&[
        "exec",
        "ticker",
        "sh",
        "-c",
        "echo later-line > /proc/1/fd/1",
    ]);
    assert!(out.status.success(), "{out:?}");
    follow.out.wait_for("later-line", Duration::from_secs(30));
    let pid = follow.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        follow.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        follow.out.all()
    );
    let err = admin.fails(&["box", "logs", "--container", "no-such-box"]);
    assert!(err.contains("no container named \"no-such-box\""), "{err}");

    // Without a local docker CLI: one line naming it, before anything is granted.
    let bare = tmp.path().join("no-docker");
    std::fs::create_dir_all(&bare).unwrap();
    let out = admin
        .command(&["box", "docker", "info", "--no-such-run"])
        .env("PATH", &bare)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("the docker CLI is not installed") && err.contains("docker.io"),
        "{err}"
    );

    // The audit trail: each docker command with its argv, closed (m87 does not wait out QUIC's
    // draining period, but the close still reaches the relay), none for the refused one.
    let argv = serde_json::json!([&image_args[..], &["echo", "hi"]].concat());
    let deadline = Instant::now() + Duration::from_secs(20);
    let (records, hi) = loop {
        let records = audit(&admin, "docker");
        let hi = records.iter().find(|r| r["args"]["argv"] == argv).cloned();
        match hi {
            Some(hi) if hi["outcome"] != "open" => break (records, hi),
            _ => assert!(
                Instant::now() < deadline,
                "no closed record of `docker run … echo hi`: {records:#?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(hi["device_name"], "box");
    let table = admin.ok(&["audit", "--action", "docker"]);
    assert!(table.contains("docker run --rm --network none"), "{table}");
    assert_eq!(hi["outcome"], "ok", "{hi:#}");
    assert!(
        records
            .iter()
            .all(|r| r["args"]["argv"][1] != "--no-such-run"),
        "{records:#?}"
    );
}

#[test]
fn viewers_are_refused_and_a_device_without_an_engine_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let root = M87::new(
        &server.url,
        &tmp.path().join("root"),
        Some(&server.admin_key()),
    );
    let alice = user(&server, &root, &tmp.path().join("a"), "alice@example.com");
    let carol = user(&server, &root, &tmp.path().join("c"), "carol@example.com");
    alice.ok(&["org", "create", "acme", "--name", "Acme Robots"]);
    alice.ok(&[
        "org",
        "members",
        "add",
        "acme",
        "carol@example.com",
        "--role",
        "viewer",
    ]);
    let missing = tmp.path().join("no-engine/docker.sock");
    let device = M87::new(&server.url, &tmp.path().join("dev"), None);
    let runtime = device.runtime(&[
        "--org",
        "acme",
        "--name",
        "acme-bot",
        "--docker-socket",
        missing.to_str().unwrap(),
    ]);
    alice.ok(&["devices", "approve", &request_id_of(&runtime)]);
    runtime
        .out
        .wait_for("tunnel connected to relay", Duration::from_secs(30));

    let err = carol.fails(&["acme-bot", "docker", "ps"]);
    assert!(err.contains("viewers"), "{err}");

    // The device has no engine at its socket: the device's message, once, not a docker timeout.
    let tmpdir = tmp.path().join("client-tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let started = Instant::now();
    let out = m87_with_input(&alice, &tmpdir, &["acme-bot", "docker", "ps"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        err.trim(),
        format!(
            "error: cannot connect to the container engine's socket {} on the device: No such \
             file or directory (os error 2); is dockerd (or `podman system service`) running?",
            missing.display()
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no docker timeout"
    );
    assert_empty(&tmpdir);

    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let r = audit(&alice, "docker");
        if r.len() >= 2 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let refused = records
        .iter()
        .find(|r| r["outcome"] == "refused")
        .unwrap_or_else(|| panic!("no refused docker record: {records:#?}"));
    assert_eq!(refused["user"], "carol@example.com");
    assert_eq!(refused["refused_by"], "grant");
    let granted = records
        .iter()
        .find(|r| r["user"] == "alice@example.com")
        .unwrap_or_else(|| panic!("no record of alice's docker ps: {records:#?}"));
    assert_eq!(granted["args"]["argv"], serde_json::json!(["ps"]));
}

/// A unix echo server "on the device": echoes each connection until the client half-closes.
fn unix_echo_server(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
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
}

/// Sends `data` on a connection, half-closes, returns what came back.
fn exchange<S: Read + Write>(mut s: S, data: &[u8], shutdown: impl FnOnce(&S)) -> Vec<u8> {
    s.write_all(data).unwrap();
    shutdown(&s);
    let mut back = vec![];
    s.read_to_end(&mut back).unwrap();
    back
}

#[test]
fn unix_socket_forwards_carry_many_connections_and_bulk_data() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), "127.0.0.1:0");
    let admin = M87::new(
        &server.url,
        &tmp.path().join("admin"),
        Some(&server.admin_key()),
    );
    let (_runtime, _device) = enrolled(&server, &admin, &tmp.path().join("dev"), "sock-dev", &[]);
    let app = tmp.path().join("app.sock");
    unix_echo_server(&app);
    let local = tmp.path().join("local.sock");
    let port = free_port();
    let missing = tmp.path().join("missing.sock");
    let specs = [
        format!("{}:{}", local.display(), app.display()),
        format!("{port}:{}", app.display()),
        format!(
            "{}:{}",
            tmp.path().join("l2.sock").display(),
            missing.display()
        ),
    ];
    let mut forward = Proc::spawn(
        admin.command(
            &[
                &["sock-dev", "forward"][..],
                &specs.iter().map(String::as_str).collect::<Vec<_>>(),
            ]
            .concat(),
        ),
    );
    forward
        .out
        .wait_for("press Ctrl-C to stop", Duration::from_secs(30));
    assert!(
        forward.out.contains(&format!(
            "forwarding {} -> sock-dev:{} (unix socket)",
            local.display(),
            app.display()
        )),
        "{}",
        forward.out.all()
    );
    let mode = std::fs::metadata(&local).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the local socket is private");

    // 100 concurrent connections through the local socket file, each with its own answer.
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let local = local.clone();
            std::thread::spawn(move || {
                let msg = format!("connection {i}");
                let back = exchange(UnixStream::connect(&local).unwrap(), msg.as_bytes(), |s| {
                    s.shutdown(std::net::Shutdown::Write).unwrap()
                });
                (msg, back)
            })
        })
        .collect();
    for t in threads {
        let (msg, back) = t.join().unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), msg);
    }

    // 100 MB through the TCP end (8080:/run/app.sock), digests match.
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reader = conn.try_clone().unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut hash, mut total, mut buf) = (Sha256::new(), 0usize, vec![0u8; 1 << 20]);
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                return (total, hash.finalize());
            }
            hash.update(&buf[..n]);
            total += n;
        }
    });
    let mut sent = Sha256::new();
    let block: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = &conn;
    for i in 0..100u32 {
        let mut b = block.clone();
        b[..4].copy_from_slice(&i.to_be_bytes());
        sent.update(&b);
        w.write_all(&b).unwrap();
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let (total, digest) = receiver.join().unwrap();
    assert_eq!(total, 100 << 20);
    assert_eq!(digest, sent.finalize());

    // A socket missing on the device: that connection closes, the forward says why.
    let mut s = UnixStream::connect(tmp.path().join("l2.sock")).unwrap();
    let mut back = vec![];
    let _ = s.read_to_end(&mut back);
    assert!(back.is_empty());
    forward.out.wait_for(
        &format!(
            "cannot forward to {0}: cannot connect to unix socket {0} on the device: No such file or directory",
            missing.display()
        ),
        Duration::from_secs(10),
    );

    // Ctrl-C: the forward ends and its local socket file is gone.
    let pid = forward.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(forward.wait_exit(Duration::from_secs(20)), 0);
    assert!(!local.exists(), "the local socket file is removed on exit");

    // A file that is not a socket is never overwritten; the error names it.
    let precious = tmp.path().join("notes.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let err = admin.fails(&[
        "sock-dev",
        "forward",
        &format!("{}:{}", precious.display(), app.display()),
    ]);
    assert!(
        err.contains("is not a socket; refusing to overwrite it"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");

    // The grant recorded the socket as a unix target.
    let records = audit(&admin, "forward");
    let targets = &records[0]["args"]["targets"];
    assert!(
        targets
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["path"] == app.to_str().unwrap() && t["proto"] == "unix"),
        "{records:#?}"
    );
    // ...and the table shows it by its path.
    let table = admin.ok(&["audit", "--action", "forward"]);
    assert!(
        table.contains(&format!("{} (unix)", app.display())),
        "{table}"
    );
}
