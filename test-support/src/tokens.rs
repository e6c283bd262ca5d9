//! Tokens, keys and a local issuer for tests that craft access tokens: RSA keys of our own
//! (made by Node's crypto), RS256/HMAC signing with ring, claims a provider would issue, and a
//! loopback issuer serving discovery, a JWKS and userinfo.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{self, RsaKeyPair};
use serde_json::{Value, json};

use super::oidc::{DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, node_program};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn json_b64(v: &Value) -> String {
    b64(&serde_json::to_vec(v).unwrap())
}

/// The decoded header and claims of a JWT, unverified (to look at what the provider issued).
pub fn peek(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let claims = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&header).unwrap(),
        serde_json::from_slice(&claims).unwrap(),
    )
}

pub fn kid_of(token: &str) -> String {
    peek(token).0["kid"].as_str().unwrap().to_owned()
}

/// An RSA key of our own, made by Node's crypto (ring cannot generate RSA keys; a debug build
/// of a pure-Rust generator takes seconds).
pub struct TestKey {
    pub kid: String,
    pub pair: RsaKeyPair,
    /// The public half as a JWK, with `kid`, `alg: RS256`, `use: sig`.
    pub jwk: Value,
}

pub fn generate_rsa_key(kid: &str) -> TestKey {
    let script = "const c = require('crypto');\
        const { privateKey, publicKey } = c.generateKeyPairSync('rsa', { modulusLength: 2048 });\
        const jwk = publicKey.export({ format: 'jwk' });\
        console.log(JSON.stringify({ pkcs8: privateKey.export({ type: 'pkcs8', format: 'der' })\
        .toString('base64'), n: jwk.n, e: jwk.e }));";
    let out = std::process::Command::new(node_program())
        .arg("-e")
        .arg(script)
        .output()
        .expect("run node to generate an RSA key (Node.js 20+ is needed by these tests)");
    assert!(
        out.status.success(),
        "node failed to generate an RSA key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let der = STANDARD.decode(v["pkcs8"].as_str().unwrap()).unwrap();
    TestKey {
        kid: kid.to_owned(),
        pair: RsaKeyPair::from_pkcs8(&der).unwrap(),
        jwk: json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": v["n"], "e": v["e"],
        }),
    }
}

/// A compact JWS over `header` and `claims`, signed with RSASSA-PKCS1-v1_5 and `alg`'s hash.
pub fn sign_rsa(key: &TestKey, header: &Value, claims: &Value) -> String {
    let padding: &'static dyn signature::RsaEncoding = match header["alg"].as_str().unwrap() {
        "RS256" => &signature::RSA_PKCS1_SHA256,
        "RS384" => &signature::RSA_PKCS1_SHA384,
        "RS512" => &signature::RSA_PKCS1_SHA512,
        other => panic!("sign_rsa does not do {other}"),
    };
    let message = format!("{}.{}", json_b64(header), json_b64(claims));
    let mut sig = vec![0; key.pair.public().modulus_len()];
    key.pair
        .sign(
            padding,
            &ring::rand::SystemRandom::new(),
            message.as_bytes(),
            &mut sig,
        )
        .unwrap();
    format!("{message}.{}", b64(&sig))
}

/// RS256 with our key, `kid` = the key's.
pub fn sign(key: &TestKey, claims: &Value) -> String {
    sign_rsa(
        key,
        &json!({"alg": "RS256", "typ": "at+jwt", "kid": key.kid}),
        claims,
    )
}

pub fn sign_hmac(alg: &str, secret: &[u8], header: &Value, claims: &Value) -> String {
    let algorithm = match alg {
        "HS256" => ring::hmac::HMAC_SHA256,
        "HS384" => ring::hmac::HMAC_SHA384,
        "HS512" => ring::hmac::HMAC_SHA512,
        other => panic!("sign_hmac does not do {other}"),
    };
    let message = format!("{}.{}", json_b64(header), json_b64(claims));
    let tag = ring::hmac::sign(&ring::hmac::Key::new(algorithm, secret), message.as_bytes());
    format!("{message}.{}", b64(tag.as_ref()))
}

