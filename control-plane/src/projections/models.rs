//! The read models' documents, and the projections that keep them.
//!
//! Each projection is pure: given an event and the documents it said it needs, it returns the
//! changes. The [`super::Projector`] loads, applies and commits with the checkpoint.

use chrono::{DateTime, Utc};
use m87_events::api::DeviceStatus;
use m87_events::{
    DeviceId, DeviceName, DomainEvent, Email, EventEnvelope, KeyId, KeyKind, RequestId, Scope,
    SystemInfo,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::Change;

/// Collection of [`RegistrationRow`]s, by request id.
pub const REGISTRATIONS: &str = "registrations";
/// Collection of [`DeviceRow`]s, by device id.
pub const DEVICES: &str = "devices";
/// Collection of [`ApiKeyRow`]s, by key id.
pub const API_KEYS: &str = "api_keys";
/// Collection of [`KeyHashRow`]s, by key digest: how authentication finds a key.
pub const KEY_HASHES: &str = "key_hashes";
/// Collection of [`OrgRow`]s, by organization id.
pub const ORGS: &str = "orgs";
/// Collection of [`ApiKeyRow`]s of device keys, by device id: each device's current key.
pub const DEVICE_KEYS: &str = "device_keys";

/// A registration request as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationRow {
    /// The request.
    pub request_id: RequestId,
    /// The device that asked.
    pub device_id: DeviceId,
    /// Its name.
    pub name: DeviceName,
    /// Who it asked to belong to.
    pub owner_scope: Scope,
    /// What it told about itself.
    pub system_info: SystemInfo,
    /// Where the request stands (pending, approved, rejected, expired).
    pub status: DeviceStatus,
    /// When it was asked.
    pub requested_at: DateTime<Utc>,
    /// When it expires if undecided.
    pub expires_at: DateTime<Utc>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Who decided it.
    pub decided_by: Option<String>,
}

/// A device as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    /// The device.
    pub device_id: DeviceId,
    /// The request of its current enrollment.
    pub request_id: RequestId,
    /// Its name.
    pub name: DeviceName,
    /// Its owner.
    pub owner_scope: Scope,
    /// Who else may reach it.
    pub allowed_scopes: Vec<Scope>,
    /// What it told about itself.
    pub system_info: SystemInfo,
    /// `approved` or `removed`.
    pub status: DeviceStatus,
    /// When it was enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// When it was removed.
    pub removed_at: Option<DateTime<Utc>>,
    /// When its tunnel last connected or disconnected.
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
}

/// An API key (user or device) as listed and as checked at authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRow {
    /// The key's id.
    pub key_id: KeyId,
    /// User or device key.
    pub kind: KeyKind,
    /// The user it acts as (user keys).
    pub email: Option<Email>,
    /// The device it acts as (device keys).
    pub device_id: Option<DeviceId>,
    /// Its label.
    pub name: String,
    /// Its first characters.
    pub hint: String,
    /// SHA-256 of the key.
    pub key_hash: String,
    /// Whether the server made it at first start.
    pub bootstrap: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stopped working.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Key digest → key id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyHashRow {
    /// The key this digest belongs to.
    pub key_id: KeyId,
}

/// An organization and its members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgRow {
    /// The organization.
    pub org_id: m87_events::OrgId,
    /// Its name.
    pub name: String,
    /// Members and their roles.
    pub members: std::collections::BTreeMap<Email, m87_events::Role>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Organizations and memberships.
#[derive(Debug, Default)]
pub struct OrgsProjection;

fn org_key(event: &DomainEvent) -> Option<&m87_events::OrgId> {
    match event {
        DomainEvent::OrgCreated(e) => Some(&e.org_id),
        DomainEvent::OrgDeleted(e) => Some(&e.org_id),
        DomainEvent::MemberAdded(e) => Some(&e.org_id),
        DomainEvent::MemberRemoved(e) => Some(&e.org_id),
        DomainEvent::MemberRoleChanged(e) => Some(&e.org_id),
        _ => None,
    }
}

impl Projection for OrgsProjection {
    fn name(&self) -> &'static str {
        "orgs"
    }

    fn collections(&self) -> &'static [&'static str] {
        &[ORGS]
    }

    fn reads(&self, env: &EventEnvelope) -> Vec<(&'static str, String)> {
        org_key(&env.event)
            .map(|id| vec![(ORGS, id.to_string())])
            .unwrap_or_default()
    }

    fn apply(&self, env: &EventEnvelope, docs: &Docs) -> Vec<Change> {
        let Some(id) = org_key(&env.event) else {
            return vec![];
        };
        if let DomainEvent::OrgCreated(e) = &env.event {
            let row = OrgRow {
                org_id: e.org_id.clone(),
                name: e.name.clone(),
                members: Default::default(),
                created_at: env.recorded_at,
            };
            return vec![put(ORGS, id, &row)];
        }
        if let DomainEvent::OrgDeleted(_) = &env.event {
            return vec![Change::Delete {
                collection: ORGS,
                id: id.to_string(),
            }];
        }
        let Some(mut row) = docs.get::<OrgRow>(ORGS, id.as_str()) else {
            return vec![];
        };
        match &env.event {
            DomainEvent::MemberAdded(e) => {
                row.members.insert(e.email.clone(), e.role);
            }
            DomainEvent::MemberRoleChanged(e) => {
                row.members.insert(e.email.clone(), e.role);
            }
            DomainEvent::MemberRemoved(e) => {
                row.members.remove(&e.email);
            }
            _ => {}
        }
        vec![put(ORGS, id, &row)]
    }
}

