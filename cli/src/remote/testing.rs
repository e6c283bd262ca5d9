//! An in-memory [`ChannelOpener`] for component tests: each channel runs the agent's service
//! over `tokio::io::duplex`, exactly as the agent does behind the relay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use m87_agent::services::{DatagramPort, ServiceContext, serve};
use m87_events::tunnel::{Channel, Control};
use m87_transport::frames::{FrameReader, write_control};
use m87_transport::stream::{BoxRead, BoxWrite};
use tokio::sync::mpsc;

use super::{ChannelOpener, OpenError, OpenedChannel};

type Routes = Arc<Mutex<HashMap<u32, mpsc::Sender<Bytes>>>>;

/// Datagrams between the test client and the agent's services, in memory.
#[derive(Default)]
struct Loop {
    /// Device side: flow → the service's receiver.
    to_device: Routes,
    /// Client side: flow → the client's receiver.
    to_client: Routes,
    next: Mutex<u32>,
}

impl DatagramPort for Loop {
    fn open_flow(&self) -> (u32, mpsc::Receiver<Bytes>) {
        let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        let (tx, rx) = mpsc::channel(256);
        self.to_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*n, tx);
        (*n, rx)
    }

    fn send(&self, flow: u32, payload: Bytes) -> Result<(), String> {
        if let Some(tx) = self
            .to_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&flow)
        {
            let _ = tx.try_send(payload);
        }
        Ok(())
    }

    fn close_flow(&self, flow: u32) {
        self.to_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&flow);
    }
}

/// Runs every channel against the agent's services in this process.
#[derive(Clone, Default)]
pub struct LocalOpener {
    port: Arc<Loop>,
}

#[async_trait]
impl ChannelOpener for LocalOpener {
    async fn open(&self, channel: Channel) -> Result<OpenedChannel, OpenError> {
        let (client, device) = tokio::io::duplex(1 << 20);
        let (device_r, mut device_w) = tokio::io::split(device);
        let ctx = ServiceContext::new(self.port.clone(), Default::default());
        let udp = channel.answers_itself();
        tokio::spawn(async move {
            if !udp {
                let _ =
                    write_control(&mut device_w, &Control::ChannelAccepted { flow: None }).await;
            }
            let reader = FrameReader::new(Box::new(device_r) as BoxRead);
            serve(channel, reader, Box::new(device_w) as BoxWrite, &ctx).await
        });
        let (client_r, client_w) = tokio::io::split(client);
        let mut reader = FrameReader::new(Box::new(client_r) as BoxRead);
        match reader.control().await {
            Ok(Some(Control::ChannelAccepted { flow })) => Ok(OpenedChannel {
                reader,
                writer: Box::new(client_w),
                flow,
            }),
            Ok(Some(Control::Refused { code, message })) => {
                Err(OpenError::Refused { code, message })
            }
            other => Err(OpenError::Lost(format!("unexpected answer {other:?}"))),
        }
    }

    fn send_datagram(&self, flow: u32, payload: Bytes) -> Result<(), OpenError> {
        if let Some(tx) = self
            .port
            .to_device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&flow)
        {
            let _ = tx.try_send(payload);
        }
        Ok(())
    }

    fn datagrams(&self, flow: u32) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(256);
        self.port
            .to_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flow, tx);
        rx
    }
}
