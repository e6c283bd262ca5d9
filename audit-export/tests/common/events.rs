//! Events of every kind, as the control plane stores them.

use std::net::IpAddr;

use chrono::Utc;
use m87_events::domain::*;
use m87_events::token::{Credential, Operation};
use m87_events::{
    Actor, CorrelationId, DeviceId, DeviceName, DomainEvent, Email, EventEnvelope, EventId, KeyId,
    Metadata, OrgId, RequestId, Scope, SessionId, StreamId,
};

pub fn device() -> DeviceId {
    "edge-device-01".parse().unwrap()
}

pub fn alice() -> Actor {
    Actor::User {
        email: "alice@example.com".parse().unwrap(),
        key_id: Some(KeyId::new()),
        subject: None,
    }
}

/// An envelope for `event` caused by `actor` from 192.0.2.7.
pub fn envelope(event: DomainEvent, actor: Actor) -> EventEnvelope {
    EventEnvelope {
        event_id: EventId::new(),
        stream_id: StreamId::from_raw("test-stream".to_owned()),
        stream_version: 1,
        global_position: 0,
        recorded_at: Utc::now(),
        metadata: Metadata {
            actor,
            source_ip: Some("192.0.2.7".parse::<IpAddr>().unwrap()),
            correlation_id: CorrelationId::new(),
        },
        schema_version: 1,
        event,
    }
}

pub fn opened(op: Operation) -> DomainEvent {
    DomainEvent::SessionOpened(SessionOpened {
        session_id: SessionId::new(),
        device_id: device(),
        operation: op,
        args: serde_json::json!({ "command": ["uname", "-a"] }),
        expires_at: Utc::now(),
        credential: Some(Credential::ApiKey(KeyId::new())),
        relay: None,
        recorded: false,
    })
}

pub fn closed(op: Operation, exit_code: Option<i32>) -> DomainEvent {
    DomainEvent::SessionClosed(SessionClosed {
        session_id: SessionId::new(),
        device_id: device(),
        duration_ms: 1234,
        bytes_to_device: 10,
        bytes_from_device: 20,
        exit_code,
        signal: None,
        error: None,
        operation: Some(op),
        reason: Some("exit".to_owned()),
        channels: vec![],
        channels_dropped: 0,
    })
}

pub fn refused(reason: &str) -> DomainEvent {
    DomainEvent::SessionRefused(SessionRefused {
        session_id: Some(SessionId::new()),
        device_id: Some(device()),
        refused_by: "relay".to_owned(),
        code: "access_revoked".to_owned(),
        reason: reason.to_owned(),
        operation: Some(Operation::Exec),
    })
}

/// One event of every kind, with the OCSF class and activity the mapping gives it.
pub fn every_kind() -> Vec<(DomainEvent, u32, u32)> {
    let req = RequestId::new();
    let org: OrgId = "acme".parse().unwrap();
    let email: Email = "bob@example.com".parse().unwrap();
    let scope: Scope = "user:bob@example.com".parse().unwrap();
    let name: DeviceName = "edge01".parse().unwrap();
    vec![
        (
            DomainEvent::RegistrationRequested(RegistrationRequested {
                request_id: req,
                device_id: device(),
                name: name.clone(),
                owner_scope: scope.clone(),
                system_info: SystemInfo::default(),
                claim_secret_hash: "00".repeat(32),
                expires_at: Utc::now(),
            }),
            3004,
            1,
        ),
        (
            DomainEvent::RegistrationApproved(RegistrationApproved {
                request_id: req,
                device_id: device(),
            }),
            3004,
            3,
        ),
        (
            DomainEvent::RegistrationRejected(RegistrationRejected {
                request_id: req,
                device_id: device(),
            }),
            3004,
            3,
        ),
        (
            DomainEvent::RegistrationExpired(RegistrationExpired {
                request_id: req,
                device_id: device(),
            }),
            3004,
            3,
        ),
        (
            DomainEvent::DeviceEnrolled(DeviceEnrolled {
                device_id: device(),
                request_id: req,
                name,
                owner_scope: scope.clone(),
                system_info: SystemInfo::default(),
            }),
            3004,
            6,
        ),
        (
            DomainEvent::DeviceCredentialsIssued(DeviceCredentialsIssued {
                device_id: device(),
                request_id: req,
                key_id: KeyId::new(),
                key_hash: "11".repeat(32),
            }),
            3001,
            99,
        ),
        (
            DomainEvent::DeviceRemoved(DeviceRemoved {
                device_id: device(),
            }),
            3004,
            7,
        ),
        (
            DomainEvent::AccessGranted(AccessGranted {
                device_id: device(),
                scope: scope.clone(),
            }),
            3005,
            1,
        ),
        (
            DomainEvent::AccessRevoked(AccessRevoked {
                device_id: device(),
                scope,
            }),
            3005,
            2,
        ),
        (
            DomainEvent::ApiKeyCreated(ApiKeyCreated {
                key_id: KeyId::new(),
                email: email.clone(),
                name: "ci".to_owned(),
                key_hash: "22".repeat(32),
                key_hint: "m87u_ab".to_owned(),
                bootstrap: false,
            }),
            3001,
            99,
        ),
        (
            DomainEvent::ApiKeyRevoked(ApiKeyRevoked {
                key_id: KeyId::new(),
            }),
            3001,
            99,
        ),
        (opened(Operation::Shell), 4007, 1),
        (opened(Operation::Exec), 4007, 1),
        (opened(Operation::Copy), 4007, 1),
        (opened(Operation::Sync), 4007, 1),
        (opened(Operation::Forward), 4014, 1),
        (closed(Operation::Exec, Some(0)), 4007, 2),
        (closed(Operation::Forward, None), 4014, 2),
        (refused("viewer may not exec"), 3003, 1),
        (
            DomainEvent::DeviceConnected(DeviceConnected {
                device_id: device(),
                relay_id: "relay-1".to_owned(),
                remote_addr: "198.51.100.2:4433".to_owned(),
            }),
            4014,
            1,
        ),
        (
            DomainEvent::DeviceDisconnected(DeviceDisconnected {
                device_id: device(),
                relay_id: "relay-1".to_owned(),
                reason: "idle".to_owned(),
            }),
            4014,
            2,
        ),
        (
            DomainEvent::OrgCreated(OrgCreated {
                org_id: org.clone(),
                name: "Acme".to_owned(),
            }),
            3006,
            6,
        ),
        (
            DomainEvent::OrgDeleted(OrgDeleted {
                org_id: org.clone(),
            }),
            3006,
            5,
        ),
        (
            DomainEvent::MemberAdded(MemberAdded {
                org_id: org.clone(),
                email: email.clone(),
                role: Role::Member,
            }),
            3006,
            3,
        ),
        (
            DomainEvent::MemberRemoved(MemberRemoved {
                org_id: org.clone(),
                email: email.clone(),
            }),
            3006,
            4,
        ),
        (
            DomainEvent::MemberRoleChanged(MemberRoleChanged {
                org_id: org,
                email,
                role: Role::Admin,
            }),
            3006,
            1,
        ),
    ]
}

/// Appends `n` exec sessions (opened) to `source`, numbered in their args.
pub fn append_sessions(
    source: &m87_audit_export::MemorySource,
    n: usize,
) -> Vec<m87_audit_export::AuditEntry> {
    (0..n)
        .map(|i| {
            let mut ev = opened(Operation::Exec);
            if let DomainEvent::SessionOpened(o) = &mut ev {
                o.args = serde_json::json!({ "n": i });
            }
            source.append(envelope(ev, alice()))
        })
        .collect()
}
