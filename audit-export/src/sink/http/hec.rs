//! Splunk HTTP Event Collector: `POST {url}/services/collector/event`, header
//! `Authorization: Splunk <token>`, body the batch's event envelopes one after the other.

use std::time::Duration;

use async_trait::async_trait;
use m87_events::audit::AuditEntry;
use serde_json::json;

use super::{Answer, PostBatch, client, deliver_bisecting, join, send};
use crate::config::{Format, HecConfig, Secret};
use crate::format;
use crate::sink::{Delivered, Sink, SinkError};

/// A Splunk HEC sink.
pub struct HecSink {
    client: reqwest::Client,
    url: reqwest::Url,
    token: Secret,
    format: Format,
}

impl HecSink {
    /// A sink for `config`.
    pub fn new(config: &HecConfig, timeout: Duration) -> Result<Self, SinkError> {
        Ok(Self {
            client: client(&config.target, timeout)?,
            url: join(&config.target.url, "/services/collector/event"),
            token: config.token.clone(),
            format: config.format,
        })
    }

    /// The HEC body of a batch: one envelope per record, newline separated.
    pub fn body(format: Format, batch: &[AuditEntry]) -> Vec<u8> {
        let mut body = Vec::with_capacity(batch.len() * 1024);
        for e in batch {
            let env = &e.envelope;
            let host = m87_events::audit::device_of(&env.event)
                .map_or_else(|| "m87".to_owned(), ToString::to_string);
            let envelope = json!({
                "time": env.recorded_at.timestamp_millis() as f64 / 1000.0,
                "host": host,
                "source": "m87",
                "sourcetype": "m87:audit",
                "fields": { "m87_event_id": env.event_id.to_string(), "m87_hash": e.hash },
            })
            .to_string();
            // `{…}` with `"event": <record>` added last, without copying the record into the
            // envelope's value first.
            body.extend_from_slice(&envelope.as_bytes()[..envelope.len() - 1]);
            body.extend_from_slice(b",\"event\":");
            body.extend_from_slice(format::to_value(format, e).to_string().as_bytes());
            body.extend_from_slice(b"}\n");
        }
        body
    }
}

#[async_trait]
impl PostBatch for HecSink {
    async fn post(&self, batch: &[AuditEntry]) -> Answer {
        let req = self
            .client
            .post(self.url.clone())
            .header("Authorization", format!("Splunk {}", self.token.expose()))
            .header("Content-Type", "application/json")
            .body(Self::body(self.format, batch));
        send("Splunk HEC", req).await
    }
}

#[async_trait]
impl Sink for HecSink {
    fn kind(&self) -> &'static str {
        "splunk_hec"
    }

    async fn deliver(&mut self, batch: &[AuditEntry]) -> Result<Delivered, SinkError> {
        deliver_bisecting(&*self, batch).await
    }
}
