//! [`FakeEndpoint`]: one more toncenter v2 endpoint over the same devnet chain, whose answers
//! a test can rewrite on the fly — a lying node, for tests of reads confirmed by a quorum of
//! endpoints (`cocoon_ton::QuorumChain`). It is fault injection for tests; `cocoon devnet`
//! never starts one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::api::{ApiState, router};

/// What a fake endpoint was asked: the toncenter method (`getAddressInformation`, ...) and
/// its parameters from the query string and the JSON body.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The method name (the last path segment).
    pub method: String,
    /// Parameters (strings from the query, JSON values from the body).
    pub params: Map<String, Value>,
}

impl Asked {
    /// A parameter as text.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(Value::as_str)
    }
}

/// Rewrites the `result` of a successful answer.
pub type Rewrite = Arc<dyn Fn(&Asked, &mut Value) + Send + Sync>;

type Slot = Arc<Mutex<Option<Rewrite>>>;

/// A toncenter v2 endpoint on 127.0.0.1 over a shared devnet chain; honest until told to
/// lie. The server stops when this is dropped.
pub struct FakeEndpoint {
    addr: SocketAddr,
    rewrite: Slot,
    task: tokio::task::JoinHandle<()>,
}

/// Request bodies above this are refused (the toncenter client sends small JSON).
const MAX_BODY: usize = 4 << 20;

impl FakeEndpoint {
    /// Serves `state`'s chain on a new loopback port.
    pub async fn spawn(state: ApiState) -> std::io::Result<Self> {
        let rewrite: Slot = Arc::new(Mutex::new(None));
        let app = router(state).layer(axum::middleware::from_fn_with_state(
            rewrite.clone(),
            rewrite_answers,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeEndpoint {
            addr,
            rewrite,
            task,
        })
    }

    /// The base URL (for `ToncenterConfig::new`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, every successful answer's `result` passes through `f`.
    pub fn lie(&self, f: impl Fn(&Asked, &mut Value) + Send + Sync + 'static) {
        *self.rewrite.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    /// From now on, answers are the chain's own.
    pub fn honest(&self) {
        *self.rewrite.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn rewrite_answers(State(slot): State<Slot>, req: Request, next: Next) -> Response {
    let f = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(f) = f else {
        return next.run(req).await;
    };
    let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    let mut params = Map::new();
    if let Ok(Query(q)) = Query::<HashMap<String, String>>::try_from_uri(req.uri()) {
        for (k, v) in q {
            params.insert(k, Value::String(v));
        }
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&bytes) {
        params.extend(o);
    }
    let asked = Asked { method, params };
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (axum::http::StatusCode::BAD_GATEWAY, "unreadable answer").into_response();
    };
    let mut v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    if v.get("ok").and_then(Value::as_bool) == Some(true)
        && let Some(result) = v.get_mut("result")
    {
        f(&asked, result);
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(v.to_string()))
}
