//! One task per request: unpack, validate, run on the engine, relay, bill.
//!
//! The answer is relayed as the engine produces it: `proxy.queryAnswerEx` with the HTTP
//! head (status, content type, `X-Cocoon-Worker-Start/End`), one `proxy.queryAnswerPartEx`
//! per body chunk, and a final empty part carrying `proxy.queryFinalInfo` with the usage
//! split into the four categories and adjusted by the worker's coefficient and the root
//! multipliers. The usage comes from the engine's final event, so streamed answers are
//! billed exactly. Every `usage` object in the body (the JSON answer's, the final SSE
//! chunk's) gets COCOON's cost fields, `prompt_total_cost`, `completion_total_cost` and
//! `total_cost` in nanoTON, priced as the request is billed. A failure after the head ends the answer with
//! `proxy.queryAnswerErrorEx` carrying the usage delivered so far — one final message per
//! request, so nothing is billed twice. Cancellation (a `proxy.cancelQuery`, or the session
//! going away) drops the engine's body channel, which stops generation.
//!
//! Logs carry the request id, sizes, times and token counts; never bodies.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_engine::{BodyEvent, EngineError, EngineRequest};
use cocoon_net::{ErrorCode, SessionHandle};
use cocoon_openai::validate::ValidateOptions;
use cocoon_openai::{
    CostInjector, Endpoint, PriceTable, Usage, UsageTracker, prompt_text, validate_request,
};
use cocoon_tl::TlRead;
use cocoon_tl::TlWrite;
use cocoon_tl::types::{TokensUsed, http as thttp, proxy as tproxy};
use tokio::sync::{mpsc, watch};

use crate::Shared;
use crate::stats::Counters;

/// Most bytes of one unfinished SSE event or JSON value held to add the cost fields; a
/// longer one passes unchanged.
const COST_BUFFER_BYTES: usize = 1 << 20;

/// Longest time a request may be given, whatever the proxy asks.
const MAX_TIMEOUT_SECS: f64 = 3600.0;

/// A request as the proxy sent it.
pub(crate) struct RunRequest {
    pub request_id: [u8; 32],
    pub query: Vec<u8>,
    pub timeout: f64,
    pub proxy_coefficient: i64,
    pub enable_debug: bool,
    pub proto: i32,
    /// Signs the answer's receipt (sessions at protocol 3).
    pub signer: Option<Arc<Signer>>,
}

/// What a session signs receipts with: the key of the certificate this worker presented,
/// and the certificate key of the proxy at the other end.
pub(crate) struct Signer {
    pub key: cocoon_ratls::sign::SessionKey,
    pub proxy_tls_key: [u8; 32],
}

/// Counts a running request against `max_active_requests`.
pub(crate) struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    /// Takes a slot, or `None` when all are in use.
    pub(crate) fn try_new(shared: &Arc<Shared>) -> Option<Self> {
        let max = shared.max_active as usize;
        let mut cur = shared.active.load(Ordering::SeqCst);
        loop {
            if cur >= max {
                return None;
            }
            match shared
                .active
                .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(ActiveGuard(Arc::clone(shared))),
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn tokens_used(prices: &PriceTable, usage: &Usage, coefficient: u32) -> TokensUsed {
    let a = prices.adjust(usage, u64::from(coefficient));
    TokensUsed {
        prompt_tokens_used: saturating_i64(a.categories.prompt),
        cached_tokens_used: saturating_i64(a.categories.cached),
        completion_tokens_used: saturating_i64(a.categories.completion),
        reasoning_tokens_used: saturating_i64(a.categories.reasoning),
        total_tokens_used: saturating_i64(a.total),
    }
}

fn final_info(
    proto: i32,
    tokens: TokensUsed,
    debug: Option<String>,
    start: f64,
) -> tproxy::QueryFinalInfo {
    let timed = proto >= 2;
    tproxy::QueryFinalInfo {
        tokens_used: tokens,
        worker_debug: debug,
        worker_start_time: timed.then_some(start),
        worker_end_time: timed.then(now_unix),
    }
}

fn error_ex(
    request_id: [u8; 32],
    code: ErrorCode,
    msg: &str,
    info: tproxy::QueryFinalInfo,
) -> Vec<u8> {
    tproxy::QueryAnswerErrorEx {
        request_id,
        error_code: code as i32,
        error: msg.to_owned(),
        final_info: Some(info),
    }
    .to_bytes()
}

/// Refuses a request before it starts (zero tokens), without blocking the session loop.
pub(crate) fn send_rejection(
    s: &SessionHandle,
    proto: i32,
    request_id: [u8; 32],
    code: ErrorCode,
    msg: &str,
) {
    tracing::info!(request = %hex::encode(&request_id[..8]), reason = msg, "request rejected");
    let info = final_info(proto, TokensUsed::default(), None, now_unix());
    let bytes = error_ex(request_id, code, msg, info);
    let s = s.clone();
    tokio::spawn(async move {
        let _ = s.send_message(bytes).await;
    });
}

/// How a request ended.
enum Outcome {
    Success(Usage),
    Failed {
        code: ErrorCode,
        message: String,
        usage: Usage,
    },
    Cancelled(Usage),
    /// The session is gone: nobody to answer.
    SessionGone(Usage),
}

async fn wait_cancel(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return; // the session loop ended: cancel
        }
    }
}

