//! An enrolled device: its credentials, who may reach it, and its removal.

use m87_events::domain::{
    AccessGranted, AccessRevoked, DeviceCredentialsIssued, DeviceEnrolled, DeviceRemoved,
};
use m87_events::{DomainEvent, KeyId, RequestId, Scope};

use super::registration::Registration;
use super::{DomainError, Identity};
use m87_events::api::DeviceStatus;

/// The device aggregate, folded from its stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Device {
    /// The current enrollment, if the device was ever enrolled.
    pub enrollment: Option<DeviceEnrolled>,
    /// Whether the current enrollment was removed.
    pub removed: bool,
    /// The request whose credentials were issued, with the key's id.
    pub credentials: Option<(RequestId, KeyId)>,
    /// Scopes other than the owner that may reach it.
    pub allowed_scopes: Vec<Scope>,
}

impl Device {
    /// Folds one event into the state. Unrelated events are ignored.
    pub fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::DeviceEnrolled(e) => {
                // A new enrollment starts clean: no key, no shares.
                *self = Device {
                    enrollment: Some(e.clone()),
                    ..Device::default()
                };
            }
            DomainEvent::DeviceCredentialsIssued(e) => {
                self.credentials = Some((e.request_id, e.key_id));
            }
            DomainEvent::DeviceRemoved(_) => self.removed = true,
            DomainEvent::AccessGranted(e) if !self.allowed_scopes.contains(&e.scope) => {
                self.allowed_scopes.push(e.scope.clone());
            }
            DomainEvent::AccessRevoked(e) => self.allowed_scopes.retain(|s| *s != e.scope),
            _ => {}
        }
    }

    /// Folds a whole stream.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a DomainEvent>) -> Self {
        let mut state = Self::default();
        for e in events {
            state.apply(e);
        }
        state
    }

    /// Whether the device is part of the fleet now.
    pub fn is_enrolled(&self) -> bool {
        self.enrollment.is_some() && !self.removed
    }

    fn visible_to<'a>(&'a self, caller: &Identity) -> Result<&'a DeviceEnrolled, DomainError> {
        match &self.enrollment {
            Some(e) if caller.can_see(&e.owner_scope, &self.allowed_scopes) => Ok(e),
            _ => Err(DomainError::NotFound("device")),
        }
    }

    fn administered_by<'a>(
        &'a self,
        caller: &Identity,
        what: &str,
    ) -> Result<&'a DeviceEnrolled, DomainError> {
        let e = self.visible_to(caller)?;
        if self.removed {
            return Err(DomainError::DeviceAlreadyRemoved);
        }
        if !caller.administers(&e.owner_scope) {
            return Err(DomainError::Forbidden(format!(
                "you do not administer {}, so you cannot {what} this device",
                e.owner_scope
            )));
        }
        Ok(e)
    }
}

/// `IssueDeviceCredentials`: the first poll with the right claim secret after approval.
/// `registration` must already have passed [`super::registration::check_claim`].
pub fn decide_issue_credentials(
    registration: &Registration,
    device: &Device,
    key_id: KeyId,
    key_hash: String,
) -> Result<DomainEvent, DomainError> {
    let r = registration
        .requested
        .as_ref()
        .ok_or(DomainError::NotFound("registration request"))?;
    if registration.status != Some(DeviceStatus::Approved) {
        return Err(DomainError::Validation(
            "registration request is not approved".into(),
        ));
    }
    match &device.enrollment {
        Some(e) if e.request_id == r.request_id && !device.removed => {}
        // Approved, but the enrollment it made was removed or replaced since.
        _ => return Err(DomainError::AlreadyDecided(DeviceStatus::Removed)),
    }
    if matches!(device.credentials, Some((issued_for, _)) if issued_for == r.request_id) {
        return Err(DomainError::CredentialsAlreadyIssued);
    }
    Ok(DomainEvent::DeviceCredentialsIssued(
        DeviceCredentialsIssued {
            device_id: r.device_id.clone(),
            request_id: r.request_id,
            key_id,
            key_hash,
        },
    ))
}

/// `RemoveDevice`.
pub fn decide_remove(device: &Device, caller: &Identity) -> Result<DomainEvent, DomainError> {
    let e = device.administered_by(caller, "remove")?;
    Ok(DomainEvent::DeviceRemoved(DeviceRemoved {
        device_id: e.device_id.clone(),
    }))
}

