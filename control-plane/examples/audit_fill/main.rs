//! Fills an m87 data directory with a realistic audit trail, for the `m87 audit` query
//! benchmark (`loadtest/audit-query-bench.sh`).
//!
//! Events go through the real SQLite event store (`SqliteStore::append`, one call per actor's
//! burst, as the command handlers append them) and are folded into the audit trail the way
//! the server does (`AuditTrail::catch_up`, every `--fold-every` events while appending); at the
//! end the projector brings every read model up to date, so `m87-server` starts on the
//! directory at once. The mix: organizations with members (admins, members, viewers), about
//! `--devices` devices registered, approved and enrolled (most in organizations, some owned by
//! users), every user's API key and sign-ins, then sessions — exec with argv, shell, cp both
//! ways, forward, sync, each granted and later closed with bytes, duration, exit code or signal
//! and why it ended —, refusals at the grant, the relay and the agent, tunnels coming and going,
//! access granted and revoked, membership and role changes, refused authentication.
//!
//! ```sh
//! cargo run --release -p m87-control-plane --example audit_fill -- --events 1000000 --data-dir /tmp/m87-data
//! ```
//!
//! Prints one JSON object on stdout (timings, counts, and what the benchmark queries for: a
//! busy device, a busy user, an organization admin, positions and times at fractions of the
//! log) and writes the same to `<data-dir>/audit-fill.json`; progress on stderr.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use m87_control_plane::audit::AuditTrail;
use m87_control_plane::projections::{Projector, all_projections};
use m87_control_plane::server::{DATABASE_FILE, prepare_data_dir};
use m87_control_plane::service::auth::generate_key;
use m87_control_plane::store::audit::AuditStore;
use m87_control_plane::store::sqlite::{SqliteAuditStore, SqliteReadStore, SqliteStore};
use m87_control_plane::store::{EventStore, ReadStore, StreamAppend};
use m87_events::domain::*;
use m87_events::token::{Credential, Operation};
use m87_events::{
    Actor, DeviceId, DomainEvent, Email, KeyId, KeyKind, Metadata, OrgId, RequestId, Role, Scope,
    SessionId, StreamId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

struct Args {
    events: u64,
    data_dir: PathBuf,
    devices: usize,
    users: usize,
    fold_every: u64,
    seed: u64,
}

const USAGE: &str = "usage: audit_fill --events N --data-dir DIR [--devices 1000] [--users 200] \
                     [--fold-every 5000] [--seed 87]";

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 0,
        data_dir: PathBuf::new(),
        devices: 1000,
        users: 200,
        fold_every: 5000,
        seed: 87,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--data-dir" => a.data_dir = PathBuf::from(value()?),
            "--devices" => a.devices = value()?.parse()?,
            "--users" => a.users = value()?.parse()?,
            "--fold-every" => a.fold_every = value()?.parse::<u64>()?.max(1),
            "--seed" => a.seed = value()?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.events == 0 || a.data_dir.as_os_str().is_empty() {
        bail!("--events and --data-dir are required\n{USAGE}");
    }
    if a.devices < 10 || a.users < 10 {
        bail!("--devices and --users must be at least 10");
    }
    Ok(a)
}

/// Organizations and their share of the devices (the rest are owned by users).
const ORGS: &[(&str, f64)] = &[
    ("acme", 0.45),
    ("globex", 0.20),
    ("initech", 0.10),
    ("umbrella", 0.05),
];
const ADMIN: &str = "admin@localhost";

struct User {
    email: Email,
    key_id: KeyId,
    ip: IpAddr,
    /// Indexes of the devices they may operate.
    devices: Vec<usize>,
}

struct Device {
    id: DeviceId,
    scope: Scope,
}

struct OpenSession {
    id: SessionId,
    device: usize,
    op: Operation,
    due: u64,
}

/// The generator's state: the fleet, the stream versions, what was appended.
struct Fill {
    rng: StdRng,
    store: Arc<dyn EventStore>,
    trail: AuditTrail,
    versions: HashMap<String, u64>,
    users: Vec<User>,
    devices: Vec<Device>,
    open: VecDeque<OpenSession>,
    appended: u64,
    appends: u64,
    fold_every: u64,
    next_fold: u64,
    fold_time: Duration,
    /// (position, time) of the first event of every append call.
    marks: Vec<(u64, DateTime<Utc>)>,
    per_device: Vec<u64>,
    per_user: Vec<u64>,
}

