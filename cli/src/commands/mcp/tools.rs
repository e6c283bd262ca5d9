//! The tools `m87 mcp` offers. Each one signs in as the CLI does ([`user_client`], at every
//! call) and goes through the CLI's own functions, so the control plane grants, refuses and
//! records each call exactly as it does the same CLI command.

use std::path::PathBuf;
use std::time::Duration;

use m87_events::api::DeviceListQuery;
use m87_events::token::Operation;
use m87_events::{Email, OrgId, Role, Scope};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};

use super::params::{
    Approve, CopyFile, DeviceAccess, Direction, Exec, ListDevices, OnDevice, OrgMember,
    OrgMemberRole, ReadAudit, Reject, answer, failed, parse,
};
use crate::commands::audit::AuditFilters;
use crate::commands::{audit, devices, files, orgs, remote as device_ops};
use crate::context::user_client;
use crate::remote::exec::{Captured, capture};
use crate::session::QuicSession;

/// At most this much of each output stream of `exec` comes back.
pub const OUTPUT_CAP: usize = 64 * 1024;
/// `exec`'s default timeout, and its longest.
const EXEC_TIMEOUT: (u64, u64) = (60, 3600);

/// What the server tells the client about itself.
const INSTRUCTIONS: &str = "m87 reaches Linux devices behind NAT. Tools act as the user this \
server runs as (their API key or login), with that user's roles: the control plane refuses what \
the user may not do, and records every call in the audit trail. Devices are named by name, id \
or a unique prefix; list_devices shows them.";

/// The `m87 mcp` server: its tools.
#[derive(Clone)]
pub struct M87Tools {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl M87Tools {
    /// The server with all its tools.
    pub fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    /// The devices and registration requests you can see (as `m87 devices list -o json`):
    /// name, id, status (pending, approved, …), online, last_seen, owner and sharing.
    #[tool(annotations(title = "List devices", read_only_hint = true, open_world_hint = false))]
    async fn list_devices(&self, Parameters(p): Parameters<ListDevices>) -> CallToolResult {
        answer(list_devices(p).await)
    }

