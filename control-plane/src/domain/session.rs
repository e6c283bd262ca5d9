//! Sessions: a user asks to operate a device; the device reports how it ended.

use chrono::{DateTime, Utc};
use m87_events::domain::{SessionClosed, SessionOpened};
use m87_events::token::{Credential, Operation};
use m87_events::tunnel::listing::ListRequest;
use m87_events::tunnel::logs::LogsRequest;
use m87_events::tunnel::metrics;
use m87_events::tunnel::serial::SerialSettings;
use m87_events::{DeviceId, DomainEvent, SessionId};
use serde_json::Value;

use super::device::Device;
use super::{Aggregate, DomainError, Identity, Principal};

/// Longest lifetime of a session token to start a session.
pub const TOKEN_LIFETIME_SECS: i64 = 60;
/// Largest recorded arguments (JSON bytes): the signed token that carries them always fits
/// the relay's and the device's token limit.
pub use m87_events::token::MAX_ARGS_BYTES;

/// The session aggregate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    /// As opened.
    pub opened: Option<SessionOpened>,
    /// Whether the device reported its end.
    pub closed: bool,
    /// Its terminal recording, once stored.
    pub recording: Option<m87_events::domain::SessionRecordingStored>,
}

impl Aggregate for Session {
    /// Folds one event.
    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::SessionOpened(e) => self.opened = Some(e.clone()),
            DomainEvent::SessionClosed(_) => self.closed = true,
            DomainEvent::SessionRecordingStored(e) => self.recording = Some(e.clone()),
            _ => {}
        }
    }
}

fn validate_args(op: Operation, args: &Value) -> Result<(), DomainError> {
    let bad = |m: &str| Err(DomainError::Validation(m.to_owned()));
    let size = serde_json::to_vec(args)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_ARGS_BYTES {
        return Err(DomainError::Validation(format!(
            "session arguments are too large: {size} bytes of JSON, the limit is \
             {MAX_ARGS_BYTES} bytes"
        )));
    }
    match op {
        Operation::Exec => match args.get("argv").and_then(Value::as_array) {
            Some(argv) if !argv.is_empty() && argv.iter().all(Value::is_string) => Ok(()),
            _ => bad("exec needs args {\"argv\": [program, arguments…]}"),
        },
        Operation::Forward => match args.get("targets").and_then(Value::as_array) {
            Some(t) if !t.is_empty() && t.iter().all(forward_target_ok) => Ok(()),
            _ => bad(
                "forward needs args {\"targets\": [{\"host\", \"port\", \"proto\"} or \
                 {\"path\", \"proto\": \"unix\"}…]}",
            ),
        },
        Operation::Copy | Operation::Sync => match args.get("path").and_then(Value::as_str) {
            Some(p) if !p.is_empty() => Ok(()),
            _ => bad("copy and sync need args {\"path\": \"/device/path\"}"),
        },
        Operation::Shell | Operation::Status => Ok(()),
        Operation::Docker => match args.get("argv").and_then(Value::as_array) {
            Some(argv) if argv.iter().all(Value::is_string) => Ok(()),
            _ => bad("docker needs args {\"argv\": [the docker command's arguments…]}"),
        },
        Operation::Metrics => match args.get("interval_ms").and_then(Value::as_u64) {
            Some(ms)
                if (u64::from(metrics::MIN_INTERVAL_MS)..=u64::from(metrics::MAX_INTERVAL_MS))
                    .contains(&ms) =>
            {
                Ok(())
            }
            _ => bad(&format!(
                "metrics needs args {{\"interval_ms\": {}…{}}}",
                metrics::MIN_INTERVAL_MS,
                metrics::MAX_INTERVAL_MS
            )),
        },
        Operation::Logs => {
            typed::<LogsRequest>(args, "logs needs args {\"source\", …}").map(|_| ())
        }
        Operation::Serial => {
            typed::<SerialSettings>(args, "serial needs args {\"path\", \"baud\", …}")?
                .validate()
                .map_err(DomainError::Validation)
        }
        Operation::List => match typed::<ListRequest>(args, "ls needs args {\"path\"}")? {
            r if r.path.is_empty() => bad("ls needs a path"),
            _ => Ok(()),
        },
        Operation::Ssh => match args.get("user") {
            Some(Value::Null) | None => Ok(()),
            Some(Value::String(u)) if !u.is_empty() && u.len() <= 64 => Ok(()),
            _ => bad("ssh needs args {\"user\": the login asked for (1-64 characters) or null}"),
        },
    }
}

/// A forward target: a TCP or UDP `host` and `port`, or a unix socket `path`.
fn forward_target_ok(t: &Value) -> bool {
    match t.get("proto").and_then(Value::as_str) {
        Some("unix") => t
            .get("path")
            .and_then(Value::as_str)
            .is_some_and(|p| p.starts_with('/')),
        _ => {
            t.get("host").is_some_and(Value::is_string) && t.get("port").is_some_and(Value::is_u64)
        }
    }
}