fn engine_error_code(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::Timeout(_) => ErrorCode::Timeout,
        EngineError::Unreachable(_) | EngineError::Busy(_) => ErrorCode::NotReady,
        EngineError::Status { .. } | EngineError::Unsupported(_) => ErrorCode::Error,
        EngineError::Protocol(_) => ErrorCode::Failure,
        _ => ErrorCode::Error,
    }
}

/// The engine failed before its answer began. A refusal of the request as it was asked
/// goes out as COCOON's `worker: invalid request: …` text with the `param` and `code`
/// (the app's 400, billed nothing); anything else is the engine's failure.
fn engine_refused(e: EngineError) -> Outcome {
    match e {
        EngineError::Invalid(a) => fail(
            ErrorCode::Error,
            format!("worker: invalid request: {}", a.to_wire()),
        ),
        EngineError::Unsupported(m) => {
            fail(ErrorCode::Error, format!("worker: invalid request: {m}"))
        }
        e => fail(engine_error_code(&e), format!("worker: engine: {e}")),
    }
}

fn fail(code: ErrorCode, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        code,
        message: message.into(),
        usage: Usage::default(),
    }
}

/// Usage of an answer cut short: what the engine reported in the body, else a local count.
fn cut_short_usage(shared: &Shared, tracker: &UsageTracker, prompt: Option<&str>) -> Usage {
    if let Some(u) = tracker.usage() {
        return u;
    }
    let (Some(tok), Some(prompt)) = (shared.tokenizer.as_ref(), prompt) else {
        return Usage::default();
    };
    match (tok.count(prompt), tok.count(tracker.text().unwrap_or(""))) {
        (Ok(p), Ok(c)) => Usage::new(p, c),
        _ => Usage::default(),
    }
}

