//! Benchmark of the audit export: records per second to a local HTTP sink (Splunk HEC and the
//! webhook, answered by an in-process axum receiver) and to a real rsyslogd over TCP, and the
//! lag from an entry's append to the sink's acknowledgement (p50, p99) while appending at a
//! steady rate.
//!
//! ```sh
//! cargo run --release -p m87-audit-export --example audit_export_bench -- [BACKLOG] [RATE] [SECONDS]
//! ```
//! Run by `loadtest/audit-export-bench.sh`, which also writes the report.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/rsyslog.rs"]
#[allow(dead_code)]
mod rsyslog;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use m87_audit_export::{
    AlwaysHeld, AuditEntry, CursorStore, EntrySource, Exporter, MemoryCursors, MemorySource,
    SinkCursor, SinksConfig, Timing,
};
use m87_events::domain::SessionOpened;
use m87_events::token::Operation;
use m87_events::{
    Actor, CorrelationId, DomainEvent, EventEnvelope, EventId, Metadata, SessionId, StreamId,
};

/// The log, remembering when each entry was appended.
#[derive(Default)]
struct TimedSource {
    log: MemorySource,
    appended: Mutex<Vec<Instant>>,
}

impl TimedSource {
    fn append(&self, n: usize) {
        for i in 0..n {
            let env = EventEnvelope {
                event_id: EventId::new(),
                stream_id: StreamId::from_raw(format!("session-{i}")),
                stream_version: 1,
                global_position: 0,
                recorded_at: Utc::now(),
                metadata: Metadata {
                    actor: Actor::User {
                        email: "alice@example.com".parse().unwrap(),
                        key_id: None,
                        subject: None,
                    },
                    source_ip: Some("192.0.2.7".parse().unwrap()),
                    correlation_id: CorrelationId::new(),
                },
                schema_version: 1,
                event: DomainEvent::SessionOpened(SessionOpened {
                    session_id: SessionId::new(),
                    device_id: "bench-device-01".parse().unwrap(),
                    operation: Operation::Exec,
                    args: serde_json::json!({ "command": ["systemctl", "restart", "app"] }),
                    expires_at: Utc::now(),
                    credential: None,
                    relay: None,
                    recorded: false,
                }),
            };
            let mut times = self.appended.lock().unwrap();
            self.log.append(env);
            times.push(Instant::now());
        }
    }
}

#[async_trait]
impl EntrySource for TimedSource {
    async fn entries_after(&self, position: u64, limit: usize) -> Result<Vec<AuditEntry>, String> {
        self.log.entries_after(position, limit).await
    }
    async fn head(&self) -> Result<u64, String> {
        self.log.head().await
    }
}

/// Cursors that record, for every entry a save acknowledges, the time since its append.
struct TimedCursors {
    inner: MemoryCursors,
    source: Arc<TimedSource>,
    last: AtomicU64,
    lags: Mutex<Vec<Duration>>,
}

#[async_trait]
impl CursorStore for TimedCursors {
    async fn load(&self, sink: &str) -> Result<Option<SinkCursor>, String> {
        self.inner.load(sink).await
    }
    async fn save(&self, sink: &str, cursor: &SinkCursor) -> Result<(), String> {
        let now = Instant::now();
        let prev = self.last.swap(cursor.position, Ordering::SeqCst);
        {
            let times = self.source.appended.lock().unwrap();
            let mut lags = self.lags.lock().unwrap();
            for p in prev + 1..=cursor.position {
                lags.push(now - times[(p - 1) as usize]);
            }
        }
        self.inner.save(sink, cursor).await
    }
}

