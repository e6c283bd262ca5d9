//! REST request and response bodies (all under `/v1`), and the one error format.
//!
//! Request bodies refuse unknown fields, so a typo in automation is an error rather than a
//! silently ignored setting.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{Role, SystemInfo};
use crate::ids::{DeviceId, DeviceName, Email, KeyId, OrgId, RequestId, Scope, SessionId};
use crate::token::Operation;

/// The body of every error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, for machines (`code`) and people (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, snake_case code, for example `not_found` or `already_decided`.
    pub code: String,
    /// One lowercase sentence for a person.
    pub message: String,
}

/// `POST /v1/registrations`: a device asks to join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The id the device generated for itself and keeps.
    pub device_id: DeviceId,
    /// The display name.
    pub name: DeviceName,
    /// Who the device asks to belong to: `user:<email>` or `org:<id>`.
    pub owner_scope: Scope,
    /// What the device tells about itself.
    pub system_info: SystemInfo,
    /// A random secret (at least 32 characters) that only this device knows; its key is released
    /// only to a poll that presents it.
    pub claim_secret: String,
}

/// The answer to a registration request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    /// The new request's id, to give to an approver.
    pub request_id: RequestId,
    /// Always `pending` for a new request.
    pub status: DeviceStatus,
    /// When the request expires if nobody decides.
    pub expires_at: DateTime<Utc>,
    /// How often the device should poll, in seconds.
    pub poll_interval_secs: u64,
}

/// `POST /v1/registrations/{id}/poll`: a device asks how its request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// The claim secret sent with the request.
    pub claim_secret: String,
}

/// How a registration request stands, as seen by the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PollResponse {
    /// The request.
    pub request_id: RequestId,
    /// `pending`, `approved`, `rejected` or `expired`.
    pub status: DeviceStatus,
    /// The device's API key: present exactly once, in the first poll after approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The device id, once approved.
    pub device_id: DeviceId,
}

/// The status of a device or registration request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Waiting for an approver.
    Pending,
    /// Part of the fleet.
    Approved,
    /// Refused by an approver.
    Rejected,
    /// Not decided within its lifetime.
    Expired,
    /// Was part of the fleet and was removed.
    Removed,
}

impl DeviceStatus {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Rejected => "rejected",
            DeviceStatus::Expired => "expired",
            DeviceStatus::Removed => "removed",
        }
    }
}

/// One row of `GET /v1/devices`: a device, or a registration request not (yet) approved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceSummary {
    /// The device id.
    pub id: DeviceId,
    /// The registration request behind this row.
    pub request_id: RequestId,
    /// The display name.
    pub name: DeviceName,
    /// Where it stands.
    pub status: DeviceStatus,
    /// Who owns it.
    pub owner_scope: Scope,
    /// Who else may reach it.
    pub allowed_scopes: Vec<Scope>,
    /// What it told about itself.
    pub system_info: SystemInfo,
    /// When it asked to join.
    pub requested_at: DateTime<Utc>,
    /// When the request was decided (approved, rejected, expired), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    /// Who decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When a pending request expires.
    pub expires_at: DateTime<Utc>,
    /// Whether its tunnel is connected to a relay now.
    #[serde(default)]
    pub online: bool,
    /// When it was last connected (now, when online).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
}

/// The query of `GET /v1/devices`: filters; the rows come newest request first.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceListQuery {
    /// Only rows whose name contains this, ignoring case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only rows with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
}

/// `GET /v1/registrations/pending`: how many requests wait for a decision, per owner scope
/// the caller can see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PendingCounts {
    /// Pending requests in all of those scopes.
    pub total: u64,
    /// The most pending requests one scope may hold; new ones are refused beyond it.
    pub max_per_scope: u64,
    /// Per scope with at least one pending request, the fullest first.
    pub scopes: Vec<ScopePending>,
}

/// Pending requests of one owner scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScopePending {
    /// The owner scope the requests asked for.
    pub owner_scope: Scope,
    /// How many wait for a decision.
    pub pending: u64,
}

