//! The control plane's settings, with the defaults of the single-machine mode.

use std::path::PathBuf;
use std::time::Duration;

use m87_events::Email;

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Emails of the platform admins; the first gets the bootstrap key.
    pub admin_emails: Vec<Email>,
    /// How long a registration request waits for a decision.
    pub registration_ttl: Duration,
    /// How often devices are told to poll for approval.
    pub approval_poll_interval: Duration,
    /// Registration requests accepted per source address per minute.
    pub registrations_per_minute: u32,
    /// How often pending requests past their lifetime are recorded as expired.
    pub expiry_sweep_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            admin_emails: vec![default_admin()],
            registration_ttl: Duration::from_secs(60 * 60),
            approval_poll_interval: Duration::from_secs(10),
            registrations_per_minute: 30,
            expiry_sweep_interval: Duration::from_secs(30),
        }
    }
}

/// `admin@localhost`, the default platform admin.
#[allow(clippy::expect_used)] // a constant that is a valid email
pub fn default_admin() -> Email {
    "admin@localhost"
        .parse()
        .expect("admin@localhost is a valid email")
}

/// Where and how the server listens and keeps its data.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data directory (database, TLS material, admin key).
    pub data_dir: PathBuf,
    /// A PEM certificate chain to serve instead of the self-signed one.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The control plane's settings.
    pub settings: Settings,
    /// Interactive sign-in through an OIDC provider, when configured.
    pub oidc: Option<crate::auth::OidcConfig>,
    /// Fleet mode: MongoDB and NATS instead of SQLite and the in-process bus.
    pub fleet: Option<FleetConfig>,
}

/// The shared backends of a fleet control-plane replica.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The MongoDB database holding the event log and read models.
    pub database: mongodb::Database,
    /// A connected NATS client.
    pub nats: async_nats::Client,
    /// The JetStream event stream's settings.
    pub jetstream: crate::bus::nats::JetStreamConfig,
    /// The session signing key shared by every replica (created when missing).
    pub signing_key: PathBuf,
    /// The relay secret that opens the internal relay API.
    pub relay_secret: String,
}
