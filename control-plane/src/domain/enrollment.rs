//! Enrollment: the two decisions that read both a registration and a device — approving a
//! request (which enrolls the device on its own stream) and releasing the device's key, once,
//! to the poll that presents the claim secret.
//!
//! They live here, above [`super::registration`] and [`super::device`], so that neither of
//! those aggregates imports the other.

use chrono::{DateTime, Utc};
use m87_events::api::DeviceStatus;
use m87_events::domain::{DeviceCredentialsIssued, DeviceEnrolled, RegistrationApproved};
use m87_events::{DomainEvent, KeyId};

use super::device::Device;
use super::registration::Registration;
use super::{DomainError, Identity};

/// What an approval appends: one event on the request's stream, one on the device's.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    /// For the registration stream.
    pub registration_event: DomainEvent,
    /// For the device stream.
    pub device_event: DomainEvent,
}

/// `ApproveRegistration`.
pub fn decide_approve(
    registration: &Registration,
    device: &Device,
    caller: &Identity,
    now: DateTime<Utc>,
) -> Result<Approval, DomainError> {
    let r = registration.visible_to(caller)?;
    if !caller.administers(&r.owner_scope) {
        return Err(DomainError::Forbidden(format!(
            "you do not administer {}, so you cannot approve its devices",
            r.owner_scope
        )));
    }
    registration.pending_at(now)?;
    if device.is_enrolled() {
        // Enrolled by this very request: a concurrent approval won (this one read the request
        // before that approval was stored).
        if device
            .enrollment
            .as_ref()
            .is_some_and(|e| e.request_id == r.request_id)
        {
            return Err(DomainError::AlreadyDecided(DeviceStatus::Approved));
        }
        return Err(DomainError::DeviceAlreadyEnrolled(r.device_id.to_string()));
    }
    Ok(Approval {
        registration_event: DomainEvent::RegistrationApproved(RegistrationApproved {
            request_id: r.request_id,
            device_id: r.device_id.clone(),
        }),
        device_event: DomainEvent::DeviceEnrolled(DeviceEnrolled {
            device_id: r.device_id.clone(),
            request_id: r.request_id,
            name: r.name.clone(),
            owner_scope: r.owner_scope.clone(),
            system_info: r.system_info.clone(),
        }),
    })
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

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use m87_events::{RequestId, SystemInfo};

    use super::*;
    use crate::domain::Aggregate;
    use crate::domain::device::decide_remove;
    use crate::domain::registration::fixtures::{requested, t0};
    use crate::domain::registration::{
        RequestRegistration, decide_expire, decide_reject, decide_request,
    };
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
    fn owner_approves_and_device_is_enrolled() {
        let (id, events) = requested("user:alice@example.com");
        let reg = Registration::from_events(&events);
        let approval =
            decide_approve(&reg, &Device::default(), &user("alice@example.com"), t0()).unwrap();
        assert_eq!(
            approval.registration_event,
            DomainEvent::RegistrationApproved(RegistrationApproved {
                request_id: id,
                device_id: "dev-00000001".parse().unwrap()
            })
        );
        assert!(
            matches!(approval.device_event, DomainEvent::DeviceEnrolled(ref d) if d.request_id == id)
        );
    }

    #[test]
    fn platform_admin_approves_any_scope() {
        let (_, events) = requested("org:acme");
        let reg = Registration::from_events(&events);
        assert!(decide_approve(&reg, &Device::default(), &admin("root@example.com"), t0()).is_ok());
    }

    #[test]
    fn stranger_gets_not_found_not_forbidden() {
        let (_, events) = requested("user:alice@example.com");
        let reg = Registration::from_events(&events);
        let err =
            decide_approve(&reg, &Device::default(), &user("bob@example.com"), t0()).unwrap_err();
        assert_eq!(err, DomainError::NotFound("registration request"));
        let err = decide_reject(&reg, &user("bob@example.com"), t0()).unwrap_err();
        assert_eq!(err, DomainError::NotFound("registration request"));
    }

    #[test]
    fn member_of_scope_who_does_not_administer_is_forbidden() {
        let (_, events) = requested("org:acme");
        let reg = Registration::from_events(&events);
        let mut member = user("bob@example.com");
        member.scopes.push("org:acme".parse().unwrap());
        let err = decide_approve(&reg, &Device::default(), &member, t0()).unwrap_err();
        assert!(matches!(err, DomainError::Forbidden(_)));
    }

    #[test]
    fn approving_twice_is_refused() {
        let (_, mut events) = requested("user:alice@example.com");
        let alice = user("alice@example.com");
        let approval = decide_approve(
            &Registration::from_events(&events),
            &Device::default(),
            &alice,
            t0(),
        )
        .unwrap();
        events.push(approval.registration_event);
        let reg = Registration::from_events(&events);
        let err = decide_approve(&reg, &Device::default(), &alice, t0()).unwrap_err();
        assert_eq!(err, DomainError::AlreadyDecided(DeviceStatus::Approved));
        let err = decide_reject(&reg, &alice, t0()).unwrap_err();
        assert_eq!(err, DomainError::AlreadyDecided(DeviceStatus::Approved));
    }

    #[test]
    fn rejected_request_cannot_be_approved() {
        let (_, mut events) = requested("user:alice@example.com");
        let alice = user("alice@example.com");
        events.push(decide_reject(&Registration::from_events(&events), &alice, t0()).unwrap());
        let err = decide_approve(
            &Registration::from_events(&events),
            &Device::default(),
            &alice,
            t0(),
        )
        .unwrap_err();
        assert_eq!(err, DomainError::AlreadyDecided(DeviceStatus::Rejected));
    }

    #[test]
    fn expired_request_cannot_be_decided_and_expiry_is_recorded_once() {
        let (_, mut events) = requested("user:alice@example.com");
        let alice = user("alice@example.com");
        let later = t0() + Duration::minutes(60);
        let reg = Registration::from_events(&events);
        assert_eq!(
            decide_approve(&reg, &Device::default(), &alice, later).unwrap_err(),
            DomainError::Expired
        );
        assert_eq!(
            decide_reject(&reg, &alice, later).unwrap_err(),
            DomainError::Expired
        );
        assert!(decide_expire(&reg, t0()).is_none(), "not yet expired");
        events.push(decide_expire(&reg, later).unwrap());
        let reg = Registration::from_events(&events);
        assert!(decide_expire(&reg, later).is_none(), "expiry recorded once");
        assert_eq!(
            decide_approve(&reg, &Device::default(), &alice, later).unwrap_err(),
            DomainError::Expired
        );
    }

    #[test]
    fn enrolled_device_cannot_be_approved_again() {
        let (_, events) = requested("user:alice@example.com");
        let alice = user("alice@example.com");
        let reg = Registration::from_events(&events);
        let first = decide_approve(&reg, &Device::default(), &alice, t0()).unwrap();
        let device = Device::from_events([&first.device_event]);
        // A second request from the same device while it is enrolled.
        let (_, events2) = requested("user:alice@example.com");
        let err = decide_approve(&Registration::from_events(&events2), &device, &alice, t0())
            .unwrap_err();
        assert!(matches!(err, DomainError::DeviceAlreadyEnrolled(_)));
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
}