/// `GrantAccess`. Granting a scope that already has access changes nothing.
pub fn decide_grant(
    device: &Device,
    caller: &Identity,
    scope: &Scope,
) -> Result<Option<DomainEvent>, DomainError> {
    let e = device.administered_by(caller, "share")?;
    if *scope == e.owner_scope || device.allowed_scopes.contains(scope) {
        return Ok(None);
    }
    Ok(Some(DomainEvent::AccessGranted(AccessGranted {
        device_id: e.device_id.clone(),
        scope: scope.clone(),
    })))
}

/// `RevokeAccess`. Revoking a scope without access changes nothing.
pub fn decide_revoke(
    device: &Device,
    caller: &Identity,
    scope: &Scope,
) -> Result<Option<DomainEvent>, DomainError> {
    let e = device.administered_by(caller, "change access to")?;
    if !device.allowed_scopes.contains(scope) {
        return Ok(None);
    }
    Ok(Some(DomainEvent::AccessRevoked(AccessRevoked {
        device_id: e.device_id.clone(),
        scope: scope.clone(),
    })))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};
    use m87_events::SystemInfo;

    use super::*;
    use crate::domain::registration::{RequestRegistration, decide_approve, decide_request};
    use crate::domain::test_support::{admin, user};

    fn approved() -> (Registration, Device) {
        let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let cmd = RequestRegistration {
            device_id: "dev-00000001".parse().unwrap(),
            name: "robot-1".parse().unwrap(),
            owner_scope: "user:alice@example.com".parse().unwrap(),
            system_info: SystemInfo::default(),
            claim_secret: "0123456789abcdef0123456789abcdef".into(),
        };
        let mut reg_events =
            vec![decide_request(&cmd, RequestId::new(), now, Duration::minutes(60)).unwrap()];
        let approval = decide_approve(
            &Registration::from_events(&reg_events),
            &Device::default(),
            &user("alice@example.com"),
            now,
        )
        .unwrap();
        reg_events.push(approval.registration_event);
        (
            Registration::from_events(&reg_events),
            Device::from_events([&approval.device_event]),
        )
    }

    #[test]
    fn credentials_are_issued_exactly_once() {
        let (reg, mut device) = approved();
        let event = decide_issue_credentials(&reg, &device, KeyId::new(), "hash".into()).unwrap();
        device.apply(&event);
        assert_eq!(
            decide_issue_credentials(&reg, &device, KeyId::new(), "hash2".into()).unwrap_err(),
            DomainError::CredentialsAlreadyIssued
        );
    }

    #[test]
    fn no_credentials_before_approval_or_after_removal() {
        let (reg, device) = approved();
        let pending = Registration {
            status: Some(DeviceStatus::Pending),
            ..reg.clone()
        };
        assert!(decide_issue_credentials(&pending, &device, KeyId::new(), "h".into()).is_err());
        let mut removed = device.clone();
        removed.apply(&decide_remove(&device, &user("alice@example.com")).unwrap());
        assert_eq!(
            decide_issue_credentials(&reg, &removed, KeyId::new(), "h".into()).unwrap_err(),
            DomainError::AlreadyDecided(DeviceStatus::Removed)
        );
    }

    #[test]
    fn removal_rules() {
        let (_, device) = approved();
        assert_eq!(
            decide_remove(&device, &user("bob@example.com")).unwrap_err(),
            DomainError::NotFound("device")
        );
        assert!(decide_remove(&device, &admin("root@example.com")).is_ok());
        let mut removed = device.clone();
        removed.apply(&decide_remove(&device, &user("alice@example.com")).unwrap());
        assert_eq!(
            decide_remove(&removed, &user("alice@example.com")).unwrap_err(),
            DomainError::DeviceAlreadyRemoved
        );
    }

    #[test]
    fn shared_user_sees_but_cannot_administer() {
        let (_, mut device) = approved();
        let bob_scope: Scope = "user:bob@example.com".parse().unwrap();
        let grant = decide_grant(&device, &user("alice@example.com"), &bob_scope)
            .unwrap()
            .unwrap();
        device.apply(&grant);
        assert!(
            decide_grant(&device, &user("alice@example.com"), &bob_scope)
                .unwrap()
                .is_none()
        );
        let err = decide_remove(&device, &user("bob@example.com")).unwrap_err();
        assert!(matches!(err, DomainError::Forbidden(_)));
        let revoke = decide_revoke(&device, &user("alice@example.com"), &bob_scope)
            .unwrap()
            .unwrap();
        device.apply(&revoke);
        assert_eq!(
            decide_remove(&device, &user("bob@example.com")).unwrap_err(),
            DomainError::NotFound("device")
        );
        assert!(
            decide_revoke(&device, &user("alice@example.com"), &bob_scope)
                .unwrap()
                .is_none()
        );
    }
}
