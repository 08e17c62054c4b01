//! The explorer's server: one task reads the chain and the proxies' stats every poll
//! interval into the [`Snapshot`] (each read under a timeout; a failed one keeps the last
//! good answer, shown with its age), and the HTTP server renders the page and the JSON from
//! the snapshot as it is, so a slow or failing source never holds a page.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cocoon_service::admin::{asset_routes, html_page, unix_now};
use cocoon_service::http::{get_limited, reqwest};
use cocoon_ton::StdAddr;
use cocoon_ton::chain::{Chain, ChainError, Transaction, TxId, load_root_config_timed};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::history::Payouts;
use crate::verify::{self, ProxyCheck};
use crate::view::{ProxyPublic, RootRead, Snapshot, TOKENS};

/// Largest proxy stats answer read.
pub const MAX_STATS_BYTES: usize = 64 * 1024;
/// Root transactions read at each poll (the newest this many).
pub const ROOT_TX_PAGE: usize = 256;
/// Transactions of a proxy contract read at each poll (the newest this many).
pub const PROXY_TX_PAGE: usize = 64;

/// What the explorer reads and where it serves.
#[derive(Debug, Clone)]
pub struct ExplorerConfig {
    /// The root contract.
    pub root: StdAddr,
    /// Where the pages are served.
    pub bind: SocketAddr,
    /// The proxies' public stats URLs (`http://host:port/public.json`).
    pub proxy_stats: Vec<String>,
    /// The chain endpoints, as shown on the page (without credentials).
    pub endpoints: Vec<String>,
    /// Time between reads.
    pub poll: Duration,
    /// Longest a single read may take.
    pub timeout: Duration,
    /// Host names the server answers to besides loopback ones and its own address.
    pub allowed_hosts: Vec<String>,
    /// How the registered proxies are dialled and verified (`None`: they are not).
    pub check: Option<ProxyCheck>,
}

type Shared = Arc<Mutex<Snapshot>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Snapshot> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, ChainError>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

/// One read of everything.
async fn poll_once<C: Chain>(
    chain: &C,
    cfg: &ExplorerConfig,
    http: &reqwest::Client,
    state: &Shared,
) {
    let now = unix_now();
    // The root and its transactions.
    match timed(cfg.timeout, load_root_config_timed(chain, &cfg.root)).await {
        Ok((config, chain_time)) => {
            let owner = config.owner.clone();
            lock(state).root.ok(RootRead { config, chain_time }, now);
            // Always the newest page (never "everything since the cursor", which a lying
            // endpoint could make endless); what is older than the cursor is skipped.
            match timed(
                cfg.timeout,
                chain.transactions_since(&cfg.root, None, ROOT_TX_PAGE),
            )
            .await
            {
                Ok(txs) => {
                    let mut st = lock(state);
                    if gap(st.history.cursor.as_ref(), &txs, ROOT_TX_PAGE) {
                        st.history.gaps += 1;
                    }
                    st.history.apply(&txs, &owner);
                }
                Err(e) => tracing::warn!(error = %e, "root transactions not read"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "root contract not read");
            lock(state).root.failed(e);
        }
    }
    // The registered proxies' handshakes, together, each under the timeout; only those
    // whose verdict is older than the TTL (the poller is alone, so one check at a time per
    // endpoint).
    if let Some(check) = &cfg.check {
        let due = {
            let mut st = lock(state);
            let registered: Vec<String> = st
                .root
                .data
                .as_ref()
                .map(|r| {
                    r.config
                        .registered_proxies
                        .iter()
                        .map(|p| p.endpoint.0.clone())
                        .collect()
                })
                .unwrap_or_default();
            let regs = registered.iter().map(String::as_str);
            verify::retain_registered(&mut st.verified, regs.clone());
            verify::due(regs, &st.verified, now, check.ttl)
        };
        let checks = due.into_iter().map(|ep| async move {
            let v = verify::check(&check.connector, &ep, cfg.timeout).await;
            (ep, v)
        });
        let verdicts = futures::future::join_all(checks).await;
        let at = unix_now();
        let mut st = lock(state);
        for (ep, verdict) in verdicts {
            if let verify::Verdict::Refused { reason, .. }
            | verify::Verdict::Unreachable { reason } = &verdict
            {
                tracing::info!(endpoint = %ep, %reason, "proxy not verified");
            }
            st.verified.insert(ep, verify::Checked { verdict, at });
        }
    }
    // The proxies, together: a slow one does not hold the others.
    let reads = cfg
        .proxy_stats
        .iter()
        .enumerate()
        .map(|(i, url)| async move {
            let stats =
                match tokio::time::timeout(cfg.timeout, get_limited(http, url, MAX_STATS_BYTES))
                    .await
                {
                    Ok(Ok(f)) => ProxyPublic::parse(&f.body),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!("no answer within {} s", cfg.timeout.as_secs())),
                };
            (i, stats)
        });
    let results = futures::future::join_all(reads).await;
    for (i, stats) in results {
        let sc = match stats {
            Ok(s) => {
                let sc = s.proxy_sc.clone();
                let mut st = lock(state);
                if let Some(p) = st.proxies.get_mut(i) {
                    if p.stats.data.as_ref().is_some_and(|old| old.proxy_sc != sc) {
                        // A new contract (a params change): its own payouts from here.
                        p.payouts = Payouts::default();
                        p.balance = Default::default();
                    }
                    p.stats.ok(s, now);
                }
                sc
            }
            Err(e) => {
                if let Some(p) = lock(state).proxies.get_mut(i) {
                    p.stats.failed(e);
                }
                continue;
            }
        };
        let Ok(addr) = cocoon_ton::parse_address(&sc) else {
            continue;
        };
        let balance = timed(cfg.timeout, chain.account_state(&addr)).await;
        let txs = timed(
            cfg.timeout,
            chain.transactions_since(&addr, None, PROXY_TX_PAGE),
        )
        .await;
        let mut st = lock(state);
        let Some(p) = st.proxies.get_mut(i) else {
            continue;
        };
        match balance {
            Ok(a) => p.balance.ok(a.balance, now),
            Err(e) => p.balance.failed(e),
        }
        if let Ok(txs) = txs {
            if gap(p.payouts.cursor.as_ref(), &txs, PROXY_TX_PAGE) {
                p.payouts.gaps += 1;
            }
            p.payouts.apply(&txs);
        }
    }
    let mut st = lock(state);
    let tokens: u64 = st
        .proxies
        .iter()
        .filter_map(|p| p.stats.data.as_ref())
        .map(|s| s.adjusted_tokens_total)
        .sum();
    if !st.proxies.is_empty() {
        st.tokens.counter(TOKENS, now, tokens);
    }
}

