//! An HTTP receiver that records every request and answers as the test says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the receiver answered.
    pub status: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Decides the answer (status, body) to a request.
pub type Behaviour = Arc<dyn Fn(&Request) -> (u16, Vec<u8>) + Send + Sync>;

#[derive(Clone)]
struct Shared {
    requests: Arc<Mutex<Vec<Request>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

/// A running receiver on 127.0.0.1.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

async fn handle(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let mut req = Request {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        status: 0,
    };
    let b = s.behaviour.lock().unwrap().clone();
    let (status, answer) = b(&req);
    req.status = status;
    s.requests.lock().unwrap().push(req);
    (StatusCode::from_u16(status).unwrap(), answer)
}

impl Receiver {
    /// Starts a receiver that answers with `behaviour`.
    pub async fn start(
        behaviour: impl Fn(&Request) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> Self {
        let shared = Shared {
            requests: Arc::default(),
            behaviour: Arc::new(Mutex::new(Arc::new(behaviour))),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// A receiver that answers 200 with `body` to everything.
    pub async fn ok(body: &'static str) -> Self {
        Self::start(move |_| (200, body.as_bytes().to_vec())).await
    }

    /// Answers differently from now on.
    pub fn set(&self, behaviour: impl Fn(&Request) -> (u16, Vec<u8>) + Send + Sync + 'static) {
        *self.shared.behaviour.lock().unwrap() = Arc::new(behaviour);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The requests answered with 2xx.
    pub fn accepted(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The event ids in the accepted JSON-lines bodies (webhook, format `json`), in order.
pub fn webhook_event_ids(r: &Receiver) -> Vec<String> {
    r.accepted()
        .iter()
        .flat_map(|req| {
            String::from_utf8(req.body.to_vec())
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["envelope"]["event_id"].as_str().unwrap().to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
