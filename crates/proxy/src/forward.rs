//! One task per client request: reserve, route, relay, retry, settle.
//!
//! 1. Checks (proxy enabled, config version, timeout, sizes) and a reservation of
//!    `(max_tokens + request bytes) × max_coefficient/1000 × highest multiplier/10000`
//!    adjusted tokens (with the multiplier, so a completion-heavy answer cannot outrun its
//!    reservation).
//! 2. A worker is leased from the registry (see `router`) and sent `proxy.runQueryEx` with a
//!    fresh proxy-side request id (the client's id never reaches the worker).
//! 3. The worker's head and parts are relayed to the client as they arrive. If the worker
//!    fails before the first byte reached the client, the request is retried once on
//!    another worker (the failed attempt is not billed to the client); after the first byte
//!    it never is, and the client gets an error carrying the usage the worker reported.
//! 4. Client cancel (`client.cancelQuery`), client disconnect and the client's deadline
//!    send `proxy.cancelQuery` to the worker (v3), wait a little for its final usage, and
//!    bill that.
//! 5. The settlement is booked (`Meter::book`) before the client sees the final info; its
//!    commit completes before a protocol 1–2 client sees it, and before the answer's receipt
//!    (protocol 3) and either side's payment message are sent (see `settle`).
//!
//! A request is one `Forwarding` (its context: shared state, the client, the query, what was
//! reserved, the start time, the cancel signal) and each attempt one `Relay` (the lease, the
//! quote, what the stream showed so far). Time is `Instant`/`SystemTime`/`Duration` inside;
//! seconds as `f64` exist only in the TL fields (the client's timeout, the worker's, the final
//! info's timings).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use cocoon_net::{ErrorCode, SessionHandle};
use cocoon_openai::{CostInjector, Endpoint, PriceTable, Usage, UsageTracker};
use cocoon_tl::functions::{client as fclient, proxy as fproxy};
use cocoon_tl::types::{TokensUsed, client as tclient, http as thttp, proxy as tproxy};
use cocoon_tl::{TlRead, TlWrite};
use rand::Rng;
use tokio::sync::watch;

mod settle;

pub(crate) use self::settle::reject;
use self::settle::{Last, Outgoing, unix_secs};
use crate::meter::{Charge, Party};
use crate::prices::{price_table, reservation};
use crate::receipts::payment;
use crate::registry::{AcquireError, AttemptOutcome, Lease, LeaseRequest, PayLock, WorkerEvent};
use crate::router::RouteError;
use crate::usage_audit::{self, Quote};
use crate::{Counters, Shared, admission, queue};

/// Why a running request is being stopped from the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// `client.cancelQuery`.
    ClientCancel,
    /// The client session ended.
    ClientGone,
    /// The proxy is shutting down.
    Shutdown,
}

/// Who asked, and how to answer.
pub(crate) struct ClientCtx {
    pub handle: SessionHandle,
    /// Orders payment reports to this client session.
    pub pay_lock: PayLock,
    pub proto: i32,
    pub client_sc: String,
    #[allow(dead_code)]
    pub owner: String,
    /// Signs the receipts of this session's answers (protocol 3).
    pub receipts: Option<Arc<SessionReceipts>>,
    /// The client session (the queue is fair across sessions).
    pub session: u64,
}

/// Most workers whose evidence a client session is known to hold; past it the set starts
/// over (evidence is sent again, never missing).
const EVIDENCE_SENT_MAX: usize = 1024;

/// A client session's receipts (protocol 3): the proxy's certificate key, the client's, and
/// the workers whose certificates the client already has.
pub(crate) struct SessionReceipts {
    pub key: cocoon_ratls::sign::SessionKey,
    pub client_key: [u8; 32],
    pub evidence_sent: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl SessionReceipts {
    /// `client.workerEvidence` for the leased worker, unless this session already had it.
    fn evidence(&self, lease: &Lease) -> Option<Vec<u8>> {
        let mut sent = self.evidence_sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.contains(&lease.tls_key) {
            return None;
        }
        if sent.len() >= EVIDENCE_SENT_MAX {
            sent.clear();
        }
        sent.insert(lease.tls_key);
        Some(
            tclient::WorkerEvidence {
                worker_key: lease.tls_key,
                certificate: lease.certificate.as_ref().clone(),
            }
            .to_bytes(),
        )
    }
}

/// What stopped a request before the worker's final message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Client(CancelReason),
    Deadline,
    /// The usage reported mid-stream outgrew the reservation.
    Depleted,
    /// The client stopped reading: its answer buffer at the proxy is full.
    ClientSlow,
}