/// `POST /v1/api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// The user the key acts as; defaults to the caller. Only platform admins may name another.
    #[serde(default)]
    pub email: Option<Email>,
    /// A label to recognise the key by (at most 64 characters).
    #[serde(default)]
    pub name: Option<String>,
}

/// A newly created API key: the only time the key itself is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key's id, for listing and revoking.
    pub id: KeyId,
    /// The key. It is not stored and cannot be shown again.
    pub key: String,
    /// The user it acts as.
    pub email: Email,
    /// Its label.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// One row of `GET /v1/api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeySummary {
    /// The key's id.
    pub id: KeyId,
    /// The user it acts as.
    pub email: Email,
    /// Its label.
    pub name: String,
    /// The key's first characters.
    pub hint: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `POST /v1/devices/{id}/access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    /// The scope to give access to.
    pub scope: Scope,
}

/// `GET /v1/whoami`: the caller as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// `user` or `device`.
    pub kind: String,
    /// The user's email, for users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    /// The device, for devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// The scopes whose devices the caller can see.
    pub scopes: Vec<Scope>,
    /// Whether the caller is a platform admin.
    pub platform_admin: bool,
    /// The caller's organizations and roles.
    #[serde(default)]
    pub memberships: Vec<Membership>,
}

/// One organization a user belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    /// The organization.
    pub org_id: OrgId,
    /// The role in it.
    pub role: Role,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// The answer to approving or rejecting a registration request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DecisionResponse {
    /// The decided request.
    pub request_id: RequestId,
    /// The device it concerns.
    pub device_id: DeviceId,
    /// `approved` or `rejected`.
    pub status: DeviceStatus,
}

/// `POST /v1/devices/{id}/sessions`: ask for a session on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// What to do.
    pub operation: Operation,
    /// Its arguments, recorded and bound into the token: `{"argv": [...], "tty": bool}` for exec
    /// (`tty` true for a pseudo-terminal, which a recording policy records),
    /// `{"targets": [{"host", "port", "proto"}]}` for forward, `{"path": ...}` for copy and sync.
    #[serde(default)]
    pub args: serde_json::Value,
}

/// Where a relay listens and how to recognise it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RelayEndpoint {
    /// `host:port` (UDP) to dial.
    pub address: String,
    /// The TLS server name to present.
    pub server_name: String,
    /// SHA-256 of its certificate (colon-separated hex), to pin it.
    pub cert_sha256: String,
}

/// A granted session: the token and where to use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionGrant {
    /// The session.
    pub session_id: SessionId,
    /// The signed token; the session must start before `expires_at`.
    pub token: String,
    /// When the token stops being accepted.
    pub expires_at: DateTime<Utc>,
    /// The relay to dial.
    pub relay: RelayEndpoint,
    /// Every relay the control plane knows (the session reaches the device through any of
    /// them; `M87_RELAY` picks one by address).
    #[serde(default)]
    pub relays: Vec<RelayEndpoint>,
    /// Whether the device records this session's terminal (tell the user).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recorded: bool,
    /// Whose policy asks for the recording: `org <id>` or `device <name>` (when recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_policy: Option<String>,
}

/// `GET /v1/device/tunnel`: what a device needs to connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceTunnelConfig {
    /// Relays to dial, in order of preference.
    pub relays: Vec<RelayEndpoint>,
    /// The control plane's Ed25519 public key (base64url) that signs session tokens.
    pub session_public_key: String,
}

/// `POST /v1/device/sessions/{id}/closed`: a device reports a session's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SessionClosedReport {
    /// How long it lasted.
    pub duration_ms: u64,
    /// Bytes from the client.
    pub bytes_to_device: u64,
    /// Bytes to the client.
    pub bytes_from_device: u64,
    /// Exit code of the last process.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Signal that ended it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<String>,
    /// Why it ended: `client_closed`, `exit`, `access_revoked`, `credential_revoked`,
    /// `device_removed`, `relay_lost`, `timeout` or `error`.
    #[serde(default)]
    pub reason: Option<String>,
    /// One summary per channel, at most [`MAX_CHANNEL_SUMMARIES`] (the first ones).
    #[serde(default)]
    pub channels: Vec<ChannelSummary>,
    /// Channels beyond [`MAX_CHANNEL_SUMMARIES`], counted but not described.
    #[serde(default)]
    pub channels_dropped: u64,
}

pub use crate::domain::{ChannelSummary, MAX_CHANNEL_SUMMARIES};

/// `POST /v1/device/sessions/refused`: a device reports a refused session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRefusedReport {
    /// The session the token named, if readable.
    #[serde(default)]
    pub session_id: Option<SessionId>,
    /// Stable code.
    pub code: String,
    /// Why.
    pub reason: String,
}

/// `POST /v1/orgs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// The new organization's id (`[a-z0-9-]`, 1–63).
    pub id: OrgId,
    /// Its display name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
}

