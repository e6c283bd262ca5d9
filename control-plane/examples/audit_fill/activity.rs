//! The activity after set-up: one step is one actor's burst (a user's sessions, a device's
//! tunnel, an admin's access change, …), then the closings that are due, each device's in one
//! append.

use super::*;

const EXEC: &[&[&str]] = &[
    &["systemctl", "restart", "app"],
    &["journalctl", "-u", "app", "-n", "200"],
    &["df", "-h"],
    &["uptime"],
    &["cat", "/etc/os-release"],
    &["apt-get", "install", "-y", "nginx"],
    &["sh", "-c", "tar czf /tmp/logs.tgz /var/log/app"],
    &["docker", "ps", "-a"],
    &["reboot"],
];
const PATHS: &[&str] = &[
    "/etc/app/config.toml",
    "/var/log/app/app.log",
    "/opt/app/firmware.bin",
    "/home/pi/data.csv",
];

/// One actor's burst, then the closings that are due.
pub(super) async fn step(f: &mut Fill) -> anyhow::Result<()> {
    let roll: f64 = f.rng.random();
    match roll {
        x if x < 0.86 => sessions(f).await?,
        x if x < 0.91 => presence(f).await?,
        x if x < 0.95 => sign_in(f).await?,
        x if x < 0.96 => auth_refused(f).await?,
        x if x < 0.98 => access(f).await?,
        x if x < 0.99 => membership(f).await?,
        _ => api_key(f).await?,
    }
    close_due(f, false).await
}

/// Closes every session still open (at the end).
pub(super) async fn close_all(f: &mut Fill) -> anyhow::Result<()> {
    close_due(f, true).await
}

fn args_for(f: &mut Fill, op: Operation) -> Value {
    match op {
        Operation::Exec => {
            let argv = EXEC[f.rng.random_range(0..EXEC.len())];
            json!({ "argv": argv })
        }
        Operation::Shell => json!({ "argv": ["bash", "-l"], "tty": true }),
        Operation::Copy => {
            let path = PATHS[f.rng.random_range(0..PATHS.len())];
            let up = f.rng.random_bool(0.5);
            json!({ "path": path, "direction": if up { "to_device" } else { "from_device" },
                    "recursive": false, "local": format!("./{}", path.rsplit('/').next().unwrap_or("f")) })
        }
        Operation::Forward => {
            let port = [22u16, 80, 443, 5432, 8080][f.rng.random_range(0..5)];
            json!({ "targets": [{ "host": "127.0.0.1", "port": port, "proto": "tcp" }] })
        }
        Operation::Sync => json!({ "path": "/opt/app", "direction": "to_device", "delete": false,
                                   "excludes": [], "dry_run": false, "watch": false }),
        Operation::Docker => json!({ "argv": ["ps"] }),
        Operation::Logs => {
            json!({ "source": { "type": "runtime" }, "lines": 100, "follow": false })
        }
        Operation::Metrics => json!({ "interval_ms": 1000 }),
        Operation::Serial => json!({ "path": "/dev/ttyUSB0", "baud": 115200, "data_bits": 8,
                                     "parity": "none", "stop_bits": 1 }),
        Operation::Status => Value::Null,
        Operation::List => json!({ "path": "/var/log", "all": false }),
        Operation::Ssh => json!({ "user": "pi" }),
    }
}

fn operation(f: &mut Fill) -> Operation {
    match f.rng.random_range(0..100) {
        0..55 => Operation::Exec,
        55..70 => Operation::Shell,
        70..85 => Operation::Copy,
        85..95 => Operation::Forward,
        _ => Operation::Sync,
    }
}

