//! `HttpEngine` against an OpenAI-compatible server on loopback.
//!
//! The server replays `data/vllm_chat_stream.sse`, a chat stream in the exact shape vLLM's
//! OpenAI server emits with `stream_options.include_usage` (role chunk, content chunks,
//! finish chunk, a usage chunk with empty `choices`, `[DONE]`), cut into chunks at adversarial
//! places: every byte, inside the UTF-8 of "ç" and "—", and at random offsets.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cocoon_engine::{
    BackendKind, BodyEvent, Engine, EngineError, EngineRequest, HttpEngine, HttpEngineConfig,
    Tokenizer,
};
use cocoon_openai::{Endpoint, Usage};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const TRANSCRIPT: &str = include_str!("data/vllm_chat_stream.sse");

#[derive(Clone, Default)]
struct Shared {
    cancelled: Arc<AtomicBool>,
    last_model: Arc<std::sync::Mutex<String>>,
    requests: Arc<AtomicUsize>,
}

fn split(bytes: &[u8], mode: &str) -> Vec<Vec<u8>> {
    match mode {
        "bytes" => bytes.iter().map(|b| vec![*b]).collect(),
        "utf8" => {
            // Cut in the middle of every multi-byte character.
            let mut out = Vec::new();
            let mut start = 0;
            for (i, b) in bytes.iter().enumerate() {
                if *b >= 0xC0 {
                    out.push(bytes[start..=i].to_vec());
                    start = i + 1;
                }
            }
            out.push(bytes[start..].to_vec());
            out
        }
        m => {
            let seed: usize = m.trim_start_matches("rand").parse().unwrap_or(1);
            let mut out = Vec::new();
            let mut start = 0;
            let mut x = seed.wrapping_mul(2654435761) | 1;
            while start < bytes.len() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = 1 + x % 23;
                let end = (start + n).min(bytes.len());
                out.push(bytes[start..end].to_vec());
                start = end;
            }
            out
        }
    }
}

async fn chat(
    State(s): State<Shared>,
    Path(mode): Path<String>,
    body: axum::Json<Value>,
) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    *s.last_model.lock().unwrap() = body["model"].as_str().unwrap_or("").to_owned();
    match mode.as_str() {
        "error400" => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"object":"error","message":"max_tokens is too large","type":"BadRequestError","code":400})),
        )
            .into_response(),
        "param400" => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "logprobs are not supported", "type": "invalid_request_error", "param": "logprobs", "code": "unsupported_parameter"}})),
        )
            .into_response(),
        "odd422" => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": {"message": "no", "param": "a b", "code": "free text"}})),
        )
            .into_response(),
        "denied" => (StatusCode::UNAUTHORIZED, "bad key").into_response(),
        "busy" => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        "json" => axum::Json(json!({
            "id": "cmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there friend"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
        }))
        .into_response(),
        // As llama-cpp-python's server with a prompt over its context: a stream is a 200
        // that breaks before its first byte, the whole request says why.
        "dropfirst" if body["stream"] == true => {
            let stream = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<Vec<u8>, _>(std::io::Error::other("Requested tokens exceed context window"))
            });
            ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
        }
        "dropfirst" => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested 2131 tokens (2115 in the messages, 16 in the completion).", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})),
        )
            .into_response(),
        // As llama-cpp-python's server: no usage in a stream although asked, usage in a
        // whole answer (the prompt probe: one token at most).
        "nousage" if body["stream"] != true => {
            assert_eq!(body["max_tokens"], 1, "{}", body.0);
            assert!(body.get("stream_options").is_none(), "{}", body.0);
            axum::Json(json!({
                "id": "cmpl-p", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "un"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}
            }))
            .into_response()
        }
        "nousage" => {
            let s = "data: {\"id\":\"c-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one two\"}}]}\n\n\
                     data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" three\"}}]}\n\ndata: [DONE]\n\n";
            ([("content-type", "text/event-stream")], s).into_response()
        }
        "dropmid" => {
            let first = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"alpha beta\"}}]}\n\n";
            let stream = futures::stream::unfold(0u8, move |n| async move {
                match n {
                    0 => Some((Ok(first.as_bytes().to_vec()), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("backend crashed")), 2))
                    }
                    _ => None,
                }
            });
            ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
        }
        "stall" | "endless" => {
            let cancelled = s.cancelled.clone();
            let endless = mode == "endless";
            let stream = async_stream(cancelled, endless);
            ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
        }
        m => {
            let parts = split(TRANSCRIPT.as_bytes(), m);
            let stream = futures::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
            ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
        }
    }
}

