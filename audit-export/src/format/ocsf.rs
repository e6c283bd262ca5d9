//! OCSF 1.3 records. `type_uid = class_uid × 100 + activity_id`; the class of each event is
//! chosen in [`class_of`] (the table is in `docs/audit-export.md`).

use m87_events::audit::{AuditEntry, Outcome};
use m87_events::domain::DomainEvent;
use m87_events::token::Operation;
use serde_json::{Map, Value, json};

use super::Facts;

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// An OCSF class and activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcsfClass {
    /// `class_uid`.
    pub class_uid: u32,
    /// `class_name`.
    pub class_name: &'static str,
    /// `activity_id`.
    pub activity_id: u32,
    /// `activity_name`.
    pub activity_name: &'static str,
}

impl OcsfClass {
    /// `class_uid × 100 + activity_id`.
    pub fn type_uid(&self) -> u64 {
        u64::from(self.class_uid) * 100 + u64::from(self.activity_id)
    }

    /// `category_uid`: the thousands of the class.
    pub fn category_uid(&self) -> u32 {
        self.class_uid / 1000
    }

    /// `category_name`.
    pub fn category_name(&self) -> &'static str {
        match self.category_uid() {
            3 => "Identity & Access Management",
            4 => "Network Activity",
            _ => "Other",
        }
    }
}

const fn class(
    class_uid: u32,
    class_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
) -> OcsfClass {
    OcsfClass {
        class_uid,
        class_name,
        activity_id,
        activity_name,
    }
}

const ACCOUNT: (u32, &str) = (3001, "Account Change");
const AUTHN: (u32, &str) = (3002, "Authentication");
const AUTHZ: (u32, &str) = (3003, "Authorize Session");
const ENTITY: (u32, &str) = (3004, "Entity Management");
const ACCESS: (u32, &str) = (3005, "User Access Management");
const GROUP: (u32, &str) = (3006, "Group Management");
const SSH: (u32, &str) = (4007, "SSH Activity");
const TUNNEL: (u32, &str) = (4014, "Tunnel Activity");

/// SSH Activity for shell, exec, cp, sync, logs, metrics, serial, status and ls (remote
/// operations of the kind OpenSSH carries); Tunnel Activity for forwards and the Docker socket
/// (a socket carried through the tunnel).
fn session_class(op: Option<Operation>) -> (u32, &'static str) {
    match op {
        Some(Operation::Forward | Operation::Docker) => TUNNEL,
        _ => SSH,
    }
}

/// The OCSF class and activity of an event.
pub fn class_of(event: &DomainEvent) -> OcsfClass {
    use DomainEvent as E;
    let c = |(uid, name): (u32, &'static str), id, act| class(uid, name, id, act);
    match event {
        E::RegistrationRequested(_) => c(ENTITY, 1, "Create"),
        E::RegistrationApproved(_) | E::RegistrationRejected(_) | E::RegistrationExpired(_) => {
            c(ENTITY, 3, "Update")
        }
        E::DeviceEnrolled(_) => c(ENTITY, 6, "Enroll"),
        E::DeviceRemoved(_) => c(ENTITY, 7, "Unenroll"),
        E::DeviceCredentialsIssued(_) => c(ACCOUNT, 99, "Other"),
        E::ApiKeyCreated(_) => c(ACCOUNT, 99, "Other"),
        E::ApiKeyRevoked(_) => c(ACCOUNT, 99, "Other"),
        E::AccessGranted(_) => c(ACCESS, 1, "Assign Privileges"),
        E::AccessRevoked(_) => c(ACCESS, 2, "Revoke Privileges"),
        E::OrgCreated(_) => c(GROUP, 6, "Create"),
        E::OrgDeleted(_) => c(GROUP, 5, "Delete"),
        E::MemberAdded(_) => c(GROUP, 3, "Add User"),
        E::MemberRemoved(_) => c(GROUP, 4, "Remove User"),
        E::MemberRoleChanged(_) => c(GROUP, 1, "Assign Privileges"),
        E::SessionOpened(e) => c(session_class(Some(e.operation)), 1, "Open"),
        E::SessionClosed(e) => c(session_class(e.operation), 2, "Close"),
        E::SessionRefused(_) => c(AUTHZ, 1, "Assign Privileges"),
        E::DeviceConnected(_) => c(TUNNEL, 1, "Open"),
        E::DeviceDisconnected(_) => c(TUNNEL, 2, "Close"),
        E::UserSignedIn(_) | E::AuthenticationRefused(_) => c(AUTHN, 1, "Logon"),
        E::OrgPolicySet(_) | E::DevicePolicySet(_) => c(ENTITY, 3, "Update"),
        E::SessionRecordingStored(_) => c(ENTITY, 1, "Create"),
    }
}

/// The activity name for `activity_id = 99` (OCSF's "Other"): what really happened.
fn other_activity(event: &DomainEvent) -> Option<&'static str> {
    match event {
        DomainEvent::DeviceCredentialsIssued(_) => Some("Issue Device Key"),
        DomainEvent::ApiKeyCreated(_) => Some("Create API Key"),
        DomainEvent::ApiKeyRevoked(_) => Some("Revoke API Key"),
        _ => None,
    }
}

