//! OpenAI-compatible HTTP engines: vLLM, SGLang, llama.cpp's server, Ollama, or anything else
//! that speaks `POST /v1/chat/completions`.
//!
//! The body is relayed byte for byte. Usage is read from the engine's own answer (the final SSE
//! chunk, which the validator always asks for with `stream_options.include_usage`, or the
//! `usage` object of a JSON answer) by [`UsageTracker`], which understands SSE, so streamed
//! answers are billed exactly. When an engine reports no usage at all,
//! and a [`Tokenizer`] for the model is configured, prompt and completion are counted locally and
//! the result is marked as such. Without one, a stream that ends without usage (llama-cpp-python's
//! server ignores `stream_options`) is counted with the engine's help: the completion as the
//! streamed pieces of generated output (llama.cpp-based servers send one per token), the prompt
//! by asking the engine the same request whole with `max_tokens: 1` (its own chat template and
//! tokenizer; the prompt is still in its cache) — marked as counted locally too.

use crate::engine::{
    BodyEvent, Engine, EngineError, EngineRequest, EngineResponse, Health, ModelInfo, Tokenizer,
};
use cocoon_openai::{Endpoint, Usage, UsageTracker, prompt_text};
use futures::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Which server is behind the URL. It changes only labels and the health probe's expectations;
/// all of them are driven through the same OpenAI API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// vLLM (`vllm serve`, start it with `--enable-prompt-tokens-details` for cached counts).
    Vllm,
    /// SGLang (`--enable-cache-report` for cached counts).
    Sglang,
    /// llama.cpp's `llama-server` (start it with `--jinja`).
    LlamaServer,
    /// Ollama's OpenAI-compatible endpoint.
    Ollama,
    /// Any other OpenAI-compatible server.
    OpenAi,
}

impl BackendKind {
    /// Parses `vllm`, `sglang`, `llama-server` (or `llamacpp`), `ollama`, `openai`.
    pub fn parse(s: &str) -> Option<BackendKind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "vllm" => BackendKind::Vllm,
            "sglang" => BackendKind::Sglang,
            "llama-server" | "llamacpp" | "llama.cpp" => BackendKind::LlamaServer,
            "ollama" => BackendKind::Ollama,
            "openai" | "generic" => BackendKind::OpenAi,
            _ => return None,
        })
    }

    /// Lower-case label.
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::Vllm => "vllm",
            BackendKind::Sglang => "sglang",
            BackendKind::LlamaServer => "llama-server",
            BackendKind::Ollama => "ollama",
            BackendKind::OpenAi => "openai",
        }
    }
}

