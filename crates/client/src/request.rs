//! One request: validate, reserve against the API key, pick a proxy, fail over, stream.
//!
//! A request goes to the ready proxy with the fewest requests in flight. If that proxy
//! fails before the first byte of an answer (its connection closes, it has no worker or no
//! capacity, our channel with it is short of funds), the request is sent to the next proxy
//! not yet tried; once bytes flowed it is never repeated (the caller saw them). Every
//! request has a deadline (the body's `timeout`, else the configured default): the proxy is
//! told 95% of what remains, and the client itself gives up at the deadline, cancelling the
//! request at the proxy (protocol 3) and answering 504.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cocoon_net::ErrorCode;
use cocoon_openai::validate::ValidateOptions;
use cocoon_openai::{ApiError, Endpoint, ErrorKind, validate_request};
use cocoon_tl::TlWrite;
use cocoon_tl::functions::{client as fclient, http as fhttp};
use cocoon_tl::types::{client as tclient, http as thttp};
use sha2::Digest;
use tokio::sync::mpsc;

use crate::Shared;
use crate::extras::{self, Extras};
use crate::keys::{ApiKeyError, Reservation};
use crate::proxy::{Event, Link, Slot};

/// The completion limit of a request that names none.
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 1000;
/// The largest answer buffered for a request that is not streamed (HTTP or
/// [`Answer::collect`]); past it the request fails with 502 and is cancelled.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 << 20;
/// Highest worker coefficient accepted when the request names none (1000 = 1.0).
pub const DEFAULT_MAX_COEFFICIENT: u64 = 4000;
/// Longest an answer's receipt is awaited after its final info: our proxy sends it once
/// its settlement is committed (milliseconds later). Past it the request counts as failed.
pub(crate) const RECEIPT_WAIT: Duration = Duration::from_secs(5);

/// Receipts still on their way after their answer ended, by receipt id; each entry lives
/// until its check is done ([`RECEIPT_WAIT`] at most).
#[derive(Debug, Default)]
pub(crate) struct LateReceipts(
    std::sync::Mutex<std::collections::HashMap<String, tokio::sync::watch::Receiver<()>>>,
);

impl LateReceipts {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, tokio::sync::watch::Receiver<()>>,
    > {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A check begins; it ends when the returned sender is given to [`Self::end`].
    fn begin(&self, id: &str) -> tokio::sync::watch::Sender<()> {
        let (tx, rx) = tokio::sync::watch::channel(());
        self.map().insert(id.to_owned(), rx);
        tx
    }

    /// The check of `id` is done (its document stored, or not): waiters read the store.
    fn end(&self, id: &str, done: tokio::sync::watch::Sender<()>) {
        self.map().remove(id);
        drop(done);
    }

    /// Waits while the receipt `id` is being awaited or checked.
    pub(crate) async fn wait(&self, id: &str) {
        let rx = self.map().get(id).cloned();
        if let Some(mut rx) = rx {
            // Resolves (with an error) when the check drops its sender; the check itself
            // gives up on the receipt after `RECEIPT_WAIT`.
            let _ = tokio::time::timeout(2 * RECEIPT_WAIT, rx.changed()).await;
        }
    }
}

/// A request as the library takes it (the HTTP API builds the same).
#[derive(Debug, Clone)]
pub struct Request {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The OpenAI body, with the body extensions if wanted (`max_coefficient`, `timeout`,
    /// `request_guid`, `enable_debug`).
    pub body: Vec<u8>,
    /// The API key, when keys are configured.
    pub api_key: Option<String>,
}

impl Request {
    /// A chat completion request from a JSON body.
    pub fn chat(body: &serde_json::Value) -> Request {
        Request {
            endpoint: Endpoint::ChatCompletions,
            body: serde_json::to_vec(body).unwrap_or_default(),
            api_key: None,
        }
    }

    /// A completion request from a JSON body.
    pub fn completion(body: &serde_json::Value) -> Request {
        Request {
            endpoint: Endpoint::Completions,
            body: serde_json::to_vec(body).unwrap_or_default(),
            api_key: None,
        }
    }

