//! The audit trail's queries: who may read which records, and pages of them.

use m87_events::audit::{AuditPage, AuditQueryParams, MAX_PAGE};
use m87_events::{DomainEvent, Metadata, Role, Scope, StreamId};

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

    /// Counts a request refused for a missing or bad credential (recorded per address and
    /// minute by [`Self::record_auth_refusals`]).
    pub fn note_auth_refusal(&self, source: Option<std::net::IpAddr>, reason: &str) {
        self.auth_refusals.note(source, reason, chrono::Utc::now());
    }

    /// The window refused authentication is counted in.
    pub fn auth_refusal_window(&self) -> std::time::Duration {
        self.auth_refusals.window()
    }

    /// Records the refused authentication of every finished minute; returns how many events.
    pub async fn record_auth_refusals(&self) -> Result<usize, ServiceError> {
        let mut pending = self
            .auth_refusals
            .take_finished(chrono::Utc::now())
            .into_iter();
        let mut recorded = 0;
        while let Some(refused) = pending.next() {
            let metadata = Metadata {
                source_ip: refused.source.parse().ok(),
                ..Metadata::system("api")
            };
            let stream = StreamId::from_raw(format!("authrefused-{}", m87_events::EventId::new()));
            let event = DomainEvent::AuthenticationRefused(refused.clone());
            let stored = self
                .execute(&metadata, || {
                    let (stream, event) = (stream.clone(), event.clone());
                    async move { Ok(((), super::one(stream, 0, event))) }
                })
                .await;
            if let Err(e) = stored {
                // Nothing is lost: what was not recorded is counted again next time.
                self.auth_refusals
                    .put_back(std::iter::once(refused).chain(pending).collect());
                return Err(e);
            }
            recorded += 1;
        }
        Ok(recorded)
    }

    /// `POST /v1/auth/sign-in`: records that the caller signed in (`m87 login`), with the API
    /// key or the identity provider's subject they came with.
    pub async fn record_sign_in(
        &self,
        caller: &Identity,
        metadata: &Metadata,
    ) -> Result<m87_events::api::WhoAmI, ServiceError> {
        let Principal::User { email, key_id } = &caller.principal else {
            // A device key is not a sign-in; the CLI tells its user so.
            return Ok(self.whoami(caller));
        };
        let method = if key_id.is_some() { "api_key" } else { "oidc" };
        let event = DomainEvent::UserSignedIn(m87_events::domain::UserSignedIn {
            email: email.clone(),
            method: method.into(),
        });
        let stream = StreamId::from_raw(format!("signin-{}", m87_events::EventId::new()));
        self.execute(metadata, || {
            let (stream, event) = (stream.clone(), event.clone());
            async move { Ok(((), super::one(stream, 0, event))) }
        })
        .await?;
        Ok(self.whoami(caller))
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

    /// `GET /v1/audit/entries`: chained entries in order, rendered in a SIEM format, for
    /// one-off pulls (`m87 audit export`). Platform admins only: the entries are the raw log.
    pub async fn export_page(
        &self,
        caller: &Identity,
        params: &m87_events::audit::ExportParams,
    ) -> Result<m87_events::audit::ExportPage, ServiceError> {
        use m87_audit_export::Format;
        if !caller.platform_admin {
            return Err(DomainError::NotFound("audit export").into());
        }
        let format = match params.format.as_deref().unwrap_or("ocsf") {
            "ocsf" => Format::Ocsf,
            "ecs" => Format::Ecs,
            "cef" => Format::Cef,
            "json" => Format::Json,
            other => {
                return Err(DomainError::Validation(format!(
                    "unknown format {other:?}: use ocsf, ecs, cef or json"
                ))
                .into());
            }
        };
        let limit = params.max.unwrap_or(MAX_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(
                DomainError::Validation(format!("max must be between 1 and {MAX_PAGE}")).into(),
            );
        }
        self.audit.catch_up().await?;
        let store = self.audit.store();
        let after = match (params.after, params.since) {
            (Some(a), _) => a,
            (None, Some(t)) => match store.first_since(t).await? {
                Some(p) => p - 1,
                None => {
                    return Ok(m87_events::audit::ExportPage {
                        lines: vec![],
                        next_after: None,
                    });
                }
            },
            (None, None) => 0,
        };
        let stored = store.entries(after, limit).await?;
        let mut lines = Vec::with_capacity(stored.len());
        let mut last = None;
        for s in &stored {
            let Some(entry) = crate::audit::fold::entry_of(&s.entry, &s.prev_hash, &s.hash) else {
                continue;
            };
            if params
                .until
                .is_some_and(|u| entry.envelope.recorded_at >= u)
            {
                return Ok(m87_events::audit::ExportPage {
                    lines,
                    next_after: None,
                });
            }
            lines.push(m87_audit_export::format::to_line(format, &entry));
            last = Some(s.position);
        }
        let next_after = last.filter(|_| stored.len() == limit);
        Ok(m87_events::audit::ExportPage { lines, next_after })
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
