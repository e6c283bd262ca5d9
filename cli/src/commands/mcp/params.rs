//! The arguments of each `m87 mcp` tool (their JSON Schemas are what the client sees), and
//! how results and errors are handed back.

use rmcp::model::{CallToolResult, ContentBlock};
use schemars::JsonSchema;
use serde::Deserialize;

/// `list_devices`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ListDevices {
    /// Only devices whose name contains this (ignoring case).
    #[serde(default)]
    pub name: Option<String>,
    /// Only rows with this status.
    #[serde(default)]
    pub status: Option<StatusArg>,
}

/// A device's or request's status.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusArg {
    /// Waiting for an approver.
    Pending,
    /// Part of the fleet.
    Approved,
    /// Refused by an approver.
    Rejected,
    /// Not decided in time.
    Expired,
    /// Was part of the fleet and was removed.
    Removed,
}

impl From<StatusArg> for m87_events::api::DeviceStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => Self::Pending,
            StatusArg::Approved => Self::Approved,
            StatusArg::Rejected => Self::Rejected,
            StatusArg::Expired => Self::Expired,
            StatusArg::Removed => Self::Removed,
        }
    }
}

/// A role in an organization.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleArg {
    /// Approves devices, manages members and access; operates devices.
    Admin,
    /// Operates devices: shell, exec, forward, files.
    Member,
    /// Reads status, logs, metrics and audit only.
    Viewer,
}

impl From<RoleArg> for m87_events::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Admin => Self::Admin,
            RoleArg::Member => Self::Member,
            RoleArg::Viewer => Self::Viewer,
        }
    }
}

/// A tool that acts on one device.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct OnDevice {
    /// The device: its name, id or a unique prefix.
    pub device: String,
}

/// `exec`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Exec {
    /// The device: its name, id or a unique prefix.
    pub device: String,
    /// The program and its arguments, as separate strings (no shell unless you run one, e.g.
    /// ["sh", "-c", "ls | wc -l"]).
    pub argv: Vec<String>,
    /// Text sent to the command's standard input (then end-of-file). Default: none.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Seconds to wait for the command before stopping it (default 60, at most 3600).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Which way a file goes.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From this machine to the device.
    ToDevice,
    /// From the device to this machine.
    FromDevice,
}

/// `copy_file`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CopyFile {
    /// The device: its name, id or a unique prefix.
    pub device: String,
    /// to_device (upload) or from_device (download).
    pub direction: Direction,
    /// The path on the machine running `m87 mcp`.
    pub local_path: String,
    /// The path on the device.
    pub remote_path: String,
    /// Copy a directory and everything in it. Default: false.
    #[serde(default)]
    pub recursive: bool,
}

/// `read_audit`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadAudit {
    /// Only this device (name, id or unique prefix).
    #[serde(default)]
    pub device: Option<String>,
    /// Only what this user (email) did.
    #[serde(default)]
    pub user: Option<String>,
    /// Only these actions: exec, shell, cp, sync, forward, register, approve, reject, expire,
    /// remove, access, api_key, org, connect, disconnect, …
    #[serde(default)]
    pub action: Vec<String>,
    /// Only records at or after this: a duration back from now (30m, 2h, 7d) or a time
    /// (2026-12-01T10:00Z).
    #[serde(default)]
    pub since: Option<String>,
    /// Only records before this (same forms as since).
    #[serde(default)]
    pub until: Option<String>,
    /// Only this outcome: ok, failed, refused or open.
    #[serde(default)]
    pub outcome: Option<String>,
    /// At most this many records, newest first (default 50, at most 1000).
    #[serde(default)]
    pub max: Option<usize>,
}

/// `approve_device`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Approve {
    /// The registration request id, or the pending device's name, id or unique prefix.
    pub request: String,
}

/// `reject_device`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Reject {
    /// A pending request (rejected) or an approved device (removed; its key stops working):
    /// request id, device id, name or unique prefix.
    pub device: String,
}

/// `add_org_member` and `set_org_member_role`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct OrgMemberRole {
    /// The organization's id.
    pub org: String,
    /// The user's email.
    pub email: String,
    /// The role.
    pub role: RoleArg,
}

/// `remove_org_member`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct OrgMember {
    /// The organization's id.
    pub org: String,
    /// The user's email.
    pub email: String,
}

/// `share_device` and `unshare_device`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeviceAccess {
    /// The device: its name, id or a unique prefix.
    pub device: String,
    /// Who: `user:<email>` or `org:<id>`.
    pub scope: String,
}

/// A successful result: `value` as structured content (and as its JSON text).
pub fn done(value: serde_json::Value) -> CallToolResult {
    CallToolResult::structured(value)
}

/// A tool error carrying the CLI's message for `e` (the server keeps serving).
pub fn failed(e: &anyhow::Error) -> CallToolResult {
    let mut message = format!("{e:#}");
    let unauthorized = e
        .downcast_ref::<m87_transport::http::ApiError>()
        .and_then(|e| e.status())
        == Some(401);
    if unauthorized {
        message.push_str(
            " (check the M87_API_KEY this MCP server runs with, or run `m87 login` as its user)",
        );
    }
    CallToolResult::error(vec![ContentBlock::text(format!("error: {message}"))])
}

/// `Ok(value)` as [`done`], an error as [`failed`].
pub fn answer(result: anyhow::Result<serde_json::Value>) -> CallToolResult {
    match result {
        Ok(value) => done(value),
        Err(e) => failed(&e),
    }
}

/// Parses a tool argument the way the CLI parses it, naming the argument when it is wrong.
pub fn parse<T>(what: &str, text: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    text.parse::<T>()
        .map_err(|e| anyhow::anyhow!("invalid {what} {text:?}: {e}"))
}