    /// With an API key.
    pub fn with_key(mut self, key: impl Into<String>) -> Request {
        self.api_key = Some(key.into());
        self
    }
}

/// What a finished request used and cost.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Billed (adjusted) tokens.
    pub total_tokens: u64,
    /// `total_tokens × price_per_token`.
    pub cost_nanoton: u64,
    /// Time the proxy and the worker held the request (protocol 2+), seconds.
    pub proxy_seconds: Option<f64>,
    /// Time the worker held the request, seconds.
    pub worker_seconds: Option<f64>,
    /// The worker's debug text, if it sent one.
    pub worker_debug: Option<String>,
    /// The proxy's debug text, if it sent one.
    pub proxy_debug: Option<String>,
}

/// An answer whose head arrived; read the body with [`Answer::next_chunk`].
pub struct Answer {
    /// HTTP status the engine answered with.
    pub status: u16,
    /// Its headers (hop-by-hop ones removed).
    pub headers: Vec<(String, String)>,
    /// Which proxy served it.
    pub proxy: String,
    /// Proxies tried (1 when the first one answered).
    pub attempts: u32,
    /// From the request's start to the answer's head.
    pub time_to_head: Duration,
    /// Whether the body is relayed as an SSE stream (the request asked for one and the
    /// engine sent one).
    pub stream: bool,
    first: Option<Bytes>,
    rx: mpsc::Receiver<Event>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    tracker: Tracker,
    finished: bool,
    usage: Option<Usage>,
    /// COCOON's client additions (cost fields, debug output).
    extras: Extras,
    /// An error to give after the held bytes that precede it.
    failed: Option<ApiError>,
    /// What the answer's receipt is checked against (protocol 3 sessions).
    receipt_check: Option<ReceiptCheck>,
    /// The answer's verified receipt, once its final part arrived.
    receipt: Option<cocoon_receipt::Receipt>,
    /// Why the receipt did not verify (the request fails with it).
    receipt_failed: Option<ApiError>,
}

/// What the client itself knows of a protocol 3 request, to check its receipt with.
struct ReceiptCheck {
    id: [u8; 32],
    request_hash: [u8; 32],
    model: String,
    key_hash: Option<String>,
    answer: cocoon_receipt::BodyHash,
    got: Option<Box<tclient::AnswerReceipt>>,
    link: Arc<Link>,
}

/// The request's bookkeeping: the proxy slot's in-flight count, the key reservation, the
/// link to cancel on. Settled exactly once (finish or drop).
struct Tracker {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    link: Arc<Link>,
    id: [u8; 32],
    reservation: Option<Reservation>,
    worst_case: u64,
    started: Instant,
    request_bytes: u64,
    answer_bytes: u64,
    /// SHA-256 of the request's `request_guid`, when it named one.
    guid: Option<[u8; 32]>,
    /// The model asked for (the stats page's recent requests).
    model: String,
    /// The answer's receipt id, once verified (or expected: see [`Answer::check_later`]).
    receipt_id: Option<String>,
    /// The route for this request's messages stays open after it is booked (its receipt
    /// is still to come).
    forget_later: bool,
    done: bool,
}

impl Tracker {
    /// Books the request: `usage` known (success or a final error), `None` when the answer
    /// was cut off without a final count (the worst case is charged to the key). A failure
    /// before the answer's head without a final count is booked at 0 by the caller: the
    /// proxy releases the reservation of a request nothing of which reached the client.
    fn finish(&mut self, usage: Option<&Usage>, ok: bool) {
        if self.done {
            return;
        }
        self.done = true;
        if !self.forget_later {
            self.link.forget(&self.id);
        }
        self.slot
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // A key is never booked more than it reserved: the reservation is the bound a
        // limit is checked against, whatever a proxy reports.
        let cost = usage
            .map(|u| u.cost_nanoton)
            .unwrap_or(self.worst_case)
            .min(self.worst_case);
        self.shared.recent.record(crate::stats::RecentRequest {
            at: SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: self.model.clone(),
            ok,
            tokens: usage.map(|u| u.total_tokens).unwrap_or(0),
            cost_nanoton: usage.map(|u| u.cost_nanoton).unwrap_or(0),
            latency_ms: self.started.elapsed().as_millis() as u64,
            proxy: self.slot.address.clone(),
            receipt_id: self.receipt_id.take(),
            key: self
                .reservation
                .as_ref()
                .map(|r| r.key_hash().chars().take(8).collect()),
        });
        if let (Some(keys), Some(r)) = (&self.shared.keys, self.reservation.take()) {
            let hash = r.key_hash().to_owned();
            keys.settle(r, cost);
            if let Err(e) = self.shared.store.add_key_spend(&hash, cost) {
                tracing::error!(error = %e, "could not store a key's spending");
            }
        }
        self.shared.stats.finish(
            ok,
            self.started.elapsed(),
            self.request_bytes,
            self.answer_bytes,
            usage,
        );
        if let Some(g) = self.guid {
            self.shared
                .debug_log
                .record(g, ok, usage, &self.slot.address);
        }
        let tokens = usage.map(|u| u.total_tokens).unwrap_or(0);
        if let Err(e) = self.shared.store.add_totals(&[
            ("requests", 1),
            (if ok { "succeeded" } else { "failed" }, 1),
            ("tokens", tokens),
            ("spent_nanoton", usage.map(|u| u.cost_nanoton).unwrap_or(0)),
        ]) {
            tracing::error!(error = %e, "could not store totals");
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            // The caller left mid-answer: tell the proxy (v3) and book the worst case.
            if self.link.proto >= 3 {
                let m = tclient::CancelQuery {
                    request_id: self.id,
                    reason: "client went away".into(),
                };
                let handle = self.link.handle.clone();
                tokio::spawn(async move {
                    let _ = handle.send_message(m.to_bytes()).await;
                });
            }
            self.finish(None, false);
        }
    }
}

fn usage_of(shared: &Shared, f: &tclient::QueryFinalInfo) -> Usage {
    let t = &f.tokens_used;
    let u = |v: i64| v.max(0) as u64;
    let total = u(t.total_tokens_used);
    let price = shared.root().params.price_per_token;
    let span = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b >= a && a > 0.0 => Some(b - a),
        _ => None,
    };
    Usage {
        prompt_tokens: u(t.prompt_tokens_used),
        cached_tokens: u(t.cached_tokens_used),
        completion_tokens: u(t.completion_tokens_used),
        reasoning_tokens: u(t.reasoning_tokens_used),
        total_tokens: total,
        cost_nanoton: total.saturating_mul(price),
        proxy_seconds: span(f.proxy_start_time, f.proxy_end_time),
        worker_seconds: span(f.worker_start_time, f.worker_end_time),
        worker_debug: f.worker_debug.clone().filter(|s| !s.is_empty()),
        proxy_debug: f.proxy_debug.clone().filter(|s| !s.is_empty()),
    }
}

/// Maps a proxy's error to the HTTP-facing kind, and whether another proxy may do better.
pub(crate) fn classify(code: i32, msg: &str) -> (ErrorKind, bool) {
    let m = msg.to_ascii_lowercase();
    match ErrorCode::from_i32(code) {
        Some(ErrorCode::Timeout) => (ErrorKind::Timeout, false),
        Some(ErrorCode::Cancelled) => (ErrorKind::Upstream, false),
        // The proxy or the worker refused the request itself: another proxy would too.
        _ if m.starts_with("invalid request") || m.starts_with("worker: invalid request") => {
            (ErrorKind::InvalidRequest, false)
        }
        _ if m.contains("balance is too low") || m.contains("out of funds") => {
            (ErrorKind::InsufficientFunds, true)
        }
        // No worker of this model at that proxy: another proxy may have one; if none has,
        // the model is not served (404, which SDKs do not retry, unlike 429).
        _ if m.contains("unknown model") || m.contains("no workers for model") => {
            (ErrorKind::NotFound, true)
        }
        // Our proxy: every worker of the model is busy and its queue is full (or the request
        // waited in it as long as the proxy allows): 429 with `Retry-After`, and another
        // proxy may have room.
        _ if m.contains("are busy and its queue")
            || m.contains("no worker")
            || m.contains("no ready workers")
            || m.contains("too many active")
            || m.contains("coefficient")
            || m.contains("capacity") =>
        {
            (ErrorKind::NoCapacity, true)
        }
        // COCOON's proxy: its root configuration is older than ours, or the connection to
        // the worker it chose died before the request left; another proxy may serve it.
        _ if m.contains("active config version is too low") || m.contains("connection is dead") => {
            (ErrorKind::Upstream, true)
        }
        Some(ErrorCode::NotReady | ErrorCode::Failure) => (ErrorKind::Upstream, true),
        _ => (ErrorKind::Upstream, false),
    }
}