/// Configuration of an HTTP engine.
#[derive(Clone)]
pub struct HttpEngineConfig {
    /// Base URL without `/v1` (e.g. `http://127.0.0.1:8000`).
    pub base_url: String,
    /// Server kind.
    pub kind: BackendKind,
    /// The model name on the network (what clients send).
    pub model: String,
    /// The name the backend serves it under, if different (the `model` field is rewritten).
    pub served_model: Option<String>,
    /// Bearer token for the backend, if it wants one. Never logged.
    pub api_key: Option<String>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Requests the backend is allowed to run at once.
    pub max_concurrency: u32,
    /// Context length, if known.
    pub context_length: Option<u32>,
    /// CA certificates trusted besides the WebPKI roots for an `https://` backend.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl std::fmt::Debug for HttpEngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEngineConfig")
            .field("base_url", &self.base_url)
            .field("kind", &self.kind)
            .field("model", &self.model)
            .field("served_model", &self.served_model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

impl HttpEngineConfig {
    /// A configuration with defaults: 5 s connect timeout, 64 concurrent requests.
    pub fn new(base_url: impl Into<String>, kind: BackendKind, model: impl Into<String>) -> Self {
        HttpEngineConfig {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            kind,
            model: model.into(),
            served_model: None,
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            max_concurrency: 64,
            context_length: None,
            extra_roots: Vec::new(),
        }
    }
}

/// An engine behind an OpenAI-compatible HTTP API.
pub struct HttpEngine {
    cfg: HttpEngineConfig,
    client: reqwest::Client,
    tokenizer: Option<Arc<dyn Tokenizer>>,
}

/// Largest error body read from a backend.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Channel depth between the reader task and the worker: bounds buffered body chunks.
const BODY_CHANNEL: usize = 32;

impl HttpEngine {
    /// Creates the engine (no request is sent until [`Engine::submit`] or [`Engine::health`]).
    pub fn new(cfg: HttpEngineConfig) -> Result<Self, EngineError> {
        let client = crate::http_client(cfg.connect_timeout, &cfg.extra_roots)
            .map_err(|e| EngineError::Unreachable(format!("HTTP client: {e}")))?;
        Ok(HttpEngine {
            cfg,
            client,
            tokenizer: None,
        })
    }

    /// Uses `tokenizer` to count usage when the backend reports none.
    pub fn with_tokenizer(mut self, tokenizer: Arc<dyn Tokenizer>) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self
            .client
            .request(method, format!("{}{}", self.cfg.base_url, path));
        if let Some(k) = &self.cfg.api_key {
            rb = rb.bearer_auth(k);
        }
        rb
    }

    async fn submit_inner(&self, req: EngineRequest) -> Result<EngineResponse, EngineError> {
        let deadline = Instant::now() + req.timeout;
        let mut body = req.body;
        if let Some(served) = &self.cfg.served_model {
            body.insert("model".into(), Value::String(served.clone()));
        }
        let prompt_text = self
            .tokenizer
            .as_ref()
            .map(|_| prompt_text(req.endpoint, &body));
        let send = self
            .request(reqwest::Method::POST, req.endpoint.path())
            .json(&body)
            .send();
        let mut resp = match tokio::time::timeout_at(deadline, send).await {
            Err(_) => return Err(EngineError::Timeout(req.timeout)),
            Ok(Err(e)) if e.is_connect() => return Err(EngineError::Unreachable(e.to_string())),
            Ok(Err(e)) => return Err(EngineError::Protocol(e.to_string())),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(if req.stream {
                "text/event-stream"
            } else {
                "application/json"
            })
            .to_owned();
        if !resp.status().is_success() {
            return Err(refusal(status, resp, deadline, req.endpoint, &self.cfg.model).await);
        }
        // A stream is handed on once its first bytes arrive. One that ends before any
        // (llama-cpp-python's server answers 200 and then drops a stream it refuses, e.g. a
        // prompt over its context) is asked again whole, which it refuses with the reason.
        let mut first = None;
        if req.stream {
            let mut resp_mut = resp;
            match tokio::time::timeout_at(deadline, resp_mut.chunk()).await {
                Err(_) => return Err(EngineError::Timeout(req.timeout)),
                Ok(Ok(Some(c))) => first = Some(c.to_vec()),
                Ok(Ok(None) | Err(_)) => {
                    let mut whole = body.clone();
                    whole.remove("stream");
                    whole.remove("stream_options");
                    let again = self
                        .request(reqwest::Method::POST, req.endpoint.path())
                        .json(&whole)
                        .send();
                    return Err(match tokio::time::timeout_at(deadline, again).await {
                        Ok(Ok(r)) if !r.status().is_success() => {
                            refusal(
                                r.status().as_u16(),
                                r,
                                deadline,
                                req.endpoint,
                                &self.cfg.model,
                            )
                            .await
                        }
                        _ => EngineError::Protocol("the stream ended before its first byte".into()),
                    });
                }
            }
            resp = resp_mut;
        }
        let (tx, rx) = mpsc::channel(BODY_CHANNEL);
        let tokenizer = self.tokenizer.clone();
        let timeout = req.timeout;
        // Only asked if the stream ends without usage and no tokenizer can count it.
        let probe = (req.stream && tokenizer.is_none()).then(|| {
            self.request(reqwest::Method::POST, req.endpoint.path())
                .json(&prompt_probe(&body))
        });
        let counting = Counting {
            tokenizer,
            prompt_text,
            probe,
            stream: req.stream,
        };
        tokio::spawn(relay(resp, first, tx, deadline, timeout, counting));
        Ok(EngineResponse {
            status,
            content_type,
            body: rx,
        })
    }
}

/// What an engine's error status means for the request: busy, the app's fault (a 400 with
/// the engine's `param` and `code`), or another failure.
async fn refusal(
    status: u16,
    resp: reqwest::Response,
    deadline: Instant,
    endpoint: Endpoint,
    model: &str,
) -> EngineError {
    let (message, error) = read_error(resp, deadline).await;
    match status {
        429 | 503 => EngineError::Busy(message),
        // The engine refuses the request as asked (a parameter it does not take, a
        // prompt over its context): the app's fault, a 400 with the engine's param.
        400 | 413 | 422 => {
            let mut e =
                cocoon_openai::ApiError::new(cocoon_openai::ErrorKind::InvalidRequest, message);
            let field = |k: &str| error.as_ref().and_then(|e| e.get(k)?.as_str());
            let path_char = |c: char| c.is_ascii_alphanumeric() || "_.[]-".contains(c);
            e.param = field("param")
                .filter(|p| !p.is_empty() && p.len() <= 200 && p.chars().all(path_char))
                .map(str::to_owned);
            e.code = field("code").and_then(|c| {
                cocoon_openai::error::KNOWN_CODES
                    .iter()
                    .copied()
                    .find(|k| *k == c)
            });
            EngineError::Invalid(e)
        }
        // A server without embeddings (no such route, or not for this model).
        404 | 405 | 501 if endpoint == Endpoint::Embeddings => EngineError::invalid(
            "model",
            "model_not_supported",
            format!(
                "The model {model} does not support embeddings (its engine answered HTTP \
                 {status})."
            ),
        ),
        _ => EngineError::Status { status, message },
    }
}

/// The message of an engine's error body (at most 300 characters, no control characters),
/// and its OpenAI `error` object when it has one.
async fn read_error(mut resp: reqwest::Response, deadline: Instant) -> (String, Option<Value>) {
    let mut buf = Vec::new();
    while buf.len() < MAX_ERROR_BODY {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    let body = serde_json::from_slice::<Value>(&buf).ok();
    let msg = body
        .as_ref()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| e.get("message").or(Some(e)))
                .and_then(Value::as_str)
                .or_else(|| v.get("message").and_then(Value::as_str))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&buf).into_owned());
    let mut msg: String = msg.chars().filter(|c| !c.is_control()).take(300).collect();
    if msg.is_empty() {
        msg = "no error message".into();
    }
    let error = body
        .and_then(|mut v| v.get_mut("error").map(Value::take))
        .filter(Value::is_object);
    (msg, error)
}

