//! Operator events and the chain clock as the proxy's and worker's admin servers show them:
//! a bounded log of what the operator should look at ([`OperatorLog`]), and the pieces of
//! the stats page and `/metrics` that present it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::admin::{Prometheus, label};
use crate::chain::ChainTime;
use cocoon_webui::fmt;
use cocoon_webui::html::{Cell, Table};

/// Something the operator should look at (logged as a warning too).
#[derive(Debug, Clone, Serialize)]
pub struct OperatorEvent {
    /// Unix seconds.
    pub at: u64,
    /// A stable name: `usage_violation`, `clock_drift`, ...
    pub kind: &'static str,
    /// Whom it concerns (a contract, an endpoint); empty when nobody in particular.
    pub subject: String,
    /// What happened.
    pub detail: String,
}

/// The last `cap` operator events, the count of each kind since start, and the chain clock
/// the root watcher feeds.
#[derive(Debug)]
pub struct OperatorLog {
    cap: usize,
    events: Mutex<(VecDeque<OperatorEvent>, BTreeMap<&'static str, u64>)>,
    chain_time: Mutex<Option<ChainTime>>,
}

/// What an [`OperatorLog`] holds now.
#[derive(Debug, Clone, Default)]
pub struct OperatorSnapshot {
    /// Recent events, newest last.
    pub events: Vec<OperatorEvent>,
    /// Events since start, by kind.
    pub event_counts: BTreeMap<&'static str, u64>,
    /// Seconds the local clock is ahead of the chain's (negative: behind), once observed.
    pub clock_offset_secs: Option<i64>,
    /// Whether the local clock is outside the tolerance.
    pub clock_drifted: bool,
}

impl OperatorLog {
    /// An empty log keeping the last `cap` events.
    pub fn new(cap: usize) -> Self {
        OperatorLog {
            cap,
            events: Mutex::default(),
            chain_time: Mutex::default(),
        }
    }

    /// Records an event at unix time `at` (and logs it as a warning).
    pub fn record(&self, at: u64, kind: &'static str, subject: &str, detail: &str) {
        tracing::warn!(kind, subject, detail, "operator event");
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        while g.0.len() >= self.cap.max(1) {
            g.0.pop_front();
        }
        g.0.push_back(OperatorEvent {
            at,
            kind,
            subject: subject.to_owned(),
            detail: detail.to_owned(),
        });
        *g.1.entry(kind).or_default() += 1;
    }

    /// Shows the local clock's offset from the chain's, as `time` estimates it.
    pub fn follow_chain_time(&self, time: ChainTime) {
        *self.chain_time.lock().unwrap_or_else(|p| p.into_inner()) = Some(time);
    }

    /// The events and the clock now.
    pub fn snapshot(&self) -> OperatorSnapshot {
        let (events, event_counts) = {
            let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
            (g.0.iter().cloned().collect(), g.1.clone())
        };
        let time = self
            .chain_time
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        OperatorSnapshot {
            events,
            event_counts,
            clock_offset_secs: time.as_ref().and_then(ChainTime::offset),
            clock_drifted: time.as_ref().is_some_and(ChainTime::drifted),
        }
    }
}

/// The stats page's "local clock − chain (s)" value.
pub fn clock_cell(offset: Option<i64>, drifted: bool) -> String {
    match offset {
        Some(o) if drifted => format!("{o} (clock_drift)"),
        Some(o) => o.to_string(),
        None => "unknown".to_owned(),
    }
}

/// The stats page's "operator events" table, newest first, times relative to `now` (Unix
/// seconds).
pub fn events_table(events: &[OperatorEvent], now: u64) -> Table {
    let mut t = Table::new("Operator events", &["when", "kind", "subject", "detail"])
        .empty("no operator events")
        .id("events");
    for e in events.iter().rev() {
        t.row(vec![
            Cell::Text(fmt::ago(now, e.at)),
            Cell::Text(e.kind.to_owned()),
            Cell::Long(e.subject.clone()),
            Cell::Long(e.detail.clone()),
        ]);
    }
    t
}

/// `<prefix>_operator_events_total` by kind (`kinds` names them in the help text), and
/// `<prefix>_clock_offset_seconds` (once observed) and `<prefix>_clock_drift`.
pub fn metrics(
    m: &mut Prometheus,
    prefix: &str,
    kinds: &str,
    counts: &BTreeMap<&'static str, u64>,
    offset: Option<i64>,
    drifted: bool,
) {
    let by_kind: Vec<(String, String)> = counts
        .iter()
        .map(|(k, v)| (format!("{{kind=\"{}\"}}", label(k)), v.to_string()))
        .collect();
    m.metric(
        &format!("{prefix}_operator_events_total"),
        "counter",
        &format!("Operator events by kind ({kinds})."),
        &by_kind,
    );
    if let Some(o) = offset {
        m.single(
            &format!("{prefix}_clock_offset_seconds"),
            "gauge",
            "Seconds the local clock is ahead of the chain's last block time (negative: behind).",
            o,
        );
    }
    m.single(
        &format!("{prefix}_clock_drift"),
        "gauge",
        "1 while the local clock is further from the chain's than clock_drift_max_seconds.",
        u64::from(drifted),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_last_events_and_counts_all() {
        let log = OperatorLog::new(2);
        for (i, kind) in ["a", "b", "a"].into_iter().enumerate() {
            log.record(i as u64, kind, "s", "d");
        }
        let s = log.snapshot();
        assert_eq!(
            s.events.iter().map(|e| (e.at, e.kind)).collect::<Vec<_>>(),
            [(1, "b"), (2, "a")]
        );
        assert_eq!(s.event_counts.get("a"), Some(&2));
        assert_eq!(s.event_counts.get("b"), Some(&1));
        assert_eq!(s.clock_offset_secs, None);
        assert!(!s.clock_drifted);
    }

    #[test]
    fn the_clock_and_the_metrics_as_the_pages_show_them() {
        let log = OperatorLog::new(10);
        let time = ChainTime::new(60);
        log.follow_chain_time(time.clone());
        for _ in 0..5 {
            time.observe(1_000, 1_300);
        }
        log.record(5, "clock_drift", "", "ahead");
        let s = log.snapshot();
        assert_eq!(s.clock_offset_secs, Some(300));
        assert!(s.clock_drifted);
        assert_eq!(
            clock_cell(s.clock_offset_secs, s.clock_drifted),
            "300 (clock_drift)"
        );
        assert_eq!(clock_cell(Some(-3), false), "-3");
        assert_eq!(clock_cell(None, false), "unknown");
        let mut m = Prometheus::new();
        metrics(
            &mut m,
            "cocoon_x",
            "clock_drift",
            &s.event_counts,
            s.clock_offset_secs,
            s.clock_drifted,
        );
        let t = m.text();
        assert!(
            t.contains("cocoon_x_operator_events_total{kind=\"clock_drift\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("cocoon_x_clock_offset_seconds 300\n"), "{t}");
        assert!(t.contains("cocoon_x_clock_drift 1\n"), "{t}");
    }
}
