//! A device's request to join the fleet.
//!
//! Lifecycle: requested → approved | rejected | expired. Approval enrolls the device on its own
//! stream; the device's key is released later, once, to a poll that presents the claim secret.
//! Those two decisions read the device too, so they live in `enrollment.rs`, above this module
//! and the device's.

use chrono::{DateTime, Duration, Utc};
use m87_events::api::DeviceStatus;
use m87_events::domain::{RegistrationExpired, RegistrationRejected, RegistrationRequested};
use m87_events::{DeviceId, DeviceName, DomainEvent, RequestId, Scope, SystemInfo};

use super::{Aggregate, DomainError, Identity, digests_match, secret_digest};

/// Shortest claim secret accepted.
pub const MIN_CLAIM_SECRET_LEN: usize = 32;
/// Longest claim secret accepted.
pub const MAX_CLAIM_SECRET_LEN: usize = 256;

/// The registration aggregate, folded from its stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registration {
    /// The request as asked, once it exists.
    pub requested: Option<RegistrationRequested>,
    /// Where it stands.
    pub status: Option<DeviceStatus>,
}

/// `RequestRegistration`: what a device sends to join.
#[derive(Debug, Clone)]
pub struct RequestRegistration {
    /// The id the device gave itself.
    pub device_id: DeviceId,
    /// Its display name.
    pub name: DeviceName,
    /// Who it asks to belong to.
    pub owner_scope: Scope,
    /// What it tells about itself.
    pub system_info: SystemInfo,
    /// Its claim secret, in the clear (only its digest is kept).
    pub claim_secret: String,
}

impl Aggregate for Registration {
    /// Folds one event into the state. Unrelated events are ignored.
    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::RegistrationRequested(e) => {
                self.requested = Some(e.clone());
                self.status = Some(DeviceStatus::Pending);
            }
            DomainEvent::RegistrationApproved(_) => self.status = Some(DeviceStatus::Approved),
            DomainEvent::RegistrationRejected(_) => self.status = Some(DeviceStatus::Rejected),
            DomainEvent::RegistrationExpired(_) => self.status = Some(DeviceStatus::Expired),
            _ => {}
        }
    }
}

impl Registration {
    /// The status a reader should see at `now`: a pending request past its expiry is expired
    /// even before the expiry is recorded.
    pub fn effective_status(&self, now: DateTime<Utc>) -> Option<DeviceStatus> {
        match (&self.requested, self.status) {
            (Some(r), Some(DeviceStatus::Pending)) if now >= r.expires_at => {
                Some(DeviceStatus::Expired)
            }
            (_, status) => status,
        }
    }

    pub(super) fn visible_to<'a>(
        &'a self,
        caller: &Identity,
    ) -> Result<&'a RegistrationRequested, DomainError> {
        match &self.requested {
            Some(r) if caller.can_see(&r.owner_scope, &[]) => Ok(r),
            _ => Err(DomainError::NotFound("registration request")),
        }
    }

    pub(super) fn pending_at(&self, now: DateTime<Utc>) -> Result<(), DomainError> {
        match self.effective_status(now) {
            Some(DeviceStatus::Pending) => Ok(()),
            Some(DeviceStatus::Expired) => Err(DomainError::Expired),
            Some(other) => Err(DomainError::AlreadyDecided(other)),
            None => Err(DomainError::NotFound("registration request")),
        }
    }
}