/// Emits a chunk every 20 ms (`endless`) or one chunk and then nothing (`stall`); records being
/// dropped, which is how the server sees a client that went away.
fn async_stream(
    cancelled: Arc<AtomicBool>,
    endless: bool,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct Guard(Arc<AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let guard = Guard(cancelled);
    futures::stream::unfold((guard, 0u32), move |(g, n)| async move {
        if n > 0 {
            let wait = if endless { 20 } else { 60_000 };
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let chunk = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{n} \"}}}}]}}\n\n");
        Some((Ok(chunk.into_bytes()), (g, n + 1)))
    })
}

/// `/v1/embeddings`: a vector per input, with usage (mode `json`) or without (`nousage`);
/// mode `none` has no embeddings (404, as a chat-only server answers).
async fn embeddings(
    Path(mode): Path<String>,
    State(st): State<Shared>,
    body: axum::Json<Value>,
) -> Response {
    if mode == "none" {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    *st.last_model.lock().unwrap() = body["model"].as_str().unwrap_or_default().to_owned();
    let n = body["input"].as_array().map_or(1, Vec::len);
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.6, 0.8]}))
        .collect();
    let mut answer = json!({"object": "list", "data": data, "model": body["model"]});
    if mode == "json" {
        answer["usage"] = json!({"prompt_tokens": 5, "total_tokens": 5});
    }
    axum::Json(answer).into_response()
}

async fn server() -> (String, Shared) {
    let shared = Shared::default();
    let app = Router::new()
        .route("/{mode}/v1/chat/completions", post(chat))
        .route("/{mode}/v1/embeddings", post(embeddings))
        .route(
            "/{mode}/v1/models",
            get(|Path(mode): Path<String>| async move {
                if mode == "down" {
                    return (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response();
                }
                axum::Json(json!({"object":"list","data":[{"id":"smol-served","object":"model"}]}))
                    .into_response()
            }),
        )
        .with_state(shared.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), shared)
}

fn engine(base: &str, mode: &str) -> HttpEngine {
    let mut cfg = HttpEngineConfig::new(
        format!("{base}/{mode}"),
        BackendKind::Vllm,
        "SmolLM2-135M-Instruct",
    );
    cfg.served_model = Some("smol-served".into());
    HttpEngine::new(cfg).unwrap()
}

fn request(stream: bool, timeout: Duration) -> EngineRequest {
    let body = json!({
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "Translate to French: hello world"}],
        "stream": stream,
    });
    EngineRequest {
        endpoint: Endpoint::ChatCompletions,
        body: body.as_object().unwrap().clone(),
        stream,
        timeout,
    }
}

/// A streamed request through `e`, read to its end: (body bytes, last event).
async fn stream_through(e: &HttpEngine) -> (Vec<u8>, BodyEvent) {
    let resp = e
        .submit(request(true, Duration::from_secs(10)))
        .await
        .unwrap();
    collect(resp.body).await
}

async fn collect(mut rx: tokio::sync::mpsc::Receiver<BodyEvent>) -> (Vec<u8>, BodyEvent) {
    let mut body = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            BodyEvent::Data(d) => body.extend(d),
            end => return (body, end),
        }
    }
    panic!("body channel closed without an end event");
}

/// Counts whitespace-separated words: a real tokenizer for a toy vocabulary.
struct Words;
impl Tokenizer for Words {
    fn count(&self, text: &str) -> Result<u64, String> {
        Ok(text.split_whitespace().count() as u64)
    }
}

