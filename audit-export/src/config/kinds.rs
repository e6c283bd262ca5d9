//! The settings of each sink kind, read from its `[[sink]]` table.

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use toml::Value;

use super::parse::{Fields, local_hostname};
use super::*;

impl Fields<'_> {
    pub(super) fn syslog(&self) -> Result<SyslogConfig, ConfigError> {
        let transport = match self.str("transport")?.as_deref() {
            None | Some("tcp") => SyslogTransport::Tcp,
            Some("udp") => SyslogTransport::Udp,
            Some("tls") => SyslogTransport::Tls,
            Some(other) => {
                return Err(self.err("transport", format!("{other:?}: use udp, tcp or tls")));
            }
        };
        let address = self.need_str("address", "host:port of the syslog receiver")?;
        let Some((host, port)) = address.rsplit_once(':') else {
            return Err(self.err("address", format!("{address:?} is not host:port")));
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(self.err("address", format!("{address:?} is not host:port")));
        }
        let tls = if transport == SyslogTransport::Tls {
            Some(self.tls(&host)?)
        } else {
            for key in [
                "ca_file",
                "client_cert_file",
                "client_key_file",
                "server_name",
            ] {
                if self.map.contains_key(key) {
                    return Err(self.err(key, "applies only with transport = \"tls\"".to_owned()));
                }
            }
            None
        };
        Ok(SyslogConfig {
            transport,
            address,
            format: self.format(
                &[Format::Cef, Format::Json, Format::Ocsf, Format::Ecs],
                Format::Cef,
            )?,
            facility: self.int("facility", 0, 23)?.map_or(10, |f| f as u8),
            hostname: match self.str("hostname")? {
                Some(h)
                    if !h.is_empty()
                        && h.len() <= 255
                        && h.bytes().all(|b| (33..=126).contains(&b)) =>
                {
                    h
                }
                Some(h) => {
                    return Err(self.err(
                        "hostname",
                        format!("{h:?}: use 1 to 255 printable ASCII characters without spaces"),
                    ));
                }
                None => local_hostname(),
            },
            tls,
        })
    }

    fn tls(&self, host: &str) -> Result<TlsSettings, ConfigError> {
        let ca_certs = self.certs("ca_file")?.ok_or_else(|| {
            self.missing(
                "ca_file",
                "the CA certificate the syslog receiver's certificate is checked against",
            )
        })?;
        let client_identity = match (self.str("client_cert_file")?, self.str("client_key_file")?) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.missing("client_key_file", "the key of client_cert_file"));
            }
            (None, Some(_)) => {
                return Err(self.missing("client_cert_file", "the certificate of client_key_file"));
            }
            (Some(_), Some(k)) => {
                let certs = self.certs("client_cert_file")?.unwrap_or_default();
                let pem = self.read_file("client_key_file", &k)?;
                let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    self.err(
                        "client_key_file",
                        format!("{k} holds no PEM private key: {e}"),
                    )
                })?;
                Some(ClientIdentity {
                    certs,
                    key: std::sync::Arc::new(key),
                })
            }
        };
        let server_name = self.str("server_name")?.unwrap_or_else(|| host.to_owned());
        if rustls::pki_types::ServerName::try_from(server_name.clone()).is_err() {
            return Err(self.err(
                "server_name",
                format!("{server_name:?} is not a DNS name or IP address"),
            ));
        }
        Ok(TlsSettings {
            ca_certs,
            server_name,
            client_identity,
        })
    }

    pub(super) fn elastic(&self) -> Result<ElasticConfig, ConfigError> {
        let target = self.target()?;
        let index = self.need_str("index", "the index or data stream to write to")?;
        if index.is_empty()
            || index.starts_with(['-', '_', '+'])
            || index
                .chars()
                .any(|c| c.is_ascii_uppercase() || " \"*\\<|,>/?#:".contains(c))
        {
            return Err(self.err(
                "index",
                format!(
                    "{index:?} is not a valid index name (lower case, no spaces or \\/*?\"<>|,#:)"
                ),
            ));
        }
        let username = self.str("username")?;
        let password = self.secret("password", "the password")?;
        let api_key = self.secret("api_key", "the API key")?;
        let auth = match (username, password, api_key) {
            (None, None, None) => ElasticAuth::None,
            (None, None, Some(k)) => ElasticAuth::ApiKey(k),
            (Some(username), Some(password), None) => ElasticAuth::Basic { username, password },
            (Some(_), None, None) => {
                return Err(self.err_at(
                    self.table_line,
                    "password",
                    "missing secret: `username` needs `password` or `password_file`".to_owned(),
                ));
            }
            (None, Some(_), None) => return Err(self.missing("username", "the user of `password`")),
            (_, _, Some(_)) => {
                return Err(self.err(
                    "api_key",
                    "give `api_key` or `username` and `password`, not both".to_owned(),
                ));
            }
        };
        if self.map.contains_key("format") {
            self.format(&[Format::Ecs], Format::Ecs)?;
        }
        Ok(ElasticConfig {
            target,
            index,
            auth,
        })
    }

    pub(super) fn otlp(&self) -> Result<OtlpConfig, ConfigError> {
        let target = self.target()?;
        if !target.url.path().ends_with("/v1/logs") {
            return Err(self.err(
                "url",
                format!(
                    "{} should be the logs endpoint, ending in /v1/logs",
                    target.url
                ),
            ));
        }
        let mut headers = Vec::new();
        if let Some(v) = self.map.get("headers") {
            let Value::Table(t) = v.get_ref() else {
                return Err(self.err(
                    "headers",
                    "must be a table of header names to values".to_owned(),
                ));
            };
            for (name, value) in t {
                let Value::String(value) = value else {
                    return Err(self.err(
                        "headers",
                        format!("the value of header {name:?} must be a string"),
                    ));
                };
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(value).is_err()
                {
                    return Err(self.err(
                        "headers",
                        format!("header {name:?} is not a valid HTTP header name and value"),
                    ));
                }
                headers.push((name.clone(), Secret::new(value.clone())));
            }
        }
        Ok(OtlpConfig {
            target,
            headers,
            format: self.format(
                &[Format::Ocsf, Format::Ecs, Format::Cef, Format::Json],
                Format::Ocsf,
            )?,
        })
    }

    pub(super) fn file(&self) -> Result<FileConfig, ConfigError> {
        let path = self.need_str("path", "the file to append to")?;
        Ok(FileConfig {
            path: self.file_path(&path),
            max_bytes: self
                .int("max_bytes", 4096, i64::MAX)?
                .map_or(100 * 1024 * 1024, |n| n as u64),
            keep: self.int("keep", 0, 1000)?.map_or(5, |n| n as u32),
            format: self.format(
                &[Format::Ocsf, Format::Ecs, Format::Cef, Format::Json],
                Format::Ocsf,
            )?,
        })
    }
}
