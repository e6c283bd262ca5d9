//! Fleet mode end to end on MongoDB: two control planes share one database (event log and read
//! models), take commands in turn, and keep one set of read models; a rebuild from the log
//! gives the same documents, and so does a replay into memory.
//!
//! Runs against `MONGODB_URI` or a `secantusd-py` started by the harness (see `support::mongo`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use m87_control_plane::config::Settings;
use m87_control_plane::projections::{Projector, all_projections};
use m87_control_plane::service::ControlPlane;
use m87_control_plane::service::sessions::SessionsConfig;
use m87_control_plane::store::EventStore;
use m87_control_plane::store::ReadStore;
use m87_control_plane::store::memory::MemoryReadStore;
use m87_control_plane::store::mongo::MongoReadStore;
use m87_control_plane::store::mongo::{MongoStore, connect_database};
use m87_events::api::{CreateApiKeyRequest, RegisterRequest};
use m87_events::{Metadata, SystemInfo};
use serde_json::Value;
use support::mongo::{MongoServer, unique_name};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// One control plane on `database`, with its own client (connection pool) and projector, and
/// no bus: each command brings the projections up to date before it answers.
async fn control_plane(uri: &str, database: &str) -> ControlPlane {
    let db = connect_database(uri, database).await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MongoStore::open(&db).await.unwrap());
    let read: Arc<dyn ReadStore> = Arc::new(MongoReadStore::open(&db).await.unwrap());
    let projector = Projector::new(Arc::clone(&store), Arc::clone(&read), all_projections())
        .await
        .unwrap();
    ControlPlane::new(
        store,
        read,
        projector,
        None,
        Settings::default(),
        SessionsConfig::ephemeral().unwrap(),
        Arc::new(
            m87_control_plane::store::mongo::MongoAuditStore::open(&db)
                .await
                .unwrap(),
        ),
    )
}

async fn snapshot(read: &dyn ReadStore) -> BTreeMap<&'static str, Vec<Value>> {
    let mut out = BTreeMap::new();
    for p in all_projections() {
        for c in p.collections() {
            out.insert(*c, read.list(c).await.unwrap());
        }
    }
    out
}

fn request(device: &str) -> RegisterRequest {
    RegisterRequest {
        device_id: device.parse().unwrap(),
        name: format!("n-{device}").parse().unwrap(),
        owner_scope: "user:admin@localhost".parse().unwrap(),
        system_info: SystemInfo::default(),
        claim_secret: SECRET.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_share_read_models_and_a_rebuild_gives_the_same() {
    let server = MongoServer::shared();
    let database = unique_name("fleet");
    let one = control_plane(server.uri(), &database).await;
    let two = control_plane(server.uri(), &database).await;
    let meta = Metadata::system("test");

    let key = one.bootstrap_admin_key().await.unwrap().unwrap();
    let admin_on_two = two.authenticate(&key).await.unwrap();
    let admin_on_one = one.authenticate(&key).await.unwrap();
    two.create_api_key(
        &admin_on_two,
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
        // Requests arrive at one control plane, decisions at the other.
        let (asked, decides, admin) = if i % 2 == 0 {
            (&one, &two, &admin_on_two)
        } else {
            (&two, &one, &admin_on_one)
        };
        let r = asked
            .request_registration(request(device), &meta)
            .await
            .unwrap();
        if i == 1 {
            decides.reject(admin, r.request_id, &meta).await.unwrap();
        } else {
            decides.approve(admin, r.request_id, &meta).await.unwrap();
            asked.poll(r.request_id, SECRET, &meta).await.unwrap();
        }
    }

    let head = one.store().head().await.unwrap();
    assert_eq!(two.store().head().await.unwrap(), head);
    for cp in [&one, &two] {
        cp.projector().catch_up().await.unwrap();
        assert!(cp.projector().wait_for(head, Duration::from_secs(5)).await);
    }
    let live = snapshot(one.read_store().as_ref()).await;
    assert_eq!(snapshot(two.read_store().as_ref()).await, live);
    assert_eq!(live["devices"].len(), 2, "{live:#?}");
    assert_eq!(live["registrations"].len(), 3, "{live:#?}");

    two.projector().rebuild(None).await.unwrap();
    assert_eq!(
        snapshot(one.read_store().as_ref()).await,
        live,
        "rebuild differs from live"
    );

    let fresh: Arc<dyn ReadStore> = Arc::new(MemoryReadStore::new());
    let replay = Projector::new(
        Arc::clone(one.store()),
        Arc::clone(&fresh),
        all_projections(),
    )
    .await
    .unwrap();
    replay.catch_up().await.unwrap();
    assert_eq!(replay.progress(), head);
    assert_eq!(snapshot(fresh.as_ref()).await, live);
}