/// The arguments as the channel request they must equal.
fn typed<T: serde::de::DeserializeOwned>(args: &Value, usage: &str) -> Result<T, DomainError> {
    serde_json::from_value(args.clone())
        .map_err(|e| DomainError::Validation(format!("{usage}: {e}")))
}

/// `OpenSession`: the caller may operate the device if they can see it and it is enrolled.
pub fn decide_open(
    device: &Device,
    caller: &Identity,
    session_id: SessionId,
    operation: Operation,
    args: Value,
    now: DateTime<Utc>,
) -> Result<DomainEvent, DomainError> {
    let enrollment = match &device.enrollment {
        Some(e) if caller.can_see(&e.owner_scope, &device.allowed_scopes) && !device.removed => e,
        _ => return Err(DomainError::NotFound("device")),
    };
    if !operation.read_only()
        && !caller.can_operate(&enrollment.owner_scope, &device.allowed_scopes)
    {
        return Err(DomainError::Forbidden(format!(
            "viewers may read a device's status and metrics but not {} on it",
            operation.as_str()
        )));
    }
    validate_args(operation, &args)?;
    Ok(DomainEvent::SessionOpened(SessionOpened {
        session_id,
        device_id: enrollment.device_id.clone(),
        operation,
        args,
        expires_at: now + chrono::Duration::seconds(TOKEN_LIFETIME_SECS),
        credential: credential_of(caller),
        relay: None,
        recorded: false,
    }))
}

/// The revocable credential a caller proved themselves with: the API key they used, if any.
pub fn credential_of(caller: &Identity) -> Option<Credential> {
    match &caller.principal {
        Principal::User {
            key_id: Some(key), ..
        } => Some(Credential::ApiKey(*key)),
        _ => None,
    }
}

/// The reasons a session can end with; anything else a device reports is recorded as `error`.
pub const CLOSE_REASONS: &[&str] = &[
    "client_closed",
    "exit",
    "access_revoked",
    "credential_revoked",
    "device_removed",
    "relay_lost",
    "timeout",
    "error",
];

fn close_reason(reported: &str) -> &'static str {
    CLOSE_REASONS
        .iter()
        .find(|r| **r == reported)
        .copied()
        .unwrap_or("error")
}

/// A channel summary with its words cut to sane lengths.
fn bounded_summary(mut c: m87_events::api::ChannelSummary) -> m87_events::api::ChannelSummary {
    c.kind = c.kind.chars().take(32).collect();
    c.target = c.target.chars().take(512).collect();
    c.error = c.error.map(|e| e.chars().take(512).collect());
    c
}

