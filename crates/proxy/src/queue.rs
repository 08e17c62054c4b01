//! Requests waiting for a worker slot.
//!
//! When every worker of a model is at capacity, a request waits in its model's queue instead
//! of being refused. [`FairQueue`] is the pure core (time passed in): bounded, round-robin
//! between client sessions (a session with many requests waiting cannot starve another
//! with one) and first-in first-out within one session. [`Waiters`] holds one queue per
//! model, the tickets' wake-ups and the counters shown in `/stats` and `/metrics`; the
//! registry drives it under its lock, so a slot freed while a request joins the queue is
//! never missed (see `Registry::acquire`).
//!
//! A ticket popped from the queue is *granted*: it was woken to take a slot. If the slot was
//! gone by the time it asked (another grant or request took it), it goes back to the head of
//! its session's queue. Only when the queue is full (or the wait passed
//! `queue_max_wait_secs`) is a request refused ([`BUSY_MARK`]), which our client answers
//! with 429 and `Retry-After`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What the proxy's refusals for a busy model say (code 651 on the wire): the queue is
/// full, or a request waited in it as long as `queue_max_wait_secs` allows. Our client maps
/// them to 429 `rate_limit_error` with `Retry-After` (the `retry after N s` they end with).
pub(crate) const BUSY_MARK: &str = "are busy and its queue";

/// Seconds a refusal tells the client to wait before asking again: about the time the
/// model's workers take to serve the requests waiting (`waiting` × their average latency
/// over their `slots`), at least 1 and at most 60 (the official SDKs ignore a longer
/// `Retry-After` and do not retry).
pub(crate) fn retry_after_secs(waiting: usize, slots: u32, avg_latency_secs: f64) -> u64 {
    let secs = waiting as f64 * avg_latency_secs.max(0.0) / f64::from(slots.max(1));
    if secs.is_finite() {
        (secs.ceil() as u64).clamp(1, 60)
    } else {
        60
    }
}

/// The refusal sent to the client when `model`'s workers are busy and its queue is full.
pub(crate) fn queue_full_message(model: &str, waiting: usize, retry_after: u64) -> String {
    format!(
        "all workers for model {model} {BUSY_MARK} is full ({waiting} waiting); \
         retry after {retry_after} s"
    )
}

/// The refusal sent when a request waited `waited` in `model`'s queue, its longest wait.
pub(crate) fn queue_wait_message(model: &str, waited: Duration, retry_after: u64) -> String {
    format!(
        "all workers for model {model} {BUSY_MARK} wait limit ({} s) passed; \
         retry after {retry_after} s",
        waited.as_secs()
    )
}

/// One waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub ticket: u64,
    pub deadline: Instant,
}

/// The queue is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// One model's waiting requests: round-robin between sessions, FIFO within one.
#[derive(Debug, Default)]
pub(crate) struct FairQueue {
    /// Sessions with requests waiting, the next to be served first.
    rotation: VecDeque<u64>,
    by_session: HashMap<u64, VecDeque<Waiting>>,
    len: usize,
}

impl FairQueue {
    /// Requests waiting.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `w` behind `session`'s other requests; refused when `max` are waiting.
    pub(crate) fn push(&mut self, session: u64, w: Waiting, max: usize) -> Result<(), Full> {
        if self.len >= max {
            return Err(Full);
        }
        let q = self.by_session.entry(session).or_default();
        if q.is_empty() {
            self.rotation.push_back(session);
        }
        q.push_back(w);
        self.len += 1;
        Ok(())
    }

    /// Puts back a request that was woken but found its slot taken: first in its session,
    /// and its session first in the rotation (it had its turn). Not bounded: it had a place.
    pub(crate) fn push_front(&mut self, session: u64, w: Waiting) {
        let q = self.by_session.entry(session).or_default();
        q.push_front(w);
        self.rotation.retain(|s| *s != session);
        self.rotation.push_front(session);
        self.len += 1;
    }

