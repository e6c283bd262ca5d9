//! Session recording in fleet mode, with the real binaries: the recording a device uploads
//! through one control-plane replica is kept in MongoDB GridFS and read through the other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fleet_support;

use m87_test_support::{mongo, nats};

use std::time::{Duration, Instant};

use fleet_support::{Fleet, enroll};
use futures_util::TryStreamExt;
use mongo::MongoServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_kept_in_gridfs_and_read_through_another_replica() {
    let mut fleet = Fleet::new(1, MongoServer::shared()).await;
    fleet.start_control_plane();
    fleet.start_control_plane();
    fleet.start_relay();
    fleet.wait_for_relays(1);
    let admin1 = fleet.admin(0);
    let admin2 = fleet.admin(1);
    let cp1 = fleet.control_planes[0].url.clone();
    let (_runtime, _device) = enroll(&admin1, &cp1, &fleet.path("device"), "fleet-bot");
    admin1.ok(&[
        "devices",
        "policy",
        "set",
        "fleet-bot",
        "record-sessions",
        "on",
    ]);

    let out = admin1.run(&["fleet-bot", "exec", "-t", "--", "echo", "fleet-word"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("m87: this session is recorded (policy of device fleet-bot)"),
        "{out:?}"
    );

    // The recording lands in the `recordings` GridFS bucket, named by its session.
    let files = fleet
        .database()
        .await
        .collection::<mongodb::bson::Document>("recordings.files");
    let deadline = Instant::now() + Duration::from_secs(30);
    let name = loop {
        let found: Vec<mongodb::bson::Document> = files
            .find(mongodb::bson::doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        if let Some(doc) = found.first() {
            break doc.get_str("filename").unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no recording reached GridFS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let session = name
        .strip_prefix("session-")
        .and_then(|n| n.strip_suffix(".cast"))
        .unwrap()
        .to_owned();

    // Read through the other replica, which has no file of it (its data directory is its own).
    let deadline = Instant::now() + Duration::from_secs(30);
    let cast = loop {
        let out = admin2.run(&["audit", "recording", &session, "-o", "-"]);
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (header, events) = m87_events::asciicast::parse(&cast).unwrap();
    assert_eq!(header.version, 2);
    assert!(
        events.iter().any(|e| e.data.contains("fleet-word")),
        "{cast}"
    );
    for cp in &fleet.control_planes {
        assert!(!cp.data_dir.join("recordings").exists());
    }
}