/// The request path, without a query string or an absolute-form scheme and host.
fn request_path(url: &str) -> &str {
    let mut u = url;
    for scheme in ["http://", "https://"] {
        if let Some(rest) = u.strip_prefix(scheme) {
            u = rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    u.split(['?', '#']).next().unwrap_or(u)
}

struct Ctx<'a> {
    shared: &'a Shared,
    s: &'a SessionHandle,
    req: &'a RunRequest,
    start: f64,
    coefficient: u32,
    prices: PriceTable,
    head_sent: bool,
    /// Completion tokens (all sequences) the request's body allows, once read.
    limit: Option<u64>,
    /// Sequences (choices) the body asks for, once read.
    sequences: u64,
    /// When the engine's answer head arrived (Unix seconds), for the debug output.
    answer_at: Option<f64>,
    /// SHA-256 of the request's HTTP body as received.
    request_hash: [u8; 32],
    /// The answer's body bytes as sent.
    answer_hash: cocoon_receipt::BodyHash,
}

/// `usage` with its generated tokens cut to `limit`: a request is never billed for more
/// completion tokens than it allowed, whatever the engine did.
fn within_limit(usage: Usage, limit: Option<u64>) -> Usage {
    let Some(limit) = limit else { return usage };
    if usage.completion_tokens <= limit {
        return usage;
    }
    let mut u = usage;
    u.completion_tokens = limit;
    if let Some(d) = u.completion_tokens_details.as_mut() {
        d.reasoning_tokens = d.reasoning_tokens.min(limit);
    }
    u.total_tokens = u.prompt_tokens.saturating_add(limit);
    u
}

impl Ctx<'_> {
    fn debug(&self) -> Option<String> {
        self.req.enable_debug.then(|| {
            // COCOON's fields: when the request arrived, when the engine's answer began
            // (null when it never did) and when it ended.
            serde_json::json!({
                "type": "worker_stats",
                "start_time": self.start,
                "answer_receive_start_at": self.answer_at,
                "answer_receive_end_at": now_unix(),
            })
            .to_string()
        })
    }

    fn info(&self, usage: &Usage) -> tproxy::QueryFinalInfo {
        final_info(
            self.req.proto,
            tokens_used(
                &self.prices,
                &within_limit(*usage, self.limit),
                self.coefficient,
            ),
            self.debug(),
            self.start,
        )
    }

    /// The signed receipt of a successful answer that used `usage`, as the message that
    /// carries it.
    fn receipt(&self, signer: &Signer, usage: &Usage) -> Result<Vec<u8>, String> {
        let u = within_limit(*usage, self.limit);
        let (answer_hash, answer_bytes) = self.answer_hash.digest();
        let ms = |secs: f64| (secs * 1000.0) as i64;
        let r = cocoon_tl::types::receipt::Worker {
            request_id: self.req.request_id,
            worker_key: *signer.key.public_key(),
            proxy_key: signer.proxy_tls_key,
            model: self.shared.model.clone(),
            request_hash: self.request_hash,
            answer_hash,
            answer_bytes: saturating_i64(answer_bytes),
            prompt_tokens: saturating_i64(u.prompt_tokens),
            cached_tokens: saturating_i64(u.cached_tokens()),
            completion_tokens: saturating_i64(u.completion_tokens),
            reasoning_tokens: saturating_i64(u.reasoning_tokens()),
            coefficient: i32::try_from(self.coefficient).unwrap_or(i32::MAX),
            price_per_token: saturating_i64(self.prices.price_per_token),
            tokens_used: tokens_used(&self.prices, &u, self.coefficient),
            started_at_ms: ms(self.start),
            finished_at_ms: ms(now_unix()),
        };
        let (receipt, signature) =
            cocoon_receipt::sign_worker(&r, &signer.key).map_err(|e| e.to_string())?;
        Ok(tproxy::AnswerReceipt {
            request_id: self.req.request_id,
            receipt,
            signature,
        }
        .to_bytes())
    }

    async fn send(&self, bytes: Vec<u8>) -> bool {
        self.s.send_message(bytes).await.is_ok()
    }

    /// Sends one non-final part of the body.
    async fn send_part(&mut self, answer: Vec<u8>) -> bool {
        Counters::add(&self.shared.counters.answer_bytes, answer.len() as u64);
        self.answer_hash.push(&answer);
        let part = tproxy::QueryAnswerPartEx {
            request_id: self.req.request_id,
            answer,
            final_info: None,
        };
        self.send(part.to_bytes()).await
    }
}

