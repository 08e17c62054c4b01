//! Request counters since start (the durable totals are in the state database).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::request::Usage;

/// Counters, all monotonic.
#[derive(Debug, Default)]
pub(crate) struct Stats {
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

/// The request counters at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// Requests received.
    pub received: u64,
    /// Refused before reaching a proxy (bad request, key, no proxy).
    pub refused: u64,
    /// Requests answered.
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Answer body bytes.
    pub answer_bytes: u64,
    /// Mean request duration, seconds.
    pub mean_seconds: f64,
    /// Billed tokens.
    pub tokens: u64,
    /// Spent, nanoTON.
    pub spent_nanoton: u64,
}

/// One finished request as the stats page lists it (no content: counts, cost, ids).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentRequest {
    /// Unix seconds it finished.
    pub at: u64,
    /// The model asked for.
    pub model: String,
    /// Answered in full.
    pub ok: bool,
    /// Adjusted tokens billed.
    pub tokens: u64,
    /// Its cost, nanoTON.
    pub cost_nanoton: u64,
    /// From receipt of the request to its end, milliseconds.
    pub latency_ms: u64,
    /// The proxy that answered.
    pub proxy: String,
    /// The answer's receipt id (`GET /v1/receipts/{id}`), when it had one.
    pub receipt_id: Option<String>,
    /// The first 8 hex digits of the API key's hash, when keys are configured.
    pub key: Option<String>,
}

/// Requests, tokens and spend of one model since start.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelSpend {
    /// Requests answered.
    pub requests: u64,
    /// Adjusted tokens billed.
    pub tokens: u64,
    /// nanoTON spent.
    pub spent_nanoton: u64,
}

/// Requests kept for the stats page.
pub(crate) const RECENT: usize = 50;
/// Models whose spend is kept (answered models only, so the root's list bounds them; this
/// is a second bound).
const MODELS: usize = 256;

/// The last [`RECENT`] requests and the spend per answered model.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    inner: Mutex<(
        VecDeque<RecentRequest>,
        std::collections::BTreeMap<String, ModelSpend>,
    )>,
}

impl Recent {
    pub(crate) fn record(&self, r: RecentRequest) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if r.ok && (g.1.len() < MODELS || g.1.contains_key(&r.model)) {
            let m = g.1.entry(r.model.clone()).or_default();
            m.requests += 1;
            m.tokens += r.tokens;
            m.spent_nanoton += r.cost_nanoton;
        }
        if g.0.len() >= RECENT {
            g.0.pop_front();
        }
        g.0.push_back(r);
    }

    /// A request recorded with the receipt `receipt_id` that then had none to serve: the
    /// link goes; when `failed` (the receipt was refused, or none came where one is
    /// required) it is listed as failed and its spend leaves its model's.
    pub(crate) fn receipt_gone(&self, receipt_id: &str, failed: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) =
            g.0.iter_mut()
                .find(|r| r.receipt_id.as_deref() == Some(receipt_id))
        else {
            return;
        };
        r.receipt_id = None;
        if !(failed && r.ok) {
            return;
        }
        r.ok = false;
        let (model, tokens, cost) = (r.model.clone(), r.tokens, r.cost_nanoton);
        if let Some(m) = g.1.get_mut(&model) {
            m.requests = m.requests.saturating_sub(1);
            m.tokens = m.tokens.saturating_sub(tokens);
            m.spent_nanoton = m.spent_nanoton.saturating_sub(cost);
        }
    }

    /// The requests, newest last, and the spend per model.
    pub(crate) fn snapshot(
        &self,
    ) -> (
        Vec<RecentRequest>,
        std::collections::BTreeMap<String, ModelSpend>,
    ) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.0.iter().cloned().collect(), g.1.clone())
    }
}