/// The body that asks an engine for a request's prompt tokens: the same request whole, one
/// choice, at most one generated token.
fn prompt_probe(body: &serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    let mut probe = body.clone();
    for k in [
        "stream",
        "stream_options",
        "n",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
    ] {
        probe.remove(k);
    }
    probe.insert("max_tokens".into(), Value::from(1));
    probe
}

/// The prompt tokens the engine reports for `probe` (see [`prompt_probe`]), if it answers
/// with usage before `deadline`.
async fn probe_prompt_tokens(probe: reqwest::RequestBuilder, deadline: Instant) -> Option<u64> {
    let mut resp = tokio::time::timeout_at(deadline, probe.send())
        .await
        .ok()?
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut buf = Vec::new();
    while let Some(c) = tokio::time::timeout_at(deadline, resp.chunk())
        .await
        .ok()?
        .ok()?
    {
        buf.extend_from_slice(&c);
        if buf.len() > MAX_ERROR_BODY {
            return None;
        }
    }
    let v: Value = serde_json::from_slice(&buf).ok()?;
    v.get("usage")?.get("prompt_tokens")?.as_u64()
}

/// How a relay counts usage the engine does not report.
struct Counting {
    tokenizer: Option<Arc<dyn Tokenizer>>,
    prompt_text: Option<String>,
    /// The prompt-count request ([`prompt_probe`]), for streams without a tokenizer.
    probe: Option<reqwest::RequestBuilder>,
    stream: bool,
}

/// Where `data: [DONE]` starts in `chunk`, if it does.
fn done_at(chunk: &[u8]) -> Option<usize> {
    const DONE: &[u8] = b"data: [DONE]";
    chunk.windows(DONE.len()).position(|w| w == DONE)
}

/// `id`, `object`, `created` and `model` of the first complete `data:` event in `chunk`.
fn event_head(chunk: &[u8]) -> Option<serde_json::Map<String, Value>> {
    let line = chunk
        .split(|b| *b == b'\n')
        .find_map(|l| l.strip_prefix(b"data: {"))?;
    let mut json = b"{".to_vec();
    json.extend_from_slice(line);
    let v: serde_json::Map<String, Value> = serde_json::from_slice(&json).ok()?;
    Some(
        ["id", "object", "created", "model"]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), v.get(k)?.clone())))
            .collect(),
    )
}

/// The SSE event that tells the app the usage counted here: OpenAI's usage chunk (no
/// choices), with the stream's `id`, `object`, `created` and `model`.
fn usage_event(head: Option<serde_json::Map<String, Value>>, usage: &Usage) -> Vec<u8> {
    let mut v = head.unwrap_or_default();
    v.insert("choices".into(), Value::Array(Vec::new()));
    v.insert(
        "usage".into(),
        serde_json::json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
        }),
    );
    format!("data: {}\n\n", Value::Object(v)).into_bytes()
}