/// Decides a new registration request. Returns the event for the new request's stream.
pub fn decide_request(
    cmd: &RequestRegistration,
    request_id: RequestId,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<DomainEvent, DomainError> {
    let len = cmd.claim_secret.len();
    if !(MIN_CLAIM_SECRET_LEN..=MAX_CLAIM_SECRET_LEN).contains(&len) {
        return Err(DomainError::Validation(format!(
            "claim secret must be {MIN_CLAIM_SECRET_LEN} to {MAX_CLAIM_SECRET_LEN} characters"
        )));
    }
    cmd.system_info
        .validate()
        .map_err(|m| DomainError::Validation(m.to_owned()))?;
    Ok(DomainEvent::RegistrationRequested(RegistrationRequested {
        request_id,
        device_id: cmd.device_id.clone(),
        name: cmd.name.clone(),
        owner_scope: cmd.owner_scope.clone(),
        system_info: cmd.system_info.clone(),
        claim_secret_hash: secret_digest(&cmd.claim_secret),
        expires_at: now + ttl,
    }))
}

/// The cap on undecided requests per owner scope: a new request for `scope`, which holds
/// `pending` undecided requests now, is refused when that is `max` or more.
pub fn check_pending_cap(scope: &Scope, pending: usize, max: usize) -> Result<(), DomainError> {
    if pending >= max {
        return Err(DomainError::TooManyPending {
            scope: scope.to_string(),
            max,
        });
    }
    Ok(())
}

/// `RejectRegistration`.
pub fn decide_reject(
    registration: &Registration,
    caller: &Identity,
    now: DateTime<Utc>,
) -> Result<DomainEvent, DomainError> {
    let r = registration.visible_to(caller)?;
    if !caller.administers(&r.owner_scope) {
        return Err(DomainError::Forbidden(format!(
            "you do not administer {}, so you cannot reject its devices",
            r.owner_scope
        )));
    }
    registration.pending_at(now)?;
    Ok(DomainEvent::RegistrationRejected(RegistrationRejected {
        request_id: r.request_id,
        device_id: r.device_id.clone(),
    }))
}

/// `ExpireRegistration`: records the expiry of a pending request past its lifetime. Returns no
/// event when there is nothing to record.
pub fn decide_expire(registration: &Registration, now: DateTime<Utc>) -> Option<DomainEvent> {
    let r = registration.requested.as_ref()?;
    (registration.status == Some(DeviceStatus::Pending) && now >= r.expires_at).then(|| {
        DomainEvent::RegistrationExpired(RegistrationExpired {
            request_id: r.request_id,
            device_id: r.device_id.clone(),
        })
    })
}

/// Checks a poll's claim secret and returns the request's status at `now`.
pub fn check_claim<'a>(
    registration: &'a Registration,
    claim_secret: &str,
    now: DateTime<Utc>,
) -> Result<(DeviceStatus, &'a RegistrationRequested), DomainError> {
    let r = registration
        .requested
        .as_ref()
        .ok_or(DomainError::NotFound("registration request"))?;
    if !digests_match(&secret_digest(claim_secret), &r.claim_secret_hash) {
        return Err(DomainError::InvalidClaimSecret);
    }
    let status = registration
        .effective_status(now)
        .ok_or(DomainError::NotFound("registration request"))?;
    Ok((status, r))
}

/// Fixtures for the tests of registration and enrollment decisions.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef";

    pub(crate) fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    pub(crate) fn request_cmd(owner: &str) -> RequestRegistration {
        RequestRegistration {
            device_id: "dev-00000001".parse().unwrap(),
            name: "robot-1".parse().unwrap(),
            owner_scope: owner.parse().unwrap(),
            system_info: SystemInfo::default(),
            claim_secret: SECRET.into(),
        }
    }

    /// Given no events, when a device requests registration, then RegistrationRequested.
    pub(crate) fn requested(owner: &str) -> (RequestId, Vec<DomainEvent>) {
        let id = RequestId::new();
        let e = decide_request(&request_cmd(owner), id, t0(), Duration::minutes(60)).unwrap();
        (id, vec![e])
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{SECRET, request_cmd, requested, t0};
    use super::*;

    #[test]
    fn request_records_digest_and_expiry_never_the_secret() {
        let (id, events) = requested("user:alice@example.com");
        let DomainEvent::RegistrationRequested(r) = &events[0] else {
            panic!("wrong event {events:?}")
        };
        assert_eq!(r.request_id, id);
        assert_eq!(r.expires_at, t0() + Duration::minutes(60));
        assert_eq!(r.claim_secret_hash, secret_digest(SECRET));
        assert!(!serde_json::to_string(&events[0]).unwrap().contains(SECRET));
    }

    #[test]
    fn pending_cap_refuses_at_the_cap() {
        let scope: Scope = "org:acme".parse().unwrap();
        assert!(check_pending_cap(&scope, 99, 100).is_ok());
        assert_eq!(
            check_pending_cap(&scope, 100, 100).unwrap_err(),
            DomainError::TooManyPending {
                scope: "org:acme".into(),
                max: 100
            }
        );
        assert!(check_pending_cap(&scope, 0, 0).is_err());
    }

    #[test]
    fn short_claim_secret_is_refused() {
        let mut cmd = request_cmd("user:alice@example.com");
        cmd.claim_secret = "short".into();
        let err = decide_request(&cmd, RequestId::new(), t0(), Duration::minutes(60)).unwrap_err();
        assert!(matches!(err, DomainError::Validation(_)));
    }

    #[test]
    fn claim_secret_is_checked() {
        let (_, events) = requested("user:alice@example.com");
        let reg = Registration::from_events(&events);
        assert_eq!(
            check_claim(&reg, "wrong-secret-wrong-secret-wrong-secret", t0()).unwrap_err(),
            DomainError::InvalidClaimSecret
        );
        assert_eq!(
            check_claim(&reg, SECRET, t0()).unwrap().0,
            DeviceStatus::Pending
        );
        assert_eq!(
            check_claim(&reg, SECRET, t0() + Duration::hours(2))
                .unwrap()
                .0,
            DeviceStatus::Expired
        );
        assert_eq!(
            check_claim(&Registration::default(), SECRET, t0()).unwrap_err(),
            DomainError::NotFound("registration request")
        );
    }
}