/// The app's error for a proxy's error text of `kind` ([`classify`]). The proxy's or the
/// worker's refusal of the request as asked (`invalid request: …`) is its own message with
/// the `param` and `code` it carries, as OpenAI words it; anything else names the proxy.
pub(crate) fn proxy_error(kind: ErrorKind, proxy: &str, message: &str) -> ApiError {
    if kind == ErrorKind::InvalidRequest {
        let text = message.strip_prefix("worker: ").unwrap_or(message);
        if let Some(rest) = text.strip_prefix("invalid request: ") {
            return ApiError::from_wire(rest);
        }
    }
    ApiError::new(kind, format!("proxy {proxy}: {message}"))
}

/// Seconds an app should wait before asking again after a 429 (`Retry-After`): what the
/// proxy's refusal says (`retry after N s`, at most a minute), else 1.
pub(crate) fn retry_after_secs(message: &str) -> u64 {
    let m = message.to_ascii_lowercase();
    m.rsplit_once("retry after ")
        .and_then(|(_, rest)| rest.split_once(" s"))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        .map_or(1, |n| n.clamp(1, 60))
}

/// How often one request asks the same proxy again after "retry after reconnecting".
const RECONNECT_RETRIES: u32 = 40;

/// A refusal the proxy says ends once its peers reconnected (it is switching to new params,
/// or the workers of the model are coming back after the switch): the pause before asking
/// the same proxy again for the `n`th time (100 ms doubling up to 1 s), or `None` (another
/// failure, or asked often enough).
pub(crate) fn reconnect_retry(message: &str, n: u32) -> Option<std::time::Duration> {
    if !message.contains("retry after reconnecting") {
        return None;
    }
    reconnect_pause(n)
}

/// The pause before asking a proxy again for the `n`th time after its session or its peers
/// went away (100 ms doubling up to 1 s), or `None` once asked often enough.
fn reconnect_pause(n: u32) -> Option<std::time::Duration> {
    if n >= RECONNECT_RETRIES {
        return None;
    }
    let ms = 100u64 << n.min(4);
    Some(std::time::Duration::from_millis(ms.min(1000)))
}

/// Sleeps `pause` unless that passes `deadline`; whether it slept (a retry still fits).
async fn pause_before_retry(pause: std::time::Duration, deadline: tokio::time::Instant) -> bool {
    let until = tokio::time::Instant::now() + pause;
    if until >= deadline {
        return false;
    }
    tokio::time::sleep_until(until).await;
    true
}

fn strip_hop_by_hop(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter(|(n, _)| {
            !matches!(
                n.to_ascii_lowercase().as_str(),
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            )
        })
        .collect()
}

/// The most a request can cost: every body byte and every allowed completion token billed
/// at the highest multiplier and at `max_coefficient`.
pub fn worst_case_cost(
    params: &cocoon_ton::root::CocoonParams,
    max_tokens: u64,
    body_bytes: u64,
    max_coefficient: u64,
) -> u64 {
    let m = [
        params.prompt_tokens_price_multiplier,
        params.cached_tokens_price_multiplier,
        params.completion_tokens_price_multiplier,
        params.reasoning_tokens_price_multiplier,
    ]
    .into_iter()
    .max()
    .unwrap_or(10_000)
    .max(1);
    let tokens = u128::from(max_tokens.saturating_add(body_bytes));
    let adjusted = (tokens * u128::from(max_coefficient) * u128::from(m)).div_ceil(1000 * 10_000);
    u64::try_from(adjusted.saturating_mul(u128::from(params.price_per_token))).unwrap_or(u64::MAX)
}

fn key_error(e: ApiKeyError) -> ApiError {
    match e {
        ApiKeyError::Missing | ApiKeyError::Unknown => {
            ApiError::new(ErrorKind::Authentication, e.to_string())
        }
        ApiKeyError::Limit { .. } => ApiError::new(ErrorKind::InsufficientFunds, e.to_string()),
    }
}

