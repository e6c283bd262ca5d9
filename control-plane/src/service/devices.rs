//! Enrolled devices: removal and access (commands), and the device list (queries), filtered by
//! the caller's scopes: a device outside them does not exist for the caller.

use std::collections::BTreeMap;

use chrono::Utc;
use m87_events::api::{DeviceListQuery, DeviceStatus, DeviceSummary};
use m87_events::{DeviceId, Metadata, Scope, StreamId};

use super::{ControlPlane, ServiceError, one, parse_all};
use crate::domain::device::{self, Device};
use crate::domain::{Aggregate, DomainError, Identity, Principal};
use crate::projections::models::{DEVICES, DeviceRow, REGISTRATIONS, RegistrationRow};

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
    pub(super) async fn load_device(&self, id: &DeviceId) -> Result<(Device, u64), ServiceError> {
        let (events, version) = self.load(&StreamId::device(id)).await?;
        Ok((Device::from_events(&events), version))
    }

    /// `DELETE /v1/devices/{id}`.
    pub async fn remove_device(
        &self,
        caller: &Identity,
        device_id: &DeviceId,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        self.execute(metadata, || async move {
            let (device, version) = self.load_device(device_id).await?;
            let event = device::decide_remove(&device, caller)?;
            Ok(((), one(StreamId::device(device_id), version, event)))
        })
        .await?;
        Ok(())
    }

    /// `POST /v1/devices/{id}/access` (`grant`) and `DELETE /v1/devices/{id}/access/{scope}`.
    pub async fn change_access(
        &self,
        caller: &Identity,
        device_id: &DeviceId,
        scope: &Scope,
        grant: bool,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        self.execute(metadata, || async move {
            let (device, version) = self.load_device(device_id).await?;
            let event = if grant {
                device::decide_grant(&device, caller, scope)?
            } else {
                device::decide_revoke(&device, caller, scope)?
            };
            let batch = event
                .map(|e| one(StreamId::device(device_id), version, e))
                .unwrap_or_default();
            Ok(((), batch))
        })
        .await?;
        Ok(())
    }

    /// Every device and undecided request the caller can see: per device, its current
    /// enrollment (if any) and its newest request if that came later; newest request first,
    /// so a real request is on top of an older flood.
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
        out.sort_by(|a, b| b.requested_at.cmp(&a.requested_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// [`Self::list_devices`], only the rows `query` asks for (name substring ignoring case,
    /// status), newest request first.
    pub async fn list_devices_matching(
        &self,
        caller: &Identity,
        query: &DeviceListQuery,
    ) -> Result<Vec<DeviceSummary>, ServiceError> {
        let name = query.name.as_deref().map(str::to_lowercase);
        let mut rows = self.list_devices(caller).await?;
        rows.retain(|d| {
            query.status.is_none_or(|s| d.status == s)
                && name
                    .as_deref()
                    .is_none_or(|n| d.name.as_str().to_lowercase().contains(n))
        });
        Ok(rows)
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
}
