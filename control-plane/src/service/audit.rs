//! The audit trail's queries: who may read which records, and pages of them.

use m87_events::audit::{AuditPage, AuditQueryParams, MAX_PAGE};
use m87_events::{Role, Scope};

use super::{ControlPlane, ServiceError};
use crate::audit::AuditTrail;
use crate::domain::{DomainError, Identity, Principal};
use crate::store::audit::{AuditQuery, Visibility};

/// Records per page when the caller does not say.
pub const DEFAULT_PAGE: usize = 100;

/// What a caller may read: platform admins everything; others the records in their own scope
/// (devices they own, their API keys), in the organizations they administer, and their own.
pub fn visibility(caller: &Identity) -> Result<Visibility, DomainError> {
    let Principal::User { email, .. } = &caller.principal else {
        return Err(DomainError::NotFound("audit trail"));
    };
    if caller.platform_admin {
        return Ok(Visibility::All);
    }
    let mut scopes = vec![Scope::user(email).to_string()];
    scopes.extend(
        caller
            .memberships
            .iter()
            .filter(|(_, role)| *role == Role::Admin)
            .map(|(org, _)| Scope::org(org).to_string()),
    );
    Ok(Visibility::Scoped {
        scopes,
        user: email.to_string(),
    })
}

impl ControlPlane {
    /// The audit trail.
    pub fn audit_trail(&self) -> &AuditTrail {
        &self.audit
    }

    /// Starts exporting the audit trail to the sinks of `config` (once per process).
    pub fn start_export(
        &self,
        config: &m87_audit_export::SinksConfig,
        lease: Option<std::sync::Arc<dyn m87_audit_export::Lease>>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let handle = crate::audit::export::start(config, &self.audit, lease, shutdown)?;
        self.exporter
            .set(handle)
            .map_err(|_| anyhow::anyhow!("the audit export was already started"))
    }

    /// `GET /v1/audit/export`: each sink's cursor, lag and counts (platform admins only; no
    /// secret is in it).
    ///
    /// The lag is measured against the trail as it is now: records past the sink's cursor,
    /// and the age of the oldest of them.
    pub async fn export_status(
        &self,
        caller: &Identity,
    ) -> Result<Vec<m87_audit_export::SinkStatus>, ServiceError> {
        if !caller.platform_admin {
            return Err(DomainError::NotFound("audit export").into());
        }
        let Some(handle) = self.exporter.get() else {
            return Ok(vec![]);
        };
        let head = self.audit.catch_up().await?;
        let mut sinks = handle.status();
        for s in &mut sinks {
            s.head = head;
            s.lag_records = head.saturating_sub(s.cursor);
            s.lag_seconds = match self.audit.store().entries(s.cursor, 1).await?.first() {
                Some(next) => crate::audit::fold::entry_of(&next.entry, "", "")
                    .map(|e| (chrono::Utc::now() - e.envelope.recorded_at).num_milliseconds())
                    .map_or(0.0, |ms| ms.max(0) as f64 / 1000.0),
                None => 0.0,
            };
        }
        Ok(sinks)
    }

    /// `GET /v1/audit`: a page of the records the caller may read.
    pub async fn audit_page(
        &self,
        caller: &Identity,
        params: &AuditQueryParams,
    ) -> Result<AuditPage, ServiceError> {
        let visibility = visibility(caller)?;
        let limit = params.max.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(
                DomainError::Validation(format!("max must be between 1 and {MAX_PAGE}")).into(),
            );
        }
        if let (Some(s), Some(u)) = (params.since, params.until)
            && s >= u
        {
            return Err(DomainError::Validation("since must be before until".into()).into());
        }
        let actions = params.actions().map_err(DomainError::Validation)?;
        let query = AuditQuery {
            visibility,
            device: params.device.clone(),
            user: params.user.clone(),
            actions,
            outcome: params.outcome,
            since: params.since,
            until: params.until,
            before: params.before,
            changed_after: params.changed_after,
            limit,
        };
        // Answer from an up-to-date trail: what the caller just did is in it.
        let head = self.audit.catch_up().await?;
        let records = self.audit.store().query(&query).await?;
        let next_before = match (params.changed_after, records.last()) {
            (None, Some(last)) if records.len() == limit => Some(last.position),
            _ => None,
        };
        Ok(AuditPage {
            records,
            next_before,
            head,
        })
    }
}
