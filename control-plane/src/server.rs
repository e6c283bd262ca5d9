//! Wiring: opens the stores in the data directory, starts the publisher, projector and expiry
//! sweeper, makes the bootstrap admin key on first start, and serves the API over HTTPS.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{AppState, app};
use crate::bus::nats::JetStreamBus;
use crate::bus::{EventBus, InProcessBus, Publisher};
use crate::config::{FleetConfig, ServerConfig, Settings};
use crate::projections::{Projector, RebuildError, all_projections};
use crate::service::ControlPlane;
use crate::service::sessions::SessionsConfig;
use crate::store::EventStore;
use crate::store::ReadStore;
use crate::store::audit::AuditStore;
use crate::store::deadline::Deadline;
use crate::store::mongo::MongoReadStore;
use crate::store::mongo::MongoStore;
use crate::store::recordings::{FileRecordings, GridFsRecordings};
use crate::store::sqlite::SqliteStore;
use crate::store::sqlite::{SqliteAuditStore, SqliteReadStore};
use crate::tls;
use m87_events::token::SessionSigner;

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
    let audit_shutdown = shutdown.clone();
    let publisher = Publisher::spawn(
        Arc::clone(&store),
        Arc::clone(&bus) as Arc<dyn EventBus>,
        head,
        shutdown,
    );
    let sessions = SessionsConfig::new(load_or_create_signer(data_dir)?);
    let audit: Arc<dyn AuditStore> = Arc::new(SqliteAuditStore::open(&db)?);
    let recordings = FileRecordings::new(data_dir.join(RECORDINGS_DIR));
    let cp = ControlPlane::new(
        store,
        read,
        projector,
        Some(publisher),
        settings,
        sessions,
        audit,
    )
    .with_recordings(Arc::new(recordings));
    cp.audit_trail()
        .catch_up()
        .await
        .context("bringing the audit trail up to date")?;
    cp.audit_trail()
        .clone()
        .spawn(bus.subscribe(), audit_shutdown);
    Ok(cp)
}

/// How long a MongoDB read may take before the API answers 503.
const MONGO_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a MongoDB write may take (including its own retries of write conflicts).
const MONGO_WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(35);

/// How long a starting control plane or relay waits for NATS to become ready.
const NATS_START_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `attempt` until it succeeds or a minute has passed: just after NATS restarts,
/// JetStream answers only once its streams and buckets have elected leaders.
async fn patiently<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = std::time::Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < NATS_START_PATIENCE => {
                tracing::warn!(error = %format!("{e:#}"), "{what}: not ready yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context(what.to_owned())),
        }
    }
}

/// Opens the JetStream event stream, patiently (see [`patiently`]); `what` names the purpose in
/// the logs and the error.
pub async fn open_event_stream(
    nats: &async_nats::Client,
    config: &crate::bus::nats::JetStreamConfig,
    what: &str,
) -> anyhow::Result<JetStreamBus> {
    patiently(what, || async {
        Ok(JetStreamBus::with_client(nats.clone(), config.clone()).await?)
    })
    .await
}