/// The request body with its completion tokens capped to `max_tokens` (all sequences
/// together; see `cocoon_openai::limit`), and the limit written into it. The client's body is
/// otherwise passed on as it came; one with duplicate keys, or that is not a JSON object for a
/// known endpoint, is refused here (an engine could read it differently from us).
pub(crate) fn cap_query(query: &[u8], max_tokens: u64) -> Result<(Vec<u8>, u64, Endpoint), String> {
    let mut http = cocoon_tl::functions::http::Request::from_bytes(query)
        .map_err(|e| format!("invalid http request: {e}"))?;
    let path = http.url.split(['?', '#']).next().unwrap_or("");
    let Some(endpoint) = Endpoint::from_path(path) else {
        return Err("unsupported method".into());
    };
    let body = cocoon_openai::validate::parse_strict(&http.payload).map_err(|e| e.message)?;
    let serde_json::Value::Object(mut body) = body else {
        return Err("request body must be a JSON object".into());
    };
    let limit = cocoon_openai::cap_completion_tokens(endpoint, &mut body, max_tokens)
        .map_err(|e| e.message)?;
    http.payload = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    // The body's length changed: a length header from the client would now be wrong.
    http.headers
        .retain(|h| !h.name.eq_ignore_ascii_case("content-length"));
    Ok((
        http.to_bytes(),
        limit.total().unwrap_or(max_tokens),
        endpoint,
    ))
}

/// The adjusted usage seen in the stream so far (zero when the engine reported none).
fn tracked(tracker: &UsageTracker, prices: &PriceTable, coefficient: i32) -> Charge {
    let Some(u) = tracker.usage() else {
        return Charge::default();
    };
    let coefficient = u64::try_from(coefficient).unwrap_or(0);
    usage_audit::charge_of_adjusted(&u, coefficient, prices)
}

/// Most bytes of an unparsed JSON answer the usage tracker buffers per request.
const TRACKER_LIMIT: usize = 1 << 20;

/// Whether a worker error before the first byte is worth another worker.
fn retryable(code: i32, msg: &str) -> bool {
    match ErrorCode::from_i32(code) {
        Some(ErrorCode::NotReady | ErrorCode::Failure) => true,
        Some(ErrorCode::Error) => msg.contains("too many active queries"),
        _ => false,
    }
}

/// The worker's HTTP head as the client gets it: the proxy's timing headers added (COCOON's:
/// when the proxy took the request and when it relayed the head, Unix seconds with 6
/// decimals), and the payload it carries fed to the usage tracker and priced (the whole
/// answer when `last`).
fn relayed_head(r: &mut Relay, answer: Vec<u8>, start: SystemTime, last: bool) -> Vec<u8> {
    let Ok(mut resp) = thttp::Response::from_bytes(&answer) else {
        return answer;
    };
    r.tracker.push(&resp.payload);
    resp.payload = r.priced(&resp.payload, last);
    resp.headers.push(thttp::Header {
        name: "X-Cocoon-Proxy-Start".into(),
        value: format!("{:.6}", unix_secs(start)),
    });
    resp.headers.push(thttp::Header {
        name: "X-Cocoon-Proxy-End".into(),
        value: format!("{:.6}", unix_secs(SystemTime::now())),
    });
    resp.to_bytes()
}

/// COCOON's cost fields, priced from the usage in the answer as the proxy's audit counts it:
/// adjusted at the quoted coefficient and the root's multipliers, the completion tokens cut
/// to the body's limit, the total capped at the reservation, times `price_per_token`. An
/// honest worker's report is booked at exactly this (and our worker adds the same fields), and
/// a report the audit lowers is booked at the answer's usage: the client sees the costs of
/// what it pays, never a worker's claim.
fn cost_injector(quote: &Quote) -> CostInjector {
    let (prices, reserved, limit) = (quote.prices, quote.reserved, quote.completion_limit);
    let coefficient = u64::try_from(quote.coefficient).unwrap_or(0);
    CostInjector::new(COST_BUFFER_BYTES, prices.price_per_token, move |u| {
        let mut u = *u;
        if u.completion_tokens > limit {
            u.completion_tokens = limit;
            if let Some(d) = u.completion_tokens_details.as_mut() {
                d.reasoning_tokens = d.reasoning_tokens.min(limit);
            }
        }
        let (c, _) = usage_audit::cap(
            usage_audit::charge_of_adjusted(&u, coefficient, &prices),
            reserved,
        );
        cocoon_openai::usage::AdjustedTokens {
            categories: cocoon_openai::TokenCategories {
                prompt: c.prompt,
                cached: c.cached,
                completion: c.completion,
                reasoning: c.reasoning,
            },
            total: c.total,
        }
    })
}

/// Most bytes of one unfinished SSE event or JSON value the proxy holds to price it.
const COST_BUFFER_BYTES: usize = 1 << 20;

/// Longest the cancel of a silent worker's attempt may wait for room in its session.
const QUIET_CANCEL_WAIT: Duration = Duration::from_secs(1);