fn user_meta(u: &User) -> Metadata {
    Metadata {
        actor: Actor::User {
            email: u.email.clone(),
            key_id: Some(u.key_id),
            subject: None,
        },
        source_ip: Some(u.ip),
        correlation_id: m87_events::CorrelationId::new(),
    }
}

fn admin_meta() -> anyhow::Result<Metadata> {
    Ok(Metadata {
        actor: Actor::User {
            email: ADMIN.parse()?,
            key_id: None,
            subject: None,
        },
        source_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        correlation_id: m87_events::CorrelationId::new(),
    })
}

fn device_meta(d: &Device) -> Metadata {
    Metadata {
        actor: Actor::Device {
            device_id: d.id.clone(),
        },
        source_ip: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))),
        correlation_id: m87_events::CorrelationId::new(),
    }
}

impl Fill {
    /// Appends events of one actor, each on its stream, in one call; folds every
    /// `fold_every` events.
    async fn append(
        &mut self,
        events: Vec<(StreamId, DomainEvent)>,
        meta: Metadata,
    ) -> anyhow::Result<()> {
        let mut batch: Vec<StreamAppend> = Vec::new();
        for (stream, event) in events {
            match batch.iter_mut().find(|b| b.stream_id == stream) {
                Some(b) => b.events.push(event),
                None => {
                    let v = self.versions.get(stream.as_str()).copied().unwrap_or(0);
                    batch.push(StreamAppend {
                        stream_id: stream,
                        expected_version: v,
                        events: vec![event],
                    });
                }
            }
        }
        for b in &batch {
            *self
                .versions
                .entry(b.stream_id.as_str().to_owned())
                .or_default() += b.events.len() as u64;
        }
        let stored = self.store.append(batch, meta).await?;
        if let Some(first) = stored.first() {
            self.marks.push((first.global_position, first.recorded_at));
        }
        self.appended += stored.len() as u64;
        self.appends += 1;
        if self.appended >= self.next_fold {
            let t = Instant::now();
            self.trail.catch_up().await?;
            self.fold_time += t.elapsed();
            self.next_fold = self.appended + self.fold_every;
            eprintln!("audit_fill: {} events appended and folded", self.appended);
        }
        Ok(())
    }

    fn pick_user(&mut self) -> usize {
        // A few users do most of the work: the square of a uniform draw.
        let x: f64 = self.rng.random();
        ((x * x) * self.users.len() as f64) as usize % self.users.len()
    }
}

