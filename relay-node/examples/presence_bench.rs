//! Presence-registry benchmark against a real `nats-server`, and two helpers for fleet benchmarks.
//!
//! `bench` (the default): two [`NatsPresence`] instances with their own NATS connections, as two
//! relays would have: relay A writes, relay B reads. It measures
//!
//! - `register` (a KV put) of N devices by A, one after the other;
//! - how long B's cache (fed by its watch of the bucket) takes to show an entry A just wrote;
//! - `lookup` on B of registered devices (answered from the cache), of devices nobody registered
//!   (always a NATS round trip), and `lookup_uncached` (a NATS round trip, `kv.entry`);
//! - `refresh` (a KV update checked against the revision) and `remove_if_owner` by A;
//! - registrations per second with many at once (a reconnect storm on one relay).
//!
//! ```sh
//! presence_bench --nats nats://127.0.0.1:4222 --devices 1000 --lookups 2000
//! ```
//!
//! `count --bucket m87_presence`: how many entries the bucket holds, per relay (JSON).
//!
//! `watch --bucket m87_presence --expect N --since-ms UNIX_MS [--timeout-secs S]`: follows the
//! bucket until N distinct devices were written at or after UNIX_MS, and prints when each was
//! written (the NATS server's timestamp of the write) and seen, relative to UNIX_MS, and by
//! which relay (JSON).
//!
//! Results go to stdout as one JSON object; progress to stderr.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chrono::{TimeZone, Utc};
use futures_util::StreamExt;
use m87_events::DeviceId;
use m87_relay_node::presence::{NatsPresence, NatsPresenceConfig, PresenceEntry, PresenceRegistry};
use serde_json::{Value, json};

struct Args {
    mode: String,
    nats: Vec<String>,
    bucket: Option<String>,
    devices: usize,
    lookups: usize,
    replicas: usize,
    storm: usize,
    storm_tasks: usize,
    expect: usize,
    since_ms: i64,
    timeout_secs: u64,
}

fn usage() -> &'static str {
    "usage: presence_bench [bench|count|watch] --nats URL[,URL] [--bucket NAME] [--devices N]\n\
     \x20      [--lookups N] [--replicas R] [--storm N] [--storm-tasks K]\n\
     \x20      [--expect N --since-ms UNIX_MS --timeout-secs S]   (watch)"
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        mode: "bench".into(),
        nats: vec!["nats://127.0.0.1:4222".into()],
        bucket: None,
        devices: 1000,
        lookups: 2000,
        replicas: 1,
        storm: 1000,
        storm_tasks: 100,
        expect: 0,
        since_ms: 0,
        timeout_secs: 120,
    };
    let mut it = std::env::args().skip(1).peekable();
    if let Some(m) = it.peek()
        && !m.starts_with('-')
    {
        a.mode = it.next().unwrap_or_default();
    }
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--nats" => a.nats = value()?.split(',').map(str::to_owned).collect(),
            "--bucket" => a.bucket = Some(value()?),
            "--devices" => a.devices = value()?.parse()?,
            "--lookups" => a.lookups = value()?.parse()?,
            "--replicas" => a.replicas = value()?.parse()?,
            "--storm" => a.storm = value()?.parse()?,
            "--storm-tasks" => a.storm_tasks = value()?.parse::<usize>()?.max(1),
            "--expect" => a.expect = value()?.parse()?,
            "--since-ms" => a.since_ms = value()?.parse()?,
            "--timeout-secs" => a.timeout_secs = value()?.parse()?,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{}", usage()),
        }
    }
    if !matches!(a.mode.as_str(), "bench" | "count" | "watch") {
        bail!("unknown mode {}\n{}", a.mode, usage());
    }
    Ok(a)
}

/// Nearest-rank percentiles of durations, in microseconds.
fn stats_us(samples: &[Duration]) -> Value {
    if samples.is_empty() {
        return json!(null);
    }
    let mut s: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    };
    let r = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "n": s.len(),
        "p50_us": r(pct(50.0)),
        "p90_us": r(pct(90.0)),
        "p99_us": r(pct(99.0)),
        "max_us": r(s[s.len() - 1]),
        "mean_us": r(s.iter().sum::<f64>() / s.len() as f64),
    })
}

/// A small deterministic generator, so no extra dependency is needed for random picks.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn device(prefix: &str, n: usize) -> anyhow::Result<DeviceId> {
    Ok(format!("{prefix}-{n:08}").parse()?)
}

