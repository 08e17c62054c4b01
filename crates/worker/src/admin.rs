//! HTTP admin server on its own port: `/stats` (HTML), `/jsonstats`, `/metrics`
//! (Prometheus text) and POST controls `/request/enable`, `/request/disable`,
//! `/request/coefficient?value=N`, `/request/payout` behind a bearer token read from a file.
//!
//! COCOON's worker takes plain GETs for its controls, so anyone who can reach the port (the
//! host, by design) can change the price or switch the worker off. Here controls are POST
//! only and need the token; without a token file they are refused. Pages show counters and
//! public identifiers only. Everything is behind the browser guard
//! (`cocoon_service::browser`): a foreign `Host` or `Origin` is refused and a POST body must
//! be JSON, so a web page the operator opens can neither read the pages nor use a control.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cocoon_service::browser::{Allowlist, Guard, plain_text};

use crate::Shared;
use crate::config::AdminConfig;

/// Reads the control token (first line, trimmed); an empty file is an error.
pub(crate) fn read_token(path: &Path) -> Result<String, String> {
    let raw =
        std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let t = raw.lines().next().unwrap_or("").trim().to_owned();
    if t.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(t)
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
}

pub(crate) async fn spawn(
    shared: Arc<Shared>,
    cfg: &AdminConfig,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), String> {
    let allow = Allowlist::new(&cfg.allowed_origins, &cfg.allowed_hosts)
        .map_err(|e| format!("allowed origins or hosts: {e}"))?;
    let bind = cfg.bind;
    let state = AppState {
        shared,
        token: token.map(Arc::from),
    };
    let app = Router::new()
        .route("/stats", get(stats_html))
        .route("/jsonstats", get(stats_json))
        .route("/metrics", get(metrics))
        .route("/request/enable", post(enable))
        .route("/request/disable", post(disable))
        .route("/request/coefficient", post(coefficient))
        .route("/request/payout", post(payout))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("bind {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Every page and control behind the browser guard (Host, Origin, JSON bodies).
    let app = Guard::new(allow, addr, plain_text).apply(app);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok((addr, task))
}

/// Constant-time comparison of equal-length byte strings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `None` when the request carries the right token; otherwise the refusal to send.
fn refuse(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(want) = &st.token else {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "controls are disabled: no token file configured\n",
            )
                .into_response(),
        );
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match got {
        Some(t) if same(t.as_bytes(), want.as_bytes()) => None,
        _ => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token\n",
            )
                .into_response(),
        ),
    }
}

async fn enable(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    st.shared.control.send_modify(|c| c.force_disabled = false);
    tracing::info!("worker enabled by operator");
    "enabled\n".into_response()
}

async fn disable(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    st.shared.control.send_modify(|c| c.force_disabled = true);
    tracing::info!("worker disabled by operator");
    "disabled\n".into_response()
}