    /// Removes the request `ticket` (gone: cancelled, timed out); whether it was waiting.
    pub(crate) fn remove(&mut self, ticket: u64) -> bool {
        let found = self.by_session.iter_mut().find_map(|(s, q)| {
            let i = q.iter().position(|w| w.ticket == ticket)?;
            q.remove(i);
            Some((*s, q.is_empty()))
        });
        let Some((session, empty)) = found else {
            return false;
        };
        self.len -= 1;
        if empty {
            self.drop_session(session);
        }
        true
    }

    /// Removes and returns the requests whose deadline is not after `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<u64> {
        let mut gone = Vec::new();
        for q in self.by_session.values_mut() {
            q.retain(|w| {
                let keep = w.deadline > now;
                if !keep {
                    gone.push(w.ticket);
                }
                keep
            });
        }
        self.len -= gone.len();
        let empty: Vec<u64> = self
            .by_session
            .iter()
            .filter(|(_, q)| q.is_empty())
            .map(|(s, _)| *s)
            .collect();
        for s in empty {
            self.drop_session(s);
        }
        gone
    }

    /// Takes the next request that `fits` (a free slot can serve it): sessions in rotation
    /// order, within a session the oldest that fits; its session then goes to the back of
    /// the rotation.
    pub(crate) fn pop(&mut self, mut fits: impl FnMut(u64) -> bool) -> Option<u64> {
        for i in 0..self.rotation.len() {
            let session = self.rotation[i];
            let Some(q) = self.by_session.get_mut(&session) else {
                continue;
            };
            let Some(j) = q.iter().position(|w| fits(w.ticket)) else {
                continue;
            };
            let w = q.remove(j)?;
            self.len -= 1;
            self.rotation.remove(i);
            if q.is_empty() {
                self.by_session.remove(&session);
            } else {
                self.rotation.push_back(session);
            }
            return Some(w.ticket);
        }
        None
    }

    fn drop_session(&mut self, session: u64) {
        self.by_session.remove(&session);
        self.rotation.retain(|s| *s != session);
    }
}

/// Upper bounds (seconds) of the wait histogram's buckets; `+Inf` follows.
pub(crate) const WAIT_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// What a queued request needs of a worker.
#[derive(Debug, Clone)]
pub(crate) struct Need {
    pub session: u64,
    pub model_base: String,
    pub max_coefficient: i32,
    /// Workers the request already tried.
    pub exclude: Vec<u64>,
    /// An embeddings request: only a slot on a worker that embeds serves it.
    pub embeddings: bool,
    pub deadline: Instant,
    pub wake: Arc<Notify>,
    /// Woken to take a slot and not yet back in the queue or served.
    pub granted: bool,
    /// Its deadline passed while it waited (it was taken out of the queue).
    pub expired: bool,
    pub since: Instant,
}

/// How a ticket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// It got a worker at this instant (its wait is counted).
    Served(Instant),
    /// Its wait passed its limit.
    Expired,
    /// Cancelled, refused or failed otherwise.
    Gone,
}

/// Queue counters since start.
#[derive(Debug, Clone, Default)]
struct Counts {
    served: u64,
    wait_sum: Duration,
    buckets: [u64; WAIT_BUCKETS.len()],
    rejected: u64,
    expired: u64,
}

/// The queues of every model, their tickets and counters.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    pub models: HashMap<String, FairQueue>,
    pub tickets: HashMap<u64, Need>,
    next: u64,
    counts: Counts,
}

/// The queues as shown in `/stats`, `/jsonstats` and `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStats {
    /// Most requests waiting per model (`queue_max_per_model`).
    pub max_per_model: usize,
    /// Requests waiting, per model (models with none waiting are left out).
    pub waiting: Vec<(String, usize)>,
    /// Queued requests that got a worker.
    pub served: u64,
    /// Seconds those waited, summed.
    pub wait_seconds_sum: f64,
    /// How many of those waited at most each bound of `wait_bucket_bounds` (cumulative).
    pub wait_buckets: Vec<u64>,
    /// Upper bounds of the wait buckets, seconds.
    pub wait_bucket_bounds: Vec<f64>,
    /// Requests refused because their model's queue was full.
    pub rejected: u64,
    /// Requests whose deadline (or `queue_max_wait_secs`) passed in the queue.
    pub expired: u64,
}

