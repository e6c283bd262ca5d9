//! Session recording: which policy applies to a device, which sessions are recorded, who may
//! store a recording and who may read it.

use m87_events::domain::{SessionOpened, SessionRecordingStored};
use m87_events::token::Operation;
use m87_events::{DeviceId, DomainEvent, Email, ScopeKind};

use super::device::Device;
use super::org::{DEFAULT_RECORD_SESSIONS, Org};
use super::session::Session;
use super::{DomainError, Identity};

/// Whether a device's terminal sessions are recorded, and whose policy says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// Recorded or not.
    pub record: bool,
    /// `device <name>`, `org <id>` or `default`.
    pub source: String,
}

/// The policy that applies to `device`: its own when set; else, for a device owned by an
/// organization, the organization's (`org`, on unless turned off); else off.
pub fn effective(device: &Device, org: Option<&Org>) -> Effective {
    let name = device
        .enrollment
        .as_ref()
        .map(|e| e.name.to_string())
        .unwrap_or_default();
    if let Some(record) = device.record_sessions {
        return Effective {
            record,
            source: format!("device {name}"),
        };
    }
    let owner = device.enrollment.as_ref().map(|e| e.owner_scope.kind());
    match owner {
        Some(ScopeKind::Org(id)) => Effective {
            record: org
                .and_then(|o| o.record_sessions)
                .unwrap_or(DEFAULT_RECORD_SESSIONS),
            source: format!("org {id}"),
        },
        _ => Effective {
            record: false,
            source: "default".into(),
        },
    }
}

/// Whether a session of `operation` with `args` has a terminal to record: a shell, an SSH
/// connection (its terminals: shells and `ssh -t`), or an exec granted with `"tty": true`.
/// Nothing else is ever recorded.
pub fn has_terminal(operation: Operation, args: &serde_json::Value) -> bool {
    match operation {
        // An SSH connection may open a terminal (a shell, `ssh -t`): recorded like a shell.
        Operation::Shell | Operation::Ssh => true,
        Operation::Exec => args.get("tty").and_then(serde_json::Value::as_bool) == Some(true),
        Operation::Forward
        | Operation::Copy
        | Operation::Sync
        | Operation::Docker
        | Operation::Logs
        | Operation::Metrics
        | Operation::Serial
        | Operation::Status
        | Operation::List => false,
    }
}

/// Marks a `SessionOpened` as recorded when the policy says so and it has a terminal.
pub fn mark(event: DomainEvent, policy: &Effective) -> DomainEvent {
    match event {
        DomainEvent::SessionOpened(o) => DomainEvent::SessionOpened(SessionOpened {
            recorded: policy.record && has_terminal(o.operation, &o.args),
            ..o
        }),
        other => other,
    }
}

/// What a device reports with the recording it uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Size in bytes.
    pub bytes: u64,
    /// Whether the device stopped at its cap.
    pub truncated: bool,
    /// The cap.
    pub max_bytes: u64,
    /// SHA-256 (hex).
    pub sha256: String,
}

/// `StoreRecording`: only the session's own device, only for a session granted as recorded,
/// once. Anything else answers as if the session did not exist.
pub fn decide_store(
    session: &Session,
    device_id: &DeviceId,
    upload: Upload,
) -> Result<DomainEvent, DomainError> {
    let opened = match &session.opened {
        Some(o) if &o.device_id == device_id && o.recorded => o,
        _ => return Err(DomainError::NotFound("recorded session")),
    };
    if session.recording.is_some() {
        return Err(DomainError::AlreadyExists(format!(
            "the recording of session {}",
            opened.session_id
        )));
    }
    Ok(DomainEvent::SessionRecordingStored(
        SessionRecordingStored {
            session_id: opened.session_id,
            device_id: device_id.clone(),
            bytes: upload.bytes,
            truncated: upload.truncated,
            max_bytes: upload.max_bytes,
            sha256: upload.sha256,
        },
    ))
}