impl Shared {
    /// Verifies an answer's receipts (both signatures under certificates the client checks
    /// itself, the worker's image and model in the root, the hashes of the body sent and the
    /// answer received, the billing against the final info and the price) and stores the
    /// receipt document.
    fn check_receipt(
        &self,
        c: &ReceiptCheck,
        f: &tclient::QueryFinalInfo,
        proxy: &str,
    ) -> Result<Option<cocoon_receipt::Receipt>, ApiError> {
        use cocoon_receipt::{Expect, Parts, Trust};
        let refused = |why: String| {
            ApiError::new(
                ErrorKind::Upstream,
                format!("proxy {proxy}: the answer's receipt is refused: {why}"),
            )
        };
        // Without `require_receipts` an answer may come without receipts, or with the
        // proxy's alone (a COCOON worker gives none); whatever does come must hold.
        let Some(r) = &c.got else {
            if !self.require_receipts {
                return Ok(None);
            }
            return Err(refused("the answer came without one".into()));
        };
        if r.worker_receipt.is_none() && !self.require_receipts {
            return Ok(None);
        }
        let worker_certificate = r
            .worker_receipt
            .as_deref()
            .and_then(|w| {
                <cocoon_tl::types::receipt::Worker as cocoon_tl::TlRead>::from_bytes(w).ok()
            })
            .and_then(|w| c.link.worker_certificate(&w.worker_key))
            .map(|cert| cert.as_ref().clone());
        let parts = Parts {
            worker_receipt: r.worker_receipt.clone(),
            worker_signature: r.worker_signature.clone().unwrap_or_default(),
            worker_certificate,
            proxy_receipt: r.proxy_receipt.clone(),
            proxy_signature: r.proxy_signature.clone(),
            proxy_certificate: c.link.proxy_certificate.clone(),
        };
        let root = self.root();
        let hashes = |v: &[cocoon_ton::HashBytes]| v.iter().map(|h| h.0).collect::<Vec<_>>();
        let (proxies, workers, models) = (
            hashes(&root.proxy_hashes),
            hashes(&root.worker_hashes),
            hashes(&root.model_hashes),
        );
        let trust = Trust {
            proxy_verifier: self.connector.verifier(),
            worker_verifier: &self.worker_verifier,
            proxy_hashes: self.check_proxy_hashes.then_some(&proxies[..]),
            worker_hashes: &workers,
            model_hashes: &models,
        };
        let expect = Expect {
            request_id: Some(c.id),
            request_hash: Some(c.request_hash),
            answer: Some(c.answer.digest()),
            model: Some(c.model.split('@').next().unwrap_or(&c.model)),
            billed: Some(f.tokens_used.clone()),
            price_per_token: Some(root.params.price_per_token),
            client_key: Some(c.link.own_key),
        };
        let v = cocoon_receipt::verify(&parts, &trust, &expect).map_err(|e| {
            tracing::warn!(proxy, error = %e, "answer receipt refused");
            refused(e.to_string())
        })?;
        let doc = cocoon_receipt::Receipt::of(&parts, &v);
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let keep_after = now.saturating_sub(self.receipt_retention.as_secs());
        match serde_json::to_string(&doc) {
            Ok(json) => {
                if let Err(e) = self.store.save_answer_receipt(
                    &doc.id,
                    c.key_hash.as_deref(),
                    doc.created,
                    &json,
                    keep_after,
                ) {
                    tracing::error!(error = %e, "could not store an answer receipt");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not encode an answer receipt"),
        }
        Ok(Some(doc))
    }

    /// The ready proxy with the fewest requests in flight, not among `tried`.
    fn pick(&self, tried: &[String], min_proto: i32) -> Option<(Arc<Slot>, Arc<Link>)> {
        let slots = self.slots();
        let mut best: Option<(u64, Arc<Slot>, Arc<Link>)> = None;
        for s in slots {
            if tried.contains(&s.address) {
                continue;
            }
            let Some(l) = s.ready() else { continue };
            if l.proto < min_proto {
                continue;
            }
            let load = s.inflight.load(std::sync::atomic::Ordering::Relaxed);
            if best.as_ref().is_none_or(|(b, _, _)| load < *b) {
                best = Some((load, s, l));
            }
        }
        best.map(|(_, s, l)| (s, l))
    }

    /// Why no proxy is usable, naming each.
    fn no_proxy_reason(&self) -> String {
        let parts: Vec<String> = self
            .slots()
            .iter()
            .map(|s| {
                let i = s.info();
                format!(
                    "{}: {}",
                    s.address,
                    i.last_error.unwrap_or_else(|| i.state.clone())
                )
            })
            .collect();
        if parts.is_empty() {
            "no working proxy connections".into()
        } else {
            format!("no working proxy connections ({})", parts.join("; "))
        }
    }

    /// Runs a request up to its answer's head.
    pub(crate) async fn start_request(self: &Arc<Self>, req: Request) -> Result<Answer, ApiError> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        self.stats.received(req.body.len() as u64);
        let fail = |e: ApiError| {
            self.stats.refused();
            e
        };
        if req.body.len() > self.timings.max_body_bytes {
            return Err(fail(ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!("request body over {} bytes", self.timings.max_body_bytes),
            )));
        }
        let mut v =
            validate_request(req.endpoint, &req.body, &ValidateOptions::default()).map_err(fail)?;
        let ext = v.extensions.clone();
        let timeout = match ext.timeout {
            Some(t) if !(t.is_finite() && t > 0.0) => {
                return Err(fail(ApiError::invalid(
                    "timeout",
                    "invalid_value",
                    "timeout must be a positive number of seconds",
                )));
            }
            Some(t) => Duration::from_secs_f64(t.min(self.timings.max_timeout.as_secs_f64())),
            None => self.timings.default_timeout,
        };
        // Both travel as TL ints: clamp before the worst case is computed from them.
        let max_coefficient = ext
            .max_coefficient
            .unwrap_or(DEFAULT_MAX_COEFFICIENT)
            .min(i32::MAX as u64);
        // One limit for the whole request: every sequence's completion tokens together, as
        // reserved here (the key's worst case), at the proxy (the TL `max_tokens`) and in the
        // body the engine reads (written now, so that an engine never runs past what was
        // reserved when the caller named no limit).
        let sequences = cocoon_openai::limit::sequences(req.endpoint, &v.body);
        // Embeddings complete nothing: only their prompt (bounded by the body's bytes) is
        // reserved.
        let max_tokens = if req.endpoint.generates() {
            v.max_tokens
                .unwrap_or(DEFAULT_MAX_TOKENS)
                .saturating_mul(sequences)
                .min(i32::MAX as u64)
        } else {
            0
        };
        cocoon_openai::cap_completion_tokens(req.endpoint, &mut v.body, max_tokens)
            .map_err(fail)?;
        let body = v.body_bytes();
        let root = self.root();
        let worst_case =
            worst_case_cost(&root.params, max_tokens, body.len() as u64, max_coefficient);
        let reservation = match &self.keys {
            Some(k) => Some(
                k.reserve(req.api_key.as_deref(), worst_case)
                    .map_err(|e| fail(key_error(e)))?,
            ),
            None => None,
        };
        let key_hash = reservation.as_ref().map(|r| r.key_hash().to_owned());
        let request_hash = cocoon_receipt::sha256(&body);
        let mut reservation = reservation;
        let deadline = tokio::time::Instant::now() + timeout;
        let query = fhttp::Request {
            method: "POST".into(),
            url: req.endpoint.path().into(),
            http_version: "HTTP/1.1".into(),
            headers: vec![thttp::Header {
                name: "Content-Type".into(),
                value: "application/json".into(),
            }],
            payload: body.clone(),
        }
        .to_bytes();
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<ApiError> = None;
        // Times a proxy was asked again after its peers reconnected.
        let mut again = 0u32;
        // Times a request was asked again after its session closed before any answer.
        let mut closed_again = 0u32;
        loop {
            // Embeddings travel only on protocol 3 sessions (a COCOON proxy never gets one).
            let min_proto = if req.endpoint.generates() { 0 } else { 3 };
            let picked = match self.pick(&tried, min_proto) {
                Some(p) => Some(p),
                None if tried.is_empty() => {
                    // Starting up or reconnecting: wait a little for a proxy.
                    let wait =
                        deadline.min(tokio::time::Instant::now() + self.timings.connect_timeout);
                    self.wait_ready(wait).await;
                    self.pick(&tried, min_proto)
                }
                None => None,
            };
            if picked.is_none() && tried.is_empty() && self.pick(&[], 0).is_some() {
                return Err(fail(ApiError::invalid(
                    "model",
                    "model_not_supported",
                    format!(
                        "The model {} does not support embeddings here: no connected proxy \
                         speaks protocol version 3.",
                        v.model
                    ),
                )));
            }
            let Some((slot, link)) = picked else {
                if tried.is_empty() && tokio::time::Instant::now() >= deadline {
                    last = Some(ApiError::new(
                        ErrorKind::Timeout,
                        format!(
                            "no proxy became ready within the request's deadline of {:.1} s ({})",
                            timeout.as_secs_f64(),
                            self.no_proxy_reason()
                        ),
                    ));
                }
                break;
            };
            tried.push(slot.address.clone());
            let id: [u8; 32] = rand::random();
            let Some(mut rx) = link.register(id) else {
                continue;
            };
            slot.inflight
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            slot.update(|i| i.requests += 1);
            let mut tracker = Tracker {
                shared: self.clone(),
                slot: slot.clone(),
                link: link.clone(),
                id,
                reservation: reservation.take(),
                worst_case,
                started,
                request_bytes: req.body.len() as u64,
                answer_bytes: 0,
                guid: ext
                    .request_guid
                    .as_ref()
                    .map(|g| sha2::Sha256::digest(g.as_bytes()).into()),
                model: v.model.clone(),
                receipt_id: None,
                forget_later: false,
                done: false,
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let q = fclient::RunQueryEx {
                model_name: v.model.clone(),
                query: query.clone(),
                max_coefficient: i32::try_from(max_coefficient).unwrap_or(i32::MAX),
                max_tokens: i32::try_from(max_tokens).unwrap_or(i32::MAX),
                timeout: remaining.as_secs_f64() * 0.95,
                request_id: id,
                min_config_version: root.version as i32,
                enable_debug: ext.enable_debug.then_some(true),
            };
            if link.handle.send_message(q.to_bytes()).await.is_err() {
                tracker.done = true;
                tracker.link.forget(&id);
                slot.inflight
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                reservation = tracker.reservation.take();
                last = Some(ApiError::new(
                    ErrorKind::Upstream,
                    format!("proxy {}: connection closed", slot.address),
                ));
                // Nothing reached the proxy: ask it again once it reconnected.
                if let Some(pause) = reconnect_pause(again) {
                    again += 1;
                    if pause_before_retry(pause, deadline).await {
                        tried.retain(|a| a != &slot.address);
                    }
                }
                continue;
            }
            let first = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => {
                    // Tracker's drop cancels at the proxy; nothing reached the caller.
                    tracker.finish(None, false);
                    tracker.cancel();
                    return Err(ApiError::new(
                        ErrorKind::Timeout,
                        format!(
                            "no answer within the request's deadline of {:.1} s (proxy {})",
                            timeout.as_secs_f64(),
                            slot.address
                        ),
                    ));
                }
                Ok(None) => Event::Closed("proxy connection closed".into()),
                Ok(Some(ev)) => ev,
            };
            match first {
                Event::Head {
                    status,
                    headers,
                    body,
                    done,
                } => {
                    // A request that asked for one JSON answer gets one (buffered, so that a
                    // late failure can still change the status); a streamed one is relayed.
                    let stream = v.stream
                        && headers.iter().any(|(n, v)| {
                            n.eq_ignore_ascii_case("content-type")
                                && v.contains("text/event-stream")
                        });
                    tracker.answer_bytes += body.len() as u64;
                    let head_at = SystemTime::now();
                    let mut headers = strip_hop_by_hop(headers);
                    headers.extend(extras::timing_headers(started_at, head_at));
                    // Protocol 3: every answer has a receipt, checked when it ends.
                    let receipt_check = (link.proto >= 3).then(|| {
                        let mut answer = cocoon_receipt::BodyHash::default();
                        answer.push(&body);
                        ReceiptCheck {
                            id,
                            request_hash,
                            model: v.model.clone(),
                            key_hash: key_hash.clone(),
                            answer,
                            got: None,
                            link: link.clone(),
                        }
                    });
                    if receipt_check.is_some() {
                        headers.push(("X-Cocoon-Receipt".into(), hex::encode(id)));
                    }
                    let mut extras = Extras::new(ext.enable_debug, started_at, head_at);
                    if receipt_check.is_some() {
                        // A stream's end waits for the final info, and for the check of a
                        // receipt that came before it: a refused one ends it with an error
                        // instead (one that follows is checked after the end).
                        extras.hold_done();
                    }
                    let mut a = Answer {
                        status,
                        headers,
                        proxy: slot.address.clone(),
                        attempts: tried.len() as u32,
                        time_to_head: started.elapsed(),
                        stream,
                        first: (!body.is_empty()).then_some(body),
                        rx,
                        deadline,
                        timeout,
                        tracker,
                        finished: false,
                        usage: None,
                        extras,
                        failed: None,
                        receipt_check,
                        receipt: None,
                        receipt_failed: None,
                    };
                    if a.stream {
                        a.first = a.first.take().map(|b| Bytes::from(a.extras.push(&b)));
                    }
                    if let Some(f) = done {
                        a.await_receipt().await;
                        a.complete_answer(&f, status < 400);
                        if let Some(e) = a.receipt_failed.take() {
                            a.first = None;
                            a.failed = Some(e);
                        } else {
                            a.append_final();
                        }
                    }
                    return Ok(a);
                }
                Event::Error {
                    code,
                    message,
                    done,
                } => {
                    let usage = done.as_ref().map(|f| usage_of(self, f));
                    let (kind, retry) = classify(code, &message);
                    let paid = usage.as_ref().is_some_and(|u| u.total_tokens > 0);
                    tracker.finish(usage.as_ref().or(Some(&Usage::default())), false);
                    let err = proxy_error(kind, &slot.address, &message);
                    if !retry || paid {
                        return Err(err);
                    }
                    last = Some(err);
                    // A refusal that ends once the proxy's peers reconnected (a params
                    // switch): the same proxy is asked again after a pause.
                    if let Some(pause) = reconnect_retry(&message, again) {
                        again += 1;
                        tracing::info!(proxy = %slot.address, code, "request refused while the proxy's peers reconnect; asking again");
                        if pause_before_retry(pause, deadline).await {
                            tried.retain(|a| a != &slot.address);
                        }
                    } else {
                        tracing::info!(proxy = %slot.address, code, "request failed before its answer; trying another proxy");
                    }
                }
                Event::Closed(why) => {
                    tracker.finish(Some(&Usage::default()), false);
                    last = Some(ApiError::new(
                        ErrorKind::Upstream,
                        format!("proxy {}: {why}", slot.address),
                    ));
                    // The session ended before any answer (a proxy switching to new params
                    // ends every session): the request is asked again once, of another proxy
                    // or of this one once it reconnected. Only once: it may have reached a
                    // worker, whose tokens the proxy bills, and a proxy that closes every
                    // session must not multiply that.
                    if closed_again == 0
                        && let Some(pause) = reconnect_pause(again)
                    {
                        closed_again += 1;
                        again += 1;
                        tracing::info!(proxy = %slot.address, "session closed before the answer; asking again");
                        if pause_before_retry(pause, deadline).await {
                            tried.retain(|a| a != &slot.address);
                        }
                    }
                }
                Event::Part { .. } | Event::Receipt(_) => {
                    tracker.finish(None, false);
                    return Err(ApiError::new(
                        ErrorKind::Upstream,
                        format!("proxy {}: answer part before its head", slot.address),
                    ));
                }
            }
            if let Some(k) = &self.keys {
                // The next attempt reserves again.
                match k.reserve(req.api_key.as_deref(), worst_case) {
                    Ok(r) => reservation = Some(r),
                    Err(e) => return Err(key_error(e)),
                }
            }
        }
        if let (Some(k), Some(r)) = (&self.keys, reservation.take()) {
            k.settle(r, 0);
        }
        self.stats.refused();
        Err(last.unwrap_or_else(|| ApiError::new(ErrorKind::Unavailable, self.no_proxy_reason())))
    }
}

