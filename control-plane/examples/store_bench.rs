//! Event-store benchmark: append rate, append latency and projection lag, on SQLite or MongoDB.
//!
//! It wires the library the way `m87-server` does (see `server::open_single_machine` and
//! `server::open_fleet`): the event store, a [`Publisher`] tailing it onto a bus (in-process, or
//! NATS JetStream with `--nats`), and a running [`Projector`] over every projection, fed by the
//! bus and catching up from the store. After each append it calls `Publisher::notify`, as the
//! command handlers do. Then it measures:
//!
//! 1. `idle`: one append, then wait until every projection has applied it; repeated. The
//!    append latency, and the projection lag with nothing else going on (read-your-write).
//! 2. `sequential`: one writer appends single-event batches back to back while the projector
//!    runs; appends/s, append latency, and the lag of each event under that load.
//! 3. `concurrent`: the same with `--writers` writers at once.
//! 4. `replay`: a rebuild of every projection from the whole log (projector throughput alone).
//!
//! Every event is a `RegistrationRequested` on a new registration stream (expected version 0),
//! which adds one row to the registrations read model; the other three projections only move
//! their checkpoints. Projection lag = the time from `append` returning to the projector's
//! progress (the lowest checkpoint of all projections) reaching the event's global position, as
//! seen by a task that waits on that progress; it can be slightly negative when the projector
//! got there before the writer task resumed, and is then counted as 0.
//!
//! ```sh
//! cargo run --release -p m87-control-plane --example store_bench -- --backend sqlite --path /tmp/x
//! cargo run --release -p m87-control-plane --example store_bench -- --backend mongo \
//!     --mongodb-uri mongodb://127.0.0.1:27017/ --nats nats://127.0.0.1:4222
//! ```
//!
//! Prints one JSON object with the results on stdout; progress on stderr.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use m87_control_plane::bus::nats::{JetStreamBus, JetStreamConfig};
use m87_control_plane::bus::{EventBus, InProcessBus, Publisher};
use m87_control_plane::projections::{Projector, all_projections};
use m87_control_plane::store::ReadStore;
use m87_control_plane::store::mongo::MongoReadStore;
use m87_control_plane::store::mongo::{MongoStore, connect_database};
use m87_control_plane::store::sqlite::SqliteReadStore;
use m87_control_plane::store::sqlite::SqliteStore;
use m87_control_plane::store::{EventStore, StreamAppend};
use m87_events::domain::RegistrationRequested;
use m87_events::{DomainEvent, Metadata, RequestId, StreamId, SystemInfo};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

struct Args {
    backend: String,
    path: Option<PathBuf>,
    mongodb_uri: Option<String>,
    database: String,
    nats: Option<String>,
    idle: usize,
    sequential: usize,
    concurrent: usize,
    writers: usize,
    replay: bool,
}

fn usage() -> &'static str {
    "usage: store_bench --backend sqlite|mongo [--path DIR] [--mongodb-uri URI] [--database NAME]\n\
     \x20      [--nats URL[,URL]] [--idle N] [--sequential N] [--concurrent N] [--writers K] [--no-replay]"
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        backend: String::new(),
        path: None,
        mongodb_uri: std::env::var("MONGODB_URI").ok().filter(|s| !s.is_empty()),
        database: format!("m87_store_bench_{}", std::process::id()),
        nats: None,
        idle: 200,
        sequential: 2000,
        concurrent: 2000,
        writers: 8,
        replay: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--backend" => a.backend = value()?,
            "--path" => a.path = Some(PathBuf::from(value()?)),
            "--mongodb-uri" => a.mongodb_uri = Some(value()?),
            "--database" => a.database = value()?,
            "--nats" => a.nats = Some(value()?),
            "--idle" => a.idle = value()?.parse()?,
            "--sequential" => a.sequential = value()?.parse()?,
            "--concurrent" => a.concurrent = value()?.parse()?,
            "--writers" => a.writers = value()?.parse::<usize>()?.max(1),
            "--no-replay" => a.replay = false,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{}", usage()),
        }
    }
    if a.backend != "sqlite" && a.backend != "mongo" {
        bail!("--backend sqlite or --backend mongo\n{}", usage());
    }
    Ok(a)
}

/// One new registration request: a new stream, one event.
fn registration(n: usize) -> anyhow::Result<Vec<StreamAppend>> {
    let request_id = RequestId::new();
    let event = DomainEvent::RegistrationRequested(RegistrationRequested {
        request_id,
        device_id: format!("bench-device-{n:08}").parse()?,
        name: format!("bench-{n}").parse()?,
        owner_scope: "user:bench@example.com".parse()?,
        system_info: SystemInfo {
            hostname: format!("bench-{n}"),
            platform: "linux".into(),
            architecture: "x86_64".into(),
            os_version: "Debian GNU/Linux 13 (trixie)".into(),
            kernel: "6.12.0".into(),
            cpu_count: 4,
            memory_bytes: 4 << 30,
        },
        claim_secret_hash: "0".repeat(64),
        expires_at: Utc::now() + chrono::Duration::hours(1),
    });
    Ok(vec![StreamAppend {
        stream_id: StreamId::registration(&request_id),
        expected_version: 0,
        events: vec![event],
    }])
}

