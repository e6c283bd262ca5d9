//! Delivery guarantees: nothing lost while a receiver is down, resumption from the cursor after
//! a restart, malformed records skipped, a stalled receiver cut off without holding the other
//! sinks, the file sink's rotation, and the lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::receiver::{Receiver, webhook_event_ids};
use common::{run, wait_until};
use m87_audit_export::config::{FileConfig, Format, HttpTarget, Secret, WebhookConfig};
use m87_audit_export::sink::{FileSink, WebhookSink};
use m87_audit_export::{AuditEntry, Exporter, Lease, MemoryCursors, MemorySource, Sink};

fn webhook(url: String, timeout: Duration) -> Box<dyn Sink> {
    let cfg = WebhookConfig {
        target: HttpTarget {
            url: url.parse().unwrap(),
            ca_certs: None,
        },
        hmac_key: Secret::new("k"),
        format: Format::Json,
    };
    Box::new(WebhookSink::new(&cfg, timeout).unwrap())
}

fn ids(entries: &[AuditEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.envelope.event_id.to_string())
        .collect()
}

/// Every entry arrived, in order of first arrival, and anything else is a repeat of the same id.
fn assert_all_in_order(received: &[String], entries: &[AuditEntry]) {
    let mut seen = HashSet::new();
    let firsts: Vec<String> = received
        .iter()
        .filter(|id| seen.insert((*id).clone()))
        .cloned()
        .collect();
    assert_eq!(firsts.len(), entries.len(), "distinct records received");
    assert_eq!(firsts, ids(entries), "in event order, none lost");
    let known: HashSet<String> = ids(entries).into_iter().collect();
    assert!(
        received.iter().all(|id| known.contains(id)),
        "nothing but the entries' own ids"
    );
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_all_500_in_order() {
    let rx = Receiver::start(|_| (503, b"maintenance".to_vec())).await;
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 500);
    let running = run(
        vec![(
            "hook",
            100,
            Duration::from_secs(2),
            webhook(rx.url("/"), Duration::from_secs(2)),
        )],
        source,
        Arc::new(MemoryCursors::new()),
    );
    wait_until(Duration::from_secs(10), "retries while down", || {
        running.status("hook").retried >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = running.status("hook");
    assert_eq!(
        (st.cursor, st.delivered, st.lag_records),
        (0, 0, 500),
        "{st:?}"
    );
    assert!(st.last_error.as_deref().unwrap().contains("503"), "{st:?}");
    assert!(
        st.lag_seconds > 0.5,
        "the oldest unexported record's age: {st:?}"
    );
    rx.set(|_| (200, Vec::new()));
    wait_until(Duration::from_secs(15), "all 500 delivered", || {
        running.status("hook").cursor == 500
    })
    .await;
    assert_all_in_order(&webhook_event_ids(&rx), &entries);
    let st = running.status("hook");
    assert_eq!((st.delivered, st.rejected, st.lag_records), (500, 0, 0));
    assert!(
        st.last_success_at > st.last_error_at,
        "the error is older than the last success: {st:?}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_restarted_exporter_resumes_from_the_saved_cursor() {
    // A slow receiver, so the first exporter is stopped in the middle of the export.
    let rx = Receiver::start(|_| {
        std::thread::sleep(Duration::from_millis(30));
        (200, Vec::new())
    })
    .await;
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 500);
    let cursors = Arc::new(MemoryCursors::new());
    let first = run(
        vec![(
            "hook",
            20,
            Duration::from_secs(5),
            webhook(rx.url("/"), Duration::from_secs(5)),
        )],
        source.clone(),
        cursors.clone(),
    );
    wait_until(Duration::from_secs(10), "some batches", || {
        first.status("hook").cursor >= 100
    })
    .await;
    first.shutdown().await;
    let stopped_at = webhook_event_ids(&rx).len();
    assert!(
        stopped_at < 500,
        "the first exporter was stopped in the middle ({stopped_at})"
    );

    let second = run(
        vec![(
            "hook",
            100,
            Duration::from_secs(5),
            webhook(rx.url("/"), Duration::from_secs(5)),
        )],
        source,
        cursors,
    );
    wait_until(Duration::from_secs(15), "the rest", || {
        second.status("hook").cursor == 500
    })
    .await;
    let received = webhook_event_ids(&rx);
    assert_all_in_order(&received, &entries);
    assert!(
        received.len() <= 500 + 20,
        "at most the batch in flight is sent twice ({})",
        received.len()
    );
    assert_eq!(
        second.status("hook").delivered,
        500,
        "the counts survive the restart"
    );
    second.shutdown().await;
}

#[tokio::test]
async fn a_malformed_record_is_rejected_and_the_rest_delivered() {
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 60);
    let bad = entries[37].envelope.event_id.to_string();
    let b = bad.clone();
    let rx = Receiver::start(move |r| {
        if std::str::from_utf8(&r.body).unwrap().contains(&b) {
            (400, b"{\"error\":\"bad record\"}".to_vec())
        } else {
            (200, Vec::new())
        }
    })
    .await;
    let running = run(
        vec![(
            "hook",
            25,
            Duration::from_secs(5),
            webhook(rx.url("/"), Duration::from_secs(5)),
        )],
        source.clone(),
        Arc::new(MemoryCursors::new()),
    );
    wait_until(Duration::from_secs(10), "all 60 handled", || {
        running.status("hook").cursor == 60
    })
    .await;
    let st = running.status("hook");
    assert_eq!((st.delivered, st.rejected), (59, 1), "{st:?}");
    assert!(st.last_error.as_deref().unwrap().contains("400"), "{st:?}");
    let good: Vec<AuditEntry> = entries
        .iter()
        .filter(|e| e.envelope.event_id.to_string() != bad)
        .cloned()
        .collect();
    assert_all_in_order(&webhook_event_ids(&rx), &good);

    // Later entries still flow.
    let more = common::events::append_sessions(&source, 5);
    running.handle.notify();
    wait_until(Duration::from_secs(10), "the later 5", || {
        running.status("hook").cursor == 65
    })
    .await;
    let received = webhook_event_ids(&rx);
    assert_eq!(&received[received.len() - 5..], ids(&more).as_slice());
    running.shutdown().await;
}

#[tokio::test]
async fn a_stalled_receiver_is_cut_off_and_other_sinks_keep_flowing() {
    // Accepts TCP connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled = format!("http://{}/", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let good = Receiver::ok("").await;
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 50);
    let running = run(
        vec![
            (
                "stalled",
                10,
                Duration::from_millis(500),
                webhook(stalled, Duration::from_millis(500)),
            ),
            (
                "good",
                10,
                Duration::from_secs(5),
                webhook(good.url("/"), Duration::from_secs(5)),
            ),
        ],
        source,
        Arc::new(MemoryCursors::new()),
    );
    wait_until(
        Duration::from_secs(10),
        "the good sink delivered everything",
        || running.status("good").cursor == 50,
    )
    .await;
    assert_eq!(webhook_event_ids(&good), ids(&entries));
    wait_until(
        Duration::from_secs(10),
        "the stalled sink timed out twice",
        || running.status("stalled").retried >= 2,
    )
    .await;
    let st = running.status("stalled");
    assert_eq!(st.cursor, 0);
    assert!(
        st.last_error.as_deref().unwrap().contains("time limit"),
        "{st:?}"
    );
    running.shutdown().await;
    hold.abort();
}

