//! Request counters since start (the durable totals are in the state database).

use std::collections::VecDeque;
use std::sync::Mutex;
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

/// The last requests that named a `request_guid`: their outcome, usage, timings and (with
/// `enable_debug`) the proxy's and worker's debug JSON, looked up by the guid at
/// `GET /request/debuglogentry?request_guid=…` (COCOON keeps only the last one).
#[derive(Default)]
pub struct DebugLog {
    entries: Mutex<VecDeque<([u8; 32], serde_json::Value)>>,
}

impl DebugLog {
    /// Entries kept.
    pub const CAPACITY: usize = 1024;

    pub(crate) fn record(&self, guid: [u8; 32], ok: bool, usage: Option<&Usage>, proxy: &str) {
        let v = serde_json::json!({
            "ok": ok,
            "proxy": proxy,
            "usage": usage,
            "worker_debug": usage.and_then(|u| u.worker_debug.as_deref()).and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()),
            "proxy_debug": usage.and_then(|u| u.proxy_debug.as_deref()).and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()),
        });
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|(g, _)| *g != guid);
        if e.len() >= Self::CAPACITY {
            e.pop_front();
        }
        e.push_back((guid, v));
    }

    /// The entry for SHA-256 `guid`.
    pub fn get(&self, guid: &[u8; 32]) -> Option<serde_json::Value> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(g, _)| g == guid)
            .map(|(_, v)| v.clone())
    }
}