impl Waiters {
    /// A new ticket for `need`; it waits once pushed into its model's queue.
    pub(crate) fn ticket(&mut self, need: Need) -> u64 {
        self.next += 1;
        self.tickets.insert(self.next, need);
        self.next
    }

    /// Queues `ticket` (its session and deadline from its need) in its model's queue.
    pub(crate) fn push(&mut self, ticket: u64, max: usize) -> Result<(), Full> {
        let Some(n) = self.tickets.get(&ticket) else {
            return Err(Full);
        };
        let w = Waiting {
            ticket,
            deadline: n.deadline,
        };
        let session = n.session;
        let q = self.models.entry(n.model_base.clone()).or_default();
        let r = q.push(session, w, max);
        if r.is_err() {
            self.counts.rejected += 1;
            self.tickets.remove(&ticket);
            self.prune(None);
        }
        r
    }

    /// Puts a granted ticket back at the head of its session.
    pub(crate) fn push_front(&mut self, ticket: u64) {
        let Some(n) = self.tickets.get_mut(&ticket) else {
            return;
        };
        n.granted = false;
        let w = Waiting {
            ticket,
            deadline: n.deadline,
        };
        let session = n.session;
        self.models
            .entry(n.model_base.clone())
            .or_default()
            .push_front(session, w);
    }

    /// Forgets `ticket`, counting how it ended.
    pub(crate) fn finish(&mut self, ticket: u64, end: End) {
        let Some(n) = self.tickets.remove(&ticket) else {
            return;
        };
        if let Some(q) = self.models.get_mut(&n.model_base) {
            q.remove(ticket);
        }
        match end {
            End::Served(now) => {
                let waited = now.saturating_duration_since(n.since);
                self.counts.served += 1;
                self.counts.wait_sum += waited;
                let s = waited.as_secs_f64();
                for (b, bound) in self.counts.buckets.iter_mut().zip(WAIT_BUCKETS) {
                    if s <= bound {
                        *b += 1;
                    }
                }
            }
            End::Expired => self.counts.expired += 1,
            End::Gone => {}
        }
        self.prune(Some(&n.model_base));
    }

    /// Whether requests of `model_base` wait or were woken and not yet served: a new one
    /// must queue behind them.
    pub(crate) fn busy(&self, model_base: &str) -> bool {
        self.models.get(model_base).is_some_and(|q| q.len() > 0) || self.granted(model_base) > 0
    }

    /// Tickets of `model_base` woken and not yet served or back in the queue.
    pub(crate) fn granted(&self, model_base: &str) -> usize {
        self.tickets
            .values()
            .filter(|n| n.granted && n.model_base == model_base)
            .count()
    }

    /// Requests waiting for `model_base`.
    pub(crate) fn len(&self, model_base: &str) -> usize {
        self.models.get(model_base).map_or(0, FairQueue::len)
    }

    /// Drops tickets past their deadline from `model_base`'s queue (their tasks see the
    /// deadline themselves; this keeps a queue free of requests nobody waits for).
    pub(crate) fn expire(&mut self, model_base: &str, now: Instant) {
        let gone = self
            .models
            .get_mut(model_base)
            .map(|q| q.expire(now))
            .unwrap_or_default();
        for t in gone {
            if let Some(n) = self.tickets.get_mut(&t) {
                n.expired = true;
                n.wake.notify_one();
            }
        }
    }

