//! Who is calling: how keys are made, how a presented key becomes an [`Identity`], a user's
//! identity (scopes, roles, platform admin), and `whoami`.
//!
//! A key is a kind prefix (`m87u_` user, `m87d_` device) and 48 random hex characters. Only its
//! SHA-256 digest is stored; authentication looks the digest up in the `api_keys` read model.

use m87_events::api::WhoAmI;
use m87_events::{DeviceId, Email, KeyKind, Scope};
use rand::RngCore;

use super::{ControlPlane, ServiceError};
use crate::domain::{Identity, Principal, secret_digest};
use crate::projections::models::{API_KEYS, ApiKeyRow, KEY_HASHES, KeyHashRow, ORGS, OrgRow};

/// A freshly generated key: the secret, its digest and a hint to recognise it by.
#[derive(Debug)]
pub struct NewKey {
    /// The key itself; shown once, never stored.
    pub secret: String,
    /// SHA-256 of the key.
    pub digest: String,
    /// The first characters, for listings.
    pub hint: String,
}

/// Generates a key of `kind`.
pub fn generate_key(kind: KeyKind) -> NewKey {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{}{}", kind.prefix(), hex::encode(bytes));
    let hint = format!("{}…", &secret[..kind.prefix().len() + 4]);
    NewKey {
        digest: secret_digest(&secret),
        secret,
        hint,
    }
}

/// Generates a random secret of 64 hex characters (claim secrets).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

const INVALID: &str = "invalid api key";

impl ControlPlane {
    /// The identity behind a presented API key. Every failure is `Unauthenticated`, with the same
    /// answer for an unknown key and a malformed one.
    pub async fn authenticate(&self, presented: &str) -> Result<Identity, ServiceError> {
        let kind = if presented.starts_with(KeyKind::User.prefix()) {
            KeyKind::User
        } else if presented.starts_with(KeyKind::Device.prefix()) {
            KeyKind::Device
        } else {
            return Err(ServiceError::Unauthenticated(INVALID));
        };
        if presented.len() > 128 {
            return Err(ServiceError::Unauthenticated(INVALID));
        }
        let digest = secret_digest(presented);
        let Some(hash_doc) = self.read.get(KEY_HASHES, &digest).await? else {
            return Err(ServiceError::Unauthenticated(INVALID));
        };
        let key_id = serde_json::from_value::<KeyHashRow>(hash_doc)
            .map_err(|_| ServiceError::Unauthenticated(INVALID))?
            .key_id;
        let row: ApiKeyRow = match self.read.get(API_KEYS, &key_id.to_string()).await? {
            Some(doc) => {
                serde_json::from_value(doc).map_err(|_| ServiceError::Unauthenticated(INVALID))?
            }
            None => return Err(ServiceError::Unauthenticated(INVALID)),
        };
        if row.kind != kind {
            return Err(ServiceError::Unauthenticated(INVALID));
        }
        if row.revoked_at.is_some() {
            return Err(ServiceError::Unauthenticated(match kind {
                KeyKind::User => "api key has been revoked",
                KeyKind::Device => "device key is no longer valid: the device was removed",
            }));
        }
        match (kind, row.email, row.device_id) {
            (KeyKind::User, Some(email), _) => self.user_identity(email, Some(row.key_id)).await,
            (KeyKind::Device, _, Some(device_id)) => Ok(Identity {
                principal: Principal::Device { device_id },
                scopes: vec![],
                platform_admin: false,
                memberships: vec![],
            }),
            _ => Err(ServiceError::Unauthenticated(INVALID)),
        }
    }
}

impl ControlPlane {
    /// The identity of a user, however they proved it (API key now, OIDC token later): their
    /// own scope, their organizations' scopes and roles, and platform admin status.
    pub async fn user_identity(
        &self,
        email: Email,
        key_id: Option<m87_events::KeyId>,
    ) -> Result<Identity, ServiceError> {
        let mut memberships = Vec::new();
        for doc in self.read.list(ORGS).await? {
            if let Ok(org) = serde_json::from_value::<OrgRow>(doc)
                && let Some(role) = org.members.get(&email)
            {
                memberships.push((org.org_id, *role));
            }
        }
        let mut scopes = vec![Scope::user(&email)];
        scopes.extend(memberships.iter().map(|(o, _)| Scope::org(o)));
        Ok(Identity {
            platform_admin: self.settings.admin_emails.contains(&email),
            scopes,
            principal: Principal::User { email, key_id },
            memberships,
        })
    }

    /// Whether `email` is a platform admin.
    pub fn is_platform_admin(&self, email: &Email) -> bool {
        self.settings.admin_emails.contains(email)
    }

    /// The device behind a device key (relays authenticate tunnels with this).
    pub async fn authenticate_device(&self, api_key: &str) -> Result<DeviceId, ServiceError> {
        match self.authenticate(api_key).await?.principal {
            Principal::Device { device_id } => Ok(device_id),
            Principal::User { .. } => Err(ServiceError::Unauthenticated("not a device key")),
        }
    }

    /// `GET /v1/whoami`.
    pub fn whoami(&self, caller: &Identity) -> WhoAmI {
        match &caller.principal {
            Principal::User { email, .. } => WhoAmI {
                kind: "user".into(),
                email: Some(email.clone()),
                device_id: None,
                scopes: caller.scopes.clone(),
                platform_admin: caller.platform_admin,
                memberships: caller
                    .memberships
                    .iter()
                    .map(|(org_id, role)| m87_events::api::Membership {
                        org_id: org_id.clone(),
                        role: *role,
                    })
                    .collect(),
            },
            Principal::Device { device_id } => WhoAmI {
                kind: "device".into(),
                email: None,
                device_id: Some(device_id.clone()),
                scopes: vec![],
                platform_admin: false,
                memberships: vec![],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_kind_and_are_unique() {
        let a = generate_key(KeyKind::User);
        let b = generate_key(KeyKind::User);
        assert!(a.secret.starts_with("m87u_"));
        assert_eq!(a.secret.len(), 5 + 48);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.digest, secret_digest(&a.secret));
        assert!(generate_key(KeyKind::Device).secret.starts_with("m87d_"));
        assert!(a.hint.len() < a.secret.len());
    }
}
