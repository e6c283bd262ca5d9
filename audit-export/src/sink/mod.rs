//! Sinks: where batches of audit entries go, and what the receiver said.
//!
//! A sink renders each entry with its format and delivers the batch in one request (or one
//! write). It answers with [`Delivered`] (everything acknowledged, minus the records the
//! receiver refused as malformed) or [`SinkError`] (nothing may be assumed delivered: the
//! exporter retries the whole batch after a pause).

mod file;
mod http;
mod syslog;
mod tls;

pub use file::FileSink;
pub use http::{ElasticSink, HecSink, OtlpSink, WebhookSink, hmac_signature};
pub use syslog::{SyslogSink, escape_sd as syslog_escape_sd, rfc5424};

use async_trait::async_trait;
use m87_events::EventId;
use m87_events::audit::AuditEntry;

use crate::config::{SinkConfig, SinkKind};

/// A record the receiver refused as malformed: counted, logged, skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The refused record's event id, when the receiver said which one.
    pub event_id: Option<EventId>,
    /// What the receiver said.
    pub reason: String,
}

/// A batch the receiver acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Records it refused as malformed (4xx); the rest were accepted.
    pub rejected: Vec<Rejection>,
}

impl Delivered {
    /// Everything accepted.
    pub fn all() -> Self {
        Self::default()
    }
}

/// A delivery that failed as a whole and should be tried again later.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The receiver could not be reached or answered with a temporary failure (connection
    /// refused, 5xx, 429, a closed connection).
    #[error("{0}")]
    Retry(String),
    /// The sink could not be built from its settings (for example TLS settings rustls refuses).
    #[error("{0}")]
    Setup(String),
}

/// Where audit entries go. Object safe: the exporter holds `Box<dyn Sink>`.
#[async_trait]
pub trait Sink: Send {
    /// The sink's kind (`syslog`, `splunk_hec`, …), for the status.
    fn kind(&self) -> &'static str;

    /// Delivers one batch, in order, and reports what the receiver acknowledged.
    async fn deliver(&mut self, batch: &[AuditEntry]) -> Result<Delivered, SinkError>;

    /// Forgets any open connection: called after a delivery was cut off by its time limit, so
    /// a half-written frame is never continued.
    fn reset(&mut self) {}
}

/// Builds the sink a configuration describes.
pub fn build(config: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match &config.kind {
        SinkKind::Syslog(c) => Box::new(SyslogSink::new(c, config.timeout)?),
        SinkKind::SplunkHec(c) => Box::new(HecSink::new(c, config.timeout)?),
        SinkKind::Elasticsearch(c) => Box::new(ElasticSink::new(c, config.timeout)?),
        SinkKind::Webhook(c) => Box::new(WebhookSink::new(c, config.timeout)?),
        SinkKind::Otlp(c) => Box::new(OtlpSink::new(c, config.timeout)?),
        SinkKind::File(c) => Box::new(FileSink::new(c)),
    })
}
