//! Connected workers: what each registered, its load, its health, and the requests it is
//! answering (by the proxy-side request id sent in `proxy.runQueryEx`).
//!
//! A request holds a `Lease` on its worker for as long as it runs: the lease counts
//! against the worker's load and receives the worker's answers. Dropping the lease (the
//! request ended, however) frees the slot; removing a worker (its session ended) drops the
//! answer senders, which every request on it sees as "worker gone".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_net::SessionHandle;
use cocoon_tl::types::proxy as tproxy;
use tokio::sync::{mpsc, watch};

use crate::queue::{End, Need, QueueStats, Waiters};
use crate::router::{self, Candidate, Health, Pick, RouteError, RouterConfig};

/// An answer message from a worker for one request.
#[derive(Debug)]
pub(crate) enum WorkerEvent {
    Head(tproxy::QueryAnswerEx),
    Part(tproxy::QueryAnswerPartEx),
    Error(tproxy::QueryAnswerErrorEx),
    /// The answer's receipt (protocol 3), before its final part.
    Receipt(tproxy::AnswerReceipt),
}

impl WorkerEvent {
    /// Answer bytes it carries (what waits in memory until the client takes it).
    fn size(&self) -> usize {
        match self {
            WorkerEvent::Head(h) => h.answer.len(),
            WorkerEvent::Part(p) => p.answer.len(),
            WorkerEvent::Error(e) => e.error.len(),
            WorkerEvent::Receipt(r) => r.receipt.len() + r.signature.len(),
        }
    }

    /// Whether it ends the request (the worker's final usage rides on it).
    fn is_final(&self) -> bool {
        match self {
            WorkerEvent::Head(h) => h.final_info.is_some(),
            WorkerEvent::Part(p) => p.final_info.is_some(),
            WorkerEvent::Error(_) => true,
            WorkerEvent::Receipt(_) => false,
        }
    }
}

/// Answer bytes one request may have waiting between the worker and its client. A client
/// that stops reading fills it; the request is then stopped (the worker is told to cancel)
/// instead of the proxy buffering the rest of the answer.
pub const REQUEST_BUFFER_BYTES: usize = 4 << 20;

/// The answers waiting for one request, bounded in bytes.
#[derive(Debug)]
pub(crate) struct Inbox {
    tx: mpsc::UnboundedSender<WorkerEvent>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    overflow: watch::Sender<bool>,
    limit: usize,
}

impl Inbox {
    /// Queues an event; `false` when the request is gone. Past the byte limit, answer parts
    /// are dropped and the overflow is signalled; the final event always gets through
    /// (without its bytes once the client fell behind), so the usage is still settled.
    fn deliver(&self, ev: WorkerEvent) -> bool {
        use std::sync::atomic::Ordering;
        let size = ev.size();
        let overflowed = *self.overflow.borrow();
        let ev = if overflowed || self.queued.load(Ordering::SeqCst) + size > self.limit {
            if !overflowed {
                self.overflow.send_replace(true);
            }
            if !ev.is_final() {
                return true;
            }
            match ev {
                WorkerEvent::Part(mut p) => {
                    p.answer = Vec::new();
                    WorkerEvent::Part(p)
                }
                other => other,
            }
        } else {
            ev
        };
        self.queued.fetch_add(ev.size(), Ordering::SeqCst);
        self.tx.send(ev).is_ok()
    }
}

/// One connected, admitted worker.
pub(crate) struct WorkerEntry {
    pub id: u64,
    pub handle: SessionHandle,
    pub proto: i32,
    pub model: String,
    pub model_base: String,
    pub owner: String,
    pub worker_sc: String,
    pub coefficient: i32,
    pub max_active: u32,
    pub running: u32,
    pub disabled: bool,
    /// True while the worker's session has been silent for two ping intervals (see
    /// `worker_ping_seconds`): no new requests go to it.
    pub suspect: watch::Receiver<bool>,
    pub health: Health,
    pub pending: HashMap<[u8; 32], Inbox>,
    /// Orders payment reports to this worker session (totals must never go down).
    pub pay_lock: PayLock,
    pub served: u64,
    pub failed: u64,
    /// Usage reports refused or lowered (see `usage_audit`).
    pub bad_reports: u64,
    pub image_hash: [u8; 32],
    /// The worker's verified GPU evidence, summarised.
    pub gpu: Option<String>,
    /// The worker's RA-TLS certificate key: what its receipts are signed with.
    pub tls_key: [u8; 32],
    /// Its certificate (the evidence clients check receipts against).
    pub certificate: Arc<Vec<u8>>,
    /// The model's context length in tokens, as the worker announced it (`worker.modelInfo`,
    /// version 3); 0 until then.
    pub context_length: u32,
    /// What its engine supports, as it announced (`worker.modelInfo`); unknown until then.
    pub capabilities: cocoon_openai::Capabilities,
}