/// `CloseSession`: only the session's own device reports its end, once.
pub fn decide_close(
    session: &Session,
    device_id: &DeviceId,
    report: m87_events::api::SessionClosedReport,
) -> Result<DomainEvent, DomainError> {
    let opened = match &session.opened {
        Some(o) if &o.device_id == device_id => o,
        _ => return Err(DomainError::NotFound("session")),
    };
    if session.closed {
        return Err(DomainError::Validation("session is already closed".into()));
    }
    Ok(DomainEvent::SessionClosed(SessionClosed {
        session_id: opened.session_id,
        device_id: device_id.clone(),
        duration_ms: report.duration_ms,
        bytes_to_device: report.bytes_to_device,
        bytes_from_device: report.bytes_from_device,
        exit_code: report.exit_code,
        signal: report.signal,
        error: report.error.map(|e| e.chars().take(512).collect()),
        operation: Some(opened.operation),
        reason: report.reason.map(|r| close_reason(&r).to_owned()),
        channels: report
            .channels
            .into_iter()
            .take(m87_events::api::MAX_CHANNEL_SUMMARIES)
            .map(bounded_summary)
            .collect(),
        channels_dropped: report.channels_dropped,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_support::user;
    use m87_events::domain::DeviceEnrolled;

    fn device(owner: &str) -> Device {
        Device::from_events([&DomainEvent::DeviceEnrolled(DeviceEnrolled {
            device_id: "device-0001".parse().unwrap(),
            request_id: m87_events::RequestId::new(),
            name: "d".parse().unwrap(),
            owner_scope: owner.parse().unwrap(),
            system_info: Default::default(),
        })])
    }

    #[test]
    fn owner_opens_others_do_not_see() {
        let d = device("user:a@example.com");
        let now = Utc::now();
        let args = serde_json::json!({"argv": ["true"]});
        let e = decide_open(
            &d,
            &user("a@example.com"),
            SessionId::new(),
            Operation::Exec,
            args.clone(),
            now,
        )
        .unwrap();
        let DomainEvent::SessionOpened(o) = e else {
            panic!()
        };
        assert_eq!(o.expires_at, now + chrono::Duration::seconds(60));
        assert_eq!(
            decide_open(
                &d,
                &user("b@example.com"),
                SessionId::new(),
                Operation::Exec,
                args,
                now
            )
            .unwrap_err(),
            DomainError::NotFound("device")
        );
        assert!(matches!(
            decide_open(
                &d,
                &user("a@example.com"),
                SessionId::new(),
                Operation::Exec,
                serde_json::json!({}),
                now
            ),
            Err(DomainError::Validation(_))
        ));
    }

    #[test]
    fn device_operations_need_their_arguments() {
        use serde_json::json;
        let d = device("user:a@example.com");
        let open = |op, args| {
            decide_open(
                &d,
                &user("a@example.com"),
                SessionId::new(),
                op,
                args,
                Utc::now(),
            )
        };
        let serial = json!({"path": "/dev/ttyUSB0", "baud": 115200, "data_bits": 8,
                            "parity": "none", "stop_bits": 1});
        for (op, args) in [
            (Operation::Docker, json!({"argv": ["ps"]})),
            (Operation::Docker, json!({"argv": []})),
            (
                Operation::Logs,
                json!({"source": {"type": "unit", "name": "nginx"}, "follow": true}),
            ),
            (Operation::Metrics, json!({"interval_ms": 1000})),
            (Operation::Serial, serial.clone()),
            (Operation::Status, Value::Null),
            (Operation::List, json!({"path": "/var/log", "all": true})),
            (Operation::Ssh, json!({"user": "pi"})),
            (Operation::Ssh, json!({"user": null})),
            (
                Operation::Forward,
                json!({"targets": [{"path": "/run/app.sock", "proto": "unix"}]}),
            ),
        ] {
            assert!(open(op, args.clone()).is_ok(), "{op:?} {args}");
        }
        let mut bad_baud = serial;
        bad_baud["baud"] = json!(0);
        for (op, args, says) in [
            (Operation::Docker, json!({"argv": "ps"}), "docker needs"),
            (
                Operation::Logs,
                json!({"source": {"type": "syslog"}}),
                "logs needs",
            ),
            (
                Operation::Metrics,
                json!({"interval_ms": 10}),
                "metrics needs",
            ),
            (Operation::Serial, bad_baud, "baud rate 0"),
            (Operation::List, json!({"path": ""}), "ls needs a path"),
            (Operation::Ssh, json!({"user": 7}), "ssh needs"),
            (
                Operation::Forward,
                json!({"targets": [{"path": "run.sock", "proto": "unix"}]}),
                "forward needs",
            ),
        ] {
            match open(op, args) {
                Err(DomainError::Validation(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{op:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_the_device_closes_once() {
        let d = device("user:a@example.com");
        let opened = decide_open(
            &d,
            &user("a@example.com"),
            SessionId::new(),
            Operation::Shell,
            Value::Null,
            Utc::now(),
        )
        .unwrap();
        let mut s = Session::from_events([&opened]);
        let dev: DeviceId = "device-0001".parse().unwrap();
        let other: DeviceId = "device-0002".parse().unwrap();
        assert_eq!(
            decide_close(&s, &other, Default::default()).unwrap_err(),
            DomainError::NotFound("session")
        );
        s.apply(&decide_close(&s, &dev, Default::default()).unwrap());
        assert!(decide_close(&s, &dev, Default::default()).is_err());
    }

    #[test]
    fn the_session_records_the_key_it_was_granted_through() {
        let d = device("user:a@example.com");
        let mut caller = user("a@example.com");
        let key = m87_events::KeyId::new();
        if let Principal::User { key_id, .. } = &mut caller.principal {
            *key_id = Some(key);
        }
        let open = |caller: &Identity| match decide_open(
            &d,
            caller,
            SessionId::new(),
            Operation::Shell,
            Value::Null,
            Utc::now(),
        ) {
            Ok(DomainEvent::SessionOpened(o)) => o.credential,
            other => panic!("{other:?}"),
        };
        assert_eq!(open(&caller), Some(Credential::ApiKey(key)));
        assert_eq!(
            open(&user("a@example.com")),
            None,
            "an OIDC sign-in has no key"
        );
    }

    #[test]
    fn arguments_over_the_limit_are_refused_naming_it() {
        let d = device("user:a@example.com");
        let args = |n: usize| serde_json::json!({"argv": ["echo", "x".repeat(n)]});
        let overhead = serde_json::to_vec(&args(0)).unwrap().len();
        let open = |a| {
            decide_open(
                &d,
                &user("a@example.com"),
                SessionId::new(),
                Operation::Exec,
                a,
                Utc::now(),
            )
        };
        assert!(open(args(MAX_ARGS_BYTES - overhead)).is_ok());
        match open(args(MAX_ARGS_BYTES - overhead + 1)) {
            Err(DomainError::Validation(m)) => assert!(m.contains("8192 bytes"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
