//! HTTP admin server: `/stats` (HTML), `/jsonstats`, `/metrics` (Prometheus text),
//! `/public.json` (what the network explorer reads: [`crate::PublicStats`]) and POST
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
use axum::routing::{get, post};
use cocoon_service::admin::{self, Admin, Prometheus, StatsPages, Switch, label};
use cocoon_service::events;
use cocoon_service::webui::chart::{self, ChartOpts, Series};
use cocoon_service::webui::fmt;
use cocoon_service::webui::html::{self, Card, Cell, Control, Page, Table, Tone};
use cocoon_service::webui::series::{self, History, Mode, Span};

use crate::{ProxyStats, Shared};

/// The admin server's routes: the service's stats pages and switch, and the settlement
/// controls.
pub(crate) fn routes() -> Router<Admin<Shared>> {
    admin::router::<Shared>(&["/control"])
        .route("/control/{action}", post(settlement_control))
        .route(
            "/public.json",
            get(|State(st): State<Admin<Shared>>| async move {
                axum::Json(st.role.public()).into_response()
            }),
        )
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
        let now = admin::unix_now();
        let accounts = self.meter.accounts();
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        admin::html_page(&dashboard(s, &accounts, &history, now))
    }

    fn metrics(&self, s: &ProxyStats) -> Prometheus {
        metrics(s)
    }

    fn sample(&self, now: u64) {
        let c = &self.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let waiting: usize = self
            .registry
            .queue_stats()
            .waiting
            .iter()
            .map(|w| w.1)
            .sum();
        let latency = self.registry.latency();
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.counter(RECEIVED, now, l(&c.requests_received));
        h.counter(SUCCEEDED, now, l(&c.requests_success));
        h.counter(FAILED, now, l(&c.requests_failed));
        h.counter(REFUSED, now, l(&c.requests_rejected));
        h.counter(TOKENS, now, l(&c.tokens_total));
        h.gauge(WAITING, now, waiting as f64);
        if let Some(q) = latency {
            h.gauge(P50, now, q.p50 * 1000.0);
            h.gauge(P99, now, q.p99 * 1000.0);
            h.gauge(TTFT50, now, q.ttft_p50 * 1000.0);
        }
    }
}

const RECEIVED: &str = "received";
const SUCCEEDED: &str = "succeeded";
const FAILED: &str = "failed";
const REFUSED: &str = "refused";
const TOKENS: &str = "tokens";
const WAITING: &str = "waiting";
const P50: &str = "latency_p50_ms";
const P99: &str = "latency_p99_ms";
const TTFT50: &str = "ttft_p50_ms";

fn ms(secs: f64) -> String {
    fmt::millis((secs * 1000.0).round() as u64)
}

fn ratio(part: u64, all: u64) -> String {
    if all == 0 {
        "–".into()
    } else {
        fmt::percent(part as f64 / all as f64)
    }
}

