//! `m87 <device> metrics`: live samples; one sampler shared by every viewer.
//!
//! The runtime holds one [`Hub`]. The first viewer starts its sampler task; the sampler reads
//! the device's counters (see [`sampler`]) at the shortest interval any connected viewer asks
//! for and publishes each sample on a `watch` channel. Each viewer keeps only the newest
//! sample (a viewer that cannot keep up skips the stale ones; it never holds up the sampler or
//! the other viewers) and forwards a sample once its own interval has passed since the last
//! one it sent (less half a sampler tick, so a viewer whose interval is the sampler's gets
//! every sample despite timer jitter). When the last viewer leaves, the sampler stops.

pub mod sampler;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use m87_events::tunnel::Frame;
use m87_events::tunnel::metrics::{MAX_INTERVAL_MS, MIN_INTERVAL_MS, MetricsSample};
use m87_transport::frames::{FrameReader, write_frame};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{BoxRead, BoxWrite, ChannelOutcome, ServiceContext, accept};

/// The newest sample, shared by the sampler with its viewers.
type Latest = Option<Arc<MetricsSample>>;

/// The sampler every viewer of a runtime shares.
#[derive(Debug, Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    /// Sampler tasks running now (0 or 1).
    running: Arc<AtomicUsize>,
    /// Sampler tasks started since the hub was made.
    started: AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each viewer's interval, by viewer id.
    viewers: BTreeMap<u64, u32>,
    next_id: u64,
    /// The running sampler, while there are viewers.
    sampler: Option<Running>,
}

#[derive(Debug)]
struct Running {
    samples: watch::Receiver<Latest>,
    interval: watch::Sender<u32>,
    task: tokio::task::JoinHandle<()>,
}

/// One viewer's place at the hub; leaving (dropping it) may stop the sampler.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    interval_ms: u32,
    samples: watch::Receiver<Latest>,
    last_sent: Option<chrono::DateTime<chrono::Utc>>,
}