/// Claims a well-behaved provider would put in an access token for `email`.
pub fn good_claims(issuer: &str, email: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "aud": DEFAULT_AUDIENCE,
        "sub": format!("user-{email}"),
        "email": email,
        "email_verified": true,
        "iat": now,
        "exp": now + 300,
        "client_id": DEFAULT_CLIENT_ID,
        "scope": "openid email",
        "jti": "test-jti",
    })
}

pub fn with(mut claims: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

/// A minimal issuer on loopback: discovery, a JWKS we control, and userinfo.
#[derive(Clone)]
pub struct LocalIssuer {
    pub url: String,
    pub jwks: Arc<Mutex<Value>>,
    pub jwks_hits: Arc<AtomicUsize>,
    /// What userinfo answers (with 200); `None` answers 401.
    pub userinfo: Arc<Mutex<Option<Value>>>,
    pub userinfo_hits: Arc<AtomicUsize>,
}

impl LocalIssuer {
    /// Starts it on loopback, publishing `keys`.
    pub async fn start(keys: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = Self {
            url,
            jwks: Arc::new(Mutex::new(
                json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }),
            )),
            jwks_hits: Arc::default(),
            userinfo: Arc::default(),
            userinfo_hits: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/userinfo", get(userinfo))
            .with_state(issuer.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        issuer
    }

    /// Adds a key to the JWKS.
    pub fn publish(&self, key: &TestKey) {
        self.jwks.lock().unwrap()["keys"]
            .as_array_mut()
            .unwrap()
            .push(key.jwk.clone());
    }

    /// How often the JWKS was fetched.
    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

pub async fn discovery(State(issuer): State<LocalIssuer>) -> Json<Value> {
    Json(json!({
        "issuer": issuer.url,
        "jwks_uri": format!("{}/jwks", issuer.url),
        "userinfo_endpoint": format!("{}/userinfo", issuer.url),
    }))
}

pub async fn jwks(State(issuer): State<LocalIssuer>) -> Json<Value> {
    issuer.jwks_hits.fetch_add(1, Ordering::SeqCst);
    Json(issuer.jwks.lock().unwrap().clone())
}

pub async fn userinfo(State(issuer): State<LocalIssuer>, headers: HeaderMap) -> Response {
    issuer.userinfo_hits.fetch_add(1, Ordering::SeqCst);
    let answer = issuer.userinfo.lock().unwrap().clone();
    match (headers.get("authorization"), answer) {
        (Some(auth), Some(body)) if auth.to_str().unwrap().starts_with("Bearer ey") => {
            Json(body).into_response()
        }
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// The RSA public key of a JWK in the encodings someone might try as an HMAC secret.
pub fn public_key_encodings(jwk: &Value) -> Vec<(&'static str, Vec<u8>)> {
    fn len(n: usize) -> Vec<u8> {
        if n < 0x80 {
            vec![n as u8]
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            let mut out = vec![0x80 | bytes.len() as u8];
            out.extend(bytes);
            out
        }
    }
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(len(content.len()));
        out.extend_from_slice(content);
        out
    }
    fn uint(bytes: &[u8]) -> Vec<u8> {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let mut content = Vec::new();
        if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
            content.push(0);
        }
        content.extend(trimmed);
        tlv(0x02, &content)
    }
    fn pem(label: &str, der: &[u8]) -> String {
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
    let pkcs1 = tlv(0x30, &[uint(&n), uint(&e)].concat());
    let rsa_encryption_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let algorithm = tlv(
        0x30,
        &[tlv(0x06, &rsa_encryption_oid), vec![0x05, 0x00]].concat(),
    );
    let spki = tlv(
        0x30,
        &[algorithm, tlv(0x03, &[&[0u8][..], &pkcs1].concat())].concat(),
    );
    let spki_pem = pem("PUBLIC KEY", &spki);
    vec![
        ("SPKI PEM", spki_pem.clone().into_bytes()),
        (
            "SPKI PEM without newline",
            spki_pem.trim_end().as_bytes().to_vec(),
        ),
        ("PKCS#1 PEM", pem("RSA PUBLIC KEY", &pkcs1).into_bytes()),
        ("SPKI DER", spki),
        ("PKCS#1 DER", pkcs1),
        ("modulus", n),
        ("JWK JSON", serde_json::to_vec(jwk).unwrap()),
    ]
}
