//! Registration requests: a device asks to join, an administrator approves or rejects, the
//! device polls for its key, and overdue requests expire. A new request is refused when its
//! owner scope already holds `max_pending_per_scope` undecided ones.

use chrono::Utc;
use std::collections::BTreeMap;

use m87_events::api::{
    DeviceStatus, PendingCounts, PollResponse, RegisterRequest, RegisterResponse, ScopePending,
};
use m87_events::{DeviceId, DomainEvent, KeyId, KeyKind, Metadata, RequestId, Scope, StreamId};

use super::auth::generate_key;
use super::{ControlPlane, ServiceError, one, parse_all};
use crate::domain::registration::{self, Registration, RequestRegistration};
use crate::domain::{Aggregate, DomainError, Identity, Principal, enrollment};
use crate::projections::models::{REGISTRATIONS, RegistrationRow};

fn chrono_ttl(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(1))
}

impl ControlPlane {
    /// `POST /v1/registrations`.
    pub async fn request_registration(
        &self,
        req: RegisterRequest,
        metadata: &Metadata,
    ) -> Result<RegisterResponse, ServiceError> {
        let cmd = RequestRegistration {
            device_id: req.device_id,
            name: req.name,
            owner_scope: req.owner_scope,
            system_info: req.system_info,
            claim_secret: req.claim_secret,
        };
        let request_id = RequestId::new();
        let ttl = chrono_ttl(self.settings.registration_ttl);
        let max_pending = self.settings.max_pending_per_scope;
        let _gate = self.registration_gate.lock().await;
        let ((), stored) = self
            .execute(metadata, || {
                let cmd = &cmd;
                async move {
                    let pending = self.pending_in(&cmd.owner_scope).await?;
                    registration::check_pending_cap(&cmd.owner_scope, pending, max_pending)?;
                    let event = registration::decide_request(cmd, request_id, Utc::now(), ttl)?;
                    Ok(((), one(StreamId::registration(&request_id), 0, event)))
                }
            })
            .await?;
        let expires_at = match stored.first().map(|e| &e.event) {
            Some(DomainEvent::RegistrationRequested(r)) => r.expires_at,
            _ => Utc::now() + ttl,
        };
        Ok(RegisterResponse {
            request_id,
            status: DeviceStatus::Pending,
            expires_at,
            poll_interval_secs: self.settings.approval_poll_interval.as_secs().max(1),
        })
    }

    /// The undecided, unexpired requests, from the read model.
    async fn pending_requests(&self) -> Result<Vec<RegistrationRow>, ServiceError> {
        let now = Utc::now();
        Ok(
            parse_all::<RegistrationRow>(self.read.list(REGISTRATIONS).await?)
                .into_iter()
                .filter(|r| r.status == DeviceStatus::Pending && r.expires_at > now)
                .collect(),
        )
    }

    /// How many undecided requests `scope` holds.
    async fn pending_in(&self, scope: &Scope) -> Result<usize, ServiceError> {
        Ok(self
            .pending_requests()
            .await?
            .iter()
            .filter(|r| &r.owner_scope == scope)
            .count())
    }

    /// `GET /v1/registrations/pending`: undecided requests per owner scope the caller can see.
    pub async fn pending_counts(&self, caller: &Identity) -> Result<PendingCounts, ServiceError> {
        if matches!(caller.principal, Principal::Device { .. }) {
            return Err(DomainError::Forbidden("devices cannot list registrations".into()).into());
        }
        let mut per_scope: BTreeMap<Scope, u64> = BTreeMap::new();
        for r in self.pending_requests().await? {
            if caller.can_see(&r.owner_scope, &[]) {
                *per_scope.entry(r.owner_scope).or_default() += 1;
            }
        }
        let mut scopes: Vec<ScopePending> = per_scope
            .into_iter()
            .map(|(owner_scope, pending)| ScopePending {
                owner_scope,
                pending,
            })
            .collect();
        scopes.sort_by_key(|s| std::cmp::Reverse(s.pending));
        Ok(PendingCounts {
            total: scopes.iter().map(|s| s.pending).sum(),
            max_per_scope: u64::try_from(self.settings.max_pending_per_scope).unwrap_or(u64::MAX),
            scopes,
        })
    }