/// How one attempt ended.
enum Attempt {
    /// Failed before the first byte; another worker may be tried. `quiet`: the worker went
    /// silent (not a failure it reported or a session that ended).
    Retry { code: i32, msg: String, quiet: bool },
    /// The request is over (answered, failed or cancelled; settled); what to tell.
    Done(Box<Outgoing>),
}

/// How an attempt ended and what it says about the worker.
type Ended = (Attempt, AttemptOutcome);

/// What a request was admitted with: checked, capped and reserved.
struct Plan {
    /// When the request must be over (the client's timeout, capped by ours).
    deadline: tokio::time::Instant,
    /// The body the worker gets (completion tokens capped to the reservation).
    query: Vec<u8>,
    /// Completion tokens the body allows.
    completion_limit: u64,
    /// Adjusted tokens reserved in the meter.
    reserved: u64,
    prices: PriceTable,
    model_base: String,
    /// A `/v1/embeddings` request: only workers that embed (protocol 3) may serve it.
    embeddings: bool,
}

/// The checks before a request runs, its body capped and its tokens reserved; the error is
/// what the client is told (nothing was reserved then).
async fn prepare(
    shared: &Shared,
    ctx: &ClientCtx,
    q: &fclient::RunQueryEx,
) -> Result<Plan, (ErrorCode, String)> {
    if !shared.enabled.load(Ordering::SeqCst) {
        return Err((ErrorCode::NotReady, "proxy is disabled".into()));
    }
    let root = shared.root();
    if i64::from(q.min_config_version) > i64::from(root.version) {
        return Err((
            ErrorCode::NotReady,
            "active config version is too low".into(),
        ));
    }
    // Between the ledger's move to new params and the contract switch (milliseconds) the
    // old accounts take no new requests: a retryable refusal; the session ends right after
    // and the client comes back under the new contracts.
    let switching = shared.switching_to.load(Ordering::SeqCst);
    if switching > root.params.params_version {
        return Err((
            ErrorCode::NotReady,
            format!("proxy is switching to params_version {switching}; retry after reconnecting"),
        ));
    }
    if !(q.timeout.is_finite() && q.timeout > 0.0) {
        return Err((ErrorCode::Error, "invalid timeout".into()));
    }
    if q.max_tokens < 0 || q.max_coefficient < 0 {
        return Err((
            ErrorCode::Error,
            "negative max_tokens or max_coefficient".into(),
        ));
    }
    let timeout = Duration::from_secs_f64(
        q.timeout
            .min(shared.timings.max_request_timeout.as_secs_f64()),
    );
    let deadline = tokio::time::Instant::now() + timeout;
    // The worker gets the body with the completion limit that is reserved now: a body asking
    // for more than the client's `max_tokens` is cut down to it.
    let (query, completion_limit, endpoint) =
        cap_query(&q.query, u64::try_from(q.max_tokens).unwrap_or(0))
            .map_err(|e| (ErrorCode::Error, format!("invalid request: {e}")))?;
    let model_base = admission::model_base(&q.model_name).to_owned();
    let embeddings = endpoint == Endpoint::Embeddings;
    // Embeddings are ours (protocol 3): a COCOON client or worker session never carries one,
    // and a model none of whose protocol 3 workers embeds is refused as OpenAI refuses it.
    if embeddings && ctx.proto < 3 {
        return Err((
            ErrorCode::Error,
            "invalid request: /v1/embeddings needs protocol version 3".into(),
        ));
    }
    if embeddings && !shared.registry.embeds(&model_base) {
        let e = cocoon_openai::ApiError::invalid(
            "model",
            "model_not_supported",
            format!("The model {model_base} does not support embeddings."),
        );
        return Err((
            ErrorCode::Error,
            format!("invalid request: {}", e.to_wire()),
        ));
    }
    let reserved = reservation(q.max_tokens, q.query.len(), q.max_coefficient, &root.params);
    shared
        .meter
        .reserve(&ctx.client_sc, q.request_id, reserved)
        .await
        .map_err(|e| (ErrorCode::NotReady, e.to_string()))?;
    Ok(Plan {
        deadline,
        query,
        completion_limit,
        reserved,
        prices: price_table(&root.params),
        model_base,
        embeddings,
    })
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    ctx: ClientCtx,
    q: fclient::RunQueryEx,
    cancel: watch::Receiver<Option<CancelReason>>,
) {
    Counters::inc(&shared.counters.requests_received);
    let start = SystemTime::now();
    let plan = match prepare(&shared, &ctx, &q).await {
        Ok(p) => p,
        Err((code, msg)) => {
            return reject(&shared, &ctx.handle, ctx.proto, q.request_id, code, &msg);
        }
    };
    let mut f = Forwarding {
        shared,
        ctx,
        q,
        plan,
        start,
        cancel,
        answer_at: std::sync::OnceLock::new(),
    };
    f.forward().await;
}