#[tokio::test]
async fn the_file_sink_appends_and_rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = FileSink::new(&FileConfig {
        path: path.clone(),
        max_bytes: 16 * 1024,
        keep: 2,
        format: Format::Ocsf,
    });
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 120);
    let running = run(
        vec![("file", 10, Duration::from_secs(5), Box::new(sink))],
        source,
        Arc::new(MemoryCursors::new()),
    );
    wait_until(Duration::from_secs(10), "all written", || {
        running.status("file").cursor == 120
    })
    .await;
    running.shutdown().await;
    let read = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["metadata"]["uid"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let rotated = |n: u32| std::path::PathBuf::from(format!("{}.{n}", path.display()));
    assert!(rotated(1).exists() && rotated(2).exists(), "rotated files");
    assert!(!rotated(3).exists(), "keep = 2");
    for p in [path.clone(), rotated(1), rotated(2)] {
        assert!(
            std::fs::metadata(&p).unwrap().len() <= 16 * 1024,
            "{} over max_bytes",
            p.display()
        );
    }
    let mut kept = read(&rotated(2));
    kept.extend(read(&rotated(1)));
    kept.extend(read(&path));
    let all = ids(&entries);
    assert_eq!(
        kept.as_slice(),
        &all[all.len() - kept.len()..],
        "the newest records, in order, across the files"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

struct Switch(AtomicBool);

#[async_trait]
impl Lease for Switch {
    async fn hold(&self, _: &str) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn without_the_lease_nothing_is_exported_until_it_is_taken() {
    let rx = Receiver::ok("").await;
    let source = Arc::new(MemorySource::new());
    let entries = common::events::append_sessions(&source, 10);
    let cursors = Arc::new(MemoryCursors::new());
    use m87_audit_export::CursorStore;
    cursors
        .save(
            "hook",
            &m87_audit_export::SinkCursor {
                position: 4,
                delivered: 4,
                rejected: 0,
            },
        )
        .await
        .unwrap();
    let lease = Arc::new(Switch(AtomicBool::new(false)));
    let sinks = vec![m87_audit_export::ExportSink {
        name: "hook".into(),
        batch_size: 100,
        timeout: Duration::from_secs(5),
        sink: webhook(rx.url("/"), Duration::from_secs(5)),
    }];
    let (stop, watch_rx) = tokio::sync::watch::channel(false);
    let handle = Exporter::from_sinks(sinks, source, cursors, lease.clone())
        .with_timing(common::fast_timing())
        .spawn(watch_rx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.requests().is_empty(), "another process holds the lease");
    assert!(!handle.status()[0].active);
    lease.0.store(true, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(5),
        "export after taking the lease",
        || handle.status()[0].cursor == 10,
    )
    .await;
    assert_eq!(
        webhook_event_ids(&rx),
        ids(&entries[4..]),
        "from the saved cursor"
    );
    assert_eq!(handle.status()[0].delivered, 10);
    let _ = stop.send(true);
    handle.join().await;
}

#[tokio::test]
async fn a_batch_cut_off_half_way_leaves_no_half_line_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut sink = FileSink::new(&FileConfig {
        path: path.clone(),
        max_bytes: 1 << 20,
        keep: 1,
        format: Format::Json,
    });
    let source = MemorySource::new();
    let first = common::events::append_sessions(&source, 2);
    sink.deliver(&first).await.unwrap();
    // What a write cut off by the time limit leaves behind, then the exporter's reset.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"envelope\":{\"event_")
        .unwrap();
    sink.reset();
    let second = common::events::append_sessions(&source, 2);
    sink.deliver(&second).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let got: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is whole JSON")["envelope"]["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ids(&[first, second].concat()));
}