/// Opens a fleet control-plane replica: the MongoDB event store and read models (migrated
/// under a lock first), the JetStream bus with a publisher that starts after the last event on
/// the stream, and a running projector, caught up before returning.
pub async fn open_fleet(
    fleet: &FleetConfig,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ControlPlane> {
    let applied = crate::store::mongo::migrate(&fleet.database)
        .await
        .context("applying MongoDB migrations")?;
    if !applied.is_empty() {
        tracing::info!(versions = ?applied, "applied MongoDB migrations");
    }
    // The driver has no socket timeout: a database that stops answering must not hold
    // requests forever (appends may retry write conflicts for up to 30 s by themselves).
    let store: Arc<dyn EventStore> = Arc::new(Deadline::new(
        MongoStore::open(&fleet.database)
            .await
            .context("opening the MongoDB event store")?,
        "MongoDB",
        MONGO_READ_LIMIT,
        MONGO_WRITE_LIMIT,
    ));
    let read: Arc<dyn ReadStore> = Arc::new(Deadline::new(
        MongoReadStore::open(&fleet.database)
            .await
            .context("opening the MongoDB read models")?,
        "MongoDB",
        MONGO_READ_LIMIT,
        MONGO_WRITE_LIMIT,
    ));
    let bus = open_event_stream(
        &fleet.nats,
        &fleet.jetstream,
        "opening the JetStream event stream",
    )
    .await?;
    let projector =
        Projector::new(Arc::clone(&store), Arc::clone(&read), all_projections()).await?;
    // Other replicas keep the shared read models current, so a replica need not wait for them
    // to start: a replica killed in the middle of a transaction leaves it open in MongoDB
    // until the server aborts it (`transactionLifetimeLimitSeconds`, 60 s by default), and
    // commits touching the same documents conflict until then. The projector keeps retrying.
    match tokio::time::timeout(std::time::Duration::from_secs(5), projector.catch_up()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "read models not caught up at start; retrying in the background")
        }
        Err(_) => {
            tracing::warn!("read models still catching up after 5 s; continuing in the background")
        }
    }
    projector.clone().spawn(&bus, shutdown.clone());
    let (audit_feed, audit_shutdown) = (bus.subscribe(), shutdown.clone());
    // Everything stored after the stream's last event is published (again, if another replica
    // got there first: JetStream drops the duplicate by event id).
    let from = bus
        .last_published_position()
        .await
        .context("reading the event stream's last position")?
        .unwrap_or(0);
    let publisher = Publisher::spawn(
        Arc::clone(&store),
        Arc::new(bus) as Arc<dyn EventBus>,
        from,
        shutdown,
    );
    let sessions = SessionsConfig::new(load_signer_file(&fleet.signing_key)?);
    let audit: Arc<dyn AuditStore> = Arc::new(
        crate::store::mongo::MongoAuditStore::open(&fleet.database)
            .await
            .context("opening the MongoDB audit trail")?,
    );
    let recordings = GridFsRecordings::new(&fleet.database);
    let cp = ControlPlane::new(
        store,
        read,
        projector,
        Some(publisher),
        settings,
        sessions,
        audit,
    )
    .with_recordings(Arc::new(recordings));
    cp.audit_trail().clone().spawn(audit_feed, audit_shutdown);
    Ok(cp)
}

/// The folder of session recordings inside the data directory (single machine).
pub const RECORDINGS_DIR: &str = "recordings";

/// The session signing key file inside the data directory.
pub const SIGNING_KEY_FILE: &str = "session-signing.key";

/// Loads the Ed25519 key that signs session tokens, creating it (0600) on first start.
pub fn load_or_create_signer(data_dir: &Path) -> anyhow::Result<SessionSigner> {
    load_signer_file(&data_dir.join(SIGNING_KEY_FILE))
}

