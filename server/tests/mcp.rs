//! `m87 mcp` through the real binaries: the real `m87` as a child process speaking MCP on its
//! stdin/stdout to rmcp's client (and, for the viewer, to plain JSON-RPC lines), against the
//! real server and an enrolled device. The tools are listed with their annotations; the
//! device is listed; exec returns output and exit code (capped, with a marker), is on the
//! audit trail as done by that user; a file goes to the device and back unchanged; an unknown
//! device and a viewer's exec are tool errors with the CLI's message, and the server goes on
//! serving; the viewer still gets the device's status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{M87, acme, audit_until, request_id_of};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const READ_ONLY: &[&str] = &["list_devices", "device_status", "read_audit"];
const DESTRUCTIVE: &[&str] = &[
    "exec",
    "copy_file",
    "approve_device",
    "reject_device",
    "add_org_member",
    "set_org_member_role",
    "remove_org_member",
    "share_device",
    "unshare_device",
];

/// `m87 mcp` as `who`, its stdin and stdout piped; its stderr (logs) read apart, to the end,
/// by the task returned.
fn spawn_mcp(
    who: &M87,
    env: &[(&str, &str)],
) -> (tokio::process::Child, tokio::task::JoinHandle<String>) {
    let mut cmd = tokio::process::Command::from(who.command(&["mcp"]));
    cmd.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawning m87 mcp");
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    (child, logs)
}

type Client = RunningService<RoleClient, ()>;

/// Calls a tool; the result as the JSON the server sent (`content`, `structuredContent`,
/// `isError`).
async fn call(client: &Client, name: &str, args: Value) -> Value {
    let params = CallToolRequestParams::new(name.to_owned())
        .with_arguments(args.as_object().unwrap().clone());
    let result = tokio::time::timeout(Duration::from_secs(60), client.call_tool(params))
        .await
        .unwrap_or_else(|_| panic!("{name} did not answer within 60 s"))
        .unwrap_or_else(|e| panic!("{name}: protocol error {e}"));
    serde_json::to_value(result).unwrap()
}

/// The text of a tool error (asserting it is one).
fn error_text(result: &Value) -> String {
    assert_eq!(result["isError"], true, "a tool error expected: {result}");
    result["content"][0]["text"].as_str().unwrap().to_owned()
}

/// The structured content of a successful result.
fn ok(result: Value) -> Value {
    assert_eq!(result["isError"], false, "success expected: {result}");
    result["structuredContent"].clone()
}

/// Whether a process of this machine runs exactly `argv`.
fn running(argv: &[&str]) -> bool {
    let cmdline: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == cmdline))
}

