//! A fake OpenAI-compatible engine on loopback. The first message's content picks the mode:
//! `json` (one JSON answer), `gated` (SSE held before its last chunks until
//! [`EngineState::gate`] gets a permit), `stream` (20 words 5 ms apart), `fail` (two chunks,
//! then the backend dies), `endless` (a word every 20 ms until dropped) and `metered` (usage
//! in every chunk, the prompt count growing by 1000 a chunk). Anything else is a 400.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cocoon_engine::{BackendKind, HttpEngine, HttpEngineConfig, Tokenizer};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

/// Shared state of one fake engine.
#[derive(Clone)]
pub struct EngineState {
    /// Streams in `gated` mode wait for a permit before their last chunks.
    pub gate: Arc<Semaphore>,
    /// Set when an `endless` or `metered` stream was dropped by the caller.
    pub dropped: Arc<AtomicBool>,
    /// While set, every chat request is answered 503 (the worker reports "not ready").
    pub busy: Arc<AtomicBool>,
    /// `/v1/models` answers 200 while true (the worker's health check), 503 otherwise.
    pub up: Arc<AtomicBool>,
    /// Chat requests received.
    pub requests: Arc<AtomicUsize>,
    /// Endless streams started.
    pub endless_started: Arc<Notify>,
    /// Every chat request body received, in order.
    pub bodies: Arc<Mutex<Vec<Value>>>,
}

impl EngineState {
    /// Chat requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The SSE transcript of `gated` mode, chunk by chunk.
pub fn transcript() -> Vec<String> {
    vec![
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n".into(),
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Bonjour\"}}]}\n\n".into(),
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" le monde\"},\"finish_reason\":\"stop\"}]}\n\n".into(),
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":9,\"total_tokens\":40,\"prompt_tokens_details\":{\"cached_tokens\":16}}}\n\n".into(),
        "data: [DONE]\n\n".into(),
    ]
}

/// Sets its flag when dropped (with the stream that owns it).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type Chunk = Result<Vec<u8>, std::io::Error>;

fn sse(stream: impl futures::Stream<Item = Chunk> + Send + 'static) -> Response {
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn gated(gate: Arc<Semaphore>) -> Response {
    let chunks = transcript();
    sse(futures::stream::unfold(0usize, move |i| {
        let chunks = chunks.clone();
        let gate = gate.clone();
        async move {
            if i >= chunks.len() {
                return None;
            }
            if i == 2 {
                gate.acquire().await.unwrap().forget();
            }
            Some((Ok(chunks[i].clone().into_bytes()), i + 1))
        }
    }))
}

/// 20 one-word chunks 5 ms apart, then the usage (the benchmark's shape, small).
fn words() -> Response {
    sse(futures::stream::unfold(0u32, |n| async move {
        let c = match n {
            0..20 => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{n} \"}}}}]}}\n\n")
            }
            20 => "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":20,\"total_tokens\":32}}\n\n".to_owned(),
            21 => "data: [DONE]\n\n".to_owned(),
            _ => return None,
        };
        Some((Ok(c.into_bytes()), n + 1))
    }))
}

/// Two content chunks (three words), then the backend dies.
fn fail() -> Response {
    sse(futures::stream::unfold(0u8, |n| async move {
        match n {
            0 => Some((
                Ok(
                    b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one two\"}}]}\n\n"
                        .to_vec(),
                ),
                1,
            )),
            1 => Some((
                Ok(
                    b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" three\"}}]}\n\n"
                        .to_vec(),
                ),
                2,
            )),
            2 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Err(std::io::Error::other("backend crashed")), 3))
            }
            _ => None,
        }
    }))
}

/// A word every 20 ms until the caller drops the stream.
fn endless(st: &EngineState) -> Response {
    st.dropped.store(false, Ordering::SeqCst);
    st.endless_started.notify_one();
    let flag = DropFlag(st.dropped.clone());
    sse(futures::stream::unfold((flag, 0u32), |(f, n)| async move {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{n} \"}}}}]}}\n\n"
        );
        Some((Ok(c.into_bytes()), (f, n + 1)))
    }))
}

/// Usage with every chunk (as some engines report it): one completion token a chunk, and a
/// prompt count growing by 1000 a chunk (an engine reporting more than the request could
/// cost).
fn metered(st: &EngineState) -> Response {
    st.dropped.store(false, Ordering::SeqCst);
    let flag = DropFlag(st.dropped.clone());
    sse(futures::stream::unfold((flag, 1u64), |(f, n)| async move {
        if n > 200 {
            return None;
        }
        if n > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let c = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w \"}}}}],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
            n * 1000,
            n,
            n * 1000 + n
        );
        Some((Ok(c.into_bytes()), (f, n + 1)))
    }))
}

async fn chat(State(st): State<EngineState>, body: axum::Json<Value>) -> Response {
    st.requests.fetch_add(1, Ordering::SeqCst);
    st.bodies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(body.0.clone());
    if st.busy.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
    }
    match body["messages"][0]["content"].as_str().unwrap_or("") {
        "json" => axum::Json(json!({
            "id": "c2", "object": "chat.completion", "created": 1, "model": "Smol",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
        }))
        .into_response(),
        "gated" => gated(st.gate.clone()),
        "stream" => words(),
        "fail" => fail(),
        "endless" => endless(&st),
        "metered" => metered(&st),
        // An engine refusing a parameter, as OpenAI words it.
        "refuse" => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {
                "message": "logprobs are not supported by this model",
                "type": "invalid_request_error",
                "param": "logprobs",
                "code": "unsupported_parameter",
            }})),
        )
            .into_response(),
        _ => (StatusCode::BAD_REQUEST, "unknown mode").into_response(),
    }
}

async fn models(State(st): State<EngineState>) -> Response {
    if st.up.load(Ordering::SeqCst) {
        axum::Json(json!({"object":"list","data":[{"id":"Smol"}]})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response()
    }
}

/// Starts a fake engine; returns its base URL and state.
pub async fn fake_engine() -> (String, EngineState) {
    let st = EngineState {
        gate: Arc::new(Semaphore::new(0)),
        dropped: Arc::new(AtomicBool::new(false)),
        busy: Arc::new(AtomicBool::new(false)),
        up: Arc::new(AtomicBool::new(true)),
        requests: Arc::new(AtomicUsize::new(0)),
        endless_started: Arc::new(Notify::new()),
        bodies: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .with_state(st.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), st)
}

/// Whitespace words: a real tokenizer for a toy vocabulary (local counting on failure).
pub struct Words;

impl Tokenizer for Words {
    fn count(&self, text: &str) -> Result<u64, String> {
        Ok(text.split_whitespace().count() as u64)
    }
}

/// The context length the fake engines' workers announce.
pub const FAKE_CONTEXT_LENGTH: u32 = 2048;

/// An OpenAI-HTTP engine (vLLM flavour) for the fake engine at `base`, counting [`Words`],
/// configured with a context of [`FAKE_CONTEXT_LENGTH`] tokens.
pub fn engine(base: &str) -> Arc<HttpEngine> {
    let mut cfg = HttpEngineConfig::new(base, BackendKind::Vllm, "Smol");
    cfg.context_length = Some(FAKE_CONTEXT_LENGTH);
    Arc::new(
        HttpEngine::new(cfg)
            .unwrap()
            .with_tokenizer(Arc::new(Words)),
    )
}