/// `(status_id, status)`: Success, Failure or Unknown (a session not yet ended).
fn status(outcome: Outcome) -> (u32, &'static str) {
    match outcome {
        Outcome::Ok => (1, "Success"),
        Outcome::Failed | Outcome::Refused => (2, "Failure"),
        Outcome::Open => (1, "Success"),
    }
}

/// `(severity_id, severity)`.
fn severity(outcome: Outcome) -> (u32, &'static str) {
    match outcome {
        Outcome::Ok | Outcome::Open => (1, "Informational"),
        Outcome::Failed => (2, "Low"),
        Outcome::Refused => (3, "Medium"),
    }
}

/// The OCSF record of an entry.
pub fn ocsf(entry: &AuditEntry) -> Value {
    let f = Facts::of(entry);
    let event = &entry.envelope.event;
    let cls = class_of(event);
    let activity_name = other_activity(event).unwrap_or(cls.activity_name);
    let (status_id, status_name) = status(f.outcome);
    let (severity_id, severity_name) = severity(f.outcome);
    let mut r = Map::new();
    r.insert("class_uid".into(), json!(cls.class_uid));
    r.insert("class_name".into(), json!(cls.class_name));
    r.insert("category_uid".into(), json!(cls.category_uid()));
    r.insert("category_name".into(), json!(cls.category_name()));
    r.insert("activity_id".into(), json!(cls.activity_id));
    r.insert("activity_name".into(), json!(activity_name));
    r.insert("type_uid".into(), json!(cls.type_uid()));
    r.insert(
        "type_name".into(),
        json!(format!("{}: {activity_name}", cls.class_name)),
    );
    r.insert("time".into(), json!(f.time().timestamp_millis()));
    r.insert("severity_id".into(), json!(severity_id));
    r.insert("severity".into(), json!(severity_name));
    r.insert("status_id".into(), json!(status_id));
    r.insert("status".into(), json!(status_name));
    r.insert("message".into(), json!(f.message));
    r.insert("actor".into(), actor(&f));
    r.insert("metadata".into(), metadata(&f));
    if let Some(ip) = &f.source_ip {
        r.insert("src_endpoint".into(), json!({ "ip": ip }));
    }
    if let Some(d) = &f.device {
        r.insert(
            "device".into(),
            json!({ "uid": d, "type_id": 0, "type": "Unknown" }),
        );
        if cls.category_uid() == 4 {
            r.insert("dst_endpoint".into(), json!({ "uid": d }));
        }
    }
    if let Some(s) = &f.session {
        r.insert("session".into(), json!({ "uid": s }));
    }
    class_details(event, &mut r);
    r.insert(
        "unmapped".into(),
        json!({ "m87": {
            "hash": entry.hash,
            "prev_hash": entry.prev_hash,
            "position": f.position(),
            "event_type": f.event_type,
            "action": f.action,
            "outcome": f.outcome.as_str(),
            "stream_id": entry.envelope.stream_id.as_str(),
            "data": event.data(),
        }}),
    );
    Value::Object(r)
}