impl WorkerEntry {
    /// Whether an embeddings request may go to this worker: its session agreed on protocol
    /// 3 (a COCOON worker never gets one) and its engine does not say it cannot (an HTTP
    /// engine does not know; its server answers for itself).
    pub(crate) fn embeds(&self) -> bool {
        self.proto >= 3 && self.capabilities.embeddings != Some(false)
    }
}

/// Held while a payment report is read and queued, so reports to a peer never decrease.
pub(crate) type PayLock = Arc<tokio::sync::Mutex<()>>;

/// What one attempt of a request asks of the registry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseRequest<'a> {
    /// The model without its revision (`admission::model_base`).
    pub model_base: &'a str,
    pub max_coefficient: i32,
    /// Workers this request already tried.
    pub exclude: &'a [u64],
    /// A uniform draw in `[0, 1)` for the router.
    pub roll: f64,
    /// The id the worker sees for this request (its answers carry it).
    pub proxy_request_id: [u8; 32],
    /// A `/v1/embeddings` request: only workers that [`WorkerEntry::embeds`] may serve it.
    pub embeddings: bool,
}

/// All workers.
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<HashMap<u64, WorkerEntry>>,
    /// Per-request answer buffer in bytes; 0 means [`REQUEST_BUFFER_BYTES`].
    buffer_bytes: std::sync::atomic::AtomicUsize,
    /// When each model's last worker left (bounded: one entry per model a worker served,
    /// dropped once older than [`RECONNECT_GRACE`] or when a worker of it is back).
    left: Mutex<HashMap<String, Instant>>,
    /// Requests waiting for a slot, per model. Locked after `inner`, never before.
    queue: Mutex<Waiters>,
    /// Most requests waiting per model.
    queue_max: usize,
    /// The last [`RECENT_LATENCIES`] successful attempts' latency and time to first byte,
    /// in seconds: the admin page's percentiles.
    recent: Mutex<std::collections::VecDeque<(f64, f64)>>,
}

/// Successful attempts whose latencies the percentiles are taken over.
pub(crate) const RECENT_LATENCIES: usize = 512;

/// Latency percentiles of the last successful attempts (seconds).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencyStats {
    /// Attempts they are taken over (at most 512).
    pub samples: usize,
    /// Median latency, whole answer.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Median time to first byte.
    pub ttft_p50: f64,
    /// 99th percentile time to first byte.
    pub ttft_p99: f64,
}

/// The `q` quantile (0..=1) of `sorted` (ascending, not empty), nearest rank.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

/// [`LatencyStats`] of `(latency, ttft)` samples; `None` without any.
pub(crate) fn latency_stats(samples: &[(f64, f64)]) -> Option<LatencyStats> {
    if samples.is_empty() {
        return None;
    }
    let sorted = |f: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let l = sorted(|s| s.0);
    let t = sorted(|s| s.1);
    Some(LatencyStats {
        samples: samples.len(),
        p50: quantile(&l, 0.5),
        p90: quantile(&l, 0.9),
        p99: quantile(&l, 0.99),
        ttft_p50: quantile(&t, 0.5),
        ttft_p99: quantile(&t, 0.99),
    })
}

/// Why a request got no worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AcquireError {
    /// No worker can serve it (none for the model, or all too expensive).
    Route(RouteError),
    /// Every worker is busy and the model's queue is full.
    Full {
        /// Requests waiting.
        waiting: usize,
        /// Seconds the client should wait before asking again.
        retry_after: u64,
    },
    /// It waited in the queue until its limit.
    Expired,
    /// The caller gave up while it waited.
    Stopped,
}

/// A request's place in its model's queue; dropped, it leaves the queue and passes on a
/// wake-up it was given.
struct Ticket<'a> {
    registry: &'a Registry,
    id: u64,
    model_base: &'a str,
    done: bool,
}