async fn run(cx: &mut Ctx<'_>, cancel: &mut watch::Receiver<bool>) -> Outcome {
    let shared = cx.shared;
    let http = match cocoon_tl::functions::http::Request::from_bytes(&cx.req.query) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                ErrorCode::Error,
                format!("worker: invalid http request: {e}"),
            );
        }
    };
    if !http.method.eq_ignore_ascii_case("POST") {
        return fail(ErrorCode::Error, "worker: unsupported method");
    }
    let Some(endpoint) = Endpoint::from_path(request_path(&http.url)) else {
        return fail(ErrorCode::Error, "worker: unsupported method");
    };
    let opts = ValidateOptions {
        take_extensions: false,
        max_tokens_cap: None,
    };
    cx.request_hash = cocoon_receipt::sha256(&http.payload);
    let v = match validate_request(endpoint, &http.payload, &opts) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                ErrorCode::Error,
                format!("worker: invalid request: {}", e.to_wire()),
            );
        }
    };
    if v.model != shared.model_base {
        return fail(ErrorCode::ProtoViolation, "model name mismatch");
    }
    // The limit the proxy reserved for and wrote into the body (a proxy may send none).
    cx.limit = cocoon_openai::completion_limit(endpoint, &v.body).total();
    cx.sequences = cocoon_openai::limit::sequences(endpoint, &v.body);
    let t = cx.req.timeout;
    if !(t.is_finite() && t > 0.0) {
        return fail(ErrorCode::Error, "worker: invalid timeout");
    }
    let timeout = Duration::from_secs_f64((t * 0.95).min(MAX_TIMEOUT_SECS));
    let deadline = tokio::time::Instant::now() + timeout;
    let prompt = shared
        .tokenizer
        .as_ref()
        .map(|_| prompt_text(endpoint, &v.body));
    let engine_req = EngineRequest {
        endpoint,
        body: v.body,
        stream: v.stream,
        timeout,
    };
    let submitted = tokio::select! {
        r = tokio::time::timeout_at(deadline, shared.engine.submit(engine_req)) => r,
        _ = wait_cancel(cancel) => return Outcome::Cancelled(Usage::default()),
    };
    let resp = match submitted {
        Err(_) => return fail(ErrorCode::Timeout, "worker: timeout"),
        Ok(Err(e)) => return engine_refused(e),
        Ok(Ok(r)) => r,
    };
    cx.answer_at = Some(now_unix());
    let reason = axum::http::StatusCode::from_u16(resp.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
        .to_owned();
    let header = |n: &str, v: String| thttp::Header {
        name: n.to_owned(),
        value: v,
    };
    let head = thttp::Response {
        http_version: "HTTP/1.1".into(),
        status_code: i32::from(resp.status),
        reason,
        headers: vec![
            header("Content-Type", resp.content_type.clone()),
            header("X-Cocoon-Worker-Start", format!("{:.6}", cx.start)),
            header("X-Cocoon-Worker-End", format!("{:.6}", now_unix())),
            header("Transfer-Encoding", "chunked".into()),
        ],
        payload: Vec::new(),
    };
    let answer = tproxy::QueryAnswerEx {
        request_id: cx.req.request_id,
        answer: head.to_bytes(),
        final_info: None,
    };
    if !cx.send(answer.to_bytes()).await {
        return Outcome::SessionGone(Usage::default());
    }
    cx.head_sent = true;
    let mut body = resp.body;
    let mut tracker = if shared.tokenizer.is_some() {
        UsageTracker::new().collecting_text()
    } else {
        UsageTracker::new()
    };
    let cut = |t: &UsageTracker| cut_short_usage(shared, t, prompt.as_deref());
    // COCOON's cost fields in every usage the answer carries, priced as this request is
    // billed (the quoted coefficient, the root's multipliers and price, the body's limit).
    let mut costs = {
        let (prices, coefficient, limit) = (cx.prices, u64::from(cx.coefficient), cx.limit);
        CostInjector::new(COST_BUFFER_BYTES, prices.price_per_token, move |u| {
            prices.adjust(&within_limit(*u, limit), coefficient)
        })
    };
    // One timer for the whole answer, not one registered and dropped for every piece.
    let timeout = tokio::time::sleep_until(deadline + Duration::from_secs(1));
    tokio::pin!(timeout);
    loop {
        let ev = tokio::select! {
            ev = body.recv() => ev,
            _ = wait_cancel(cancel) => {
                drop(body);
                return Outcome::Cancelled(cut(&tracker));
            }
            _ = &mut timeout => {
                drop(body);
                return Outcome::Failed {
                    code: ErrorCode::Timeout,
                    message: "worker: timeout".into(),
                    usage: cut(&tracker),
                };
            }
        };
        match ev {
            Some(BodyEvent::Data(d)) => {
                tracker.push(&d);
                // A hard stop: an engine that streams past the request's limit (more generated
                // pieces than allowed tokens, or usage saying so) is cut off here. Each choice
                // may end with one more piece than it had tokens: text an engine held back (a
                // stop-string prefix, an unfinished UTF-8 sequence) is released at the end.
                if let Some(limit) = cx.limit
                    && (tracker.generated_pieces() > limit.saturating_add(cx.sequences)
                        || tracker.usage().is_some_and(|u| u.completion_tokens > limit))
                {
                    drop(body);
                    Counters::add(&shared.counters.limit_cuts, 1);
                    let mut usage = cut(&tracker);
                    usage.completion_tokens = usage.completion_tokens.max(limit);
                    return Outcome::Failed {
                        code: ErrorCode::Error,
                        message: format!(
                            "worker: the engine generated past the request's limit of {limit} tokens; answer cut"
                        ),
                        usage,
                    };
                }
                let d = costs.push(&d);
                if d.is_empty() {
                    continue;
                }
                if !cx.send_part(d).await {
                    drop(body);
                    return Outcome::SessionGone(cut(&tracker));
                }
            }
            Some(BodyEvent::End { usage, .. }) => {
                let rest = costs.finish();
                if !rest.is_empty() && !cx.send_part(rest).await {
                    return Outcome::SessionGone(usage);
                }
                return Outcome::Success(usage);
            }
            Some(BodyEvent::Failed { error, usage }) => {
                let rest = costs.finish();
                if !rest.is_empty() && !cx.send_part(rest).await {
                    return Outcome::SessionGone(usage);
                }
                return Outcome::Failed {
                    code: engine_error_code(&error),
                    message: format!("worker: engine: {error}"),
                    usage,
                };
            }
            None => {
                return Outcome::Failed {
                    code: ErrorCode::Failure,
                    message: "worker: engine ended the answer without a result".into(),
                    usage: cut(&tracker),
                };
            }
        }
    }
}