/// `ReadRecording`: platform admins, whoever administers the device (its owner, its
/// organization's admins), and the user who ran the session. Anyone else, and a session with no
/// stored recording, is not found.
pub fn may_read<'a>(
    session: &'a Session,
    device: &Device,
    ran_by: Option<&Email>,
    caller: &Identity,
) -> Result<&'a SessionRecordingStored, DomainError> {
    let not_found = DomainError::NotFound("recording");
    let recording = session.recording.as_ref().ok_or(not_found.clone())?;
    let administers = device
        .enrollment
        .as_ref()
        .is_some_and(|e| caller.administers(&e.owner_scope));
    let ran_it = ran_by.is_some_and(|r| caller.email() == Some(r));
    if caller.platform_admin || administers || ran_it {
        Ok(recording)
    } else {
        Err(not_found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Aggregate;
    use crate::domain::test_support::{admin, user};
    use m87_events::domain::{DeviceEnrolled, DevicePolicySet, OrgPolicySet};
    use m87_events::{Role, Scope, SessionId};

    fn device(owner: &str) -> Device {
        Device::from_events([&DomainEvent::DeviceEnrolled(DeviceEnrolled {
            device_id: "device-0001".parse().unwrap(),
            request_id: m87_events::RequestId::new(),
            name: "bot".parse().unwrap(),
            owner_scope: owner.parse().unwrap(),
            system_info: Default::default(),
        })])
    }

    fn device_policy(d: &mut Device, on: Option<bool>) {
        d.apply(&DomainEvent::DevicePolicySet(DevicePolicySet {
            device_id: "device-0001".parse().unwrap(),
            record_sessions: on,
        }));
    }

    #[test]
    fn organizations_record_by_default_personal_devices_do_not() {
        let mut org = Org::default();
        let d = device("org:acme");
        assert_eq!(
            effective(&d, Some(&org)),
            Effective {
                record: true,
                source: "org acme".into()
            }
        );
        org.apply(&DomainEvent::OrgPolicySet(OrgPolicySet {
            org_id: "acme".parse().unwrap(),
            record_sessions: false,
        }));
        assert!(!effective(&d, Some(&org)).record);
        let mut mine = device("user:a@example.com");
        assert_eq!(effective(&mine, None).source, "default");
        assert!(!effective(&mine, None).record);
        device_policy(&mut mine, Some(true));
        assert_eq!(
            effective(&mine, None),
            Effective {
                record: true,
                source: "device bot".into()
            }
        );
        let mut theirs = device("org:acme");
        device_policy(&mut theirs, Some(true));
        assert!(effective(&theirs, Some(&org)).record, "the device wins");
        device_policy(&mut theirs, None);
        assert!(!effective(&theirs, Some(&org)).record, "inherit");
    }

    #[test]
    fn only_terminals_are_recorded() {
        let on = Effective {
            record: true,
            source: "org acme".into(),
        };
        let open = |op, args| {
            let event = DomainEvent::SessionOpened(SessionOpened {
                session_id: SessionId::new(),
                device_id: "device-0001".parse().unwrap(),
                operation: op,
                args,
                expires_at: chrono::Utc::now(),
                credential: None,
                recorded: false,
                relay: None,
            });
            match mark(event, &on) {
                DomainEvent::SessionOpened(o) => o.recorded,
                _ => unreachable!(),
            }
        };
        assert!(open(Operation::Shell, serde_json::Value::Null));
        assert!(open(
            Operation::Exec,
            serde_json::json!({"argv": ["top"], "tty": true})
        ));
        assert!(!open(Operation::Exec, serde_json::json!({"argv": ["ls"]})));
        assert!(!open(
            Operation::Copy,
            serde_json::json!({"path": "/x", "tty": true})
        ));
    }

    #[test]
    fn who_may_store_and_read() {
        let sid = SessionId::new();
        let dev: DeviceId = "device-0001".parse().unwrap();
        let mut s = Session::from_events([&DomainEvent::SessionOpened(SessionOpened {
            session_id: sid,
            device_id: dev.clone(),
            operation: Operation::Shell,
            args: serde_json::Value::Null,
            expires_at: chrono::Utc::now(),
            credential: None,
            recorded: true,
            relay: None,
        })]);
        let upload = Upload {
            bytes: 10,
            truncated: false,
            max_bytes: 100,
            sha256: "00".into(),
        };
        let other: DeviceId = "device-0002".parse().unwrap();
        assert!(decide_store(&s, &other, upload.clone()).is_err());
        let d = device("org:acme");
        let ran: Email = "bob@example.com".parse().unwrap();
        assert!(may_read(&s, &d, Some(&ran), &admin("root@example.com")).is_err());
        s.apply(&decide_store(&s, &dev, upload.clone()).unwrap());
        assert!(matches!(
            decide_store(&s, &dev, upload),
            Err(DomainError::AlreadyExists(_))
        ));
        let mut org_admin = user("alice@example.com");
        org_admin.scopes.push(Scope::org(&"acme".parse().unwrap()));
        org_admin
            .memberships
            .push(("acme".parse().unwrap(), Role::Admin));
        let mut member = user("carol@example.com");
        member
            .memberships
            .push(("acme".parse().unwrap(), Role::Member));
        assert!(may_read(&s, &d, Some(&ran), &admin("root@example.com")).is_ok());
        assert!(may_read(&s, &d, Some(&ran), &org_admin).is_ok());
        assert!(may_read(&s, &d, Some(&ran), &user("bob@example.com")).is_ok());
        assert_eq!(
            may_read(&s, &d, Some(&ran), &member).unwrap_err(),
            DomainError::NotFound("recording")
        );
    }
}