impl Stats {
    pub(crate) fn received(&self, bytes: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.request_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A request counted as succeeded whose receipt was then refused: it counts as failed.
    pub(crate) fn receipt_refused(&self) {
        let _ = self
            .succeeded
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        self.failed.fetch_add(1, Ordering::Relaxed);
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

    pub(crate) fn snapshot(&self) -> Snapshot {
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
/// `GET /request/debuglogentry?request_guid=…`.
///
/// Bounded in count ([`DebugLog::CAPACITY`]) and in bytes ([`DebugLog::MAX_BYTES`], the
/// oldest entries go first): a debug JSON over [`DebugLog::MAX_DEBUG_BYTES`] is replaced by
/// a note of its size, and entries are kept as JSON text, so what a proxy or worker sends
/// cannot make the gateway hold more than that.
#[derive(Default)]
pub(crate) struct DebugLog {
    inner: Mutex<DebugEntries>,
}

#[derive(Default)]
struct DebugEntries {
    /// SHA-256 of the guid, and the entry as JSON text.
    entries: VecDeque<([u8; 32], Box<str>)>,
    /// Sum of the entries' text lengths.
    bytes: usize,
}

/// A peer's debug JSON as stored: parsed when it is small enough, else a note of its size.
fn debug_json(d: Option<&str>) -> serde_json::Value {
    match d {
        None => serde_json::Value::Null,
        Some(d) if d.len() > DebugLog::MAX_DEBUG_BYTES => serde_json::json!({
            "omitted": format!(
                "{} bytes of debug JSON, over the {}-byte limit",
                d.len(),
                DebugLog::MAX_DEBUG_BYTES
            ),
        }),
        Some(d) => serde_json::from_str(d).unwrap_or(serde_json::Value::Null),
    }
}

impl DebugLog {
    /// Entries kept.
    pub(crate) const CAPACITY: usize = 1024;
    /// Bytes of JSON text kept, all entries together.
    pub(crate) const MAX_BYTES: usize = 8 << 20;
    /// Largest debug JSON kept from the worker or the proxy, each.
    pub(crate) const MAX_DEBUG_BYTES: usize = 64 << 10;

    pub(crate) fn record(&self, guid: [u8; 32], ok: bool, usage: Option<&Usage>, proxy: &str) {
        // The usage's figures; its debug texts are shown once, parsed, beside it.
        let mut figures = serde_json::to_value(usage).unwrap_or_default();
        if let Some(o) = figures.as_object_mut() {
            o.remove("worker_debug");
            o.remove("proxy_debug");
        }
        let v = serde_json::json!({
            "ok": ok,
            "proxy": proxy,
            "usage": figures,
            "worker_debug": debug_json(usage.and_then(|u| u.worker_debug.as_deref())),
            "proxy_debug": debug_json(usage.and_then(|u| u.proxy_debug.as_deref())),
        });
        let text: Box<str> = v.to_string().into();
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = e.entries.iter().position(|(g, _)| *g == guid)
            && let Some((_, old)) = e.entries.remove(i)
        {
            e.bytes -= old.len();
        }
        while e.entries.len() >= Self::CAPACITY || e.bytes + text.len() > Self::MAX_BYTES {
            let Some((_, old)) = e.entries.pop_front() else {
                break;
            };
            e.bytes -= old.len();
        }
        e.bytes += text.len();
        e.entries.push_back((guid, text));
    }

    /// The entry for SHA-256 `guid`.
    pub(crate) fn get(&self, guid: &[u8; 32]) -> Option<serde_json::Value> {
        let e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (_, text) = e.entries.iter().find(|(g, _)| g == guid)?;
        serde_json::from_str(text).ok()
    }

    /// Entries kept, and the bytes of JSON text they hold.
    #[cfg(test)]
    pub(crate) fn size(&self) -> (usize, usize) {
        let e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (e.entries.len(), e.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(debug: Option<String>) -> Usage {
        Usage {
            total_tokens: 7,
            cost_nanoton: 70,
            worker_debug: debug.clone(),
            proxy_debug: debug,
            ..Usage::default()
        }
    }

    fn guid(i: usize) -> [u8; 32] {
        let mut g = [0u8; 32];
        g[..8].copy_from_slice(&(i as u64).to_le_bytes());
        g
    }

    #[test]
    fn huge_debug_json_is_replaced_by_a_note_of_its_size() {
        let log = DebugLog::default();
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(8 << 20));
        log.record(guid(1), true, Some(&usage(Some(huge))), "p");
        let e = log.get(&guid(1)).unwrap();
        assert_eq!(e["usage"]["cost_nanoton"], 70);
        assert!(e["usage"].get("worker_debug").is_none(), "{e}");
        let note = e["worker_debug"]["omitted"].as_str().unwrap();
        assert!(note.starts_with("8388618 bytes of debug JSON"), "{note}");
        assert!(log.size().1 < 1024, "{:?}", log.size());
        // A small one is kept, parsed.
        log.record(
            guid(2),
            true,
            Some(&usage(Some("{\"type\":\"t\"}".into()))),
            "p",
        );
        assert_eq!(log.get(&guid(2)).unwrap()["proxy_debug"]["type"], "t");
    }

    #[test]
    fn the_log_is_bounded_in_bytes_and_count_and_keeps_the_newest() {
        let log = DebugLog::default();
        // Debug JSON just under the per-field limit, from both peers, on every request.
        let big = format!(
            "{{\"pad\":\"{}\"}}",
            "y".repeat(DebugLog::MAX_DEBUG_BYTES - 20)
        );
        let n = DebugLog::CAPACITY;
        for i in 0..n {
            log.record(guid(i), true, Some(&usage(Some(big.clone()))), "p");
            assert!(log.size().1 <= DebugLog::MAX_BYTES, "{:?}", log.size());
        }
        let (count, bytes) = log.size();
        assert!(count < n / 4, "{count} entries of ~128 KiB kept");
        assert!(bytes > DebugLog::MAX_BYTES - 2 * big.len(), "{bytes}");
        assert!(log.get(&guid(n - 1)).is_some(), "the newest is kept");
        assert!(log.get(&guid(0)).is_none(), "the oldest went first");
        // Small entries: the count bound holds too.
        for i in 0..n + 10 {
            log.record(guid(10_000 + i), false, None, "p");
        }
        assert_eq!(log.size().0, DebugLog::CAPACITY);
        // Recording a guid again replaces its entry.
        log.record(guid(10_000 + n + 9), true, Some(&usage(None)), "q");
        assert_eq!(log.size().0, DebugLog::CAPACITY);
        assert_eq!(log.get(&guid(10_000 + n + 9)).unwrap()["proxy"], "q");
    }
}
