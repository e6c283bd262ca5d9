//! The relay's shared state, with one owner: [`RelayState`], a cheap cloneable handle that every
//! connection handler holds, with methods for what handlers do to the state. The fields stay
//! private to this module; the live sessions and the UDP flows each sit in a table type
//! ([`SessionTable`], [`FlowTable`]) rather than a bare map under a lock.
//!
//! Each table is a short-held `std` mutex, as before: the per-datagram lookup of a flow's owner
//! takes one lock and no channel, and the splice of a stream's bytes touches no shared state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use m87_events::admission::{self, AdmissionState, Refusal};
use m87_events::token::{Credential, SessionClaims, SessionVerifier, now_unix};
use m87_events::{DeviceId, SessionId};

use crate::gate::Gate;
use crate::links::Fleet;
use crate::registry::Registry;
use crate::route::FlowOwner;
use crate::{ControlPlaneLink, LiveSession};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handle to the relay's shared state (cheap to clone).
#[derive(Clone)]
pub(crate) struct RelayState {
    inner: Arc<Inner>,
}

struct Inner {
    relay_id: String,
    verifier: SessionVerifier,
    link: Arc<dyn ControlPlaneLink>,
    registry: Arc<Registry>,
    /// Session ids already used, revoked accesses and credentials, and the relay's start
    /// (tokens issued before it are refused: the ids seen before then are gone).
    admission: Mutex<AdmissionState>,
    /// Client connections (or links) owning UDP flows.
    flows: FlowTable,
    /// Open client sessions.
    sessions: SessionTable,
    /// The relay's endpoint (links to other relays are dialled from it).
    endpoint: quinn::Endpoint,
    /// Fleet mode.
    fleet: Option<Fleet>,
    /// Connections not yet authenticated.
    gate: Gate,
}

impl RelayState {
    /// The state of a relay starting with no tunnel, session or flow.
    pub(crate) fn new(
        relay_id: String,
        verifier: SessionVerifier,
        link: Arc<dyn ControlPlaneLink>,
        endpoint: quinn::Endpoint,
        fleet: Option<Fleet>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                relay_id,
                verifier,
                link,
                registry: Arc::new(Registry::default()),
                admission: Mutex::new(AdmissionState::since(now_unix())),
                flows: FlowTable::default(),
                sessions: SessionTable::default(),
                endpoint,
                fleet,
                gate: Gate::default(),
            }),
        }
    }

    /// This relay's id.
    pub(crate) fn relay_id(&self) -> &str {
        &self.inner.relay_id
    }

    /// The way to the control plane.
    pub(crate) fn link(&self) -> &dyn ControlPlaneLink {
        self.inner.link.as_ref()
    }

    /// The connected device tunnels.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The relay's endpoint.
    pub(crate) fn endpoint(&self) -> &quinn::Endpoint {
        &self.inner.endpoint
    }

    /// Fleet mode (None on one machine).
    pub(crate) fn fleet(&self) -> Option<&Fleet> {
        self.inner.fleet.as_ref()
    }

    /// The open client sessions.
    pub(crate) fn sessions(&self) -> &SessionTable {
        &self.inner.sessions
    }

    /// The count of connections not yet authenticated.
    pub(crate) fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    /// The owners of UDP flows.
    pub(crate) fn flows(&self) -> &FlowTable {
        &self.inner.flows
    }

    /// Decides whether the session `token` asks for is admitted at `now` (Unix seconds); on
    /// admission its session id counts as used.
    pub(crate) fn admit(&self, token: &str, now: i64) -> Result<SessionClaims, Refusal> {
        let mut state = lock(&self.inner.admission);
        admission::admit(&self.inner.verifier, &mut state, token, None, now)
    }

    /// Refuses tokens issued up to `now` for `subject` on `device`.
    pub(crate) fn revoke(&self, device: &DeviceId, subject: &str, now: i64) {
        lock(&self.inner.admission)
            .revoked
            .revoke(device, subject, now);
    }

    /// Refuses every token granted through `credential`, revoked at `now`.
    pub(crate) fn revoke_credential(&self, credential: Credential, now: i64) {
        lock(&self.inner.admission)
            .revoked
            .revoke_credential(credential, now);
    }

    /// Whether `credential` was revoked.
    pub(crate) fn is_credential_revoked(&self, credential: &Credential) -> bool {
        lock(&self.inner.admission)
            .revoked
            .is_credential_revoked(credential)
    }
}

/// The open client sessions, by id.
#[derive(Default)]
pub(crate) struct SessionTable {
    live: Mutex<HashMap<SessionId, LiveSession>>,
}

impl SessionTable {
    /// Adds an open session.
    pub(crate) fn insert(&self, session: LiveSession) {
        lock(&self.live).insert(session.session_id, session);
    }

    /// Removes an ended session.
    pub(crate) fn remove(&self, session: &SessionId) {
        lock(&self.live).remove(session);
    }

    /// The open sessions.
    pub(crate) fn list(&self) -> Vec<LiveSession> {
        lock(&self.live).values().cloned().collect()
    }
}

/// Who receives the datagrams of each UDP flow, by device and flow id. A flow is bound to the
/// client session (or link) whose stream the device's `ChannelAccepted { flow }` came back on;
/// a client may send datagrams only on the flows bound to it ([`FlowTable::check_client`]).
#[derive(Default)]
pub(crate) struct FlowTable {
    owners: Mutex<HashMap<(DeviceId, u32), FlowOwner>>,
    /// Client datagrams dropped because their flow was not the client's own.
    foreign: AtomicU64,
}

impl FlowTable {
    /// Whether the client connection `conn` owns `device`'s `flow`. When it does not (a flow of
    /// another session, or no flow at all), the datagram is counted as foreign and the
    /// relay-wide count returned as the error.
    pub(crate) fn check_client(
        &self,
        device: &DeviceId,
        flow: u32,
        conn: &quinn::Connection,
    ) -> Result<(), u64> {
        let owned = lock(&self.owners)
            .get(&(device.clone(), flow))
            .is_some_and(|owner| owner.is_client(conn));
        if owned {
            Ok(())
        } else {
            Err(self.foreign.fetch_add(1, Ordering::Relaxed) + 1)
        }
    }

    /// Client datagrams dropped so far because their flow was not the sender's.
    pub(crate) fn foreign_datagrams(&self) -> u64 {
        self.foreign.load(Ordering::Relaxed)
    }

    /// Who owns a device's flow.
    pub(crate) fn owner(&self, device: &DeviceId, flow: u32) -> Option<FlowOwner> {
        lock(&self.owners).get(&(device.clone(), flow)).cloned()
    }

    /// Records who owns a device's flow.
    pub(crate) fn insert(&self, device: DeviceId, flow: u32, owner: FlowOwner) {
        lock(&self.owners).insert((device, flow), owner);
    }

    /// Forgets a device's flow.
    pub(crate) fn remove(&self, device: DeviceId, flow: u32) {
        lock(&self.owners).remove(&(device, flow));
    }

    /// Forgets every flow the client connection `conn` owns (its session ended).
    pub(crate) fn remove_client(&self, conn: &quinn::Connection) {
        lock(&self.owners).retain(|_, owner| !owner.is_client(conn));
    }
}