/// A user opens 1–4 sessions on one of their devices (3% refused at the grant).
async fn sessions(f: &mut Fill) -> anyhow::Result<()> {
    let u = f.pick_user();
    if f.users[u].devices.is_empty() {
        return sign_in(f).await;
    }
    let x: f64 = f.rng.random();
    let n = f.users[u].devices.len();
    let d = f.users[u].devices[((x * x * x) * n as f64) as usize % n];
    let mut events = Vec::new();
    for _ in 0..f.rng.random_range(1..=4) {
        let session_id = SessionId::new();
        let op = operation(f);
        let args = args_for(f, op);
        let device_id = f.devices[d].id.clone();
        let event = if f.rng.random_bool(0.03) {
            DomainEvent::SessionRefused(SessionRefused {
                session_id: Some(session_id),
                device_id: Some(device_id),
                refused_by: "grant".into(),
                code: "forbidden".into(),
                reason: "viewers may not operate devices".into(),
                operation: Some(op),
            })
        } else {
            let due = f.appended + f.rng.random_range(2..600);
            f.open.push_back(OpenSession {
                id: session_id,
                device: d,
                op,
                due,
            });
            DomainEvent::SessionOpened(SessionOpened {
                session_id,
                device_id,
                operation: op,
                args,
                expires_at: Utc::now() + chrono::Duration::seconds(60),
                credential: Some(Credential::ApiKey(f.users[u].key_id)),
                relay: Some("127.0.0.1:8084".into()),
                recorded: op == Operation::Shell && f.devices[d].scope.as_str().starts_with("org:"),
            })
        };
        f.per_device[d] += 1;
        f.per_user[u] += 1;
        events.push((StreamId::session(&session_id), event));
    }
    let meta = user_meta(&f.users[u]);
    f.append(events, meta).await
}

/// The closing of one session: exit codes, signals, and the reasons sessions end.
fn closing(f: &mut Fill, s: &OpenSession) -> DomainEvent {
    let device_id = f.devices[s.device].id.clone();
    if f.rng.random_bool(0.02) {
        let by_relay = f.rng.random_bool(0.5);
        return DomainEvent::SessionRefused(SessionRefused {
            session_id: Some(s.id),
            device_id: Some(device_id),
            refused_by: if by_relay { "relay" } else { "agent" }.into(),
            code: if by_relay {
                "device_offline"
            } else {
                "token_expired"
            }
            .into(),
            reason: "the session could not start".into(),
            operation: Some(s.op),
        });
    }
    let r = f.rng.random_range(0..1000);
    let (exit_code, signal, reason) = match (s.op, r) {
        (_, 0..5) => (None, None, "access_revoked"),
        (_, 5..15) => (None, None, "relay_lost"),
        (Operation::Exec, 15..120) => (Some([1, 2, 127][r % 3]), None, "exit"),
        (Operation::Exec, 120..130) => (None, Some(9), "exit"),
        (Operation::Exec | Operation::Shell, _) => (Some(0), None, "exit"),
        _ => (None, None, "client_closed"),
    };
    let bytes = |f: &mut Fill, max: u64| f.rng.random_range(0..max);
    let (up, down) = match s.op {
        Operation::Copy | Operation::Sync => (bytes(f, 50 << 20), bytes(f, 4096)),
        Operation::Forward => (bytes(f, 1 << 20), bytes(f, 20 << 20)),
        _ => (bytes(f, 4096), bytes(f, 256 << 10)),
    };
    DomainEvent::SessionClosed(SessionClosed {
        session_id: s.id,
        device_id,
        duration_ms: f.rng.random_range(50..3_600_000),
        bytes_to_device: up,
        bytes_from_device: down,
        exit_code,
        signal,
        error: (reason == "relay_lost").then(|| "the relay connection was lost".into()),
        operation: Some(s.op),
        reason: Some(reason.into()),
        channels: vec![],
        channels_dropped: 0,
    })
}

/// Closes the sessions that are due (or all), one append per device.
async fn close_due(f: &mut Fill, all: bool) -> anyhow::Result<()> {
    let mut due: Vec<OpenSession> = Vec::new();
    let mut keep = VecDeque::new();
    while let Some(s) = f.open.pop_front() {
        if all || s.due <= f.appended {
            due.push(s);
        } else {
            keep.push_back(s);
        }
    }
    f.open = keep;
    due.sort_by_key(|s| s.device);
    let mut i = 0;
    while i < due.len() {
        let d = due[i].device;
        let mut events = Vec::new();
        while i < due.len() && due[i].device == d {
            let s = &due[i];
            let event = closing(f, s);
            events.push((StreamId::session(&s.id), event));
            i += 1;
        }
        let meta = device_meta(&f.devices[d]);
        f.append(events, meta).await?;
    }
    Ok(())
}