/// Documents a projection asked for, as loaded.
#[derive(Debug, Default)]
pub struct Docs(pub Vec<((&'static str, String), Value)>);

impl Docs {
    /// The typed document, if it was loaded and parses.
    pub fn get<T: DeserializeOwned>(&self, collection: &str, id: &str) -> Option<T> {
        self.0
            .iter()
            .find(|((c, i), _)| *c == collection && i == id)
            .and_then(|(_, v)| serde_json::from_value(v.clone()).ok())
    }
}

fn put<T: Serialize>(collection: &'static str, id: impl ToString, doc: &T) -> Change {
    Change::Put {
        collection,
        id: id.to_string(),
        doc: serde_json::to_value(doc).unwrap_or(Value::Null),
    }
}

/// A read model kept from the event log.
pub trait Projection: Send + Sync + 'static {
    /// Its name, used for its checkpoint.
    fn name(&self) -> &'static str;
    /// The collections it owns (emptied on rebuild).
    fn collections(&self) -> &'static [&'static str];
    /// The documents it needs to apply `env`.
    fn reads(&self, env: &EventEnvelope) -> Vec<(&'static str, String)>;
    /// The changes `env` makes, given the documents asked for.
    fn apply(&self, env: &EventEnvelope, docs: &Docs) -> Vec<Change>;
}

/// Registration requests and their status.
#[derive(Debug, Default)]
pub struct RegistrationsProjection;

fn registration_key(event: &DomainEvent) -> Option<RequestId> {
    match event {
        DomainEvent::RegistrationApproved(e) => Some(e.request_id),
        DomainEvent::RegistrationRejected(e) => Some(e.request_id),
        DomainEvent::RegistrationExpired(e) => Some(e.request_id),
        _ => None,
    }
}

impl Projection for RegistrationsProjection {
    fn name(&self) -> &'static str {
        "registrations"
    }

    fn collections(&self) -> &'static [&'static str] {
        &[REGISTRATIONS]
    }

    fn reads(&self, env: &EventEnvelope) -> Vec<(&'static str, String)> {
        registration_key(&env.event)
            .map(|id| vec![(REGISTRATIONS, id.to_string())])
            .unwrap_or_default()
    }

    fn apply(&self, env: &EventEnvelope, docs: &Docs) -> Vec<Change> {
        if let DomainEvent::RegistrationRequested(e) = &env.event {
            let row = RegistrationRow {
                request_id: e.request_id,
                device_id: e.device_id.clone(),
                name: e.name.clone(),
                owner_scope: e.owner_scope.clone(),
                system_info: e.system_info.clone(),
                status: DeviceStatus::Pending,
                requested_at: env.recorded_at,
                expires_at: e.expires_at,
                decided_at: None,
                decided_by: None,
            };
            return vec![put(REGISTRATIONS, e.request_id, &row)];
        }
        let Some(id) = registration_key(&env.event) else {
            return vec![];
        };
        let Some(mut row) = docs.get::<RegistrationRow>(REGISTRATIONS, &id.to_string()) else {
            return vec![];
        };
        row.status = match &env.event {
            DomainEvent::RegistrationApproved(_) => DeviceStatus::Approved,
            DomainEvent::RegistrationRejected(_) => DeviceStatus::Rejected,
            _ => DeviceStatus::Expired,
        };
        row.decided_at = Some(env.recorded_at);
        row.decided_by = Some(env.metadata.actor.to_string());
        vec![put(REGISTRATIONS, id, &row)]
    }
}

/// Enrolled devices, their shares and removal.
#[derive(Debug, Default)]
pub struct DevicesProjection;

fn device_key(event: &DomainEvent) -> Option<&DeviceId> {
    match event {
        DomainEvent::DeviceRemoved(e) => Some(&e.device_id),
        DomainEvent::AccessGranted(e) => Some(&e.device_id),
        DomainEvent::AccessRevoked(e) => Some(&e.device_id),
        DomainEvent::DeviceConnected(e) => Some(&e.device_id),
        DomainEvent::DeviceDisconnected(e) => Some(&e.device_id),
        _ => None,
    }
}

