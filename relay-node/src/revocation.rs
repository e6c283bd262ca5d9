//! Cutting off what was revoked: the relay follows the event feed; a removed device loses its
//! tunnel here at once, a revoked user's tokens and a revoked API key's tokens are refused, and
//! after every event that may take access away each open session is checked again
//! ([`AccessOracle`]) and ended when its user may no longer operate its device or the API key
//! its grant came through was revoked.

use std::sync::Arc;

use m87_events::DomainEvent;
use m87_events::admission::CREDENTIAL_REVOKED_REASON;
use m87_events::token::Credential;

use crate::{LiveSession, RelayHandle};

/// Decides whether open sessions may go on.
#[async_trait::async_trait]
pub trait AccessOracle: Send + Sync + 'static {
    /// For each session, whether it may go on: its user may still operate its device and the
    /// credential its grant came through was not revoked.
    async fn still_allowed(&self, sessions: &[LiveSession]) -> Vec<bool>;
}

/// Ends every open session whose user may no longer operate its device.
async fn end_sessions_without_access(oracle: &dyn AccessOracle, relay: &RelayHandle) {
    let sessions = relay.sessions();
    if sessions.is_empty() {
        return;
    }
    let allowed = oracle.still_allowed(&sessions).await;
    for (session, ok) in sessions.iter().zip(allowed) {
        if ok {
            continue;
        }
        let revoked_key = session
            .credential
            .filter(|c| relay.is_credential_revoked(c));
        if let Some(key) = revoked_key {
            // Only the key went: the user's other keys and sign-ins keep their tokens.
            tracing::info!(session = %session.session_id, subject = %session.subject, credential = %key, "credential revoked: ending the session");
            relay.close_session(session, "credential_revoked", CREDENTIAL_REVOKED_REASON);
        } else {
            tracing::info!(session = %session.session_id, subject = %session.subject, device = %session.device, "access revoked: ending the session");
            relay.end_session(
                session,
                "access_revoked",
                "access to this device was revoked",
            );
        }
    }
}

/// Follows the event feed until `stopping`: a removed device loses its tunnel on this relay at
/// once; whoever loses access loses their sessions here. After each event for which
/// `access_may_shrink` holds (the control plane's rule), every open session is checked again.
pub fn watch_revocations(
    mut feed: tokio::sync::broadcast::Receiver<m87_events::EventEnvelope>,
    relay: RelayHandle,
    oracle: Arc<dyn AccessOracle>,
    access_may_shrink: fn(&DomainEvent) -> bool,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let registry = relay.registry();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = feed.recv() => match event {
                    Ok(e) => {
                        if let DomainEvent::DeviceRemoved(r) = &e.event {
                            // Its sessions first, so their users learn why.
                            for s in relay.sessions().iter().filter(|s| s.device == r.device_id) {
                                relay.end_session(s, "device_removed", "the device was removed");
                            }
                        }
                        if let DomainEvent::DeviceRemoved(r) = &e.event
                            && registry.disconnect(&r.device_id, "the device was removed")
                        {
                            tracing::info!(device = %r.device_id, "removed device disconnected");
                        }
                        // Tokens already issued to a user who lost access are refused too.
                        if let DomainEvent::AccessRevoked(r) = &e.event {
                            let scope = r.scope.to_string();
                            if scope.starts_with("user:") {
                                relay.revoke(&r.device_id, &scope);
                            }
                        }
                        // So are the tokens granted through a revoked API key.
                        if let DomainEvent::ApiKeyRevoked(r) = &e.event {
                            relay.revoke_credential(Credential::ApiKey(r.key_id));
                        }
                        if access_may_shrink(&e.event) {
                            end_sessions_without_access(oracle.as_ref(), &relay).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Missed events might have revoked access: check every session.
                        tracing::warn!(missed = n, "revocation feed lagged; checking every session");
                        end_sessions_without_access(oracle.as_ref(), &relay).await;
                    }
                    Err(_) => return,
                },
                _ = stopping.changed() => return,
            }
        }
    });
}