/// Organizations, members, users' API keys, and the devices: 4 events per device.
async fn setup(f: &mut Fill, n_users: usize, n_devices: usize) -> anyhow::Result<()> {
    let admin = admin_meta()?;
    for (org, _) in ORGS {
        let org_id: OrgId = org.parse()?;
        let ev = DomainEvent::OrgCreated(OrgCreated {
            org_id: org_id.clone(),
            name: org.to_uppercase(),
        });
        f.append(vec![(StreamId::org(&org_id), ev)], admin.clone())
            .await?;
    }
    for i in 0..n_users {
        let email: Email = format!("user{i:03}@example.com").parse()?;
        let key = generate_key(KeyKind::User);
        let key_id = KeyId::new();
        let ip = IpAddr::V4(Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8, 10));
        f.users.push(User {
            email: email.clone(),
            key_id,
            ip,
            devices: vec![],
        });
        let ev = DomainEvent::ApiKeyCreated(ApiKeyCreated {
            key_id,
            email: email.clone(),
            name: "laptop".into(),
            key_hash: key.digest,
            key_hint: key.hint,
            bootstrap: false,
        });
        f.append(vec![(StreamId::api_key(&key_id), ev)], admin.clone())
            .await?;
        // Users 0..4 administer acme (user000 is the benchmark's organization admin); about
        // a fifth are viewers; each user is in one organization, every tenth in two.
        let org = ORGS[i % ORGS.len()].0;
        let role = match i {
            0..=3 if org == "acme" => Role::Admin,
            _ if i % 5 == 4 => Role::Viewer,
            _ => Role::Member,
        };
        let mut orgs = vec![(org, role)];
        if i % 10 == 9 {
            orgs.push((ORGS[(i + 1) % ORGS.len()].0, Role::Member));
        }
        for (org, role) in orgs {
            let org_id: OrgId = org.parse()?;
            let ev = DomainEvent::MemberAdded(MemberAdded {
                org_id: org_id.clone(),
                email: email.clone(),
                role,
            });
            f.append(vec![(StreamId::org(&org_id), ev)], admin.clone())
                .await?;
        }
    }
    let mut org_devices: HashMap<&str, Vec<usize>> = HashMap::new();
    for n in 0..n_devices {
        let x: f64 = f.rng.random();
        let mut acc = 0.0;
        let org = ORGS.iter().find(|(_, share)| {
            acc += share;
            x < acc
        });
        let scope: Scope = match org {
            Some((o, _)) => format!("org:{o}").parse()?,
            None => format!("user:{}", f.users[n % n_users].email).parse()?,
        };
        let device = Device {
            id: format!("dev-{n:05}-{:08x}", f.rng.random::<u32>()).parse()?,
            scope: scope.clone(),
        };
        match org {
            Some((o, _)) => org_devices.entry(o).or_default().push(n),
            None => f.users[n % n_users].devices.push(n),
        }
        enroll(f, &device, n).await?;
        f.devices.push(device);
    }
    for (i, u) in f.users.iter_mut().enumerate() {
        let org = ORGS[i % ORGS.len()].0;
        u.devices.extend(org_devices.get(org).into_iter().flatten());
        if i % 10 == 9 {
            let second = ORGS[(i + 1) % ORGS.len()].0;
            u.devices
                .extend(org_devices.get(second).into_iter().flatten());
        }
    }
    Ok(())
}

/// Registration requested, approved, enrolled, credentials issued.
async fn enroll(f: &mut Fill, d: &Device, n: usize) -> anyhow::Result<()> {
    let request_id = RequestId::new();
    let system_info = SystemInfo {
        hostname: format!("edge-{n}"),
        platform: "linux".into(),
        architecture: if n.is_multiple_of(3) {
            "aarch64"
        } else {
            "x86_64"
        }
        .into(),
        os_version: "Debian GNU/Linux 13 (trixie)".into(),
        kernel: "6.12.0".into(),
        cpu_count: 4,
        memory_bytes: 4 << 30,
    };
    let name: m87_events::DeviceName = format!("edge-{n:04}").parse()?;
    let requested = DomainEvent::RegistrationRequested(RegistrationRequested {
        request_id,
        device_id: d.id.clone(),
        name: name.clone(),
        owner_scope: d.scope.clone(),
        system_info: system_info.clone(),
        claim_secret_hash: "0".repeat(64),
        expires_at: Utc::now() + chrono::Duration::hours(1),
    });
    f.append(
        vec![(StreamId::registration(&request_id), requested)],
        device_meta(d),
    )
    .await?;
    let approved = DomainEvent::RegistrationApproved(RegistrationApproved {
        request_id,
        device_id: d.id.clone(),
    });
    let enrolled = DomainEvent::DeviceEnrolled(DeviceEnrolled {
        device_id: d.id.clone(),
        request_id,
        name,
        owner_scope: d.scope.clone(),
        system_info,
    });
    f.append(
        vec![
            (StreamId::registration(&request_id), approved),
            (StreamId::device(&d.id), enrolled),
        ],
        admin_meta()?,
    )
    .await?;
    let issued = DomainEvent::DeviceCredentialsIssued(DeviceCredentialsIssued {
        device_id: d.id.clone(),
        request_id,
        key_id: KeyId::new(),
        key_hash: "0".repeat(64),
    });
    f.append(vec![(StreamId::device(&d.id), issued)], device_meta(d))
        .await
}

