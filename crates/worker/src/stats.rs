//! Counters for `/stats`, `/jsonstats` and `/metrics`.
//!
//! Only counts, sizes, times and public identifiers: never request or answer bodies.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Monotonic counters, updated lock-free by request tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// `proxy.runQuery(Ex)` received.
    pub requests_received: AtomicU64,
    /// Answered to the end.
    pub requests_success: AtomicU64,
    /// Ended with an error (validation, engine, timeout, cancellation).
    pub requests_failed: AtomicU64,
    /// Refused because `max_active_requests` were running.
    pub requests_rejected: AtomicU64,
    /// Cancelled by the proxy or by a dropped session.
    pub requests_cancelled: AtomicU64,
    /// Request payload bytes received.
    pub request_bytes: AtomicU64,
    /// Answer body bytes relayed.
    pub answer_bytes: AtomicU64,
    /// Adjusted prompt tokens billed.
    pub prompt_tokens: AtomicU64,
    /// Adjusted cached tokens billed.
    pub cached_tokens: AtomicU64,
    /// Adjusted completion tokens billed.
    pub completion_tokens: AtomicU64,
    /// Adjusted reasoning tokens billed.
    pub reasoning_tokens: AtomicU64,
    /// Adjusted tokens billed in total.
    pub total_tokens: AtomicU64,
    /// Sum of request durations in milliseconds.
    pub request_time_ms: AtomicU64,
    /// Streamed answers cut because the engine went past the request's token limit.
    pub limit_cuts: AtomicU64,
}

/// A point-in-time copy of the counters.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// See [`Counters`].
    pub requests_received: u64,
    /// See [`Counters`].
    pub requests_success: u64,
    /// See [`Counters`].
    pub requests_failed: u64,
    /// See [`Counters`].
    pub requests_rejected: u64,
    /// See [`Counters`].
    pub requests_cancelled: u64,
    /// See [`Counters`].
    pub request_bytes: u64,
    /// See [`Counters`].
    pub answer_bytes: u64,
    /// See [`Counters`].
    pub prompt_tokens: u64,
    /// See [`Counters`].
    pub cached_tokens: u64,
    /// See [`Counters`].
    pub completion_tokens: u64,
    /// See [`Counters`].
    pub reasoning_tokens: u64,
    /// See [`Counters`].
    pub total_tokens: u64,
    /// See [`Counters`].
    pub request_time_ms: u64,
    /// See [`Counters`].
    pub limit_cuts: u64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Copies all counters.
    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            requests_received: g(&self.requests_received),
            requests_success: g(&self.requests_success),
            requests_failed: g(&self.requests_failed),
            requests_rejected: g(&self.requests_rejected),
            requests_cancelled: g(&self.requests_cancelled),
            request_bytes: g(&self.request_bytes),
            answer_bytes: g(&self.answer_bytes),
            prompt_tokens: g(&self.prompt_tokens),
            cached_tokens: g(&self.cached_tokens),
            completion_tokens: g(&self.completion_tokens),
            reasoning_tokens: g(&self.reasoning_tokens),
            total_tokens: g(&self.total_tokens),
            request_time_ms: g(&self.request_time_ms),
            limit_cuts: g(&self.limit_cuts),
        }
    }
}