#[tokio::test]
async fn streamed_usage_survives_adversarial_chunking_and_body_is_relayed_exactly() {
    let (base, shared) = server().await;
    for mode in ["bytes", "utf8", "rand1", "rand2", "rand3", "whole"] {
        let e = engine(&base, mode);
        let resp = e
            .submit(request(true, Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.content_type, "text/event-stream");
        let (body, end) = collect(resp.body).await;
        assert_eq!(
            body,
            TRANSCRIPT.as_bytes(),
            "{mode}: body must be byte-identical"
        );
        let mut want = Usage::new(31, 9);
        want.prompt_tokens_details =
            Some(cocoon_openai::usage::PromptTokensDetails { cached_tokens: 16 });
        assert_eq!(
            end,
            BodyEvent::End {
                usage: want,
                counted_locally: false
            },
            "{mode}"
        );
    }
    assert_eq!(
        *shared.last_model.lock().unwrap(),
        "smol-served",
        "model name is rewritten"
    );
}

#[tokio::test]
async fn non_streamed_json_usage() {
    let (base, _) = server().await;
    let resp = engine(&base, "json")
        .submit(request(false, Duration::from_secs(10)))
        .await
        .unwrap();
    let (body, end) = collect(resp.body).await;
    assert!(serde_json::from_slice::<Value>(&body).is_ok());
    assert_eq!(
        end,
        BodyEvent::End {
            usage: Usage::new(12, 4),
            counted_locally: false
        }
    );
}

#[tokio::test]
async fn missing_usage_is_counted_with_the_tokenizer() {
    let (base, _) = server().await;
    let e = engine(&base, "nousage").with_tokenizer(Arc::new(Words));
    let (_, end) = stream_through(&e).await;
    // prompt "Translate to French: hello world" = 5 words; completion "one two three" = 3.
    assert_eq!(
        end,
        BodyEvent::End {
            usage: Usage::new(5, 3),
            counted_locally: true
        }
    );
    // Without a tokenizer: the completion is the streamed pieces (2), the prompt what the
    // server reports for the same request whole (7), and the app gets OpenAI's usage chunk
    // before `[DONE]`.
    let (s, shared) = server().await;
    let (body, end) = stream_through(&engine(&s, "nousage")).await;
    assert_eq!(
        end,
        BodyEvent::End {
            usage: Usage::new(7, 2),
            counted_locally: true
        }
    );
    assert_eq!(
        shared.requests.load(Ordering::SeqCst),
        2,
        "one stream, one probe"
    );
    let text = String::from_utf8(body).unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.len(), 4, "{text}");
    assert_eq!(events[3], "[DONE]", "{text}");
    let u: Value = serde_json::from_str(events[2]).unwrap();
    assert_eq!(
        u,
        json!({"id": "c-1", "object": "chat.completion.chunk", "created": 5, "model": "m",
            "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}),
        "{text}"
    );
}

#[tokio::test]
async fn failure_mid_stream_reports_usage_so_far_once() {
    let (base, _) = server().await;
    let e = engine(&base, "dropmid").with_tokenizer(Arc::new(Words));
    let (body, end) = stream_through(&e).await;
    assert!(String::from_utf8_lossy(&body).contains("alpha beta"));
    match end {
        BodyEvent::Failed {
            error: EngineError::Protocol(_),
            usage,
        } => {
            assert_eq!(usage, Usage::new(5, 2));
        }
        other => panic!("expected a protocol failure, got {other:?}"),
    }
}

#[tokio::test]
async fn error_statuses_timeouts_and_unreachable() {
    let (base, _) = server().await;
    let err = engine(&base, "error400")
        .submit(request(false, Duration::from_secs(5)))
        .await
        .unwrap_err();
    // A refusal of the request as asked is the app's fault (a 400 for it), with the
    // engine's OpenAI `param` and `code` when it gives them; other statuses are the engine's.
    assert_eq!(
        err,
        EngineError::Invalid(cocoon_openai::ApiError::new(
            cocoon_openai::ErrorKind::InvalidRequest,
            "max_tokens is too large"
        ))
    );
    let err = engine(&base, "param400")
        .submit(request(false, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::invalid(
            "logprobs",
            "unsupported_parameter",
            "logprobs are not supported"
        )
    );
    let err = engine(&base, "odd422")
        .submit(request(false, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::Invalid(cocoon_openai::ApiError::new(
            cocoon_openai::ErrorKind::InvalidRequest,
            "no"
        ))
    );
    let err = engine(&base, "denied")
        .submit(request(false, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::Status {
            status: 401,
            message: "bad key".into()
        }
    );
    let err = engine(&base, "busy")
        .submit(request(false, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Busy(ref m) if m == "slow down"),
        "{err:?}"
    );

    let resp = engine(&base, "stall")
        .submit(request(true, Duration::from_millis(300)))
        .await
        .unwrap();
    let (_, end) = collect(resp.body).await;
    assert!(
        matches!(
            end,
            BodyEvent::Failed {
                error: EngineError::Timeout(_),
                ..
            }
        ),
        "{end:?}"
    );

    // Nothing listens on port 9 of loopback.
    let cfg = HttpEngineConfig::new("http://127.0.0.1:9", BackendKind::LlamaServer, "m");
    let err = HttpEngine::new(cfg)
        .unwrap()
        .submit(request(false, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn dropping_the_receiver_cancels_the_backend_request() {
    let (base, shared) = server().await;
    let resp = engine(&base, "endless")
        .submit(request(true, Duration::from_secs(30)))
        .await
        .unwrap();
    let mut rx = resp.body;
    assert!(matches!(rx.recv().await, Some(BodyEvent::Data(_))));
    drop(rx);
    for _ in 0..100 {
        if shared.cancelled.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the backend never saw the request go away");
}

#[tokio::test]
async fn health_probe() {
    let (base, _) = server().await;
    let up = engine(&base, "whole").health().await;
    assert!(up.up, "{up:?}");
    let down = engine(&base, "down").health().await;
    assert!(!down.up && down.reason.unwrap().contains("503"));
    let mut cfg =
        HttpEngineConfig::new(format!("{base}/whole"), BackendKind::Ollama, "other-model");
    cfg.api_key = Some("secret-key".into());
    assert!(!format!("{cfg:?}").contains("secret-key"));
    let e = HttpEngine::new(cfg).unwrap();
    let h = e.health().await;
    assert!(
        h.reason
            .unwrap()
            .contains("does not serve model 'other-model'")
    );
    assert_eq!(e.model_info().engine, "ollama");
}

fn embeddings_request() -> EngineRequest {
    let body = json!({"model": "SmolLM2-135M-Instruct", "input": ["one two", "three"]});
    EngineRequest {
        endpoint: Endpoint::Embeddings,
        body: body.as_object().unwrap().clone(),
        stream: false,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn embeddings_pass_through_billed_as_prompt_tokens() {
    let (base, shared) = server().await;
    let resp = engine(&base, "json")
        .submit(embeddings_request())
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let (body, end) = collect(resp.body).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(*shared.last_model.lock().unwrap(), "smol-served");
    assert_eq!(
        end,
        BodyEvent::End {
            usage: Usage::new(5, 0),
            counted_locally: false
        }
    );
    // No usage from the server: the inputs are counted with the model's tokenizer.
    let e = engine(&base, "nousage").with_tokenizer(Arc::new(Words));
    let (_, end) = collect(e.submit(embeddings_request()).await.unwrap().body).await;
    assert_eq!(
        end,
        BodyEvent::End {
            usage: Usage::new(3, 0),
            counted_locally: true
        }
    );
    // A server without embeddings: the app's 400, not a bad gateway.
    match engine(&base, "none").submit(embeddings_request()).await {
        Err(EngineError::Invalid(e)) => {
            assert_eq!(e.param.as_deref(), Some("model"));
            assert!(
                e.message.contains("does not support embeddings"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 400, got {:?}", other.map(|r| r.status)),
    }
}

#[tokio::test]
async fn a_stream_dropped_before_its_first_byte_is_refused_with_the_servers_reason() {
    let (base, shared) = server().await;
    let err = engine(&base, "dropfirst")
        .submit(request(true, Duration::from_secs(10)))
        .await
        .unwrap_err();
    let EngineError::Invalid(e) = &err else {
        panic!("expected the app's 400, got {err:?}");
    };
    assert_eq!(e.param.as_deref(), Some("messages"), "{e:?}");
    assert_eq!(e.code, Some("context_length_exceeded"), "{e:?}");
    assert!(
        e.message
            .starts_with("This model's maximum context length is 2048"),
        "{e:?}"
    );
    assert_eq!(
        shared.requests.load(Ordering::SeqCst),
        2,
        "the stream, then whole"
    );
}
