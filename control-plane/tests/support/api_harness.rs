//! The REST API driven through the router without a socket, for the API tests.

#![allow(dead_code)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use m87_control_plane::api::{AppState, app};
use m87_control_plane::config::Settings;
use m87_control_plane::server::open_in_memory;
use m87_control_plane::service::ControlPlane;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const SECRET: &str = "0123456789abcdef0123456789abcdef-claim";

pub struct Api {
    pub cp: ControlPlane,
    pub router: axum::Router,
    pub admin: String,
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    pub async fn new() -> Self {
        Self::with(Settings::default()).await
    }

    pub async fn with(settings: Settings) -> Self {
        let cp = open_in_memory(settings).await.unwrap();
        let admin = cp.bootstrap_admin_key().await.unwrap().unwrap();
        let router = app(AppState::new(cp.clone()));
        Self { cp, router, admin }
    }

    pub async fn head(&self) -> u64 {
        self.cp.store().head().await.unwrap()
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Body,
        json_type: bool,
    ) -> Answer {
        self.raw_from("192.0.2.10:5555", &[], method, path, key, body, json_type)
            .await
            .0
    }

    /// A request from TCP peer `peer` with extra `headers`; the answer and its headers.
    #[allow(clippy::too_many_arguments)]
    pub async fn raw_from(
        &self,
        peer: &str,
        headers: &[(&str, &str)],
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Body,
        json_type: bool,
    ) -> (Answer, axum::http::HeaderMap) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if json_type {
            req = req.header("content-type", "application/json");
        }
        let mut req = req.body(body).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(peer.parse().unwrap()));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let response_headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("non-JSON body: {bytes:?}"))
        };
        (Answer { status, body }, response_headers)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        match body {
            Some(b) => {
                self.raw(method, path, key, Body::from(b.to_string()), true)
                    .await
            }
            None => self.raw(method, path, key, Body::empty(), false).await,
        }
    }

    pub async fn register(&self, device: &str, owner: &str) -> String {
        let a = self
            .call(
                "POST",
                "/v1/registrations",
                None,
                Some(registration(device, owner)),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.body["request_id"].as_str().unwrap().to_owned()
    }

    pub async fn user_key(&self, email: &str) -> String {
        let a = self
            .call(
                "POST",
                "/v1/api-keys",
                Some(&self.admin),
                Some(json!({"email": email})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.body["key"].as_str().unwrap().to_owned()
    }

    /// Asserts an error answer with `status` and `code` that changed nothing in the store but
    /// its record: a refused session grant is one `SessionRefused` by `grant`, nothing else.
    pub async fn refused(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        status: StatusCode,
        code: &str,
    ) {
        let before = self.head().await;
        let a = self.call(method, path, key, body).await;
        assert_eq!(a.status, status, "{method} {path}: {:?}", a.body);
        assert_eq!(a.code(), code, "{method} {path}: {:?}", a.body);
        assert!(!a.body["error"]["message"].as_str().unwrap().is_empty());
        let after = self.cp.store().read_all(before, 10).await.unwrap();
        let only_its_record = match after.as_slice() {
            [] => true,
            [one] => {
                matches!(
                    &one.event,
                    m87_events::DomainEvent::SessionRefused(r) if r.refused_by == "grant"
                ) && path.ends_with("/sessions")
            }
            _ => false,
        };
        assert!(
            only_its_record,
            "{method} {path} changed the store: {:?}",
            after
                .iter()
                .map(|e| e.event.event_type())
                .collect::<Vec<_>>()
        );
    }
}

pub fn registration(device: &str, owner: &str) -> Value {
    json!({
        "device_id": device,
        "name": format!("n-{device}"),
        "owner_scope": owner,
        "system_info": {
            "hostname": "h", "platform": "linux", "architecture": "x86_64",
            "os_version": "Debian 12", "kernel": "6.1", "cpu_count": 4, "memory_bytes": 1024
        },
        "claim_secret": SECRET,
    })
}