/// Whether a full page of the newest transactions starts after `cursor`: then some between
/// the two were not read.
fn gap(cursor: Option<&TxId>, newest: &[Transaction], page: usize) -> bool {
    match (cursor, newest.first()) {
        (Some(c), Some(oldest)) => newest.len() >= page && oldest.id.lt > c.lt,
        _ => false,
    }
}

async fn page(State(s): State<Shared>) -> Response {
    let now = unix_now();
    let page = lock(&s).page(now);
    html_page(&page)
}

async fn api(State(s): State<Shared>) -> Response {
    let now = unix_now();
    axum::Json(lock(&s).json(now)).into_response()
}

/// The explorer's routes over `state`: `/` (the page), `/api/network` (its figures) and the
/// pages' assets.
pub fn routes(state: Arc<Mutex<Snapshot>>) -> Router {
    asset_routes()
        .route("/", get(page))
        .route("/api/network", get(api))
        .with_state(state)
}

/// Reads `chain` and the proxies' stats as `cfg` says and serves the pages until `stop`
/// changes; returns the bound address and the task that ends with the server.
pub async fn spawn<C: Chain + 'static>(
    cfg: ExplorerConfig,
    chain: Arc<C>,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), String> {
    let mut snapshot = Snapshot::new(
        &cfg.root.to_string(),
        cfg.endpoints.clone(),
        cfg.poll.as_secs(),
        &cfg.proxy_stats,
    );
    snapshot.checking = cfg.check.is_some();
    let state: Shared = Arc::new(Mutex::new(snapshot));
    let http = cocoon_service::http::ClientBuilder::new()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .max_redirects(0)
        .build()
        .map_err(|e| e.to_string())?;
    let (addr, server) = cocoon_service::admin::serve(
        routes(Arc::clone(&state)),
        cfg.bind,
        &[],
        &cfg.allowed_hosts,
        stop.clone(),
    )
    .await?;
    let mut stop_poll = stop;
    let poller = tokio::spawn(async move {
        loop {
            poll_once(chain.as_ref(), &cfg, &http, &state).await;
            tokio::select! {
                _ = tokio::time::sleep(cfg.poll) => {}
                _ = stop_poll.changed() => return,
            }
        }
    });
    let task = tokio::spawn(async move {
        let _ = server.await;
        poller.abort();
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(lt: u64) -> Transaction {
        Transaction {
            id: TxId { lt, hash: [0; 32] },
            utime: lt,
            fee: 0,
            in_msg: None,
            out_msgs: vec![],
            raw: None,
        }
    }

    #[test]
    fn a_full_page_past_the_cursor_is_a_gap() {
        let at = |lt| TxId { lt, hash: [0; 32] };
        let page: Vec<_> = (10..14).map(tx).collect();
        assert!(gap(Some(&at(5)), &page, 4));
        assert!(!gap(Some(&at(10)), &page, 4), "the page reaches the cursor");
        assert!(
            !gap(Some(&at(5)), &page[..3], 4),
            "not a full page: all new ones"
        );
        assert!(!gap(None, &page, 4), "the first read");
        assert!(!gap(Some(&at(5)), &[], 4));
    }
}