impl Projection for DevicesProjection {
    fn name(&self) -> &'static str {
        "devices"
    }

    fn collections(&self) -> &'static [&'static str] {
        &[DEVICES]
    }

    fn reads(&self, env: &EventEnvelope) -> Vec<(&'static str, String)> {
        if let DomainEvent::DeviceEnrolled(e) = &env.event {
            return vec![(DEVICES, e.device_id.to_string())];
        }
        device_key(&env.event)
            .map(|id| vec![(DEVICES, id.to_string())])
            .unwrap_or_default()
    }

    fn apply(&self, env: &EventEnvelope, docs: &Docs) -> Vec<Change> {
        if let DomainEvent::DeviceEnrolled(e) = &env.event {
            let row = DeviceRow {
                device_id: e.device_id.clone(),
                request_id: e.request_id,
                name: e.name.clone(),
                owner_scope: e.owner_scope.clone(),
                allowed_scopes: vec![],
                system_info: e.system_info.clone(),
                status: DeviceStatus::Approved,
                enrolled_at: env.recorded_at,
                removed_at: None,
                last_seen: docs
                    .get::<DeviceRow>(DEVICES, e.device_id.as_str())
                    .and_then(|r| r.last_seen),
            };
            return vec![put(DEVICES, &e.device_id, &row)];
        }
        let Some(id) = device_key(&env.event) else {
            return vec![];
        };
        let Some(mut row) = docs.get::<DeviceRow>(DEVICES, id.as_str()) else {
            return vec![];
        };
        match &env.event {
            DomainEvent::DeviceRemoved(_) => {
                row.status = DeviceStatus::Removed;
                row.removed_at = Some(env.recorded_at);
            }
            DomainEvent::AccessGranted(e) if !row.allowed_scopes.contains(&e.scope) => {
                row.allowed_scopes.push(e.scope.clone());
            }
            DomainEvent::AccessRevoked(e) => row.allowed_scopes.retain(|s| *s != e.scope),
            DomainEvent::DeviceConnected(_) | DomainEvent::DeviceDisconnected(_) => {
                row.last_seen = Some(env.recorded_at);
            }
            _ => {}
        }
        vec![put(DEVICES, id, &row)]
    }
}

/// User and device API keys, by id and by digest.
#[derive(Debug, Default)]
pub struct ApiKeysProjection;

impl Projection for ApiKeysProjection {
    fn name(&self) -> &'static str {
        "api_keys"
    }

    fn collections(&self) -> &'static [&'static str] {
        &[API_KEYS, KEY_HASHES, DEVICE_KEYS]
    }

    fn reads(&self, env: &EventEnvelope) -> Vec<(&'static str, String)> {
        match &env.event {
            DomainEvent::ApiKeyRevoked(e) => vec![(API_KEYS, e.key_id.to_string())],
            DomainEvent::DeviceRemoved(e) => vec![(DEVICE_KEYS, e.device_id.to_string())],
            DomainEvent::DeviceCredentialsIssued(e) => {
                vec![(DEVICE_KEYS, e.device_id.to_string())]
            }
            _ => vec![],
        }
    }

    fn apply(&self, env: &EventEnvelope, docs: &Docs) -> Vec<Change> {
        match &env.event {
            DomainEvent::ApiKeyCreated(e) => {
                let row = ApiKeyRow {
                    key_id: e.key_id,
                    kind: KeyKind::User,
                    email: Some(e.email.clone()),
                    device_id: None,
                    name: e.name.clone(),
                    hint: e.key_hint.clone(),
                    key_hash: e.key_hash.clone(),
                    bootstrap: e.bootstrap,
                    created_at: env.recorded_at,
                    revoked_at: None,
                };
                vec![
                    put(API_KEYS, e.key_id, &row),
                    put(KEY_HASHES, &e.key_hash, &KeyHashRow { key_id: e.key_id }),
                ]
            }
            DomainEvent::ApiKeyRevoked(e) => {
                revoke(docs.get::<ApiKeyRow>(API_KEYS, &e.key_id.to_string()), env)
            }
            DomainEvent::DeviceCredentialsIssued(e) => {
                let row = ApiKeyRow {
                    key_id: e.key_id,
                    kind: KeyKind::Device,
                    email: None,
                    device_id: Some(e.device_id.clone()),
                    name: String::new(),
                    hint: String::new(),
                    key_hash: e.key_hash.clone(),
                    bootstrap: false,
                    created_at: env.recorded_at,
                    revoked_at: None,
                };
                vec![
                    put(API_KEYS, e.key_id, &row),
                    put(KEY_HASHES, &e.key_hash, &KeyHashRow { key_id: e.key_id }),
                    put(DEVICE_KEYS, &e.device_id, &row),
                ]
            }
            DomainEvent::DeviceRemoved(e) => {
                // Device keys change only here, so the copy under the device id is current.
                let mut changes = revoke(docs.get(DEVICE_KEYS, e.device_id.as_str()), env);
                changes.push(Change::Delete {
                    collection: DEVICE_KEYS,
                    id: e.device_id.to_string(),
                });
                changes
            }
            _ => vec![],
        }
    }
}

fn revoke(row: Option<ApiKeyRow>, env: &EventEnvelope) -> Vec<Change> {
    match row {
        Some(mut row) if row.revoked_at.is_none() => {
            row.revoked_at = Some(env.recorded_at);
            vec![put(API_KEYS, row.key_id, &row)]
        }
        _ => vec![],
    }
}
