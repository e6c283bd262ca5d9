//! OTLP logs over HTTP/protobuf: `POST …/v1/logs`, `Content-Type: application/x-protobuf`,
//! one `LogRecord` per entry with the m87 fields as attributes and the record as its body.

use std::time::Duration;

use async_trait::async_trait;
use m87_events::audit::{AuditEntry, Outcome};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::{Answer, PostBatch, client, deliver_bisecting, send};
use crate::config::{Format, OtlpConfig, Secret};
use crate::format::{self, Facts};
use crate::sink::{Delivered, Rejection, Sink, SinkError};

/// An OTLP logs sink.
pub struct OtlpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: Vec<(String, Secret)>,
    format: Format,
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: impl Into<String>) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// The log record of one entry.
pub fn log_record(format: Format, entry: &AuditEntry) -> LogRecord {
    let f = Facts::of(entry);
    let (severity_number, severity_text) = match f.outcome {
        Outcome::Ok | Outcome::Open => (9, "INFO"),
        Outcome::Failed | Outcome::Refused => (13, "WARN"),
    };
    let mut attributes = vec![
        kv("m87.event_id", s(f.event_id())),
        kv("m87.event_type", s(f.event_type)),
        kv(
            "m87.position",
            any_value::Value::IntValue(f.position() as i64),
        ),
        kv("m87.hash", s(entry.hash.clone())),
        kv("m87.prev_hash", s(entry.prev_hash.clone())),
        kv("m87.action", s(f.action)),
        kv("m87.outcome", s(f.outcome.as_str())),
        kv("m87.actor", s(f.actor.clone())),
    ];
    let optional = [
        ("m87.device", f.device.clone()),
        ("m87.session_id", f.session.clone()),
        ("user.email", f.user_email.clone()),
        ("m87.key_id", f.key_id.clone()),
        ("client.address", f.source_ip.clone()),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            attributes.push(kv(key, s(v)));
        }
    }
    let nanos = f.time().timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
    LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        severity_number,
        severity_text: severity_text.to_owned(),
        event_name: format!("m87.audit.{}", f.event_type),
        body: Some(AnyValue {
            value: Some(s(format::to_line(format, entry))),
        }),
        attributes,
        ..Default::default()
    }
}

/// The protobuf request of a batch.
pub fn request(format: Format, batch: &[AuditEntry]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s("m87"))],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "m87.audit".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                log_records: batch.iter().map(|e| log_record(format, e)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

impl OtlpSink {
    /// A sink for `config`.
    pub fn new(config: &OtlpConfig, timeout: Duration) -> Result<Self, SinkError> {
        Ok(Self {
            client: client(&config.target, timeout)?,
            url: config.target.url.clone(),
            headers: config.headers.clone(),
            format: config.format,
        })
    }
}

#[async_trait]
impl PostBatch for OtlpSink {
    async fn post(&self, batch: &[AuditEntry]) -> Answer {
        let mut req = self
            .client
            .post(self.url.clone())
            .header("Content-Type", "application/x-protobuf")
            .body(request(self.format, batch).encode_to_vec());
        for (name, value) in &self.headers {
            req = req.header(name.as_str(), value.expose());
        }
        send("OTLP", req).await
    }
}

#[async_trait]
impl Sink for OtlpSink {
    fn kind(&self) -> &'static str {
        "otlp"
    }

    async fn deliver(&mut self, batch: &[AuditEntry]) -> Result<Delivered, SinkError> {
        match self.post(batch).await {
            Answer::Retry(m) => Err(SinkError::Retry(m)),
            Answer::Reject(m) if batch.len() == 1 => Ok(Delivered {
                rejected: vec![Rejection {
                    event_id: Some(batch[0].envelope.event_id),
                    reason: m,
                }],
            }),
            Answer::Reject(_) => deliver_bisecting(&*self, batch).await,
            Answer::Ok(body) => {
                // A partial success names how many were refused, not which.
                let partial = ExportLogsServiceResponse::decode(body.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .filter(|p| p.rejected_log_records > 0);
                Ok(match partial {
                    None => Delivered::all(),
                    Some(p) => Delivered {
                        rejected: (0..p.rejected_log_records.min(batch.len() as i64))
                            .map(|_| Rejection {
                                event_id: None,
                                reason: format!("OTLP partial success: {}", p.error_message),
                            })
                            .collect(),
                    },
                })
            }
        }
    }
}