/// One row of `GET /v1/orgs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrgSummary {
    /// The organization.
    pub id: OrgId,
    /// Its display name.
    pub name: String,
    /// The caller's role (absent for platform admins who are not members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// How many members it has.
    pub members: usize,
}

/// `POST /v1/orgs/{id}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    /// The user.
    pub email: Email,
    /// Their role.
    pub role: Role,
}

/// `PUT /v1/orgs/{id}/members/{email}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    /// The new role.
    pub role: Role,
}

/// One row of `GET /v1/orgs/{id}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberSummary {
    /// The user.
    pub email: Email,
    /// Their role.
    pub role: Role,
}

/// `GET /v1/auth/config`: how to sign in interactively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthConfig {
    /// The OIDC issuer URL.
    pub issuer: String,
    /// The public client id the CLI signs in with.
    pub client_id: String,
    /// The audience (resource) access tokens must be issued for.
    pub audience: String,
}

// ------------------------------------------------------------------------------------------------
// The internal relay API (fleet mode): relays call the control plane with the fleet's relay
// secret as the bearer token.
// ------------------------------------------------------------------------------------------------

/// `GET /v1/internal/relay/config`: what a relay needs from the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RelayBootstrap {
    /// The Ed25519 public key (base64url) that signs session tokens.
    pub session_public_key: String,
}

/// `POST /v1/internal/relay/authenticate`: whose device key this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayAuthenticateRequest {
    /// The key the device presented.
    pub api_key: String,
}

/// The answer to [`RelayAuthenticateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RelayAuthenticateResponse {
    /// The device the key belongs to.
    pub device_id: DeviceId,
}

/// `POST /v1/internal/relay/presence`: a device's tunnel came or went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayPresenceReport {
    /// The device.
    pub device_id: DeviceId,
    /// The relay reporting.
    pub relay_id: String,
    /// The device's address, when it connected.
    #[serde(default)]
    pub remote: Option<String>,
    /// Why it left, when it disconnected.
    #[serde(default)]
    pub reason: Option<String>,
    /// Connected (true) or disconnected (false).
    pub connected: bool,
}

/// `POST /v1/internal/relay/refusals`: a relay refused a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayRefusalReport {
    /// The session, when the token named one.
    #[serde(default)]
    pub session_id: Option<SessionId>,
    /// The device, when known.
    #[serde(default)]
    pub device_id: Option<DeviceId>,
    /// The relay reporting.
    pub relay_id: String,
    /// A stable code.
    pub code: String,
    /// Why.
    pub reason: String,
}

/// One (subject, device, credential) triple of an open session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessPair {
    /// Who (`user:<email>`).
    pub subject: String,
    /// The device.
    pub device_id: DeviceId,
    /// The credential the session was granted through: a revoked one means no.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::token::Credential>,
}

/// Most pairs one [`RelayAccessCheck`] may carry.
pub const MAX_ACCESS_PAIRS: usize = 1000;

/// `POST /v1/internal/relay/access`: which open sessions may go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayAccessCheck {
    /// The sessions' pairs (at most 1,000).
    pub pairs: Vec<AccessPair>,
}

/// The answer to [`RelayAccessCheck`], one flag per pair in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RelayAccessAnswer {
    /// Whether each pair may still operate.
    pub allowed: Vec<bool>,
}