    /// Is a device up and healthy (the status operation, as `m87 <device> status -o json`):
    /// online, healthy, the runtime's report (OS, uptime, load, memory, disks, interfaces,
    /// relay) and the checks made of it. Viewers may use it.
    #[tool(annotations(
        title = "Device status",
        read_only_hint = true,
        open_world_hint = false
    ))]
    async fn device_status(&self, Parameters(p): Parameters<OnDevice>) -> CallToolResult {
        answer(device_status(p).await)
    }

    /// Run a command on a device (as `m87 <device> exec -- ARGV`), without a terminal; returns
    /// its exit_code, stdout and stderr (each cut at 64 KiB, marked "[m87: … truncated …]").
    /// A command still running at the timeout is stopped and the call fails with what it
    /// printed so far. Recorded in the audit trail.
    #[tool(annotations(
        title = "Run a command on a device",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn exec(&self, Parameters(p): Parameters<Exec>) -> CallToolResult {
        match exec(p).await {
            Ok((value, false)) => CallToolResult::structured(value),
            Ok((value, true)) => CallToolResult::structured_error(value),
            Err(e) => failed(&e),
        }
    }

    /// Copy a file (or with recursive, a directory) between the machine running this server
    /// and a device (as `m87 cp`); local_path must be absolute. Permissions and modification
    /// times are kept; an existing destination file is replaced. Recorded in the audit trail.
    #[tool(annotations(
        title = "Copy files to or from a device",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn copy_file(&self, Parameters(p): Parameters<CopyFile>) -> CallToolResult {
        answer(copy_file(p).await)
    }

    /// Who did what on which device, when, and how it ended (as `m87 audit -o json`),
    /// newest first: sessions (exec, shell, cp, …) and control changes (approve, access, …).
    #[tool(annotations(
        title = "Read the audit trail",
        read_only_hint = true,
        open_world_hint = false
    ))]
    async fn read_audit(&self, Parameters(p): Parameters<ReadAudit>) -> CallToolResult {
        answer(read_audit(p).await)
    }

    /// Approve a pending registration request: the device joins the fleet of its owner
    /// (as `m87 devices approve`).
    #[tool(annotations(
        title = "Approve a device",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn approve_device(&self, Parameters(p): Parameters<Approve>) -> CallToolResult {
        answer(approve(p).await)
    }

    /// Reject a pending registration request, or remove an approved device: its key stops
    /// working and its sessions end (as `m87 devices reject`).
    #[tool(annotations(
        title = "Reject or remove a device",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn reject_device(&self, Parameters(p): Parameters<Reject>) -> CallToolResult {
        answer(reject(p).await)
    }

    /// Add a user to an organization with a role: admin, member or viewer
    /// (as `m87 org members add`).
    #[tool(annotations(
        title = "Add an organization member",
        read_only_hint = false,
        destructive_hint = true,
        open_world_hint = false
    ))]
    async fn add_org_member(&self, Parameters(p): Parameters<OrgMemberRole>) -> CallToolResult {
        answer(member_role(p, true).await)
    }

    /// Change an organization member's role: admin, member or viewer
    /// (as `m87 org members role`).
    #[tool(annotations(
        title = "Change a member's role",
        read_only_hint = false,
        destructive_hint = true,
        open_world_hint = false
    ))]
    async fn set_org_member_role(
        &self,
        Parameters(p): Parameters<OrgMemberRole>,
    ) -> CallToolResult {
        answer(member_role(p, false).await)
    }

    /// Remove a user from an organization; their open sessions on its devices end
    /// (as `m87 org members remove`).
    #[tool(annotations(
        title = "Remove an organization member",
        read_only_hint = false,
        destructive_hint = true,
        open_world_hint = false
    ))]
    async fn remove_org_member(&self, Parameters(p): Parameters<OrgMember>) -> CallToolResult {
        answer(remove_member(p).await)
    }

    /// Share a device with `user:<email>` or `org:<id>` (as `m87 <device> access add`).
    #[tool(annotations(
        title = "Share a device",
        read_only_hint = false,
        destructive_hint = true,
        open_world_hint = false
    ))]
    async fn share_device(&self, Parameters(p): Parameters<DeviceAccess>) -> CallToolResult {
        answer(access(p, true).await)
    }

    /// Stop sharing a device with `user:<email>` or `org:<id>`; their open sessions end
    /// (as `m87 <device> access remove`).
    #[tool(annotations(
        title = "Stop sharing a device",
        read_only_hint = false,
        destructive_hint = true,
        open_world_hint = false
    ))]
    async fn unshare_device(&self, Parameters(p): Parameters<DeviceAccess>) -> CallToolResult {
        answer(access(p, false).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for M87Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("m87", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// The user's client, as every CLI command gets it.
fn client() -> anyhow::Result<m87_transport::http::ApiClient> {
    user_client()
}

async fn list_devices(p: ListDevices) -> anyhow::Result<Value> {
    let query = DeviceListQuery {
        name: p.name,
        status: p.status.map(Into::into),
    };
    let rows = devices::listing(&client()?, &query).await?;
    Ok(json!({ "devices": rows }))
}

async fn device_status(p: OnDevice) -> anyhow::Result<Value> {
    let found = crate::commands::ops::status::find(&client()?, &p.device).await?;
    Ok(found.to_json())
}

/// Runs it; the result, and whether it timed out.
async fn exec(p: Exec) -> anyhow::Result<(Value, bool)> {
    if p.argv.is_empty() {
        anyhow::bail!(
            "argv is empty: name the program and its arguments, e.g. [\"uname\", \"-a\"]"
        );
    }
    let timeout = p
        .timeout_secs
        .unwrap_or(EXEC_TIMEOUT.0)
        .clamp(1, EXEC_TIMEOUT.1);
    let client = client()?;
    let grant = json!({ "argv": p.argv });
    let session = QuicSession::open(&client, &p.device, Operation::Exec, grant).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let stdin = p.stdin.unwrap_or_default().into_bytes();
    let captured = capture(&session, p.argv, stdin, OUTPUT_CAP, deadline).await;
    session.close().await;
    let c = captured?;
    let timed_out = c.status.is_none();
    Ok((exec_json(&c, timeout), timed_out))
}

/// The text of one output stream, with the marker when it was cut.
fn stream_text(kept: &[u8], dropped: u64, name: &str) -> String {
    let mut text = String::from_utf8_lossy(kept).into_owned();
    if dropped > 0 {
        text.push_str(&format!(
            "\n[m87: {name} truncated: {dropped} more bytes not shown (at most {OUTPUT_CAP} are \
             returned); redirect to a file on the device and read parts of it]"
        ));
    }
    text
}

fn exec_json(c: &Captured, timeout: u64) -> Value {
    let mut v = json!({
        "exit_code": c.status.map(crate::remote::exec::exit_code),
        "stdout": stream_text(&c.stdout, c.stdout_dropped, "stdout"),
        "stderr": stream_text(&c.stderr, c.stderr_dropped, "stderr"),
        "truncated": c.stdout_dropped > 0 || c.stderr_dropped > 0,
    });
    if let Some(m87_events::tunnel::ExitStatus::Signal(s)) = c.status {
        v["signal"] = json!(s);
    }
    if let Some(e) = &c.error {
        v["error"] = json!(e);
    }
    if c.status.is_none() {
        v["error"] = json!(format!(
            "the command did not end within {timeout} s and was stopped; raise timeout_secs \
             (at most {}) or run it in the background",
            EXEC_TIMEOUT.1
        ));
    }
    v
}

async fn copy_file(p: CopyFile) -> anyhow::Result<Value> {
    let local = PathBuf::from(&p.local_path);
    if !local.is_absolute() {
        anyhow::bail!(
            "local_path must be absolute ({:?} is relative to a working directory the MCP client chose)",
            p.local_path
        );
    }
    let t = files::Transfer {
        device: p.device,
        remote: p.remote_path,
        local,
        to_device: matches!(p.direction, Direction::ToDevice),
    };
    let copied = files::copy(&client()?, &t, p.recursive, false).await?;
    Ok(serde_json::to_value(copied)?)
}

async fn read_audit(p: ReadAudit) -> anyhow::Result<Value> {
    let filters = AuditFilters {
        since: p.since,
        until: p.until,
        user: p.user,
        action: p.action,
        outcome: p.outcome,
        max: p.max.unwrap_or(50),
        details: false,
        follow: false,
    };
    let records = audit::records(&client()?, &filters, p.device.as_deref()).await?;
    Ok(json!({ "records": records }))
}

fn decision(d: &m87_events::api::DecisionResponse) -> Value {
    json!({ "message": devices::decision_message(d), "decision": d })
}

async fn approve(p: Approve) -> anyhow::Result<Value> {
    Ok(decision(
        &devices::approve_request(&client()?, &p.request).await?,
    ))
}

async fn reject(p: Reject) -> anyhow::Result<Value> {
    Ok(decision(
        &devices::reject_target(&client()?, &p.device).await?,
    ))
}

async fn member_role(p: OrgMemberRole, add: bool) -> anyhow::Result<Value> {
    let org: OrgId = parse("organization id", &p.org)?;
    let email: Email = parse("email", &p.email)?;
    let role: Role = p.role.into();
    let client = client()?;
    let message = if add {
        orgs::add_member(&client, &org, &email, role).await?
    } else {
        orgs::set_role(&client, &org, &email, role).await?
    };
    Ok(json!({ "message": message }))
}

async fn remove_member(p: OrgMember) -> anyhow::Result<Value> {
    let org: OrgId = parse("organization id", &p.org)?;
    let email: Email = parse("email", &p.email)?;
    let message = orgs::remove_member(&client()?, &org, &email).await?;
    Ok(json!({ "message": message }))
}

async fn access(p: DeviceAccess, share: bool) -> anyhow::Result<Value> {
    let scope: Scope = parse("scope (user:<email> or org:<id>)", &p.scope)?;
    let message = device_ops::change_access(&client()?, &p.device, &scope, share).await?;
    Ok(json!({ "message": message }))
}
