//! The delivery loop of one sink.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::watch;

use super::{CursorStore, EntrySource, ExportSink, Lease, Shared, SinkCursor, Timing};

pub(super) struct Worker {
    pub(super) sink: ExportSink,
    pub(super) source: Arc<dyn EntrySource>,
    pub(super) cursors: Arc<dyn CursorStore>,
    pub(super) lease: Arc<dyn Lease>,
    pub(super) timing: Timing,
    pub(super) shared: Arc<Shared>,
    pub(super) shutdown: watch::Receiver<bool>,
}

/// What one round of the loop leads to.
enum Next {
    /// Go on at once.
    Continue,
    /// Nothing to do: wait for news or the poll interval.
    Idle,
    /// Something failed: wait the backoff.
    Failed,
}

impl Worker {
    pub(super) async fn run(mut self) {
        let mut cursor: Option<SinkCursor> = None;
        let mut backoff = self.timing.backoff_first;
        while !*self.shutdown.borrow() {
            let next = self.round(&mut cursor).await;
            let pause = match next {
                Next::Continue => {
                    backoff = self.timing.backoff_first;
                    continue;
                }
                Next::Idle => {
                    backoff = self.timing.backoff_first;
                    self.timing.poll
                }
                Next::Failed => {
                    let pause = jitter(backoff);
                    backoff = (backoff * 2).min(self.timing.backoff_max);
                    pause
                }
            };
            self.wait(pause, matches!(next, Next::Idle)).await;
        }
    }

    /// Sleeps for `pause`, or less when shut down (or, when idle, when news arrives).
    async fn wait(&mut self, pause: Duration, wake_on_news: bool) {
        let shared = self.shared.clone();
        let news = async {
            if wake_on_news {
                shared.news.notified().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = news => {}
            _ = self.shutdown.changed() => {}
        }
    }

    async fn round(&mut self, cursor: &mut Option<SinkCursor>) -> Next {
        let name = self.sink.name.clone();
        if !self.lease.hold(&name).await {
            // Another process exports to this sink; reload its cursor when the lease comes back.
            *cursor = None;
            self.shared.update(|s| s.active = false);
            return Next::Idle;
        }
        let c = match *cursor {
            Some(c) => c,
            None => match self.cursors.load(&name).await {
                Ok(c) => {
                    let c = c.unwrap_or_default();
                    self.shared.update(|s| {
                        s.active = true;
                        s.cursor = c.position;
                        s.delivered = c.delivered;
                        s.rejected = c.rejected;
                    });
                    *cursor = Some(c);
                    c
                }
                Err(e) => return self.failed(format!("cannot load the cursor: {e}")),
            },
        };
        if let Ok(head) = self.source.head().await {
            self.shared.update(|s| s.head = head);
        }
        let batch = match self
            .source
            .entries_after(c.position, self.sink.batch_size)
            .await
        {
            Ok(b) => b,
            Err(e) => return self.failed(format!("cannot read the audit log: {e}")),
        };
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            self.shared.update(|s| s.oldest_pending = None);
            return Next::Idle;
        };
        let first_at = first.envelope.recorded_at;
        let last_position = last.envelope.global_position;
        self.shared.update(|s| {
            s.oldest_pending = Some(first_at);
            s.head = s.head.max(last_position);
        });
        // A backstop over the sinks' own per-call limits, with room for the requests an HTTP
        // sink makes to find the malformed records of a refused batch (about 2·log₂ n).
        let calls = 3 + 2 * (usize::BITS - batch.len().leading_zeros());
        let limit = self.sink.timeout.saturating_mul(calls);
        let result = tokio::time::timeout(limit, self.sink.sink.deliver(&batch)).await;
        let delivered = match result {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return self.failed(e.to_string()),
            Err(_) => {
                self.sink.sink.reset();
                return self.failed(format!(
                    "no acknowledgement within {limit:?}; the receiver stalls"
                ));
            }
        };
        for r in &delivered.rejected {
            let id = r.event_id.map_or_else(|| "-".to_owned(), |i| i.to_string());
            tracing::warn!(sink = %name, event_id = %id, reason = %r.reason, "audit export: record rejected as malformed, skipped");
        }
        let rejected = delivered.rejected.len().min(batch.len()) as u64;
        let next = SinkCursor {
            position: last_position,
            delivered: c.delivered + batch.len() as u64 - rejected,
            rejected: c.rejected + rejected,
        };
        *cursor = Some(next);
        let saved = self.cursors.save(&name, &next).await;
        let last_reason = delivered.rejected.last().map(|r| r.reason.clone());
        self.shared.update(|s| {
            s.cursor = next.position;
            s.delivered = next.delivered;
            s.rejected = next.rejected;
            s.last_success_at = Some(Utc::now());
            s.oldest_pending = None;
            let error = match (&saved, last_reason) {
                (Err(e), _) => Some(format!(
                    "cannot save the cursor (the batch may be sent again): {e}"
                )),
                (Ok(()), Some(r)) => Some(format!("rejected as malformed: {r}")),
                (Ok(()), None) => None,
            };
            if error.is_some() {
                s.last_error = error;
                s.last_error_at = Some(Utc::now());
            }
        });
        Next::Continue
    }

    fn failed(&self, message: String) -> Next {
        tracing::warn!(sink = %self.sink.name, error = %message, "audit export: delivery failed, will retry");
        self.shared.update(|s| {
            s.retried += 1;
            s.last_error = Some(message);
            s.last_error_at = Some(Utc::now());
        });
        Next::Failed
    }
}

/// A pause between half and all of `base`, so many exporters do not retry in step.
fn jitter(base: Duration) -> Duration {
    let ms = base.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}
