//! A webhook receiver for the SIEM export tests: it checks each request's
//! `X-M87-Signature` (HMAC-SHA256 of the body under the sink's key), answers 401 to a bad one,
//! and keeps each accepted request's JSON lines with when and over which connection it came.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::ConnectInfo;
use serde_json::Value;

/// One signed request the webhook accepted: when it arrived, over which connection, and its
/// entries.
pub struct Delivery {
    pub at: Instant,
    pub peer: SocketAddr,
    pub entries: Vec<Value>,
}

/// What the webhook received, in arrival order.
#[derive(Default, Clone)]
pub struct Received(pub Arc<Mutex<Vec<Delivery>>>);

impl Received {
    /// Every entry received, in arrival order.
    pub fn entries(&self) -> Vec<Value> {
        let all = self.0.lock().unwrap();
        all.iter().flat_map(|d| d.entries.iter().cloned()).collect()
    }

    /// When the first delivery after `t` over a connection not used before `t` arrived: the
    /// first by another process than the one that delivered until then.
    #[allow(dead_code)]
    pub fn first_new_after(&self, t: Instant) -> Option<Instant> {
        let all = self.0.lock().unwrap();
        let old: HashSet<SocketAddr> = all.iter().filter(|d| d.at <= t).map(|d| d.peer).collect();
        all.iter()
            .find(|d| d.at > t && !old.contains(&d.peer))
            .map(|d| d.at)
    }
}

/// Starts the receiver on `port` (POST `/hook`), checking signatures under `hmac_key`.
pub fn receiver(port: u16, hmac_key: &'static str, got: Received) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(
                    move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                          headers: axum::http::HeaderMap,
                          body: axum::body::Bytes| {
                        let got = got.clone();
                        async move {
                            let key =
                                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hmac_key.as_bytes());
                            let want = format!(
                                "sha256={}",
                                hex::encode(ring::hmac::sign(&key, &body).as_ref())
                            );
                            let sig = headers
                                .get("x-m87-signature")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default();
                            if sig != want {
                                return axum::http::StatusCode::UNAUTHORIZED;
                            }
                            let entries = body
                                .split(|b| *b == b'\n')
                                .filter(|l| !l.is_empty())
                                .map(|l| serde_json::from_slice(l).unwrap())
                                .collect();
                            got.0.lock().unwrap().push(Delivery {
                                at: Instant::now(),
                                peer,
                                entries,
                            });
                            axum::http::StatusCode::OK
                        }
                    },
                ),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).await.unwrap();
        });
    });
}