/// The proxy's dashboard: traffic, errors and latency figures and charts, workers with
/// their reputation and why, the queue, clients, the ledger, refused handshakes, operator
/// events, and the controls.
fn dashboard(
    s: &ProxyStats,
    accounts: &[cocoon_ledger::AccountView],
    h: &History,
    now: u64,
) -> Page {
    let c = &s.counters;
    let q = &s.queue;
    let waiting: usize = q.waiting.iter().map(|w| w.1).sum();
    let mut p = Page::new("Cocoon proxy");
    p.subtitle(&format!(
        "contract {} · root config v{}{}",
        s.proxy_sc,
        s.root_version,
        if s.is_test { " · test network" } else { "" }
    ))
    .footer(&format!("updated {}", fmt::utc(now)))
    .controls(vec![
        Control::new("Disable", "/control/disable").tone(Tone::Bad),
        Control::new("Enable", "/control/enable").tone(Tone::Good),
        Control::new("Checkpoint", "/control/checkpoint"),
        Control::new("Charge clients", "/control/charge"),
        Control::new("Pay workers", "/control/payout"),
        Control::new("Withdraw commission", "/control/withdraw"),
    ]);
    let done = c.requests_success + c.requests_failed;
    let ready = s.workers.iter().filter(|w| w.enabled).count();
    let mut cards = vec![
        Card::new("Status", if s.enabled { "enabled" } else { "disabled" })
            .tone(Tone::of(s.enabled, Tone::Warn))
            .id("enabled"),
        Card::new("Requests", fmt::thousands(c.requests_received))
            .note(format!(
                "{} ok · {} failed · {} refused",
                fmt::thousands(c.requests_success),
                fmt::thousands(c.requests_failed),
                fmt::thousands(c.requests_rejected)
            ))
            .id("requests_received"),
        Card::new("Error rate", ratio(c.requests_failed, done))
            .note("failed / finished")
            .tone(if c.requests_failed == 0 {
                Tone::Neutral
            } else {
                Tone::Warn
            }),
        Card::new(
            "Latency p50 / p99",
            s.latency
                .map_or("–".into(), |l| format!("{} / {}", ms(l.p50), ms(l.p99))),
        )
        .note(s.latency.map_or("no answers yet".into(), |l| {
            format!("TTFT p50 {} · last {} answers", ms(l.ttft_p50), l.samples)
        })),
        Card::new("Workers", format!("{ready} / {}", s.workers.len()))
            .note("enabled / connected")
            .id("workers"),
        Card::new("Queue", fmt::thousands(waiting as u64))
            .note(format!("at most {} per model", q.max_per_model))
            .id("queue"),
        Card::new("Tokens", fmt::tokens(c.adjusted_tokens_total))
            .note("adjusted, billed")
            .id("tokens"),
    ];
    if let Some(l) = &s.ledger {
        cards.push(Card::new("Commission", fmt::ton(l.commission_nanoton)).id("commission"));
    }
    p.cards(&cards);
    let opts = ChartOpts::new(now);
    let day = |name: &str| series::downsample(&h.points(name, Span::Minutes, now), 288, Mode::Sum);
    let reputation: Vec<(String, f64)> = s
        .workers
        .iter()
        .map(|w| (format!("#{} {}", w.id, w.model), w.reputation))
        .collect();
    p.panels(&[
        (
            "Traffic, last 5 min (requests per second)",
            chart::line_chart(
                &[
                    Series::new("received", h.points(RECEIVED, Span::Seconds, now)),
                    Series::new("succeeded", h.points(SUCCEEDED, Span::Seconds, now)),
                ],
                &opts,
            ),
        ),
        (
            "Errors, last 5 min (per second)",
            chart::line_chart(
                &[
                    Series::new("failed", h.points(FAILED, Span::Seconds, now)),
                    Series::new("refused", h.points(REFUSED, Span::Seconds, now)),
                ],
                &opts,
            ),
        ),
        (
            "Latency percentiles, last 5 min (ms, last 512 answers)",
            chart::line_chart(
                &[
                    Series::new("p50", h.points(P50, Span::Seconds, now)),
                    Series::new("p99", h.points(P99, Span::Seconds, now)),
                    Series::new("TTFT p50", h.points(TTFT50, Span::Seconds, now)),
                ],
                &opts,
            ),
        ),
        (
            "Traffic, last 24 h (requests per 5 min)",
            chart::line_chart(
                &[
                    Series::new("received", day(RECEIVED)),
                    Series::new("failed", day(FAILED)),
                    Series::new("refused", day(REFUSED)),
                ],
                &opts,
            ),
        ),
        (
            "Queue length, last 5 min",
            chart::line_chart(
                &[Series::new(
                    "waiting",
                    h.points(WAITING, Span::Seconds, now),
                )],
                &opts,
            ),
        ),
        (
            "Reputation per worker (0–1)",
            chart::bar_chart(&reputation, &opts.format(|v| fmt::decimal(v, 3))),
        ),
    ]);
    let mut t = Table::new(
        "Workers and their reputation",
        &[
            "id",
            "model",
            "enabled",
            "load",
            "reputation",
            "success (window)",
            "mean TTFT",
            "avg latency",
            "served",
            "failed",
            "usage reports refused",
            "coefficient",
            "owner",
            "worker contract",
            "image",
            "GPU",
        ],
    )
    .empty("no workers connected")
    .id("workers-table");
    for w in &s.workers {
        t.row(vec![
            Cell::Num(w.id.to_string()),
            Cell::Long(w.model.clone()),
            Cell::Markup(html::flag(w.enabled, Tone::Warn)),
            Cell::Num(format!("{} / {}", w.running, w.max_active)),
            Cell::Num(fmt::decimal(w.reputation, 3)),
            Cell::Num(format!(
                "{} / {} ({})",
                w.window_successes,
                w.window_attempts,
                ratio(w.window_successes as u64, w.window_attempts as u64)
            )),
            Cell::Num(fmt::or_dash(w.avg_ttft_ms, fmt::millis)),
            Cell::Num(fmt::millis(w.avg_latency_ms)),
            Cell::Num(fmt::thousands(w.served)),
            Cell::Num(fmt::thousands(w.failed)),
            Cell::Num(fmt::thousands(w.bad_reports)),
            Cell::Num(fmt::decimal(f64::from(w.coefficient) / 1000.0, 3)),
            Cell::Hash(w.owner.clone()),
            Cell::Hash(w.worker_sc.clone()),
            Cell::Hash(w.image_hash.clone()),
            Cell::Text(w.gpu.clone().unwrap_or_else(|| "–".into())),
        ]);
    }
    p.table(&t);
    let waits = if q.served == 0 {
        "–".to_owned()
    } else {
        ms(q.wait_seconds_sum / q.served as f64)
    };
    let mut facts = vec![
        ("waiting now", Cell::Num(fmt::thousands(waiting as u64))),
        (
            "most waiting per model",
            Cell::Num(fmt::thousands(q.max_per_model as u64)),
        ),
        ("served after waiting", Cell::Num(fmt::thousands(q.served))),
        ("average wait", Cell::Text(waits)),
        ("refused: queue full", Cell::Num(fmt::thousands(q.rejected))),
        (
            "expired while waiting",
            Cell::Num(fmt::thousands(q.expired)),
        ),
    ];
    for (model, n) in &q.waiting {
        facts.push(("waiting for", Cell::Text(format!("{model}: {n}"))));
    }
    p.facts("Queue", &facts);
    p.facts(
        "Traffic and admission",
        &[
            (
                "requests cancelled",
                Cell::Num(fmt::thousands(c.requests_cancelled)),
            ),
            ("retries", Cell::Num(fmt::thousands(c.retries))),
            (
                "workers refused",
                Cell::Num(fmt::thousands(c.workers_refused)),
            ),
            (
                "clients refused",
                Cell::Num(fmt::thousands(c.clients_refused)),
            ),
            (
                "handshake lookups",
                Cell::Num(fmt::thousands(c.handshake_lookups)),
            ),
            (
                "client watch errors",
                Cell::Num(fmt::thousands(c.watch_errors)),
            ),
            (
                "TON endpoint disagreements",
                Cell::Num(fmt::thousands(c.ton_disagreements)),
            ),
            (
                "local clock − chain (s)",
                Cell::Text(events::clock_cell(s.clock_offset_secs, s.clock_drifted)),
            ),
        ],
    );
    let mut t = Table::new(
        "Clients",
        &[
            "session",
            "owner",
            "contract",
            "authorised",
            "running",
            "tokens in db",
            "tokens known",
            "tokens on chain",
        ],
    )
    .empty("no clients connected")
    .id("clients");
    for cl in &s.clients {
        t.row(vec![
            Cell::Num(cl.session.to_string()),
            Cell::Hash(cl.owner.clone()),
            Cell::Hash(cl.client_sc.clone()),
            Cell::Markup(html::flag(cl.authorized, Tone::Warn)),
            Cell::Num(cl.running.to_string()),
            Cell::Num(fmt::tokens(cl.totals.committed_to_db)),
            Cell::Num(fmt::tokens(cl.totals.max)),
            Cell::Num(fmt::tokens(cl.totals.committed_to_blockchain)),
        ]);
    }
    p.table(&t);
    if let Some(l) = &s.ledger {
        let pending = if l.pending_checkpoints.is_empty() {
            "none".to_owned()
        } else {
            l.pending_checkpoints
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        p.facts(
            "Ledger",
            &[
                ("params version", Cell::Num(l.params_version.to_string())),
                (
                    "committed / last update",
                    Cell::Num(format!("{} / {}", l.committed_seq, l.last_seq)),
                ),
                (
                    "commit failures",
                    Cell::Num(fmt::thousands(l.commit_failures)),
                ),
                (
                    "confirmed checkpoint",
                    Cell::Num(fmt::or_dash(l.confirmed_checkpoint, |v| v.to_string())),
                ),
                ("pending checkpoints", Cell::Text(pending)),
                ("commission", Cell::Num(fmt::ton(l.commission_nanoton))),
                (
                    "reservations",
                    Cell::Num(fmt::thousands(l.reservations as u64)),
                ),
                (
                    "charges submitted",
                    Cell::Num(fmt::thousands(l.charges_submitted)),
                ),
                (
                    "payouts submitted",
                    Cell::Num(fmt::thousands(l.payouts_submitted)),
                ),
                (
                    "automatic withdrawals",
                    Cell::Num(fmt::thousands(l.auto_withdrawals)),
                ),
                (
                    "halted",
                    match &l.halted {
                        Some(why) => Cell::Badge(Tone::Bad, why.clone()),
                        None => Cell::Text("no".into()),
                    },
                ),
                ("frozen accounts", Cell::Num(l.frozen.len().to_string())),
            ],
        );
        let mut t = Table::new("Frozen accounts", &["account", "why"])
            .empty("no frozen accounts")
            .id("frozen");
        for (a, why) in &l.frozen {
            t.row(vec![Cell::Long(a.clone()), Cell::Long(why.clone())]);
        }
        p.table(&t);
    }
    let mut t = Table::new(
        "Accounts (ledger)",
        &[
            "account",
            "status",
            "tokens",
            "in db",
            "checkpointed",
            "settled on chain",
            "reserved",
            "worth",
            "last receipt",
            "frozen",
        ],
    )
    .empty("no accounts")
    .id("accounts");
    for a in accounts {
        t.row(vec![
            Cell::Long(a.key.to_string()),
            Cell::Badge(
                match a.status {
                    cocoon_ledger::Status::Open => Tone::Good,
                    cocoon_ledger::Status::Closing => Tone::Warn,
                    cocoon_ledger::Status::Closed => Tone::Neutral,
                },
                match a.status {
                    cocoon_ledger::Status::Open => "open",
                    cocoon_ledger::Status::Closing => "closing",
                    cocoon_ledger::Status::Closed => "closed",
                }
                .into(),
            ),
            Cell::Num(fmt::tokens(a.tokens)),
            Cell::Num(fmt::tokens(a.db_tokens)),
            Cell::Num(fmt::tokens(a.chain_tokens)),
            Cell::Num(fmt::tokens(a.on_chain_tokens)),
            Cell::Num(fmt::tokens(a.reserved)),
            Cell::Num(fmt::ton(a.nanoton)),
            Cell::Num(fmt::tokens(a.last_receipt)),
            Cell::Text(a.frozen.clone().unwrap_or_else(|| "–".into())),
        ]);
    }
    p.table(&t);
    let mut t = Table::new("Refused handshakes", &["when", "kind", "peer", "reason"])
        .empty("no refused handshakes")
        .id("refusals");
    for r in s.refusals.iter().rev() {
        t.row(vec![
            Cell::Text(fmt::ago(now, r.at)),
            Cell::Text(r.kind.to_owned()),
            Cell::Long(r.peer.clone()),
            Cell::Long(r.reason.clone()),
        ]);
    }
    p.table(&t);
    p.table(&events::events_table(&s.events, now));
    p
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
    if let Some(l) = &s.latency {
        let q = |v: &[(&str, f64)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, x)| (format!("{{quantile=\"{k}\"}}"), format!("{x:.6}")))
                .collect()
        };
        metric(
            "cocoon_proxy_latency_seconds",
            "gauge",
            "Latency percentiles of the last 512 successful attempts (whole answer).",
            &q(&[("0.5", l.p50), ("0.9", l.p90), ("0.99", l.p99)]),
        );
        metric(
            "cocoon_proxy_ttft_seconds",
            "gauge",
            "Time-to-first-byte percentiles of the last 512 successful attempts.",
            &q(&[("0.5", l.ttft_p50), ("0.99", l.ttft_p99)]),
        );
    }
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