impl Tracker {
    /// Tells the proxy (protocol 3) that we gave up on this request.
    fn cancel(&self) {
        if self.link.proto >= 3 {
            let m = tclient::CancelQuery {
                request_id: self.id,
                reason: "client deadline".into(),
            };
            let handle = self.link.handle.clone();
            tokio::spawn(async move {
                let _ = handle.send_message(m.to_bytes()).await;
            });
        }
    }
}

impl Answer {
    /// The answer ended normally with final info `f`: its receipt (protocol 3) is checked
    /// first, and a refused one makes it a failure (`receipt_failed`), still booked. A
    /// receipt not there yet follows the final info (our proxy sends it once the settlement
    /// is committed): the answer ends now and the receipt is checked when it comes.
    fn complete_answer(&mut self, f: &tclient::QueryFinalInfo, ok: bool) {
        let mut ok = ok;
        if self.stream && self.receipt_check.as_ref().is_some_and(|c| c.got.is_none()) {
            return self.check_later(f, ok);
        }
        if let Some(c) = &self.receipt_check {
            match self.tracker.shared.check_receipt(c, f, &self.proxy) {
                Ok(doc) => self.receipt = doc,
                Err(e) => {
                    ok = false;
                    self.receipt_failed = Some(e);
                }
            }
        }
        self.complete(f, ok);
    }

