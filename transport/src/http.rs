//! A small client for the m87 REST API, used by the device runtime and the CLI.
//!
//! TLS uses rustls with the ring provider and the system's roots; `M87_TRUST_INVALID_CERT=true`
//! accepts any certificate (development only: a self-signed single-machine server).

use std::time::Duration;

use m87_events::api::ErrorBody;
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
    if joined.contains("certificate") || joined.contains("UnknownIssuer") {
        format!(
            "{joined} (the server's TLS certificate is not trusted; for a self-signed development server set M87_TRUST_INVALID_CERT=true)"
        )
    } else {
        joined
    }
}

impl ApiClient {
    /// A client for `base_url` (for example `https://127.0.0.1:8085`).
    pub fn new(
        base_url: &str,
        key: Option<String>,
        trust_invalid_cert: bool,
    ) -> Result<Self, ApiError> {
        crate::tls::install_ring_provider();
        let base = base_url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ApiError::Setup(format!(
                "api url {base:?} must start with https://"
            )));
        }
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(trust_invalid_cert)
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
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ApiError::Decode(e.to_string()))
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

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        let url = self.url(path);
        self.send::<serde_json::Value>(self.http.delete(&url), &url)
            .await
            .map(|_| ())
    }
}