impl Ticket<'_> {
    /// Forgets the ticket (the locks are held by the caller).
    fn end(&mut self, g: &HashMap<u64, WorkerEntry>, ws: &mut Waiters, end: End, now: Instant) {
        self.done = true;
        ws.finish(self.id, end);
        self.registry.dispatch(g, ws, self.model_base, now);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            let g = self.registry.lock();
            let mut ws = self.registry.queue_lock();
            self.end(&g, &mut ws, End::Gone, Instant::now());
        }
    }
}

/// How long after a model's last worker left a request for it is refused as "reconnecting"
/// (retryable) rather than "no workers": a worker whose session ended comes back after its
/// redial or, after a `params_version` change, after its own root read (`root_poll_seconds`,
/// 30 s by default).
pub(crate) const RECONNECT_GRACE: Duration = Duration::from_secs(60);

/// Records that `model_base`'s last worker left at `now`; entries past the grace go.
fn note_left(left: &mut HashMap<String, Instant>, model_base: String, now: Instant) {
    left.retain(|_, at| now.saturating_duration_since(*at) < RECONNECT_GRACE);
    left.insert(model_base, now);
}

/// Whether `model_base`'s last worker left less than [`RECONNECT_GRACE`] before `now`.
fn left_recently(left: &HashMap<String, Instant>, model_base: &str, now: Instant) -> bool {
    left.get(model_base)
        .is_some_and(|at| now.saturating_duration_since(*at) < RECONNECT_GRACE)
}

/// A worker as shown on the admin pages.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerStat {
    /// Connection id.
    pub id: u64,
    /// The model served.
    pub model: String,
    /// Owner of the worker contract.
    pub owner: String,
    /// The worker contract.
    pub worker_sc: String,
    /// Negotiated protocol version.
    pub proto: i32,
    /// Price coefficient, thousandths.
    pub coefficient: i32,
    /// Requests running.
    pub running: u32,
    /// Most requests at once.
    pub max_active: u32,
    /// Whether it receives requests.
    pub enabled: bool,
    /// Silent for two ping intervals (`worker_ping_seconds`): no new requests until it is
    /// heard again.
    pub suspect: bool,
    /// Average latency, milliseconds.
    pub avg_latency_ms: u64,
    /// Mean time to first byte in the reputation window, milliseconds (`None`: no attempt
    /// in the window had a first byte).
    pub avg_ttft_ms: Option<u64>,
    /// Reputation score used in routing.
    pub reputation: f64,
    /// Successful attempts in the reputation window.
    pub window_successes: usize,
    /// Attempts in the reputation window.
    pub window_attempts: usize,
    /// Requests served.
    pub served: u64,
    /// Requests failed.
    pub failed: u64,
    /// Usage reports refused or lowered.
    pub bad_reports: u64,
    /// The worker's image hash, hex.
    pub image_hash: String,
    /// The worker's verified GPU evidence, summarised (`None`: no GPU verdict).
    pub gpu: Option<String>,
}

/// Enabled workers of one model: `(coefficient, running, max_active)` each.
pub(crate) type ModelWorkers = (String, Vec<(i32, u32, u32)>);

/// A request's hold on a worker.
pub(crate) struct Lease {
    registry: Arc<Registry>,
    pub worker: u64,
    pub proxy_request_id: [u8; 32],
    pub handle: SessionHandle,
    pub proto: i32,
    pub coefficient: i32,
    pub worker_sc: String,
    pub pay_lock: PayLock,
    pub probe: bool,
    /// The worker's RA-TLS certificate key.
    pub tls_key: [u8; 32],
    /// Its certificate.
    pub certificate: Arc<Vec<u8>>,
    /// The worker's suspicion (silent for two ping intervals), as the registry's entry.
    pub suspect: watch::Receiver<bool>,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Becomes true when the client fell more than [`REQUEST_BUFFER_BYTES`] behind.
    pub overflow: watch::Receiver<bool>,
    released: bool,
}

/// How an attempt on a worker ended, for its health.
pub(crate) enum AttemptOutcome {
    Success {
        latency: Duration,
        ttft: Duration,
    },
    Failure {
        ttft: Option<Duration>,
    },
    /// Cancelled by the client or the proxy: says nothing about the worker.
    Neutral,
}

