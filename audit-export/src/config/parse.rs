//! Parsing and checking the sinks file, with the line and key of every mistake.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use toml::{Spanned, Value};

use super::*;

/// Keys every sink may have.
const COMMON: &[&str] = &["name", "kind", "format", "batch_size", "timeout"];

/// Keys each kind may have besides the common ones.
const KIND_KEYS: &[(&str, &[&str])] = &[
    (
        "syslog",
        &[
            "transport",
            "address",
            "facility",
            "hostname",
            "ca_file",
            "client_cert_file",
            "client_key_file",
            "server_name",
        ],
    ),
    ("splunk_hec", &["url", "token", "token_file", "ca_file"]),
    (
        "elasticsearch",
        &[
            "url",
            "index",
            "username",
            "password",
            "password_file",
            "api_key",
            "api_key_file",
            "ca_file",
        ],
    ),
    ("webhook", &["url", "hmac_key", "hmac_key_file", "ca_file"]),
    ("otlp", &["url", "headers", "ca_file"]),
    ("file", &["path", "max_bytes", "keep"]),
];

/// Every key a sink table may have, of any kind.
pub fn all_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = COMMON.to_vec();
    for (_, own) in KIND_KEYS {
        for k in own.iter() {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    sink: Vec<Spanned<BTreeMap<String, Spanned<Value>>>>,
}

/// Parses and checks the whole file.
pub(super) fn parse(text: &str, path: &Path) -> Result<SinksConfig, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
    let mut sinks = Vec::new();
    let mut names = BTreeSet::new();
    for table in raw.sink {
        let line = line_of(text, table.span().start);
        let fields = Fields {
            text,
            path,
            table_line: line,
            map: table.into_inner(),
        };
        let sink = fields.sink()?;
        if !names.insert(sink.name.clone()) {
            return Err(fields.err_at(
                fields.line_of_key("name"),
                "name",
                format!(
                    "a sink named {:?} is already defined; names must be unique",
                    sink.name
                ),
            ));
        }
        sinks.push(sink);
    }
    Ok(SinksConfig { sinks })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |head| head.bytes().filter(|b| *b == b'\n').count() + 1)
}

/// Turns a TOML error into one that names the line and the key.
fn toml_error(e: &toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let line = e.span().map_or(1, |s| line_of(text, s.start));
    let message = e.message().trim().to_owned();
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
        .or_else(|| key_on_line(text, line))
        .unwrap_or_else(|| "-".to_owned());
    let message = if message.starts_with("unknown field") {
        format!("unknown key (the file holds only [[sink]] tables): {message}")
    } else {
        message
    };
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key,
        message,
    }
}

/// The key assigned on a line (`key = …`), if the line is an assignment.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = l.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
}

/// One `[[sink]]` table being read.
pub(super) struct Fields<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    pub(super) table_line: usize,
    pub(super) map: BTreeMap<String, Spanned<Value>>,
}

