//! Datagrams of the tunnel connection: UDP flows, routed by flow id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use m87_events::tunnel::datagram::{flow_datagram, split_flow_datagram};
use tokio::sync::mpsc;

use crate::services::DatagramPort;

/// Datagrams of the tunnel connection, routed by flow id.
pub(super) struct QuicDatagrams {
    pub(super) conn: quinn::Connection,
    pub(super) flows: Mutex<HashMap<u32, mpsc::Sender<Bytes>>>,
    pub(super) next: AtomicU32,
}

impl DatagramPort for QuicDatagrams {
    fn open_flow(&self) -> (u32, mpsc::Receiver<Bytes>) {
        let flow = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let (tx, rx) = mpsc::channel(1024);
        self.flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flow, tx);
        (flow, rx)
    }

    fn send(&self, flow: u32, payload: Bytes) -> Result<(), String> {
        self.conn
            .send_datagram(flow_datagram(flow, &payload))
            .map_err(|e| e.to_string())
    }

    fn close_flow(&self, flow: u32) {
        self.flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&flow);
    }
}

impl QuicDatagrams {
    pub(super) async fn route(self: Arc<Self>) {
        while let Ok(d) = self.conn.read_datagram().await {
            let Some((flow, payload)) = split_flow_datagram(&d) else {
                continue;
            };
            let tx = self
                .flows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&flow)
                .cloned();
            if let Some(tx) = tx {
                let _ = tx.try_send(payload);
            }
        }
    }
}
