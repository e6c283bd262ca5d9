//! Organizations: commands and queries.

use m87_events::api::{CreateOrgRequest, MemberSummary, OrgSummary};
use m87_events::{DomainEvent, Email, Metadata, OrgId, Role, StreamId};

use super::{ControlPlane, ServiceError};
use crate::domain::org::{self, Org};
use crate::domain::{Aggregate, DomainError, Identity};
use crate::projections::models::{ORGS, OrgRow};
use crate::store::StreamAppend;

fn batch(org_id: &OrgId, version: u64, events: Vec<DomainEvent>) -> Vec<StreamAppend> {
    vec![StreamAppend {
        stream_id: StreamId::org(org_id),
        expected_version: version,
        events,
    }]
}

impl ControlPlane {
    async fn load_org(&self, org_id: &OrgId) -> Result<(Org, u64), ServiceError> {
        let (events, version) = self.load(&StreamId::org(org_id)).await?;
        Ok((Org::from_events(&events), version))
    }

    /// `POST /v1/orgs`.
    pub async fn create_org(
        &self,
        caller: &Identity,
        req: CreateOrgRequest,
        metadata: &Metadata,
    ) -> Result<OrgSummary, ServiceError> {
        let (events, _) = self
            .execute(metadata, || {
                let req = req.clone();
                async move {
                    let (org, version) = self.load_org(&req.id).await?;
                    let events = org::decide_create(&org, caller, &req.id, req.name.as_deref())?;
                    Ok((events.clone(), batch(&req.id, version, events)))
                }
            })
            .await?;
        let name = match events.first() {
            Some(DomainEvent::OrgCreated(c)) => c.name.clone(),
            _ => req.id.to_string(),
        };
        Ok(OrgSummary {
            id: req.id,
            name,
            role: Some(Role::Admin),
            members: 1,
        })
    }

    /// `DELETE /v1/orgs/{id}`.
    pub async fn delete_org(
        &self,
        caller: &Identity,
        org_id: &OrgId,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        self.execute(metadata, || async move {
            let (org, version) = self.load_org(org_id).await?;
            let event = org::decide_delete(&org, caller)?;
            Ok(((), batch(org_id, version, vec![event])))
        })
        .await?;
        Ok(())
    }

    /// `POST /v1/orgs/{id}/members`, `DELETE …/{email}`, `PUT …/{email}`: `role` None removes.
    pub async fn change_member(
        &self,
        caller: &Identity,
        org_id: &OrgId,
        email: &Email,
        change: MemberChange,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        self.execute(metadata, || async move {
            let (org, version) = self.load_org(org_id).await?;
            let events = match change {
                MemberChange::Add(role) => vec![org::decide_add(&org, caller, email, role)?],
                MemberChange::Remove => vec![org::decide_remove(&org, caller, email)?],
                MemberChange::Role(role) => org::decide_role(&org, caller, email, role)?
                    .into_iter()
                    .collect(),
            };
            let appends = if events.is_empty() {
                vec![]
            } else {
                batch(org_id, version, events)
            };
            Ok(((), appends))
        })
        .await?;
        Ok(())
    }

    async fn org_rows(&self) -> Result<Vec<OrgRow>, ServiceError> {
        Ok(self
            .read
            .list(ORGS)
            .await?
            .into_iter()
            .filter_map(|d| serde_json::from_value(d).ok())
            .collect())
    }

    /// `GET /v1/orgs`: the caller's organizations (all of them for platform admins).
    pub async fn list_orgs(&self, caller: &Identity) -> Result<Vec<OrgSummary>, ServiceError> {
        let Some(email) = caller.email() else {
            return Err(DomainError::Forbidden("devices have no organizations".into()).into());
        };
        Ok(self
            .org_rows()
            .await?
            .into_iter()
            .filter(|o| caller.platform_admin || o.members.contains_key(email))
            .map(|o| OrgSummary {
                role: o.members.get(email).copied(),
                members: o.members.len(),
                id: o.org_id,
                name: o.name,
            })
            .collect())
    }

    /// `GET /v1/orgs/{id}/members`: for members of the organization and platform admins.
    pub async fn list_members(
        &self,
        caller: &Identity,
        org_id: &OrgId,
    ) -> Result<Vec<MemberSummary>, ServiceError> {
        let org = self
            .org_rows()
            .await?
            .into_iter()
            .find(|o| &o.org_id == org_id)
            .filter(|o| {
                caller.platform_admin || caller.email().is_some_and(|e| o.members.contains_key(e))
            })
            .ok_or(DomainError::NotFound("organization"))?;
        Ok(org
            .members
            .into_iter()
            .map(|(email, role)| MemberSummary { email, role })
            .collect())
    }
}

/// What to do to a membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Add with this role.
    Add(Role),
    /// Remove.
    Remove,
    /// Change to this role.
    Role(Role),
}
