//! HTTP admin server: `/stats` (HTML), `/jsonstats`, `/metrics` (Prometheus text) and POST
//! controls behind a bearer token read from a file: `/control/disable`, `/control/enable`,
//! and on the ledger's settlement `/control/checkpoint`, `/control/charge`,
//! `/control/payout`, `/control/withdraw`.
//!
//! Controls need the token, and without a token file they are refused. Pages show counters
//! and public identifiers
//! only (addresses, hashes), never request contents. Everything is behind the browser guard
//! (`cocoon_service::browser`): a foreign `Host` or `Origin` is refused and a POST body must
//! be JSON, so a web page the operator opens can neither read the pages nor use a control.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cocoon_service::admin::{self, Admin, Page, Prometheus, StatsPages, Switch, label};
use cocoon_service::events;

use crate::{ProxyStats, Shared};

/// The admin server's routes: the service's stats pages and switch, and the settlement
/// controls.
pub(crate) fn routes() -> Router<Admin<Shared>> {
    admin::router::<Shared>(&["/control"]).route("/control/{action}", post(settlement_control))
}

impl Switch for Shared {
    const NAME: &'static str = "proxy";

    fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }
}

async fn settlement_control(
    State(st): State<Admin<Shared>>,
    Path(action): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = st.token.refuse(&headers) {
        return r;
    }
    let Ok(action) = action.parse::<crate::meter::SettlementAction>() else {
        return (StatusCode::NOT_FOUND, "unknown control\n").into_response();
    };
    match st.role.meter.control(action).await {
        Ok(done) => format!("{done}\n").into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

impl StatsPages for Shared {
    type Stats = ProxyStats;

    fn stats(&self) -> ProxyStats {
        Shared::stats(self)
    }

    fn page(&self, s: &ProxyStats) -> Response {
        stats_html(self, s)
    }

    fn metrics(&self, s: &ProxyStats) -> Prometheus {
        metrics(s)
    }
}

fn stats_html(shared: &Shared, s: &ProxyStats) -> Response {
    let c = &s.counters;
    let mut p = Page::new("cocoon proxy");
    p.row("enabled", s.enabled.to_string())
        .row("test network", s.is_test.to_string())
        .row("proxy contract", &s.proxy_sc)
        .row("root config version", s.root_version.to_string())
        .row(
            "local clock − chain (s)",
            events::clock_cell(s.clock_offset_secs, s.clock_drifted),
        )
        .row("requests received", c.requests_received.to_string())
        .row("requests success", c.requests_success.to_string())
        .row("requests failed", c.requests_failed.to_string())
        .row("requests rejected", c.requests_rejected.to_string())
        .row("requests cancelled", c.requests_cancelled.to_string())
        .row("retries", c.retries.to_string())
        .row("adjusted tokens", c.adjusted_tokens_total.to_string())
        .row("workers refused", c.workers_refused.to_string())
        .row("clients refused", c.clients_refused.to_string())
        .row(
            "TON endpoint disagreements",
            c.ton_disagreements.to_string(),
        );
    p.table(
        "workers",
        &[
            "id",
            "model",
            "owner",
            "coefficient",
            "load",
            "enabled",
            "avg latency (ms)",
            "reputation",
            "window ok/all",
            "served",
            "failed",
            "usage reports refused or lowered",
            "GPU",
        ],
    );
    for w in &s.workers {
        p.cells(&[
            w.id.to_string(),
            w.model.clone(),
            w.owner.clone(),
            w.coefficient.to_string(),
            format!("{}/{}", w.running, w.max_active),
            w.enabled.to_string(),
            w.avg_latency_ms.to_string(),
            format!("{:.3}", w.reputation),
            format!("{}/{}", w.window_successes, w.window_attempts),
            w.served.to_string(),
            w.failed.to_string(),
            w.bad_reports.to_string(),
            w.gpu.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let q = &s.queue;
    let waits = if q.served == 0 {
        "-".to_owned()
    } else {
        format!("{:.3}", q.wait_seconds_sum / q.served as f64)
    };
    p.section("queue")
        .row("most waiting per model", q.max_per_model.to_string())
        .row("served after waiting", q.served.to_string())
        .row("average wait (s)", waits)
        .row("refused: queue full", q.rejected.to_string())
        .row("expired while waiting", q.expired.to_string());
    p.table("waiting", &["model", "requests"]);
    for (model, n) in &q.waiting {
        p.cells(&[model.clone(), n.to_string()]);
    }
    p.table(
        "clients",
        &[
            "session",
            "owner",
            "contract",
            "authorised",
            "running",
            "tokens (db/max)",
        ],
    );
    for cl in &s.clients {
        p.cells(&[
            cl.session.to_string(),
            cl.owner.clone(),
            cl.client_sc.clone(),
            cl.authorized.to_string(),
            cl.running.to_string(),
            format!("{}/{}", cl.totals.committed_to_db, cl.totals.max),
        ]);
    }
    if let Some(l) = &s.ledger {
        p.section("ledger")
            .row("params version", l.params_version.to_string())
            .row(
                "committed / last update",
                format!("{} / {}", l.committed_seq, l.last_seq),
            )
            .row("commit failures", l.commit_failures.to_string())
            .row(
                "confirmed checkpoint",
                format!("{:?}", l.confirmed_checkpoint),
            )
            .row(
                "pending checkpoints",
                format!("{:?}", l.pending_checkpoints),
            )
            .row("commission (nanoTON)", l.commission_nanoton.to_string())
            .row("reservations", l.reservations.to_string())
            .row(
                "charges / payouts submitted",
                format!("{} / {}", l.charges_submitted, l.payouts_submitted),
            )
            .row("automatic withdrawals", l.auto_withdrawals.to_string())
            .row("halted", l.halted.clone().unwrap_or_else(|| "no".into()))
            .row("frozen accounts", l.frozen.len().to_string());
        p.table(
            "accounts",
            &[
                "account",
                "tokens",
                "in db",
                "checkpointed",
                "settled on chain",
                "reserved",
                "nanoTON",
                "status",
                "frozen",
            ],
        );
        for a in shared.meter.accounts() {
            p.cells(&[
                a.key.to_string(),
                a.tokens.to_string(),
                a.db_tokens.to_string(),
                a.chain_tokens.to_string(),
                a.on_chain_tokens.to_string(),
                a.reserved.to_string(),
                a.nanoton.to_string(),
                format!("{:?}", a.status),
                a.frozen.clone().unwrap_or_default(),
            ]);
        }
    }
    events::events_table(&mut p, &s.events);
    p.table("refused handshakes", &["at", "kind", "peer", "reason"]);
    for r in s.refusals.iter().rev() {
        p.cells(&[
            r.at.to_string(),
            r.kind.to_owned(),
            r.peer.clone(),
            r.reason.clone(),
        ]);
    }
    p.finish()
}

fn metrics(s: &ProxyStats) -> Prometheus {
    let c = &s.counters;
    let mut m = Prometheus::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
        m.metric(name, kind, help, lines);
    };
    let n = |v: u64| v.to_string();
    metric(
        "cocoon_proxy_requests_total",
        "counter",
        "Client requests by outcome.",
        &[
            ("{outcome=\"received\"}".into(), n(c.requests_received)),
            ("{outcome=\"success\"}".into(), n(c.requests_success)),
            ("{outcome=\"failed\"}".into(), n(c.requests_failed)),
            ("{outcome=\"rejected\"}".into(), n(c.requests_rejected)),
            ("{outcome=\"cancelled\"}".into(), n(c.requests_cancelled)),
        ],
    );
    metric(
        "cocoon_proxy_retries_total",
        "counter",
        "Requests retried on another worker before the first byte.",
        &[(String::new(), n(c.retries))],
    );
    metric(
        "cocoon_proxy_adjusted_tokens_total",
        "counter",
        "Adjusted tokens settled.",
        &[(String::new(), n(c.adjusted_tokens_total))],
    );
    metric(
        "cocoon_proxy_refused_total",
        "counter",
        "Refused handshakes by peer kind.",
        &[
            ("{kind=\"worker\"}".into(), n(c.workers_refused)),
            ("{kind=\"client\"}".into(), n(c.clients_refused)),
        ],
    );
    metric(
        "cocoon_proxy_ton_disagreements_total",
        "counter",
        "Chain reads refused because the configured TON endpoints disagreed.",
        &[(String::new(), n(c.ton_disagreements))],
    );
    metric(
        "cocoon_proxy_enabled",
        "gauge",
        "1 while the proxy takes requests.",
        &[(String::new(), n(u64::from(s.enabled)))],
    );
    let q = &s.queue;
    metric(
        "cocoon_proxy_queue_length",
        "gauge",
        "Requests waiting for a worker slot, per model.",
        &q.waiting
            .iter()
            .map(|(m, n)| (format!("{{model=\"{}\"}}", label(m)), n.to_string()))
            .collect::<Vec<_>>(),
    );
    let mut waits: Vec<(String, String)> = q
        .wait_bucket_bounds
        .iter()
        .zip(&q.wait_buckets)
        .map(|(b, n)| (format!("_bucket{{le=\"{b}\"}}"), n.to_string()))
        .collect();
    waits.push(("_bucket{le=\"+Inf\"}".into(), n(q.served)));
    waits.push(("_sum".into(), format!("{:.6}", q.wait_seconds_sum)));
    waits.push(("_count".into(), n(q.served)));
    metric(
        "cocoon_proxy_queue_wait_seconds",
        "histogram",
        "How long queued requests waited for a worker slot.",
        &waits,
    );
    metric(
        "cocoon_proxy_queue_rejected_total",
        "counter",
        "Requests refused because their model's queue was full.",
        &[(String::new(), n(q.rejected))],
    );
    metric(
        "cocoon_proxy_queue_expired_total",
        "counter",
        "Requests whose deadline or queue_max_wait_secs passed while they waited.",
        &[(String::new(), n(q.expired))],
    );
    let per_worker = |f: &dyn Fn(&crate::WorkerStat) -> String| -> Vec<(String, String)> {
        s.workers
            .iter()
            .map(|w| {
                (
                    format!("{{worker=\"{}\",model=\"{}\"}}", w.id, label(&w.model)),
                    f(w),
                )
            })
            .collect()
    };
    metric(
        "cocoon_proxy_worker_running",
        "gauge",
        "Requests running per worker connection.",
        &per_worker(&|w| w.running.to_string()),
    );
    metric(
        "cocoon_proxy_worker_reputation",
        "gauge",
        "Routing reputation per worker connection (0..1).",
        &per_worker(&|w| format!("{:.6}", w.reputation)),
    );
    metric(
        "cocoon_proxy_worker_latency_ms",
        "gauge",
        "Decayed average latency per worker connection.",
        &per_worker(&|w| w.avg_latency_ms.to_string()),
    );
    if let Some(l) = &s.ledger {
        metric(
            "cocoon_proxy_ledger_committed_seq",
            "counter",
            "Last ledger update durably committed.",
            &[(String::new(), n(l.committed_seq))],
        );
        metric(
            "cocoon_proxy_ledger_commit_failures_total",
            "counter",
            "Failed ledger commits.",
            &[(String::new(), n(l.commit_failures))],
        );
        metric(
            "cocoon_proxy_ledger_confirmed_checkpoint",
            "gauge",
            "Seqno of the last checkpoint confirmed on chain (0: none).",
            &[(
                String::new(),
                n(u64::from(l.confirmed_checkpoint.unwrap_or(0))),
            )],
        );
        metric(
            "cocoon_proxy_ledger_commission_nanoton",
            "counter",
            "Commission earned, nanoTON.",
            &[(String::new(), l.commission_nanoton.to_string())],
        );
        metric(
            "cocoon_proxy_auto_withdrawals_total",
            "counter",
            "Commission withdrawals sent because the contract's commission exceeded auto_withdraw_ton.",
            &[(String::new(), n(l.auto_withdrawals))],
        );
        metric(
            "cocoon_proxy_ledger_frozen_accounts",
            "gauge",
            "Accounts frozen for the operator to look at.",
            &[(String::new(), l.frozen.len().to_string())],
        );
        metric(
            "cocoon_proxy_ledger_halted",
            "gauge",
            "1 when the ledger halted (unknown checkpoint on chain).",
            &[(String::new(), n(u64::from(l.halted.is_some())))],
        );
    }
    metric(
        "cocoon_proxy_clients",
        "gauge",
        "Connected client sessions.",
        &[(String::new(), s.clients.len().to_string())],
    );
    events::metrics(
        &mut m,
        "cocoon_proxy",
        "usage_violation, usage_mismatch, usage_capped, client_closing, verdict_expired, ton_no_quorum, clock_drift, clock_agrees, ...",
        &s.event_counts,
        s.clock_offset_secs,
        s.clock_drifted,
    );

    m
}