/// One client request on its way through the proxy: who asked, what, what was reserved,
/// and the clock it runs on.
struct Forwarding {
    shared: Arc<Shared>,
    ctx: ClientCtx,
    q: fclient::RunQueryEx,
    plan: Plan,
    /// When the proxy took the request (the timings in the final info and the HTTP head).
    start: SystemTime,
    /// The client's cancel (`client.cancelQuery`, its session ending, shutdown).
    cancel: watch::Receiver<Option<CancelReason>>,
    /// When the worker's answer head arrived (the proxy's debug output).
    answer_at: std::sync::OnceLock<SystemTime>,
}

/// One attempt on one worker: the lease, what was quoted, and what the relay saw so far.
struct Relay {
    lease: Lease,
    quote: Quote,
    /// Another worker may be tried if this one fails before the first byte.
    can_retry: bool,
    /// Another worker may be tried if this one goes silent before the first byte.
    can_retry_quiet: bool,
    /// When the request went to the worker.
    sent: Instant,
    /// The usage the answer carries (the proxy's own count). Usage the engine reports
    /// mid-stream (some engines send it with every chunk) is checked against the
    /// reservation as the parts go by.
    tracker: UsageTracker,
    first_byte: Option<Duration>,
    stopped: Option<Stop>,
    /// How long a stopped attempt waits for the worker's final usage.
    grace: tokio::time::Instant,
    /// Set when the client fell a whole answer buffer behind.
    overflow: watch::Receiver<bool>,
    /// The worker's suspicion (silent for two ping intervals, see `worker_side`).
    suspect: watch::Receiver<bool>,
    /// Prices the usage objects of the body as they go by (`None`: the body passes as the
    /// worker sent it, which a protocol 3 client checks against the worker's receipt and
    /// prices itself).
    costs: Option<CostInjector>,
    /// The worker's receipt for the answer (protocol 3), once it came.
    receipt: Option<tproxy::AnswerReceipt>,
}

impl Relay {
    fn new(lease: Lease, quote: Quote, retry: Retries, pricing: bool) -> Relay {
        Relay {
            overflow: lease.overflow.clone(),
            suspect: lease.suspect.clone(),
            costs: pricing.then(|| cost_injector(&quote)),
            receipt: None,
            lease,
            quote,
            can_retry: retry.failed,
            can_retry_quiet: retry.quiet,
            sent: Instant::now(),
            tracker: UsageTracker::with_limit(TRACKER_LIMIT),
            first_byte: None,
            stopped: None,
            grace: tokio::time::Instant::now(),
        }
    }

    /// `chunk` of the body with its usage objects priced; `last` flushes what is held.
    fn priced(&mut self, chunk: &[u8], last: bool) -> Vec<u8> {
        let Some(costs) = self.costs.as_mut() else {
            return chunk.to_vec();
        };
        let mut out = costs.push(chunk);
        if last {
            out.extend(costs.finish());
        }
        out
    }

    /// Keeps the worker's receipt when it is the leased worker's signature over a receipt
    /// for this attempt (a bad one is reported and dropped: the client then has none).
    fn take_receipt(&mut self, shared: &Shared, m: tproxy::AnswerReceipt) {
        let ok = cocoon_ratls::sign::verify_signature(
            &self.lease.tls_key,
            cocoon_receipt::WORKER_DOMAIN,
            &m.receipt,
            &m.signature,
        ) && cocoon_tl::types::receipt::Worker::from_bytes(&m.receipt).is_ok_and(|w| {
            w.request_id == self.lease.proxy_request_id && w.worker_key == self.lease.tls_key
        });
        if ok {
            self.receipt = Some(m);
        } else {
            shared.event(
                "receipt_invalid",
                &self.lease.worker_sc,
                "the worker's answer receipt does not verify",
            );
        }
    }

    /// Usage the proxy counted itself (from the answer), bounded by the reservation.
    fn seen(&self) -> Charge {
        let c = tracked(&self.tracker, &self.quote.prices, self.quote.coefficient);
        let (c, _) = usage_audit::cap(c, self.quote.reserved);
        c
    }
}

/// Which failures before the first byte let the request go on to another worker.
#[derive(Clone, Copy)]
struct Retries {
    /// A failure the worker reported or its session ending.
    failed: bool,
    /// The worker going silent.
    quiet: bool,
}