/// Milliseconds, nearest-rank percentiles.
fn stats(samples: &[f64]) -> Value {
    if samples.is_empty() {
        return json!(null);
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    };
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "n": s.len(),
        "p50": r(pct(50.0)),
        "p90": r(pct(90.0)),
        "p99": r(pct(99.0)),
        "max": r(s[s.len() - 1]),
        "mean": r(mean),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Records when the projector's progress moved: (position reached, when it was seen).
struct ProgressLog {
    seen: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressLog {
    fn start(projector: Projector) -> Self {
        let seen = Arc::new(Mutex::new(vec![(projector.progress(), Instant::now())]));
        let (stop, mut stopped) = watch::channel(false);
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut last = projector.progress();
            loop {
                tokio::select! {
                    reached = projector.wait_for(last + 1, Duration::from_millis(200)) => {
                        if reached {
                            let now = Instant::now();
                            last = projector.progress();
                            log.lock().await.push((last, now));
                        }
                    }
                    _ = stopped.changed() => return,
                }
            }
        });
        Self { seen, stop, task }
    }

    /// The lag of each (position, appended at): from the append returning to the first time the
    /// progress was seen at or beyond the position.
    async fn lags(self, appends: &[(u64, Instant)]) -> (Vec<f64>, usize) {
        // The caller saw the projector reach the last position; let the log task see it too.
        let last = appends.iter().map(|(p, _)| *p).max().unwrap_or(0);
        for _ in 0..500 {
            if self
                .seen
                .lock()
                .await
                .last()
                .is_some_and(|(p, _)| *p >= last)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let seen = self.seen.lock().await;
        let mut lags = Vec::with_capacity(appends.len());
        let mut early = 0;
        for (pos, at) in appends {
            let i = seen.partition_point(|(p, _)| p < pos);
            if let Some((_, t)) = seen.get(i) {
                if t < at {
                    early += 1;
                    lags.push(0.0);
                } else {
                    lags.push(ms(t.duration_since(*at)));
                }
            }
        }
        (lags, early)
    }
}

struct Rig {
    store: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    projector: Projector,
    publisher: Publisher,
    bus_name: String,
    _shutdown: watch::Sender<bool>,
}

async fn rig(args: &Args) -> anyhow::Result<(Rig, Value)> {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (store, read, backend): (Arc<dyn EventStore>, Arc<dyn ReadStore>, Value) =
        match args.backend.as_str() {
            "sqlite" => {
                let dir = args
                    .path
                    .clone()
                    .context("--path DIR is needed for sqlite")?;
                std::fs::create_dir_all(&dir)?;
                let db = dir.join("m87.db");
                (
                    Arc::new(SqliteStore::open(&db)?),
                    Arc::new(SqliteReadStore::open(&db)?),
                    json!({ "kind": "sqlite", "file": db.display().to_string(),
                            "settings": "WAL, synchronous=FULL (as m87-server)" }),
                )
            }
            _ => {
                let uri = args
                    .mongodb_uri
                    .clone()
                    .context("--mongodb-uri URI (or MONGODB_URI) is needed for mongo")?;
                let db = connect_database(&uri, &args.database).await?;
                (
                    Arc::new(MongoStore::open(&db).await?),
                    Arc::new(MongoReadStore::open(&db).await?),
                    json!({ "kind": "mongo", "database": args.database }),
                )
            }
        };
    let (bus, bus_name): (Arc<dyn EventBus>, String) = match &args.nats {
        Some(urls) => {
            let suffix = std::process::id();
            let config = JetStreamConfig {
                servers: urls.split(',').map(str::to_owned).collect(),
                stream: format!("M87_STORE_BENCH_{suffix}"),
                subject_prefix: format!("m87bench{suffix}.events"),
                ..JetStreamConfig::default()
            };
            (
                Arc::new(JetStreamBus::connect(config).await?),
                "NATS JetStream (1 replica, file storage)".to_owned(),
            )
        }
        None => (Arc::new(InProcessBus::new(1024)), "in-process".to_owned()),
    };
    let projector =
        Projector::new(Arc::clone(&store), Arc::clone(&read), all_projections()).await?;
    projector.catch_up().await?;
    projector.clone().spawn(bus.as_ref(), shutdown_rx.clone());
    let head = store.head().await?;
    let publisher = Publisher::spawn(Arc::clone(&store), bus, head, shutdown_rx);
    Ok((
        Rig {
            store,
            read,
            projector,
            publisher,
            bus_name,
            _shutdown: shutdown,
        },
        backend,
    ))
}

impl Rig {
    async fn append_one(&self, n: usize) -> anyhow::Result<(u64, Duration, Instant)> {
        let batch = registration(n)?;
        let t0 = Instant::now();
        let stored = self.store.append(batch, Metadata::system("bench")).await?;
        let done = Instant::now();
        self.publisher.notify();
        let pos = stored.last().map(|e| e.global_position).unwrap_or(0);
        Ok((pos, done - t0, done))
    }

    async fn drain(&self) -> anyhow::Result<Duration> {
        let head = self.store.head().await?;
        let t0 = Instant::now();
        if !self
            .projector
            .wait_for(head, Duration::from_secs(600))
            .await
        {
            bail!("projections did not reach {head} within 10 minutes");
        }
        Ok(t0.elapsed())
    }
}

async fn idle(rig: &Rig, n: usize, offset: usize) -> anyhow::Result<Value> {
    let mut append = Vec::with_capacity(n);
    let mut lag = Vec::with_capacity(n);
    for i in 0..n {
        let (pos, took, done) = rig.append_one(offset + i).await?;
        if !rig.projector.wait_for(pos, Duration::from_secs(60)).await {
            bail!("projection of position {pos} did not happen within 60 s");
        }
        append.push(ms(took));
        lag.push(ms(done.elapsed()));
    }
    Ok(json!({ "appends": n, "append_ms": stats(&append), "lag_ms": stats(&lag) }))
}

async fn load(rig: &Rig, n: usize, writers: usize, offset: usize) -> anyhow::Result<Value> {
    let progress = ProgressLog::start(rig.projector.clone());
    let appends = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let share = n / writers + usize::from(w < n % writers);
        let rig_store = Arc::clone(&rig.store);
        let publisher = rig.publisher.clone();
        let appends = Arc::clone(&appends);
        let latencies = Arc::clone(&latencies);
        let base = offset + w * (n / writers + 1);
        tasks.push(tokio::spawn(async move {
            for i in 0..share {
                let batch = registration(base + i)?;
                let t0 = Instant::now();
                let stored = rig_store.append(batch, Metadata::system("bench")).await?;
                let done = Instant::now();
                publisher.notify();
                let pos = stored.last().map(|e| e.global_position).unwrap_or(0);
                appends.lock().await.push((pos, done));
                latencies.lock().await.push(ms(done - t0));
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let drain = rig.drain().await?;
    let total = started.elapsed().as_secs_f64();
    let appends = appends.lock().await.clone();
    let (lags, early) = progress.lags(&appends).await;
    let latencies = latencies.lock().await.clone();
    Ok(json!({
        "writers": writers,
        "appends": n,
        "secs": (secs * 1000.0).round() / 1000.0,
        "appends_per_s": (n as f64 / secs).round(),
        "append_ms": stats(&latencies),
        "lag_ms": stats(&lags),
        "lag_zero_because_projected_before_append_returned": early,
        "drain_after_last_append_ms": (ms(drain) * 10.0).round() / 10.0,
        "projected_per_s_incl_drain": (n as f64 / total).round(),
    }))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let (rig, backend) = rig(&args).await?;
    let mut out = json!({
        "backend": backend,
        "bus": rig.bus_name,
        "event": "RegistrationRequested, one per append, each on a new stream",
        "projections": all_projections().iter().map(|p| p.name()).collect::<Vec<_>>(),
        "tokio_worker_threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    let mut offset = 0;
    eprintln!(
        "[store_bench {}] idle: {} appends, each waited for",
        args.backend, args.idle
    );
    out["idle"] = idle(&rig, args.idle, offset).await?;
    offset += args.idle;
    eprintln!(
        "[store_bench {}] sequential: {} appends, 1 writer",
        args.backend, args.sequential
    );
    out["sequential"] = load(&rig, args.sequential, 1, offset).await?;
    offset += args.sequential + 1;
    eprintln!(
        "[store_bench {}] concurrent: {} appends, {} writers",
        args.backend, args.concurrent, args.writers
    );
    out["concurrent"] = load(&rig, args.concurrent, args.writers, offset).await?;
    if args.replay {
        let events = rig.store.head().await?;
        eprintln!(
            "[store_bench {}] replay: rebuilding every projection from {events} events",
            args.backend
        );
        let t0 = Instant::now();
        rig.projector.rebuild(None).await?;
        let secs = t0.elapsed().as_secs_f64();
        let rows = rig.read.list("registrations").await?.len();
        if rows as u64 != events {
            bail!("after the rebuild the registrations read model has {rows} rows, not {events}");
        }
        out["replay"] = json!({
            "events": events,
            "secs": (secs * 1000.0).round() / 1000.0,
            "events_per_s": (events as f64 / secs).round(),
        });
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
