//! One task per client request: reserve, route, relay, retry, settle.
//!
//! 1. Checks (proxy enabled, config version, timeout, sizes) and a reservation of
//!    `(max_tokens + request bytes) × max_coefficient/1000 × highest multiplier/10000`
//!    adjusted tokens (COCOON reserves without the multiplier, so a completion-heavy answer
//!    could outrun its reservation).
//! 2. A worker is leased from the registry (see `router`) and sent `proxy.runQueryEx` with a
//!    fresh proxy-side request id (the client's id never reaches the worker).
//! 3. The worker's head and parts are relayed to the client as they arrive. If the worker
//!    fails before the first byte reached the client, the request is retried once on
//!    another worker (the failed attempt is not billed to the client); after the first byte
//!    it never is, and the client gets an error carrying the usage the worker reported.
//! 4. Client cancel (`client.cancelQuery`), client disconnect and the client's deadline
//!    send `proxy.cancelQuery` to the worker (v3), wait a little for its final usage, and
//!    bill that.
//! 5. `Meter::settle` completes before the client sees the final info and before either
//!    side gets its payment message.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cocoon_net::{ErrorCode, SessionHandle};
use cocoon_openai::{Endpoint, PriceTable, Usage, UsageTracker};
use cocoon_tl::functions::{client as fclient, proxy as fproxy};
use cocoon_tl::types::{TokensUsed, client as tclient, http as thttp, proxy as tproxy};
use cocoon_tl::{TlRead, TlWrite};
use rand::Rng;
use tokio::sync::watch;

use crate::meter::{Charge, Party, Settlement};
use crate::prices::{price_table, reservation};
use crate::receipts::{clamp_i64, payment};
use crate::registry::{AttemptOutcome, Lease, PayLock, WorkerEvent};
use crate::usage_audit::{self, Quote};
use crate::{Counters, Shared, admission, now_unix};

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

fn send_detached(h: &SessionHandle, bytes: Vec<u8>) {
    let h = h.clone();
    tokio::spawn(async move {
        let _ = h.send_message(bytes).await;
    });
}

fn tokens(c: &Charge) -> TokensUsed {
    TokensUsed {
        prompt_tokens_used: clamp_i64(c.prompt),
        cached_tokens_used: clamp_i64(c.cached),
        completion_tokens_used: clamp_i64(c.completion),
        reasoning_tokens_used: clamp_i64(c.reasoning),
        total_tokens_used: clamp_i64(c.total),
    }
}

/// The request body with its completion tokens capped to `max_tokens` (all sequences
/// together; see `cocoon_openai::limit`), and the limit written into it. The client's body is
/// otherwise passed on as it came; one with duplicate keys, or that is not a JSON object for a
/// known endpoint, is refused here (an engine could read it differently from us).
pub(crate) fn cap_query(query: &[u8], max_tokens: u64) -> Result<(Vec<u8>, u64), String> {
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
    Ok((http.to_bytes(), limit.total().unwrap_or(max_tokens)))
}