impl Forwarding {
    /// Routes the request and tells the client how it ended. A worker that fails before
    /// the first byte is tried once more elsewhere; a worker that goes silent before it
    /// (see `worker_ping_seconds`) gives way to the next one, each worker of the model
    /// tried at most once, while the deadline allows.
    async fn forward(&mut self) {
        let shared = Arc::clone(&self.shared);
        let rid = self.q.request_id;
        let mut tried: Vec<u64> = Vec::new();
        let mut last: Option<(i32, String)> = None;
        let limit = shared.registry.workers_of(&self.plan.model_base).max(2);
        let mut last_quiet = false;
        for attempt in 0..limit {
            // Past the second try only after silent workers.
            if attempt >= 2 && !last_quiet {
                break;
            }
            if self.cancel.borrow().is_some() {
                last = Some((
                    ErrorCode::Cancelled as i32,
                    "cancelled by the client".into(),
                ));
                break;
            }
            let request = LeaseRequest {
                model_base: &self.plan.model_base,
                max_coefficient: self.q.max_coefficient,
                exclude: &tried,
                roll: rand::rng().random(),
                proxy_request_id: rand::rng().random(),
                embeddings: self.plan.embeddings,
            };
            let lease = match self.acquire(&request).await {
                Ok(l) => l,
                Err(e) => {
                    if last.is_none() {
                        last = Some(self.refusal(e));
                    }
                    break;
                }
            };
            tried.push(lease.worker);
            if attempt > 0 {
                Counters::inc(&shared.counters.retries);
            }
            tracing::debug!(
                request = %hex::encode(&rid[..8]),
                worker = lease.worker,
                attempt,
                probe = lease.probe,
                "request routed"
            );
            if !self.send_to_worker(&lease).await {
                lease.finish(
                    &shared.router,
                    Instant::now(),
                    AttemptOutcome::Failure { ttft: None },
                );
                last = Some((ErrorCode::NotReady as i32, "worker connection lost".into()));
                last_quiet = false;
                continue;
            }
            let quote = Quote {
                coefficient: lease.coefficient,
                prices: self.plan.prices,
                reserved: self.plan.reserved,
                completion_limit: self.plan.completion_limit,
            };
            let pricing = self.ctx.receipts.is_none();
            let retry = Retries {
                failed: attempt == 0,
                quiet: attempt + 1 < limit,
            };
            let mut relay = Relay::new(lease, quote, retry, pricing);
            let (ended, outcome) = self.relay(&mut relay).await;
            // Books, counters and the worker's health first; then the peers are told.
            relay.lease.finish(&shared.router, Instant::now(), outcome);
            match ended {
                Attempt::Done(out) => {
                    out.send(&shared, &self.ctx, &rid).await;
                    return;
                }
                Attempt::Retry { code, msg, quiet } => {
                    last_quiet = quiet;
                    tracing::info!(
                        request = %hex::encode(&rid[..8]),
                        code,
                        reason = %msg,
                        "worker failed before the first byte; trying another"
                    );
                    last = Some((code, msg));
                }
            }
        }
        self.fail(last).await;
    }

    /// A worker for this attempt, waiting in the model's queue while all are busy (until
    /// the request's deadline, at most `queue_max_wait`, or the client's cancel).
    async fn acquire(&self, request: &LeaseRequest<'_>) -> Result<Lease, AcquireError> {
        let timings = &self.shared.timings;
        let until = Instant::now()
            + self
                .plan
                .deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(timings.queue_max_wait);
        let mut cancel = self.cancel.clone();
        let stop = async move {
            let _ = cancel.wait_for(Option::is_some).await;
        };
        let registry = &self.shared.registry;
        registry
            .acquire(&self.shared.router, request, self.ctx.session, until, stop)
            .await
    }

    /// What the client is told when no worker was found for the request.
    fn refusal(&self, e: AcquireError) -> (i32, String) {
        let shared = &self.shared;
        let model = &self.plan.model_base;
        let msg = match e {
            // Its workers just left (a params switch ends their sessions, a worker
            // redials): the client asks again after a pause.
            AcquireError::Route(RouteError::NoWorkers)
                if shared.registry.reconnecting(model, Instant::now()) =>
            {
                format!("workers for model {model} are reconnecting; retry after reconnecting")
            }
            AcquireError::Route(RouteError::NoWorkers) => format!("no workers for model {model}"),
            AcquireError::Route(other) => other.to_string(),
            AcquireError::Full {
                waiting,
                retry_after,
            } => queue::queue_full_message(model, waiting, retry_after),
            AcquireError::Expired if tokio::time::Instant::now() >= self.plan.deadline => {
                return (ErrorCode::Timeout as i32, "timeout in proxy".into());
            }
            AcquireError::Expired => {
                let retry_after = shared.registry.retry_after_now(&shared.router, model);
                queue::queue_wait_message(model, shared.timings.queue_max_wait, retry_after)
            }
            AcquireError::Stopped => {
                return (
                    ErrorCode::Cancelled as i32,
                    "cancelled by the client".into(),
                );
            }
        };
        (ErrorCode::NotReady as i32, msg)
    }

