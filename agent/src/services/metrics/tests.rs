//! The hub's sharing and the service over in-memory pipes.

use std::sync::Arc;
use std::time::Duration;

use m87_events::tunnel::metrics::MetricsSample;
use m87_events::tunnel::{Control, Frame};
use m87_transport::frames::{FrameReader, write_frame};

use super::*;
use crate::services::{BoxRead, BoxWrite, DatagramPort, ServiceContext};

struct NoDatagrams;

impl DatagramPort for NoDatagrams {
    fn open_flow(&self) -> (u32, tokio::sync::mpsc::Receiver<Bytes>) {
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        (0, rx)
    }
    fn send(&self, _flow: u32, _payload: Bytes) -> Result<(), String> {
        Ok(())
    }
    fn close_flow(&self, _flow: u32) {}
}

async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn next(sub: &mut Subscription) -> Arc<MetricsSample> {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a sample within 10 s")
        .expect("the sampler runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_share_one_sampler_which_stops_when_both_leave() {
    let hub = Arc::new(Hub::default());
    let mut fast = hub.subscribe(200);
    let mut slow = hub.subscribe(600);
    assert_eq!(hub.samplers_started(), 1);
    assert_eq!(hub.viewers(), 2);
    assert_eq!(hub.sampling_interval_ms(), Some(200));
    let a = next(&mut fast).await;
    let b = next(&mut slow).await;
    assert!(a.memory.total_bytes > 0);
    assert!(!b.cpu.cores.is_empty());
    // The slower viewer gets samples about its own interval apart, not every tick.
    let c = next(&mut slow).await;
    let gap = (c.time - b.time).num_milliseconds();
    assert!(gap >= 500, "samples {gap} ms apart for a 600 ms viewer");
    assert_eq!(hub.running_samplers(), 1);

    drop(fast);
    assert_eq!(hub.sampling_interval_ms(), Some(600));
    next(&mut slow).await;
    assert_eq!(hub.running_samplers(), 1);
    drop(slow);
    until("the sampler stops", || hub.running_samplers() == 0).await;
    assert_eq!(hub.sampling_interval_ms(), None);
    assert_eq!(hub.samplers_started(), 1);

    // A new viewer starts a new sampler.
    let mut again = hub.subscribe(200);
    next(&mut again).await;
    assert_eq!(hub.samplers_started(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_never_reads_does_not_hold_up_the_others() {
    let hub = Arc::new(Hub::default());
    let _stuck = hub.subscribe(200);
    let mut reader = hub.subscribe(200);
    let mut last = next(&mut reader).await;
    for _ in 0..4 {
        let sample = next(&mut reader).await;
        assert!(sample.time > last.time);
        last = sample;
    }
}

/// A viewer over in-memory pipes, as the agent serves it.
struct Viewer {
    reader: FrameReader<BoxRead>,
    writer: BoxWrite,
    served: tokio::task::JoinHandle<crate::services::ChannelOutcome>,
}

fn open(ctx: &ServiceContext, interval_ms: u32) -> Viewer {
    let (client, device) = tokio::io::duplex(1 << 16);
    let (device_r, device_w) = tokio::io::split(device);
    let ctx = ctx.clone();
    let served = tokio::spawn(async move {
        let reader = FrameReader::new(Box::new(device_r) as BoxRead);
        serve(interval_ms, reader, Box::new(device_w) as BoxWrite, &ctx).await
    });
    let (client_r, client_w) = tokio::io::split(client);
    Viewer {
        reader: FrameReader::new(Box::new(client_r) as BoxRead),
        writer: Box::new(client_w),
        served,
    }
}

async fn sample_from(viewer: &mut Viewer) -> MetricsSample {
    let frame = tokio::time::timeout(Duration::from_secs(10), viewer.reader.next())
        .await
        .expect("a frame within 10 s")
        .expect("a readable stream")
        .expect("a frame, not the end");
    let Frame::Data(json) = frame else {
        panic!("expected a sample, got {frame:?}");
    };
    serde_json::from_slice(&json).expect("a sample in JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_leaving_stops_only_that_viewer() {
    let ctx = ServiceContext::new(Arc::new(NoDatagrams), Default::default());
    let mut one = open(&ctx, 200);
    let mut two = open(&ctx, 200);
    for v in [&mut one, &mut two] {
        let accepted = v.reader.control().await.unwrap();
        assert_eq!(accepted, Some(Control::ChannelAccepted { flow: None }));
        sample_from(v).await;
    }
    assert_eq!(ctx.metrics.viewers(), 2);

    write_frame(&mut one.writer, &Frame::Eof).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), one.served)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.error, None);
    assert_eq!(ctx.metrics.viewers(), 1);
    let a = sample_from(&mut two).await;
    let b = sample_from(&mut two).await;
    assert!(b.time > a.time);
    assert_eq!(ctx.metrics.running_samplers(), 1);

    // The client vanishing (no Eof) ends the other viewer too, and with it the sampler.
    drop(two.writer);
    drop(two.reader);
    tokio::time::timeout(Duration::from_secs(10), two.served)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ctx.metrics.viewers(), 0);
    until("the sampler stops", || ctx.metrics.running_samplers() == 0).await;
    assert_eq!(ctx.metrics.samplers_started(), 1);
}
