//! A real OpenID Connect provider for tests: `ops/oidc-provider/provider.mjs` (npm
//! `oidc-provider`) run with Node on a free loopback port, one per [`OidcProvider`], killed when
//! it is dropped.
//!
//! The provider offers the device flow with its own HTML pages; [`OidcProvider::approve_device_code`]
//! drives them over plain HTTP with a cookie jar, as a person with a browser would. Access tokens
//! are RS256 JWTs for the audience, carrying `email` and `email_verified`.
//!
//! Needs Node.js 20+ (`NODE` may name the binary) and `scripts/setup-test-env` run once (it
//! installs `ops/oidc-provider/node_modules`). If either is missing, the test fails and says so;
//! it never skips.
//!
//! Shared by the tests of several crates through `m87_test_support::oidc`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// The public client's id unless the options say otherwise.
pub const DEFAULT_CLIENT_ID: &str = "m87-cli";
/// The API audience (default resource) unless the options say otherwise.
pub const DEFAULT_AUDIENCE: &str = "https://m87.test/api";
/// The scopes the CLI asks for.
pub const SCOPES: &str = "openid offline_access email profile";

const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const READY_PREFIX: &str = "oidc-provider listening on ";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start the provider.
#[derive(Debug, Clone)]
pub struct ProviderOptions {
    /// The public client's id (`CLIENT_ID`).
    pub client_id: String,
    /// The default resource, i.e. the access tokens' audience (`AUDIENCE`).
    pub audience: String,
    /// Access token lifetime (`ACCESS_TOKEN_TTL`, whole seconds).
    pub access_token_ttl: Duration,
    /// More environment for the provider (see the header of `provider.mjs`).
    pub env: Vec<(String, String)>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            client_id: DEFAULT_CLIENT_ID.into(),
            audience: DEFAULT_AUDIENCE.into(),
            access_token_ttl: Duration::from_secs(60),
            env: Vec::new(),
        }
    }
}

/// The provider's discovery document (the parts tests use).
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// The issuer.
    pub issuer: String,
    /// Where its key set is.
    pub jwks_uri: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The device authorization endpoint (RFC 8628).
    pub device_authorization_endpoint: String,
    /// The userinfo endpoint.
    pub userinfo_endpoint: Option<String>,
    /// The revocation endpoint (RFC 7009).
    pub revocation_endpoint: Option<String>,
}

/// The answer of the device authorization endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceAuthorization {
    /// What the client polls the token endpoint with.
    pub device_code: String,
    /// What the person types at the verification URI.
    pub user_code: String,
    /// Where the person goes.
    pub verification_uri: String,
    /// The same, with the user code filled in.
    pub verification_uri_complete: Option<String>,
    /// Seconds until the codes expire.
    pub expires_in: u64,
    /// Polling interval in seconds, if the provider names one (this one does not).
    pub interval: Option<u64>,
}

/// A successful token endpoint answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenSet {
    /// The access token (a JWT for the audience).
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: Option<u64>,
    /// The refresh token (device flow with `offline_access`).
    pub refresh_token: Option<String>,
    /// The ID token.
    pub id_token: Option<String>,
    /// Granted scopes.
    pub scope: Option<String>,
}

/// An OAuth error answer (`{"error": …, "error_description": …}`).
#[derive(Debug, Clone, Deserialize)]
pub struct OAuthError {
    /// The error code, e.g. `authorization_pending`, `invalid_grant`.
    pub error: String,
    /// The provider's explanation.
    pub error_description: Option<String>,
}

/// A running provider; killed on drop.
pub struct OidcProvider {
    child: Child,
    options: ProviderOptions,
    metadata: Metadata,
    http: reqwest::Client,
    stderr: Arc<Mutex<String>>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.metadata.issuer)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The Node.js binary: `NODE` if set, else `node` from `PATH`.
pub fn node_program() -> OsString {
    std::env::var_os("NODE").unwrap_or_else(|| "node".into())
}

/// The repository root: the nearest ancestor of this crate holding `ops/oidc-provider`.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("ops/oidc-provider/provider.mjs").is_file())
        .unwrap_or_else(|| {
            panic!(
                "cannot find ops/oidc-provider/provider.mjs above {}",
                manifest.display()
            )
        })
        .to_path_buf()
}

fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build an HTTP client")
}

impl OidcProvider {
    /// Starts a provider with the default options.
    pub async fn start() -> Self {
        Self::start_with(ProviderOptions::default()).await
    }

    /// Starts a provider; panics (failing the test) with the reason if it cannot.
    pub async fn start_with(options: ProviderOptions) -> Self {
        let dir = repo_root().join("ops/oidc-provider");
        if !dir.join("node_modules/oidc-provider").is_dir() {
            panic!(
                "the OIDC provider for the tests is not installed in {}: run scripts/setup-test-env \
                 (it runs `npm ci` there)",
                dir.display()
            );
        }
        let node = node_program();
        let mut command = Command::new(&node);
        command
            .arg("provider.mjs")
            .arg("0")
            .current_dir(&dir)
            .env("CLIENT_ID", &options.client_id)
            .env("AUDIENCE", &options.audience)
            .env(
                "ACCESS_TOKEN_TTL",
                options.access_token_ttl.as_secs().max(1).to_string(),
            )
            // The provider exits when this process goes away, even if it is killed.
            .env("EXIT_WITH_STDIN", "1")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start the OIDC provider with `{} provider.mjs`: {e}; the tests need \
                 Node.js 20 or newer on PATH (or NODE=/path/to/node)",
                node.to_string_lossy()
            )
        });

        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut s = sink.lock().unwrap();
                    if s.len() < 64 * 1024 {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + START_TIMEOUT;
        let issuer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if let Some(url) = line.strip_prefix(READY_PREFIX) {
                        break url.trim().to_owned();
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    panic!(
                        "the OIDC provider exited before it was ready ({status:?}); its stderr:\n{}",
                        stderr.lock().unwrap()
                    );
                }
                Err(_) => panic!(
                    "the OIDC provider did not print `{READY_PREFIX}…` within {START_TIMEOUT:?}; \
                     its stderr:\n{}",
                    stderr.lock().unwrap()
                ),
            }
        };
        // Keep draining stdout: a full pipe would block the provider.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let http = http_client();
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        let metadata: Metadata = get_json(&http, &discovery).await;
        assert_eq!(metadata.issuer, issuer, "the provider's discovery issuer");
        Self {
            child,
            options,
            metadata,
            http,
            stderr,
        }
    }

    /// The issuer URL (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> &str {
        &self.metadata.issuer
    }

    /// The access tokens' audience.
    pub fn audience(&self) -> &str {
        &self.options.audience
    }

    /// The public client's id.
    pub fn client_id(&self) -> &str {
        &self.options.client_id
    }

    /// The discovery document.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// What the provider wrote to stderr so far (for diagnostics).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The provider's current key set (JWKS).
    pub async fn jwks(&self) -> Value {
        get_json(&self.http, &self.metadata.jwks_uri).await
    }

    /// Starts a device authorization for the audience (what `m87 login` does first).
    pub async fn start_device_flow(&self) -> DeviceAuthorization {
        let response = self
            .http
            .post(&self.metadata.device_authorization_endpoint)
            .form(&[
                ("client_id", self.client_id()),
                ("scope", SCOPES),
                ("resource", self.audience()),
            ])
            .send()
            .await
            .expect("POST the device authorization endpoint");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "device authorization failed: {status}: {body}"
        );
        serde_json::from_str(&body).expect("a device authorization response")
    }

    /// One poll of the token endpoint with a device code.
    pub async fn try_poll_token(&self, device_code: &str) -> Result<TokenSet, OAuthError> {
        self.token_request(&[
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code),
            ("client_id", self.client_id()),
        ])
        .await
    }

    /// Polls the token endpoint until the device code is approved (fast: this is a test), or
    /// panics on any other error or after 30 s.
    pub async fn poll_token(&self, device_code: &str) -> TokenSet {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(100);
        loop {
            match self.try_poll_token(device_code).await {
                Ok(tokens) => return tokens,
                Err(e) if e.error == "authorization_pending" && Instant::now() < deadline => {}
                Err(e) if e.error == "slow_down" && Instant::now() < deadline => {
                    pause += Duration::from_secs(1);
                }
                Err(e) => panic!("polling the token endpoint failed: {e:?}"),
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Exchanges a refresh token (rotation is on: the answer carries a new one).
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, OAuthError> {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", self.client_id()),
        ])
        .await
    }

    /// Revokes a token (RFC 7009).
    pub async fn revoke(&self, token: &str) {
        let endpoint = self
            .metadata
            .revocation_endpoint
            .as_deref()
            .expect("the provider offers revocation");
        let response = self
            .http
            .post(endpoint)
            .form(&[("token", token), ("client_id", self.client_id())])
            .send()
            .await
            .expect("POST the revocation endpoint");
        assert!(
            response.status().is_success(),
            "revocation failed: {}",
            response.status()
        );
    }

    /// The whole device flow for one person: start, approve as `login_email`, poll.
    pub async fn sign_in(&self, login_email: &str) -> TokenSet {
        let authorization = self.start_device_flow().await;
        self.approve_device_code(&authorization.user_code, login_email)
            .await;
        self.poll_token(&authorization.device_code).await
    }

    /// Makes the provider sign new tokens with a new RSA key; old keys stay published. Answers
    /// the new key id.
    pub async fn rotate_keys(&self) -> String {
        let response = self
            .http
            .post(format!("{}/__test/rotate", self.issuer()))
            .send()
            .await
            .expect("POST /__test/rotate");
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .expect("a JSON answer from /__test/rotate");
        assert!(status.is_success(), "key rotation failed: {status}: {body}");
        body["kid"]
            .as_str()
            .expect("the new key id in the rotation answer")
            .to_owned()
    }

    /// Approves a user code at the provider's own pages, as a person with a fresh browser:
    /// `/device` → enter the code → confirm → sign in as `login_email` (any password) →
    /// consent → "Sign-in Success". Panics with the page it got stuck on otherwise.
    pub async fn approve_device_code(&self, user_code: &str, login_email: &str) {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .expect("build a browser-like HTTP client");
        let start = format!("{}/device", self.issuer());
        let mut request = browser.get(&start);
        let mut trail = vec![format!("GET {start}")];
        for _ in 0..20 {
            let response = request.send().await.expect("a provider page");
            let url = response.url().clone();
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .expect("a redirect with a Location");
                let next = url.join(location).expect("a valid redirect target");
                trail.push(format!("{status} → GET {next}"));
                request = browser.get(next);
                continue;
            }
            let page = response.text().await.unwrap_or_default();
            let stuck = |why: &str| {
                format!(
                    "approving user code {user_code} as {login_email}: {why} at {url} ({status}).\n\
                     steps: {trail:#?}\npage text: {}",
                    page_text(&page)
                )
            };
            if !status.is_success() {
                panic!("{}", stuck("the provider answered an error"));
            }
            if page.contains("Sign-in Success") {
                return;
            }
            if page.contains("class=\"red\"") {
                panic!("{}", stuck("the page shows an error"));
            }
            let Some(form) = parse_form(&page) else {
                panic!("{}", stuck("no form on the page"));
            };
            let mut fields: Vec<(String, String)> = Vec::new();
            for input in &form.inputs {
                let value = match input.name.as_str() {
                    "user_code" if input.value.is_empty() => user_code.to_owned(),
                    "login" => login_email.to_owned(),
                    "password" => "any password".to_owned(),
                    _ => input.value.clone(),
                };
                fields.push((input.name.clone(), value));
            }
            let action = url.join(&form.action).expect("a valid form action");
            let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
            trail.push(format!("{} {action} {names:?}", form.method));
            request = if form.method == "GET" {
                browser.get(action).query(&fields)
            } else {
                browser.post(action).form(&fields)
            };
        }
        panic!("approving user code {user_code}: too many steps: {trail:#?}");
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenSet, OAuthError> {
        let response = self
            .http
            .post(&self.metadata.token_endpoint)
            .form(form)
            .send()
            .await
            .expect("POST the token endpoint");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("a token response ({e}): {body}")))
        } else {
            Err(serde_json::from_str(&body).unwrap_or_else(|_| OAuthError {
                error: format!("http_{}", status.as_u16()),
                error_description: Some(body),
            }))
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> T {
    let response = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "GET {url}: {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// A form on a page: where it goes and its `<input>`s (buttons are not submitted).
#[derive(Debug)]
struct Form {
    action: String,
    method: String,
    inputs: Vec<Input>,
}

#[derive(Debug)]
struct Input {
    name: String,
    value: String,
}

/// The first `<form>` of an HTML page. Enough HTML for the provider's pages, not a parser.
fn parse_form(page: &str) -> Option<Form> {
    let lower = page.to_ascii_lowercase();
    let start = lower.find("<form")?;
    let end = lower[start..]
        .find("</form>")
        .map_or(page.len(), |e| start + e);
    let tag_end = start + lower[start..].find('>')?;
    let attrs = attributes(&page[start + "<form".len()..tag_end]);
    let get = |name: &str| {
        attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let action = get("action").unwrap_or_default();
    let method = get("method")
        .unwrap_or_else(|| "get".into())
        .to_ascii_uppercase();
    let mut inputs = Vec::new();
    let body = &page[tag_end..end];
    let body_lower = &lower[tag_end..end];
    let mut at = 0;
    while let Some(i) = body_lower[at..].find("<input") {
        let tag_start = at + i + "<input".len();
        let Some(close) = body_lower[tag_start..].find('>') else {
            break;
        };
        let attrs = attributes(&body[tag_start..tag_start + close]);
        let get = |name: &str| {
            attrs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        if let Some(name) = get("name") {
            inputs.push(Input {
                name,
                value: get("value").unwrap_or_default(),
            });
        }
        at = tag_start + close;
    }
    Some(Form {
        action,
        method,
        inputs,
    })
}

/// `name="value"` pairs of a tag (names lowercased; valueless attributes get "").
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = tag.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == '/') {
            i += 1;
        }
        let name_start = i;
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '=' && chars[i] != '/' {
            i += 1;
        }
        if i == name_start {
            i += 1;
            continue;
        }
        let name: String = chars[name_start..i]
            .iter()
            .collect::<String>()
            .to_ascii_lowercase();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '=' {
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i < chars.len() && (chars[i] == '"' || chars[i] == '\'') {
                let quote = chars[i];
                i += 1;
                let value_start = i;
                while i < chars.len() && chars[i] != quote {
                    i += 1;
                }
                value = chars[value_start..i].iter().collect();
                i += 1;
            } else {
                let value_start = i;
                while i < chars.len() && !chars[i].is_whitespace() {
                    i += 1;
                }
                value = chars[value_start..i].iter().collect();
            }
        }
        out.push((name, unescape(&value)));
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A page's visible text, roughly, for failure messages.
fn page_text(page: &str) -> String {
    let without_style = match (page.find("<style"), page.find("</style>")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &page[..a], &page[b..]),
        _ => page.to_owned(),
    };
    let mut text = String::new();
    let mut in_tag = false;
    for c in without_style.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.chars().take(1500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_read_from_the_provider_pages() {
        let page = r#"<form id="op.deviceConfirmForm" method="post" action="http://127.0.0.1:1/device">
<input type="hidden" name="xsrf" value="abc"/>
<input type="hidden" name="user_code" value="ABCD-EFGH"/>
<input type="hidden" name="confirm" value="yes"/>
</form><button form="op.deviceConfirmForm" name="abort" value="yes">Cancel</button>"#;
        let form = parse_form(page).unwrap();
        assert_eq!(form.method, "POST");
        assert_eq!(form.action, "http://127.0.0.1:1/device");
        let inputs: Vec<(&str, &str)> = form
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.value.as_str()))
            .collect();
        assert_eq!(
            inputs,
            [
                ("xsrf", "abc"),
                ("user_code", "ABCD-EFGH"),
                ("confirm", "yes")
            ]
        );
        let login = r#"<form autocomplete="off" action="/interaction/x" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
  <input required type="password" name="password" placeholder="and password" >"#;
        let form = parse_form(login).unwrap();
        let names: Vec<&str> = form.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["prompt", "login", "password"]);
    }
}
