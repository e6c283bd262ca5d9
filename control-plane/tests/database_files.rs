//! The single-machine database and its WAL files are readable by their owner only (0600),
//! whether m87 creates them or finds them with a wider mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use m87_control_plane::config::Settings;
use m87_control_plane::server::{DATABASE_FILE, open_single_machine};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn database_files(dir: &Path) -> Vec<std::path::PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| dir.join(format!("{DATABASE_FILE}{suffix}")))
        .collect()
}

async fn open_and_write(dir: &Path) {
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let cp = open_single_machine(dir, Settings::default(), stopping)
        .await
        .unwrap();
    // The bootstrap admin key is an event: the WAL files exist after it.
    cp.bootstrap_admin_key().await.unwrap();
}

#[tokio::test]
async fn a_new_database_and_its_wal_files_are_0600() {
    let dir = tempfile::tempdir().unwrap();
    open_and_write(dir.path()).await;
    for file in database_files(dir.path()) {
        assert!(file.exists(), "{} exists", file.display());
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[tokio::test]
async fn an_existing_database_with_a_wider_mode_is_narrowed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    open_and_write(dir.path()).await;
    for file in database_files(dir.path()) {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    open_and_write(dir.path()).await;
    for file in database_files(dir.path()) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}
