//! HTTP admin server on its own port: `/stats` (HTML), `/jsonstats`, `/metrics`
//! (Prometheus text) and POST controls `/control/enable`, `/control/disable`,
//! `/control/coefficient?value=N`, `/control/payout` behind a bearer token read from a file.
//! The same controls answer under `/request/...` too, the paths this worker served before
//! the roles agreed on `/control` (and the prefix COCOON's runners use).
//!
//! Controls are POST only and need the token, since anyone who can reach the port (the
//! host, by design) could otherwise change the price or switch the worker off; without a
//! token file they are refused. Pages show counters and
//! public identifiers only. Everything is behind the browser guard
//! (`cocoon_service::browser`): a foreign `Host` or `Origin` is refused and a POST body must
//! be JSON, so a web page the operator opens can neither read the pages nor use a control.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cocoon_service::admin::{self, Admin, Prometheus, StatsPages, Switch, label};
use cocoon_service::events;
use cocoon_service::webui::chart::{self, ChartOpts, Series};
use cocoon_service::webui::fmt;
use cocoon_service::webui::html::{self, Card, Cell, Control, Page, Table, Tone};
use cocoon_service::webui::series::{self, History, Mode, Span};

use crate::{Shared, WorkerStats};

/// The admin server's routes: the service's stats pages and switch, the coefficient and
/// payout controls, under `/control` and under the older `/request` alike.
pub(crate) fn routes() -> Router<Admin<Shared>> {
    admin::router::<Shared>(&["/control", "/request"])
        .route("/control/coefficient", post(coefficient))
        .route("/control/payout", post(payout))
        .route("/request/coefficient", post(coefficient))
        .route("/request/payout", post(payout))
}

impl Switch for Shared {
    const NAME: &'static str = "worker";

    fn set_enabled(&self, on: bool) {
        self.control.send_modify(|c| c.force_disabled = !on);
    }
}