    /// Sends `proxy.runQueryEx` to the leased worker; `false` when its session is gone.
    async fn send_to_worker(&self, lease: &Lease) -> bool {
        let remaining = self
            .plan
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        // The receipt riding along is read and sent under the worker's payment lock, like
        // the payment reports: a worker never sees its receipts go down.
        let pay_guard = lease.pay_lock.clone().lock_owned().await;
        let msg = fproxy::RunQueryEx {
            query: self.plan.query.clone(),
            signed_payment: payment(&*self.shared.meter, Party::Worker, &lease.worker_sc),
            coefficient: i64::from(lease.coefficient),
            timeout: remaining.as_secs_f64(),
            request_id: lease.proxy_request_id,
            enable_debug: self.q.enable_debug,
        };
        let sent = lease.handle.send_message(msg.to_bytes()).await;
        drop(pay_guard);
        sent.is_ok()
    }

    /// Relays one attempt until it ends.
    async fn relay(&mut self, r: &mut Relay) -> Ended {
        let rid = self.q.request_id;
        // The two timers live for the whole attempt (one made, polled and dropped for every
        // part cost a timer-wheel insertion and removal each); the grace one is set when
        // the attempt is stopped.
        let deadline = tokio::time::sleep_until(self.plan.deadline);
        let grace = tokio::time::sleep_until(r.grace);
        tokio::pin!(deadline, grace);
        loop {
            if r.stopped.is_some() && grace.deadline() != r.grace {
                grace.as_mut().reset(r.grace);
            }
            let ev = tokio::select! {
                ev = r.lease.recv() => ev,
                c = self.cancel.changed(), if r.stopped.is_none() => {
                    let reason = if c.is_err() { Some(CancelReason::ClientGone) } else { *self.cancel.borrow_and_update() };
                    if let Some(reason) = reason {
                        self.stop(r, Stop::Client(reason), "client cancelled").await;
                    }
                    continue;
                }
                _ = overflowed(&mut r.overflow), if r.stopped.is_none() => {
                    tracing::info!(request = %hex::encode(&rid[..8]), "client not reading; stopping the request");
                    self.stop(r, Stop::ClientSlow, "client not reading").await;
                    continue;
                }
                // A worker gone silent (no pong, no answer for two ping intervals) before it
                // answered anything: cancelled there and tried on another worker.
                _ = went_quiet(&mut r.suspect), if r.stopped.is_none() && r.first_byte.is_none() && r.can_retry_quiet => {
                    return self.on_worker_quiet(r).await;
                }
                _ = &mut deadline, if r.stopped.is_none() => {
                    self.stop(r, Stop::Deadline, "deadline").await;
                    continue;
                }
                _ = &mut grace, if r.stopped.is_some() => {
                    tracing::warn!(request = %hex::encode(&rid[..8]), "worker sent no final usage after cancel; billing the usage seen in the stream");
                    let stop = r.stopped.unwrap_or(Stop::Deadline);
                    return self.stopped(r, stop, r.seen(), None).await;
                }
            };
            let ended = match ev {
                None => Some(self.on_worker_gone(r).await),
                Some(WorkerEvent::Head(a)) => self.on_head(r, a).await,
                Some(WorkerEvent::Part(p)) => self.on_part(r, p).await,
                Some(WorkerEvent::Error(e)) => self.on_error(r, e).await,
                Some(WorkerEvent::Receipt(m)) => {
                    r.take_receipt(&self.shared, m);
                    None
                }
            };
            if let Some(ended) = ended {
                return ended;
            }
        }
    }

    /// Stops the attempt: a v3 worker is told to cancel, and its final usage is awaited for
    /// a grace period.
    async fn stop(&self, r: &mut Relay, stop: Stop, reason: &str) {
        r.stopped = Some(stop);
        r.grace = cancel_worker(&self.shared, &r.lease, reason).await;
    }

    /// The worker went silent before its first byte (its session neither answers pings nor
    /// sends anything): it is told to cancel (a v3 worker) and nothing is billed for it
    /// (the request's reservation carries over to the next attempt).
    async fn on_worker_quiet(&self, r: &Relay) -> Ended {
        let msg = "worker not answering";
        tracing::info!(
            request = %hex::encode(&self.q.request_id[..8]),
            worker = r.lease.worker,
            "worker silent before its first byte; cancelling it there"
        );
        // Its session may be stuck with a full send queue: the cancel is not waited for long.
        let cancel = cancel_worker(&self.shared, &r.lease, msg);
        let _ = tokio::time::timeout(QUIET_CANCEL_WAIT, cancel).await;
        let retry = Attempt::Retry {
            code: ErrorCode::Timeout as i32,
            msg: msg.into(),
            quiet: true,
        };
        (retry, AttemptOutcome::Failure { ttft: None })
    }

