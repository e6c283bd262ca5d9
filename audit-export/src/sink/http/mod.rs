//! The HTTP sinks and what they share: the client (rustls with ring, a time limit on every
//! call), the reading of status codes, and finding the malformed records of a refused batch.
//!
//! | status | meaning |
//! |---|---|
//! | 2xx | acknowledged |
//! | 400, 413, 415, 422 and other 4xx not below | the batch holds a malformed record: the batch is halved until the refused records are found; they are counted as rejected and skipped |
//! | 401, 403, 404, 405 | a configuration fault (token, URL): retried, nothing skipped, the error names it |
//! | 408, 429, 5xx, no answer, time limit | retried with backoff |

mod bulk;
mod hec;
mod otlp;
mod webhook;

pub use bulk::ElasticSink;
pub use hec::HecSink;
pub use otlp::OtlpSink;
pub use webhook::{WebhookSink, hmac_signature};

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use m87_events::audit::AuditEntry;
use reqwest::StatusCode;

use super::{Delivered, Rejection, SinkError, tls};
use crate::config::HttpTarget;

/// Builds the client of one HTTP sink.
fn client(target: &HttpTarget, timeout: Duration) -> Result<reqwest::Client, SinkError> {
    let tls = tls::client_config(target.ca_certs.as_deref(), None)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(50))
        .user_agent(concat!("m87-audit-export/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SinkError::Setup(format!("HTTP client: {}", chain(&e))))
}

/// `base` with `suffix` appended to its path (`/services/collector/event`, `/_bulk`).
fn join(base: &reqwest::Url, suffix: &str) -> reqwest::Url {
    let mut url = base.clone();
    let path = format!("{}{suffix}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What an HTTP receiver answered to one request.
#[derive(Debug)]
enum Answer {
    /// 2xx, with the body.
    Ok(bytes::Bytes),
    /// The request holds a malformed record.
    Reject(String),
    /// Try again later.
    Retry(String),
}

/// Sends a request and reads the answer as the module's table says.
async fn send(what: &str, req: reqwest::RequestBuilder) -> Answer {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Answer::Retry(format!(
                "{what}: no answer within the time limit ({})",
                chain(&e)
            ));
        }
        Err(e) => return Answer::Retry(format!("{what}: {}", chain(&e))),
    };
    let status = resp.status();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Answer::Retry(format!("{what}: reading the answer: {}", chain(&e))),
    };
    classify(what, status, body)
}

fn classify(what: &str, status: StatusCode, body: bytes::Bytes) -> Answer {
    let text = || {
        let t = String::from_utf8_lossy(&body[..body.len().min(300)]).replace(['\n', '\r'], " ");
        format!("{what}: HTTP {status}: {t}")
    };
    match status.as_u16() {
        200..=299 => Answer::Ok(body),
        401 | 403 => Answer::Retry(format!("{} (check the sink's credentials)", text())),
        404 | 405 => Answer::Retry(format!("{} (check the sink's URL)", text())),
        408 | 429 | 500..=599 => Answer::Retry(text()),
        400..=499 => Answer::Reject(text()),
        _ => Answer::Retry(text()),
    }
}

/// A sink that posts a batch in one request.
#[async_trait]
trait PostBatch: Sync {
    /// Posts `batch` and reads the answer; `Answer::Ok` means all of it was taken.
    async fn post(&self, batch: &[AuditEntry]) -> Answer;
}

/// Posts the batch; when it is refused as malformed, halves it until the refused records are
/// found (in order), so one bad record costs about 2·log₂(n) extra requests, never the batch.
async fn deliver_bisecting<P: PostBatch>(
    p: &P,
    batch: &[AuditEntry],
) -> Result<Delivered, SinkError> {
    let mut todo = VecDeque::from([(0, batch.len())]);
    let mut delivered = Delivered::all();
    while let Some((start, end)) = todo.pop_front() {
        let part = &batch[start..end];
        match p.post(part).await {
            Answer::Ok(_) => {}
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