    /// Wakes the next request of `model_base` that `fits`; its need.
    pub(crate) fn grant(
        &mut self,
        model_base: &str,
        mut fits: impl FnMut(&Need) -> bool,
    ) -> Option<&Need> {
        let tickets = &self.tickets;
        let t = self
            .models
            .get_mut(model_base)
            .and_then(|q| q.pop(|t| tickets.get(&t).is_some_and(&mut fits)))?;
        let n = self.tickets.get_mut(&t)?;
        n.granted = true;
        n.wake.notify_one();
        Some(n)
    }

    /// Wakes every request of `model_base` (its last worker left: they learn it at once).
    pub(crate) fn wake_all(&mut self, model_base: &str) {
        while self.grant(model_base, |_| true).is_some() {}
    }

    /// Drops empty queues (the map stays bounded by the models with requests waiting).
    fn prune(&mut self, model_base: Option<&str>) {
        match model_base {
            Some(m) => {
                if self.models.get(m).is_some_and(|q| q.len() == 0) {
                    self.models.remove(m);
                }
            }
            None => self.models.retain(|_, q| q.len() > 0),
        }
    }

    pub(crate) fn stats(&self, max_per_model: usize) -> QueueStats {
        let mut waiting: Vec<(String, usize)> = self
            .models
            .iter()
            .filter(|(_, q)| q.len() > 0)
            .map(|(m, q)| (m.clone(), q.len()))
            .collect();
        waiting.sort();
        QueueStats {
            max_per_model,
            waiting,
            served: self.counts.served,
            wait_seconds_sum: self.counts.wait_sum.as_secs_f64(),
            wait_buckets: self.counts.buckets.to_vec(),
            wait_bucket_bounds: WAIT_BUCKETS.to_vec(),
            rejected: self.counts.rejected,
            expired: self.counts.expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ticket: u64, deadline: Instant) -> Waiting {
        Waiting { ticket, deadline }
    }

    fn drain(q: &mut FairQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop(|_| true)).collect()
    }

    #[test]
    fn round_robin_across_sessions_fifo_within_one() {
        let far = Instant::now() + Duration::from_secs(60);
        let mut q = FairQueue::default();
        // Session 1 queues five before sessions 2 and 3 queue theirs.
        for t in 1..=5 {
            q.push(1, w(t, far), 100).unwrap();
        }
        q.push(2, w(20, far), 100).unwrap();
        q.push(3, w(30, far), 100).unwrap();
        q.push(2, w(21, far), 100).unwrap();
        assert_eq!(q.len(), 8);
        assert_eq!(drain(&mut q), [1, 20, 30, 2, 21, 3, 4, 5]);
        assert_eq!(q.len(), 0);
        // A session that comes back joins the end of the rotation.
        q.push(1, w(6, far), 100).unwrap();
        q.push(2, w(22, far), 100).unwrap();
        assert_eq!(q.pop(|_| true), Some(6));
        q.push(1, w(7, far), 100).unwrap();
        assert_eq!(drain(&mut q), [22, 7]);
    }

    #[test]
    fn a_request_that_lost_its_slot_goes_back_first() {
        let far = Instant::now() + Duration::from_secs(60);
        let mut q = FairQueue::default();
        q.push(1, w(1, far), 10).unwrap();
        q.push(1, w(2, far), 10).unwrap();
        q.push(2, w(20, far), 10).unwrap();
        assert_eq!(q.pop(|_| true), Some(1));
        q.push_front(1, w(1, far));
        assert_eq!(drain(&mut q), [1, 20, 2]);
    }

    #[test]
    fn bounded_and_removal_frees_room() {
        let far = Instant::now() + Duration::from_secs(60);
        let mut q = FairQueue::default();
        q.push(1, w(1, far), 2).unwrap();
        q.push(2, w(2, far), 2).unwrap();
        assert_eq!(q.push(3, w(3, far), 2), Err(Full));
        assert_eq!(q.push(1, w(3, far), 2), Err(Full));
        assert_eq!(q.len(), 2);
        assert!(q.remove(1));
        assert!(!q.remove(1));
        q.push(3, w(3, far), 2).unwrap();
        assert_eq!(drain(&mut q), [2, 3]);
        // A zero bound queues nothing.
        assert_eq!(q.push(1, w(9, far), 0), Err(Full));
    }