    /// A whole (not streamed) answer is released only with its receipt checked (D15):
    /// the receipt follows the final info by the proxy's commit, so it is awaited here,
    /// until [`RECEIPT_WAIT`] or the request's deadline; one that does not come makes the
    /// answer fail as an unreceipted one. A stream's content reached the app as it came,
    /// so only its end could wait, and it does not ([`Answer::check_later`]).
    async fn await_receipt(&mut self) {
        if self.stream || self.receipt_check.as_ref().is_none_or(|c| c.got.is_some()) {
            return;
        }
        let until = self
            .deadline
            .min(tokio::time::Instant::now() + RECEIPT_WAIT);
        while let Ok(Some(ev)) = tokio::time::timeout_at(until, self.rx.recv()).await {
            if let Event::Receipt(r) = ev {
                if let Some(c) = self.receipt_check.as_mut() {
                    c.got = Some(r);
                }
                return;
            }
        }
    }

    /// Books the answer now and checks its receipt when it arrives, in the background
    /// ([`RECEIPT_WAIT`] at most): the request is recorded as answered, with its receipt id;
    /// a receipt refused, or none in time, makes it count as failed (stats, the recent
    /// requests, `receipts_refused` in the stored totals) and `GET /v1/receipts/{id}` never
    /// serves it. The key is booked at the final info either way, as for any answer.
    fn check_later(&mut self, f: &tclient::QueryFinalInfo, ok: bool) {
        let Some(mut c) = self.receipt_check.take() else {
            return self.complete(f, ok);
        };
        let id = hex::encode(c.id);
        let shared = self.tracker.shared.clone();
        let done = shared.late_receipts.begin(&id);
        self.tracker.forget_later = true;
        self.tracker.receipt_id = Some(id.clone());
        self.complete(f, ok);
        let (link, rid, proxy, f) = (
            self.tracker.link.clone(),
            self.tracker.id,
            self.proxy.clone(),
            f.clone(),
        );
        let (_, closed) = mpsc::channel(1);
        let mut rx = std::mem::replace(&mut self.rx, closed);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + RECEIPT_WAIT;
            while let Ok(Some(ev)) = tokio::time::timeout_at(until, rx.recv()).await {
                if let Event::Receipt(r) = ev {
                    c.got = Some(r);
                    break;
                }
            }
            link.forget(&rid);
            let failed = match shared.check_receipt(&c, &f, &proxy) {
                Ok(Some(_)) => None,
                Ok(None) => Some(false),
                Err(e) => {
                    tracing::warn!(proxy, error = %e.message,
                        "an answer's receipt was refused after the answer ended; the request counts as failed");
                    Some(ok)
                }
            };
            if let Some(failed) = failed {
                shared.recent.receipt_gone(&id, failed);
                if failed {
                    shared.stats.receipt_refused();
                    if let Err(e) = shared.store.add_totals(&[("receipts_refused", 1)]) {
                        tracing::error!(error = %e, "could not store totals");
                    }
                }
            }
            shared.late_receipts.end(&id, done);
        });
    }

    /// The answer's verified receipt (protocol 3), once the body ended and the receipt
    /// came before the final info (`None` while it is still on its way: `GET
    /// /v1/receipts/{id}` waits for it).
    pub fn receipt(&self) -> Option<&cocoon_receipt::Receipt> {
        self.receipt.as_ref()
    }

    fn complete(&mut self, f: &tclient::QueryFinalInfo, ok: bool) {
        let u = usage_of(&self.tracker.shared, f);
        if let Some(d) = &self.receipt {
            self.tracker.receipt_id = Some(d.id.clone());
        }
        self.tracker.finish(Some(&u), ok);
        self.usage = Some(u);
        self.finished = true;
    }

    /// The next body bytes; `None` at the end. An error ends the body early (the proxy
    /// connection closed, the worker failed, or the deadline passed); bytes held back for
    /// pricing come before it. A stream's usage event carries the cost fields at the booked
    /// figure (and its end the debug line); a whole answer read this way is as the proxy
    /// sent it, [`Answer::collect`] adds both.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ApiError>> {
        if let Some(b) = self.first.take()
            && !b.is_empty()
        {
            return Some(Ok(b));
        }
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        if self.finished {
            return None;
        }
        let ev = loop {
            match tokio::time::timeout_at(self.deadline, self.rx.recv()).await {
                Ok(Some(Event::Receipt(r))) => {
                    if let Some(c) = self.receipt_check.as_mut() {
                        c.got = Some(r);
                    }
                }
                other => break other,
            }
        };
        let ev = match ev {
            Err(_) => {
                self.finished = true;
                self.tracker.cancel();
                self.tracker.finish(None, false);
                let e = ApiError::new(
                    ErrorKind::Timeout,
                    format!(
                        "the answer did not end within the request's deadline of {:.1} s",
                        self.timeout.as_secs_f64()
                    ),
                );
                return self.fail(e);
            }
            Ok(None) => Event::Closed("proxy connection closed".into()),
            Ok(Some(ev)) => ev,
        };
        match ev {
            Event::Part { body, done } => {
                self.tracker.answer_bytes += body.len() as u64;
                if let Some(c) = self.receipt_check.as_mut() {
                    c.answer.push(&body);
                }
                let body = if self.stream {
                    Bytes::from(self.extras.push(&body))
                } else {
                    body
                };
                if let Some(f) = done {
                    let ok = self.status < 400;
                    self.await_receipt().await;
                    self.complete_answer(&f, ok);
                    if let Some(e) = self.receipt_failed.take() {
                        return self.fail_unreceipted(body, e);
                    }
                    self.first = Some(body);
                    self.append_final();
                    let body = self.first.take().unwrap_or_default();
                    if body.is_empty() {
                        return None;
                    }
                    return Some(Ok(body));
                }
                Some(Ok(body))
            }
            Event::Error {
                code,
                message,
                done,
            } => {
                match done {
                    Some(f) => self.complete(&f, false),
                    None => {
                        self.finished = true;
                        self.tracker.finish(None, false);
                    }
                }
                let (kind, _) = classify(code, &message);
                let e = proxy_error(kind, &self.proxy, &message);
                self.fail(e)
            }
            Event::Closed(why) => {
                self.finished = true;
                self.tracker.finish(None, false);
                let e = ApiError::new(ErrorKind::Upstream, format!("proxy {}: {why}", self.proxy));
                self.fail(e)
            }
            Event::Head { .. } | Event::Receipt(_) => {
                self.finished = true;
                self.tracker.finish(None, false);
                let e = ApiError::new(
                    ErrorKind::Upstream,
                    format!("proxy {}: a second answer head", self.proxy),
                );
                self.fail(e)
            }
        }
    }

    /// The answer ended but its receipt was refused: a stream gets what it still holds
    /// except its `[DONE]`, then the error; a whole answer only the error.
    fn fail_unreceipted(&mut self, last: Bytes, e: ApiError) -> Option<Result<Bytes, ApiError>> {
        if !self.stream {
            return Some(Err(e));
        }
        let mut held = last.to_vec();
        held.extend(self.extras.flush_without_done());
        if held.is_empty() {
            return Some(Err(e));
        }
        self.failed = Some(e);
        Some(Ok(Bytes::from(held)))
    }

    /// Ends the body with `e`: a stream's held bytes go first, unchanged.
    fn fail(&mut self, e: ApiError) -> Option<Result<Bytes, ApiError>> {
        let held = if self.stream {
            self.extras.flush()
        } else {
            Vec::new()
        };
        if held.is_empty() {
            return Some(Err(e));
        }
        self.failed = Some(e);
        Some(Ok(Bytes::from(held)))
    }

    /// A stream's final info arrived: the held usage priced at what was booked, and the
    /// debug line, after the bytes in `first`.
    fn append_final(&mut self) {
        let Some(u) = self.usage.clone().filter(|_| self.stream) else {
            return;
        };
        let tail = self.extras.finish_stream(&u, self.price_per_token());
        if !tail.is_empty() {
            let mut b = self.first.take().map(|b| b.to_vec()).unwrap_or_default();
            b.extend_from_slice(&tail);
            self.first = Some(Bytes::from(b));
        }
    }

    fn price_per_token(&self) -> u64 {
        self.tracker.shared.root().params.price_per_token
    }

    /// A whole (not streamed) answer's body as the app gets it: its usage carries the cost
    /// fields at the booked figure, and with `enable_debug` COCOON's debug object.
    pub(crate) fn finish_whole(&self, body: Vec<u8>) -> Vec<u8> {
        self.extras
            .finish_whole(body, self.usage.as_ref(), self.price_per_token())
    }

    /// COCOON's debug object when the request asked for it (`enable_debug`).
    pub(crate) fn debug_object(&self) -> Option<serde_json::Value> {
        self.extras.debug().then(|| {
            self.extras
                .debug_object(self.usage.as_ref(), SystemTime::now())
        })
    }

    /// What the request used; known once the body ended.
    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    /// Reads the whole body.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut body = Vec::new();
        while let Some(c) = self.next_chunk().await {
            let c = c?;
            if body.len() + c.len() > MAX_ANSWER_BYTES {
                return Err(ApiError::new(
                    ErrorKind::Upstream,
                    format!("the answer is over {MAX_ANSWER_BYTES} bytes; read it as a stream"),
                ));
            }
            body.extend_from_slice(&c);
        }
        let body = if self.stream {
            body
        } else {
            self.finish_whole(body)
        };
        Ok(Collected {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            proxy: self.proxy.clone(),
            body,
            usage: self.usage.clone().unwrap_or_default(),
        })
    }
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Collected {
    /// HTTP status.
    pub status: u16,
    /// HTTP headers.
    pub headers: Vec<(String, String)>,
    /// The proxy that served it.
    pub proxy: String,
    /// The body.
    pub body: Vec<u8>,
    /// Usage and cost.
    pub usage: Usage,
}