struct Result1 {
    name: String,
    backlog_rate: f64,
    rate: u64,
    kept_up: bool,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn run_one(name: &str, config: &str, backlog: usize, rate: u64, seconds: u64) -> Result1 {
    let cfg = SinksConfig::from_str_at(config, std::path::Path::new("/bench/sinks.toml")).unwrap();
    // 1. Backlog: everything appended first, then exported as fast as the sink takes it.
    let source = Arc::new(TimedSource::default());
    source.append(backlog);
    let cursors = Arc::new(TimedCursors {
        inner: MemoryCursors::new(),
        source: source.clone(),
        last: AtomicU64::new(0),
        lags: Mutex::default(),
    });
    let (stop, rx) = tokio::sync::watch::channel(false);
    let timing = Timing {
        poll: Duration::from_millis(1000),
        ..Timing::default()
    };
    let start = Instant::now();
    let handle = Exporter::new(&cfg, source.clone(), cursors.clone(), Arc::new(AlwaysHeld))
        .unwrap()
        .with_timing(timing)
        .spawn(rx);
    while handle.status()[0].cursor < backlog as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let backlog_rate = backlog as f64 / start.elapsed().as_secs_f64();
    let st = &handle.status()[0];
    assert_eq!((st.delivered, st.rejected), (backlog as u64, 0), "{st:?}");
    let _ = stop.send(true);
    handle.join().await;

    // 2. Steady rate: appends every 10 ms, a notify after each, for `seconds`.
    let source = Arc::new(TimedSource::default());
    let cursors = Arc::new(TimedCursors {
        inner: MemoryCursors::new(),
        source: source.clone(),
        last: AtomicU64::new(0),
        lags: Mutex::default(),
    });
    let (stop, rx) = tokio::sync::watch::channel(false);
    let handle = Exporter::new(&cfg, source.clone(), cursors.clone(), Arc::new(AlwaysHeld))
        .unwrap()
        .with_timing(timing)
        .spawn(rx);
    let per_tick = (rate / 100).max(1) as usize;
    let total = per_tick as u64 * 100 * seconds;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut appended = 0u64;
    while appended < total {
        tick.tick().await;
        source.append(per_tick);
        appended += per_tick as u64;
        handle.notify();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.status()[0].cursor < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kept_up = handle.status()[0].cursor == total;
    let _ = stop.send(true);
    handle.join().await;
    let mut lags = cursors.lags.lock().unwrap().clone();
    Result1 {
        name: name.to_owned(),
        backlog_rate,
        rate: per_tick as u64 * 100,
        kept_up,
        p50: pct(&mut lags, 0.50),
        p99: pct(&mut lags, 0.99),
        max: pct(&mut lags, 1.0),
    }
}

async fn receiver(lines: Arc<AtomicU64>) -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let lines = lines.clone();
        async move {
            lines.fetch_add(
                body.iter().filter(|b| **b == b'\n').count() as u64,
                Ordering::Relaxed,
            );
            r#"{"text":"Success","code":0}"#
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: BACKLOG RATE SECONDS"))
        .collect();
    let backlog = *args.first().unwrap_or(&200_000) as usize;
    let rate = *args.get(1).unwrap_or(&20_000);
    let seconds = *args.get(2).unwrap_or(&10);
    let lines = Arc::new(AtomicU64::new(0));
    let addr = receiver(lines.clone()).await;
    let mut results = Vec::new();
    let hec = format!(
        "[[sink]]\nname = \"hec\"\nkind = \"splunk_hec\"\nurl = \"http://{addr}\"\ntoken = \"t\"\nbatch_size = 500\n"
    );
    results.push(
        run_one(
            "HTTP: Splunk HEC, OCSF, batch 500",
            &hec,
            backlog,
            rate,
            seconds,
        )
        .await,
    );
    let hook = format!(
        "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{addr}/\"\nhmac_key = \"k\"\nbatch_size = 500\n"
    );
    results.push(
        run_one(
            "HTTP: webhook, OCSF, HMAC, batch 500",
            &hook,
            backlog,
            rate,
            seconds,
        )
        .await,
    );

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rs = rsyslog::Rsyslog::start(dir.path(), port, None);
    let syslog = format!(
        "[[sink]]\nname = \"rs\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nbatch_size = 500\n"
    );
    let syslog_backlog = backlog;
    results.push(
        run_one(
            "rsyslog over TCP, CEF, batch 500",
            &syslog,
            syslog_backlog,
            rate,
            seconds,
        )
        .await,
    );
    let expected = syslog_backlog as u64 + (rate / 100).max(1) * 100 * seconds;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (rs.lines().len() as u64) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let written = rs.lines().len();

    println!(
        "| sink | backlog export (records/s) | steady rate (records/s) | kept up | lag p50 | lag p99 | lag max |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {:.0} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            r.name,
            r.backlog_rate,
            r.rate,
            if r.kept_up { "yes" } else { "no" },
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.max.as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "HTTP receiver counted {} records; rsyslogd wrote {written} of {expected} records to its file.",
        lines.load(Ordering::Relaxed)
    );
}