    #[test]
    fn deadlines_expire_requests_and_their_sessions() {
        let t0 = Instant::now();
        let mut q = FairQueue::default();
        q.push(1, w(1, t0 + Duration::from_secs(1)), 10).unwrap();
        q.push(1, w(2, t0 + Duration::from_secs(5)), 10).unwrap();
        q.push(2, w(20, t0 + Duration::from_secs(1)), 10).unwrap();
        q.push(3, w(30, t0 + Duration::from_secs(9)), 10).unwrap();
        assert!(q.expire(t0).is_empty());
        let mut gone = q.expire(t0 + Duration::from_secs(1));
        gone.sort();
        assert_eq!(gone, [1, 20]);
        assert_eq!(q.len(), 2);
        // Session 2 left the rotation with its last request.
        assert_eq!(drain(&mut q), [2, 30]);
    }

    #[test]
    fn pop_skips_requests_no_free_slot_can_serve() {
        let far = Instant::now() + Duration::from_secs(60);
        let mut q = FairQueue::default();
        q.push(1, w(1, far), 10).unwrap();
        q.push(1, w(2, far), 10).unwrap();
        q.push(2, w(20, far), 10).unwrap();
        // Only even tickets fit (say, the free worker's price is over the others' limit).
        assert_eq!(q.pop(|t| t.is_multiple_of(2)), Some(2));
        assert_eq!(q.pop(|t| t == 99), None);
        assert_eq!(q.len(), 2);
        assert_eq!(drain(&mut q), [20, 1]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            session: u64,
            secs: u64,
        },
        /// Pop the next request (only even tickets fit when `even`); put it back when `back`.
        Pop {
            even: bool,
            back: bool,
        },
        Remove(usize),
        Expire(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..4, 1u64..20).prop_map(|(session, secs)| Op::Push { session, secs }),
            3 => (any::<bool>(), any::<bool>()).prop_map(|(even, back)| Op::Pop { even, back }),
            1 => (0usize..64).prop_map(Op::Remove),
            1 => (0u64..20).prop_map(Op::Expire),
        ]
    }

    proptest::proptest! {
        /// Against a plain model: the length is what was queued less what left, never over the
        /// bound; a pop takes the oldest fitting request of its session; nothing is lost.
        #[test]
        fn any_sequence_keeps_the_bound_order_and_every_request(
            ops in proptest::collection::vec(op(), 0..200),
            max in 0usize..12,
        ) {
            let t0 = Instant::now();
            let mut q = FairQueue::default();
            // session -> its waiting requests (ticket, deadline), oldest first
            let mut model: HashMap<u64, Vec<(u64, Instant)>> = HashMap::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Push { session, secs } => {
                        next += 1;
                        let deadline = t0 + Duration::from_secs(secs);
                        let len: usize = model.values().map(Vec::len).sum();
                        let r = q.push(session, w(next, deadline), max);
                        proptest::prop_assert_eq!(r.is_ok(), len < max);
                        if r.is_ok() {
                            model.entry(session).or_default().push((next, deadline));
                        }
                    }
                    Op::Pop { even, back } => {
                        let fits = |t: u64| !even || t.is_multiple_of(2);
                        match q.pop(fits) {
                            None => proptest::prop_assert!(model.values().flatten().all(|(t, _)| !fits(*t))),
                            Some(t) => {
                                let (session, list) = model
                                    .iter_mut()
                                    .find(|(_, l)| l.iter().any(|(x, _)| *x == t))
                                    .expect("a popped request was waiting");
                                let first = list.iter().position(|(x, _)| fits(*x));
                                proptest::prop_assert_eq!(first.map(|i| list[i].0), Some(t));
                                let session = *session;
                                let i = first.unwrap_or(0);
                                let entry = list.remove(i);
                                if back {
                                    q.push_front(session, w(entry.0, entry.1));
                                    list.insert(0, entry);
                                }
                            }
                        }
                    }
                    Op::Remove(i) => {
                        let all: Vec<u64> = model.values().flatten().map(|(t, _)| *t).collect();
                        if let Some(t) = all.get(i % all.len().max(1)) {
                            proptest::prop_assert!(q.remove(*t));
                            for l in model.values_mut() {
                                l.retain(|(x, _)| x != t);
                            }
                        }
                    }
                    Op::Expire(secs) => {
                        let now = t0 + Duration::from_secs(secs);
                        let mut gone = q.expire(now);
                        gone.sort();
                        let mut want: Vec<u64> = model
                            .values()
                            .flatten()
                            .filter(|(_, d)| *d <= now)
                            .map(|(t, _)| *t)
                            .collect();
                        want.sort();
                        proptest::prop_assert_eq!(gone, want);
                        for l in model.values_mut() {
                            l.retain(|(_, d)| *d > now);
                        }
                    }
                }
                model.retain(|_, l| !l.is_empty());
                proptest::prop_assert_eq!(q.len(), model.values().map(Vec::len).sum::<usize>());
            }
            let mut left = drain(&mut q);
            left.sort();
            let mut want: Vec<u64> = model.values().flatten().map(|(t, _)| *t).collect();
            want.sort();
            proptest::prop_assert_eq!(left, want);
            proptest::prop_assert_eq!(q.len(), 0);
        }
    }

    #[test]
    fn retry_after_is_the_time_to_serve_the_queue_within_1_to_60_s() {
        assert_eq!(retry_after_secs(0, 4, 2.0), 1);
        assert_eq!(retry_after_secs(2, 4, 1.0), 1);
        assert_eq!(retry_after_secs(256, 4, 0.1), 7);
        assert_eq!(retry_after_secs(256, 8, 2.0), 60);
        assert_eq!(retry_after_secs(10, 0, 3.0), 30);
        assert_eq!(retry_after_secs(10, 4, f64::INFINITY), 60);
        assert_eq!(retry_after_secs(10, 4, f64::NAN), 1);
    }

    fn need(session: u64, model: &str, deadline: Instant) -> Need {
        Need {
            session,
            model_base: model.into(),
            max_coefficient: 1000,
            exclude: vec![],
            embeddings: false,
            deadline,
            wake: Arc::new(Notify::new()),
            granted: false,
            expired: false,
            since: Instant::now(),
        }
    }

    #[test]
    fn waiters_count_waits_refusals_and_grants_per_model() {
        let far = Instant::now() + Duration::from_secs(60);
        let mut ws = Waiters::default();
        let a = ws.ticket(need(1, "A", far));
        let b = ws.ticket(need(2, "A", far));
        let c = ws.ticket(need(3, "A", far));
        let d = ws.ticket(need(1, "B", far));
        ws.push(a, 2).unwrap();
        ws.push(b, 2).unwrap();
        assert_eq!(ws.push(c, 2), Err(Full));
        ws.push(d, 2).unwrap();
        assert_eq!((ws.len("A"), ws.len("B")), (2, 1));
        assert!(ws.busy("A"));
        // A grant wakes the head and counts as busy until served or put back.
        assert_eq!(ws.grant("A", |_| true).map(|n| n.session), Some(1));
        assert_eq!(ws.granted("A"), 1);
        ws.push_front(a);
        assert_eq!((ws.len("A"), ws.granted("A")), (2, 0));
        assert!(ws.grant("A", |_| true).is_some());
        ws.finish(a, End::Served(Instant::now()));
        ws.finish(b, End::Gone);
        assert!(!ws.busy("A"));
        let s = ws.stats(2);
        assert_eq!(s.waiting, [("B".to_string(), 1)]);
        assert_eq!((s.served, s.rejected, s.expired), (1, 1, 0));
        assert_eq!(s.wait_buckets.last(), Some(&1));
        ws.wake_all("B");
        assert_eq!((ws.len("B"), ws.granted("B")), (0, 1));
    }
}