impl Fields<'_> {
    pub(super) fn err_at(&self, line: usize, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            key: key.to_owned(),
            message,
        }
    }

    pub(super) fn line_of_key(&self, key: &str) -> usize {
        self.map
            .get(key)
            .map_or(self.table_line, |v| line_of(self.text, v.span().start))
    }

    pub(super) fn err(&self, key: &str, message: String) -> ConfigError {
        self.err_at(self.line_of_key(key), key, message)
    }

    pub(super) fn missing(&self, key: &str, what: &str) -> ConfigError {
        self.err_at(
            self.table_line,
            key,
            format!("this sink needs `{key}` ({what})"),
        )
    }

    pub(super) fn str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.map.get(key).map(|v| v.get_ref()) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                Err(self.err(key, format!("must be a string, not a {}", other.type_str())))
            }
        }
    }

    pub(super) fn need_str(&self, key: &str, what: &str) -> Result<String, ConfigError> {
        self.str(key)?.ok_or_else(|| self.missing(key, what))
    }

    pub(super) fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        match self.map.get(key).map(|v| v.get_ref()) {
            None => Ok(None),
            Some(Value::Integer(n)) if (min..=max).contains(n) => Ok(Some(*n)),
            Some(Value::Integer(n)) => {
                Err(self.err(key, format!("{n} is out of range: use {min} to {max}")))
            }
            Some(other) => Err(self.err(
                key,
                format!("must be an integer, not a {}", other.type_str()),
            )),
        }
    }

    /// A path, relative ones taken from the sinks file's directory.
    pub(super) fn file_path(&self, raw: &str) -> PathBuf {
        let p = PathBuf::from(raw);
        if p.is_absolute() {
            p
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    pub(super) fn read_file(&self, key: &str, raw: &str) -> Result<Vec<u8>, ConfigError> {
        let p = self.file_path(raw);
        std::fs::read(&p).map_err(|e| self.err(key, format!("cannot read {}: {e}", p.display())))
    }

    /// A secret given inline (`key`) or in a file (`key_file`).
    pub(super) fn secret(&self, key: &str, what: &str) -> Result<Option<Secret>, ConfigError> {
        let file_key = format!("{key}_file");
        match (self.str(key)?, self.str(&file_key)?) {
            (Some(_), Some(_)) => {
                Err(self.err(&file_key, format!("give `{key}` or `{file_key}`, not both")))
            }
            (Some(v), None) if v.trim().is_empty() => {
                Err(self.err(key, format!("the {what} is empty")))
            }
            (Some(v), None) => Ok(Some(Secret::new(v))),
            (None, Some(f)) => {
                let bytes = self.read_file(&file_key, &f)?;
                let v = String::from_utf8(bytes)
                    .map_err(|_| self.err(&file_key, format!("{f} is not UTF-8 text")))?;
                let v = v.trim();
                if v.is_empty() {
                    return Err(
                        self.err(&file_key, format!("{f} is empty; it must hold the {what}"))
                    );
                }
                Ok(Some(Secret::new(v)))
            }
            (None, None) => Ok(None),
        }
    }

    pub(super) fn need_secret(&self, key: &str, what: &str) -> Result<Secret, ConfigError> {
        self.secret(key, what)?.ok_or_else(|| {
            self.err_at(
                self.table_line,
                key,
                format!("missing secret: this sink needs `{key}` or `{key}_file` ({what})"),
            )
        })
    }

    pub(super) fn certs(
        &self,
        key: &str,
    ) -> Result<Option<Vec<CertificateDer<'static>>>, ConfigError> {
        let Some(f) = self.str(key)? else {
            return Ok(None);
        };
        let pem = self.read_file(key, &f)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(key, format!("{f} is not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(self.err(key, format!("{f} holds no PEM certificate")));
        }
        Ok(Some(certs))
    }

    fn sink(&self) -> Result<SinkConfig, ConfigError> {
        let name = self.need_str("name", "a unique name for the sink")?;
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(self.err("name", "must be 1 to 64 printable characters".to_owned()));
        }
        let kind = self.need_str(
            "kind",
            "syslog, splunk_hec, elasticsearch, webhook, otlp or file",
        )?;
        let Some((_, own)) = KIND_KEYS.iter().find(|(k, _)| *k == kind) else {
            return Err(self.err(
                "kind",
                format!("unknown kind {kind:?}: use syslog, splunk_hec, elasticsearch, webhook, otlp or file"),
            ));
        };
        self.check_keys(&kind, own)?;
        let batch_size = self
            .int("batch_size", 1, MAX_BATCH_SIZE as i64)?
            .map_or(DEFAULT_BATCH_SIZE, |n| n as usize);
        let timeout = match self.str("timeout")? {
            None => DEFAULT_TIMEOUT,
            Some(t) => parse_duration(&t).ok_or_else(|| {
                self.err("timeout", format!("{t:?} is not a duration from 100ms to 10m (e.g. \"10s\", \"500ms\", \"2m\")"))
            })?,
        };
        let kind = match kind.as_str() {
            "syslog" => SinkKind::Syslog(self.syslog()?),
            "splunk_hec" => SinkKind::SplunkHec(HecConfig {
                target: self.target()?,
                token: self.need_secret("token", "the HEC token")?,
                format: self.format(
                    &[Format::Ocsf, Format::Ecs, Format::Cef, Format::Json],
                    Format::Ocsf,
                )?,
            }),
            "elasticsearch" => SinkKind::Elasticsearch(self.elastic()?),
            "webhook" => SinkKind::Webhook(WebhookConfig {
                target: self.target()?,
                hmac_key: self
                    .need_secret("hmac_key", "the HMAC-SHA256 key that signs each body")?,
                format: self.format(&[Format::Ocsf, Format::Ecs, Format::Json], Format::Ocsf)?,
            }),
            "otlp" => SinkKind::Otlp(self.otlp()?),
            _ => SinkKind::File(self.file()?),
        };
        Ok(SinkConfig {
            name,
            batch_size,
            timeout,
            kind,
        })
    }

    fn check_keys(&self, kind: &str, own: &[&str]) -> Result<(), ConfigError> {
        for key in self.map.keys() {
            if COMMON.contains(&key.as_str()) || own.contains(&key.as_str()) {
                continue;
            }
            let users: Vec<&str> = KIND_KEYS
                .iter()
                .filter(|(_, keys)| keys.contains(&key.as_str()))
                .map(|(k, _)| *k)
                .collect();
            let message = if users.is_empty() {
                format!(
                    "unknown key for a {kind} sink; its keys are: {}",
                    [COMMON, own].concat().join(", ")
                )
            } else {
                format!(
                    "unknown key for a {kind} sink (it belongs to: {})",
                    users.join(", ")
                )
            };
            return Err(self.err(key, message));
        }
        Ok(())
    }

    pub(super) fn format(
        &self,
        allowed: &[Format],
        default: Format,
    ) -> Result<Format, ConfigError> {
        let Some(f) = self.str("format")? else {
            return Ok(default);
        };
        allowed
            .iter()
            .copied()
            .find(|a| a.name() == f)
            .ok_or_else(|| {
                let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
                self.err(
                    "format",
                    format!(
                        "{f:?} is not a format of this sink: use {}",
                        names.join(", ")
                    ),
                )
            })
    }

    pub(super) fn url(&self, suffix_hint: &str) -> Result<reqwest::Url, ConfigError> {
        let raw = self.need_str("url", suffix_hint)?;
        let url = reqwest::Url::parse(&raw)
            .map_err(|e| self.err("url", format!("bad URL {raw:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.err(
                "url",
                format!("bad URL {raw:?}: use http:// or https:// and a host"),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(
                "url",
                "bad URL: it holds credentials; give them with the sink's secret keys instead"
                    .to_owned(),
            ));
        }
        Ok(url)
    }

    pub(super) fn target(&self) -> Result<HttpTarget, ConfigError> {
        Ok(HttpTarget {
            url: self.url("the receiver's base URL")?,
            ca_certs: self.certs("ca_file")?,
        })
    }
}

/// `"10s"`, `"500ms"`, `"2m"`, between 100 ms and 10 minutes.
fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (Duration::from_millis(100)..=Duration::from_secs(600))
        .contains(&d)
        .then_some(d)
}

/// This machine's host name, or `-` (RFC 5424's nil value).
pub(super) fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or_else(|| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1ms"), None);
        assert_eq!(parse_duration("1h"), None);
    }
}
