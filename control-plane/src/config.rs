//! The control plane's settings, with the defaults of the single-machine mode, and how a fleet
//! replica reaches NATS.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
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
    /// Registration requests accepted per client address per minute.
    pub registrations_per_minute: u32,
    /// Registration requests accepted per address prefix (IPv4 /24, IPv6 /64) per minute.
    pub registrations_per_prefix_per_minute: u32,
    /// Registration requests accepted per requested owner scope per minute.
    pub registrations_per_scope_per_minute: u32,
    /// Most undecided (pending, unexpired) registration requests per owner scope; a new
    /// request beyond it is refused (429 `too_many_pending`) without being recorded.
    pub max_pending_per_scope: usize,
    /// Proxies whose `X-Forwarded-For` names the client (none: the header is never read).
    pub trusted_proxies: crate::api::client_addr::TrustedProxies,
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
            registrations_per_prefix_per_minute: 120,
            registrations_per_scope_per_minute: 120,
            max_pending_per_scope: 100,
            trusted_proxies: crate::api::client_addr::TrustedProxies::default(),
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
    /// Timeouts and caps of the HTTPS listener.
    pub http_limits: crate::tls::HttpLimits,
    /// The audit sinks file (SIEM export), when export is configured.
    pub audit_sinks: Option<PathBuf>,
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

/// Platform admins as given (`--admin-emails` / `M87_ADMIN_EMAILS`), else from `ADMIN_EMAILS`,
/// else [`default_admin`].
pub fn admin_emails_or_env(given: Vec<Email>) -> anyhow::Result<Vec<Email>> {
    if !given.is_empty() {
        return Ok(given);
    }
    let from_env = std::env::var("ADMIN_EMAILS").unwrap_or_default();
    let parsed: Result<Vec<Email>, _> = from_env
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::parse)
        .collect();
    let parsed = parsed.map_err(|e| anyhow::anyhow!("ADMIN_EMAILS: {e}"))?;
    if parsed.is_empty() {
        Ok(vec![default_admin()])
    } else {
        Ok(parsed)
    }
}

/// The HTTPS listener's limits: the defaults, with the connection caps taken from
/// `M87_MAX_CONNECTIONS` and `M87_MAX_CONNECTIONS_PER_ADDRESS` when set (raise the second to
/// the first behind a load balancer that hides client addresses).
pub fn http_limits_from_env() -> anyhow::Result<crate::tls::HttpLimits> {
    let mut limits = crate::tls::HttpLimits::default();
    for (name, value) in [
        ("M87_MAX_CONNECTIONS", &mut limits.max_connections),
        (
            "M87_MAX_CONNECTIONS_PER_ADDRESS",
            &mut limits.max_connections_per_address,
        ),
    ] {
        if let Ok(given) = std::env::var(name) {
            *value = given
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{name} must be a positive number, not {given:?}"))?;
        }
    }
    Ok(limits)
}

/// Interactive sign-in from `--oauth-issuer`, `--oauth-audience` and `--oauth-client-id`: none
/// without an issuer; an issuer needs an audience.
pub fn oidc_config(
    issuer: Option<String>,
    audience: Option<String>,
    client_id: String,
) -> anyhow::Result<Option<crate::auth::OidcConfig>> {
    match (issuer, audience) {
        (Some(issuer), Some(audience)) => Ok(Some(crate::auth::OidcConfig::new(
            issuer, audience, client_id,
        ))),
        (Some(_), None) => {
            anyhow::bail!("--oauth-issuer needs --oauth-audience (OAUTH_AUDIENCE)")
        }
        _ => Ok(None),
    }
}

/// Shortest relay secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// Checks a relay secret's length.
pub fn check_relay_secret(secret: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        secret.chars().count() >= MIN_SECRET_LEN,
        "the relay secret (--relay-secret, M87_RELAY_SECRET) must be at least {MIN_SECRET_LEN} characters"
    );
    Ok(())
}

/// Server URLs as given (`--nats-url a, b`): trimmed, empty ones dropped.
pub fn server_list(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// How to reach NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsSettings {
    /// Server URLs.
    pub servers: Vec<String>,
    /// A `.creds` file (JWT and NKey).
    pub creds: Option<PathBuf>,
    /// A token.
    pub token: Option<String>,
    /// User and password.
    pub user: Option<(String, String)>,
    /// A PEM file of roots to trust for `tls://` servers.
    pub tls_ca: Option<PathBuf>,
    /// Replicas of the stream and buckets.
    pub replicas: usize,
}

impl NatsSettings {
    /// Connects, retrying the first connection until the servers answer.
    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        anyhow::ensure!(
            !self.servers.is_empty(),
            "no NATS server given (--nats-url or M87_NATS_URL)"
        );
        let mut options = match &self.creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .with_context(|| format!("reading NATS credentials {}", path.display()))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some((user, password)) = &self.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let options = options
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .reconnect_delay_callback(|attempts| {
                let exp = u32::try_from(attempts.min(16)).unwrap_or(16);
                Duration::from_millis(2u64.saturating_pow(exp)).min(Duration::from_secs(2))
            });
        let client = options
            .connect(self.servers.clone())
            .await
            .with_context(|| format!("connecting to NATS at {}", self.servers.join(",")))?;
        Ok(client)
    }

    /// The JetStream settings of the event stream.
    pub fn jetstream(&self) -> crate::bus::nats::JetStreamConfig {
        crate::bus::nats::JetStreamConfig {
            servers: self.servers.clone(),
            replicas: self.replicas.max(1),
            ..crate::bus::nats::JetStreamConfig::default()
        }
    }
}

impl FleetConfig {
    /// Connects to MongoDB (`mongodb_uri`, database `mongodb_database`), then to NATS.
    pub async fn connect(
        mongodb_uri: &str,
        mongodb_database: &str,
        nats: &NatsSettings,
        signing_key: PathBuf,
        relay_secret: String,
    ) -> anyhow::Result<Self> {
        let database = crate::store::mongo::connect_database(mongodb_uri, mongodb_database).await?;
        Ok(Self {
            database,
            nats: nats.connect("m87-control-plane").await?,
            jetstream: nats.jetstream(),
            signing_key,
            relay_secret,
        })
    }
}