impl Collected {
    /// The body as JSON (non-streamed answers).
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_until_reconnected_ask_the_same_proxy_again_with_growing_pauses() {
        let ms = |m: &str, n| reconnect_retry(m, n).map(|d| d.as_millis());
        let switching = "proxy is switching to params_version 2; retry after reconnecting";
        let back = "workers for model M are reconnecting; retry after reconnecting";
        assert_eq!(ms(switching, 0), Some(100));
        assert_eq!(ms(back, 1), Some(200));
        assert_eq!(ms(back, 3), Some(800));
        assert_eq!(ms(back, 4), Some(1000));
        assert_eq!(ms(back, RECONNECT_RETRIES - 1), Some(1000));
        assert_eq!(ms(back, RECONNECT_RETRIES), None, "bounded");
        for other in [
            "no workers for model M",
            "proxy is disabled",
            "worker connection lost",
        ] {
            assert_eq!(ms(other, 0), None, "{other}");
        }
    }

    #[test]
    fn errors_map_to_http_kinds_and_retry() {
        use ErrorCode as C;
        use ErrorKind as K;
        // (code, message, kind, whether another proxy may serve the request)
        let cases: [(C, &str, K, bool); 22] = [
            // Our proxy's refusals when a model's queue is full or the wait passed its limit.
            (
                C::NotReady,
                "all workers for model Smol are busy and its queue is full (2 waiting); retry after 1 s",
                K::NoCapacity,
                true,
            ),
            (
                C::NotReady,
                "all workers for model Smol are busy and its queue wait limit (300 s) passed; retry after 1 s",
                K::NoCapacity,
                true,
            ),
            (C::Timeout, "timeout in proxy", K::Timeout, false),
            (
                C::NotReady,
                "client balance is too low: 3 tokens available, 9 needed",
                K::InsufficientFunds,
                true,
            ),
            (C::NotReady, "no workers for model X", K::NotFound, true),
            (C::Error, "too many active queries", K::NoCapacity, true),
            (C::NotReady, "worker connection lost", K::Upstream, true),
            (C::Error, "invalid timeout", K::Upstream, false),
            (C::Cancelled, "x", K::Upstream, false),
            // COCOON's proxy's own rejections (`client.queryAnswerError`), as it words them.
            (
                C::Error,
                "client balance is too low: max_tokens=1000 tokens_payed=0 tokens_used=0 tokens_reserved=0 tokens_stake=0",
                K::InsufficientFunds,
                true,
            ),
            (
                C::NotReady,
                "balance is too low",
                K::InsufficientFunds,
                true,
            ),
            (C::ProtoViolation, "unknown model Smol", K::NotFound, true),
            (
                C::NotReady,
                "no ready workers for modelSmol",
                K::NoCapacity,
                true,
            ),
            (
                C::NotReady,
                "can run this query with coefficient=5000",
                K::NoCapacity,
                true,
            ),
            (
                C::Error,
                "active config version is too low",
                K::Upstream,
                true,
            ),
            (C::Error, "connection is dead", K::Upstream, true),
            (C::NotReady, "client is closing", K::Upstream, true),
            // Our proxy between its ledger's move to new params and its contract switch.
            (
                C::NotReady,
                "proxy is switching to params_version 2; retry after reconnecting",
                K::Upstream,
                true,
            ),
            // Our proxy after the switch, while the model's workers come back.
            (
                C::NotReady,
                "workers for model Smol are reconnecting; retry after reconnecting",
                K::Upstream,
                true,
            ),
            (C::NotReady, "proxy is disabled", K::Upstream, true),
            (C::Timeout, "timeout in proxy", K::Timeout, false),
            (
                C::Error,
                "reserved_tokens depleted: reserved_tokens=10 used=5+9",
                K::Upstream,
                false,
            ),
        ];
        for (code, m, kind, retry) in cases {
            assert_eq!(classify(code as i32, m), (kind, retry), "{code:?}: {m}");
        }
    }