/// A device's tunnel comes or goes.
async fn presence(f: &mut Fill) -> anyhow::Result<()> {
    let d = f.rng.random_range(0..f.devices.len());
    let device_id = f.devices[d].id.clone();
    let event = if f.rng.random_bool(0.5) {
        DomainEvent::DeviceConnected(DeviceConnected {
            device_id: device_id.clone(),
            relay_id: "relay-1".into(),
            remote_addr: "198.51.100.7:40000".into(),
        })
    } else {
        DomainEvent::DeviceDisconnected(DeviceDisconnected {
            device_id: device_id.clone(),
            relay_id: "relay-1".into(),
            reason: "idle timeout".into(),
        })
    };
    let meta = device_meta(&f.devices[d]);
    f.append(vec![(StreamId::presence(&device_id), event)], meta)
        .await
}

async fn sign_in(f: &mut Fill) -> anyhow::Result<()> {
    let u = f.pick_user();
    let event = DomainEvent::UserSignedIn(UserSignedIn {
        email: f.users[u].email.clone(),
        method: "api_key".into(),
    });
    let meta = user_meta(&f.users[u]);
    let stream = StreamId::from_raw(format!("user-{}", f.users[u].email));
    f.append(vec![(stream, event)], meta).await
}

async fn auth_refused(f: &mut Fill) -> anyhow::Result<()> {
    let event = DomainEvent::AuthenticationRefused(AuthenticationRefused {
        source: format!("203.0.113.{}", f.rng.random_range(1..255)),
        window_start: Utc::now(),
        count: f.rng.random_range(1..500),
        reasons: vec!["unknown api key".into()],
    });
    let stream = StreamId::from_raw(format!("auth-refused-{}", m87_events::EventId::new()));
    f.append(vec![(stream, event)], Metadata::system("auth"))
        .await
}

/// An admin grants a user access to a device, or takes it away.
async fn access(f: &mut Fill) -> anyhow::Result<()> {
    let d = f.rng.random_range(0..f.devices.len());
    let u = f.rng.random_range(0..f.users.len());
    let device_id = f.devices[d].id.clone();
    let scope = Scope::user(&f.users[u].email);
    let event = if f.rng.random_bool(0.6) {
        DomainEvent::AccessGranted(AccessGranted {
            device_id: device_id.clone(),
            scope,
        })
    } else {
        DomainEvent::AccessRevoked(AccessRevoked {
            device_id: device_id.clone(),
            scope,
        })
    };
    f.append(vec![(StreamId::device(&device_id), event)], admin_meta()?)
        .await
}

/// A member's role changes, or someone joins or leaves (user000, the organization admin of
/// the benchmark, keeps their role).
async fn membership(f: &mut Fill) -> anyhow::Result<()> {
    let u = f.rng.random_range(1..f.users.len());
    let org_id: OrgId = ORGS[u % ORGS.len()].0.parse()?;
    let email = f.users[u].email.clone();
    let event = match f.rng.random_range(0..3) {
        0 => DomainEvent::MemberRoleChanged(MemberRoleChanged {
            org_id: org_id.clone(),
            email,
            role: if f.rng.random_bool(0.5) {
                Role::Viewer
            } else {
                Role::Member
            },
        }),
        1 => DomainEvent::MemberRemoved(MemberRemoved {
            org_id: org_id.clone(),
            email,
        }),
        _ => DomainEvent::MemberAdded(MemberAdded {
            org_id: org_id.clone(),
            email,
            role: Role::Member,
        }),
    };
    f.append(vec![(StreamId::org(&org_id), event)], admin_meta()?)
        .await
}

/// A user makes a new API key and revokes the old one.
async fn api_key(f: &mut Fill) -> anyhow::Result<()> {
    let u = f.pick_user();
    let old = f.users[u].key_id;
    let key = generate_key(KeyKind::User);
    let key_id = KeyId::new();
    let created = DomainEvent::ApiKeyCreated(ApiKeyCreated {
        key_id,
        email: f.users[u].email.clone(),
        name: "laptop".into(),
        key_hash: key.digest,
        key_hint: key.hint,
        bootstrap: false,
    });
    let revoked = DomainEvent::ApiKeyRevoked(ApiKeyRevoked { key_id: old });
    let meta = user_meta(&f.users[u]);
    f.users[u].key_id = key_id;
    f.append(
        vec![
            (StreamId::api_key(&key_id), created),
            (StreamId::api_key(&old), revoked),
        ],
        meta,
    )
    .await
}
