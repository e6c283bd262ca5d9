//! Elastic Common Schema documents.

use m87_events::audit::{AuditEntry, Outcome};
use m87_events::domain::DomainEvent;
use serde_json::{Value, json};

use super::Facts;

/// The ECS version the documents follow.
pub const ECS_VERSION: &str = "8.11.0";

/// `event.category` and `event.type` of an event.
fn category(event: &DomainEvent) -> (&'static [&'static str], &'static [&'static str]) {
    use DomainEvent as E;
    match event {
        E::SessionOpened(_) => (&["session"], &["start"]),
        E::SessionClosed(_) => (&["session"], &["end"]),
        E::SessionRefused(_) => (&["session", "iam"], &["denied"]),
        E::DeviceConnected(_) => (&["network"], &["connection", "start"]),
        E::DeviceDisconnected(_) => (&["network"], &["connection", "end"]),
        E::RegistrationRequested(_) => (&["configuration", "host"], &["creation"]),
        E::RegistrationApproved(_) => (&["configuration", "host"], &["allowed", "change"]),
        E::RegistrationRejected(_) => (&["configuration", "host"], &["denied", "change"]),
        E::RegistrationExpired(_) => (&["configuration", "host"], &["change"]),
        E::DeviceEnrolled(_) => (&["configuration", "host"], &["creation"]),
        E::DeviceRemoved(_) => (&["configuration", "host"], &["deletion"]),
        E::DeviceCredentialsIssued(_) | E::ApiKeyCreated(_) => (&["iam"], &["creation"]),
        E::ApiKeyRevoked(_) => (&["iam"], &["deletion"]),
        E::AccessGranted(_) | E::AccessRevoked(_) => (&["iam"], &["change"]),
        E::OrgCreated(_) => (&["iam"], &["group", "creation"]),
        E::OrgDeleted(_) => (&["iam"], &["group", "deletion"]),
        E::MemberAdded(_) | E::MemberRemoved(_) | E::MemberRoleChanged(_) => {
            (&["iam"], &["group", "change"])
        }
        E::UserSignedIn(_) => (&["authentication"], &["start"]),
        E::AuthenticationRefused(_) => (&["authentication"], &["info"]),
        E::OrgPolicySet(_) | E::DevicePolicySet(_) => (&["configuration"], &["change"]),
        E::SessionRecordingStored(_) => (&["session"], &["info"]),
    }
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok | Outcome::Open => "success",
        Outcome::Failed | Outcome::Refused => "failure",
    }
}

/// The ECS document of an entry.
pub fn ecs(entry: &AuditEntry) -> Value {
    let f = Facts::of(entry);
    let ev = &entry.envelope.event;
    let (categories, types) = category(ev);
    let mut doc = json!({
        "@timestamp": f.time_rfc3339(),
        "ecs": { "version": ECS_VERSION },
        "message": f.message,
        "event": {
            "id": f.event_id(),
            "kind": "event",
            "dataset": "m87.audit",
            "module": "m87",
            "provider": f.event_type,
            "action": f.action,
            "outcome": outcome(f.outcome),
            "category": categories,
            "type": types,
            "sequence": f.position(),
            "created": f.time_rfc3339(),
        },
        "observer": { "vendor": "m87", "product": "m87", "version": env!("CARGO_PKG_VERSION") },
        "labels": { "m87_hash": entry.hash, "m87_prev_hash": entry.prev_hash },
        "m87": {
            "hash": entry.hash,
            "prev_hash": entry.prev_hash,
            "position": f.position(),
            "event_type": f.event_type,
            "outcome": f.outcome.as_str(),
            "actor": f.actor,
            "stream_id": entry.envelope.stream_id.as_str(),
            "correlation_id": entry.envelope.metadata.correlation_id.to_string(),
            "data": ev.data(),
        },
    });
    let mut related_users = Vec::new();
    if let Some(email) = &f.user_email {
        doc["user"] = json!({ "email": email, "name": email, "id": email });
        related_users.push(email.clone());
    }
    if let Some(k) = &f.key_id {
        doc["m87"]["key_id"] = json!(k);
    }
    if let Some(ip) = &f.source_ip {
        doc["source"] = json!({ "ip": ip });
        doc["related"]["ip"] = json!([ip]);
    }
    if let Some(d) = &f.device {
        doc["host"] = json!({ "id": d, "name": d });
        doc["related"]["hosts"] = json!([d]);
    }
    if let Some(s) = &f.session {
        doc["m87"]["session_id"] = json!(s);
    }
    details(ev, &mut doc, &mut related_users);
    if !related_users.is_empty() {
        doc["related"]["user"] = json!(related_users);
    }
    doc
}

fn details(ev: &DomainEvent, doc: &mut Value, related: &mut Vec<String>) {
    use DomainEvent as E;
    match ev {
        E::SessionClosed(e) => {
            doc["event"]["duration"] = json!(e.duration_ms.saturating_mul(1_000_000));
            doc["source"]["bytes"] = json!(e.bytes_to_device);
            doc["destination"]["bytes"] = json!(e.bytes_from_device);
            if let Some(r) = &e.reason {
                doc["event"]["reason"] = json!(r);
            }
            if let Some(code) = e.exit_code {
                doc["process"]["exit_code"] = json!(code);
            }
        }
        E::SessionRefused(e) => {
            doc["event"]["reason"] = json!(format!("{}: {}", e.code, e.reason));
        }
        E::AccessGranted(e) => doc["user"]["target"] = json!({ "name": e.scope.as_str() }),
        E::AccessRevoked(e) => doc["user"]["target"] = json!({ "name": e.scope.as_str() }),
        E::MemberAdded(e) => member(
            doc,
            related,
            &e.org_id,
            e.email.as_str(),
            Some(e.role.as_str()),
        ),
        E::MemberRemoved(e) => member(doc, related, &e.org_id, e.email.as_str(), None),
        E::MemberRoleChanged(e) => member(
            doc,
            related,
            &e.org_id,
            e.email.as_str(),
            Some(e.role.as_str()),
        ),
        E::OrgCreated(e) => doc["group"] = json!({ "id": e.org_id.to_string(), "name": e.name }),
        E::OrgDeleted(e) => doc["group"] = json!({ "id": e.org_id.to_string() }),
        E::ApiKeyCreated(e) => {
            doc["user"]["target"] = json!({ "email": e.email.as_str(), "name": e.email.as_str() });
            related.push(e.email.to_string());
        }
        _ => {}
    }
}

fn member(
    doc: &mut Value,
    related: &mut Vec<String>,
    org: &m87_events::OrgId,
    email: &str,
    role: Option<&str>,
) {
    doc["group"] = json!({ "id": org.to_string() });
    doc["user"]["target"] = json!({ "email": email, "name": email });
    if let Some(role) = role {
        doc["user"]["target"]["roles"] = json!([role]);
    }
    related.push(email.to_owned());
}