async fn relay(
    mut resp: reqwest::Response,
    mut first: Option<Vec<u8>>,
    tx: mpsc::Sender<BodyEvent>,
    deadline: Instant,
    timeout: Duration,
    counting: Counting,
) {
    let Counting {
        tokenizer,
        prompt_text,
        probe,
        stream,
    } = counting;
    // A stream whose usage is counted here ends with a usage event of ours, which must come
    // before `[DONE]` (clients stop reading there): while the engine has reported no usage,
    // `[DONE]` and what follows it are held until the end.
    let mut held: Option<Vec<u8>> = None;
    let mut head = None;
    let mut tracker = if tokenizer.is_some() {
        UsageTracker::new().collecting_text()
    } else {
        UsageTracker::new()
    };
    let local = |tracker: &UsageTracker| -> Option<Usage> {
        let tok = tokenizer.as_ref()?;
        let prompt = tok.count(prompt_text.as_deref().unwrap_or("")).ok()?;
        let completion = tok.count(tracker.text().unwrap_or("")).ok()?;
        Some(Usage::new(prompt, completion))
    };
    loop {
        let next = match first.take() {
            Some(chunk) => Ok(Ok(Some(chunk))),
            None => tokio::select! {
                r = tokio::time::timeout_at(deadline, resp.chunk()) => {
                    r.map(|r| r.map(|c| c.map(|c| c.to_vec())))
                }
                () = tx.closed() => {
                    tracing::debug!("engine request cancelled by the caller");
                    return; // dropping `resp` closes the connection: the backend stops generating
                }
            },
        };
        let failure = match next {
            Ok(Ok(Some(chunk))) => {
                tracker.push(&chunk);
                let mut data = chunk;
                if let Some(h) = held.as_mut() {
                    h.append(&mut data);
                } else if stream && tracker.usage().is_none() {
                    if head.is_none() {
                        head = event_head(&data);
                    }
                    if let Some(at) = done_at(&data) {
                        held = Some(data.split_off(at));
                    }
                }
                if !data.is_empty() && tx.send(BodyEvent::Data(data)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => Some(EngineError::Protocol(format!("body broke off: {e}"))),
            Err(_) => Some(EngineError::Timeout(timeout)),
        };
        let reported = tracker.usage();
        let (usage, counted_locally) = match reported {
            Some(u) => (u, false),
            None => match local(&tracker) {
                Some(u) => (u, true),
                None => match probe {
                    // A whole stream without usage: its pieces, and the prompt as the
                    // engine counts it.
                    Some(probe) if failure.is_none() && tracker.generated_pieces() > 0 => {
                        let prompt = probe_prompt_tokens(probe, deadline).await.unwrap_or(0);
                        (Usage::new(prompt, tracker.generated_pieces()), true)
                    }
                    _ => (Usage::default(), false),
                },
            },
        };
        if stream && counted_locally && failure.is_none() {
            let _ = tx
                .send(BodyEvent::Data(usage_event(head.take(), &usage)))
                .await;
        }
        if let Some(h) = held.take() {
            let _ = tx.send(BodyEvent::Data(h)).await;
        }
        let ev = match failure {
            None => BodyEvent::End {
                usage,
                counted_locally,
            },
            Some(error) => BodyEvent::Failed { error, usage },
        };
        let _ = tx.send(ev).await;
        return;
    }
}

impl Engine for HttpEngine {
    fn submit(&self, req: EngineRequest) -> BoxFuture<'_, Result<EngineResponse, EngineError>> {
        Box::pin(self.submit_inner(req))
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let down = |reason: String| Health {
                up: false,
                reason: Some(reason),
            };
            let probe = self.request(reqwest::Method::GET, "/v1/models").send();
            let resp = match tokio::time::timeout(Duration::from_secs(10), probe).await {
                Err(_) => return down("GET /v1/models timed out".into()),
                Ok(Err(e)) => return down(format!("GET /v1/models: {e}")),
                Ok(Ok(r)) => r,
            };
            if !resp.status().is_success() {
                return down(format!("GET /v1/models: HTTP {}", resp.status()));
            }
            let Ok(v) = resp.json::<Value>().await else {
                return down("GET /v1/models: not JSON".into());
            };
            let want = self.cfg.served_model.as_deref().unwrap_or(&self.cfg.model);
            let served = v
                .get("data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("id").and_then(Value::as_str))
                .any(|id| id == want);
            if served {
                Health {
                    up: true,
                    reason: None,
                }
            } else {
                down(format!("backend does not serve model '{want}'"))
            }
        })
    }

    fn model_info(&self) -> ModelInfo {
        ModelInfo {
            name: self.cfg.model.clone(),
            engine: self.cfg.kind.label().into(),
            context_length: self.cfg.context_length,
            max_concurrency: self.cfg.max_concurrency,
            // The backend is someone else's server: chat completions is what the worker relays
            // and checks it serves; the rest it cannot know.
            capabilities: cocoon_openai::Capabilities {
                chat: Some(true),
                ..Default::default()
            },
        }
    }
}
