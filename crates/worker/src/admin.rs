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
use cocoon_service::admin::{self, Admin, Page, Prometheus, StatsPages, Switch, label};
use cocoon_service::events;

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
        stats_html(s)
    }

    fn metrics(&self, s: &WorkerStats) -> Prometheus {
        metrics(s)
    }
}

fn stats_html(s: &WorkerStats) -> Response {
    let c = &s.counters;
    let mut p = Page::new("cocoon worker");
    p.row("model", &s.model)
        .row("owner", &s.owner_address)
        .row("enabled", s.enabled.to_string())
        .row("disabled by operator", s.force_disabled.to_string())
        .row("engine up", s.uplink_ok.to_string())
        .row("coefficient", s.coefficient.to_string())
        .row(
            "local clock − chain (s)",
            events::clock_cell(s.clock_offset_secs, s.clock_drifted),
        )
        .row(
            "active requests",
            format!("{}/{}", s.active_requests, s.max_active_requests),
        )
        .row("requests received", c.requests_received.to_string())
        .row("requests success", c.requests_success.to_string())
        .row("requests failed", c.requests_failed.to_string())
        .row("requests rejected", c.requests_rejected.to_string())
        .row("requests cancelled", c.requests_cancelled.to_string())
        .row(
            "adjusted tokens (prompt/cached/completion/reasoning/total)",
            format!(
                "{}/{}/{}/{}/{}",
                c.prompt_tokens,
                c.cached_tokens,
                c.completion_tokens,
                c.reasoning_tokens,
                c.total_tokens
            ),
        );
    p.table(
        "proxies",
        &[
            "address",
            "state",
            "proto",
            "contract",
            "handshakes",
            "last error",
        ],
    );
    for x in &s.proxies {
        p.cells(&[
            x.address.clone(),
            format!("{:?}", x.state),
            x.proto_version.map(|v| v.to_string()).unwrap_or_default(),
            x.proxy_sc_address.clone().unwrap_or_default(),
            x.handshakes.to_string(),
            x.last_error.clone().unwrap_or_default(),
        ]);
    }
    p.table(
        "earnings",
        &[
            "proxy contract",
            "signed",
            "db",
            "max",
            "paid out",
            "ready (nanoTON)",
            "contract",
        ],
    );
    for x in &s.payments {
        p.cells(&[
            x.proxy_sc_address.clone(),
            x.signed_tokens.to_string(),
            x.db_tokens.to_string(),
            x.max_tokens.to_string(),
            x.paid_out_tokens.to_string(),
            format!("{} ({})", x.ready_tokens, x.ready_nanoton),
            if x.closed { "closed, paid" } else { "open" }.to_owned(),
        ]);
    }
    events::events_table(&mut p, &s.events);
    p.finish()
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
