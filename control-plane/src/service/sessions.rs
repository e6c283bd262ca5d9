//! Sessions: granting signed tokens, recording how sessions end and who was refused, and the
//! presence of device tunnels.

use std::sync::{Arc, RwLock};

use chrono::Utc;
use m87_events::api::{
    CreateSessionRequest, DeviceTunnelConfig, RelayEndpoint, SessionClosedReport, SessionGrant,
};
use m87_events::domain::{DeviceConnected, DeviceDisconnected, SessionRefused};
use m87_events::token::{Credential, SessionClaims, SessionSigner, SessionVerifier};
use m87_events::{DeviceId, DomainEvent, Metadata, SessionId, StreamId};

use super::{ControlPlane, ServiceError, one};
use crate::domain::api_key::ApiKey;
use crate::domain::device::Device;
use crate::domain::session::{self, Session};
use crate::domain::{Aggregate, DomainError, Identity, Principal};
use crate::projections::models::{DEVICES, DeviceRow};

/// Why a grant was not given: refused by a rule (recorded; with whether the device is known),
/// or failed otherwise (offline, no relay, the store).
enum GrantError {
    Refused(DomainError, bool),
    Failed(ServiceError),
}

impl From<(DomainError, bool)> for GrantError {
    fn from((e, known): (DomainError, bool)) -> Self {
        GrantError::Refused(e, known)
    }
}

impl From<ServiceError> for GrantError {
    fn from(e: ServiceError) -> Self {
        GrantError::Failed(e)
    }
}

/// Which device tunnels are connected now.
pub trait PresenceView: Send + Sync {
    /// Whether the device's tunnel is connected to a relay.
    fn is_online(&self, device: &DeviceId) -> bool;

    /// The address (as in [`RelayEndpoint::address`]) of the relay holding the device's tunnel,
    /// when known: sessions are sent there first, which saves the relay-to-relay hop.
    fn relay_address(&self, _device: &DeviceId) -> Option<String> {
        None
    }
}

/// Presence told by two functions (whether a device is online; the address of the relay
/// holding it), for a presence registry that lives elsewhere.
pub struct PresenceFns<F, G>(pub F, pub G);

impl<F, G> PresenceView for PresenceFns<F, G>
where
    F: Fn(&DeviceId) -> bool + Send + Sync,
    G: Fn(&DeviceId) -> Option<String> + Send + Sync,
{
    fn is_online(&self, device: &DeviceId) -> bool {
        (self.0)(device)
    }

    fn relay_address(&self, device: &DeviceId) -> Option<String> {
        (self.1)(device)
    }
}

/// Presence when no relay runs: every device is offline.
#[derive(Debug, Default)]
pub struct NoPresence;

impl PresenceView for NoPresence {
    fn is_online(&self, _: &DeviceId) -> bool {
        false
    }
}

/// The signing key, the relays and the presence view.
pub struct SessionsConfig {
    signer: SessionSigner,
    relays: RwLock<Vec<RelayEndpoint>>,
    presence: RwLock<Arc<dyn PresenceView>>,
}

impl std::fmt::Debug for SessionsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsConfig").finish_non_exhaustive()
    }
}

impl SessionsConfig {
    /// With a signing key; no relays and no presence yet.
    pub fn new(signer: SessionSigner) -> Self {
        Self {
            signer,
            relays: RwLock::new(vec![]),
            presence: RwLock::new(Arc::new(NoPresence)),
        }
    }

    /// With a fresh, unsaved signing key (tests).
    pub fn ephemeral() -> Result<Self, m87_events::token::KeyError> {
        Ok(Self::new(SessionSigner::generate()?.0))
    }
}

/// Any one of `relays`, spread by the clock's nanoseconds (no need for a random generator).
fn pick_any(relays: &[RelayEndpoint]) -> Option<RelayEndpoint> {
    if relays.is_empty() {
        return None;
    }
    let nanos = Utc::now().timestamp_subsec_nanos() as usize;
    relays.get(nanos % relays.len()).cloned()
}

impl ControlPlane {
    /// Sets the relays sessions are sent to: the one holding the device when the presence view
    /// knows it, else any.
    pub fn set_relays(&self, relays: Vec<RelayEndpoint>) {
        *self
            .sessions
            .relays
            .write()
            .unwrap_or_else(|p| p.into_inner()) = relays;
    }

    /// Sets where presence comes from.
    pub fn set_presence(&self, presence: Arc<dyn PresenceView>) {
        *self
            .sessions
            .presence
            .write()
            .unwrap_or_else(|p| p.into_inner()) = presence;
    }

