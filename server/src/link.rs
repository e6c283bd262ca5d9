//! The relay's link to the control plane when both run in one process: device checks, presence,
//! refusals and access checks go straight to the control plane's service.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use m87_control_plane::service::ControlPlane;
use m87_control_plane::service::sessions::PresenceView;
use m87_events::domain::SessionRefused;
use m87_events::{DeviceId, Metadata, SessionId};
use m87_relay_node::revocation::AccessOracle;
use m87_relay_node::{ControlPlaneLink, LiveSession, Registry};

/// Calls the control plane's service directly.
pub struct InProcessLink {
    cp: ControlPlane,
    relay_id: String,
}

impl InProcessLink {
    /// A link for the relay `relay_id`.
    pub fn new(cp: ControlPlane, relay_id: String) -> Self {
        Self { cp, relay_id }
    }
}

#[async_trait]
impl ControlPlaneLink for InProcessLink {
    async fn authenticate_device(&self, api_key: &str) -> Result<DeviceId, String> {
        self.cp
            .authenticate_device(api_key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn device_connected(&self, device: &DeviceId, remote: SocketAddr) {
        if let Err(e) = self
            .cp
            .record_presence(device, &self.relay_id, Some(remote.to_string()), None)
            .await
        {
            tracing::warn!(error = %e, "cannot record a device connection");
        }
    }

    async fn device_disconnected(&self, device: &DeviceId, reason: &str) {
        if let Err(e) = self
            .cp
            .record_presence(device, &self.relay_id, None, Some(reason.to_owned()))
            .await
        {
            tracing::warn!(error = %e, "cannot record a device disconnection");
        }
    }

    async fn session_refused(
        &self,
        session: Option<SessionId>,
        device: Option<DeviceId>,
        code: &str,
        reason: &str,
    ) {
        let refusal = SessionRefused {
            session_id: session,
            device_id: device,
            refused_by: "relay".into(),
            code: code.to_owned(),
            reason: reason.to_owned(),
            operation: None,
        };
        if let Err(e) = self
            .cp
            .record_refusal(refusal, &Metadata::system("relay"))
            .await
        {
            tracing::warn!(error = %e, "cannot record a refused session");
        }
    }
}

/// Presence from the relay's registry.
pub struct RegistryPresence(pub Arc<Registry>);

impl PresenceView for RegistryPresence {
    fn is_online(&self, device: &DeviceId) -> bool {
        self.0.contains(device)
    }
}

/// Access checks answered by the control plane's service directly.
pub struct ServiceOracle(pub ControlPlane);

#[async_trait]
impl AccessOracle for ServiceOracle {
    async fn still_allowed(&self, sessions: &[LiveSession]) -> Vec<bool> {
        let checks: Vec<_> = sessions
            .iter()
            .map(|s| (s.subject.as_str(), &s.device, s.credential.as_ref()))
            .collect();
        self.0.may_operate_all(&checks).await
    }
}
