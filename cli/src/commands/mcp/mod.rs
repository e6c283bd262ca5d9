//! `m87 mcp`: a Model Context Protocol server over standard input and output, so an AI agent
//! (Claude Desktop, VS Code, …) can list devices, read their status, run commands, copy files,
//! read the audit trail and, when the user may, approve, reject and share — each call as the
//! CLI's own command, under the same grants, roles and audit.
//!
//! Standard output carries the protocol only (JSON-RPC lines); logs go to standard error.
//!
//! - `params`: each tool's arguments and how results and errors are handed back.
//! - `tools`: the tools and the server.

mod params;
mod tools;

use rmcp::ServiceExt;

/// What `m87 mcp --help` adds: how to configure an MCP client.
pub const HELP: &str = r#"Configure it in your MCP client as a stdio server whose command is `m87 mcp`. It acts
as the user m87 is logged in as (`m87 login`), or the API key in M87_API_KEY; M87_API_URL
names the server. Claude Desktop (claude_desktop_config.json):

  {
    "mcpServers": {
      "m87": {
        "command": "m87",
        "args": ["mcp"],
        "env": { "M87_API_URL": "https://m87.example.com:8085" }
      }
    }
  }

VS Code (.vscode/mcp.json):

  {
    "servers": {
      "m87": { "type": "stdio", "command": "m87", "args": ["mcp"] }
    }
  }

Tools: list_devices, device_status, read_audit (read-only); exec, copy_file; approve_device,
reject_device, add_org_member, set_org_member_role, remove_org_member, share_device,
unshare_device (marked destructive). Each call is granted, refused and audited as the same
CLI command; a refusal comes back as a tool error with the CLI's message. Logs go to
standard error (RUST_LOG). See docs/mcp.md."#;

/// Serves MCP on standard input and output until the client closes them.
pub async fn run() -> anyhow::Result<()> {
    tracing::info!("m87 mcp: serving the Model Context Protocol on stdin/stdout");
    let service = tools::M87Tools::new()
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("starting the MCP server: {e}"))?;
    service
        .waiting()
        .await
        .map_err(|e| anyhow::anyhow!("the MCP server stopped: {e}"))?;
    Ok(())
}
