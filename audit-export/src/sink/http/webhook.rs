//! A generic webhook: `POST` of JSON lines (`application/x-ndjson`), signed with
//! `X-M87-Signature: sha256=<hex HMAC-SHA256 of the body>`.

use std::time::Duration;

use async_trait::async_trait;
use m87_events::audit::AuditEntry;

use super::{Answer, PostBatch, client, deliver_bisecting, send};
use crate::config::{Format, Secret, WebhookConfig};
use crate::format;
use crate::sink::{Delivered, Sink, SinkError};

/// The `X-M87-Signature` value of a body: `sha256=` and the hex HMAC-SHA256 under `key`.
pub fn hmac_signature(key: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

/// A webhook sink.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    key: Secret,
    format: Format,
}

impl WebhookSink {
    /// A sink for `config`.
    pub fn new(config: &WebhookConfig, timeout: Duration) -> Result<Self, SinkError> {
        Ok(Self {
            client: client(&config.target, timeout)?,
            url: config.target.url.clone(),
            key: config.hmac_key.clone(),
            format: config.format,
        })
    }
}

#[async_trait]
impl PostBatch for WebhookSink {
    async fn post(&self, batch: &[AuditEntry]) -> Answer {
        let mut body = Vec::with_capacity(batch.len() * 1024);
        for e in batch {
            body.extend_from_slice(format::to_line(self.format, e).as_bytes());
            body.push(b'\n');
        }
        let req = self
            .client
            .post(self.url.clone())
            .header("Content-Type", "application/x-ndjson")
            .header(
                "X-M87-Signature",
                hmac_signature(self.key.expose().as_bytes(), &body),
            )
            .body(body);
        send("webhook", req).await
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&mut self, batch: &[AuditEntry]) -> Result<Delivered, SinkError> {
        deliver_bisecting(&*self, batch).await
    }
}
