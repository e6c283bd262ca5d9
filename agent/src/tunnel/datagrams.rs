//! Datagrams of the tunnel connection: UDP flows, routed by flow id.
//!
//! Flow ids are drawn at random (32 bits from the thread's CSPRNG, never 0, never one in use),
//! not counted up: the relay multiplexes every session's datagrams on this one connection, and
//! the id is all that routes a datagram here. The relay forwards a client's datagram only for a
//! flow that client's session opened; an unguessable id means that even a datagram that got
//! past that check (a relay fault) does not land in a flow whose id its sender was never told.
//! A datagram for no open flow is dropped and counted ([`QuicDatagrams::dropped`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use m87_events::tunnel::datagram::{flow_datagram, split_flow_datagram};
use rand::RngCore;
use tokio::sync::mpsc;

use crate::services::DatagramPort;

/// Datagrams of the tunnel connection, routed by flow id.
pub(super) struct QuicDatagrams {
    conn: quinn::Connection,
    flows: Mutex<HashMap<u32, mpsc::Sender<Bytes>>>,
    dropped: AtomicU64,
}

impl QuicDatagrams {
    /// The datagrams of `conn`, with no flow open.
    pub(super) fn new(conn: quinn::Connection) -> Self {
        Self {
            conn,
            flows: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
        }
    }

    fn flows(&self) -> MutexGuard<'_, HashMap<u32, mpsc::Sender<Bytes>>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Datagrams dropped because no open flow had their id.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Routes the connection's datagrams to their flows until the connection ends.
    pub(super) async fn route(self: Arc<Self>) {
        while let Ok(d) = self.conn.read_datagram().await {
            let Some((flow, payload)) = split_flow_datagram(&d) else {
                continue;
            };
            let tx = self.flows().get(&flow).cloned();
            match tx {
                Some(tx) => {
                    let _ = tx.try_send(payload);
                }
                None => {
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::debug!(flow, dropped = n, "datagram for no open flow dropped");
                    }
                }
            }
        }
    }
}

/// A random flow id that is not 0 and not in `open`.
fn fresh_flow_id(open: &HashMap<u32, mpsc::Sender<Bytes>>) -> u32 {
    let mut rng = rand::rng();
    loop {
        let id = rng.next_u32();
        if id != 0 && !open.contains_key(&id) {
            return id;
        }
    }
}

impl DatagramPort for QuicDatagrams {
    fn open_flow(&self) -> (u32, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(1024);
        let mut flows = self.flows();
        let flow = fresh_flow_id(&flows);
        flows.insert(flow, tx);
        (flow, rx)
    }

    fn send(&self, flow: u32, payload: Bytes) -> Result<(), String> {
        self.conn
            .send_datagram(flow_datagram(flow, &payload))
            .map_err(|e| e.to_string())
    }

    fn close_flow(&self, flow: u32) {
        self.flows().remove(&flow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_ids_are_random_nonzero_and_distinct() {
        let mut open = HashMap::new();
        for _ in 0..1000 {
            let id = fresh_flow_id(&open);
            assert_ne!(id, 0);
            let (tx, _rx) = mpsc::channel(1);
            assert!(open.insert(id, tx).is_none());
        }
        // Not a counter: 1000 ids from 32 random bits are not 1..=1000.
        assert!(open.keys().any(|&id| id > 1000));
    }
}
