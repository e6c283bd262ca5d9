//! Wiring: opens the stores in the data directory, starts the publisher, projector and expiry
//! sweeper, makes the bootstrap admin key on first start, and serves the API over HTTPS.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{AppState, app};
use crate::bus::{EventBus, InProcessBus, Publisher};
use crate::config::{ServerConfig, Settings};
use crate::projections::store::{ReadStore, SqliteReadStore};
use crate::projections::{Projector, RebuildError, all_projections};
use crate::service::ControlPlane;
use crate::store::EventStore;
use crate::store::sqlite::SqliteStore;
use crate::tls;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "m87.db";
/// The bootstrap admin key file inside the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// Creates the data directory (mode 0700) if needed.
pub fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting data directory {}", data_dir.display()))?;
    Ok(())
}

/// Opens the single-machine control plane in `data_dir`: SQLite store and read models, the
/// in-process bus with its publisher, and a running projector, caught up before returning.
pub async fn open_single_machine(
    data_dir: &Path,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ControlPlane> {
    prepare_data_dir(data_dir)?;
    let db = data_dir.join(DATABASE_FILE);
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&db)?);
    let read: Arc<dyn ReadStore> = Arc::new(SqliteReadStore::open(&db)?);
    let bus = Arc::new(InProcessBus::new(1024));
    let projector =
        Projector::new(Arc::clone(&store), Arc::clone(&read), all_projections()).await?;
    projector
        .catch_up()
        .await
        .context("bringing read models up to date")?;
    projector.clone().spawn(bus.as_ref(), shutdown.clone());
    let head = store.head().await?;
    let publisher = Publisher::spawn(Arc::clone(&store), bus as Arc<dyn EventBus>, head, shutdown);
    Ok(ControlPlane::new(
        store,
        read,
        projector,
        Some(publisher),
        settings,
    ))
}

/// Rebuilds one projection (or all) from the event log of the data directory, offline.
pub async fn rebuild_projections(data_dir: &Path, name: Option<&str>) -> anyhow::Result<u64> {
    let db = data_dir.join(DATABASE_FILE);
    anyhow::ensure!(db.exists(), "no m87 database in {}", data_dir.display());
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&db)?);
    let read: Arc<dyn ReadStore> = Arc::new(SqliteReadStore::open(&db)?);
    let projector = Projector::new(Arc::clone(&store), read, all_projections()).await?;
    match projector.rebuild(name).await {
        Ok(()) => Ok(projector.progress()),
        Err(RebuildError::Unknown(n)) => {
            anyhow::bail!("no projection named {n}; known: registrations, devices, api_keys")
        }
        Err(e) => Err(e.into()),
    }
}

/// What [`run`] reports once it is listening.
#[derive(Debug, Clone)]
pub struct Started {
    /// The API's address.
    pub api_addr: std::net::SocketAddr,
    /// The TLS certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// Where the bootstrap admin key was written, when it was made now.
    pub admin_key_path: Option<PathBuf>,
}

/// Runs the single-machine server on `listener` until `shutdown` completes. `on_started` is
/// called once the API is ready.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_started: impl FnOnce(&Started),
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let cp =
        open_single_machine(&config.data_dir, config.settings.clone(), stop_rx.clone()).await?;

    let admin_key_path = match cp
        .bootstrap_admin_key()
        .await
        .context("creating the admin key")?
    {
        Some(key) => {
            let path = config.data_dir.join(ADMIN_KEY_FILE);
            tls::write_private_file(&path, format!("{key}\n").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(
                path = %path.display(),
                email = %config.settings.admin_emails.first().map(|e| e.to_string()).unwrap_or_default(),
                "created the platform admin api key; read it from this file"
            );
            Some(path)
        }
        None => None,
    };

    let tls = tls::load_or_create(
        &config.data_dir,
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
    )?;
    let api_addr = listener.local_addr().context("reading the API address")?;
    tracing::info!(
        address = %api_addr,
        certificate = %tls.cert_path.display(),
        sha256 = %tls.fingerprint,
        self_signed = tls.self_signed,
        "REST API listening over HTTPS"
    );

    spawn_expiry_sweeper(cp.clone(), stop_rx.clone());
    on_started(&Started {
        api_addr,
        fingerprint: tls.fingerprint.clone(),
        admin_key_path,
    });
    tls::serve_https(listener, tls.config, app(AppState::new(cp)), shutdown).await;
    let _ = stop_tx.send(true);
    tracing::info!("server stopped");
    Ok(())
}

fn spawn_expiry_sweeper(cp: ControlPlane, mut shutdown: watch::Receiver<bool>) {
    let every = cp.settings().expiry_sweep_interval;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            match cp.expire_overdue().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "registration requests expired"),
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
            }
        }
    });
}

/// The in-memory twin of [`open_single_machine`], for fast tests: memory store and read
/// models, no bus; every command brings the projections up to date before it answers.
pub async fn open_in_memory(settings: Settings) -> anyhow::Result<ControlPlane> {
    let store: Arc<dyn EventStore> = Arc::new(crate::store::memory::MemoryStore::new());
    let read: Arc<dyn ReadStore> = Arc::new(crate::projections::store::MemoryReadStore::new());
    let projector =
        Projector::new(Arc::clone(&store), Arc::clone(&read), all_projections()).await?;
    Ok(ControlPlane::new(store, read, projector, None, settings))
}
