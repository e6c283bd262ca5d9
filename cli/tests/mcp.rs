//! `m87 mcp` without a server: its help shows how to configure an MCP client, with JSON that
//! parses; without a login, the tools answer the CLI's "not logged in" as tool errors and the
//! server keeps serving until its input ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn m87(config: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_m87"));
    cmd.args(args)
        .env("M87_CONFIG_DIR", config)
        .env("M87_API_URL", "https://127.0.0.1:9")
        .env_remove("M87_API_KEY")
        .env_remove("OWNER_REFERENCE")
        .env_remove("RUST_LOG");
    cmd
}

/// The JSON blocks of a help text: the lines from one starting with `{` to the next closing
/// `}` at the same indentation.
fn json_blocks(text: &str) -> Vec<serde_json::Value> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        match &mut current {
            None if line.trim() == "{" => current = Some((indent, format!("{line}\n"))),
            None => {}
            Some((open, body)) => {
                body.push_str(line);
                body.push('\n');
                if line.trim() == "}" && indent == *open {
                    blocks.push(serde_json::from_str(body).unwrap());
                    current = None;
                }
            }
        }
    }
    blocks
}

#[test]
fn help_shows_a_client_configuration_that_parses() {
    let dir = tempfile::tempdir().unwrap();
    let out = m87(dir.path(), &["mcp", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let blocks = json_blocks(&text);
    assert_eq!(blocks.len(), 2, "{text}");
    assert_eq!(blocks[0]["mcpServers"]["m87"]["command"], "m87");
    assert_eq!(blocks[0]["mcpServers"]["m87"]["args"][0], "mcp");
    assert_eq!(blocks[1]["servers"]["m87"]["type"], "stdio");
    for word in ["M87_API_KEY", "Claude Desktop", "VS Code", "docs/mcp.md"] {
        assert!(text.contains(word), "{word}: {text}");
    }
}

#[test]
fn without_a_login_tools_fail_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = m87(dir.path(), &["mcp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let call = |id: u32, name: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
        )
    };
    let input = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
        call(2, "list_devices"),
        call(3, "read_audit"),
    ];
    let mut stdin = child.stdin.take().unwrap();
    for line in &input {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let answers: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 3, "{answers:?}");
    for id in [2, 3] {
        let answer = answers.iter().find(|a| a["id"] == id).unwrap();
        assert_eq!(answer["result"]["isError"], true, "{answer}");
        let text = answer["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.starts_with("error: not logged in"), "{text}");
    }
}
