//! Organizations: members and their roles.

use std::collections::BTreeMap;

use m87_events::domain::{MemberAdded, MemberRemoved, MemberRoleChanged, OrgCreated, OrgDeleted};
use m87_events::{DomainEvent, Email, OrgId, Role, Scope};

use super::{Aggregate, DomainError, Identity};

/// Longest organization name.
pub const MAX_NAME_LEN: usize = 128;

/// The organization aggregate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Org {
    /// As created.
    pub created: Option<OrgCreated>,
    /// Whether it was deleted.
    pub deleted: bool,
    /// Members and roles.
    pub members: BTreeMap<Email, Role>,
    /// The session-recording policy, when an admin set one (else the default: on).
    pub record_sessions: Option<bool>,
}

impl Aggregate for Org {
    /// Folds one event.
    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::OrgCreated(e) => self.created = Some(e.clone()),
            DomainEvent::OrgDeleted(_) => {
                self.deleted = true;
                self.members.clear();
            }
            DomainEvent::MemberAdded(e) => {
                self.members.insert(e.email.clone(), e.role);
            }
            DomainEvent::MemberRoleChanged(e) => {
                self.members.insert(e.email.clone(), e.role);
            }
            DomainEvent::MemberRemoved(e) => {
                self.members.remove(&e.email);
            }
            DomainEvent::OrgPolicySet(e) => self.record_sessions = Some(e.record_sessions),
            _ => {}
        }
    }
}

impl Org {
    fn live(&self, caller: &Identity) -> Result<&OrgCreated, DomainError> {
        match &self.created {
            Some(c)
                if !self.deleted
                    && (caller.platform_admin
                        || caller.email().is_some_and(|e| self.members.contains_key(e))) =>
            {
                Ok(c)
            }
            _ => Err(DomainError::NotFound("organization")),
        }
    }

    fn administered(&self, caller: &Identity, what: &str) -> Result<&OrgCreated, DomainError> {
        let c = self.live(caller)?;
        if !caller.administers(&Scope::org(&c.org_id)) {
            return Err(DomainError::Forbidden(format!(
                "only admins of {} may {what}",
                c.org_id
            )));
        }
        Ok(c)
    }

    fn admins(&self) -> usize {
        self.members.values().filter(|r| **r == Role::Admin).count()
    }
}

/// Whether terminal sessions on an organization's devices are recorded when nobody set it.
pub const DEFAULT_RECORD_SESSIONS: bool = true;

/// `GetOrgPolicy`: members read it; returns the policy and whether it is the default.
pub fn policy_of(org: &Org, caller: &Identity) -> Result<(bool, bool), DomainError> {
    org.live(caller)?;
    Ok(match org.record_sessions {
        Some(on) => (on, false),
        None => (DEFAULT_RECORD_SESSIONS, true),
    })
}

/// `SetOrgPolicy`: admins only; setting what is already set changes nothing.
pub fn decide_policy(
    org: &Org,
    caller: &Identity,
    record_sessions: bool,
) -> Result<Option<DomainEvent>, DomainError> {
    let c = org.administered(caller, "set its policy")?;
    if org.record_sessions == Some(record_sessions) {
        return Ok(None);
    }
    Ok(Some(DomainEvent::OrgPolicySet(
        m87_events::domain::OrgPolicySet {
            org_id: c.org_id.clone(),
            record_sessions,
        },
    )))
}

/// `CreateOrg`: the creator becomes its first admin.
pub fn decide_create(
    org: &Org,
    caller: &Identity,
    org_id: &OrgId,
    name: Option<&str>,
) -> Result<Vec<DomainEvent>, DomainError> {
    let Some(email) = caller.email() else {
        return Err(DomainError::Forbidden(
            "devices cannot create organizations".into(),
        ));
    };
    if org.created.is_some() {
        return Err(DomainError::AlreadyExists(format!("organization {org_id}")));
    }
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(org_id.as_str());
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(DomainError::Validation(format!(
            "organization name must be at most {MAX_NAME_LEN} printable characters"
        )));
    }
    Ok(vec![
        DomainEvent::OrgCreated(OrgCreated {
            org_id: org_id.clone(),
            name: name.to_owned(),
        }),
        DomainEvent::MemberAdded(MemberAdded {
            org_id: org_id.clone(),
            email: email.clone(),
            role: Role::Admin,
        }),
    ])
}

/// `DeleteOrg`.
pub fn decide_delete(org: &Org, caller: &Identity) -> Result<DomainEvent, DomainError> {
    let c = org.administered(caller, "delete it")?;
    Ok(DomainEvent::OrgDeleted(OrgDeleted {
        org_id: c.org_id.clone(),
    }))
}