/// Serves one request to the end and reports its id on `done`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    s: SessionHandle,
    req: RunRequest,
    mut cancel: watch::Receiver<bool>,
    guard: ActiveGuard,
    done: mpsc::UnboundedSender<[u8; 32]>,
) {
    let t0 = Instant::now();
    // The request is billed at the coefficient the proxy quoted when it routed it (a change
    // made since applies to later requests); the proxy audits the report at that quote.
    let own = shared.control().coefficient;
    let coefficient = match u32::try_from(req.proxy_coefficient) {
        Ok(c) if c <= crate::config::MAX_COEFFICIENT => c,
        _ => {
            tracing::warn!(
                proxy = req.proxy_coefficient,
                own,
                "proxy quoted a coefficient out of range; billing at our own"
            );
            own
        }
    };
    if coefficient != own {
        tracing::debug!(quoted = coefficient, own, "billing at the proxy's quote");
    }
    let mut cx = Ctx {
        shared: &shared,
        s: &s,
        req: &req,
        start: now_unix(),
        coefficient,
        prices: shared.prices(),
        head_sent: false,
        limit: None,
        sequences: 1,
        answer_at: None,
        request_hash: [0; 32],
        answer_hash: cocoon_receipt::BodyHash::default(),
    };
    let outcome = run(&mut cx, &mut cancel).await;
    let c = &shared.counters;
    let (usage, label) = match &outcome {
        Outcome::Success(u) => (*u, "success"),
        Outcome::Failed { usage, .. } => (*usage, "failed"),
        Outcome::Cancelled(u) => (*u, "cancelled"),
        Outcome::SessionGone(u) => (*u, "session gone"),
    };
    let final_msg = match &outcome {
        Outcome::Success(u) => Some(
            tproxy::QueryAnswerPartEx {
                request_id: req.request_id,
                answer: Vec::new(),
                final_info: Some(cx.info(u)),
            }
            .to_bytes(),
        ),
        Outcome::Failed {
            code,
            message,
            usage,
        } => Some(error_ex(req.request_id, *code, message, cx.info(usage))),
        Outcome::Cancelled(u) => Some(error_ex(
            req.request_id,
            ErrorCode::Cancelled,
            "worker: cancelled",
            cx.info(u),
        )),
        Outcome::SessionGone(_) => None,
    };
    // Protocol 3: the receipt of a successful answer goes right before its final part.
    if let (Outcome::Success(u), Some(signer)) = (&outcome, &req.signer) {
        match cx.receipt(signer, u) {
            Ok(m) => {
                let _ = cx.send(m).await;
            }
            Err(e) => tracing::error!(error = %e, "could not sign a receipt"),
        }
    }
    // The slot is free once the final message is on its way: the proxy may reuse it at once.
    drop(guard);
    let delivered = match final_msg {
        Some(m) => cx.send(m).await,
        None => false,
    };
    // Bill once, what the final message reported (or would have, had the session lived).
    let t = tokens_used(&cx.prices, &within_limit(usage, cx.limit), coefficient);
    if delivered {
        Counters::add(&c.prompt_tokens, t.prompt_tokens_used as u64);
        Counters::add(&c.cached_tokens, t.cached_tokens_used as u64);
        Counters::add(&c.completion_tokens, t.completion_tokens_used as u64);
        Counters::add(&c.reasoning_tokens, t.reasoning_tokens_used as u64);
        Counters::add(&c.total_tokens, t.total_tokens_used as u64);
    }
    match &outcome {
        Outcome::Success(_) => Counters::add(&c.requests_success, 1),
        Outcome::Cancelled(_) | Outcome::SessionGone(_) => {
            Counters::add(&c.requests_cancelled, 1);
            Counters::add(&c.requests_failed, 1);
        }
        Outcome::Failed { .. } => Counters::add(&c.requests_failed, 1),
    }
    let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    Counters::add(&c.request_time_ms, ms);
    tracing::info!(
        request = %hex::encode(&req.request_id[..8]),
        outcome = label,
        head_sent = cx.head_sent,
        ms,
        prompt = t.prompt_tokens_used,
        cached = t.cached_tokens_used,
        completion = t.completion_tokens_used,
        reasoning = t.reasoning_tokens_used,
        total = t.total_tokens_used,
        "request finished"
    );
    let _ = done.send(req.request_id);
}

#[cfg(test)]
mod tests {
    use super::request_path;

    #[test]
    fn paths() {
        assert_eq!(request_path("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(request_path("/v1/completions?x=1"), "/v1/completions");
        assert_eq!(
            request_path("http://127.0.0.1:8000/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(request_path("http://host"), "/");
    }
}
