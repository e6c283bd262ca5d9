//! Queries, answered from the read models and filtered by the caller's scopes: a device outside
//! them does not exist for the caller.

use std::collections::BTreeMap;

use chrono::Utc;
use m87_events::api::{ApiKeySummary, DeviceStatus, DeviceSummary, WhoAmI};
use m87_events::{DeviceId, KeyKind};

use super::{ControlPlane, ServiceError};
use crate::domain::{DomainError, Identity, Principal};
use crate::projections::models::{
    API_KEYS, ApiKeyRow, DEVICES, DeviceRow, REGISTRATIONS, RegistrationRow,
};

fn parse_all<T: serde::de::DeserializeOwned>(docs: Vec<serde_json::Value>) -> Vec<T> {
    docs.into_iter()
        .filter_map(|d| match serde_json::from_value(d) {
            Ok(row) => Some(row),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable read-model document");
                None
            }
        })
        .collect()
}

fn from_device(
    d: DeviceRow,
    requested_at: chrono::DateTime<Utc>,
    expires_at: chrono::DateTime<Utc>,
    decided_by: Option<String>,
) -> DeviceSummary {
    DeviceSummary {
        id: d.device_id,
        request_id: d.request_id,
        name: d.name,
        status: d.status,
        owner_scope: d.owner_scope,
        allowed_scopes: d.allowed_scopes,
        system_info: d.system_info,
        requested_at,
        decided_at: Some(d.removed_at.unwrap_or(d.enrolled_at)),
        decided_by,
        expires_at,
        online: false,
        last_seen: d.last_seen,
    }
}

fn from_registration(r: RegistrationRow, now: chrono::DateTime<Utc>) -> DeviceSummary {
    let status = if r.status == DeviceStatus::Pending && now >= r.expires_at {
        DeviceStatus::Expired
    } else {
        r.status
    };
    DeviceSummary {
        id: r.device_id,
        request_id: r.request_id,
        name: r.name,
        status,
        owner_scope: r.owner_scope,
        allowed_scopes: vec![],
        system_info: r.system_info,
        requested_at: r.requested_at,
        decided_at: r.decided_at,
        decided_by: r.decided_by,
        expires_at: r.expires_at,
        online: false,
        last_seen: None,
    }
}

impl ControlPlane {
    /// Every device and undecided request the caller can see: per device, its current
    /// enrollment (if any) and its newest request if that came later.
    pub async fn list_devices(
        &self,
        caller: &Identity,
    ) -> Result<Vec<DeviceSummary>, ServiceError> {
        if matches!(caller.principal, Principal::Device { .. }) {
            return Err(DomainError::Forbidden("devices cannot list devices".into()).into());
        }
        let now = Utc::now();
        let registrations: Vec<RegistrationRow> = parse_all(self.read.list(REGISTRATIONS).await?);
        let devices: BTreeMap<DeviceId, DeviceRow> =
            parse_all::<DeviceRow>(self.read.list(DEVICES).await?)
                .into_iter()
                .map(|d| (d.device_id.clone(), d))
                .collect();
        let by_request: BTreeMap<_, _> = registrations
            .iter()
            .map(|r| {
                (
                    r.request_id,
                    (r.requested_at, r.expires_at, r.decided_by.clone()),
                )
            })
            .collect();

        // For each device id: its enrollment row, and its newest request.
        let mut newest: BTreeMap<DeviceId, RegistrationRow> = BTreeMap::new();
        for r in registrations {
            match newest.get(&r.device_id) {
                Some(n) if n.requested_at >= r.requested_at => {}
                _ => {
                    newest.insert(r.device_id.clone(), r);
                }
            }
        }
        let mut out = Vec::new();
        for (device_id, d) in &devices {
            if !caller.can_see(&d.owner_scope, &d.allowed_scopes) {
                continue;
            }
            let (requested_at, expires_at, decided_by) = by_request
                .get(&d.request_id)
                .cloned()
                .unwrap_or((d.enrolled_at, d.enrolled_at, None));
            let enrolled_request = d.request_id;
            out.push(from_device(d.clone(), requested_at, expires_at, decided_by));
            if let Some(n) = newest.remove(device_id)
                && n.request_id != enrolled_request
                && n.status != DeviceStatus::Approved
                && n.requested_at > d.enrolled_at
                && caller.can_see(&n.owner_scope, &[])
            {
                out.push(from_registration(n, now));
            }
        }
        for (_, r) in newest {
            if r.status != DeviceStatus::Approved && caller.can_see(&r.owner_scope, &[]) {
                out.push(from_registration(r, now));
            }
        }
        for d in &mut out {
            if d.status == DeviceStatus::Approved && self.is_online(&d.id) {
                d.online = true;
                d.last_seen = Some(now);
            }
        }
        out.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// One enrolled device, if the caller can see it.
    pub async fn get_device(
        &self,
        caller: &Identity,
        device_id: &DeviceId,
    ) -> Result<DeviceSummary, ServiceError> {
        self.list_devices(caller)
            .await?
            .into_iter()
            .filter(|d| &d.id == device_id)
            .max_by_key(|d| (d.status == DeviceStatus::Approved, d.requested_at))
            .ok_or_else(|| DomainError::NotFound("device").into())
    }

    /// The caller's own user API keys; every user key for platform admins.
    pub async fn list_api_keys(
        &self,
        caller: &Identity,
    ) -> Result<Vec<ApiKeySummary>, ServiceError> {
        let Some(email) = caller.email() else {
            return Err(DomainError::Forbidden("devices cannot list api keys".into()).into());
        };
        let mut keys: Vec<ApiKeySummary> = parse_all::<ApiKeyRow>(self.read.list(API_KEYS).await?)
            .into_iter()
            .filter(|k| k.kind == KeyKind::User)
            .filter(|k| caller.platform_admin || k.email.as_ref() == Some(email))
            .filter_map(|k| {
                Some(ApiKeySummary {
                    id: k.key_id,
                    email: k.email?,
                    name: k.name,
                    hint: k.hint,
                    created_at: k.created_at,
                    revoked_at: k.revoked_at,
                })
            })
            .collect();
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    /// `GET /v1/whoami`.
    pub fn whoami(&self, caller: &Identity) -> WhoAmI {
        match &caller.principal {
            Principal::User { email, .. } => WhoAmI {
                kind: "user".into(),
                email: Some(email.clone()),
                device_id: None,
                scopes: caller.scopes.clone(),
                platform_admin: caller.platform_admin,
                memberships: caller
                    .memberships
                    .iter()
                    .map(|(org_id, role)| m87_events::api::Membership {
                        org_id: org_id.clone(),
                        role: *role,
                    })
                    .collect(),
            },
            Principal::Device { device_id } => WhoAmI {
                kind: "device".into(),
                email: None,
                device_id: Some(device_id.clone()),
                scopes: vec![],
                platform_admin: false,
                memberships: vec![],
            },
        }
    }
}