    /// The worker's session ended under the request.
    async fn on_worker_gone(&self, r: &Relay) -> Ended {
        let msg = "worker connection lost";
        if let Some(stop) = r.stopped {
            return self.stopped(r, stop, r.seen(), None).await;
        }
        let outcome = AttemptOutcome::Failure { ttft: r.first_byte };
        if r.first_byte.is_none() && r.can_retry {
            let retry = Attempt::Retry {
                code: ErrorCode::NotReady as i32,
                msg: msg.into(),
                quiet: false,
            };
            return (retry, outcome);
        }
        let out = self
            .finish_error(&r.lease, ErrorCode::NotReady as i32, msg, r.seen(), None)
            .await;
        (Attempt::Done(Box::new(out)), outcome)
    }

    /// `proxy.queryAnswerEx`: the HTTP head (with the whole answer when it is final).
    async fn on_head(&self, r: &mut Relay, a: tproxy::QueryAnswerEx) -> Option<Ended> {
        if let Some(stop) = r.stopped {
            let fi = a.final_info.as_ref()?;
            let (usage, _) = self.booked(r, &fi.tokens_used, None);
            return Some(self.stopped(r, stop, usage, Some(fi)).await);
        }
        let ttft = r.sent.elapsed();
        r.first_byte.get_or_insert(ttft);
        let _ = self.answer_at.set(SystemTime::now());
        let answer = relayed_head(r, a.answer, self.start, a.final_info.is_some());
        // Protocol 3: the worker's certificate goes ahead of its first answer on the session.
        if let Some(ev) = self
            .ctx
            .receipts
            .as_ref()
            .and_then(|s| s.evidence(&r.lease))
        {
            self.send_until(ev, &mut r.overflow).await;
        }
        if let Some(fi) = a.final_info {
            // A complete answer in one message.
            let (usage, honest) = self.booked(r, &fi.tokens_used, r.tracker.usage());
            let (out, ok) = self.finish_success(r, Last::Head(answer), usage, &fi).await;
            let outcome = judged_outcome(ok, honest, r.sent, ttft);
            return Some((Attempt::Done(Box::new(out)), outcome));
        }
        let m = tclient::QueryAnswerEx {
            request_id: self.q.request_id,
            answer,
            final_info: None,
        };
        self.send_until(m.to_bytes(), &mut r.overflow).await;
        None
    }

    /// `proxy.queryAnswerPartEx`: a part of the body (the last one carries the usage).
    async fn on_part(&self, r: &mut Relay, p: tproxy::QueryAnswerPartEx) -> Option<Ended> {
        if let Some(fi) = &p.final_info {
            if let Some(stop) = r.stopped {
                let (usage, _) = self.booked(r, &fi.tokens_used, None);
                return Some(self.stopped(r, stop, usage, Some(fi)).await);
            }
            r.tracker.push(&p.answer);
            let (usage, honest) = self.booked(r, &fi.tokens_used, r.tracker.usage());
            let ttft = *r.first_byte.get_or_insert(r.sent.elapsed());
            let answer = r.priced(&p.answer, true);
            let (out, ok) = self.finish_success(r, Last::Part(answer), usage, fi).await;
            let outcome = judged_outcome(ok, honest, r.sent, ttft);
            return Some((Attempt::Done(Box::new(out)), outcome));
        }
        if r.stopped.is_some() {
            return None;
        }
        r.first_byte.get_or_insert(r.sent.elapsed());
        r.tracker.push(&p.answer);
        if let Some(u) = r.tracker.usage() {
            let coefficient = u64::try_from(r.lease.coefficient).unwrap_or(0);
            let used = r.quote.prices.adjust(&u, coefficient).total;
            let rid = self.q.request_id;
            if let Err(e) = self.shared.meter.check_part(&rid, used) {
                tracing::info!(request = %hex::encode(&rid[..8]), error = %e, "stopping the request");
                self.stop(r, Stop::Depleted, "reserved tokens depleted")
                    .await;
                return None;
            }
        }
        let answer = r.priced(&p.answer, false);
        if answer.is_empty() {
            // All of it held: the rest of an event or value comes with the next part.
            return None;
        }
        let m = tclient::QueryAnswerPartEx {
            request_id: self.q.request_id,
            answer,
            final_info: None,
        };
        self.send_until(m.to_bytes(), &mut r.overflow).await;
        None
    }

    /// `proxy.queryAnswerErrorEx`: the worker failed; retried on another worker when
    /// nothing reached the client yet and the error is worth it.
    async fn on_error(&self, r: &Relay, e: tproxy::QueryAnswerErrorEx) -> Option<Ended> {
        let usage = match &e.final_info {
            Some(f) => self.booked(r, &f.tokens_used, None).0,
            None => Charge::default(),
        };
        if let Some(stop) = r.stopped {
            return Some(self.stopped(r, stop, usage, e.final_info.as_ref()).await);
        }
        let outcome = AttemptOutcome::Failure { ttft: r.first_byte };
        if r.first_byte.is_none() && r.can_retry && retryable(e.error_code, &e.error) {
            if usage.total > 0 {
                tracing::info!(
                    tokens = usage.total,
                    "usage of a failed attempt before the first byte is not billed"
                );
            }
            let retry = Attempt::Retry {
                code: e.error_code,
                msg: e.error,
                quiet: false,
            };
            return Some((retry, outcome));
        }
        let out = self
            .finish_error(
                &r.lease,
                e.error_code,
                &e.error,
                usage,
                e.final_info.as_ref(),
            )
            .await;
        Some((Attempt::Done(Box::new(out)), outcome))
    }

