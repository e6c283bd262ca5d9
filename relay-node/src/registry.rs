//! Connected device tunnels.
//!
//! Each registration gets an epoch. A new tunnel for a device replaces the old one atomically
//! (the old connection is closed); removal happens only if the epoch still matches, so the late
//! close of an old tunnel never removes its replacement.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use m87_events::DeviceId;

/// One connected tunnel.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// The QUIC connection to the device.
    pub conn: quinn::Connection,
    /// This registration's epoch.
    pub epoch: u64,
    /// When it connected.
    pub connected_at: DateTime<Utc>,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Registry {
    tunnels: Mutex<HashMap<DeviceId, Tunnel>>,
    next_epoch: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Tunnel>> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a tunnel, replacing (and returning) any older one of the same device.
    pub fn insert(&self, device: DeviceId, conn: quinn::Connection) -> (u64, Option<Tunnel>) {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let old = self.lock().insert(
            device,
            Tunnel {
                conn,
                epoch,
                connected_at: Utc::now(),
            },
        );
        (epoch, old)
    }

    /// Removes the device's tunnel if it is still the one registered with `epoch`.
    pub fn remove_if(&self, device: &DeviceId, epoch: u64) -> bool {
        let mut tunnels = self.lock();
        match tunnels.get(device) {
            Some(t) if t.epoch == epoch => {
                tunnels.remove(device);
                true
            }
            _ => false,
        }
    }

    /// The device's tunnel, if connected here.
    pub fn get(&self, device: &DeviceId) -> Option<Tunnel> {
        self.lock().get(device).cloned()
    }

    /// Whether the device is connected here.
    pub fn contains(&self, device: &DeviceId) -> bool {
        self.lock().contains_key(device)
    }

    /// How many devices are connected.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no device is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes and forgets the device's tunnel (used when a device is removed).
    pub fn disconnect(&self, device: &DeviceId, reason: &str) -> bool {
        let removed = self.lock().remove(device);
        if let Some(t) = &removed {
            t.conn
                .close(crate::io::CLOSE_UNAUTHENTICATED, reason.as_bytes());
        }
        removed.is_some()
    }
}
