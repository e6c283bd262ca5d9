//! Property: for random users, organizations, roles, devices and shares, every listing and every
//! device lookup returns exactly the devices the access rules allow, and only those who may
//! operate a device get past the operate check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use m87_control_plane::config::Settings;
use m87_control_plane::domain::{DomainError, Identity};
use m87_control_plane::server::open_in_memory;
use m87_control_plane::service::orgs::MemberChange;
use m87_control_plane::service::{ControlPlane, ServiceError};
use m87_events::api::{CreateOrgRequest, CreateSessionRequest, RegisterRequest};
use m87_events::token::Operation;
use m87_events::{DeviceId, Email, Metadata, OrgId, Role, Scope, SystemInfo};
use proptest::prelude::*;

const USERS: [&str; 4] = [
    "u0@example.com",
    "u1@example.com",
    "u2@example.com",
    "u3@example.com",
];
const ORGS: [&str; 3] = ["org-a", "org-b", "org-c"];

#[derive(Debug, Clone)]
struct World {
    /// org index → (user index → role)
    memberships: Vec<BTreeMap<usize, Role>>,
    /// device: owner scope, shares
    devices: Vec<(ScopeRef, BTreeSet<ScopeRef>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ScopeRef {
    User(usize),
    Org(usize),
}

impl ScopeRef {
    fn scope(self) -> Scope {
        match self {
            ScopeRef::User(u) => Scope::user(&USERS[u].parse().unwrap()),
            ScopeRef::Org(o) => Scope::org(&ORGS[o].parse().unwrap()),
        }
    }
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Admin), Just(Role::Member), Just(Role::Viewer)]
}

fn scope_ref() -> impl Strategy<Value = ScopeRef> {
    prop_oneof![
        (0..USERS.len()).prop_map(ScopeRef::User),
        (0..ORGS.len()).prop_map(ScopeRef::Org)
    ]
}

fn world() -> impl Strategy<Value = World> {
    (
        proptest::collection::vec(
            proptest::collection::btree_map(0..USERS.len(), role(), 0..4),
            ORGS.len(),
        ),
        proptest::collection::vec(
            (
                scope_ref(),
                proptest::collection::btree_set(scope_ref(), 0..3),
            ),
            0..6,
        ),
    )
        .prop_map(|(memberships, devices)| World {
            memberships,
            devices,
        })
}

/// The rules, written independently of the implementation.
fn model_sees(w: &World, user: usize, device: usize) -> bool {
    let (owner, shares) = &w.devices[device];
    std::iter::once(owner).chain(shares).any(|s| match s {
        ScopeRef::User(u) => *u == user,
        ScopeRef::Org(o) => w.memberships[*o].contains_key(&user),
    })
}

fn model_operates(w: &World, user: usize, device: usize) -> bool {
    let (owner, shares) = &w.devices[device];
    std::iter::once(owner).chain(shares).any(|s| match s {
        ScopeRef::User(u) => *u == user,
        ScopeRef::Org(o) => matches!(
            w.memberships[*o].get(&user),
            Some(Role::Admin | Role::Member)
        ),
    })
}

fn device_id(i: usize) -> DeviceId {
    format!("device-{i:04}").parse().unwrap()
}

async fn build(w: &World) -> (ControlPlane, Identity) {
    let cp = open_in_memory(Settings::default()).await.unwrap();
    let key = cp.bootstrap_admin_key().await.unwrap().unwrap();
    let root = cp.authenticate(&key).await.unwrap();
    let meta = Metadata::system("property");
    for (o, members) in w.memberships.iter().enumerate() {
        let id: OrgId = ORGS[o].parse().unwrap();
        cp.create_org(
            &root,
            CreateOrgRequest {
                id: id.clone(),
                name: None,
            },
            &meta,
        )
        .await
        .unwrap();
        for (u, r) in members {
            let email: Email = USERS[*u].parse().unwrap();
            cp.change_member(&root, &id, &email, MemberChange::Add(*r), &meta)
                .await
                .unwrap();
        }
        // The platform admin created it and is its admin; step out so only the drawn members remain.
        let admin_email: Email = "admin@localhost".parse().unwrap();
        if !members.is_empty() && members.values().any(|r| *r == Role::Admin) {
            cp.change_member(&root, &id, &admin_email, MemberChange::Remove, &meta)
                .await
                .unwrap();
        }
    }
    for (i, (owner, shares)) in w.devices.iter().enumerate() {
        let r = cp
            .request_registration(
                RegisterRequest {
                    device_id: device_id(i),
                    name: format!("d{i}").parse().unwrap(),
                    owner_scope: owner.scope(),
                    system_info: SystemInfo::default(),
                    claim_secret: "0123456789abcdef0123456789abcdef".into(),
                },
                &meta,
            )
            .await
            .unwrap();
        cp.approve(&root, r.request_id, &meta).await.unwrap();
        for s in shares {
            cp.change_access(&root, &device_id(i), &s.scope(), true, &meta)
                .await
                .unwrap();
        }
    }
    (cp, root)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn listings_and_lookups_follow_the_rules(w in world()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (cp, _root) = build(&w).await;
            for (u, email) in USERS.iter().enumerate() {
                let who = cp.user_identity(email.parse().unwrap(), None).await.unwrap();
                let listed: BTreeSet<DeviceId> = cp.list_devices(&who).await.unwrap().into_iter().map(|d| d.id).collect();
                let expected: BTreeSet<DeviceId> = (0..w.devices.len()).filter(|d| model_sees(&w, u, *d)).map(device_id).collect();
                prop_assert_eq!(&listed, &expected, "listing of {}", email);
                for d in 0..w.devices.len() {
                    let found = cp.get_device(&who, &device_id(d)).await;
                    prop_assert_eq!(found.is_ok(), model_sees(&w, u, d), "lookup of device {} by {}", d, email);
                    if let Err(e) = found {
                        prop_assert!(matches!(e, ServiceError::Domain(DomainError::NotFound(_))), "{:?}", e);
                    }
                    // Operating: offline devices answer 409 once past the access checks.
                    let session = cp
                        .create_session(&who, &device_id(d), CreateSessionRequest { operation: Operation::Shell, args: serde_json::Value::Null }, &Metadata::system("property"))
                        .await;
                    let outcome = match session {
                        Err(ServiceError::Domain(DomainError::NotFound(_))) => "hidden",
                        Err(ServiceError::Domain(DomainError::Forbidden(_))) => "forbidden",
                        Err(ServiceError::Domain(DomainError::DeviceOffline(_))) => "allowed",
                        other => panic!("unexpected {other:?}"),
                    };
                    let expected = if !model_sees(&w, u, d) { "hidden" } else if model_operates(&w, u, d) { "allowed" } else { "forbidden" };
                    prop_assert_eq!(outcome, expected, "operating device {} by {}", d, email);
                }
            }
            Ok(())
        })?;
    }
}