    /// Sends to the client, but never past the request's deadline, and not after the client
    /// fell a whole answer buffer behind (a client that stops reading must not hold the
    /// relay, and with it the cancel and deadline handling, nor make the proxy buffer the
    /// answer).
    async fn send_until(&self, bytes: Vec<u8>, overflow: &mut watch::Receiver<bool>) {
        tokio::select! {
            r = tokio::time::timeout_at(self.plan.deadline, self.ctx.handle.send_message(bytes)) => {
                if r.is_err() {
                    tracing::debug!("client not reading; part dropped at the deadline");
                }
            }
            _ = overflowed(overflow) => {
                tracing::debug!("client not reading; its answer buffer is full");
            }
        }
    }

    /// What to book for the worker's final report, audited against the quote and (for a
    /// completed answer) the usage the proxy saw; findings go to the operator and the
    /// worker's record, and a report that cannot be true ends the worker's session.
    fn booked(&self, r: &Relay, reported: &TokensUsed, own: Option<Usage>) -> (Charge, bool) {
        let (shared, lease, quote) = (&self.shared, &r.lease, &r.quote);
        let a = usage_audit::audit(reported, own.as_ref(), quote);
        let mut honest = true;
        if let Some(v) = &a.violation {
            honest = false;
            shared.event("usage_violation", &lease.worker_sc, v);
            shared.registry.update(lease.worker, |e| e.bad_reports += 1);
            // A protocol violation: the worker's session ends (its other requests fail over).
            lease.handle.close();
        } else if let Some(m) = &a.mismatch {
            honest = false;
            shared.event("usage_mismatch", &lease.worker_sc, m);
            shared.registry.update(lease.worker, |e| e.bad_reports += 1);
        }
        if a.capped {
            shared.event(
                "usage_capped",
                &lease.worker_sc,
                &format!(
                    "booked at the reservation of {} adjusted tokens",
                    quote.reserved
                ),
            );
        }
        (a.book, honest)
    }
}

/// Resolves once the request's answer buffer overflowed (never, if its inbox is gone).
/// Resolves when the worker is suspect; never when its session task is gone (the relay
/// then learns of the end from the worker's events).
async fn went_quiet(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn overflowed(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|o| *o).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A delivered answer whose usage report was refused or lowered counts against the worker.
fn judged_outcome(delivered: bool, honest: bool, sent: Instant, ttft: Duration) -> AttemptOutcome {
    if honest {
        success_outcome(delivered, sent, ttft)
    } else {
        AttemptOutcome::Failure { ttft: Some(ttft) }
    }
}

fn success_outcome(delivered: bool, sent: Instant, ttft: Duration) -> AttemptOutcome {
    if delivered {
        AttemptOutcome::Success {
            latency: sent.elapsed(),
            ttft,
        }
    } else {
        AttemptOutcome::Neutral
    }
}

fn stop_outcome(stop: Stop, first_byte: Option<Duration>) -> AttemptOutcome {
    match stop {
        Stop::Client(_) | Stop::Depleted | Stop::ClientSlow => AttemptOutcome::Neutral,
        Stop::Deadline => AttemptOutcome::Failure { ttft: first_byte },
    }
}

/// Tells a v3 worker to stop; returns until when to wait for its final usage.
async fn cancel_worker(shared: &Shared, lease: &Lease, reason: &str) -> tokio::time::Instant {
    if lease.proto >= 3 {
        let m = tproxy::CancelQuery {
            request_id: lease.proxy_request_id,
            reason: reason.to_owned(),
        };
        let _ = lease.handle.send_message(m.to_bytes()).await;
    }
    tokio::time::Instant::now() + shared.timings.cancel_grace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rules() {
        assert!(retryable(
            ErrorCode::NotReady as i32,
            "worker: engine: busy"
        ));
        assert!(retryable(ErrorCode::Failure as i32, "x"));
        assert!(retryable(
            ErrorCode::Error as i32,
            "too many active queries"
        ));
        assert!(!retryable(
            ErrorCode::Error as i32,
            "worker: invalid request: x"
        ));
        assert!(!retryable(
            ErrorCode::ProtoViolation as i32,
            "model name mismatch"
        ));
        assert!(!retryable(ErrorCode::Timeout as i32, "worker: timeout"));
        assert!(!retryable(42, "?"));
    }
}
