//! SIEM export of the m87 audit trail.
//!
//! The exporter is one more subscriber on the event log: each configured sink has its own
//! cursor (a global position), reads the audit entries after it, renders them with a pure
//! format function and hands the batch to the sink; the cursor moves only after the sink
//! acknowledged. Delivery is at least once and in order per sink; every record carries its
//! event id (for dropping duplicates) and its chain hash and the previous one (for checking
//! the chain at the receiver).
//!
//! # Layout
//!
//! - [`config`]: the sinks file (TOML): parsing, validation with line and key, secrets.
//! - [`format`]: pure functions from an [`AuditEntry`] to OCSF, ECS, CEF or the entry as JSON.
//! - [`sink`]: the [`Sink`] trait and its implementations (syslog over UDP, TCP and TLS;
//!   Splunk HEC; Elasticsearch/OpenSearch `_bulk`; webhook; OTLP logs; a rotated file).
//! - [`exporter`]: the traits the control plane implements ([`EntrySource`], [`CursorStore`],
//!   [`Lease`]), the per-sink delivery loop, and the status of each sink.
//! - [`memory`]: in-memory twins of the source and the cursor store (tests, benchmarks, one-off
//!   pulls).

pub mod config;
pub mod exporter;
pub mod format;
pub mod memory;
pub mod sink;

pub use config::{ConfigError, Format, Secret, SinkConfig, SinkKind, SinksConfig};
pub use exporter::{
    AlwaysHeld, CursorStore, EntrySource, ExportSink, Exporter, ExporterHandle, Lease, SinkCursor,
    SinkStatus, Timing,
};
pub use m87_events::audit::AuditEntry;
pub use memory::{MemoryCursors, MemorySource};
pub use sink::{Delivered, Rejection, Sink, SinkError};