    /// Whether a device's tunnel is connected.
    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.sessions
            .presence
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_online(device)
    }

    /// The verifier for the tokens this control plane signs.
    pub fn session_verifier(&self) -> SessionVerifier {
        self.sessions.signer.verifier()
    }

    /// `manifest` signed with the session-signing key (`GET /v1/releases`): clients verify
    /// it with the same public key that verifies session tokens.
    pub fn sign_release(
        &self,
        manifest: &m87_events::release::Manifest,
    ) -> m87_events::release::SignedManifest {
        m87_events::release::SignedManifest::sign(&self.sessions.signer, manifest)
    }

    fn relays(&self) -> Vec<RelayEndpoint> {
        self.sessions
            .relays
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `POST /v1/devices/{id}/sessions`. A refusal (the caller may not operate the device, or
    /// no longer sees it) is recorded as a `SessionRefused` by `grant` before it is answered.
    pub async fn create_session(
        &self,
        caller: &Identity,
        device_id: &DeviceId,
        req: CreateSessionRequest,
        metadata: &Metadata,
    ) -> Result<SessionGrant, ServiceError> {
        let session_id = SessionId::new();
        let now = Utc::now();
        let relays = self.relays();
        let preferred = self
            .sessions
            .presence
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .relay_address(device_id);
        let relay = preferred
            .and_then(|a| relays.iter().find(|r| r.address == a).cloned())
            .or_else(|| pick_any(&relays));
        let result = self
            .execute_with(metadata, || {
                let args = req.args.clone();
                let relay = relay.clone();
                async move {
                    let (events, _) = self
                        .load(&StreamId::device(device_id))
                        .await
                        .map_err(GrantError::Failed)?;
                    let device = Device::from_events(&events);
                    let event =
                        session::decide_open(&device, caller, session_id, req.operation, args, now)
                            .map_err(|e| (e, device.enrollment.is_some()))?;
                    let policy = self
                        .recording_policy(&device)
                        .await
                        .map_err(GrantError::Failed)?;
                    let mut event = crate::domain::recording::mark(event, &policy);
                    if !self.is_online(device_id) {
                        return Err(GrantError::Failed(
                            DomainError::DeviceOffline(self.last_seen_text(device_id).await).into(),
                        ));
                    }
                    let Some(relay) = relay else {
                        return Err(GrantError::Failed(ServiceError::NoRelay));
                    };
                    if let DomainEvent::SessionOpened(o) = &mut event {
                        o.relay = Some(relay.address);
                    }
                    Ok((
                        (event.clone(), policy.source),
                        one(StreamId::session(&session_id), 0, event),
                    ))
                }
            })
            .await;
        let (opened, policy_source) = match result {
            Ok(((DomainEvent::SessionOpened(opened), source), _)) => (opened, source),
            Ok(_) => return Err(ServiceError::Contention),
            Err(GrantError::Refused(e, known)) => {
                if known {
                    self.record_grant_refusal(device_id, session_id, req.operation, &e, metadata)
                        .await;
                }
                return Err(e.into());
            }
            Err(GrantError::Failed(e)) => return Err(e),
        };
        let relay = relay.ok_or(ServiceError::NoRelay)?;
        let claims = SessionClaims {
            sid: session_id,
            sub: caller.actor().to_string(),
            dev: device_id.clone(),
            op: opened.operation,
            args: opened.args.clone(),
            iat: now.timestamp(),
            exp: opened.expires_at.timestamp(),
            cred: opened.credential,
            rec: opened.recorded,
        };
        Ok(SessionGrant {
            session_id,
            token: self.sessions.signer.sign(&claims),
            expires_at: opened.expires_at,
            relay,
            relays,
            recorded: opened.recorded,
            recording_policy: opened.recorded.then_some(policy_source),
        })
    }

    /// Records that the grant refused a session on a device that exists (a stranger's guess
    /// at an id that never existed is answered, not recorded).
    async fn record_grant_refusal(
        &self,
        device_id: &DeviceId,
        session_id: SessionId,
        operation: m87_events::token::Operation,
        error: &DomainError,
        metadata: &Metadata,
    ) {
        let (code, reason) = match error {
            DomainError::Forbidden(why) => ("forbidden", why.clone()),
            DomainError::NotFound(_) => (
                "no_access",
                "the caller cannot see this device (no access, or access revoked)".to_owned(),
            ),
            other => ("invalid", other.to_string()),
        };
        let refusal = SessionRefused {
            session_id: Some(session_id),
            device_id: Some(device_id.clone()),
            refused_by: "grant".into(),
            code: code.into(),
            reason,
            operation: Some(operation),
        };
        if let Err(e) = self.record_refusal(refusal, metadata).await {
            tracing::warn!(error = %e, "cannot record a refused grant");
        }
    }

    async fn last_seen_text(&self, device_id: &DeviceId) -> String {
        let row = self
            .read
            .get(DEVICES, device_id.as_str())
            .await
            .ok()
            .flatten()
            .and_then(|d| serde_json::from_value::<DeviceRow>(d).ok());
        match row.and_then(|r| r.last_seen) {
            Some(t) => format!("last seen {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
            None => "never connected".into(),
        }
    }

    /// `GET /v1/device/tunnel`.
    pub fn tunnel_config(&self, caller: &Identity) -> Result<DeviceTunnelConfig, ServiceError> {
        if !matches!(caller.principal, Principal::Device { .. }) {
            return Err(DomainError::Forbidden("only devices fetch tunnel settings".into()).into());
        }
        Ok(DeviceTunnelConfig {
            relays: self.relays(),
            session_public_key: self.sessions.signer.public_key(),
        })
    }

    /// `POST /v1/device/sessions/{id}/closed`.
    pub async fn close_session(
        &self,
        caller: &Identity,
        session_id: SessionId,
        report: SessionClosedReport,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        let Principal::Device { device_id } = &caller.principal else {
            return Err(DomainError::NotFound("session").into());
        };
        self.execute(metadata, || {
            let report = report.clone();
            async move {
                let (events, version) = self.load(&StreamId::session(&session_id)).await?;
                let event =
                    session::decide_close(&Session::from_events(&events), device_id, report)?;
                Ok(((), one(StreamId::session(&session_id), version, event)))
            }
        })
        .await?;
        Ok(())
    }

    /// Records a refused session (by a relay, or by a device through the API).
    pub async fn record_refusal(
        &self,
        refusal: SessionRefused,
        metadata: &Metadata,
    ) -> Result<(), ServiceError> {
        // A refusal with a known session goes on that session's stream; else on its own.
        let stream = match refusal.session_id {
            Some(sid) => StreamId::session(&sid),
            None => StreamId::from_raw(format!("refusal-{}", m87_events::EventId::new())),
        };
        tracing::warn!(by = %refusal.refused_by, code = %refusal.code, reason = %refusal.reason, "session refused");
        self.execute(metadata, || {
            let (stream, refusal) = (stream.clone(), refusal.clone());
            async move {
                let (_, version) = self.load(&stream).await?;
                Ok((
                    (),
                    one(stream, version, DomainEvent::SessionRefused(refusal)),
                ))
            }
        })
        .await?;
        Ok(())
    }

    /// Records a device tunnel reaching or leaving a relay.
    pub async fn record_presence(
        &self,
        device_id: &DeviceId,
        relay_id: &str,
        connected: Option<String>,
        disconnected: Option<String>,
    ) -> Result<(), ServiceError> {
        let metadata = Metadata::system("relay");
        let event = match (connected, disconnected) {
            (Some(remote_addr), _) => DomainEvent::DeviceConnected(DeviceConnected {
                device_id: device_id.clone(),
                relay_id: relay_id.to_owned(),
                remote_addr,
            }),
            (None, reason) => DomainEvent::DeviceDisconnected(DeviceDisconnected {
                device_id: device_id.clone(),
                relay_id: relay_id.to_owned(),
                reason: reason.unwrap_or_default(),
            }),
        };
        let stream = StreamId::presence(device_id);
        self.execute(&metadata, || {
            let (stream, event) = (stream.clone(), event.clone());
            async move {
                let (_, version) = self.load(&stream).await?;
                Ok(((), one(stream, version, event)))
            }
        })
        .await?;
        Ok(())
    }

    /// For each (subject, device, credential), whether the session may go on (see
    /// [`Self::may_operate`]), judged on read models brought up to date first: the relay asks
    /// right after an event that may take access away, which the projections may not have
    /// applied yet (a membership removal read from a stale model would let the session run).
    pub async fn may_operate_all(
        &self,
        checks: &[(&str, &DeviceId, Option<&Credential>)],
    ) -> Vec<bool> {
        if let Err(e) = self.projector.catch_up().await {
            tracing::warn!(error = %e, "read models could not catch up before an access check");
        }
        let mut out = Vec::with_capacity(checks.len());
        for (subject, device, credential) in checks {
            out.push(self.may_operate(subject, device, *credential).await);
        }
        out
    }

    /// Whether a session of `subject` (as in a session token: `user:<email>`) on `device`,
    /// granted through `credential`, may go on: the credential was not revoked and the subject
    /// may still operate the device.
    pub async fn may_operate(
        &self,
        subject: &str,
        device: &DeviceId,
        credential: Option<&Credential>,
    ) -> bool {
        if let Some(credential) = credential
            && self.is_revoked(credential).await
        {
            return false;
        }
        let Some(email) = subject
            .strip_prefix("user:")
            .and_then(|e| e.parse::<m87_events::Email>().ok())
        else {
            return false;
        };
        let Ok(identity) = self.user_identity(email, None).await else {
            return false;
        };
        let Ok((events, _)) = self.load(&StreamId::device(device)).await else {
            return false;
        };
        let device = Device::from_events(&events);
        match &device.enrollment {
            Some(e) if !device.removed => {
                identity.can_operate(&e.owner_scope, &device.allowed_scopes)
            }
            _ => false,
        }
    }

    /// Whether `credential` was revoked, read from its stream (the source of truth: the read
    /// model may not have caught up with the event that made a relay ask). Unknown means
    /// revoked.
    async fn is_revoked(&self, credential: &Credential) -> bool {
        match credential {
            Credential::ApiKey(key) => match self.load(&StreamId::api_key(key)).await {
                Ok((events, _)) => {
                    let key = ApiKey::from_events(&events);
                    key.revoked || key.created.is_none()
                }
                Err(_) => true,
            },
        }
    }
}