fn actor(f: &Facts<'_>) -> Value {
    match (&f.user_email, &f.entry.envelope.metadata.actor) {
        (Some(email), _) => {
            let mut user =
                json!({ "email_addr": email, "name": email, "type_id": 1, "type": "User" });
            if let Some(k) = &f.key_id {
                user["credential_uid"] = json!(k);
            }
            json!({ "user": user })
        }
        (None, m87_events::Actor::Device { device_id }) => {
            json!({ "user": { "uid": device_id.to_string(), "name": f.actor, "type_id": 99, "type": "Device" } })
        }
        (None, _) => json!({ "app_name": f.actor }),
    }
}

fn metadata(f: &Facts<'_>) -> Value {
    json!({
        "version": OCSF_VERSION,
        "uid": f.event_id(),
        "correlation_uid": f.entry.envelope.metadata.correlation_id.to_string(),
        "sequence": f.position(),
        "log_name": "audit",
        "product": { "name": "m87", "vendor_name": "m87", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// The objects the class itself asks for.
fn class_details(event: &DomainEvent, r: &mut Map<String, Value>) {
    use DomainEvent as E;
    match event {
        E::SessionClosed(e) => {
            r.insert("duration".into(), json!(e.duration_ms));
            r.insert(
                "traffic".into(),
                json!({ "bytes_in": e.bytes_to_device, "bytes_out": e.bytes_from_device,
                        "bytes": e.bytes_to_device.saturating_add(e.bytes_from_device) }),
            );
            if let Some(reason) = &e.reason {
                r.insert("status_detail".into(), json!(reason));
            }
            if let Some(code) = e.exit_code {
                r.insert("status_code".into(), json!(code.to_string()));
            }
        }
        E::SessionRefused(e) => {
            r.insert("status_code".into(), json!(e.code));
            r.insert("status_detail".into(), json!(e.reason));
        }
        E::AccessGranted(e) => access(r, &e.device_id, &e.scope),
        E::AccessRevoked(e) => access(r, &e.device_id, &e.scope),
        E::MemberAdded(e) => group(r, &e.org_id, Some(e.email.as_str()), Some(e.role.as_str())),
        E::MemberRemoved(e) => group(r, &e.org_id, Some(e.email.as_str()), None),
        E::MemberRoleChanged(e) => {
            group(r, &e.org_id, Some(e.email.as_str()), Some(e.role.as_str()))
        }
        E::OrgCreated(e) => group(r, &e.org_id, None, None),
        E::OrgDeleted(e) => group(r, &e.org_id, None, None),
        E::ApiKeyCreated(e) => {
            r.insert(
                "user".into(),
                json!({ "email_addr": e.email.as_str(), "name": e.email.as_str(),
                "credential_uid": e.key_id.to_string() }),
            );
        }
        E::ApiKeyRevoked(e) => {
            r.insert(
                "user".into(),
                json!({ "credential_uid": e.key_id.to_string() }),
            );
        }
        E::DeviceCredentialsIssued(e) => {
            r.insert(
                "user".into(),
                json!({ "uid": e.device_id.to_string(), "type_id": 99, "type": "Device",
                "credential_uid": e.key_id.to_string() }),
            );
        }
        other => {
            if let Some(d) = m87_events::audit::device_of(other) {
                r.insert(
                    "entity".into(),
                    json!({ "uid": d.to_string(), "type": "device" }),
                );
            }
        }
    }
}

fn group(
    r: &mut Map<String, Value>,
    org: &m87_events::OrgId,
    email: Option<&str>,
    role: Option<&str>,
) {
    r.insert(
        "group".into(),
        json!({ "uid": org.to_string(), "type": "organization" }),
    );
    if let Some(email) = email {
        r.insert("user".into(), json!({ "email_addr": email, "name": email }));
    }
    if let Some(role) = role {
        r.insert("privileges".into(), json!([role]));
    }
}

fn access(r: &mut Map<String, Value>, device: &m87_events::DeviceId, scope: &m87_events::Scope) {
    r.insert("privileges".into(), json!(["access"]));
    r.insert(
        "user".into(),
        json!({ "uid": scope.as_str(), "name": scope.as_str() }),
    );
    r.insert(
        "resource".into(),
        json!({ "uid": device.to_string(), "type": "device" }),
    );
}
