//! The sinks file: which SIEMs receive the audit trail, and how.
//!
//! One TOML file (`--audit-sinks FILE` / `M87_AUDIT_SINKS`) with one `[[sink]]` table per
//! sink; `ops/config/audit-sinks.example.toml` documents every key. The file is checked in
//! full when it is loaded, so a server stops at start with the line and the key of a mistake
//! (an unknown key, a bad URL or address, a missing secret, a bad value), never at the first
//! export. Secrets are wrapped in [`Secret`], which never shows its value in `Debug`.

mod kinds;
mod parse;
mod secret;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use parse::all_keys;
pub use secret::Secret;

/// Batch size when the file does not set one.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Largest batch size accepted.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Time limit of one delivery when the file does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every sink of the file, in the file's order.
#[derive(Debug, Clone)]
pub struct SinksConfig {
    /// The sinks; names are unique.
    pub sinks: Vec<SinkConfig>,
}

impl SinksConfig {
    /// Reads and checks a sinks file; relative secret and certificate paths are taken from the
    /// file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_at(&text, path)
    }

    /// Checks the text of a sinks file that was read from `path` (named in errors, and the
    /// base of relative paths).
    pub fn from_str_at(text: &str, path: &Path) -> Result<Self, ConfigError> {
        parse::parse(text, path)
    }
}

/// One sink: its name, the shared settings, and what kind it is.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// A unique name; it keys the sink's cursor, so renaming a sink starts it from the beginning.
    pub name: String,
    /// Most records per delivery.
    pub batch_size: usize,
    /// Time limit of one delivery (connect, send and acknowledgement).
    pub timeout: Duration,
    /// The kind and its own settings.
    pub kind: SinkKind,
}

/// The kinds of sink and their settings.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// Syslog, RFC 5424, over UDP, TCP (RFC 6587 octet counting) or TLS (RFC 5425).
    Syslog(SyslogConfig),
    /// Splunk HTTP Event Collector.
    SplunkHec(HecConfig),
    /// Elasticsearch or OpenSearch `_bulk`, ECS documents.
    Elasticsearch(ElasticConfig),
    /// A generic webhook: JSON lines signed with HMAC-SHA256.
    Webhook(WebhookConfig),
    /// OTLP logs over HTTP/protobuf.
    Otlp(OtlpConfig),
    /// A local JSON-lines file, rotated by size.
    File(FileConfig),
}

impl SinkKind {
    /// The kind's name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Syslog(_) => "syslog",
            SinkKind::SplunkHec(_) => "splunk_hec",
            SinkKind::Elasticsearch(_) => "elasticsearch",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Otlp(_) => "otlp",
            SinkKind::File(_) => "file",
        }
    }
}

/// The record formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCSF 1.3 JSON.
    Ocsf,
    /// Elastic Common Schema JSON.
    Ecs,
    /// ArcSight Common Event Format (one text line).
    Cef,
    /// The audit entry itself as JSON (envelope, hash, previous hash).
    Json,
}

impl Format {
    /// The format's name as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            Format::Ocsf => "ocsf",
            Format::Ecs => "ecs",
            Format::Cef => "cef",
            Format::Json => "json",
        }
    }
}

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One datagram per message (RFC 5426); no acknowledgement at all.
    Udp,
    /// TCP with octet-counting framing (RFC 6587).
    Tcp,
    /// TLS with octet-counting framing (RFC 5425).
    Tls,
}

/// Settings of a syslog sink.
#[derive(Debug, Clone)]
pub struct SyslogConfig {
    /// UDP, TCP or TLS.
    pub transport: SyslogTransport,
    /// `host:port` of the receiver.
    pub address: String,
    /// The MSG part: CEF (default), or JSON (`json`, `ocsf`, `ecs`).
    pub format: Format,
    /// Syslog facility number (default 10, authpriv).
    pub facility: u8,
    /// The HOSTNAME field (default: this machine's host name).
    pub hostname: String,
    /// TLS settings (only for `transport = "tls"`).
    pub tls: Option<TlsSettings>,
}

/// What a TLS client trusts and presents.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The CA certificates the receiver's certificate must chain to.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The name checked in the receiver's certificate.
    pub server_name: String,
    /// A client certificate chain and key, for receivers that ask for one.
    pub client_identity: Option<ClientIdentity>,
}

/// A client certificate chain and its private key.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key (never printed).
    pub key: std::sync::Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certs", &self.certs.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The target of an HTTP sink.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// The URL (http or https, no user info).
    pub url: reqwest::Url,
    /// CA certificates for a receiver with a private CA; `None`: the public web roots.
    pub ca_certs: Option<Vec<CertificateDer<'static>>>,
}

/// Settings of a Splunk HEC sink.
#[derive(Debug, Clone)]
pub struct HecConfig {
    /// The HEC base URL (`/services/collector/event` is appended).
    pub target: HttpTarget,
    /// The HEC token.
    pub token: Secret,
    /// The `event` of each envelope: OCSF (default), ECS, CEF (a string) or the entry.
    pub format: Format,
}

/// How an Elasticsearch sink authenticates.
#[derive(Debug, Clone)]
pub enum ElasticAuth {
    /// No `Authorization` header.
    None,
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// `Authorization: ApiKey <key>` (the base64 form Elasticsearch hands out).
    ApiKey(Secret),
}

/// Settings of an Elasticsearch/OpenSearch sink.
#[derive(Debug, Clone)]
pub struct ElasticConfig {
    /// The cluster's base URL (`/_bulk` is appended).
    pub target: HttpTarget,
    /// The index (or data stream) written to.
    pub index: String,
    /// How it authenticates.
    pub auth: ElasticAuth,
}

/// Settings of a webhook sink.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where the JSON lines are posted.
    pub target: HttpTarget,
    /// The HMAC-SHA256 key of the `X-M87-Signature` header.
    pub hmac_key: Secret,
    /// OCSF (default), ECS or the entry.
    pub format: Format,
}

/// Settings of an OTLP logs sink.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The logs endpoint, ending in `/v1/logs`.
    pub target: HttpTarget,
    /// Extra headers (often an API key); their values are secrets.
    pub headers: Vec<(String, Secret)>,
    /// The log record's body: OCSF (default), ECS, CEF or the entry.
    pub format: Format,
}

/// Settings of a file sink.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The file appended to.
    pub path: PathBuf,
    /// Size after which the file is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` … `path.<keep>`).
    pub keep: u32,
    /// OCSF (default), ECS, CEF or the entry, one record per line.
    pub format: Format,
}

/// Why a sinks file was refused. The message names the file, the line and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the audit sinks file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file has a mistake at a known place.
    #[error("{}, line {line}, key `{key}`: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The key concerned (or the table, for a missing key: the key that is missing).
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}