/// The adjusted usage seen in the stream so far (zero when the engine reported none).
fn tracked(tracker: &UsageTracker, prices: &PriceTable, coefficient: i32) -> Charge {
    let Some(u) = tracker.usage() else {
        return Charge::default();
    };
    let a = prices.adjust(&u, u64::try_from(coefficient).unwrap_or(0));
    Charge {
        prompt: a.categories.prompt,
        cached: a.categories.cached,
        completion: a.categories.completion,
        reasoning: a.categories.reasoning,
        total: a.total,
    }
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

/// Refuses a request before it ran (zero tokens).
pub(crate) fn reject(
    shared: &Shared,
    h: &SessionHandle,
    proto: i32,
    request_id: [u8; 32],
    code: ErrorCode,
    msg: &str,
) {
    Counters::inc(&shared.counters.requests_rejected);
    tracing::info!(request = %hex::encode(&request_id[..8]), reason = msg, "request rejected");
    let m = tclient::QueryAnswerErrorEx {
        request_id,
        error_code: code as i32,
        error: msg.to_owned(),
        final_info: Some(client_final(proto, &Charge::default(), None, None, None)),
    };
    send_detached(h, m.to_bytes());
}

fn client_final(
    proto: i32,
    usage: &Charge,
    worker: Option<&tproxy::QueryFinalInfo>,
    proxy_start: Option<f64>,
    debug: Option<bool>,
) -> tclient::QueryFinalInfo {
    let timed = proto >= 2;
    let with_debug = debug.unwrap_or(false);
    tclient::QueryFinalInfo {
        tokens_used: tokens(usage),
        worker_debug: with_debug.then(|| {
            worker
                .and_then(|w| w.worker_debug.clone())
                .unwrap_or_default()
        }),
        proxy_debug: with_debug.then(|| {
            serde_json::json!({
                "type": "proxy_stats",
                "start_time": proxy_start,
                "end_time": now_unix(),
            })
            .to_string()
        }),
        proxy_start_time: timed.then(|| proxy_start.unwrap_or_else(now_unix)),
        proxy_end_time: timed.then(now_unix),
        worker_start_time: timed.then(|| worker.and_then(|w| w.worker_start_time).unwrap_or(0.0)),
        worker_end_time: timed.then(|| worker.and_then(|w| w.worker_end_time).unwrap_or(0.0)),
    }
}

/// Adds the proxy's timing header to the worker's HTTP head.
fn with_proxy_header(answer: Vec<u8>, start: f64) -> Vec<u8> {
    match thttp::Response::from_bytes(&answer) {
        Ok(mut r) => {
            r.headers.push(thttp::Header {
                name: "X-Cocoon-Proxy-Start".into(),
                value: format!("{start:.6}"),
            });
            r.to_bytes()
        }
        Err(_) => answer,
    }
}

/// How one attempt ended.
enum Attempt {
    /// Failed before the first byte; another worker may be tried.
    Retry { code: i32, msg: String },
    /// The request is over (answered, failed or cancelled; settled); what to tell.
    Done(Box<Outgoing>),
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    ctx: ClientCtx,
    q: fclient::RunQueryEx,
    mut cancel: watch::Receiver<Option<CancelReason>>,
) {
    let c = &shared.counters;
    Counters::inc(&c.requests_received);
    let start = now_unix();
    let rid = q.request_id;
    let rej = |code: ErrorCode, msg: &str| reject(&shared, &ctx.handle, ctx.proto, rid, code, msg);
    if !shared.enabled.load(Ordering::SeqCst) {
        return rej(ErrorCode::NotReady, "proxy is disabled");
    }
    let root = shared.root();
    if i64::from(q.min_config_version) > i64::from(root.version) {
        return rej(ErrorCode::NotReady, "active config version is too low");
    }
    if !(q.timeout.is_finite() && q.timeout > 0.0) {
        return rej(ErrorCode::Error, "invalid timeout");
    }
    if q.max_tokens < 0 || q.max_coefficient < 0 {
        return rej(ErrorCode::Error, "negative max_tokens or max_coefficient");
    }
    let timeout = Duration::from_secs_f64(
        q.timeout
            .min(shared.timings.max_request_timeout.as_secs_f64()),
    );
    let deadline = tokio::time::Instant::now() + timeout;
    // The worker gets the body with the completion limit that is reserved now: a body asking
    // for more than the client's `max_tokens` is cut down to it.
    let (query, completion_limit) =
        match cap_query(&q.query, u64::try_from(q.max_tokens).unwrap_or(0)) {
            Ok(x) => x,
            Err(e) => return rej(ErrorCode::Error, &format!("invalid request: {e}")),
        };
    let reserve = reservation(q.max_tokens, q.query.len(), q.max_coefficient, &root.params);
    if let Err(e) = shared.meter.reserve(&ctx.client_sc, rid, reserve).await {
        return rej(ErrorCode::NotReady, &e.to_string());
    }
    let model_base = admission::model_base(&q.model_name).to_owned();
    let prices = price_table(&root.params);
    let mut tried: Vec<u64> = Vec::new();
    let mut last: Option<(i32, String)> = None;
    for attempt in 0..2 {
        if cancel.borrow().is_some() {
            last = Some((
                ErrorCode::Cancelled as i32,
                "cancelled by the client".into(),
            ));
            break;
        }
        let proxy_rid: [u8; 32] = rand::rng().random();
        let roll: f64 = rand::rng().random();
        let lease = shared.registry.lease(
            &shared.router,
            &model_base,
            q.max_coefficient,
            &tried,
            roll,
            Instant::now(),
            proxy_rid,
        );
        let mut lease = match lease {
            Ok(l) => l,
            Err(e) => {
                if last.is_none() {
                    let msg = match e {
                        crate::router::RouteError::NoWorkers => {
                            format!("no workers for model {model_base}")
                        }
                        other => other.to_string(),
                    };
                    last = Some((ErrorCode::NotReady as i32, msg));
                }
                break;
            }
        };
        tried.push(lease.worker);
        if attempt > 0 {
            Counters::inc(&c.retries);
        }
        let remaining = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs_f64();
        // The receipt riding along is read and sent under the worker's payment lock, like
        // the payment reports: a worker never sees its receipts go down.
        let pay_guard = lease.pay_lock.clone().lock_owned().await;
        let msg = fproxy::RunQueryEx {
            query: query.clone(),
            signed_payment: payment(&*shared.meter, Party::Worker, &lease.worker_sc),
            coefficient: i64::from(lease.coefficient),
            timeout: remaining,
            request_id: proxy_rid,
            enable_debug: q.enable_debug,
        };
        tracing::debug!(
            request = %hex::encode(&rid[..8]),
            worker = lease.worker,
            attempt,
            probe = lease.probe,
            "request routed"
        );
        let sent = lease.handle.send_message(msg.to_bytes()).await;
        drop(pay_guard);
        if sent.is_err() {
            lease.finish(
                &shared.router,
                Instant::now(),
                AttemptOutcome::Failure { ttft: None },
            );
            last = Some((ErrorCode::NotReady as i32, "worker connection lost".into()));
            continue;
        }
        let can_retry = attempt == 0;
        let quote = Quote {
            coefficient: lease.coefficient,
            prices,
            reserved: reserve,
            completion_limit,
        };
        match relay(
            &shared,
            &ctx,
            &q,
            &mut lease,
            deadline,
            &mut cancel,
            can_retry,
            start,
            &quote,
        )
        .await
        {
            (Attempt::Done(out), outcome) => {
                // Books, counters and the worker's health first; then the peers are told.
                lease.finish(&shared.router, Instant::now(), outcome);
                out.send(&shared, &ctx).await;
                return;
            }
            (Attempt::Retry { code, msg }, outcome) => {
                lease.finish(&shared.router, Instant::now(), outcome);
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
    // Nothing reached the client: release the reservation and report the last failure.
    let _ = shared.meter.cancel(rid).await;
    Counters::inc(&c.requests_failed);
    let (code, msg) = last.unwrap_or((ErrorCode::NotReady as i32, "no worker available".into()));
    let m = tclient::QueryAnswerErrorEx {
        request_id: rid,
        error_code: code,
        error: msg,
        final_info: Some(client_final(
            ctx.proto,
            &Charge::default(),
            None,
            Some(start),
            q.enable_debug,
        )),
    };
    send_detached(&ctx.handle, m.to_bytes());
}

/// Sends to the client, but never past the request's deadline, and not after the client fell
/// a whole answer buffer behind (a client that stops reading must not hold the relay, and
/// with it the cancel and deadline handling, nor make the proxy buffer the answer).
async fn send_until(
    h: &SessionHandle,
    bytes: Vec<u8>,
    deadline: tokio::time::Instant,
    overflow: &mut watch::Receiver<bool>,
) {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, h.send_message(bytes)) => {
            if r.is_err() {
                tracing::debug!("client not reading; part dropped at the deadline");
            }
        }
        _ = overflowed(overflow) => {
            tracing::debug!("client not reading; its answer buffer is full");
        }
    }
}

/// Resolves once the request's answer buffer overflowed (never, if its inbox is gone).
async fn overflowed(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|o| *o).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What to book for the worker's final report, audited against the quote and (for a
/// completed answer) the usage the proxy saw; findings go to the operator and the worker's
/// record, and a report that cannot be true ends the worker's session.
fn booked(
    shared: &Shared,
    lease: &Lease,
    quote: &Quote,
    reported: &TokensUsed,
    own: Option<Usage>,
) -> (Charge, bool) {
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

/// Usage the proxy counted itself (from the answer), bounded by the reservation.
fn seen(tracker: &UsageTracker, quote: &Quote) -> Charge {
    let c = tracked(tracker, &quote.prices, quote.coefficient);
    let (c, _) = usage_audit::cap(c, quote.reserved);
    c
}

/// Relays one attempt; returns how it ended and what it says about the worker.
#[allow(clippy::too_many_arguments)]
async fn relay(
    shared: &Arc<Shared>,
    ctx: &ClientCtx,
    q: &fclient::RunQueryEx,
    lease: &mut Lease,
    deadline: tokio::time::Instant,
    cancel: &mut watch::Receiver<Option<CancelReason>>,
    can_retry: bool,
    start: f64,
    quote: &Quote,
) -> (Attempt, AttemptOutcome) {
    let mut overflow = lease.overflow.clone();
    let sent = Instant::now();
    // Usage the engine reports mid-stream (some engines send it with every chunk) is checked
    // against the reservation as the parts go by; the final usage in the answer is the
    // proxy's own count that the worker's report is audited against.
    let mut tracker = UsageTracker::with_limit(TRACKER_LIMIT);
    let mut first_byte: Option<Duration> = None;
    let mut stopped: Option<Stop> = None;
    let mut grace = tokio::time::Instant::now();
    let rid = q.request_id;
    loop {
        let ev = tokio::select! {
            ev = lease.recv() => ev,
            r = cancel.changed(), if stopped.is_none() => {
                let reason = if r.is_err() { Some(CancelReason::ClientGone) } else { *cancel.borrow_and_update() };
                if let Some(reason) = reason {
                    stopped = Some(Stop::Client(reason));
                    grace = cancel_worker(shared, lease, "client cancelled").await;
                }
                continue;
            }
            _ = overflowed(&mut overflow), if stopped.is_none() => {
                tracing::info!(request = %hex::encode(&rid[..8]), "client not reading; stopping the request");
                stopped = Some(Stop::ClientSlow);
                grace = cancel_worker(shared, lease, "client not reading").await;
                continue;
            }
            _ = tokio::time::sleep_until(deadline), if stopped.is_none() => {
                stopped = Some(Stop::Deadline);
                grace = cancel_worker(shared, lease, "deadline").await;
                continue;
            }
            _ = tokio::time::sleep_until(grace), if stopped.is_some() => {
                tracing::warn!(request = %hex::encode(&rid[..8]), "worker sent no final usage after cancel; billing the usage seen in the stream");
                let stop = stopped.unwrap_or(Stop::Deadline);
                let out = finish_stopped(shared, ctx, q, lease, stop, seen(&tracker, quote), None, start).await;
                return (Attempt::Done(Box::new(out)), stop_outcome(stop, first_byte));
            }
        };
        let Some(ev) = ev else {
            // The worker's session ended under this request.
            let msg = "worker connection lost";
            if let Some(stop) = stopped {
                let out = finish_stopped(
                    shared,
                    ctx,
                    q,
                    lease,
                    stop,
                    seen(&tracker, quote),
                    None,
                    start,
                )
                .await;
                return (Attempt::Done(Box::new(out)), stop_outcome(stop, first_byte));
            }
            let outcome = AttemptOutcome::Failure { ttft: first_byte };
            if first_byte.is_none() && can_retry {
                return (
                    Attempt::Retry {
                        code: ErrorCode::NotReady as i32,
                        msg: msg.into(),
                    },
                    outcome,
                );
            }
            let out = finish_error(
                shared,
                ctx,
                q,
                lease,
                ErrorCode::NotReady as i32,
                msg,
                seen(&tracker, quote),
                None,
                start,
            )
            .await;
            return (Attempt::Done(Box::new(out)), outcome);
        };
        match ev {
            WorkerEvent::Head(a) => {
                if let Some(stop) = stopped {
                    if let Some(fi) = &a.final_info {
                        let (usage, _) = booked(shared, lease, quote, &fi.tokens_used, None);
                        let out =
                            finish_stopped(shared, ctx, q, lease, stop, usage, Some(fi), start)
                                .await;
                        return (Attempt::Done(Box::new(out)), stop_outcome(stop, first_byte));
                    }
                    continue;
                }
                let ttft = sent.elapsed();
                first_byte.get_or_insert(ttft);
                if let Ok(r) = thttp::Response::from_bytes(&a.answer) {
                    tracker.push(&r.payload);
                }
                let answer = with_proxy_header(a.answer, start);
                if let Some(fi) = a.final_info {
                    // A complete answer in one message.
                    let (usage, honest) =
                        booked(shared, lease, quote, &fi.tokens_used, tracker.usage());
                    let (out, ok) =
                        finish_success(shared, ctx, q, lease, answer, true, usage, &fi, start)
                            .await;
                    return (
                        Attempt::Done(Box::new(out)),
                        judged_outcome(ok, honest, sent, ttft),
                    );
                }
                let m = tclient::QueryAnswerEx {
                    request_id: rid,
                    answer,
                    final_info: None,
                };
                send_until(&ctx.handle, m.to_bytes(), deadline, &mut overflow).await;
            }
            WorkerEvent::Part(p) => {
                if let Some(fi) = &p.final_info {
                    if let Some(stop) = stopped {
                        let (usage, _) = booked(shared, lease, quote, &fi.tokens_used, None);
                        let out =
                            finish_stopped(shared, ctx, q, lease, stop, usage, Some(fi), start)
                                .await;
                        return (Attempt::Done(Box::new(out)), stop_outcome(stop, first_byte));
                    }
                    tracker.push(&p.answer);
                    let (usage, honest) =
                        booked(shared, lease, quote, &fi.tokens_used, tracker.usage());
                    let ttft = *first_byte.get_or_insert(sent.elapsed());
                    let (out, ok) =
                        finish_success(shared, ctx, q, lease, p.answer, false, usage, fi, start)
                            .await;
                    return (
                        Attempt::Done(Box::new(out)),
                        judged_outcome(ok, honest, sent, ttft),
                    );
                }
                if stopped.is_some() {
                    continue;
                }
                first_byte.get_or_insert(sent.elapsed());
                tracker.push(&p.answer);
                if let Some(u) = tracker.usage() {
                    let used = quote
                        .prices
                        .adjust(&u, u64::try_from(lease.coefficient).unwrap_or(0))
                        .total;
                    if let Err(e) = shared.meter.check_part(&rid, used) {
                        tracing::info!(request = %hex::encode(&rid[..8]), error = %e, "stopping the request");
                        stopped = Some(Stop::Depleted);
                        grace = cancel_worker(shared, lease, "reserved tokens depleted").await;
                        continue;
                    }
                }
                let m = tclient::QueryAnswerPartEx {
                    request_id: rid,
                    answer: p.answer,
                    final_info: None,
                };
                send_until(&ctx.handle, m.to_bytes(), deadline, &mut overflow).await;
            }
            WorkerEvent::Error(e) => {
                let usage = match &e.final_info {
                    Some(f) => booked(shared, lease, quote, &f.tokens_used, None).0,
                    None => Charge::default(),
                };
                if let Some(stop) = stopped {
                    let out = finish_stopped(
                        shared,
                        ctx,
                        q,
                        lease,
                        stop,
                        usage,
                        e.final_info.as_ref(),
                        start,
                    )
                    .await;
                    return (Attempt::Done(Box::new(out)), stop_outcome(stop, first_byte));
                }
                let outcome = AttemptOutcome::Failure { ttft: first_byte };
                if first_byte.is_none() && can_retry && retryable(e.error_code, &e.error) {
                    if usage.total > 0 {
                        tracing::info!(
                            tokens = usage.total,
                            "usage of a failed attempt before the first byte is not billed"
                        );
                    }
                    return (
                        Attempt::Retry {
                            code: e.error_code,
                            msg: e.error,
                        },
                        outcome,
                    );
                }
                let out = finish_error(
                    shared,
                    ctx,
                    q,
                    lease,
                    e.error_code,
                    &e.error,
                    usage,
                    e.final_info.as_ref(),
                    start,
                )
                .await;
                return (Attempt::Done(Box::new(out)), outcome);
            }
        }
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

/// What to tell the peers once the books and the worker's health have the outcome.
pub(crate) struct Outgoing {
    client: Vec<u8>,
    notify: Option<PendingNotify>,
}

impl Outgoing {
    async fn send(self, shared: &Shared, ctx: &ClientCtx) {
        let limit = shared.timings.handshake_timeout;
        let _ = tokio::time::timeout(limit, ctx.handle.send_message(self.client)).await;
        if let Some(n) = self.notify {
            n.send(&shared.meter, ctx);
        }
    }
}

/// Settles and prepares the client's final message built by `msg` and the payment
/// messages; on a settlement failure the client gets an error (with the usage) instead.
#[allow(clippy::too_many_arguments)]
async fn settle_then(
    shared: &Shared,
    ctx: &ClientCtx,
    q: &fclient::RunQueryEx,
    lease: &Lease,
    usage: Charge,
    msg: impl FnOnce(tclient::QueryFinalInfo) -> Vec<u8>,
    fi: Option<&tproxy::QueryFinalInfo>,
    start: f64,
) -> Result<Outgoing, Outgoing> {
    let final_info = client_final(ctx.proto, &usage, fi, Some(start), q.enable_debug);
    match PendingNotify::settle(shared, ctx, q, lease, usage).await {
        Ok(n) => Ok(Outgoing {
            client: msg(final_info),
            notify: Some(n),
        }),
        Err(e) => {
            tracing::error!(request = %hex::encode(&q.request_id[..8]), error = %e, "settlement failed");
            Err(Outgoing {
                client: tclient::QueryAnswerErrorEx {
                    request_id: q.request_id,
                    error_code: ErrorCode::Failure as i32,
                    error: format!("proxy: accounting failed: {e}"),
                    final_info: Some(final_info),
                }
                .to_bytes(),
                notify: None,
            })
        }
    }
}

/// The worker's final message arrived: settle, then the client gets the last bytes with
/// the final info. Returns whether the settlement succeeded.
#[allow(clippy::too_many_arguments)]
async fn finish_success(
    shared: &Shared,
    ctx: &ClientCtx,
    q: &fclient::RunQueryEx,
    lease: &Lease,
    answer: Vec<u8>,
    as_head: bool,
    usage: Charge,
    fi: &tproxy::QueryFinalInfo,
    start: f64,
) -> (Outgoing, bool) {
    let rid = q.request_id;
    let build = |final_info| {
        if as_head {
            tclient::QueryAnswerEx {
                request_id: rid,
                answer,
                final_info: Some(final_info),
            }
            .to_bytes()
        } else {
            tclient::QueryAnswerPartEx {
                request_id: rid,
                answer,
                final_info: Some(final_info),
            }
            .to_bytes()
        }
    };
    match settle_then(shared, ctx, q, lease, usage, build, Some(fi), start).await {
        Ok(out) => {
            Counters::inc(&shared.counters.requests_success);
            (out, true)
        }
        Err(out) => {
            Counters::inc(&shared.counters.requests_failed);
            (out, false)
        }
    }
}

/// Payment reports owed after a settlement, sent after the final answer.
///
/// Peers refuse totals that go down, and reports for different requests are produced by
/// different tasks; so each report is sent under its peer's lock and carries the totals read
/// at that moment (never lower than the settled ones): reports to one peer never decrease.
struct PendingNotify {
    request_id: [u8; 32],
    worker_request_id: [u8; 32],
    request_tokens: u64,
    client_sc: String,
    worker_sc: String,
    client_lock: PayLock,
    worker_lock: PayLock,
    worker_handle: SessionHandle,
}

impl PendingNotify {
    async fn settle(
        shared: &Shared,
        ctx: &ClientCtx,
        q: &fclient::RunQueryEx,
        lease: &Lease,
        usage: Charge,
    ) -> Result<Self, String> {
        shared
            .meter
            .settle(
                q.request_id,
                Settlement {
                    client: ctx.client_sc.clone(),
                    worker: lease.worker_sc.clone(),
                    usage,
                    coefficient: lease.coefficient,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        shared
            .counters
            .tokens_total
            .fetch_add(usage.total, Ordering::Relaxed);
        Ok(PendingNotify {
            request_id: q.request_id,
            worker_request_id: lease.proxy_request_id,
            request_tokens: usage.total,
            client_sc: ctx.client_sc.clone(),
            worker_sc: lease.worker_sc.clone(),
            client_lock: Arc::clone(&ctx.pay_lock),
            worker_lock: Arc::clone(&lease.pay_lock),
            worker_handle: lease.handle.clone(),
        })
    }

    fn send(self, meter: &Arc<dyn crate::meter::Meter>, ctx: &ClientCtx) {
        let m = Arc::clone(meter);
        let h = ctx.handle.clone();
        let (rid, tokens, sc, lock) = (
            self.request_id,
            self.request_tokens,
            self.client_sc,
            self.client_lock,
        );
        tokio::spawn(async move {
            let _g = lock.lock().await;
            let t = m.client_totals(&sc);
            let p = tproxy::ClientRequestPayment {
                request_id: rid,
                signed_payment: payment(&*m, Party::Client, &sc),
                db_tokens: clamp_i64(t.committed_to_db),
                max_tokens: clamp_i64(t.max),
                request_tokens: clamp_i64(tokens),
            };
            let _ = h.send_message(p.to_bytes()).await;
        });
        let m = Arc::clone(meter);
        let (h, rid, sc, lock) = (
            self.worker_handle,
            self.worker_request_id,
            self.worker_sc,
            self.worker_lock,
        );
        tokio::spawn(async move {
            let _g = lock.lock().await;
            let t = m.worker_totals(&sc);
            let p = tproxy::WorkerRequestPayment {
                request_id: rid,
                signed_payment: payment(&*m, Party::Worker, &sc),
                db_tokens: clamp_i64(t.committed_to_db),
                max_tokens: clamp_i64(t.max),
                request_tokens: clamp_i64(tokens),
                // The worker need not know who pays (COCOON sends the client's wallet here).
                request_client_owner: String::new(),
            };
            let _ = h.send_message(p.to_bytes()).await;
        });
    }
}

/// The worker failed (after the first byte, or in a way another worker would not fix):
/// bill what it reported and tell the client.
#[allow(clippy::too_many_arguments)]
async fn finish_error(
    shared: &Shared,
    ctx: &ClientCtx,
    q: &fclient::RunQueryEx,
    lease: &Lease,
    code: i32,
    msg: &str,
    usage: Charge,
    fi: Option<&tproxy::QueryFinalInfo>,
    start: f64,
) -> Outgoing {
    Counters::inc(&shared.counters.requests_failed);
    let rid = q.request_id;
    let build = |final_info| {
        tclient::QueryAnswerErrorEx {
            request_id: rid,
            error_code: code,
            error: msg.to_owned(),
            final_info: Some(final_info),
        }
        .to_bytes()
    };
    settle_then(shared, ctx, q, lease, usage, build, fi, start)
        .await
        .unwrap_or_else(|e| e)
}

/// The client or the deadline stopped the request; bill what the worker reported.
#[allow(clippy::too_many_arguments)]
async fn finish_stopped(
    shared: &Shared,
    ctx: &ClientCtx,
    q: &fclient::RunQueryEx,
    lease: &Lease,
    stop: Stop,
    usage: Charge,
    fi: Option<&tproxy::QueryFinalInfo>,
    start: f64,
) -> Outgoing {
    let (code, msg) = match stop {
        Stop::Deadline => {
            Counters::inc(&shared.counters.requests_failed);
            (ErrorCode::Timeout, "timeout in proxy")
        }
        Stop::Client(_) => {
            Counters::inc(&shared.counters.requests_cancelled);
            (ErrorCode::Cancelled, "cancelled by the client")
        }
        Stop::Depleted => {
            Counters::inc(&shared.counters.requests_failed);
            (ErrorCode::Error, "reserved_tokens depleted")
        }
        Stop::ClientSlow => {
            Counters::inc(&shared.counters.requests_failed);
            (ErrorCode::Error, "client not reading; answer cut")
        }
    };
    let rid = q.request_id;
    tracing::info!(request = %hex::encode(&rid[..8]), reason = ?stop, tokens = usage.total, "request stopped");
    let build = |final_info| {
        tclient::QueryAnswerErrorEx {
            request_id: rid,
            error_code: code as i32,
            error: msg.to_owned(),
            final_info: Some(final_info),
        }
        .to_bytes()
    };
    settle_then(shared, ctx, q, lease, usage, build, fi, start)
        .await
        .unwrap_or_else(|e| e)
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