fn sha256(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_lists_runs_and_copies_as_its_user_and_it_is_audited() {
    let a = acme();
    let (mut child, logs) = spawn_mcp(&a.bob, &[]);
    let transport = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let client: Client = ().serve(transport).await.expect("MCP initialization");
    assert_eq!(
        client
            .peer_info()
            .unwrap()
            .server_info
            .clone()
            .unwrap()
            .name,
        "m87"
    );

    // The tools, read-only ones and destructive ones marked as such.
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    let mut expected: Vec<&str> = READ_ONLY.iter().chain(DESTRUCTIVE).copied().collect();
    expected.sort();
    assert_eq!(names, expected);
    for t in &tools {
        let hints = t.annotations.clone().expect("annotated");
        if READ_ONLY.contains(&t.name.as_ref()) {
            assert_eq!(hints.read_only_hint, Some(true), "{}", t.name);
        } else {
            assert_eq!(hints.read_only_hint, Some(false), "{}", t.name);
            assert_eq!(hints.destructive_hint, Some(true), "{}", t.name);
        }
    }

    let listed = ok(call(&client, "list_devices", json!({})).await);
    let bot = &listed["devices"][0];
    assert_eq!(bot["name"], "acme-bot", "{listed}");
    assert_eq!(bot["status"], "approved");
    assert_eq!(bot["online"], true);

    // exec: output, exit code, stdin.
    let argv = json!(["sh", "-c", "echo from-mcp; echo oops >&2; exit 3"]);
    let ran = ok(call(&client, "exec", json!({"device": "acme-bot", "argv": argv})).await);
    assert_eq!(ran["exit_code"], 3, "{ran}");
    assert_eq!(ran["stdout"], "from-mcp\n");
    assert_eq!(ran["stderr"], "oops\n");
    assert_eq!(ran["truncated"], false);
    let args = json!({"device": "acme-bot", "argv": ["cat"], "stdin": "piped in"});
    assert_eq!(ok(call(&client, "exec", args).await)["stdout"], "piped in");

    // Long output is cut, and says so.
    let argv = json!(["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"]);
    let long = ok(call(&client, "exec", json!({"device": "acme-bot", "argv": argv})).await);
    let out = long["stdout"].as_str().unwrap();
    assert!(out.starts_with(&"x".repeat(65536)), "{}", &out[..100]);
    assert!(
        out.contains("[m87: stdout truncated: 34464 more bytes not shown"),
        "{}",
        &out[65536..]
    );
    assert_eq!(long["truncated"], true);
    assert_eq!(long["exit_code"], 0);

    // A command past its timeout is stopped: a tool error with what it printed.
    let argv = json!(["sh", "-c", "echo started; exec sleep 31337"]);
    let args = json!({"device": "acme-bot", "argv": argv, "timeout_secs": 1});
    let slow = call(&client, "exec", args).await;
    assert!(
        error_text(&slow).contains("did not end within 1 s"),
        "{slow}"
    );
    assert_eq!(slow["structuredContent"]["stdout"], "started\n");
    assert!(slow["structuredContent"]["exit_code"].is_null(), "{slow}");
    // ... and it is stopped on the device (which runs on this machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running(&["sleep", "31337"]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the timed-out command still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An unknown device: the CLI's message, and the server goes on.
    let args = json!({"device": "no-such-bot", "argv": ["true"]});
    let unknown = error_text(&call(&client, "exec", args).await);
    assert_eq!(unknown, "error: device \"no-such-bot\" not found");
    let cli = a.bob.fails(&["no-such-bot", "exec", "--", "true"]);
    assert_eq!(unknown, cli.trim());

    // The exec is on the audit trail, done by bob, as the CLI shows it and as the tool does.
    let mine = |r: &Value| r["args"]["argv"][2] == "echo from-mcp; echo oops >&2; exit 3";
    let records = audit_until(&a.alice, "exec", |r| {
        r.iter().any(|r| mine(r) && r["outcome"] != "open")
    });
    let rec = records.iter().find(|r| mine(r)).unwrap();
    assert_eq!(rec["user"], "bob@example.com");
    assert_eq!(rec["exit_code"], 3);
    assert_eq!(rec["device_name"], "acme-bot");
    let args = json!({"action": ["exec"], "user": "bob@example.com", "device": "acme-bot"});
    let audit = ok(call(&client, "read_audit", args).await);
    let recs = audit["records"].as_array().unwrap();
    assert!(recs.iter().any(mine), "{audit}");
    assert!(recs.iter().all(|r| r["user"] == "bob@example.com"));

    copy_there_and_back(&client, a.tmp.path()).await;

    // The client goes away: the server ends, and cleanly.
    client.cancel().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("m87 mcp ends when its client does")
        .unwrap();
    let logs = logs.await.unwrap();
    assert!(status.success(), "{status}: {logs}");
}

/// A file to the device and back, SHA-256 equal at each step; a relative local path is
/// refused.
async fn copy_there_and_back(client: &Client, tmp: &std::path::Path) {
    let local = tmp.join("blob.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    // The device runs on this machine: its paths are ours.
    let remote = tmp.join("on-device").join("blob.bin");
    std::fs::create_dir_all(remote.parent().unwrap()).unwrap();
    let up = json!({
        "device": "acme-bot",
        "direction": "to_device",
        "local_path": local,
        "remote_path": remote,
    });
    let copied = ok(call(client, "copy_file", up).await);
    assert_eq!(copied["files"], 1, "{copied}");
    assert_eq!(sha256(&remote), sha256(&local));
    let back = tmp.join("back.bin");
    let down = json!({
        "device": "acme-bot",
        "direction": "from_device",
        "local_path": back,
        "remote_path": remote,
    });
    ok(call(client, "copy_file", down).await);
    assert_eq!(sha256(&back), sha256(&local));
    let relative = json!({
        "device": "acme-bot",
        "direction": "from_device",
        "local_path": "back.bin",
        "remote_path": remote,
    });
    let refused = error_text(&call(client, "copy_file", relative).await);
    assert!(refused.contains("local_path must be absolute"), "{refused}");
}

/// Plain JSON-RPC over the child's pipes, every line it prints checked to be JSON-RPC.
struct Raw {
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
}

impl Raw {
    async fn send(&mut self, message: Value) {
        let mut line = serde_json::to_vec(&message).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Sends a request and returns its response's `result` (or `error`).
    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(request).await;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
                .await
                .expect("an answer within 60 s")
                .unwrap()
                .expect("m87 mcp closed its output");
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not JSON-RPC on stdout ({e}): {line}"));
            assert_eq!(message["jsonrpc"], "2.0", "{line}");
            if message["id"] == id {
                return if message["result"].is_null() {
                    message["error"].clone()
                } else {
                    message["result"].clone()
                };
            }
        }
    }

    async fn call(&mut self, name: &str, arguments: Value) -> Value {
        let params = json!({"name": name, "arguments": arguments});
        self.request("tools/call", params).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_status_but_exec_and_access_changes_are_refused_with_the_cli_message() {
    let a = acme();
    // Logs on, to show they stay off stdout.
    let (mut child, logs) = spawn_mcp(&a.carol, &[("RUST_LOG", "debug")]);
    let mut raw = Raw {
        stdin: child.stdin.take().unwrap(),
        stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
        next_id: 0,
    };
    let init = json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "plain-json-rpc", "version": "0"}
    });
    let info = raw.request("initialize", init).await;
    assert_eq!(info["serverInfo"]["name"], "m87", "{info}");
    assert!(info["capabilities"]["tools"].is_object(), "{info}");
    raw.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;

    // exec is refused with the role's message, the same words as the CLI's.
    let refused = raw
        .call("exec", json!({"device": "acme-bot", "argv": ["true"]}))
        .await;
    let text = error_text(&refused);
    assert!(text.contains("viewers"), "{text}");
    let cli = a.carol.fails(&["acme-bot", "exec", "--", "true"]);
    assert_eq!(text, cli.trim());

    // The server goes on: status is the viewer's to read.
    let status = ok(raw
        .call("device_status", json!({"device": "acme-bot"}))
        .await);
    assert_eq!(status["device"], "acme-bot", "{status}");
    assert_eq!(status["online"], true);
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(
        status["report"]["runtime_version"],
        env!("CARGO_PKG_VERSION")
    );

    // An access change the viewer may not make: the CLI's message again.
    let args = json!({"org": "acme", "email": "bob@example.com", "role": "viewer"});
    let text = error_text(&raw.call("set_org_member_role", args).await);
    let cli = a.carol.fails(&[
        "org",
        "members",
        "role",
        "acme",
        "bob@example.com",
        "viewer",
    ]);
    assert_eq!(text, cli.trim());

    // Bad arguments are the tool's error too, naming what is wrong, and the schema says what
    // is right.
    let tools = raw.request("tools/list", json!({})).await;
    let add = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "add_org_member")
        .unwrap();
    assert!(add["inputSchema"].to_string().contains("viewer"), "{add}");
    let args = json!({"org": "acme", "email": "bob@example.com", "role": "boss"});
    let text = error_text(&raw.call("add_org_member", args).await);
    assert!(text.contains("unknown variant `boss`"), "{text}");

    // The refused exec is on the trail as carol's.
    let records = audit_until(&a.alice, "exec", |r| {
        r.iter()
            .any(|r| r["user"] == "carol@example.com" && r["outcome"] == "refused")
    });
    assert!(!records.is_empty());

    drop(raw);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("m87 mcp ends when its input does")
        .unwrap();
    let logs = logs.await.unwrap();
    assert!(status.success(), "{status}: {logs}");
    assert!(
        logs.contains("serving the Model Context Protocol"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_approves_shares_and_changes_roles_through_mcp() {
    let a = acme();
    let second = M87::new(&a.server.url, &a.tmp.path().join("dev2"), None);
    let runtime = second.runtime(&["--org", "acme", "--name", "acme-two"]);
    let request_id = request_id_of(&runtime);
    let (mut child, _logs) = spawn_mcp(&a.alice, &[]);
    let transport = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let client: Client = ().serve(transport).await.expect("MCP initialization");

    let approved = ok(call(&client, "approve_device", json!({"request": "acme-two"})).await);
    assert_eq!(approved["decision"]["status"], "approved", "{approved}");
    assert_eq!(approved["decision"]["request_id"], request_id.as_str());
    let two = |who: &M87| {
        who.devices()
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "acme-two" && d["status"] == "approved")
    };
    assert!(two(&a.bob), "bob sees the approved device");

    // Sharing with eve, then not.
    let scope = json!({"device": "acme-bot", "scope": "user:eve@example.com"});
    let shared = ok(call(&client, "share_device", scope.clone()).await);
    assert_eq!(
        shared["message"],
        "acme-bot is now shared with user:eve@example.com"
    );
    assert_eq!(a.eve.devices()[0]["name"], "acme-bot");
    ok(call(&client, "unshare_device", scope).await);
    assert_eq!(a.eve.devices(), json!([]));

    // A role change, as `m87 org members list` shows it.
    let args = json!({"org": "acme", "email": "carol@example.com", "role": "member"});
    let changed = ok(call(&client, "set_org_member_role", args).await);
    assert_eq!(
        changed["message"],
        "carol@example.com is now member in acme"
    );
    let members: Value = serde_json::from_str(
        &a.alice
            .ok(&["org", "members", "list", "acme", "-o", "json"]),
    )
    .unwrap();
    let carol = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == "carol@example.com")
        .unwrap();
    assert_eq!(carol["role"], "member", "{members}");

    // Rejecting an approved device removes it.
    let removed = ok(call(&client, "reject_device", json!({"device": "acme-two"})).await);
    assert_eq!(removed["decision"]["status"], "removed", "{removed}");
    assert!(!two(&a.bob), "the removed device is gone");

    // Each change is on the trail as alice's.
    for action in ["approve", "access", "remove"] {
        audit_until(&a.alice, action, |r| {
            r.iter().any(|r| r["user"] == "alice@example.com")
        });
    }
    drop(runtime);
    client.cancel().await.unwrap();
}
