//! Session recording: the policies of organizations and devices, the recording a device
//! uploads after a recorded session, and reading it back.

use m87_events::policy::{DevicePolicy, DeviceSetting, OrgPolicy};
use m87_events::{Actor, DeviceId, Metadata, OrgId, ScopeKind, SessionId, StreamId};
use sha2::{Digest, Sha256};

use super::{ControlPlane, ServiceError, one};
use crate::domain::device::{self, Device};
use crate::domain::org::{self, Org};
use crate::domain::recording::{self, Effective, Upload};
use crate::domain::session::Session;
use crate::domain::{Aggregate, DomainError, Identity, Principal};

/// Largest recording upload accepted, in bytes: the devices' default cap (16 MiB) with room for
/// a device configured up to 64 MiB.
pub const MAX_RECORDING_UPLOAD: usize = 64 * 1024 * 1024;

impl ControlPlane {
    /// The recording policy that applies to `device` now, read from the event streams.
    pub(crate) async fn recording_policy(
        &self,
        device: &Device,
    ) -> Result<Effective, ServiceError> {
        let org = match device.enrollment.as_ref().map(|e| e.owner_scope.kind()) {
            Some(ScopeKind::Org(id)) => {
                let (events, _) = self.load(&StreamId::org(&id)).await?;
                Some(Org::from_events(&events))
            }
            _ => None,
        };
        Ok(recording::effective(device, org.as_ref()))
    }

    /// `GET /v1/orgs/{id}/policy`: for the organization's members and platform admins.
    pub async fn org_policy(
        &self,
        caller: &Identity,
        org_id: &OrgId,
    ) -> Result<OrgPolicy, ServiceError> {
        let (events, _) = self.load(&StreamId::org(org_id)).await?;
        let (record_sessions, default) = org::policy_of(&Org::from_events(&events), caller)?;
        Ok(OrgPolicy {
            org_id: org_id.clone(),
            record_sessions,
            default,
        })
    }

    /// `PUT /v1/orgs/{id}/policy`: admins of the organization.
    pub async fn set_org_policy(
        &self,
        caller: &Identity,
        org_id: &OrgId,
        record_sessions: bool,
        metadata: &Metadata,
    ) -> Result<OrgPolicy, ServiceError> {
        self.execute(metadata, || async move {
            let stream = StreamId::org(org_id);
            let (events, version) = self.load(&stream).await?;
            let event = org::decide_policy(&Org::from_events(&events), caller, record_sessions)?;
            let batch = event.map(|e| one(stream, version, e)).unwrap_or_default();
            Ok(((), batch))
        })
        .await?;
        self.org_policy(caller, org_id).await
    }

    /// `GET /v1/devices/{id}/policy`: whoever sees the device.
    pub async fn device_policy(
        &self,
        caller: &Identity,
        device_id: &DeviceId,
    ) -> Result<DevicePolicy, ServiceError> {
        let (device, _) = self.load_device(device_id).await?;
        device::visible(&device, caller)?;
        let effective = self.recording_policy(&device).await?;
        Ok(DevicePolicy {
            device_id: device_id.clone(),
            record_sessions: DeviceSetting::from_option(device.record_sessions),
            effective: effective.record,
            source: effective.source,
        })
    }

    /// `PUT /v1/devices/{id}/policy`: whoever administers the device.
    pub async fn set_device_policy(
        &self,
        caller: &Identity,
        device_id: &DeviceId,
        setting: DeviceSetting,
        metadata: &Metadata,
    ) -> Result<DevicePolicy, ServiceError> {
        self.execute(metadata, || async move {
            let (device, version) = self.load_device(device_id).await?;
            let event = device::decide_policy(&device, caller, setting.as_option())?;
            let batch = event
                .map(|e| one(StreamId::device(device_id), version, e))
                .unwrap_or_default();
            Ok(((), batch))
        })
        .await?;
        self.device_policy(caller, device_id).await
    }

    /// `PUT /v1/device/sessions/{id}/recording`: a device stores the recording of one of its
    /// recorded sessions (the blob first, then the event that links it to the session).
    pub async fn store_recording(
        &self,
        caller: &Identity,
        session_id: SessionId,
        cast: Vec<u8>,
        truncated: bool,
        max_bytes: u64,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        let Principal::Device { device_id } = &caller.principal else {
            return Err(DomainError::NotFound("recorded session").into());
        };
        let stream = StreamId::session(&session_id);
        let upload = Upload {
            bytes: cast.len() as u64,
            truncated,
            max_bytes,
            sha256: hex::encode(Sha256::digest(&cast)),
        };
        // Refused before anything is written when the session is not this device's recorded one.
        let (events, _) = self.load(&stream).await?;
        recording::decide_store(&Session::from_events(&events), device_id, upload.clone())?;
        self.recordings.put(session_id, cast).await?;
        self.execute(metadata, || {
            let (stream, upload) = (stream.clone(), upload.clone());
            async move {
                let (events, version) = self.load(&stream).await?;
                let session = Session::from_events(&events);
                let event = recording::decide_store(&session, device_id, upload)?;
                Ok(((), one(stream, version, event)))
            }
        })
        .await?;
        Ok(())
    }

    /// `GET /v1/sessions/{id}/recording`: the asciicast, for platform admins, whoever
    /// administers the device, and the user who ran the session; not found for anyone else.
    pub async fn read_recording(
        &self,
        caller: &Identity,
        session_id: SessionId,
    ) -> Result<Vec<u8>, ServiceError> {
        let envelopes = self
            .store
            .read_stream(&StreamId::session(&session_id))
            .await?;
        let ran_by = envelopes
            .iter()
            .find_map(|e| match (&e.event, &e.metadata.actor) {
                (m87_events::DomainEvent::SessionOpened(_), Actor::User { email, .. }) => {
                    Some(email.clone())
                }
                _ => None,
            });
        let session = Session::from_events(envelopes.iter().map(|e| &e.event));
        let Some(opened) = &session.opened else {
            return Err(DomainError::NotFound("recording").into());
        };
        let (device, _) = self.load_device(&opened.device_id).await?;
        recording::may_read(&session, &device, ran_by.as_ref(), caller)?;
        self.recordings
            .get(session_id)
            .await?
            .ok_or_else(|| DomainError::NotFound("recording").into())
    }
}