    #[test]
    fn refusals_of_the_request_keep_their_param_and_code() {
        let e = proxy_error(
            ErrorKind::InvalidRequest,
            "127.0.0.1:1",
            "worker: invalid request: Unsupported parameter: 'n' is not supported \
             (param: n; code: unsupported_parameter)",
        );
        assert_eq!(e.status(), 400);
        assert_eq!(e.message, "Unsupported parameter: 'n' is not supported");
        assert_eq!(e.param.as_deref(), Some("n"));
        assert_eq!(e.code, Some("unsupported_parameter"));
        // The proxy's own refusal, and an old worker's text with the param in parentheses.
        let e = proxy_error(ErrorKind::InvalidRequest, "p", "invalid request: no room");
        assert_eq!((e.message.as_str(), e.param), ("no room", None));
        let e = proxy_error(
            ErrorKind::InvalidRequest,
            "p",
            "worker: invalid request: x must be a number (x)",
        );
        assert_eq!(
            (e.message.as_str(), e.param),
            ("x must be a number (x)", None)
        );
        // Other failures name the proxy.
        let e = proxy_error(ErrorKind::Upstream, "p", "worker: engine: engine busy");
        assert_eq!(e.message, "proxy p: worker: engine: engine busy");
        assert_eq!(e.status(), 502);
    }

    #[test]
    fn retry_after_comes_from_the_refusal() {
        let full = "proxy 127.0.0.1:1: all workers for model M are busy and its queue is full (2 waiting); retry after 3 s";
        assert_eq!(retry_after_secs(full), 3);
        assert_eq!(retry_after_secs("too many active queries"), 1);
        assert_eq!(retry_after_secs("retry after reconnecting"), 1);
        assert_eq!(retry_after_secs("retry after 0 s"), 1);
        assert_eq!(retry_after_secs("retry after 99999 s"), 60);
    }

    #[test]
    fn worst_case_bounds_the_price_formula() {
        let p = cocoon_ton::root::CocoonParams {
            price_per_token: 20,
            prompt_tokens_price_multiplier: 10_000,
            cached_tokens_price_multiplier: 5_000,
            completion_tokens_price_multiplier: 20_000,
            reasoning_tokens_price_multiplier: 10_000,
            ..cocoon_ton::root::CocoonParams::default()
        };
        // (100 + 50) tokens × 4.0 × 2.0 × 20 nanoTON.
        assert_eq!(worst_case_cost(&p, 100, 50, 4000), 150 * 8 * 20);
        let prices = cocoon_openai::PriceTable {
            price_per_token: 20,
            worker_fee_per_token: 10,
            multipliers: cocoon_openai::Multipliers {
                prompt: 10_000,
                cached: 5_000,
                completion: 20_000,
                reasoning: 10_000,
            },
        };
        let usage = cocoon_openai::Usage::new(50, 100);
        let billed = prices.client_cost(prices.adjust(&usage, 4000).total);
        assert!(billed <= u128::from(worst_case_cost(&p, 100, 50, 4000)));
    }
}
