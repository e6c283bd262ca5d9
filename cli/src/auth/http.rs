//! The `openidconnect` crate's HTTP requests, sent with the workspace's reqwest 0.13.
//!
//! The crate's own `reqwest` feature would bring reqwest 0.12 (a second HTTP stack, and a second
//! TLS provider by default); this adapter keeps one: rustls with ring.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// An HTTP exchange with the provider that got no answer (or an unreadable one).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// The HTTP client for the OpenID Connect provider.
#[derive(Debug, Clone)]
pub struct OidcHttp {
    client: reqwest::Client,
}

/// The error and its causes on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(err);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

impl OidcHttp {
    /// A client; `trust_invalid_cert` (`M87_TRUST_INVALID_CERT`, development only) accepts any
    /// certificate, as for the m87 server.
    pub fn new(trust_invalid_cert: bool) -> anyhow::Result<Self> {
        // m87 uses ring everywhere; whoever installs it first wins, the others are no-ops.
        m87_transport::tls::install_ring_provider();
        let client = reqwest::Client::builder()
            // The provider's answers must not send the client elsewhere (SSRF); OAuth endpoints
            // answer directly.
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(trust_invalid_cert)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("m87/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the HTTP client: {}", chain(&e)))?;
        Ok(Self { client })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let request = reqwest::Request::try_from(request)
            .map_err(|e| HttpError(format!("invalid request: {}", chain(&e))))?;
        // The URL of an OAuth endpoint carries no secret (they travel in the form body).
        let url = request.url().clone();
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| HttpError(format!("cannot reach {url}: {}", chain(&e))))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| HttpError(format!("reading the answer of {url}: {}", chain(&e))))?;
        let mut out = HttpResponse::new(body.to_vec());
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

impl<'c> AsyncHttpClient<'c> for OidcHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}