mod activity;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    prepare_data_dir(&args.data_dir)?;
    let db = args.data_dir.join(DATABASE_FILE);
    if std::fs::metadata(&db).is_ok_and(|m| m.len() > 0) {
        bail!(
            "{} exists: audit_fill fills a new data directory; remove it or pick another",
            db.display()
        );
    }
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&db)?);
    let audit: Arc<dyn AuditStore> = Arc::new(SqliteAuditStore::open(&db)?);
    let trail = AuditTrail::new(Arc::clone(&store), audit);
    let mut f = Fill {
        rng: StdRng::seed_from_u64(args.seed),
        store: Arc::clone(&store),
        trail: trail.clone(),
        versions: HashMap::new(),
        users: vec![],
        devices: vec![],
        open: VecDeque::new(),
        appended: 0,
        appends: 0,
        fold_every: args.fold_every,
        next_fold: args.fold_every,
        fold_time: Duration::ZERO,
        marks: vec![],
        per_device: vec![0; args.devices],
        per_user: vec![0; args.users],
    };
    let started = Instant::now();
    setup(&mut f, args.users, args.devices).await?;
    while f.appended < args.events {
        activity::step(&mut f).await?;
    }
    activity::close_all(&mut f).await?;
    let appended_in = started.elapsed();
    let t = Instant::now();
    let head = trail.catch_up().await?;
    f.fold_time += t.elapsed();
    eprintln!("audit_fill: {head} events in the trail; projecting the read models");
    let t = Instant::now();
    let read: Arc<dyn ReadStore> = Arc::new(SqliteReadStore::open(&db)?);
    let projector = Projector::new(Arc::clone(&store), read, all_projections()).await?;
    projector.catch_up().await?;
    let projected_in = t.elapsed();
    let total = started.elapsed();
    // What every `GET /v1/audit` pays first: a catch-up that finds nothing new.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        trail.catch_up().await?;
        idle.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    idle.sort_by(|a, b| a.total_cmp(b));
    let idle = json!({"p50_ms": idle[99], "p99_ms": idle[197], "max_ms": idle[199]});
    let mut summary = summary(&f, head, appended_in, projected_in, total);
    summary["catch_up_nothing_new"] = idle;
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(args.data_dir.join("audit-fill.json"), &text)?;
    println!("{text}");
    Ok(())
}

fn summary(
    f: &Fill,
    head: u64,
    appended_in: Duration,
    projected: Duration,
    all: Duration,
) -> Value {
    let busiest = |counts: &[u64]| {
        counts
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| **c)
            .map_or(0, |(i, _)| i)
    };
    let (dev, user) = (busiest(&f.per_device), busiest(&f.per_user));
    let in_acme: Vec<u64> = (0..f.devices.len())
        .map(|i| match f.devices[i].scope.as_str() {
            "org:acme" => f.per_device[i],
            _ => 0,
        })
        .collect();
    let org_dev = busiest(&in_acme);
    let at = |frac: f64| {
        let i = ((f.marks.len() as f64 - 1.0) * frac) as usize;
        f.marks
            .get(i)
            .map(|(p, t)| json!({"position": p, "time": t.to_rfc3339()}))
    };
    let secs = |d: Duration| (d.as_secs_f64() * 10.0).round() / 10.0;
    // Appending includes the folds done meanwhile; shown apart.
    let append_only = appended_in.saturating_sub(f.fold_time);
    json!({
        "events": head,
        "append_calls": f.appends,
        "devices": f.devices.len(),
        "users": f.users.len(),
        "seconds": {
            "append": secs(append_only),
            "audit_fold": secs(f.fold_time),
            "projections": secs(projected),
            "total": secs(all),
        },
        "events_per_second": {
            "append": (head as f64 / append_only.as_secs_f64()).round(),
            "audit_fold": (head as f64 / f.fold_time.as_secs_f64()).round(),
            "projections": (head as f64 / projected.as_secs_f64()).round(),
        },
        "busy_device": {"id": f.devices[dev].id.as_str(), "name": format!("edge-{dev:04}"),
                        "sessions": f.per_device[dev]},
        "org_device": {"id": f.devices[org_dev].id.as_str(), "name": format!("edge-{org_dev:04}"),
                       "sessions": f.per_device[org_dev]},
        "quiet_device": {"id": f.devices[f.devices.len() - 1].id.as_str(),
                         "name": format!("edge-{:04}", f.devices.len() - 1)},
        "busy_user": {"email": f.users[user].email.as_str(), "sessions": f.per_user[user]},
        "org_admin": {"email": f.users[0].email.as_str(), "org": "acme"},
        "at": {"p10": at(0.10), "p25": at(0.25), "p50": at(0.5), "p75": at(0.75),
               "p90": at(0.90), "p99": at(0.99)},
    })
}