fn entry(relay: &str, epoch: u64) -> anyhow::Result<PresenceEntry> {
    let relay_addr: SocketAddr = "127.0.0.1:8091".parse()?;
    Ok(PresenceEntry {
        relay_id: relay.to_owned(),
        relay_addr,
        epoch,
        connected_at: Utc::now(),
    })
}

async fn client(servers: &[String], name: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(servers.to_vec())
        .await
        .with_context(|| format!("connecting to NATS at {}", servers.join(",")))
}

async fn bench(args: &Args) -> anyhow::Result<Value> {
    let bucket = args
        .bucket
        .clone()
        .unwrap_or_else(|| format!("m87_presence_bench_{}", std::process::id()));
    let config = NatsPresenceConfig {
        bucket: bucket.clone(),
        replicas: args.replicas,
        ..NatsPresenceConfig::default()
    };
    let a = NatsPresence::new(client(&args.nats, "bench-relay-a").await?, config.clone()).await?;
    let b = NatsPresence::new(client(&args.nats, "bench-relay-b").await?, config.clone()).await?;
    for _ in 0..500 {
        if a.cache_is_current() && b.cache_is_current() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = args.devices;
    let mut out = json!({
        "bucket": bucket,
        "nats_servers": args.nats.len(),
        "replicas": args.replicas,
        "ttl_secs": config.ttl.as_secs(),
        "devices": n,
    });

    // Register, and watch each write arrive in the other instance's cache.
    eprintln!("[presence_bench] register {n} devices on relay A; wait for each in relay B's cache");
    let mut register = Vec::with_capacity(n);
    let mut propagation = Vec::with_capacity(n);
    let mut revisions = Vec::with_capacity(n);
    let e = entry("bench-relay-a", 1)?;
    for i in 0..n {
        let d = device("bench", i)?;
        let t0 = Instant::now();
        let rev = a.register(&d, &e).await?;
        let t1 = Instant::now();
        register.push(t1 - t0);
        revisions.push(rev);
        let deadline = t1 + Duration::from_secs(5);
        loop {
            if b.cached(&d).is_some_and(|p| p.revision >= rev) {
                propagation.push(t1.elapsed());
                break;
            }
            if Instant::now() > deadline {
                bail!("relay B's cache did not show {d} within 5 s");
            }
            tokio::task::yield_now().await;
        }
    }
    out["register"] = stats_us(&register);
    out["propagation_to_other_cache"] = stats_us(&propagation);

    let mut rng = Lcg(0x5eed);
    let l = args.lookups;
    eprintln!("[presence_bench] {l} lookups of each kind on relay B");
    let mut cached = Vec::with_capacity(l);
    for _ in 0..l {
        let d = device("bench", rng.below(n))?;
        let t0 = Instant::now();
        let p = b.lookup(&d).await?;
        cached.push(t0.elapsed());
        if p.is_none() {
            bail!("lookup of registered {d} found nothing");
        }
    }
    out["lookup_cached"] = stats_us(&cached);
    let mut uncached = Vec::with_capacity(l);
    for _ in 0..l {
        let d = device("bench", rng.below(n))?;
        let t0 = Instant::now();
        let p = b.lookup_uncached(&d).await?;
        uncached.push(t0.elapsed());
        if p.is_none() {
            bail!("lookup_uncached of registered {d} found nothing");
        }
    }
    out["lookup_uncached"] = stats_us(&uncached);
    let mut missing = Vec::with_capacity(l);
    for i in 0..l {
        let d = device("absent", i)?;
        let t0 = Instant::now();
        let p = b.lookup(&d).await?;
        missing.push(t0.elapsed());
        if p.is_some() {
            bail!("lookup of {d}, never registered, found an entry");
        }
    }
    out["lookup_absent_device"] = stats_us(&missing);

    eprintln!("[presence_bench] refresh and remove_if_owner on relay A");
    let mut refresh = Vec::with_capacity(n);
    for (i, rev) in revisions.iter_mut().enumerate() {
        let d = device("bench", i)?;
        let t0 = Instant::now();
        *rev = a.refresh(&d, &e, *rev).await?;
        refresh.push(t0.elapsed());
    }
    out["refresh"] = stats_us(&refresh);
    let mut remove = Vec::with_capacity(n);
    for (i, rev) in revisions.iter().enumerate() {
        let d = device("bench", i)?;
        let t0 = Instant::now();
        if !a.remove_if_owner(&d, *rev).await? {
            bail!("remove_if_owner of {d} at its own revision removed nothing");
        }
        remove.push(t0.elapsed());
    }
    out["remove_if_owner"] = stats_us(&remove);

    // Many registrations at once, as after a relay restart when its devices come back.
    let storm = args.storm;
    let tasks = args.storm_tasks.min(storm.max(1));
    eprintln!("[presence_bench] storm: {storm} registrations by {tasks} concurrent tasks");
    let a = Arc::new(a);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let a = Arc::clone(&a);
        let e = e.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = t;
            while i < storm {
                let d = device("storm", i)?;
                let s = Instant::now();
                a.register(&d, &e).await?;
                lat.push(s.elapsed());
                i += tasks;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::with_capacity(storm);
    for h in handles {
        lat.extend(h.await??);
    }
    let secs = t0.elapsed().as_secs_f64();
    out["storm"] = json!({
        "registrations": storm,
        "concurrent": tasks,
        "secs": (secs * 1000.0).round() / 1000.0,
        "per_s": (storm as f64 / secs).round(),
        "latency": stats_us(&lat),
    });
    Ok(out)
}

async fn open_bucket(args: &Args) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    let bucket = args.bucket.clone().unwrap_or_else(|| "m87_presence".into());
    let js = async_nats::jetstream::new(client(&args.nats, "bench-presence-reader").await?);
    js.get_key_value(&bucket)
        .await
        .with_context(|| format!("opening the KV bucket {bucket}"))
}

async fn count(args: &Args) -> anyhow::Result<Value> {
    let kv = open_bucket(args).await?;
    let mut keys = kv.keys().await?;
    let mut by_relay: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    while let Some(key) = keys.next().await {
        let key = key?;
        if let Some(e) = kv.entry(&key).await?
            && e.operation == async_nats::jetstream::kv::Operation::Put
        {
            let relay = serde_json::from_slice::<PresenceEntry>(&e.value)
                .map(|p| p.relay_id)
                .unwrap_or_else(|_| "?".into());
            *by_relay.entry(relay).or_default() += 1;
            total += 1;
        }
    }
    Ok(json!({ "count": total, "by_relay": by_relay }))
}

async fn watch(args: &Args) -> anyhow::Result<Value> {
    let kv = open_bucket(args).await?;
    let since = Utc
        .timestamp_millis_opt(args.since_ms)
        .single()
        .context("--since-ms is not a time")?;
    let since_sys = UNIX_EPOCH + Duration::from_millis(args.since_ms.max(0) as u64);
    let mut watch = kv.watch_with_history(">").await?;
    let mut first: HashMap<String, (f64, f64, String)> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    while first.len() < args.expect {
        let next = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(next)) => next?,
            Ok(None) => bail!("the watch of the bucket ended"),
            Err(_) => break,
        };
        if next.operation != async_nats::jetstream::kv::Operation::Put || next.created < since {
            continue;
        }
        if first.contains_key(&next.key) {
            continue;
        }
        let seen = SystemTime::now()
            .duration_since(since_sys)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let written = (next.created - since).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        let relay = serde_json::from_slice::<PresenceEntry>(&next.value)
            .map(|p| p.relay_id)
            .unwrap_or_else(|_| "?".into());
        first.insert(next.key.clone(), (written, seen, relay));
    }
    let mut written: Vec<f64> = first.values().map(|v| v.0).collect();
    written.sort_by(|a, b| a.total_cmp(b));
    let mut seen: Vec<f64> = first.values().map(|v| v.1).collect();
    seen.sort_by(|a, b| a.total_cmp(b));
    let mut by_relay: BTreeMap<String, usize> = BTreeMap::new();
    for v in first.values() {
        *by_relay.entry(v.2.clone()).or_default() += 1;
    }
    let r = |x: f64| (x * 10.0).round() / 10.0;
    Ok(json!({
        "expected": args.expect,
        "devices": first.len(),
        "complete": first.len() >= args.expect,
        "by_relay": by_relay,
        "first_written_ms": written.first().copied().map(r),
        "last_written_ms": written.last().copied().map(r),
        "last_seen_ms": seen.last().copied().map(r),
        "written_ms_sorted": written.iter().copied().map(r).collect::<Vec<_>>(),
    }))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let out = match args.mode.as_str() {
        "count" => count(&args).await?,
        "watch" => watch(&args).await?,
        _ => bench(&args).await?,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