async fn coefficient(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    let Some(v) = q.get("value").and_then(|v| v.trim().parse::<u32>().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected ?value=<coefficient in thousandths, integer>\n",
        )
            .into_response();
    };
    match crate::set_coefficient(&st.shared, v) {
        Ok(()) => {
            tracing::info!(coefficient = v, "coefficient changed by operator");
            format!("coefficient {v}\n").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn payout(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    if st.shared.payout_sink.is_none() {
        return (
            StatusCode::CONFLICT,
            "no payout sink configured: receipts are kept, not submitted\n",
        )
            .into_response();
    }
    let n = crate::payout_all(&st.shared);
    format!("payouts started: {n}\n").into_response()
}

async fn stats_json(State(st): State<AppState>) -> Response {
    axum::Json(st.shared.stats()).into_response()
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

async fn stats_html(State(st): State<AppState>) -> Response {
    let s = st.shared.stats();
    let c = &s.counters;
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>cocoon worker</title></head><body>\n<h1>cocoon worker</h1>\n<table>\n",
    );
    let mut row = |k: &str, v: String| {
        let _ = writeln!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    };
    row("model", s.model.clone());
    row("owner", s.owner_address.clone());
    row("enabled", s.enabled.to_string());
    row("disabled by operator", s.force_disabled.to_string());
    row("engine up", s.uplink_ok.to_string());
    row("coefficient", s.coefficient.to_string());
    row(
        "active requests",
        format!("{}/{}", s.active_requests, s.max_active_requests),
    );
    row("requests received", c.requests_received.to_string());
    row("requests success", c.requests_success.to_string());
    row("requests failed", c.requests_failed.to_string());
    row("requests rejected", c.requests_rejected.to_string());
    row("requests cancelled", c.requests_cancelled.to_string());
    row(
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
    h.push_str("</table>\n<h2>proxies</h2>\n<table>\n<tr><th>address</th><th>state</th><th>proto</th><th>contract</th><th>handshakes</th><th>last error</th></tr>\n");
    for p in &s.proxies {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.address),
            p.state,
            p.proto_version.map(|v| v.to_string()).unwrap_or_default(),
            esc(p.proxy_sc_address.as_deref().unwrap_or("")),
            p.handshakes,
            esc(p.last_error.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</table>\n<h2>earnings</h2>\n<table>\n<tr><th>proxy contract</th><th>signed</th><th>db</th><th>max</th><th>paid out</th><th>ready (nanoTON)</th></tr>\n");
    for p in &s.payments {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td></tr>",
            esc(&p.proxy_sc_address),
            p.signed_tokens,
            p.db_tokens,
            p.max_tokens,
            p.paid_out_tokens,
            p.ready_tokens,
            esc(&p.ready_nanoton),
        );
    }
    h.push_str("</table>\n</body></html>\n");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], h).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    let s = st.shared.stats();
    let c = &s.counters;
    let mut m = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(m, "{name}{labels} {v}");
        }
    };
    metric(
        "cocoon_worker_requests_total",
        "counter",
        "Requests by outcome.",
        &[
            ("{outcome=\"received\"}".into(), c.requests_received),
            ("{outcome=\"success\"}".into(), c.requests_success),
            ("{outcome=\"failed\"}".into(), c.requests_failed),
            ("{outcome=\"rejected\"}".into(), c.requests_rejected),
            ("{outcome=\"cancelled\"}".into(), c.requests_cancelled),
        ],
    );
    metric(
        "cocoon_worker_adjusted_tokens_total",
        "counter",
        "Adjusted tokens billed, by category.",
        &[
            ("{category=\"prompt\"}".into(), c.prompt_tokens),
            ("{category=\"cached\"}".into(), c.cached_tokens),
            ("{category=\"completion\"}".into(), c.completion_tokens),
            ("{category=\"reasoning\"}".into(), c.reasoning_tokens),
            ("{category=\"total\"}".into(), c.total_tokens),
        ],
    );
    metric(
        "cocoon_worker_bytes_total",
        "counter",
        "Request payload and answer body bytes.",
        &[
            ("{direction=\"request\"}".into(), c.request_bytes),
            ("{direction=\"answer\"}".into(), c.answer_bytes),
        ],
    );
    metric(
        "cocoon_worker_request_time_ms_total",
        "counter",
        "Sum of request durations in milliseconds.",
        &[(String::new(), c.request_time_ms)],
    );
    metric(
        "cocoon_worker_active_requests",
        "gauge",
        "Requests running now.",
        &[(String::new(), s.active_requests as u64)],
    );
    metric(
        "cocoon_worker_enabled",
        "gauge",
        "1 when proxies may route requests here.",
        &[(String::new(), u64::from(s.enabled))],
    );
    metric(
        "cocoon_worker_coefficient",
        "gauge",
        "Price coefficient in thousandths.",
        &[(String::new(), u64::from(s.coefficient))],
    );
    let ready: Vec<(String, u64)> = s
        .proxies
        .iter()
        .map(|p| {
            (
                format!(
                    "{{proxy=\"{}\"}}",
                    p.address.replace(['"', '\\', '\n'], "_")
                ),
                u64::from(p.state == crate::ConnState::Ready),
            )
        })
        .collect();
    metric(
        "cocoon_worker_proxy_ready",
        "gauge",
        "1 when the proxy connection is serving.",
        &ready,
    );
    let signed: Vec<(String, u64)> = s
        .payments
        .iter()
        .map(|p| {
            (
                format!(
                    "{{proxy_sc=\"{}\"}}",
                    p.proxy_sc_address.replace(['"', '\\', '\n'], "_")
                ),
                p.signed_tokens,
            )
        })
        .collect();
    metric(
        "cocoon_worker_signed_tokens",
        "gauge",
        "Tokens of the best signed payout held, per proxy contract.",
        &signed,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m,
    )
        .into_response()
}
