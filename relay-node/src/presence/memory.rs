//! The single-machine presence registry: a map with the same time-to-live rules as the fleet one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use m87_events::DeviceId;

use super::{Presence, PresenceEntry, PresenceError, PresenceRegistry, same_tunnel};

/// The single-machine registry: a map with the same time-to-live rules as the fleet one.
#[derive(Debug)]
pub struct InProcessPresence {
    ttl: Duration,
    state: Mutex<InProcessState>,
}

#[derive(Debug, Default)]
struct InProcessState {
    next_revision: u64,
    entries: HashMap<DeviceId, (Presence, Instant)>,
}

impl InProcessState {
    fn write(&mut self, device: &DeviceId, entry: &PresenceEntry, ttl: Duration) -> u64 {
        self.next_revision += 1;
        let revision = self.next_revision;
        self.entries.insert(
            device.clone(),
            (
                Presence {
                    entry: entry.clone(),
                    revision,
                },
                Instant::now() + ttl,
            ),
        );
        revision
    }

    /// The live entry of a device, dropping it when it has expired.
    fn live(&mut self, device: &DeviceId) -> Option<&Presence> {
        let expired = self
            .entries
            .get(device)
            .is_some_and(|(_, until)| *until <= Instant::now());
        if expired {
            self.entries.remove(device);
        }
        self.entries.get(device).map(|(p, _)| p)
    }
}

impl InProcessPresence {
    /// A registry whose entries live `ttl` without a refresh.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::new(InProcessState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InProcessState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl PresenceRegistry for InProcessPresence {
    async fn register(
        &self,
        device: &DeviceId,
        entry: &PresenceEntry,
    ) -> Result<u64, PresenceError> {
        Ok(self.lock().write(device, entry, self.ttl))
    }

    async fn refresh(
        &self,
        device: &DeviceId,
        entry: &PresenceEntry,
        revision: u64,
    ) -> Result<u64, PresenceError> {
        let mut state = self.lock();
        match state.live(device) {
            Some(p) if p.revision == revision || same_tunnel(&p.entry, entry) => {}
            Some(p) => {
                return Err(PresenceError::Superseded {
                    device: device.clone(),
                    relay_id: p.entry.relay_id.clone(),
                    epoch: p.entry.epoch,
                });
            }
            None => {}
        }
        Ok(state.write(device, entry, self.ttl))
    }

    async fn remove_if_owner(
        &self,
        device: &DeviceId,
        revision: u64,
    ) -> Result<bool, PresenceError> {
        let mut state = self.lock();
        match state.live(device) {
            Some(p) if p.revision == revision => {
                state.entries.remove(device);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn lookup(&self, device: &DeviceId) -> Result<Option<Presence>, PresenceError> {
        Ok(self.lock().live(device).cloned())
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}