    pub(super) async fn load_registration(
        &self,
        id: &RequestId,
    ) -> Result<(Registration, u64), ServiceError> {
        let (events, version) = self.load(&StreamId::registration(id)).await?;
        Ok((Registration::from_events(&events), version))
    }

    /// `POST /v1/registrations/{id}/approve`. Returns the enrolled device id.
    pub async fn approve(
        &self,
        caller: &Identity,
        request_id: RequestId,
        metadata: &Metadata,
    ) -> Result<DeviceId, ServiceError> {
        let (device_id, _) = self
            .execute(metadata, || async move {
                let (reg, reg_version) = self.load_registration(&request_id).await?;
                let device_id = reg
                    .requested
                    .as_ref()
                    .map(|r| r.device_id.clone())
                    .ok_or(DomainError::NotFound("registration request"))?;
                let (device, device_version) = self.load_device(&device_id).await?;
                let approval = enrollment::decide_approve(&reg, &device, caller, Utc::now())?;
                let mut batch = one(
                    StreamId::registration(&request_id),
                    reg_version,
                    approval.registration_event,
                );
                batch.extend(one(
                    StreamId::device(&device_id),
                    device_version,
                    approval.device_event,
                ));
                Ok((device_id, batch))
            })
            .await?;
        Ok(device_id)
    }

    /// `POST /v1/registrations/{id}/reject`.
    pub async fn reject(
        &self,
        caller: &Identity,
        request_id: RequestId,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        self.execute(metadata, || async move {
            let (reg, version) = self.load_registration(&request_id).await?;
            let event = registration::decide_reject(&reg, caller, Utc::now())?;
            Ok(((), one(StreamId::registration(&request_id), version, event)))
        })
        .await?;
        Ok(())
    }

    /// `POST /v1/registrations/{id}/poll`: the device asks how its request stands and, the first
    /// time after approval, receives its key.
    pub async fn poll(
        &self,
        request_id: RequestId,
        claim_secret: &str,
        metadata: &Metadata,
    ) -> Result<PollResponse, ServiceError> {
        let (response, _) = self
            .execute(metadata, || async move {
                let (reg, _) = self.load_registration(&request_id).await?;
                let (status, requested) =
                    registration::check_claim(&reg, claim_secret, Utc::now())?;
                let mut response = PollResponse {
                    request_id,
                    status,
                    api_key: None,
                    device_id: requested.device_id.clone(),
                };
                if status != DeviceStatus::Approved {
                    return Ok((response, vec![]));
                }
                let (device, device_version) = self.load_device(&requested.device_id).await?;
                let key = generate_key(KeyKind::Device);
                match enrollment::decide_issue_credentials(&reg, &device, KeyId::new(), key.digest)
                {
                    Ok(event) => {
                        response.api_key = Some(key.secret);
                        let stream = StreamId::device(&requested.device_id);
                        Ok((response, one(stream, device_version, event)))
                    }
                    Err(DomainError::AlreadyDecided(DeviceStatus::Removed)) => {
                        response.status = DeviceStatus::Removed;
                        Ok((response, vec![]))
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        Ok(response)
    }

    /// Records the expiry of every pending request past its lifetime. Returns how many.
    pub async fn expire_overdue(&self) -> Result<usize, ServiceError> {
        let now = Utc::now();
        let overdue: Vec<RequestId> = self
            .read
            .list(REGISTRATIONS)
            .await?
            .into_iter()
            .filter_map(|d| serde_json::from_value::<RegistrationRow>(d).ok())
            .filter(|r| r.status == DeviceStatus::Pending && r.expires_at <= now)
            .map(|r| r.request_id)
            .collect();
        let metadata = Metadata::system("expiry");
        let mut count = 0;
        for request_id in overdue {
            let (_, stored) = self
                .execute(&metadata, || async move {
                    let (reg, version) = self.load_registration(&request_id).await?;
                    let batch = registration::decide_expire(&reg, Utc::now())
                        .map(|e| one(StreamId::registration(&request_id), version, e))
                        .unwrap_or_default();
                    Ok(((), batch))
                })
                .await?;
            count += stored.len();
        }
        Ok(count)
    }
}
