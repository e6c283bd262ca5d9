//! Projections: rebuilding from the log gives the same read models as live updates, on SQLite
//! and in memory, and re-applying an event changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use m87_control_plane::config::Settings;
use m87_control_plane::projections::models::{
    API_KEYS, DEVICE_KEYS, DEVICES, KEY_HASHES, REGISTRATIONS,
};
use m87_control_plane::projections::{Projector, all_projections};
use m87_control_plane::server::open_single_machine;
use m87_control_plane::service::ControlPlane;
use m87_control_plane::store::ReadStore;
use m87_control_plane::store::memory::MemoryReadStore;
use m87_events::api::{CreateApiKeyRequest, RegisterRequest};
use m87_events::{Metadata, SystemInfo};
use serde_json::Value;
use tokio::sync::watch;

const COLLECTIONS: &[&str] = &[REGISTRATIONS, DEVICES, API_KEYS, KEY_HASHES, DEVICE_KEYS];
const SECRET: &str = "0123456789abcdef0123456789abcdef";

async fn snapshot(read: &dyn ReadStore) -> BTreeMap<&'static str, Vec<Value>> {
    let mut out = BTreeMap::new();
    for c in COLLECTIONS {
        out.insert(*c, read.list(c).await.unwrap());
    }
    out
}

fn request(device: &str, owner: &str) -> RegisterRequest {
    RegisterRequest {
        device_id: device.parse().unwrap(),
        name: format!("n-{device}").parse().unwrap(),
        owner_scope: owner.parse().unwrap(),
        system_info: SystemInfo::default(),
        claim_secret: SECRET.into(),
    }
}

/// A history touching every event type.
async fn scenario(cp: &ControlPlane) {
    let meta = Metadata::system("test");
    let key = cp.bootstrap_admin_key().await.unwrap().unwrap();
    let admin = cp.authenticate(&key).await.unwrap();
    let bob_key = cp
        .create_api_key(
            &admin,
            CreateApiKeyRequest {
                email: Some("bob@example.com".parse().unwrap()),
                name: Some("ci".into()),
            },
            &meta,
        )
        .await
        .unwrap();
    for (i, device) in ["device-0001", "device-0002", "device-0003"]
        .iter()
        .enumerate()
    {
        let r = cp
            .request_registration(request(device, "user:admin@localhost"), &meta)
            .await
            .unwrap();
        match i {
            0 => {
                cp.approve(&admin, r.request_id, &meta).await.unwrap();
                cp.poll(r.request_id, SECRET, &meta).await.unwrap();
                cp.change_access(
                    &admin,
                    &device.parse().unwrap(),
                    &"user:bob@example.com".parse().unwrap(),
                    true,
                    &meta,
                )
                .await
                .unwrap();
            }
            1 => cp.reject(&admin, r.request_id, &meta).await.unwrap(),
            _ => {
                cp.approve(&admin, r.request_id, &meta).await.unwrap();
                cp.poll(r.request_id, SECRET, &meta).await.unwrap();
                cp.remove_device(&admin, &device.parse().unwrap(), &meta)
                    .await
                    .unwrap();
            }
        }
    }
    cp.revoke_api_key(&admin, bob_key.id, &meta).await.unwrap();
}

#[tokio::test]
async fn sqlite_rebuild_equals_live_and_memory_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    let cp = open_single_machine(dir.path(), Settings::default(), stop_rx)
        .await
        .unwrap();
    scenario(&cp).await;
    let head = cp.store().head().await.unwrap();
    assert!(
        cp.projector()
            .wait_for(head, std::time::Duration::from_secs(5))
            .await
    );
    let live = snapshot(cp.read_store().as_ref()).await;
    assert_eq!(live[DEVICES].len(), 2);
    assert_eq!(live[REGISTRATIONS].len(), 3);
    assert_eq!(live[API_KEYS].len(), 4, "admin, bob, two device keys");

    cp.projector().rebuild(None).await.unwrap();
    assert_eq!(
        snapshot(cp.read_store().as_ref()).await,
        live,
        "rebuild differs from live"
    );
    cp.projector().rebuild(Some("devices")).await.unwrap();
    assert_eq!(snapshot(cp.read_store().as_ref()).await, live);
    assert!(cp.projector().rebuild(Some("nope")).await.is_err());

    // The same log replayed into a fresh in-memory read store gives the same documents.
    let fresh: Arc<dyn ReadStore> = Arc::new(MemoryReadStore::new());
    let replay = Projector::new(
        Arc::clone(cp.store()),
        Arc::clone(&fresh),
        all_projections(),
    )
    .await
    .unwrap();
    replay.catch_up().await.unwrap();
    assert_eq!(replay.progress(), head);
    assert_eq!(snapshot(fresh.as_ref()).await, live);
}

#[tokio::test]
async fn reapplying_an_event_changes_nothing() {
    reapply_on(&MemoryReadStore::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite =
        m87_control_plane::store::sqlite::SqliteReadStore::open(&dir.path().join("m87.db"))
            .unwrap();
    reapply_on(&sqlite).await;
}

async fn reapply_on(read: &dyn ReadStore) {
    let change = m87_control_plane::store::Change::Put {
        collection: DEVICES,
        id: "a".into(),
        doc: serde_json::json!({"v": 1}),
    };
    assert!(read.commit("devices", 5, vec![change]).await.unwrap());
    let again = m87_control_plane::store::Change::Put {
        collection: DEVICES,
        id: "a".into(),
        doc: serde_json::json!({"v": 2}),
    };
    assert!(
        !read
            .commit("devices", 5, vec![again.clone()])
            .await
            .unwrap()
    );
    assert!(!read.commit("devices", 3, vec![again]).await.unwrap());
    assert_eq!(
        read.get(DEVICES, "a").await.unwrap(),
        Some(serde_json::json!({"v": 1}))
    );
    assert_eq!(read.checkpoint("devices").await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_approvals_on_sqlite_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    let cp = open_single_machine(dir.path(), Settings::default(), stop_rx)
        .await
        .unwrap();
    let key = cp.bootstrap_admin_key().await.unwrap().unwrap();
    let admin = cp.authenticate(&key).await.unwrap();
    let meta = Metadata::system("test");
    let r = cp
        .request_registration(request("device-race2", "user:admin@localhost"), &meta)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (cp, admin, meta) = (cp.clone(), admin.clone(), meta.clone());
        tasks.push(tokio::spawn(async move {
            cp.approve(&admin, r.request_id, &meta).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => assert!(
                matches!(
                    e,
                    m87_control_plane::service::ServiceError::Domain(
                        m87_control_plane::domain::DomainError::AlreadyDecided(_)
                    ) | m87_control_plane::service::ServiceError::Contention
                ),
                "{e:?}"
            ),
        }
    }
    assert_eq!(wins, 1);
    let events = cp.store().read_all(0, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.event_type() == "RegistrationApproved")
            .count(),
        1
    );
}