impl Hub {
    /// Adds a viewer that wants a sample every `interval_ms` (clamped to the allowed range);
    /// starts the sampler if it is the first, or speeds it up if it asks for a shorter interval.
    /// Must be called within a tokio runtime.
    pub fn subscribe(self: &Arc<Self>, interval_ms: u32) -> Subscription {
        let interval_ms = interval_ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS);
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.viewers.insert(id, interval_ms);
        let shortest = shortest(&inner.viewers);
        if inner.sampler.as_ref().is_some_and(|r| r.task.is_finished()) {
            // It ended by itself (its blocking read failed): start afresh.
            inner.sampler = None;
        }
        let samples = match &inner.sampler {
            Some(running) => {
                running.interval.send_if_modified(|i| replace(i, shortest));
                running.samples.clone()
            }
            None => {
                let running = self.start(shortest);
                let samples = running.samples.clone();
                inner.sampler = Some(running);
                samples
            }
        };
        Subscription {
            hub: Arc::clone(self),
            id,
            interval_ms,
            samples,
            last_sent: None,
        }
    }

    /// How many sampler tasks are running now (0 or 1).
    pub fn running_samplers(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// How many sampler tasks this hub has started.
    pub fn samplers_started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    /// How many viewers are connected.
    pub fn viewers(&self) -> usize {
        self.lock().viewers.len()
    }

    /// The interval the sampler runs at now, if it runs.
    pub fn sampling_interval_ms(&self) -> Option<u32> {
        self.lock().sampler.as_ref().map(|r| *r.interval.borrow())
    }

    fn start(&self, interval_ms: u32) -> Running {
        let (samples_tx, samples) = watch::channel(None);
        let (interval, interval_rx) = watch::channel(interval_ms);
        self.started.fetch_add(1, Ordering::SeqCst);
        let running = RunningCount::new(Arc::clone(&self.running));
        let task = tokio::spawn(run_sampler(samples_tx, interval_rx, running));
        Running {
            samples,
            interval,
            task,
        }
    }

    fn leave(&self, id: u64) {
        let mut inner = self.lock();
        inner.viewers.remove(&id);
        if inner.viewers.is_empty() {
            if let Some(running) = inner.sampler.take() {
                running.task.abort();
            }
        } else if let Some(running) = &inner.sampler {
            let shortest = shortest(&inner.viewers);
            running.interval.send_if_modified(|i| replace(i, shortest));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock guards plain bookkeeping; a panic while holding it leaves it consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn shortest(viewers: &BTreeMap<u64, u32>) -> u32 {
    viewers.values().copied().min().unwrap_or(MIN_INTERVAL_MS)
}

fn replace(current: &mut u32, new: u32) -> bool {
    let changed = *current != new;
    *current = new;
    changed
}

impl Subscription {
    /// The next sample this viewer should get: waits for the sampler, skipping samples that
    /// come sooner than this viewer's interval. `None` when the sampler has stopped.
    pub async fn next(&mut self) -> Option<Arc<MetricsSample>> {
        loop {
            self.samples.changed().await.ok()?;
            let Some(sample) = self.samples.borrow_and_update().clone() else {
                continue;
            };
            if self.due(&sample) {
                self.last_sent = Some(sample.time);
                return Some(sample);
            }
        }
    }

    /// Whether `sample` is far enough from the last one sent.
    fn due(&self, sample: &MetricsSample) -> bool {
        let Some(last) = self.last_sent else {
            return true;
        };
        let tick = self.hub.sampling_interval_ms().unwrap_or(self.interval_ms);
        let wanted = i64::from(self.interval_ms) - i64::from(tick / 2);
        (sample.time - last).num_milliseconds() >= wanted
    }

    /// Marks the newest sample as seen, so [`Subscription::next`] waits for a fresh one.
    fn skip_current(&mut self) {
        self.samples.borrow_and_update();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(self.id);
    }
}

/// Counts a running sampler task for as long as it lives (also when it is aborted).
struct RunningCount(Arc<AtomicUsize>);

impl RunningCount {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for RunningCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Samples every `interval` until aborted (or until no viewer can receive any more).
async fn run_sampler(
    samples: watch::Sender<Latest>,
    mut interval: watch::Receiver<u32>,
    _running: RunningCount,
) {
    // Reading every process's counters takes a few milliseconds: off the async threads.
    // Without counters there is nothing to send: the viewers' streams end when this returns.
    let mut sampler = match tokio::task::spawn_blocking(sampler::Sampler::new).await {
        Ok(Ok(sampler)) => sampler,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: this system's counters cannot be read");
            return;
        }
        Err(_) => return,
    };
    let mut last = Instant::now();
    loop {
        let period = Duration::from_millis(u64::from(*interval.borrow_and_update()));
        tokio::select! {
            () = tokio::time::sleep_until(last + period) => {}
            changed = interval.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        last = Instant::now();
        let Ok((back, sample)) = tokio::task::spawn_blocking(move || {
            let sample = sampler.sample();
            (sampler, sample)
        })
        .await
        else {
            return;
        };
        sampler = back;
        if samples.send(Some(Arc::new(sample))).is_err() {
            return;
        }
    }
}

/// Serves one viewer: accepts, then a `Data` frame (a JSON [`MetricsSample`]) per sample, until
/// the client closes the stream; then it leaves the hub.
pub async fn serve(
    interval_ms: u32,
    mut reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    ctx: &ServiceContext,
) -> ChannelOutcome {
    if let Err(e) = accept(&mut writer).await {
        return failed(format!("could not accept the metrics channel: {e}"));
    }
    let mut subscription = ctx.metrics.subscribe(interval_ms);
    // A viewer joining a running sampler gets its newest sample at once.
    let mut first = subscription.samples.borrow().clone();
    if first.is_some() {
        subscription.skip_current();
    }
    let closed = async {
        // Anything the client sends is ignored; its end of the stream is the end.
        while let Ok(Some(frame)) = reader.next().await {
            if frame == Frame::Eof {
                break;
            }
        }
    };
    tokio::pin!(closed);
    let outcome = loop {
        let sample = match first.take() {
            Some(sample) => sample,
            None => tokio::select! {
                () = &mut closed => break ChannelOutcome::default(),
                next = subscription.next() => match next {
                    Some(sample) => sample,
                    None => break failed("the device's sampler stopped".into()),
                },
            },
        };
        subscription.last_sent = Some(sample.time);
        let json = match serde_json::to_vec(&*sample) {
            Ok(json) => json,
            Err(e) => break failed(format!("could not encode a sample: {e}")),
        };
        if write_frame(&mut writer, &Frame::Data(Bytes::from(json)))
            .await
            .is_err()
        {
            // The client is gone.
            break ChannelOutcome::default();
        }
    };
    drop(subscription);
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
    outcome
}

fn failed(message: String) -> ChannelOutcome {
    ChannelOutcome {
        exit: None,
        error: Some(message),
    }
}

#[cfg(test)]
mod tests;
