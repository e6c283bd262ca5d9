//! Who is calling, and what that lets them see and administer.
//!
//! An [`Identity`] is built by the REST layer from an API key today and from an OIDC token in a
//! later issue; the rules below only look at the identity, never at how it was proven.

use m87_events::{Actor, DeviceId, Email, KeyId, Scope, ScopeKind};

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

    /// Whether the caller may approve, remove and share devices owned by `scope`.
    pub fn administers(&self, scope: &Scope) -> bool {
        if self.platform_admin {
            return true;
        }
        match (&self.principal, scope.kind()) {
            (Principal::User { email, .. }, ScopeKind::User(owner)) => *email == owner,
            // Organization roles arrive with the organizations issue; until then only platform
            // admins administer organization scopes.
            _ => false,
        }
    }

    /// The actor recorded on events this caller causes.
    pub fn actor(&self) -> Actor {
        match &self.principal {
            Principal::User { email, key_id } => Actor::User {
                email: email.clone(),
                key_id: *key_id,
            },
            Principal::Device { device_id } => Actor::Device {
                device_id: device_id.clone(),
            },
        }
    }
}
