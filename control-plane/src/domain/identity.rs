//! Who is calling, and what that lets them see and administer.
//!
//! An [`Identity`] is built by the REST layer from an API key today and from an OIDC token in a
//! later issue; the rules below only look at the identity, never at how it was proven.

use m87_events::{Actor, DeviceId, Email, KeyId, OrgId, Role, Scope, ScopeKind};

/// The caller behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A person.
    User {
        /// Their email.
        email: Email,
        /// The API key they used, if they used one.
        key_id: Option<KeyId>,
    },
    /// A device, with its own key.
    Device {
        /// The device.
        device_id: DeviceId,
    },
}

/// A caller, with the scopes they act in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who they are.
    pub principal: Principal,
    /// The scopes whose devices they can see: their own `user:` scope, and (later) their
    /// organizations.
    pub scopes: Vec<Scope>,
    /// Platform admins see and administer everything.
    pub platform_admin: bool,
    /// The organizations the user belongs to, with their roles.
    pub memberships: Vec<(OrgId, Role)>,
}

impl Identity {
    /// The user's email, if the caller is a user.
    pub fn email(&self) -> Option<&Email> {
        match &self.principal {
            Principal::User { email, .. } => Some(email),
            Principal::Device { .. } => None,
        }
    }

    /// Whether the caller can see a device or request with this owner and these shares.
    pub fn can_see(&self, owner: &Scope, allowed: &[Scope]) -> bool {
        if matches!(self.principal, Principal::Device { .. }) {
            return false;
        }
        self.platform_admin
            || self.scopes.contains(owner)
            || allowed.iter().any(|s| self.scopes.contains(s))
    }

    /// The caller's role in an organization.
    pub fn role_in(&self, org: &OrgId) -> Option<Role> {
        self.memberships
            .iter()
            .find(|(o, _)| o == org)
            .map(|(_, r)| *r)
    }

    /// Whether the caller may approve, remove and share devices owned by `scope`: platform
    /// admins, the user of a `user:` scope, admins of an `org:` scope.
    pub fn administers(&self, scope: &Scope) -> bool {
        if self.platform_admin {
            return true;
        }
        match (&self.principal, scope.kind()) {
            (Principal::User { email, .. }, ScopeKind::User(owner)) => *email == owner,
            (Principal::User { .. }, ScopeKind::Org(org)) => {
                self.role_in(&org) == Some(Role::Admin)
            }
            _ => false,
        }
    }

    /// Whether the caller may operate (shell, exec, forward, files) a device with this owner and
    /// these shares: through a user scope, or as admin or member of an organization scope.
    /// Viewers see but do not operate.
    pub fn can_operate(&self, owner: &Scope, allowed: &[Scope]) -> bool {
        if matches!(self.principal, Principal::Device { .. }) {
            return false;
        }
        if self.platform_admin {
            return true;
        }
        std::iter::once(owner)
            .chain(allowed)
            .any(|scope| match (&self.principal, scope.kind()) {
                (Principal::User { email, .. }, ScopeKind::User(u)) => *email == u,
                (_, ScopeKind::Org(org)) => {
                    matches!(self.role_in(&org), Some(Role::Admin | Role::Member))
                }
                _ => false,
            })
    }

    /// The actor recorded on events this caller causes.
    pub fn actor(&self) -> Actor {
        match &self.principal {
            Principal::User { email, key_id } => Actor::User {
                email: email.clone(),
                key_id: *key_id,
                subject: None,
            },
            Principal::Device { device_id } => Actor::Device {
                device_id: device_id.clone(),
            },
        }
    }
}
