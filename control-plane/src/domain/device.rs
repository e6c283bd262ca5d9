//! An enrolled device: its credentials (issued by the decision in `enrollment.rs`), who may
//! reach it, and its removal.

use m87_events::domain::{AccessGranted, AccessRevoked, DeviceEnrolled, DeviceRemoved};
use m87_events::{DomainEvent, KeyId, RequestId, Scope};

use super::{Aggregate, DomainError, Identity};

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
    /// Its own session-recording policy (`None`: its organization's).
    pub record_sessions: Option<bool>,
}

impl Aggregate for Device {
    /// Folds one event into the state. Unrelated events are ignored.
    fn apply(&mut self, event: &DomainEvent) {
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
            DomainEvent::DevicePolicySet(e) => self.record_sessions = e.record_sessions,
            _ => {}
        }
    }
}

impl Device {
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

/// `SetDevicePolicy`: whoever administers the device (its owner, its organization's admins,
/// platform admins). Setting what is already set changes nothing.
pub fn decide_policy(
    device: &Device,
    caller: &Identity,
    record_sessions: Option<bool>,
) -> Result<Option<DomainEvent>, DomainError> {
    let e = device.administered_by(caller, "set the policy of")?;
    if device.record_sessions == record_sessions {
        return Ok(None);
    }
    Ok(Some(DomainEvent::DevicePolicySet(
        m87_events::domain::DevicePolicySet {
            device_id: e.device_id.clone(),
            record_sessions,
        },
    )))
}

/// `GetDevicePolicy`: whoever sees the device.
pub fn visible<'a>(
    device: &'a Device,
    caller: &Identity,
) -> Result<&'a DeviceEnrolled, DomainError> {
    match device.visible_to(caller) {
        Ok(e) if !device.removed => Ok(e),
        _ => Err(DomainError::NotFound("device")),
    }
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
    use m87_events::SystemInfo;
    use m87_events::domain::DeviceEnrolled;

    use super::*;
    use crate::domain::test_support::{admin, user};

    /// A device enrolled for alice, as an approval leaves it.
    fn enrolled() -> Device {
        let enrolled = DomainEvent::DeviceEnrolled(DeviceEnrolled {
            device_id: "dev-00000001".parse().unwrap(),
            request_id: RequestId::new(),
            name: "robot-1".parse().unwrap(),
            owner_scope: "user:alice@example.com".parse().unwrap(),
            system_info: SystemInfo::default(),
        });
        Device::from_events([&enrolled])
    }

    #[test]
    fn removal_rules() {
        let device = enrolled();
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
        let mut device = enrolled();
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
