//! User API keys: creation (shown once), revocation, the bootstrap admin key, and listing.

use chrono::Utc;
use m87_events::api::{ApiKeySummary, CreateApiKeyRequest, CreatedApiKey};
use m87_events::domain::ApiKeyCreated;
use m87_events::{DomainEvent, KeyId, KeyKind, Metadata, StreamId};

use super::auth::generate_key;
use super::{ControlPlane, ServiceError, one, parse_all};
use crate::domain::api_key::{self, ApiKey};
use crate::domain::{Aggregate, DomainError, Identity};
use crate::projections::models::{API_KEYS, ApiKeyRow};

impl ControlPlane {
    /// `POST /v1/api-keys`.
    pub async fn create_api_key(
        &self,
        caller: &Identity,
        req: CreateApiKeyRequest,
        metadata: &Metadata,
    ) -> Result<CreatedApiKey, ServiceError> {
        let key = generate_key(KeyKind::User);
        let key_id = KeyId::new();
        let (event, stored) = self
            .execute(metadata, || {
                let (req, key) = (&req, &key);
                async move {
                    let event = api_key::decide_create(
                        caller,
                        req.email.as_ref(),
                        req.name.as_deref(),
                        key_id,
                        key.digest.clone(),
                        key.hint.clone(),
                    )?;
                    Ok((event.clone(), one(StreamId::api_key(&key_id), 0, event)))
                }
            })
            .await?;
        let DomainEvent::ApiKeyCreated(created) = event else {
            return Err(ServiceError::Contention);
        };
        Ok(CreatedApiKey {
            id: key_id,
            key: key.secret,
            email: created.email,
            name: created.name,
            created_at: stored
                .first()
                .map(|e| e.recorded_at)
                .unwrap_or_else(Utc::now),
        })
    }

    /// `DELETE /v1/api-keys/{id}`.
    pub async fn revoke_api_key(
        &self,
        caller: &Identity,
        key_id: KeyId,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        self.execute(metadata, || async move {
            let (events, version) = self.load(&StreamId::api_key(&key_id)).await?;
            let event = api_key::decide_revoke(&ApiKey::from_events(&events), caller)?;
            Ok(((), one(StreamId::api_key(&key_id), version, event)))
        })
        .await?;
        Ok(())
    }

    /// Creates the platform admin's first key unless one was made before. Returns the key when
    /// it made one.
    pub async fn bootstrap_admin_key(&self) -> Result<Option<String>, ServiceError> {
        let existing = self.read.list(API_KEYS).await?;
        let already = existing
            .into_iter()
            .filter_map(|d| serde_json::from_value::<ApiKeyRow>(d).ok())
            .any(|k| k.bootstrap);
        if already {
            return Ok(None);
        }
        let Some(email) = self.settings.admin_emails.first().cloned() else {
            return Ok(None);
        };
        let key = generate_key(KeyKind::User);
        let key_id = KeyId::new();
        let event = DomainEvent::ApiKeyCreated(ApiKeyCreated {
            key_id,
            email,
            name: "bootstrap admin key".into(),
            key_hash: key.digest.clone(),
            key_hint: key.hint.clone(),
            bootstrap: true,
        });
        let metadata = Metadata::system("bootstrap");
        self.execute(&metadata, || {
            let event = event.clone();
            async move { Ok(((), one(StreamId::api_key(&key_id), 0, event))) }
        })
        .await?;
        Ok(Some(key.secret))
    }

    /// The caller's own user API keys; every user key for platform admins.
    pub async fn list_api_keys(
        &self,
        caller: &Identity,
    ) -> Result<Vec<ApiKeySummary>, ServiceError> {
        let Some(email) = caller.email() else {
            return Err(DomainError::Forbidden("devices cannot list api keys".into()).into());
        };
        let mut keys: Vec<ApiKeySummary> = parse_all::<ApiKeyRow>(self.read.list(API_KEYS).await?)
            .into_iter()
            .filter(|k| k.kind == KeyKind::User)
            .filter(|k| caller.platform_admin || k.email.as_ref() == Some(email))
            .filter_map(|k| {
                Some(ApiKeySummary {
                    id: k.key_id,
                    email: k.email?,
                    name: k.name,
                    hint: k.hint,
                    created_at: k.created_at,
                    revoked_at: k.revoked_at,
                })
            })
            .collect();
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }
}
