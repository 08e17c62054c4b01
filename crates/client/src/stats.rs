//! Request counters since start (the durable totals are in the state database).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::request::Usage;

/// Counters, all monotonic.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    /// Refused before reaching a proxy (bad request, key, no proxy).
    pub refused: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub request_bytes: AtomicU64,
    pub answer_bytes: AtomicU64,
    /// Sum of request durations, microseconds.
    pub time_us: AtomicU64,
    pub tokens: AtomicU64,
    pub spent_nanoton: AtomicU64,
}

/// A snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub received: u64,
    pub refused: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub request_bytes: u64,
    pub answer_bytes: u64,
    pub mean_seconds: f64,
    pub tokens: u64,
    pub spent_nanoton: u64,
}

impl Stats {
    pub(crate) fn received(&self, bytes: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.request_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn finish(
        &self,
        ok: bool,
        took: Duration,
        _request_bytes: u64,
        answer_bytes: u64,
        usage: Option<&Usage>,
    ) {
        if ok { &self.succeeded } else { &self.failed }.fetch_add(1, Ordering::Relaxed);
        self.answer_bytes.fetch_add(answer_bytes, Ordering::Relaxed);
        self.time_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if let Some(u) = usage {
            self.tokens.fetch_add(u.total_tokens, Ordering::Relaxed);
            self.spent_nanoton
                .fetch_add(u.cost_nanoton, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let done = l(&self.succeeded) + l(&self.failed);
        Snapshot {
            received: l(&self.received),
            refused: l(&self.refused),
            succeeded: l(&self.succeeded),
            failed: l(&self.failed),
            request_bytes: l(&self.request_bytes),
            answer_bytes: l(&self.answer_bytes),
            mean_seconds: if done == 0 {
                0.0
            } else {
                l(&self.time_us) as f64 / done as f64 / 1e6
            },
            tokens: l(&self.tokens),
            spent_nanoton: l(&self.spent_nanoton),
        }
    }
}
