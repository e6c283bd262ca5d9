//! Shared helpers of the audit-export tests: events of every kind, an HTTP receiver that
//! records what it got, and a real rsyslogd.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod events;
pub mod receiver;
pub mod rsyslog;

use std::sync::Arc;
use std::time::Duration;

use m87_audit_export::{
    AlwaysHeld, ExportSink, Exporter, ExporterHandle, MemoryCursors, MemorySource, Sink,
    SinkStatus, Timing,
};
use tokio::sync::watch;

/// Short pauses so the tests run in seconds.
pub fn fast_timing() -> Timing {
    Timing {
        backoff_first: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        poll: Duration::from_millis(100),
    }
}

/// A running exporter and its shutdown switch.
pub struct Running {
    pub handle: ExporterHandle,
    pub stop: watch::Sender<bool>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.handle.join())
            .await
            .expect("the exporter did not stop within 10 s of the shutdown signal");
    }

    pub fn status(&self, name: &str) -> SinkStatus {
        self.handle
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .expect("no such sink in the status")
    }
}

/// Starts an exporter over `sinks` (name, batch size, timeout, sink).
pub fn run(
    sinks: Vec<(&str, usize, Duration, Box<dyn Sink>)>,
    source: Arc<MemorySource>,
    cursors: Arc<MemoryCursors>,
) -> Running {
    let sinks = sinks
        .into_iter()
        .map(|(name, batch_size, timeout, sink)| ExportSink {
            name: name.to_owned(),
            batch_size,
            timeout,
            sink,
        })
        .collect();
    let (stop, rx) = watch::channel(false);
    let handle = Exporter::from_sinks(sinks, source, cursors, Arc::new(AlwaysHeld))
        .with_timing(fast_timing())
        .spawn(rx);
    Running { handle, stop }
}

/// Waits until `check` holds, up to `limit`, else fails with `what`.
pub async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
