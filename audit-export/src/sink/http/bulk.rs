//! Elasticsearch / OpenSearch `_bulk`: one `create` action per record with the event id as
//! `_id`, then the ECS document; the per-item answers say which were taken. An item that
//! already exists (409) was delivered before: it counts as delivered, so a retried batch
//! never doubles a record in the index.

use std::time::Duration;

use async_trait::async_trait;
use m87_events::audit::AuditEntry;
use serde_json::{Value, json};

use super::{Answer, client, join, send};
use crate::config::{ElasticAuth, ElasticConfig};
use crate::format;
use crate::sink::{Delivered, Rejection, Sink, SinkError};

/// An Elasticsearch/OpenSearch sink.
pub struct ElasticSink {
    client: reqwest::Client,
    url: reqwest::Url,
    index: String,
    auth: ElasticAuth,
}

impl ElasticSink {
    /// A sink for `config`.
    pub fn new(config: &ElasticConfig, timeout: Duration) -> Result<Self, SinkError> {
        Ok(Self {
            client: client(&config.target, timeout)?,
            url: join(&config.target.url, "/_bulk"),
            index: config.index.clone(),
            auth: config.auth.clone(),
        })
    }

    /// The NDJSON body: an action line and a document line per record, ending in a newline.
    pub fn body(index: &str, batch: &[AuditEntry]) -> Vec<u8> {
        let mut body = Vec::with_capacity(batch.len() * 1200);
        for e in batch {
            let action =
                json!({ "create": { "_index": index, "_id": e.envelope.event_id.to_string() } });
            body.extend_from_slice(action.to_string().as_bytes());
            body.push(b'\n');
            body.extend_from_slice(format::ecs(e).to_string().as_bytes());
            body.push(b'\n');
        }
        body
    }
}

/// Reads the per-item results of a `_bulk` answer.
fn items(batch: &[AuditEntry], body: &[u8]) -> Result<Delivered, SinkError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| SinkError::Retry(format!("_bulk: the answer is not JSON: {e}")))?;
    if v["errors"] == json!(false) {
        return Ok(Delivered::all());
    }
    let items = v["items"]
        .as_array()
        .filter(|i| i.len() == batch.len())
        .ok_or_else(|| SinkError::Retry("_bulk: the answer has no item per record".to_owned()))?;
    let mut delivered = Delivered::all();
    for (entry, item) in batch.iter().zip(items) {
        let result = item
            .as_object()
            .and_then(|o| o.values().next())
            .unwrap_or(&Value::Null);
        let status = result["status"].as_u64().unwrap_or(0);
        match status {
            200..=299 | 409 => {}
            429 | 500..=599 | 0 => {
                return Err(SinkError::Retry(format!(
                    "_bulk: item {} answered {status}: {}",
                    entry.envelope.event_id, result["error"]
                )));
            }
            _ => delivered.rejected.push(Rejection {
                event_id: Some(entry.envelope.event_id),
                reason: format!("_bulk item answered {status}: {}", result["error"]),
            }),
        }
    }
    Ok(delivered)
}

#[async_trait]
impl Sink for ElasticSink {
    fn kind(&self) -> &'static str {
        "elasticsearch"
    }

    async fn deliver(&mut self, batch: &[AuditEntry]) -> Result<Delivered, SinkError> {
        // A request refused as a whole (400, 413) is halved until the refused records are found.
        let mut todo = std::collections::VecDeque::from([(0, batch.len())]);
        let mut delivered = Delivered::all();
        while let Some((start, end)) = todo.pop_front() {
            let part = &batch[start..end];
            match self.post(part).await {
                Answer::Ok(body) => delivered.rejected.extend(items(part, &body)?.rejected),
                Answer::Retry(m) => return Err(SinkError::Retry(m)),
                Answer::Reject(reason) if part.len() == 1 => delivered.rejected.push(Rejection {
                    event_id: Some(part[0].envelope.event_id),
                    reason,
                }),
                Answer::Reject(_) => {
                    let mid = start + part.len() / 2;
                    todo.push_front((mid, end));
                    todo.push_front((start, mid));
                }
            }
        }
        Ok(delivered)
    }
}

impl ElasticSink {
    async fn post(&self, batch: &[AuditEntry]) -> Answer {
        let mut req = self
            .client
            .post(self.url.clone())
            .header("Content-Type", "application/x-ndjson")
            .body(Self::body(&self.index, batch));
        req = match &self.auth {
            ElasticAuth::None => req,
            ElasticAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
            ElasticAuth::ApiKey(k) => req.header("Authorization", format!("ApiKey {}", k.expose())),
        };
        send("_bulk", req).await
    }
}