impl Registry {
    /// A registry whose requests buffer at most `bytes` of answer each and whose models
    /// queue at most `queue_max` requests each.
    pub(crate) fn new(bytes: usize, queue_max: usize) -> Self {
        let r = Registry {
            queue_max,
            ..Registry::default()
        };
        r.buffer_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// Percentiles of the last successful attempts' latencies.
    pub(crate) fn latency(&self) -> Option<LatencyStats> {
        let g = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        latency_stats(&g.iter().copied().collect::<Vec<_>>())
    }

    fn record_latency(&self, latency: Duration, ttft: Duration) {
        let mut g = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= RECENT_LATENCIES {
            g.pop_front();
        }
        g.push_back((latency.as_secs_f64(), ttft.as_secs_f64()));
    }

    fn queue_lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes as many of `model_base`'s waiting requests as its workers have free slots
    /// (less those already woken), each only for a slot it can use.
    fn dispatch(
        &self,
        g: &HashMap<u64, WorkerEntry>,
        ws: &mut Waiters,
        model_base: &str,
        now: Instant,
    ) {
        ws.expire(model_base, now);
        if ws.len(model_base) == 0 {
            return;
        }
        // (worker, coefficient, free slots, embeds)
        let mut free: Vec<(u64, i32, u32, bool)> = g
            .values()
            .filter(|e| {
                e.model_base == model_base
                    && !e.disabled
                    && !*e.suspect.borrow()
                    && e.running < e.max_active
            })
            .map(|e| (e.id, e.coefficient, e.max_active - e.running, e.embeds()))
            .collect();
        let total: usize = free.iter().map(|f| f.2 as usize).sum();
        let mut room = total.saturating_sub(ws.granted(model_base));
        // An embeddings request is granted only a slot on a worker that embeds.
        let fits = |n: &Need, f: &(u64, i32, u32, bool)| {
            f.2 > 0
                && f.1 <= n.max_coefficient
                && !n.exclude.contains(&f.0)
                && (!n.embeddings || f.3)
        };
        while room > 0 {
            let Some(n) = ws.grant(model_base, |n| free.iter().any(|f| fits(n, f))) else {
                break;
            };
            if let Some(f) = free.iter_mut().find(|f| fits(n, f)) {
                f.2 -= 1;
            }
            room -= 1;
        }
    }

    /// A worker for the request, waiting in its model's queue while every worker is busy:
    /// until a slot frees for it, `until` passes ([`AcquireError::Expired`]) or `stop`
    /// resolves ([`AcquireError::Stopped`]). A new request queues behind those already
    /// waiting; a full queue refuses it ([`AcquireError::Full`]).
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        cfg: &RouterConfig,
        req: &LeaseRequest<'_>,
        session: u64,
        until: Instant,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Lease, AcquireError> {
        let model_base = req.model_base;
        let (mut ticket, wake) = {
            let mut g = self.lock();
            let mut ws = self.queue_lock();
            let now = Instant::now();
            let waiting = ws.busy(model_base);
            match self.lease_locked(&mut g, cfg, req, now, !waiting) {
                Ok(Some(l)) => return Ok(l),
                Ok(None) | Err(RouteError::AllBusy) => {}
                Err(e) => return Err(AcquireError::Route(e)),
            }
            let wake = Arc::new(tokio::sync::Notify::new());
            let id = ws.ticket(Need {
                session,
                model_base: model_base.to_owned(),
                max_coefficient: req.max_coefficient,
                exclude: req.exclude.to_vec(),
                embeddings: req.embeddings,
                deadline: until,
                wake: Arc::clone(&wake),
                granted: false,
                expired: false,
                since: now,
            });
            if ws.push(id, self.queue_max).is_err() {
                let waiting = ws.len(model_base);
                let retry_after = self.retry_after(&g, cfg, model_base, waiting);
                return Err(AcquireError::Full {
                    waiting,
                    retry_after,
                });
            }
            let ticket = Ticket {
                registry: self,
                id,
                model_base,
                done: false,
            };
            // Slots may be free for it (the requests ahead were woken and not yet served).
            self.dispatch(&g, &mut ws, model_base, now);
            (ticket, wake)
        };
        let mut stop = std::pin::pin!(stop);
        let deadline = tokio::time::Instant::from_std(until);
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let g = self.lock();
                    let mut ws = self.queue_lock();
                    ticket.end(&g, &mut ws, End::Expired, Instant::now());
                    return Err(AcquireError::Expired);
                }
                _ = &mut stop => return Err(AcquireError::Stopped),
            }
            let mut g = self.lock();
            let mut ws = self.queue_lock();
            let now = Instant::now();
            let Some((expired, granted)) =
                ws.tickets.get(&ticket.id).map(|n| (n.expired, n.granted))
            else {
                ticket.done = true;
                return Err(AcquireError::Expired);
            };
            if expired {
                ticket.end(&g, &mut ws, End::Expired, now);
                return Err(AcquireError::Expired);
            }
            if !granted {
                continue;
            }
            match self.lease_locked(&mut g, cfg, req, now, true) {
                Ok(Some(l)) => {
                    ticket.end(&g, &mut ws, End::Served(now), now);
                    return Ok(l);
                }
                Ok(None) | Err(RouteError::AllBusy) => ws.push_front(ticket.id),
                Err(e) => {
                    ticket.end(&g, &mut ws, End::Gone, now);
                    return Err(AcquireError::Route(e));
                }
            }
        }
    }

    /// Seconds a refused client should wait: about the time `model_base`'s enabled workers
    /// take to serve `waiting` requests.
    fn retry_after(
        &self,
        g: &HashMap<u64, WorkerEntry>,
        cfg: &RouterConfig,
        model_base: &str,
        waiting: usize,
    ) -> u64 {
        let live = g
            .values()
            .filter(|e| e.model_base == model_base && !e.disabled);
        let (slots, latency, n) = live.fold((0u32, 0.0, 0u32), |(s, l, n), e| {
            (
                s.saturating_add(e.max_active),
                l + e.health.avg_latency(cfg),
                n + 1,
            )
        });
        crate::queue::retry_after_secs(waiting, slots, latency / f64::from(n.max(1)))
    }

    /// Whether an enabled worker of `model_base` may serve embeddings
    /// ([`WorkerEntry::embeds`]); also when it has none at all (the request is then refused
    /// as any other for a model without workers).
    pub(crate) fn embeds(&self, model_base: &str) -> bool {
        let g = self.lock();
        let mut live = g
            .values()
            .filter(|e| e.model_base == model_base && !e.disabled)
            .peekable();
        live.peek().is_none() || live.any(WorkerEntry::embeds)
    }

    /// How many enabled workers serve `model_base` (suspect ones included).
    pub(crate) fn workers_of(&self, model_base: &str) -> usize {
        self.lock()
            .values()
            .filter(|e| e.model_base == model_base && !e.disabled)
            .count()
    }

    /// [`Self::retry_after`] for the requests waiting for `model_base` now.
    pub(crate) fn retry_after_now(&self, cfg: &RouterConfig, model_base: &str) -> u64 {
        let g = self.lock();
        let waiting = self.queue_lock().len(model_base);
        self.retry_after(&g, cfg, model_base, waiting)
    }

    /// The queues as the admin pages show them.
    pub(crate) fn queue_stats(&self) -> QueueStats {
        self.queue_lock().stats(self.queue_max)
    }

    fn buffer_limit(&self) -> usize {
        match self.buffer_bytes.load(std::sync::atomic::Ordering::Relaxed) {
            0 => REQUEST_BUFFER_BYTES,
            n => n,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, WorkerEntry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn left_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.left.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a worker; requests waiting for its model are woken for its slots.
    pub(crate) fn insert(&self, e: WorkerEntry) {
        self.left_lock().remove(&e.model_base);
        let model_base = e.model_base.clone();
        let mut g = self.lock();
        g.insert(e.id, e);
        self.dispatch(&g, &mut self.queue_lock(), &model_base, Instant::now());
    }

    /// Removes a worker; its running requests see their answer channel close. When it was
    /// its model's last, the time is kept ([`Self::reconnecting`]).
    pub(crate) fn remove(&self, id: u64) {
        self.remove_at(id, Instant::now());
    }

    fn remove_at(&self, id: u64, now: Instant) {
        let mut g = self.lock();
        let Some(e) = g.remove(&id) else { return };
        if !g.values().any(|o| o.model_base == e.model_base) {
            // Its waiting requests learn at once that no worker is left.
            self.queue_lock().wake_all(&e.model_base);
            note_left(&mut self.left_lock(), e.model_base, now);
        }
    }

    /// Whether `model_base` had a worker less than [`RECONNECT_GRACE`] before `now` (none
    /// has it now): its workers are expected back.
    pub(crate) fn reconnecting(&self, model_base: &str, now: Instant) -> bool {
        left_recently(&self.left_lock(), model_base, now)
    }

    /// Changes a worker's entry; a slot it frees (a request ended, the worker was enabled)
    /// wakes a request waiting for its model.
    pub(crate) fn update(&self, id: u64, f: impl FnOnce(&mut WorkerEntry)) {
        let mut g = self.lock();
        let Some(e) = g.get_mut(&id) else { return };
        f(e);
        let model_base = e.model_base.clone();
        let mut ws = self.queue_lock();
        if ws.len(&model_base) > 0 {
            self.dispatch(&g, &mut ws, &model_base, Instant::now());
        }
    }

    /// Delivers an answer message to the request it belongs to; `false` when unknown.
    pub(crate) fn deliver(&self, worker: u64, request_id: &[u8; 32], ev: WorkerEvent) -> bool {
        let g = self.lock();
        match g.get(&worker).and_then(|e| e.pending.get(request_id)) {
            Some(inbox) => inbox.deliver(ev),
            None => false,
        }
    }

    /// Picks a worker for the request and takes a slot on it; `Ok(None)` when one is free
    /// but `take` is false (others wait ahead of this request).
    fn lease_locked(
        self: &Arc<Self>,
        g: &mut HashMap<u64, WorkerEntry>,
        cfg: &RouterConfig,
        req: &LeaseRequest<'_>,
        now: Instant,
        take: bool,
    ) -> Result<Option<Lease>, RouteError> {
        let LeaseRequest {
            model_base,
            max_coefficient,
            exclude,
            roll,
            proxy_request_id,
            embeddings,
        } = *req;
        let cands: Vec<Candidate> = g
            .values()
            .filter(|e| e.model_base == model_base && (!embeddings || e.embeds()))
            .map(|e| Candidate {
                id: e.id,
                enabled: !e.disabled,
                suspect: *e.suspect.borrow(),
                coefficient: e.coefficient,
                running: e.running,
                max_active: e.max_active,
                avg_latency: e.health.avg_latency(cfg),
                reputation: e.health.reputation(cfg, now),
            })
            .collect();
        let Pick { id, probe } = router::choose(cfg, &cands, max_coefficient, exclude, roll)?;
        if !take {
            return Ok(None);
        }
        let e = g.get_mut(&id).ok_or(RouteError::NoWorkers)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (overflow, overflow_rx) = watch::channel(false);
        e.pending.insert(
            proxy_request_id,
            Inbox {
                tx,
                queued: Arc::clone(&queued),
                overflow,
                limit: self.buffer_limit(),
            },
        );
        e.running += 1;
        Ok(Some(Lease {
            registry: Arc::clone(self),
            worker: id,
            proxy_request_id,
            handle: e.handle.clone(),
            proto: e.proto,
            coefficient: e.coefficient,
            worker_sc: e.worker_sc.clone(),
            pay_lock: Arc::clone(&e.pay_lock),
            probe,
            tls_key: e.tls_key,
            certificate: Arc::clone(&e.certificate),
            suspect: e.suspect.clone(),
            events: rx,
            queued,
            overflow: overflow_rx,
            released: false,
        }))
    }

    pub(crate) fn stats(&self, cfg: &RouterConfig, now: Instant) -> Vec<WorkerStat> {
        let g = self.lock();
        let mut v: Vec<WorkerStat> = g
            .values()
            .map(|e| {
                let (s, n) = e.health.counts(cfg, now);
                WorkerStat {
                    id: e.id,
                    model: e.model.clone(),
                    owner: e.owner.clone(),
                    worker_sc: e.worker_sc.clone(),
                    proto: e.proto,
                    coefficient: e.coefficient,
                    running: e.running,
                    max_active: e.max_active,
                    enabled: !e.disabled,
                    suspect: *e.suspect.borrow(),
                    avg_latency_ms: (e.health.avg_latency(cfg) * 1000.0) as u64,
                    avg_ttft_ms: e.health.mean_ttft(cfg, now).map(|t| (t * 1000.0) as u64),
                    reputation: e.health.reputation(cfg, now),
                    window_successes: s,
                    window_attempts: n,
                    served: e.served,
                    failed: e.failed,
                    bad_reports: e.bad_reports,
                    image_hash: hex::encode(e.image_hash),
                    gpu: e.gpu.clone(),
                }
            })
            .collect();
        v.sort_by_key(|w| w.id);
        v
    }

    /// Enabled workers per model base.
    pub(crate) fn types(&self) -> Vec<ModelWorkers> {
        let g = self.lock();
        let mut by: HashMap<String, Vec<(i32, u32, u32)>> = HashMap::new();
        for e in g.values().filter(|e| !e.disabled) {
            by.entry(e.model_base.clone()).or_default().push((
                e.coefficient,
                e.running,
                e.max_active,
            ));
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Per model base of the enabled workers, the smallest context length they announced
    /// (0 when none did) and the capabilities they have in common: a request may be routed
    /// to any of them.
    pub(crate) fn model_infos(&self) -> Vec<(String, u32, cocoon_openai::Capabilities)> {
        let g = self.lock();
        let mut by: HashMap<String, (u32, Option<cocoon_openai::Capabilities>)> = HashMap::new();
        for e in g.values().filter(|e| !e.disabled) {
            let (c, caps) = by.entry(e.model_base.clone()).or_default();
            if e.context_length > 0 && (*c == 0 || e.context_length < *c) {
                *c = e.context_length;
            }
            *caps = Some(caps.map_or(e.capabilities, |k| k.common(e.capabilities)));
        }
        let mut v: Vec<_> = by
            .into_iter()
            .map(|(m, (c, caps))| (m, c, caps.unwrap_or_default()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every worker's session (for shutdown and root-config re-checks).
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }
}

impl Lease {
    /// The next answer message for this request; `None` when the worker's session ended.
    pub(crate) async fn recv(&mut self) -> Option<WorkerEvent> {
        let ev = self.events.recv().await?;
        self.queued
            .fetch_sub(ev.size(), std::sync::atomic::Ordering::SeqCst);
        Some(ev)
    }

    /// Frees the slot and records the outcome in the worker's health.
    pub(crate) fn finish(mut self, cfg: &RouterConfig, now: Instant, outcome: AttemptOutcome) {
        self.release(Some((cfg, now, outcome)));
    }

    fn release(&mut self, outcome: Option<(&RouterConfig, Instant, AttemptOutcome)>) {
        if self.released {
            return;
        }
        self.released = true;
        let id = self.proxy_request_id;
        if let Some((_, _, AttemptOutcome::Success { latency, ttft })) = &outcome {
            self.registry.record_latency(*latency, *ttft);
        }
        self.registry.update(self.worker, |e| {
            e.running = e.running.saturating_sub(1);
            e.pending.remove(&id);
            match outcome {
                Some((cfg, now, AttemptOutcome::Success { latency, ttft })) => {
                    e.served += 1;
                    e.health.success(cfg, now, latency, ttft);
                }
                Some((cfg, now, AttemptOutcome::Failure { ttft })) => {
                    e.failed += 1;
                    e.health.failure(cfg, now, ttft);
                }
                Some((_, _, AttemptOutcome::Neutral)) | None => {}
            }
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_are_nearest_rank_over_the_last_attempts() {
        assert_eq!(latency_stats(&[]), None);
        let samples: Vec<(f64, f64)> = (1..=100).rev().map(|i| (f64::from(i), 0.5)).collect();
        let l = latency_stats(&samples).unwrap();
        assert_eq!((l.samples, l.p50, l.p90, l.p99), (100, 50.0, 90.0, 99.0));
        assert_eq!((l.ttft_p50, l.ttft_p99), (0.5, 0.5));
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        let r = Registry::new(0, 1);
        for i in 0..(RECENT_LATENCIES + 10) {
            r.record_latency(Duration::from_millis(i as u64), Duration::ZERO);
        }
        let l = r.latency().unwrap();
        assert_eq!(l.samples, RECENT_LATENCIES);
        // The oldest ten fell out.
        assert!(l.p50 >= 0.010 + 0.25, "{l:?}");
    }

    #[test]
    fn a_model_whose_workers_just_left_is_reconnecting_for_the_grace_only() {
        let t0 = Instant::now();
        let mut left = HashMap::new();
        assert!(!left_recently(&left, "M", t0), "never served");
        note_left(&mut left, "M".into(), t0);
        assert!(left_recently(&left, "M", t0));
        assert!(left_recently(
            &left,
            "M",
            t0 + RECONNECT_GRACE - Duration::from_millis(1)
        ));
        assert!(!left_recently(&left, "M", t0 + RECONNECT_GRACE));
        assert!(!left_recently(&left, "N", t0), "another model");
        // Old entries go when another model's worker leaves: the map stays bounded.
        note_left(&mut left, "N".into(), t0 + RECONNECT_GRACE);
        assert_eq!(left.keys().collect::<Vec<_>>(), ["N"]);
    }
}
