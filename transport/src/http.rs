//! A small client for the m87 REST API, used by the device runtime and the CLI.
//!
//! Only `https://` servers are spoken to (the API key or token travels in every request); plain
//! `http://` is refused, except to a loopback address when `M87_ALLOW_HTTP_LOOPBACK=1` (tests
//! and local debugging only).
//!
//! TLS uses rustls with the ring provider and checks the server's certificate one of three ways
//! ([`ServerTrust`]): against the system's roots; by its SHA-256 fingerprint, pinned (a
//! self-signed server, `m87 login --fingerprint`); or not at all (`M87_TRUST_INVALID_CERT`,
//! emergencies only).

use std::time::Duration;

use m87_events::api::ErrorBody;

use crate::tls::Fingerprint;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error.
    #[error("{message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The error code from the body (`not_found`, `forbidden`, …).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach {url}: {reason}")]
    Network {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
    /// The client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// The URL would send credentials in clear text (or is not a URL at all).
    #[error("{0}")]
    Url(String),
}

impl ApiError {
    /// The HTTP status, for errors the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying later may help (network trouble, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Network { .. } => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Whether `M87_TRUST_INVALID_CERT` asks to accept any certificate.
pub fn trust_invalid_cert_from_env() -> bool {
    std::env::var("M87_TRUST_INVALID_CERT")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Whether `M87_ALLOW_HTTP_LOOPBACK` allows plain `http://` to a loopback address.
pub fn allow_http_loopback_from_env() -> bool {
    std::env::var("M87_ALLOW_HTTP_LOOPBACK").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The pin from `M87_API_FINGERPRINT`, if set; a value that is not a fingerprint is an error.
pub fn api_fingerprint_from_env() -> Result<Option<Fingerprint>, ApiError> {
    match std::env::var("M87_API_FINGERPRINT") {
        Ok(v) if !v.trim().is_empty() => v
            .parse()
            .map(Some)
            .map_err(|e| ApiError::Setup(format!("M87_API_FINGERPRINT: {e}"))),
        _ => Ok(None),
    }
}

/// How the client checks the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTrust {
    /// Against the system's roots (a certificate from a public or the operator's CA).
    Roots,
    /// Exactly the certificate with this fingerprint (a self-signed server).
    Pinned(Fingerprint),
    /// Any certificate (`M87_TRUST_INVALID_CERT`: emergencies only; never relays).
    AnyCertificate,
}

impl ServerTrust {
    /// The pin when there is one, else any certificate when `trust_invalid_cert`, else the
    /// system's roots.
    pub fn choose(pin: Option<Fingerprint>, trust_invalid_cert: bool) -> Self {
        match (pin, trust_invalid_cert) {
            (Some(pin), _) => ServerTrust::Pinned(pin),
            (None, true) => ServerTrust::AnyCertificate,
            (None, false) => ServerTrust::Roots,
        }
    }
}

/// Refuses a base URL that is not `https://`: plain `http://` only to a loopback host (an IP
/// address in 127.0.0.0/8 or ::1, or `localhost`) and only when `allow_http_loopback`.
pub fn check_api_url(base: &str, allow_http_loopback: bool) -> Result<(), ApiError> {
    let url = reqwest::Url::parse(base)
        .map_err(|e| ApiError::Url(format!("api url {base:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http_loopback && is_loopback(&url) => Ok(()),
        "http" => Err(ApiError::Url(format!(
            "refusing api url {base:?}: credentials would travel in clear text; use https:// \
             (plain http:// is allowed only to a loopback address with M87_ALLOW_HTTP_LOOPBACK=1, \
             for tests)"
        ))),
        _ => Err(ApiError::Url(format!(
            "api url {base:?} must start with https://"
        ))),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// The API URL from `M87_API_URL`, if set.
pub fn api_url_from_env() -> Option<String> {
    std::env::var("M87_API_URL")
        .ok()
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
}

/// A client for one server, with or without an API key.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

fn describe(err: &reqwest::Error) -> String {
    let mut parts = vec![];
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    let joined = parts.join(": ");
    if joined.contains("pinned fingerprint") {
        format!(
            "{joined} (if the server's certificate was replaced, pin the new one with --fingerprint)"
        )
    } else if joined.contains("certificate") || joined.contains("UnknownIssuer") {
        format!(
            "{joined} (the server's TLS certificate is not trusted; for a self-signed server pin it: \
             m87 login --fingerprint SHA256:…, as the server printed it and wrote it to \
             <data-dir>/tls/fingerprint)"
        )
    } else {
        joined
    }
}

impl ApiClient {
    /// A client for `base_url` (for example `https://127.0.0.1:8085`) that checks the server's
    /// certificate against the system's roots, or not at all with `trust_invalid_cert`.
    pub fn new(
        base_url: &str,
        key: Option<String>,
        trust_invalid_cert: bool,
    ) -> Result<Self, ApiError> {
        Self::with_trust(base_url, key, ServerTrust::choose(None, trust_invalid_cert))
    }

    /// A client for `base_url` that checks the server's certificate as `trust` says. A URL
    /// that is not `https://` is refused (see [`check_api_url`]; `M87_ALLOW_HTTP_LOOPBACK`).
    pub fn with_trust(
        base_url: &str,
        key: Option<String>,
        trust: ServerTrust,
    ) -> Result<Self, ApiError> {
        crate::tls::install_ring_provider();
        let base = base_url.trim().trim_end_matches('/').to_owned();
        check_api_url(&base, allow_http_loopback_from_env())?;
        let builder = match trust {
            ServerTrust::Roots => reqwest::Client::builder(),
            ServerTrust::AnyCertificate => {
                reqwest::Client::builder().tls_danger_accept_invalid_certs(true)
            }
            ServerTrust::Pinned(pin) => {
                let mut tls = crate::quic::pinned_tls(Some(&pin.hex()))
                    .map_err(|e| ApiError::Setup(e.to_string()))?;
                tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                reqwest::Client::builder().tls_backend_preconfigured(tls)
            }
        };
        let http = builder
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("m87/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Setup(describe(&e)))?;
        Ok(Self { http, base, key })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Option<T>, ApiError> {
        let bytes = self.send_raw(request, url).await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// Sends `request` and returns the body of a successful answer.
    async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<bytes::Bytes, ApiError> {
        let request = match &self.key {
            Some(k) => request.bearer_auth(k),
            None => request,
        };
        let response = request.send().await.map_err(|e| ApiError::Network {
            url: url.to_owned(),
            reason: describe(&e),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ApiError::Network {
            url: url.to_owned(),
            reason: describe(&e),
        })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ApiError::Status {
                    status: status.as_u16(),
                    code: body.error.code,
                    message: body.error.message,
                },
                Err(_) => ApiError::Status {
                    status: status.as_u16(),
                    code: "http_error".into(),
                    message: format!("server answered {status}"),
                },
            });
        }
        Ok(bytes)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let url = self.url(path);
        self.send(self.http.get(&url), &url)
            .await?
            .ok_or_else(|| ApiError::Decode("empty answer".into()))
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let url = self.url(path);
        self.send(self.http.post(&url).json(body), &url)
            .await?
            .ok_or_else(|| ApiError::Decode("empty answer".into()))
    }

    /// `POST path` with a JSON body, expecting no content back.
    pub async fn post_no_content<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(), ApiError> {
        let url = self.url(path);
        self.send::<serde_json::Value>(self.http.post(&url).json(body), &url)
            .await
            .map(|_| ())
    }

    /// `PUT path` with a JSON body.
    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let url = self.url(path);
        self.send(self.http.put(&url).json(body), &url)
            .await?
            .ok_or_else(|| ApiError::Decode("empty answer".into()))
    }

    /// `PUT path` with a JSON body, expecting no content back.
    pub async fn put_no_content<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(), ApiError> {
        let url = self.url(path);
        self.send::<serde_json::Value>(self.http.put(&url).json(body), &url)
            .await
            .map(|_| ())
    }

    /// `PUT path` with a raw body of `content_type`, expecting no content back.
    pub async fn put_bytes(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(), ApiError> {
        let url = self.url(path);
        let request = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send_raw(request, &url).await.map(|_| ())
    }

    /// `GET path` from byte `offset` on (`Range: bytes=offset-` when `offset` > 0), for large
    /// downloads: the response with its body still to read, after checking its status. The
    /// answer is `206 Partial Content` when the server resumed, `200 OK` when it sent the whole
    /// body again. Allowed an hour in all (not the usual minute); read it chunk by chunk.
    pub async fn get_from(&self, path: &str, offset: u64) -> Result<reqwest::Response, ApiError> {
        let url = self.url(path);
        let mut request = self.http.get(&url).timeout(Duration::from_secs(3600));
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let request = match &self.key {
            Some(k) => request.bearer_auth(k),
            None => request,
        };
        let response = request.send().await.map_err(|e| ApiError::Network {
            url: url.clone(),
            reason: describe(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        Err(ApiError::Status {
            status: status.as_u16(),
            code: "http_error".into(),
            message: format!("{url}: server answered {status}"),
        })
    }

    /// `GET path`, the body as it came.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ApiError> {
        let url = self.url(path);
        Ok(self.send_raw(self.http.get(&url), &url).await?.to_vec())
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        let url = self.url(path);
        self.send::<serde_json::Value>(self.http.delete(&url), &url)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_unless_loopback_and_allowed() {
        for url in [
            "http://m87.example",
            "http://10.0.0.1:8085",
            "http://[::2]:1",
        ] {
            for allow in [false, true] {
                assert!(
                    matches!(check_api_url(url, allow), Err(ApiError::Url(_))),
                    "{url} allow={allow}"
                );
            }
        }
        for url in [
            "http://127.0.0.1:8085",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            let err = check_api_url(url, false).unwrap_err().to_string();
            assert!(
                err.contains("clear text") && err.contains("https://"),
                "{err}"
            );
            assert!(check_api_url(url, true).is_ok(), "{url}");
        }
        assert!(check_api_url("https://m87.example", false).is_ok());
        assert!(matches!(
            check_api_url("ftp://m87.example", true),
            Err(ApiError::Url(_))
        ));
        assert!(matches!(
            check_api_url("no url", true),
            Err(ApiError::Url(_))
        ));
    }

    #[test]
    fn the_client_refuses_plain_http() {
        let err = ApiClient::with_trust("http://m87.example:8085/", None, ServerTrust::Roots)
            .unwrap_err();
        assert!(matches!(err, ApiError::Url(_)), "{err}");
        assert!(err.to_string().contains("clear text"), "{err}");
        let pin = Fingerprint::of(b"cert");
        assert!(
            ApiClient::with_trust("https://m87.example", None, ServerTrust::Pinned(pin)).is_ok()
        );
    }

    #[test]
    fn a_pin_wins_over_trusting_any_certificate() {
        let pin = Fingerprint::of(b"cert");
        assert_eq!(
            ServerTrust::choose(Some(pin), true),
            ServerTrust::Pinned(pin)
        );
        assert_eq!(ServerTrust::choose(None, true), ServerTrust::AnyCertificate);
        assert_eq!(ServerTrust::choose(None, false), ServerTrust::Roots);
    }
}