async fn coefficient(
    State(st): State<Admin<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = st.token.refuse(&headers) {
        return r;
    }
    let Some(v) = q.get("value").and_then(|v| v.trim().parse::<u32>().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected ?value=<coefficient in thousandths, integer>\n",
        )
            .into_response();
    };
    match crate::set_coefficient(&st.role, v) {
        Ok(()) => {
            tracing::info!(coefficient = v, "coefficient changed by operator");
            format!("coefficient {v}\n").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn payout(State(st): State<Admin<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = st.token.refuse(&headers) {
        return r;
    }
    if st.role.payout_sink.is_none() {
        return (
            StatusCode::CONFLICT,
            "no payout sink configured: receipts are kept, not submitted\n",
        )
            .into_response();
    }
    let n = crate::payout_all(&st.role);
    format!("payouts started: {n}\n").into_response()
}

impl StatsPages for Shared {
    type Stats = WorkerStats;

    fn stats(&self) -> WorkerStats {
        Shared::stats(self)
    }

    fn page(&self, s: &WorkerStats) -> Response {
        let now = admin::unix_now();
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        admin::html_page(&dashboard(s, &history, now))
    }

    fn metrics(&self, s: &WorkerStats) -> Prometheus {
        metrics(s)
    }

    fn sample(&self, now: u64) {
        let c = self.counters.snapshot();
        let earned = earned_nanoton(&Shared::stats(self).payments);
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.counter(REQUESTS, now, c.requests_received);
        h.counter(SUCCEEDED, now, c.requests_success);
        h.counter(FAILED, now, c.requests_failed + c.requests_rejected);
        h.counter(TOKENS, now, c.total_tokens);
        h.counter(COMPLETION, now, c.completion_tokens);
        h.counter(EARNED, now, u64::try_from(earned).unwrap_or(u64::MAX));
        h.gauge(
            ACTIVE,
            now,
            self.active.load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
    }
}

const REQUESTS: &str = "requests";
const SUCCEEDED: &str = "succeeded";
const FAILED: &str = "failed";
const TOKENS: &str = "tokens";
const COMPLETION: &str = "completion_tokens";
const EARNED: &str = "earned_nanoton";
const ACTIVE: &str = "active";

fn nano(s: &str) -> u128 {
    s.parse().unwrap_or(0)
}

/// nanoTON of every signed payout held: what the worker earned.
fn earned_nanoton(payments: &[crate::PaymentView]) -> u128 {
    payments.iter().map(|p| nano(&p.signed_nanoton)).sum()
}

fn status(s: &WorkerStats) -> (&'static str, Tone) {
    if s.draining {
        ("draining", Tone::Warn)
    } else if s.force_disabled {
        ("disabled by operator", Tone::Warn)
    } else if !s.uplink_ok {
        ("engine down", Tone::Bad)
    } else if s.model_not_listed {
        ("model not in root", Tone::Bad)
    } else if s.enabled {
        ("serving", Tone::Good)
    } else {
        ("not serving", Tone::Bad)
    }
}

/// The worker's dashboard: status, earnings and traffic figures, charts of the last
/// minutes and day, its proxies with their attested images, earnings per proxy contract,
/// operator events, and the controls.
fn dashboard(s: &WorkerStats, h: &History, now: u64) -> Page {
    let c = &s.counters;
    let earned = earned_nanoton(&s.payments);
    let ready: u128 = s.payments.iter().map(|p| nano(&p.ready_nanoton)).sum();
    let paid: u128 = s.payments.iter().map(|p| nano(&p.paid_out_nanoton)).sum();
    let per_min = |name: &str| -> f64 {
        let p = h.points(name, Span::Seconds, now);
        p.iter().rev().take(60).map(|p| p.1).sum::<f64>()
    };
    let (word, tone) = status(s);
    let mut p = Page::new("Cocoon worker");
    p.subtitle(&format!("{} · owner {}", s.model, s.owner_address))
        .footer(&format!("updated {}", fmt::utc(now)))
        .controls(vec![
            Control::new("Disable", "/control/disable").tone(Tone::Bad),
            Control::new("Enable", "/control/enable").tone(Tone::Good),
            Control::new("Set coefficient", "/control/coefficient")
                .param("value", "thousandths, e.g. 1000"),
            Control::new("Pay out now", "/control/payout"),
        ]);
    p.cards(&[
        Card::new("Status", word).tone(tone).id("status"),
        Card::new("Earned", fmt::ton(earned))
            .note("signed payouts held")
            .id("earned"),
        Card::new("Ready to pay", fmt::ton(ready)).id("ready"),
        Card::new("Paid out", fmt::ton(paid)).id("paid"),
        Card::new("Requests", fmt::thousands(c.requests_received))
            .note(format!(
                "{} ok · {} failed · {} refused",
                fmt::thousands(c.requests_success),
                fmt::thousands(c.requests_failed),
                fmt::thousands(c.requests_rejected)
            ))
            .id("requests_received"),
        Card::new("Tokens", fmt::tokens(c.total_tokens))
            .note(format!("{} completion", fmt::tokens(c.completion_tokens)))
            .id("total_tokens"),
        Card::new("Tokens/s", fmt::decimal(per_min(COMPLETION) / 60.0, 1))
            .note("completion, last minute"),
        Card::new(
            "Slots",
            format!("{} / {}", s.active_requests, s.max_active_requests),
        )
        .note("requests running / limit")
        .id("slots"),
        Card::new(
            "Coefficient",
            fmt::decimal(f64::from(s.coefficient) / 1000.0, 3),
        )
        .note(format!("{} thousandths", s.coefficient))
        .id("coefficient"),
    ]);
    let opts = ChartOpts::new(now);
    let day = |name: &str| series::downsample(&h.points(name, Span::Minutes, now), 288, Mode::Sum);
    let bars: Vec<(String, f64)> = s
        .payments
        .iter()
        .map(|p| (p.proxy_sc_address.clone(), nano(&p.signed_nanoton) as f64))
        .collect();
    p.panels(&[
        (
            "Earnings, last 24 h (TON per 5 min)",
            chart::line_chart(
                &[Series::new("earned", day(EARNED))],
                &opts.format(chart::compact_ton),
            ),
        ),
        (
            "Requests, last 5 min (per second)",
            chart::line_chart(
                &[
                    Series::new("received", h.points(REQUESTS, Span::Seconds, now)),
                    Series::new("succeeded", h.points(SUCCEEDED, Span::Seconds, now)),
                    Series::new("failed or refused", h.points(FAILED, Span::Seconds, now)),
                ],
                &opts,
            ),
        ),
        (
            "Tokens per second, last 5 min",
            chart::line_chart(
                &[
                    Series::new("all", h.points(TOKENS, Span::Seconds, now)),
                    Series::new("completion", h.points(COMPLETION, Span::Seconds, now)),
                ],
                &opts,
            ),
        ),
        (
            "Slots in use, last 5 min",
            chart::line_chart(
                &[Series::new("running", h.points(ACTIVE, Span::Seconds, now))],
                &opts,
            ),
        ),
        (
            "Earnings per proxy contract (TON)",
            chart::bar_chart(&bars, &opts.format(chart::compact_ton)),
        ),
        (
            "Earnings per model (TON)",
            chart::bar_chart(
                &[(s.model.clone(), earned as f64)],
                &opts.format(chart::compact_ton),
            ),
        ),
    ]);
    p.facts(
        "Health",
        &[
            (
                "engine",
                Cell::Markup(html::badge(
                    Tone::of(s.uplink_ok, Tone::Bad),
                    if s.uplink_ok { "up" } else { "down" },
                )),
            ),
            (
                "proxies may route here",
                Cell::Markup(html::flag(s.enabled, Tone::Warn)),
            ),
            (
                "disabled by operator",
                Cell::Text(fmt::yes_no(s.force_disabled).into()),
            ),
            ("draining", Cell::Text(fmt::yes_no(s.draining).into())),
            (
                "model listed in root",
                Cell::Markup(html::flag(!s.model_not_listed, Tone::Bad)),
            ),
            (
                "root config version",
                Cell::Num(fmt::or_dash(s.root_version, |v| v.to_string())),
            ),
            (
                "local clock − chain (s)",
                Cell::Text(events::clock_cell(s.clock_offset_secs, s.clock_drifted)),
            ),
            ("limit cuts", Cell::Num(fmt::thousands(c.limit_cuts))),
            (
                "request time, mean",
                Cell::Text(fmt::or_dash(
                    c.request_time_ms
                        .checked_div(c.requests_success + c.requests_failed),
                    fmt::millis,
                )),
            ),
        ],
    );
    let mut t = Table::new(
        "Proxies served",
        &[
            "address",
            "state",
            "protocol",
            "proxy contract",
            "attested image",
            "verdict valid",
            "handshakes",
            "last error",
        ],
    )
    .empty("no proxies configured")
    .id("proxies");
    for x in &s.proxies {
        let ready = x.state == crate::ConnState::Ready;
        t.row(vec![
            Cell::Long(x.address.clone()),
            Cell::Badge(Tone::of(ready, Tone::Warn), x.state.word().into()),
            Cell::Num(fmt::or_dash(x.proto_version, |v| v.to_string())),
            Cell::Hash(x.proxy_sc_address.clone().unwrap_or_default()),
            Cell::Hash(x.image_hash.clone().unwrap_or_default()),
            Cell::Text(fmt::or_dash(x.verdict_valid_until, |t| fmt::ago(now, t))),
            Cell::Num(fmt::thousands(x.handshakes)),
            Cell::Long(x.last_error.clone().unwrap_or_else(|| "–".into())),
        ]);
    }
    p.table(&t);
    let mut t = Table::new(
        "Payouts per proxy contract",
        &[
            "proxy contract",
            "signed tokens",
            "earned",
            "paid out",
            "ready tokens",
            "ready",
            "last payout",
            "contract",
        ],
    )
    .empty("no signed payouts yet")
    .id("payouts");
    for x in &s.payments {
        t.row(vec![
            Cell::Hash(x.proxy_sc_address.clone()),
            Cell::Num(fmt::tokens(x.signed_tokens)),
            Cell::Num(fmt::ton(nano(&x.signed_nanoton))),
            Cell::Num(fmt::ton(nano(&x.paid_out_nanoton))),
            Cell::Num(fmt::tokens(x.ready_tokens)),
            Cell::Num(fmt::ton(nano(&x.ready_nanoton))),
            if x.payout_in_flight {
                Cell::Badge(Tone::Warn, "submitting".into())
            } else {
                match &x.last_payout {
                    None => Cell::Text("–".into()),
                    Some(crate::LastPayout::Submitted { at, tokens }) => Cell::Text(format!(
                        "sent {}, {} tokens",
                        fmt::ago(now, *at),
                        fmt::tokens(*tokens)
                    )),
                    Some(crate::LastPayout::Failed { at, error }) => Cell::Markup(format!(
                        "{} {}",
                        html::badge(Tone::Bad, "failed"),
                        html::esc(&format!("{}: {error}", fmt::ago(now, *at)))
                    )),
                }
            },
            if x.closed {
                Cell::Badge(Tone::Neutral, "closed, paid".into())
            } else {
                Cell::Badge(Tone::Good, "open".into())
            },
        ]);
    }
    p.table(&t);
    let mut t = Table::new(
        "Payouts sent",
        &[
            "sent",
            "proxy contract",
            "tokens",
            "amount",
            "status",
            "transaction",
            "lt",
        ],
    )
    .empty("no payout sent yet")
    .id("payouts-sent");
    for x in s.payouts.iter().rev() {
        let status = match (x.status, &x.reason) {
            (crate::PayoutStatus::Pending, _) => Cell::Badge(Tone::Warn, "pending".into()),
            (crate::PayoutStatus::Paid, _) => Cell::Badge(Tone::Good, "paid".into()),
            (crate::PayoutStatus::Failed, reason) => Cell::Markup(format!(
                "{} {}",
                html::badge(Tone::Bad, "failed"),
                html::esc(reason.as_deref().unwrap_or(""))
            )),
        };
        t.row(vec![
            Cell::Text(fmt::ago(now, x.at)),
            Cell::Hash(x.proxy_sc.clone()),
            Cell::Num(fmt::tokens(x.new_tokens)),
            Cell::Num(fmt::ton(nano(&x.amount_nanoton))),
            status,
            Cell::Hash(x.tx.as_ref().map(|t| t.hash.clone()).unwrap_or_default()),
            Cell::Num(fmt::or_dash(x.tx.as_ref().map(|t| t.lt), |lt| {
                lt.to_string()
            })),
        ]);
    }
    p.table(&t);
    p.table(&events::events_table(&s.events, now));
    p
}

fn metrics(s: &WorkerStats) -> Prometheus {
    let c = &s.counters;
    let mut m = Prometheus::new();
    let n = |v: u64| v.to_string();
    m.metric(
        "cocoon_worker_requests_total",
        "counter",
        "Requests by outcome.",
        &[
            ("{outcome=\"received\"}".into(), n(c.requests_received)),
            ("{outcome=\"success\"}".into(), n(c.requests_success)),
            ("{outcome=\"failed\"}".into(), n(c.requests_failed)),
            ("{outcome=\"rejected\"}".into(), n(c.requests_rejected)),
            ("{outcome=\"cancelled\"}".into(), n(c.requests_cancelled)),
        ],
    );
    m.metric(
        "cocoon_worker_adjusted_tokens_total",
        "counter",
        "Adjusted tokens billed, by category.",
        &[
            ("{category=\"prompt\"}".into(), n(c.prompt_tokens)),
            ("{category=\"cached\"}".into(), n(c.cached_tokens)),
            ("{category=\"completion\"}".into(), n(c.completion_tokens)),
            ("{category=\"reasoning\"}".into(), n(c.reasoning_tokens)),
            ("{category=\"total\"}".into(), n(c.total_tokens)),
        ],
    );
    m.metric(
        "cocoon_worker_bytes_total",
        "counter",
        "Request payload and answer body bytes.",
        &[
            ("{direction=\"request\"}".into(), n(c.request_bytes)),
            ("{direction=\"answer\"}".into(), n(c.answer_bytes)),
        ],
    );
    m.single(
        "cocoon_worker_request_time_ms_total",
        "counter",
        "Sum of request durations in milliseconds.",
        c.request_time_ms,
    );
    m.single(
        "cocoon_worker_active_requests",
        "gauge",
        "Requests running now.",
        s.active_requests,
    );
    m.single(
        "cocoon_worker_max_active_requests",
        "gauge",
        "Requests the worker runs at once at most.",
        s.max_active_requests,
    );
    m.single(
        "cocoon_worker_engine_up",
        "gauge",
        "1 while the inference engine answers its health check.",
        u64::from(s.uplink_ok),
    );
    m.single(
        "cocoon_worker_earned_nanoton",
        "gauge",
        "nanoTON of every signed payout held (what the worker earned).",
        earned_nanoton(&s.payments),
    );
    m.single(
        "cocoon_worker_paid_out_nanoton",
        "gauge",
        "nanoTON already paid out to the owner.",
        s.payments
            .iter()
            .map(|p| nano(&p.paid_out_nanoton))
            .sum::<u128>(),
    );
    m.single(
        "cocoon_worker_ready_nanoton",
        "gauge",
        "nanoTON signed but not yet paid out.",
        s.payments
            .iter()
            .map(|p| nano(&p.ready_nanoton))
            .sum::<u128>(),
    );
    m.single(
        "cocoon_worker_enabled",
        "gauge",
        "1 when proxies may route requests here.",
        u64::from(s.enabled),
    );
    events::metrics(
        &mut m,
        "cocoon_worker",
        "clock_drift, clock_agrees",
        &s.event_counts,
        s.clock_offset_secs,
        s.clock_drifted,
    );
    m.single(
        "cocoon_worker_coefficient",
        "gauge",
        "Price coefficient in thousandths.",
        s.coefficient,
    );
    let ready: Vec<(String, String)> = s
        .proxies
        .iter()
        .map(|p| {
            (
                format!("{{proxy=\"{}\"}}", label(&p.address)),
                n(u64::from(p.state == crate::ConnState::Ready)),
            )
        })
        .collect();
    m.metric(
        "cocoon_worker_proxy_ready",
        "gauge",
        "1 when the proxy connection is serving.",
        &ready,
    );
    let signed: Vec<(String, String)> = s
        .payments
        .iter()
        .map(|p| {
            (
                format!("{{proxy_sc=\"{}\"}}", label(&p.proxy_sc_address)),
                n(p.signed_tokens),
            )
        })
        .collect();
    m.metric(
        "cocoon_worker_signed_tokens",
        "gauge",
        "Tokens of the best signed payout held, per proxy contract.",
        &signed,
    );
    m
}
