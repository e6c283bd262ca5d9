//! User API keys: created for a user, shown once, kept only as a digest, revocable.

use m87_events::domain::{ApiKeyCreated, ApiKeyRevoked};
use m87_events::{DomainEvent, Email, KeyId};

use super::{Aggregate, DomainError, Identity};

/// Longest key label accepted.
pub const MAX_NAME_LEN: usize = 64;

/// The API key aggregate, folded from its stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiKey {
    /// The key as created.
    pub created: Option<ApiKeyCreated>,
    /// Whether it was revoked.
    pub revoked: bool,
}

impl Aggregate for ApiKey {
    /// Folds one event into the state.
    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::ApiKeyCreated(e) => self.created = Some(e.clone()),
            DomainEvent::ApiKeyRevoked(_) => self.revoked = true,
            _ => {}
        }
    }
}

/// `CreateApiKey`: the caller asks for a key acting as `email` (default: themselves).
/// `key_hash` and `key_hint` come from the freshly generated key.
pub fn decide_create(
    caller: &Identity,
    email: Option<&Email>,
    name: Option<&str>,
    key_id: KeyId,
    key_hash: String,
    key_hint: String,
) -> Result<DomainEvent, DomainError> {
    let Some(own) = caller.email() else {
        return Err(DomainError::Forbidden(
            "devices cannot create api keys".into(),
        ));
    };
    let email = email.unwrap_or(own);
    if email != own && !caller.platform_admin {
        return Err(DomainError::Forbidden(
            "only platform admins may create api keys for other users".into(),
        ));
    }
    let name = name.unwrap_or("").trim();
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(DomainError::Validation(format!(
            "api key name must be at most {MAX_NAME_LEN} printable characters"
        )));
    }
    Ok(DomainEvent::ApiKeyCreated(ApiKeyCreated {
        key_id,
        email: email.clone(),
        name: name.to_owned(),
        key_hash,
        key_hint,
        bootstrap: false,
    }))
}

/// `RevokeApiKey`: the key's owner or a platform admin; anyone else is told it does not exist.
pub fn decide_revoke(key: &ApiKey, caller: &Identity) -> Result<DomainEvent, DomainError> {
    let created = match &key.created {
        Some(c) if caller.platform_admin || caller.email() == Some(&c.email) => c,
        _ => return Err(DomainError::NotFound("api key")),
    };
    if key.revoked {
        return Err(DomainError::AlreadyRevoked);
    }
    Ok(DomainEvent::ApiKeyRevoked(ApiKeyRevoked {
        key_id: created.key_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_support::{admin, user};

    fn create(caller: &Identity, email: Option<&str>) -> Result<DomainEvent, DomainError> {
        let email: Option<Email> = email.map(|e| e.parse().unwrap());
        decide_create(
            caller,
            email.as_ref(),
            Some("ci"),
            KeyId::new(),
            "h".into(),
            "m87u_ab".into(),
        )
    }

    #[test]
    fn users_create_keys_for_themselves_only() {
        let alice = user("alice@example.com");
        let DomainEvent::ApiKeyCreated(k) = create(&alice, None).unwrap() else {
            panic!()
        };
        assert_eq!(k.email.as_str(), "alice@example.com");
        assert!(create(&alice, Some("alice@example.com")).is_ok());
        assert!(matches!(
            create(&alice, Some("bob@example.com")).unwrap_err(),
            DomainError::Forbidden(_)
        ));
        assert!(create(&admin("root@example.com"), Some("bob@example.com")).is_ok());
    }

    #[test]
    fn revoke_rules() {
        let alice = user("alice@example.com");
        let created = create(&alice, None).unwrap();
        let mut key = ApiKey::from_events([&created]);
        assert_eq!(
            decide_revoke(&key, &user("bob@example.com")).unwrap_err(),
            DomainError::NotFound("api key")
        );
        key.apply(&decide_revoke(&key, &alice).unwrap());
        assert_eq!(
            decide_revoke(&key, &alice).unwrap_err(),
            DomainError::AlreadyRevoked
        );
        assert!(decide_revoke(&ApiKey::default(), &admin("r@example.com")).is_err());
    }
}