/// `AddMember`.
pub fn decide_add(
    org: &Org,
    caller: &Identity,
    email: &Email,
    role: Role,
) -> Result<DomainEvent, DomainError> {
    let c = org.administered(caller, "add members")?;
    if org.members.contains_key(email) {
        return Err(DomainError::AlreadyExists(format!(
            "{email} is already a member of {}",
            c.org_id
        )));
    }
    Ok(DomainEvent::MemberAdded(MemberAdded {
        org_id: c.org_id.clone(),
        email: email.clone(),
        role,
    }))
}

/// `RemoveMember`: admins remove anyone; members may leave. The last admin stays.
pub fn decide_remove(
    org: &Org,
    caller: &Identity,
    email: &Email,
) -> Result<DomainEvent, DomainError> {
    let c = org.live(caller)?;
    if caller.email() != Some(email) && !caller.administers(&Scope::org(&c.org_id)) {
        return Err(DomainError::Forbidden(format!(
            "only admins of {} may remove members",
            c.org_id
        )));
    }
    let Some(role) = org.members.get(email) else {
        return Err(DomainError::NotFound("member"));
    };
    if *role == Role::Admin && org.admins() == 1 {
        return Err(DomainError::Validation(
            "an organization keeps at least one admin".into(),
        ));
    }
    Ok(DomainEvent::MemberRemoved(MemberRemoved {
        org_id: c.org_id.clone(),
        email: email.clone(),
    }))
}

/// `ChangeRole`. The last admin cannot be demoted.
pub fn decide_role(
    org: &Org,
    caller: &Identity,
    email: &Email,
    role: Role,
) -> Result<Option<DomainEvent>, DomainError> {
    let c = org.administered(caller, "change roles")?;
    let Some(current) = org.members.get(email) else {
        return Err(DomainError::NotFound("member"));
    };
    if *current == role {
        return Ok(None);
    }
    if *current == Role::Admin && org.admins() == 1 {
        return Err(DomainError::Validation(
            "an organization keeps at least one admin".into(),
        ));
    }
    Ok(Some(DomainEvent::MemberRoleChanged(MemberRoleChanged {
        org_id: c.org_id.clone(),
        email: email.clone(),
        role,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_support::{admin, user};

    fn with_role(email: &str, org: &str, role: Role) -> Identity {
        let mut u = user(email);
        let org: OrgId = org.parse().unwrap();
        u.scopes.push(Scope::org(&org));
        u.memberships.push((org, role));
        u
    }

    fn created() -> Org {
        let alice = user("alice@example.com");
        let events = decide_create(
            &Org::default(),
            &alice,
            &"acme".parse().unwrap(),
            Some("Acme"),
        )
        .unwrap();
        Org::from_events(&events)
    }

    #[test]
    fn creator_is_admin_and_ids_are_unique() {
        let org = created();
        assert_eq!(
            org.members.get(&"alice@example.com".parse().unwrap()),
            Some(&Role::Admin)
        );
        assert!(matches!(
            decide_create(
                &org,
                &user("bob@example.com"),
                &"acme".parse().unwrap(),
                None
            ),
            Err(DomainError::AlreadyExists(_))
        ));
    }

    #[test]
    fn only_admins_manage_members_and_the_last_admin_stays() {
        let mut org = created();
        let alice = with_role("alice@example.com", "acme", Role::Admin);
        let bob: Email = "bob@example.com".parse().unwrap();
        org.apply(&decide_add(&org, &alice, &bob, Role::Member).unwrap());
        let bob_id = with_role("bob@example.com", "acme", Role::Member);
        assert!(matches!(
            decide_add(
                &org,
                &bob_id,
                &"c@example.com".parse().unwrap(),
                Role::Viewer
            ),
            Err(DomainError::Forbidden(_))
        ));
        assert_eq!(
            decide_add(&org, &user("eve@example.com"), &bob, Role::Admin).unwrap_err(),
            DomainError::NotFound("organization")
        );
        assert!(matches!(
            decide_remove(&org, &alice, &"alice@example.com".parse().unwrap()),
            Err(DomainError::Validation(_))
        ));
        assert!(matches!(
            decide_role(
                &org,
                &alice,
                &"alice@example.com".parse().unwrap(),
                Role::Viewer
            ),
            Err(DomainError::Validation(_))
        ));
        // Bob may leave by himself.
        assert!(decide_remove(&org, &bob_id, &bob).is_ok());
        assert!(decide_delete(&org, &admin("root@example.com")).is_ok());
        assert!(matches!(
            decide_delete(&org, &bob_id),
            Err(DomainError::Forbidden(_))
        ));
    }
}