/// Loads the Ed25519 key at `path`, creating it (0600) when missing. Replicas that start
/// together may race to create it: the file is written atomically, and a replica whose key
/// lost the race reads the winner's.
pub fn load_signer_file(path: &Path) -> anyhow::Result<SessionSigner> {
    let path = path.to_path_buf();
    match std::fs::read(&path) {
        Ok(pkcs8) => SessionSigner::from_pkcs8(&pkcs8)
            .with_context(|| format!("{} is not a valid signing key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (signer, pkcs8) =
                SessionSigner::generate().context("generating the session signing key")?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            m87_transport::private_file::write_private_file(&path, &pkcs8)
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the session signing key");
            // Another replica may have written its own key at the same moment: use the one
            // that is on disk now, so every replica signs with the same key.
            let on_disk =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            if on_disk == pkcs8 {
                Ok(signer)
            } else {
                SessionSigner::from_pkcs8(&on_disk)
                    .with_context(|| format!("{} is not a valid signing key", path.display()))
            }
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Rebuilds one projection (or all) from the event log of the data directory, offline.
pub async fn rebuild_projections(data_dir: &Path, name: Option<&str>) -> anyhow::Result<u64> {
    let db = data_dir.join(DATABASE_FILE);
    anyhow::ensure!(db.exists(), "no m87 database in {}", data_dir.display());
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&db)?);
    let read: Arc<dyn ReadStore> = Arc::new(SqliteReadStore::open(&db)?);
    rebuild_with(store, read, name).await
}

/// Rebuilds one projection (or all) in MongoDB from its event log. Control planes may keep
/// running: their projectors skip what the rebuild has applied, and the rebuild's commits
/// skip what theirs have.
pub async fn rebuild_projections_mongo(
    db: &mongodb::Database,
    name: Option<&str>,
) -> anyhow::Result<u64> {
    let store: Arc<dyn EventStore> = Arc::new(MongoStore::open(db).await?);
    let read: Arc<dyn ReadStore> = Arc::new(MongoReadStore::open(db).await?);
    rebuild_with(store, read, name).await
}

/// Rebuilds one projection (or all): in MongoDB when `mongo` (URI and database) is given, else
/// in the data directory's SQLite.
pub async fn rebuild_projections_in(
    data_dir: &Path,
    mongo: Option<(&str, &str)>,
    name: Option<&str>,
) -> anyhow::Result<u64> {
    match mongo {
        Some((uri, database)) => {
            let db = crate::store::mongo::connect_database(uri, database).await?;
            rebuild_projections_mongo(&db, name).await
        }
        None => rebuild_projections(data_dir, name).await,
    }
}

/// `m87-server audit verify`: walks the audit trail's hash chain and the event log — MongoDB's
/// when `mongo` is given, else the data directory's SQLite — without changing either. Returns
/// the report and a line for people; the caller exits non-zero when it names a finding.
pub async fn verify_audit_in(
    data_dir: &Path,
    mongo: Option<(&str, &str)>,
) -> anyhow::Result<(crate::audit::verify::VerifyReport, String)> {
    let (log, trail): (Arc<dyn EventStore>, Arc<dyn AuditStore>) = match mongo {
        Some((uri, database)) => {
            let db = crate::store::mongo::connect_database(uri, database).await?;
            (
                Arc::new(MongoStore::open(&db).await?),
                Arc::new(crate::store::mongo::MongoAuditStore::open(&db).await?),
            )
        }
        None => {
            let db = data_dir.join(DATABASE_FILE);
            anyhow::ensure!(db.exists(), "no database at {}", db.display());
            (
                Arc::new(SqliteStore::open(&db)?),
                Arc::new(SqliteAuditStore::open(&db)?),
            )
        }
    };
    let report = crate::audit::verify::verify(trail.as_ref(), log.as_ref()).await?;
    let line = match &report.finding {
        None => format!(
            "audit trail intact: {} entries chained, up to event {}",
            report.checked, report.head
        ),
        Some(f) => format!(
            "audit trail broken after {} intact entries: {}",
            report.checked, f.message
        ),
    };
    Ok((report, line))
}

/// `m87-server audit-export status`: asks the running server at `api_url` for each sink's
/// export status with the admin key (`M87_API_KEY`, else `<data-dir>/admin.key`), trusting the
/// certificate whose fingerprint the data directory holds (else the system's roots), and
/// renders it as a table.
pub async fn print_export_status(data_dir: &Path, api_url: &str) -> anyhow::Result<()> {
    print!("{}", export_status_report(data_dir, api_url).await?);
    Ok(())
}

/// The table [`print_export_status`] prints.
pub async fn export_status_report(data_dir: &Path, api_url: &str) -> anyhow::Result<String> {
    let key = match std::env::var("M87_API_KEY") {
        Ok(k) if !k.trim().is_empty() => k.trim().to_owned(),
        _ => std::fs::read_to_string(data_dir.join(ADMIN_KEY_FILE))
            .with_context(|| format!("reading the admin key in {}", data_dir.display()))?
            .trim()
            .to_owned(),
    };
    let pin = std::fs::read_to_string(data_dir.join("tls/fingerprint"))
        .ok()
        .and_then(|f| f.trim().parse().ok());
    let trust = m87_transport::http::ServerTrust::choose(pin, false);
    let client = m87_transport::http::ApiClient::with_trust(api_url, Some(key), trust)?;
    let sinks: Vec<m87_audit_export::SinkStatus> = client.get("/v1/audit/export").await?;
    if sinks.is_empty() {
        return Ok("no audit sinks are configured (--audit-sinks / M87_AUDIT_SINKS)\n".into());
    }
    let mut out = format!(
        "{:<16} {:<14} {:>6} {:>10} {:>10} {:>9} {:>10} {:>8} {:>8}  LAST ERROR\n",
        "SINK", "KIND", "ACTIVE", "CURSOR", "LAG", "LAG (s)", "DELIVERED", "RETRIED", "REJECTED"
    );
    for s in sinks {
        out.push_str(&format!(
            "{:<16} {:<14} {:>6} {:>10} {:>10} {:>9.1} {:>10} {:>8} {:>8}  {}\n",
            s.name,
            s.kind,
            if s.active { "yes" } else { "no" },
            s.cursor,
            s.lag_records,
            s.lag_seconds,
            s.delivered,
            s.retried,
            s.rejected,
            s.last_error.as_deref().unwrap_or("-")
        ));
    }
    Ok(out)
}

/// `m87-server migrate`: applies pending MongoDB migrations and says what it did.
pub async fn migrate_mongo_report(uri: &str, database: &str) -> anyhow::Result<String> {
    let (applied, current) = migrate_mongo(uri, database).await?;
    Ok(if applied.is_empty() {
        format!("MongoDB schema is up to date (version {current})")
    } else {
        format!("applied MongoDB migrations {applied:?}; schema is now at version {current}")
    })
}

/// Applies pending MongoDB migrations; returns the versions applied now and the schema's
/// version after them.
pub async fn migrate_mongo(uri: &str, database: &str) -> anyhow::Result<(Vec<u32>, u32)> {
    let db = crate::store::mongo::connect_database(uri, database).await?;
    let applied = crate::store::mongo::migrate(&db).await?;
    let current = m87_migrations::mongo::current_version(&db)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((applied, current))
}

async fn rebuild_with(
    store: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    name: Option<&str>,
) -> anyhow::Result<u64> {
    let projector = Projector::new(Arc::clone(&store), read, all_projections()).await?;
    match projector.rebuild(name).await {
        Ok(()) => Ok(projector.progress()),
        Err(RebuildError::Unknown(n)) => {
            anyhow::bail!("no projection named {n}; known: registrations, devices, api_keys, orgs")
        }
        Err(e) => Err(e.into()),
    }
}

/// The control plane opened on its data directory, ready to serve.
pub struct Platform {
    /// The application service.
    pub cp: ControlPlane,
    /// The API's TLS configuration.
    pub tls: tls::TlsMaterial,
    /// Where the bootstrap admin key was written, when it was made now.
    pub admin_key_path: Option<PathBuf>,
    /// The OIDC token validator, when sign-in is configured.
    pub jwt: Option<Arc<crate::auth::JwtValidator>>,
    relay_secret: Option<String>,
    http_limits: tls::HttpLimits,
    releases: crate::api::releases::ReleasesConfig,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform").finish_non_exhaustive()
    }
}

impl Platform {
    /// Opens the data directory, makes the bootstrap admin key on first start, loads TLS and
    /// starts the background tasks (publisher, projector, expiry sweeper).
    pub async fn start(config: &ServerConfig) -> anyhow::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let cp = match &config.fleet {
            Some(fleet) => {
                prepare_data_dir(&config.data_dir)?;
                open_fleet(fleet, config.settings.clone(), stop_rx.clone()).await?
            }
            None => {
                open_single_machine(&config.data_dir, config.settings.clone(), stop_rx.clone())
                    .await?
            }
        };
        let admin_key_path = match cp
            .bootstrap_admin_key()
            .await
            .context("creating the admin key")?
        {
            Some(key) => {
                let path = config.data_dir.join(ADMIN_KEY_FILE);
                m87_transport::private_file::write_private_file(
                    &path,
                    format!("{key}\n").as_bytes(),
                )
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
        let jwt = match &config.oidc {
            Some(oidc) => {
                let validator = crate::auth::JwtValidator::new(oidc.clone())
                    .await
                    .with_context(|| format!("setting up sign-in with {}", oidc.issuer))?;
                tracing::info!(issuer = %oidc.issuer, audience = %oidc.audience, "OIDC sign-in enabled");
                Some(Arc::new(validator))
            }
            None => None,
        };
        if let Some(path) = &config.audit_sinks {
            let sinks = crate::audit::export::load_sinks(path)?;
            let lease = config.fleet.as_ref().map(|f| {
                let owner = format!("{}-{}", std::process::id(), m87_events::EventId::new());
                Arc::new(crate::audit::export::MongoLease::new(&f.database, owner))
                    as Arc<dyn m87_audit_export::Lease>
            });
            cp.start_export(&sinks, lease, stop_rx.clone())?;
        }
        spawn_auth_refusal_recorder(cp.clone(), stop_rx.clone());
        spawn_expiry_sweeper(cp.clone(), stop_rx);
        Ok(Self {
            cp,
            tls,
            admin_key_path,
            jwt,
            relay_secret: config.fleet.as_ref().map(|f| f.relay_secret.clone()),
            http_limits: config.http_limits.clone(),
            releases: crate::api::releases::ReleasesConfig::from_env(&config.data_dir),
            stop,
        })
    }

    /// Where releases are served from; for a self-signed certificate with its pins, which
    /// `install.sh` carries.
    fn release_config(&self) -> crate::api::releases::ReleasesConfig {
        let mut config = self.releases.clone();
        if self.tls.self_signed {
            config.tls_pin = self.tls.tls_pin.clone();
            config.fingerprint = Some(format!("SHA256:{}", self.tls.fingerprint));
        }
        config
    }

    /// A receiver that turns true when the platform stops.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Serves the REST API on `listener` until `shutdown`, then stops the background tasks.
    pub async fn serve_api(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let api_addr = listener.local_addr().context("reading the API address")?;
        tracing::info!(
            address = %api_addr,
            certificate = %self.tls.cert_path.display(),
            sha256 = %self.tls.fingerprint,
            self_signed = self.tls.self_signed,
            "REST API listening over HTTPS"
        );
        let mut state = AppState::new(self.cp.clone());
        if let Some(jwt) = &self.jwt {
            state = state.with_jwt(Arc::clone(jwt));
        }
        if let Some(secret) = &self.relay_secret {
            state = state.with_relay_secret(secret);
        }
        state = state.with_releases(self.release_config());
        // The internal relay API is part of this app: one listener, one set of limits.
        tls::serve_https(
            listener,
            self.tls.config.clone(),
            app(state),
            self.http_limits.clone(),
            shutdown,
        )
        .await;
        let _ = self.stop.send(true);
        tracing::info!("server stopped");
        Ok(())
    }
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

/// Records refused authentication every 10 s (or each window, when shorter): one event per
/// address for each finished window.
fn spawn_auth_refusal_recorder(cp: ControlPlane, mut shutdown: watch::Receiver<bool>) {
    let every = cp
        .auth_refusal_window()
        .min(std::time::Duration::from_secs(10));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = cp.record_auth_refusals().await {
                tracing::warn!(error = %e, "cannot record refused authentication");
            }
        }
    });
}

/// The in-memory twin of [`open_single_machine`], for fast tests: memory store and read
/// models, no bus; every command brings the projections up to date before it answers.
pub async fn open_in_memory(settings: Settings) -> anyhow::Result<ControlPlane> {
    let store: Arc<dyn EventStore> = Arc::new(crate::store::memory::MemoryStore::new());
    let read: Arc<dyn ReadStore> = Arc::new(crate::store::memory::MemoryReadStore::new());
    let projector =
        Projector::new(Arc::clone(&store), Arc::clone(&read), all_projections()).await?;
    Ok(ControlPlane::new(
        store,
        read,
        projector,
        None,
        settings,
        SessionsConfig::ephemeral()?,
        Arc::new(crate::store::memory::MemoryAuditStore::default()),
    ))
}
