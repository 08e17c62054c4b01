//! HTTP admin server: `/stats` (HTML), `/jsonstats`, `/metrics` (Prometheus text) and POST
//! controls behind a bearer token read from a file: `/control/disable`, `/control/enable`,
//! and on the ledger's settlement `/control/checkpoint`, `/control/charge`,
//! `/control/payout`, `/control/withdraw`.
//!
//! COCOON's proxy takes its controls on an unauthenticated port; here they need the token,
//! and without a token file they are refused. Pages show counters and public identifiers
//! only (addresses, hashes), never request contents. Everything is behind the browser guard
//! (`cocoon_service::browser`): a foreign `Host` or `Origin` is refused and a POST body must
//! be JSON, so a web page the operator opens can neither read the pages nor use a control.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cocoon_service::browser::{Allowlist, Guard, plain_text};

use crate::Shared;
use crate::config::AdminConfig;

/// Reads the control token (first line, trimmed); an empty file is an error.
pub fn read_token(path: &Path) -> Result<String, String> {
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
        .route("/control/enable", post(enable))
        .route("/control/disable", post(disable))
        .route("/control/{action}", post(settlement_control))
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
    st.shared.enabled.store(true, Ordering::SeqCst);
    tracing::info!("proxy enabled by operator");
    "enabled\n".into_response()
}

async fn disable(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    st.shared.enabled.store(false, Ordering::SeqCst);
    tracing::info!("proxy disabled by operator");
    "disabled\n".into_response()
}

async fn settlement_control(
    State(st): State<AppState>,
    axum::extract::Path(action): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    let Ok(action) = action.parse::<crate::meter::SettlementAction>() else {
        return (StatusCode::NOT_FOUND, "unknown control\n").into_response();
    };
    match st.shared.meter.control(action).await {
        Ok(done) => format!("{done}\n").into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
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
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>cocoon proxy</title></head><body>\n<h1>cocoon proxy</h1>\n<table>\n",
    );
    let mut row = |k: &str, v: String| {
        let _ = writeln!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    };
    row("enabled", s.enabled.to_string());
    row("test network", s.is_test.to_string());
    row("proxy contract", s.proxy_sc.clone());
    row("root config version", s.root_version.to_string());
    row("requests received", c.requests_received.to_string());
    row("requests success", c.requests_success.to_string());
    row("requests failed", c.requests_failed.to_string());
    row("requests rejected", c.requests_rejected.to_string());
    row("requests cancelled", c.requests_cancelled.to_string());
    row("retries", c.retries.to_string());
    row("adjusted tokens", c.adjusted_tokens_total.to_string());
    row("workers refused", c.workers_refused.to_string());
    row("clients refused", c.clients_refused.to_string());
    row(
        "TON endpoint disagreements",
        c.ton_disagreements.to_string(),
    );
    h.push_str("</table>\n<h2>workers</h2>\n<table>\n<tr><th>id</th><th>model</th><th>owner</th><th>coefficient</th><th>load</th><th>enabled</th><th>avg latency (ms)</th><th>reputation</th><th>window ok/all</th><th>served</th><th>failed</th><th>usage reports refused or lowered</th></tr>\n");
    for w in &s.workers {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            w.id,
            esc(&w.model),
            esc(&w.owner),
            w.coefficient,
            w.running,
            w.max_active,
            w.enabled,
            w.avg_latency_ms,
            w.reputation,
            w.window_successes,
            w.window_attempts,
            w.served,
            w.failed,
            w.bad_reports,
        );
    }
    h.push_str("</table>\n<h2>clients</h2>\n<table>\n<tr><th>session</th><th>owner</th><th>contract</th><th>authorised</th><th>running</th><th>tokens (db/max)</th></tr>\n");
    for cl in &s.clients {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td></tr>",
            cl.session,
            esc(&cl.owner),
            esc(&cl.client_sc),
            cl.authorized,
            cl.running,
            cl.totals.committed_to_db,
            cl.totals.max,
        );
    }
    if let Some(l) = &s.ledger {
        h.push_str("</table>\n<h2>ledger</h2>\n<table>\n");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
        };
        row("params version", l.params_version.to_string());
        row(
            "committed / last update",
            format!("{} / {}", l.committed_seq, l.last_seq),
        );
        row("commit failures", l.commit_failures.to_string());
        row(
            "confirmed checkpoint",
            format!("{:?}", l.confirmed_checkpoint),
        );
        row(
            "pending checkpoints",
            format!("{:?}", l.pending_checkpoints),
        );
        row("commission (nanoTON)", l.commission_nanoton.to_string());
        row("reservations", l.reservations.to_string());
        row(
            "charges / payouts submitted",
            format!("{} / {}", l.charges_submitted, l.payouts_submitted),
        );
        row("halted", l.halted.clone().unwrap_or_else(|| "no".into()));
        row("frozen accounts", l.frozen.len().to_string());
        h.push_str("</table>\n<h2>accounts</h2>\n<table>\n<tr><th>account</th><th>tokens</th><th>in db</th><th>checkpointed</th><th>settled on chain</th><th>reserved</th><th>nanoTON</th><th>status</th><th>frozen</th></tr>\n");
        for a in st.shared.meter.accounts() {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
                esc(&a.key.to_string()),
                a.tokens,
                a.db_tokens,
                a.chain_tokens,
                a.on_chain_tokens,
                a.reserved,
                a.nanoton,
                a.status,
                esc(a.frozen.as_deref().unwrap_or("")),
            );
        }
    }
    h.push_str("</table>\n<h2>operator events</h2>\n<table>\n<tr><th>at</th><th>kind</th><th>subject</th><th>detail</th></tr>\n");
    for e in s.events.iter().rev() {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.at,
            e.kind,
            esc(&e.subject),
            esc(&e.detail)
        );
    }
    h.push_str("</table>\n<h2>refused handshakes</h2>\n<table>\n<tr><th>at</th><th>kind</th><th>peer</th><th>reason</th></tr>\n");
    for r in s.refusals.iter().rev() {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.at,
            r.kind,
            esc(&r.peer),
            esc(&r.reason)
        );
    }
    h.push_str("</table>\n</body></html>\n");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], h).into_response()
}

fn label(v: &str) -> String {
    v.replace(['"', '\\', '\n'], "_")
}

async fn metrics(State(st): State<AppState>) -> Response {
    let s = st.shared.stats();
    let c = &s.counters;
    let mut m = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(m, "{name}{labels} {v}");
        }
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
        "cocoon_proxy_operator_events_total",
        "counter",
        "Operator events by kind (usage_violation, usage_mismatch, usage_capped, client_closing, verdict_expired, ton_no_quorum, ...).",
        &s.event_counts
            .iter()
            .map(|(k, v)| (format!("{{kind=\"{}\"}}", label(k)), n(*v)))
            .collect::<Vec<_>>(),
    );
    metric(
        "cocoon_proxy_enabled",
        "gauge",
        "1 while the proxy takes requests.",
        &[(String::new(), n(u64::from(s.enabled)))],
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
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m,
    )
        .into_response()
}
