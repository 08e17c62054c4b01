//! The HTTP API: OpenAI's endpoints, stats and controls, all behind the browser guard.
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions`: the engine's answer byte for byte
//!   (SSE streamed as it arrives, usage in the final chunk), with `X-Cocoon-Proxy`,
//!   `X-Cocoon-Attempts` and `X-Cocoon-Time-To-Head-Ms` headers; a non-streamed answer also
//!   carries `X-Cocoon-Tokens`, `X-Cocoon-Cost-Nanoton`, `X-Cocoon-Proxy-Seconds` and
//!   `X-Cocoon-Worker-Seconds`. As COCOON's client does, every answer's head carries
//!   `X-Cocoon-Client-Start/End` (beside the proxy's and the worker's), its usage COCOON's
//!   `*_total_cost` fields at the figure booked, and with `enable_debug` the debug object
//!   (see [`crate::extras`]). Errors are OpenAI error bodies (with `enable_debug`, a
//!   `debug` member beside `error` once an answer had begun): 400 bad request, 401 bad
//!   key, 402 out of funds (channel or key limit), 404 unknown model, 413 body too large,
//!   429 no capacity (with `Retry-After`), 502 upstream failure, 503 no proxy, 504 deadline.
//! - `POST /v1/embeddings`: as the completions, one JSON answer (never streamed), billed as
//!   prompt tokens only; sent only to proxies that agreed on protocol version 3, which route
//!   it only to workers that embed (docs/protocol.md).
//! - `POST /v1/responses`: OpenAI's Responses API, the stateless subset (see
//!   [`cocoon_openai::responses`]), served as a chat completion (same keys, billing,
//!   receipts, failover and headers) and mapped back: a `response` object, or Responses
//!   events mapped from the chat stream chunk by chunk. `store: true` and
//!   `previous_response_id` are 400s.
//! - `GET /v1/models`, `GET /v1/models/{id}`: the models the proxies' workers serve, OpenAI's
//!   list shape plus a per-worker `workers` array, the proxies offering each and its
//!   `context_length` (the smallest its workers announced over version 3; null when unknown)
//!   and `capabilities` (`chat`, `completions`, `embeddings`, `tools`, `json_schema`,
//!   `vision`, `logprobs`: true or false where every worker's engine knows, null where one
//!   does not or the proxy does not speak version 3; see [`cocoon_openai::Capabilities`]).
//! - `GET /stats` (HTML), `/jsonstats`, `/metrics` (Prometheus text): proxies with their
//!   attestation facts, channels, receipts, requests and spending; never request contents.
//! - `POST /control/{topup,charge,withdraw,close}?proxy=<address>[&amount=<TON>]`: channel
//!   operations, behind the bearer token of `admin_token_file`.
//! - `GET /request/debuglogentry?request_guid=…`: outcome, usage, timings and debug JSON of a
//!   recent request that named that `request_guid`.
//!
//! Every route is behind [`cocoon_service::browser::Guard`]: a `Host` that is not loopback,
//! the bound address or in `allowed_hosts` is refused (DNS rebinding), so is an `Origin` not
//! our own nor in `allowed_origins` (preflights from it get no CORS grant), and a body not
//! declared `application/json` is 415; refusals are OpenAI error bodies. Only allowed
//! origins get CORS headers, with their own origin (never `*`), so a web page the user opens
//! can neither spend the channel nor read an answer, the stats or the debug log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cocoon_openai::{ApiError, Endpoint, ErrorKind, responses};
use cocoon_service::admin::{Prometheus, StatsPages, constant_time_eq, esc, label, stats_routes};
use cocoon_service::browser::{Allowlist, Guard, Refusal};
use cocoon_service::webui::chart::{self, ChartOpts, Series};
use cocoon_service::webui::fmt;
use cocoon_service::webui::html::{Card, Cell, Control, Page, Table, Tone};
use cocoon_service::webui::series::{self, History, Mode, Span};
use cocoon_tl::enums;
use cocoon_tl::functions::client as fclient;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Shared;
use crate::request::{MAX_ANSWER_BYTES, Request};

/// Reads the control token (first line, trimmed); an empty file is an error.
pub(crate) fn read_token(path: &Path) -> Result<String, String> {
    cocoon_service::admin::read_token(path)
}

type St = State<Arc<Shared>>;

/// Response headers an allowed origin's page may read.
const EXPOSED: &str = "x-cocoon-proxy, x-cocoon-attempts, x-cocoon-time-to-head-ms, \
                       x-cocoon-tokens, x-cocoon-cost-nanoton, x-cocoon-proxy-seconds, \
                       x-cocoon-worker-seconds, x-cocoon-client-start, x-cocoon-client-end, \
                       x-cocoon-proxy-start, x-cocoon-proxy-end, x-cocoon-worker-start, \
                       x-cocoon-worker-end, x-cocoon-receipt, retry-after";

pub(crate) async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    browser: Allowlist,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| e.to_string())?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let shared_for_sampler = Arc::clone(&shared);
    let routes = Router::new()
        .route(
            "/v1/chat/completions",
            post(|st: St, h: HeaderMap, b: Body| complete(st, h, b, Endpoint::ChatCompletions)),
        )
        .route(
            "/v1/completions",
            post(|st: St, h: HeaderMap, b: Body| complete(st, h, b, Endpoint::Completions)),
        )
        .route(
            "/v1/embeddings",
            post(|st: St, h: HeaderMap, b: Body| complete(st, h, b, Endpoint::Embeddings)),
        )
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/receipts/{id}", get(receipt))
        .merge(stats_routes::<Shared, Arc<Shared>>())
        .route("/control/{action}", post(control))
        .route("/request/debuglogentry", get(debug_entry))
        .fallback(fallback)
        .layer(DefaultBodyLimit::disable());
    let app = Guard::new(browser, bound, refused)
        .expose_headers(EXPOSED)
        .apply(routes)
        .with_state(shared);
    // Streamed answers are many small writes: without TCP_NODELAY each one waits for the
    // reader's delayed ACK (about 40 ms per answer on a keep-alive connection).
    let listener = axum::serve::ListenerExt::tap_io(listener, |s| {
        let _ = s.set_nodelay(true);
    });
    let sampler = cocoon_service::admin::spawn_sampler(shared_for_sampler, stop.clone());
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP API stopped");
        }
        let _ = sampler.await;
    });
    Ok((bound, task))
}

/// A refusal of the browser guard as an OpenAI error body.
fn refused(r: &Refusal) -> Response {
    let kind = match r {
        Refusal::NotJson(_) | Refusal::NoHost => "invalid_request_error",
        Refusal::ForeignHost(_) | Refusal::ForeignOrigin(_) => "permission_error",
    };
    let body = json!({"error": {
        "message": r.to_string(),
        "type": kind,
        "param": null,
        "code": r.code(),
    }});
    (
        r.status(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn fallback() -> Response {
    error(ApiError::new(ErrorKind::NotFound, "unknown path"))
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        e.to_body(),
    )
        .into_response();
    with_retry_after(r, &e)
}

/// A 429 says when to ask again (`Retry-After`, seconds), as OpenAI's does: the official
/// SDKs wait that long and retry on their own.
fn with_retry_after(mut r: Response, e: &ApiError) -> Response {
    if e.kind == ErrorKind::NoCapacity {
        let secs = crate::request::retry_after_secs(&e.message);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// An error ending an answer; with `enable_debug`, COCOON's debug object beside it.
fn error_with_debug(e: ApiError, debug: Option<Value>) -> Response {
    let Some(d) = debug else {
        return error(e);
    };
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = e.to_json();
    if let Some(o) = body.as_object_mut() {
        o.insert("debug".into(), d);
    }
    let r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    with_retry_after(r, &e)
}

fn bearer(h: &HeaderMap) -> Option<String> {
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let t = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v);
        return Some(t.trim().to_owned());
    }
    h.get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

fn set(h: &mut HeaderMap, name: &'static str, v: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
        h.insert(HeaderName::from_static(name), v);
    }
}

async fn complete(
    State(shared): St,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    let bytes = match read_body(&shared, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req = Request {
        endpoint,
        body: bytes.to_vec(),
        api_key: bearer(&headers),
    };
    let mut answer = match shared.start_request(req).await {
        Ok(a) => a,
        Err(e) => return error(e),
    };
    let (status, mut h) = answer_head(&answer);
    if answer.stream {
        let stream = futures::stream::unfold((answer, false), |(mut a, ended)| async move {
            if ended {
                return None;
            }
            match a.next_chunk().await {
                None => None,
                Some(Ok(b)) => Some((Ok::<_, std::io::Error>(b), (a, false))),
                Some(Err(e)) => {
                    // The head is gone; the error travels as a last SSE event.
                    let ev = format!("data: {}\n\n", e.to_json());
                    Some((Ok(bytes::Bytes::from(ev)), (a, true)))
                }
            }
        });
        let mut r = Response::new(Body::from_stream(stream));
        *r.status_mut() = status;
        *r.headers_mut() = h;
        return r;
    }
    let body = match whole_body(&mut answer).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    usage_headers(&answer, &mut h);
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    *r.headers_mut() = h;
    r
}

/// Reads a request body up to `max_body_bytes` (413 past it).
async fn read_body(shared: &Shared, body: Body) -> Result<bytes::Bytes, Response> {
    let limit = shared.timings.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        error(if too_large {
            ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!("request body over {limit} bytes"),
            )
        } else {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("unreadable request body: {e}"),
            )
        })
    })
}

/// The status and headers of an answer's head: the engine's headers (with the receipt's
/// and the timings), and which proxy served it after how many attempts.
fn answer_head(answer: &crate::request::Answer) -> (StatusCode, HeaderMap) {
    let mut h = HeaderMap::new();
    for (n, v) in &answer.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(n.as_str()), HeaderValue::from_str(v)) {
            h.append(n, v);
        }
    }
    set(&mut h, "x-cocoon-proxy", &answer.proxy);
    set(&mut h, "x-cocoon-attempts", answer.attempts);
    set(
        &mut h,
        "x-cocoon-time-to-head-ms",
        answer.time_to_head.as_millis(),
    );
    // A final answer is 2xx–5xx; anything else from upstream is a bad gateway.
    let status = StatusCode::from_u16(answer.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(StatusCode::BAD_GATEWAY);
    (status, h)
}

/// The billing headers of a whole answer, once its body ended.
fn usage_headers(answer: &crate::request::Answer, h: &mut HeaderMap) {
    if let Some(u) = answer.usage() {
        set(h, "x-cocoon-tokens", u.total_tokens);
        set(h, "x-cocoon-cost-nanoton", u.cost_nanoton);
        if let Some(s) = u.proxy_seconds {
            set(h, "x-cocoon-proxy-seconds", format!("{s:.3}"));
        }
        if let Some(s) = u.worker_seconds {
            set(h, "x-cocoon-worker-seconds", format!("{s:.3}"));
        }
    }
}

/// A chat-side refusal in the Responses request's terms (`max_tokens` is
/// `max_output_tokens`, `messages…` is `input`).
fn responses_error(mut e: ApiError) -> Response {
    if let Some(p) = &e.param {
        e.param = Some(responses::rename_param(p));
    }
    error(e)
}

/// `POST /v1/responses`: OpenAI's Responses API, the stateless subset, served as a chat
/// completion through the same path (keys, billing, receipts, failover) and its answer
/// mapped back (see [`cocoon_openai::responses`]); streamed answers are mapped chunk by
/// chunk.
async fn responses(State(shared): St, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_body(&shared, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = match cocoon_openai::validate::parse_strict(&bytes) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let chat = match responses::to_chat(&parsed) {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    let ids = responses::Ids {
        id: hex::encode(rand::random::<[u8; 16]>()),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let model = chat.body["model"].clone();
    let req = Request {
        endpoint: Endpoint::ChatCompletions,
        body: serde_json::to_vec(&chat.body).unwrap_or_default(),
        api_key: bearer(&headers),
    };
    let mut answer = match shared.start_request(req).await {
        Ok(a) => a,
        Err(e) => return responses_error(e),
    };
    let (status, mut h) = answer_head(&answer);
    // The body is ours now: the engine's framing headers do not describe it.
    for n in [header::CONTENT_LENGTH, header::CONTENT_TYPE] {
        h.remove(n);
    }
    if !status.is_success() {
        // An engine's own error body (OpenAI's shape) goes back as it came.
        let mut body = Vec::new();
        while let Some(Ok(c)) = answer.next_chunk().await {
            if body.len() + c.len() > MAX_ANSWER_BYTES {
                break;
            }
            body.extend_from_slice(&c);
        }
        if let Ok(mut v) = serde_json::from_slice::<Value>(&body)
            && let Some(p) = v["error"]["param"].as_str()
        {
            v["error"]["param"] = json!(responses::rename_param(p));
            body = v.to_string().into_bytes();
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        *r.headers_mut() = h;
        return r;
    }
    if answer.stream {
        let mapper = responses::StreamMapper::new(ids, chat.echo, model, MAX_ANSWER_BYTES);
        let stream = futures::stream::unfold((answer, mapper), |(mut a, mut m)| async move {
            loop {
                if m.ended() {
                    return None;
                }
                let out = match a.next_chunk().await {
                    Some(Ok(b)) => m.push(&b),
                    // The head is gone; the error travels as a last event.
                    Some(Err(e)) => m.fail(&e),
                    None => m.finish(),
                };
                if !out.is_empty() {
                    return Some((Ok::<_, std::io::Error>(bytes::Bytes::from(out)), (a, m)));
                }
            }
        });
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let mut r = Response::new(Body::from_stream(stream));
        *r.status_mut() = status;
        *r.headers_mut() = h;
        return r;
    }
    let body = match whole_body(&mut answer).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    usage_headers(&answer, &mut h);
    let whole = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(ApiError::new(
                ErrorKind::Upstream,
                format!("the engine's answer: {e}"),
            ));
        }
    };
    if chat.stream {
        // A stream was asked of an engine that answered whole: its events all at once.
        let mut m = responses::StreamMapper::new(ids, chat.echo, model, MAX_ANSWER_BYTES);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        let mut r = Response::new(Body::from(m.push_whole(&whole)));
        *r.status_mut() = status;
        *r.headers_mut() = h;
        return r;
    }
    let v = match responses::from_chat(&whole, &chat.echo, &ids) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    *r.headers_mut() = h;
    r
}

/// Models from every ready proxy, merged by name.
pub(crate) async fn model_list(shared: &Shared) -> Vec<Value> {
    let mut by_name: BTreeMap<String, (Vec<Value>, Vec<String>)> = BTreeMap::new();
    let queries = shared.slots().into_iter().filter_map(|s| {
        let link = s.ready()?;
        let timeout = shared.timings.models_timeout;
        Some(async move {
            let r: Result<enums::client::WorkerTypesV2, _> = link
                .handle
                .query_tl(&fclient::GetWorkerTypesV2 {}, timeout)
                .await;
            // Version 3 (ours): the context lengths the model's workers announced.
            let info = if link.proto >= 3 {
                let i: Result<enums::client::ModelInfos, _> = link
                    .handle
                    .query_tl(&fclient::GetModelInfo {}, timeout)
                    .await;
                i.ok()
            } else {
                None
            };
            (s.address.clone(), r, info)
        })
    });
    let mut context: BTreeMap<String, u32> = BTreeMap::new();
    let mut caps: BTreeMap<String, cocoon_openai::Capabilities> = BTreeMap::new();
    for (addr, r, info) in futures::future::join_all(queries).await {
        let Ok(enums::client::WorkerTypesV2::WorkerTypesV2(t)) = r else {
            continue;
        };
        // What this proxy's workers of each model support (unknown for a proxy that does not
        // speak version 3): a request may go to any of them.
        let mut here: BTreeMap<String, cocoon_openai::Capabilities> = BTreeMap::new();
        if let Some(enums::client::ModelInfos::ModelInfos(i)) = info {
            for m in i.models {
                let k =
                    cocoon_openai::Capabilities::from_bits(m.capabilities_known, m.capabilities);
                here.insert(m.name.clone(), k);
                if let Ok(n @ 1..) = u32::try_from(m.context_length) {
                    let c = context.entry(m.name).or_insert(n);
                    *c = (*c).min(n);
                }
            }
        }
        for ty in t.types {
            let k = here.get(&ty.name).copied().unwrap_or_default();
            caps.entry(ty.name.clone())
                .and_modify(|c| *c = c.common(k))
                .or_insert(k);
            let e = by_name.entry(ty.name).or_default();
            for w in ty.workers {
                e.0.push(json!({
                    "coefficient": w.coefficient,
                    "running_requests": w.active_requests,
                    "max_running_requests": w.max_active_requests,
                    "proxy": addr,
                }));
            }
            e.1.push(addr.clone());
        }
    }
    by_name
        .into_iter()
        .map(|(id, (mut workers, proxies))| {
            workers.sort_by_key(|w| w["coefficient"].as_i64().unwrap_or(0));
            json!({
                "context_length": context.get(&id),
                "capabilities": caps.get(&id).copied().unwrap_or_default().to_json(),
                "id": id,
                "object": "model",
                "created": 0,
                "owned_by": "cocoon",
                "workers": workers,
                "proxies": proxies,
            })
        })
        .collect()
}

async fn models(State(shared): St) -> Response {
    if shared.slots().iter().all(|s| s.ready().is_none()) {
        return error(ApiError::new(
            ErrorKind::Unavailable,
            "no working proxy connections",
        ));
    }
    axum::Json(json!({"object": "list", "data": model_list(&shared).await})).into_response()
}

async fn model(State(shared): St, UrlPath(id): UrlPath<String>) -> Response {
    if shared.slots().iter().all(|s| s.ready().is_none()) {
        return error(ApiError::new(
            ErrorKind::Unavailable,
            "no working proxy connections",
        ));
    }
    match model_list(&shared)
        .await
        .into_iter()
        .find(|m| m["id"].as_str() == Some(id.as_str()))
    {
        Some(m) => axum::Json(m).into_response(),
        None => error(ApiError::new(
            ErrorKind::NotFound,
            format!("model {id:?} is not served by any connected proxy"),
        )),
    }
}

/// A whole (not streamed) answer's body as the app gets it (`Answer::finish_whole`), or
/// the error response: the answer failed, or it is over [`MAX_ANSWER_BYTES`] (dropping the
/// answer then cancels the request at the proxy).
async fn whole_body(answer: &mut crate::request::Answer) -> Result<Vec<u8>, Response> {
    let mut body = Vec::new();
    while let Some(c) = answer.next_chunk().await {
        match c {
            Ok(b) if body.len() + b.len() > MAX_ANSWER_BYTES => {
                return Err(error(ApiError::new(
                    ErrorKind::Upstream,
                    format!("the answer is over {MAX_ANSWER_BYTES} bytes; ask for a stream"),
                )));
            }
            Ok(b) => body.extend_from_slice(&b),
            Err(e) => return Err(error_with_debug(e, answer.debug_object())),
        }
    }
    Ok(answer.finish_whole(body))
}

/// `GET /v1/receipts/{id}`: an answer's verified receipt (the `X-Cocoon-Receipt` header of
/// its response names it). With API keys configured only the key that made the request
/// reads it; another key, or an id not held (never issued, or past the retention), is 404.
async fn receipt(State(shared): St, h: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    let caller = match (&shared.keys, bearer(&h)) {
        (None, _) => None,
        (Some(_), Some(k)) => Some(crate::keys::key_hash(&k)),
        (Some(_), None) => {
            return error(ApiError::new(
                ErrorKind::Authentication,
                "an API key is required",
            ));
        }
    };
    let not_found = || {
        error(ApiError::new(
            ErrorKind::NotFound,
            format!("no receipt {id:?} (receipts are kept for receipt_retention_days)"),
        ))
    };
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return not_found();
    }
    let id = id.to_ascii_lowercase();
    // An answer that just ended may have its receipt still on the way (it follows the
    // proxy's commit): wait for its check, as long as the check itself may wait.
    shared.late_receipts.wait(&id).await;
    match shared.store.answer_receipt(&id) {
        Ok(Some((owner, doc))) => {
            if caller.is_some() && owner != caller {
                return not_found();
            }
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                doc,
            )
                .into_response()
        }
        Ok(None) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, "could not read an answer receipt");
            error(ApiError::new(
                ErrorKind::Internal,
                "could not read the receipt",
            ))
        }
    }
}

/// The `/jsonstats` document.
/// What `/jsonstats` shows (and `Client::stats` returns): never request contents.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientStats {
    /// `ok` with at least one ready proxy, else `no proxy`.
    pub status: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Owner of the client contracts.
    pub owner_address: String,
    /// Test network.
    pub is_test: bool,
    /// A wallet funds the channels.
    pub wallet: bool,
    /// The root configuration in use.
    pub root: RootView,
    /// Proxies with a ready session.
    pub proxies_ready: usize,
    /// Every proxy slot.
    pub proxies: Vec<ProxyView>,
    /// Request counters.
    pub stats: crate::stats::Snapshot,
    /// Durable totals (requests, tokens, spent nanoTON...).
    pub totals: BTreeMap<String, u64>,
    /// Per-key figures, when API keys are configured.
    pub keys: Option<Vec<crate::keys::KeyStat>>,
    /// The last requests (newest last): model, outcome, tokens, cost, latency, receipt id.
    pub recent: Vec<crate::stats::RecentRequest>,
    /// Requests, tokens and spend per answered model since start.
    pub models: BTreeMap<String, crate::stats::ModelSpend>,
}

/// The root configuration in use.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RootView {
    /// Root configuration version.
    pub version: u32,
    /// Version of the params (prices, codes) the contracts use.
    pub params_version: u32,
    /// Network price per token, nanoTON.
    pub price_per_token: u64,
    /// Proxies the root registers.
    pub registered_proxies: usize,
}

/// A proxy slot and the requests in flight on it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyView {
    /// The proxy's state.
    #[serde(flatten)]
    pub info: crate::ProxyInfo,
    /// Requests in flight on it.
    pub running: u64,
}

pub(crate) fn json_stats(shared: &Shared) -> ClientStats {
    let root = shared.root();
    let slots = shared.slots();
    let proxies: Vec<ProxyView> = slots
        .iter()
        .map(|s| ProxyView {
            info: s.info(),
            running: s.inflight.load(std::sync::atomic::Ordering::Relaxed),
        })
        .collect();
    let ready = slots.iter().filter(|s| s.ready().is_some()).count();
    let (recent, models) = shared.recent.snapshot();
    ClientStats {
        status: if ready > 0 { "ok" } else { "no proxy" },
        uptime_seconds: shared.started.elapsed().as_secs(),
        owner_address: shared.owner_address.to_string(),
        is_test: shared.is_test,
        wallet: shared.channels.is_some(),
        root: RootView {
            version: root.version,
            params_version: root.params.params_version,
            price_per_token: root.params.price_per_token,
            registered_proxies: root.registered_proxies.len(),
        },
        proxies_ready: ready,
        proxies,
        stats: shared.stats.snapshot(),
        totals: shared
            .store
            .totals()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        keys: shared.keys.as_ref().map(|k| k.stats()),
        recent,
        models,
    }
}

/// `/jsonstats` is [`ClientStats`]; the page and the metrics read the counters and the
/// proxy sessions themselves, so they skip the snapshot (and its store query).
impl StatsPages for Shared {
    type Stats = ClientStats;

    fn stats(&self) -> ClientStats {
        json_stats(self)
    }

    fn page(&self, _: &ClientStats) -> Response {
        stats_html(self)
    }

    fn metrics(&self, _: &ClientStats) -> Prometheus {
        metrics(self)
    }

    fn stats_page(&self) -> Response {
        stats_html(self)
    }

    fn metrics_text(&self) -> Prometheus {
        metrics(self)
    }

    fn sample(&self, now: u64) {
        let s = self.stats.snapshot();
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.counter(H_REQUESTS, now, s.received);
        h.counter(H_FAILED, now, s.failed + s.refused);
        h.counter(H_TOKENS, now, s.tokens);
        h.counter(H_SPENT, now, s.spent_nanoton);
    }
}

/// The client's dashboard: traffic and spend figures and charts, spend per API key and per
/// model, each proxy with its verified attestation and payment channel, the last requests
/// with their cost, latency and receipt, and the channel controls.
fn stats_html(shared: &Shared) -> Response {
    let now = cocoon_service::admin::unix_now();
    let s = shared.stats.snapshot();
    let (recent, models) = shared.recent.snapshot();
    let slots: Vec<(crate::ProxyInfo, u64, bool)> = shared
        .slots()
        .iter()
        .map(|slot| {
            (
                slot.info(),
                slot.inflight.load(std::sync::atomic::Ordering::Relaxed),
                slot.ready().is_some(),
            )
        })
        .collect();
    let keys = shared.keys.as_ref().map(|k| k.stats());
    let h = shared.history.lock().unwrap_or_else(|p| p.into_inner());
    let page = dashboard(&DashboardData {
        shared,
        s: &s,
        recent: &recent,
        models: &models,
        slots: &slots,
        keys: keys.as_deref(),
        h: &h,
        now,
    });
    cocoon_service::admin::html_page(&page)
}

struct DashboardData<'a> {
    shared: &'a Shared,
    s: &'a crate::stats::Snapshot,
    recent: &'a [crate::stats::RecentRequest],
    models: &'a BTreeMap<String, crate::stats::ModelSpend>,
    slots: &'a [(crate::ProxyInfo, u64, bool)],
    keys: Option<&'a [crate::keys::KeyStat]>,
    h: &'a History,
    now: u64,
}

const H_REQUESTS: &str = "requests";
const H_FAILED: &str = "failed";
const H_TOKENS: &str = "tokens";
const H_SPENT: &str = "spent_nanoton";

fn channel_word(state: u8) -> (&'static str, Tone) {
    match state {
        0 => ("open", Tone::Good),
        1 => ("closing", Tone::Warn),
        2 => ("closed", Tone::Neutral),
        _ => ("unknown", Tone::Bad),
    }
}

fn dashboard(d: &DashboardData<'_>) -> Page {
    let (s, now, h) = (d.s, d.now, d.h);
    let root = d.shared.root();
    let ready = d.slots.iter().filter(|x| x.2).count();
    let mut p = Page::new("Cocoon client");
    p.subtitle(&format!(
        "owner {} · root config v{} · params v{}{}",
        d.shared.owner_address,
        root.version,
        root.params.params_version,
        if d.shared.is_test {
            " · test network"
        } else {
            ""
        }
    ))
    .footer(&format!(
        "{} · up {}",
        fmt::utc(now),
        fmt::secs(d.shared.started.elapsed().as_secs())
    ));
    if d.shared.channels.is_some() {
        let mut controls = Vec::new();
        for (i, _, _) in d.slots {
            let q = format!("?proxy={}", i.address);
            controls.push(
                Control::new(
                    &format!("Top up {} (TON)", i.address),
                    &format!("/control/topup{q}"),
                )
                .param("amount", "TON, e.g. 1.5"),
            );
            controls.push(Control::new(
                &format!("Charge {}", i.address),
                &format!("/control/charge{q}"),
            ));
            controls.push(Control::new(
                &format!("Withdraw {}", i.address),
                &format!("/control/withdraw{q}"),
            ));
            controls.push(
                Control::new(
                    &format!("Close {}", i.address),
                    &format!("/control/close{q}"),
                )
                .tone(Tone::Bad),
            );
        }
        p.controls(controls);
    }
    let balance: u64 = d
        .slots
        .iter()
        .filter_map(|x| x.0.channel.as_ref())
        .map(|c| c.balance)
        .sum();
    let stake: u64 = d
        .slots
        .iter()
        .filter_map(|x| x.0.channel.as_ref())
        .map(|c| c.stake)
        .sum();
    let verified = d.slots.iter().filter(|x| x.0.tee.is_some()).count();
    let bad_receipts: u64 = d.slots.iter().map(|x| x.0.bad_receipts).sum();
    let mut cards = vec![
        Card::new("Proxies ready", format!("{ready} / {}", d.slots.len()))
            .tone(Tone::of(ready > 0, Tone::Bad))
            .note(format!("{verified} attested"))
            .id("proxies_ready"),
        Card::new("Requests", fmt::thousands(s.received))
            .note(format!(
                "{} ok · {} failed · {} refused",
                fmt::thousands(s.succeeded),
                fmt::thousands(s.failed),
                fmt::thousands(s.refused)
            ))
            .id("received"),
        Card::new("Tokens", fmt::tokens(s.tokens)).id("tokens"),
        Card::new("Spent", fmt::ton(u128::from(s.spent_nanoton))).id("spent"),
        Card::new(
            "Mean request",
            fmt::millis((s.mean_seconds * 1000.0) as u64),
        ),
        Card::new("Receipts refused", fmt::thousands(bad_receipts)).tone(if bad_receipts == 0 {
            Tone::Good
        } else {
            Tone::Bad
        }),
    ];
    if d.shared.channels.is_some() {
        cards.push(
            Card::new("Channel balance", fmt::ton(u128::from(balance)))
                .note("prepaid, all proxies"),
        );
        cards.push(Card::new("Stake", fmt::ton(u128::from(stake))));
    }
    p.cards(&cards);
    let opts = ChartOpts::new(now);
    let day = |name: &str| series::downsample(&h.points(name, Span::Minutes, now), 288, Mode::Sum);
    let by_model: Vec<(String, f64)> = d
        .models
        .iter()
        .map(|(m, v)| (m.clone(), v.spent_nanoton as f64))
        .collect();
    let by_key: Vec<(String, f64)> = d
        .keys
        .unwrap_or_default()
        .iter()
        .map(|k| (k.name.clone(), k.spent_nanoton as f64))
        .collect();
    let mut panels = vec![
        (
            "Requests, last 5 min (per second)",
            chart::line_chart(
                &[
                    Series::new("requests", h.points(H_REQUESTS, Span::Seconds, now)),
                    Series::new("failed", h.points(H_FAILED, Span::Seconds, now)),
                ],
                &opts,
            ),
        ),
        (
            "Tokens, last 5 min (per second)",
            chart::line_chart(
                &[Series::new(
                    "tokens",
                    h.points(H_TOKENS, Span::Seconds, now),
                )],
                &opts,
            ),
        ),
        (
            "Spend, last 24 h (TON per 5 min)",
            chart::line_chart(
                &[Series::new("spent", day(H_SPENT))],
                &opts.format(chart::compact_ton),
            ),
        ),
        (
            "Spend per model (TON)",
            chart::bar_chart(&by_model, &opts.format(chart::compact_ton)),
        ),
    ];
    if d.keys.is_some() {
        panels.push((
            "Spend per API key (TON)",
            chart::bar_chart(&by_key, &opts.format(chart::compact_ton)),
        ));
    }
    p.panels(&panels);
    let mut t = Table::new(
        "Proxies and their attestation",
        &[
            "address",
            "state",
            "TEE",
            "image",
            "TCB",
            "verdict valid",
            "protocol",
            "auth",
            "proxy contract",
            "running",
            "requests",
            "receipts refused",
            "last error",
        ],
    )
    .empty("no proxies configured")
    .id("proxies");
    for (i, running, _) in d.slots {
        t.row(vec![
            Cell::Long(i.address.clone()),
            Cell::Badge(Tone::of(i.state == "ready", Tone::Warn), i.state.clone()),
            match i.tee {
                Some(b) => Cell::Badge(Tone::Good, b.to_string()),
                None => Cell::Text("–".into()),
            },
            Cell::Hash(i.image_hash.clone().unwrap_or_default()),
            Cell::Text(i.tcb_status.clone().unwrap_or_else(|| "–".into())),
            Cell::Text(fmt::or_dash(i.valid_until, |t| fmt::ago(now, t))),
            Cell::Num(fmt::or_dash(i.proto, |v| v.to_string())),
            Cell::Text(i.auth.clone().unwrap_or_else(|| "–".into())),
            Cell::Hash(i.proxy_sc.clone().unwrap_or_default()),
            Cell::Num(running.to_string()),
            Cell::Num(fmt::thousands(i.requests)),
            Cell::Num(fmt::thousands(i.bad_receipts)),
            Cell::Long(i.last_error.clone().unwrap_or_else(|| "–".into())),
        ]);
    }
    p.table(&t);
    let mut t = Table::new(
        "Payment channels",
        &[
            "proxy",
            "our contract",
            "channel",
            "balance",
            "stake",
            "tokens charged",
            "latest signed receipt (tokens)",
            "receipts",
            "proxy db / known tokens",
        ],
    )
    .empty("no channels")
    .id("channels");
    for (i, _, _) in d.slots {
        let ch = i.channel.as_ref();
        t.row(vec![
            Cell::Long(i.address.clone()),
            Cell::Hash(i.client_sc.clone().unwrap_or_default()),
            match ch {
                Some(c) => {
                    let (w, tone) = channel_word(c.state);
                    Cell::Badge(tone, w.into())
                }
                None => Cell::Text(
                    if d.shared.channels.is_some() {
                        "not read yet"
                    } else {
                        "no wallet"
                    }
                    .into(),
                ),
            },
            Cell::Num(fmt::or_dash(ch, |c| fmt::ton(u128::from(c.balance)))),
            Cell::Num(fmt::or_dash(ch, |c| fmt::ton(u128::from(c.stake)))),
            Cell::Num(fmt::or_dash(ch, |c| fmt::tokens(c.tokens_used))),
            Cell::Num(fmt::tokens(i.receipt_tokens)),
            receipts_cell(i.receipt_tokens, i.bad_receipts),
            Cell::Num(format!(
                "{} / {}",
                fmt::tokens(i.db_tokens),
                fmt::tokens(i.max_tokens)
            )),
        ]);
    }
    p.table(&t);
    if let Some(keys) = d.keys {
        let mut t = Table::new(
            "API keys",
            &[
                "name", "hash", "limit", "spent", "reserved", "requests", "refused",
            ],
        )
        .id("keys");
        for k in keys {
            t.row(vec![
                Cell::Text(k.name.clone()),
                Cell::Hash(format!("{}…", k.hash_prefix)),
                Cell::Num(fmt::or_dash(k.limit_nanoton, |v| fmt::ton(u128::from(v)))),
                Cell::Num(fmt::ton(u128::from(k.spent_nanoton))),
                Cell::Num(fmt::ton(u128::from(k.reserved_nanoton))),
                Cell::Num(fmt::thousands(k.requests)),
                Cell::Num(fmt::thousands(k.refused)),
            ]);
        }
        p.table(&t);
    }
    let mut t = Table::new("Spend per model", &["model", "requests", "tokens", "spent"])
        .empty("no answers yet")
        .id("models");
    for (m, v) in d.models {
        t.row(vec![
            Cell::Text(m.clone()),
            Cell::Num(fmt::thousands(v.requests)),
            Cell::Num(fmt::tokens(v.tokens)),
            Cell::Num(fmt::ton(u128::from(v.spent_nanoton))),
        ]);
    }
    p.table(&t);
    let mut t = Table::new(
        "Recent requests",
        &[
            "when", "model", "outcome", "tokens", "cost", "latency", "proxy", "receipt", "key",
        ],
    )
    .empty("no requests yet")
    .id("recent");
    for r in d.recent.iter().rev() {
        t.row(vec![
            Cell::Text(fmt::ago(now, r.at)),
            Cell::Text(r.model.clone()),
            Cell::Badge(
                Tone::of(r.ok, Tone::Bad),
                if r.ok { "ok" } else { "failed" }.into(),
            ),
            Cell::Num(fmt::tokens(r.tokens)),
            Cell::Num(fmt::ton(u128::from(r.cost_nanoton))),
            Cell::Num(fmt::millis(r.latency_ms)),
            Cell::Long(r.proxy.clone()),
            match &r.receipt_id {
                Some(id) => Cell::Markup(format!(
                    "<a class=\"hash\" href=\"/v1/receipts/{}\" title=\"{}\">{}</a>",
                    esc(id),
                    esc(id),
                    esc(&fmt::short(id, 6))
                )),
                None => Cell::Text("–".into()),
            },
            Cell::Text(r.key.clone().unwrap_or_else(|| "–".into())),
        ]);
    }
    p.table(&t);
    p
}

/// Whether a proxy's receipts checked out: every one verified (against its key, our
/// contract and the totals), how many were refused, or none held yet.
fn receipts_cell(receipt_tokens: u64, bad_receipts: u64) -> Cell {
    match (bad_receipts, receipt_tokens) {
        (0, 0) => Cell::Text("none yet".into()),
        (0, _) => Cell::Badge(Tone::Good, "verified".into()),
        (n, _) => Cell::Badge(Tone::Bad, format!("{} refused", fmt::thousands(n))),
    }
}

fn metrics(shared: &Shared) -> Prometheus {
    let s = shared.stats.snapshot();
    let mut m = Prometheus::new();
    m.metric(
        "cocoon_client_requests_total",
        "counter",
        "Requests by outcome.",
        &[
            ("{outcome=\"succeeded\"}".into(), s.succeeded.to_string()),
            ("{outcome=\"failed\"}".into(), s.failed.to_string()),
            ("{outcome=\"refused\"}".into(), s.refused.to_string()),
        ],
    );
    m.single(
        "cocoon_client_tokens_total",
        "counter",
        "Adjusted tokens billed.",
        s.tokens,
    );
    m.single(
        "cocoon_client_spent_nanoton_total",
        "counter",
        "nanoTON spent.",
        s.spent_nanoton,
    );
    let slots = shared.slots();
    let per_proxy = |f: &dyn Fn(&crate::proxy::Slot, &crate::ProxyInfo) -> Option<String>| {
        slots
            .iter()
            .filter_map(|slot| {
                let i = slot.info();
                f(slot, &i).map(|v| (format!("{{proxy=\"{}\"}}", label(&i.address)), v))
            })
            .collect::<Vec<_>>()
    };
    m.metric(
        "cocoon_client_proxy_ready",
        "gauge",
        "1 while the session with the proxy is ready.",
        &per_proxy(&|slot, _| Some(u8::from(slot.ready().is_some()).to_string())),
    );
    m.metric(
        "cocoon_client_proxy_running",
        "gauge",
        "Requests in flight per proxy.",
        &per_proxy(&|slot, _| {
            Some(
                slot.inflight
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            )
        }),
    );
    m.metric(
        "cocoon_client_receipt_tokens",
        "gauge",
        "Tokens the best receipt held covers, per proxy.",
        &per_proxy(&|_, i| Some(i.receipt_tokens.to_string())),
    );
    m.metric(
        "cocoon_client_channel_balance_nanoton",
        "gauge",
        "The payment channel's balance per proxy, nanoTON.",
        &per_proxy(&|_, i| i.channel.as_ref().map(|c| c.balance.to_string())),
    );
    m.metric(
        "cocoon_client_channel_stake_nanoton",
        "gauge",
        "The payment channel's stake per proxy, nanoTON.",
        &per_proxy(&|_, i| i.channel.as_ref().map(|c| c.stake.to_string())),
    );
    let (_, models) = shared.recent.snapshot();
    let per_model = |f: &dyn Fn(&crate::stats::ModelSpend) -> u64| -> Vec<(String, String)> {
        models
            .iter()
            .map(|(k, v)| (format!("{{model=\"{}\"}}", label(k)), f(v).to_string()))
            .collect()
    };
    m.metric(
        "cocoon_client_model_spent_nanoton_total",
        "counter",
        "nanoTON spent per answered model since start.",
        &per_model(&|v| v.spent_nanoton),
    );
    m.metric(
        "cocoon_client_model_tokens_total",
        "counter",
        "Adjusted tokens billed per answered model since start.",
        &per_model(&|v| v.tokens),
    );
    m
}

/// The stored outcome of the request that named `request_guid` (`{}` if none).
async fn debug_entry(State(shared): St, Query(q): Query<BTreeMap<String, String>>) -> Response {
    use sha2::Digest;
    let Some(guid) = q.get("request_guid") else {
        return error(ApiError::invalid(
            "request_guid",
            "missing",
            "request_guid query parameter required",
        ));
    };
    let h: [u8; 32] = sha2::Sha256::digest(guid.as_bytes()).into();
    axum::Json(shared.debug_log.get(&h).unwrap_or_else(|| json!({}))).into_response()
}

async fn control(
    State(shared): St,
    UrlPath(action): UrlPath<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let deny = |code: StatusCode, msg: &str| {
        (code, axum::Json(json!({"ok": false, "error": msg}))).into_response()
    };
    let Some(file) = &shared.admin_token_file else {
        return deny(
            StatusCode::FORBIDDEN,
            "controls are disabled (no admin token file)",
        );
    };
    let token = match read_token(file) {
        Ok(t) => t,
        Err(e) => {
            return deny(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("admin token: {e}"),
            );
        }
    };
    if !bearer(&headers).is_some_and(|b| constant_time_eq(b.as_bytes(), token.as_bytes())) {
        return deny(StatusCode::UNAUTHORIZED, "wrong or missing bearer token");
    }
    let Some(ch) = shared.channels.clone() else {
        return deny(StatusCode::CONFLICT, "no wallet is configured");
    };
    let slots = shared.slots();
    let slot = match q.get("proxy") {
        Some(p) => slots.iter().find(|s| {
            let i = s.info();
            s.address == *p || i.proxy_sc.as_deref() == Some(p.as_str())
        }),
        None if slots.len() == 1 => slots.first(),
        None => return deny(StatusCode::BAD_REQUEST, "name the proxy: ?proxy=<address>"),
    };
    let Some(slot) = slot else {
        return deny(StatusCode::NOT_FOUND, "no such proxy");
    };
    let Some(contract) = slot
        .info()
        .client_sc
        .and_then(|c| cocoon_ton::parse_address(&c).ok())
    else {
        return deny(
            StatusCode::CONFLICT,
            "this proxy has not told us our contract yet",
        );
    };
    let res: Result<(), String> = match action.as_str() {
        "topup" => {
            let amount = match q.get("amount").map(|a| cocoon_ton::parse_ton(a)) {
                Some(Ok(a)) => a,
                Some(Err(e)) => return deny(StatusCode::BAD_REQUEST, &format!("amount: {e}")),
                None => shared.root().params.min_client_stake,
            };
            ch.top_up(&contract, amount)
                .await
                .map_err(|e| e.to_string())
        }
        "charge" => shared.charge(&contract).await,
        "withdraw" => ch.withdraw(&contract).await.map_err(|e| e.to_string()),
        "close" => ch
            .request_refund(&contract)
            .await
            .map_err(|e| e.to_string()),
        _ => return deny(StatusCode::NOT_FOUND, "unknown control"),
    };
    let state = ch.state(&contract).await.ok().flatten();
    slot.update(|i| i.channel = state.clone());
    match res {
        Ok(()) => axum::Json(json!({"ok": true, "contract": contract.to_string(), "state": state}))
            .into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"ok": false, "error": e, "state": state})),
        )
            .into_response(),
    }
}
