#![forbid(unsafe_code)]
//! `cocoon-worker`: the worker role.
//!
//! A worker owns an inference engine and sells its tokens through proxies. It dials each
//! configured proxy over RA-TLS (outbound only: a worker needs no open port), checks the
//! proxy's attested image against the root's `proxy_hashes` and derives the proxy's and its
//! own contract (when it follows a root), registers its
//! model, price coefficient and capacity, compares balances so that a proxy that lost or
//! rolled back state is refused, and then serves `proxy.runQueryEx` by validating the
//! OpenAI request, forwarding it to the engine and relaying the answer **as the engine
//! produces it**, ending with the exact adjusted token counts, streamed or not.
//! Proxy-signed payout receipts are verified, the
//! best one per proxy is kept durably, and a payout is submitted once it is worth a
//! threshold in nanoTON.
//!
//! - [`config`]: [`WorkerConfig`] and its checks;
//! - [`store`]: the durable per-proxy payment state (atomically written JSON);
//! - [`payout`]: the payout threshold and the [`PayoutSink`] that submits receipts;
//! - [`chain_sink`]: a [`PayoutSink`] that sends them from a TON wallet via cocoon-ton;
//! - [`stats`]: counters for the admin endpoints;
//! - `proxy` (private): one task per proxy — connect, handshake, serve, reconnect;
//! - `request` (private): one task per request — validate, run, relay, bill;
//! - `admin` (private): `/stats`, `/jsonstats`, `/metrics` and the POST controls.
//!
//! Start with [`Worker::start`]; stop with [`WorkerHandle::shutdown`].

mod chain_sink;
mod config;
mod payout;
mod process;
mod root;
mod settings;
mod stats;
mod store;

mod admin;
mod proxy;
mod proxy_check;
mod request;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_engine::Engine;
use cocoon_openai::PriceTable;
use cocoon_ratls::net::RatlsConnector;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use chain_sink::{ChainPayoutSink, DEFAULT_ATTACH_NANOTON, DEFAULT_DEPLOY_NANOTON};
pub use config::{AdminConfig, Timings, WorkerConfig, WorkerConfigError, model_base_name};
use payout::PayoutDecision;
pub use payout::{ContractError, ContractStatus, PayoutSink, PayoutTx, SentPayout, WorkerOnChain};
pub use process::{run, watch_events};
pub use root::RootUpdate;
pub use settings::{DEFAULTS, Settings};
pub use stats::CountersSnapshot;
pub use store::{PaymentStore, PaymentStoreError, PayoutEntry, PayoutStatus, ProxyRecord};

/// Switches the proxies are told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Control {
    /// Disabled by the operator.
    pub force_disabled: bool,
    /// The engine answered its last health probe.
    pub uplink_ok: bool,
    /// Current coefficient.
    pub coefficient: u32,
    /// Shutting down: finish running requests, take no new ones.
    pub draining: bool,
    /// The root contract's last configuration does not list this worker's model hash.
    pub model_not_listed: bool,
}

impl Control {
    /// What the proxies see: disabled unless every switch allows work.
    pub(crate) fn disabled(&self) -> bool {
        self.force_disabled || !self.uplink_ok || self.draining || self.model_not_listed
    }
}

/// State of one proxy connection.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Dialling or waiting to redial.
    Connecting,
    /// Handshake in progress.
    Handshaking,
    /// Serving requests.
    Ready,
    /// Stopped (shutdown).
    Stopped,
}

impl ConnState {
    /// The state as `/jsonstats` names it.
    pub fn word(&self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Handshaking => "handshaking",
            ConnState::Ready => "ready",
            ConnState::Stopped => "stopped",
        }
    }
}

/// What the admin pages show about one proxy connection.
#[derive(Clone, Debug, Serialize)]
pub struct ConnStatus {
    /// Connection task id (unique for the life of the worker; an address may come back).
    #[serde(skip)]
    pub(crate) id: u64,
    /// Configured endpoint.
    pub address: String,
    /// Current state.
    pub state: ConnState,
    /// Negotiated protocol version.
    pub proto_version: Option<i32>,
    /// The proxy contract, once known.
    pub proxy_sc_address: Option<String>,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Why the last session ended (no secrets: error kinds and public values only).
    pub last_error: Option<String>,
    /// The proxy's attested image hash (hex) in the current or last session.
    pub image_hash: Option<String>,
    /// Unix time until which the proxy's attestation verdict holds (current or last
    /// session); the session is closed then and redialled, which attests again.
    pub verdict_valid_until: Option<u64>,
    /// Sessions closed because the proxy's verdict expired.
    pub verdict_expiries: u64,
}

/// A running proxy connection task and its stop switch.
pub(crate) struct ProxyTask {
    id: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub(crate) struct Shared {
    pub model: String,
    pub model_base: String,
    pub owner_address: String,
    pub owner: cocoon_ton::StdAddr,
    pub contract_params: std::sync::RwLock<Option<cocoon_ton::root::CocoonParams>>,
    /// The root contract followed (`WorkerConfig::root_address`).
    pub root_address: Option<cocoon_ton::StdAddr>,
    /// Proxies' images must be in the root's `proxy_hashes`.
    pub check_proxy_hashes: bool,
    /// The last root configuration applied (`None` until one is); sessions re-check their
    /// proxy against every new one.
    pub root: watch::Sender<Option<Arc<cocoon_ton::root::RootConfig>>>,
    pub is_test: bool,
    pub max_active: u32,
    /// Proxies configured now (sent in the handshake as `proxy_cnt`).
    pub proxy_cnt: AtomicU32,
    pub prices: std::sync::RwLock<PriceTable>,
    /// Bumped to make every proxy session reconnect (new contracts after a params change).
    pub generation: watch::Sender<u64>,
    pub min_payout_nanoton: u128,
    pub engine: Arc<dyn Engine>,
    pub tokenizer: Option<Arc<dyn cocoon_engine::Tokenizer>>,
    pub connector: RatlsConnector,
    pub timings: Timings,
    pub store: PaymentStore,
    pub counters: stats::Counters,
    pub active: AtomicUsize,
    pub control: watch::Sender<Control>,
    pub conns: Mutex<Vec<ConnStatus>>,
    /// One connection task per configured proxy address.
    pub proxy_tasks: Mutex<HashMap<String, ProxyTask>>,
    pub next_conn_id: AtomicU64,
    /// Highest root config version applied (`update_root` ignores older ones).
    pub root_version: Mutex<Option<u32>>,
    /// Notified when a proxy names a contract the known params do not give (the root may
    /// have changed): the root watcher reads it early.
    pub root_wake: Arc<tokio::sync::Notify>,
    pub payout_sink: Option<Arc<dyn PayoutSink>>,
    pub payouts_in_flight: Mutex<HashSet<String>>,
    /// Payouts being sent and followed on chain; shutdown waits for them (bounded) and
    /// the followers stop at `stopping`. Finished ones are reaped as new ones start.
    pub payout_tasks: Mutex<tokio::task::JoinSet<()>>,
    /// Set when the worker shuts down: no new payout starts, followers stop looking.
    pub stopping: watch::Receiver<bool>,
    /// The last payout this process tried per proxy contract (one entry per contract).
    pub last_payouts: Mutex<HashMap<String, LastPayout>>,
    /// Recent operator events and the chain's time as the root watcher sees it.
    pub operator: cocoon_service::events::OperatorLog,
    /// The admin page's time series (fixed memory), sampled once a second.
    pub history: Mutex<cocoon_service::webui::series::History>,
}

/// Operator events kept for the admin page.
const MAX_EVENTS: usize = 50;

/// Something the operator should look at (logged as a warning too).
pub use cocoon_service::events::OperatorEvent;

impl Shared {
    pub(crate) fn control(&self) -> Control {
        *self.control.borrow()
    }

    pub(crate) fn prices(&self) -> PriceTable {
        *self.prices.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn contract_params(&self) -> Option<cocoon_ton::root::CocoonParams> {
        self.contract_params
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn update_conn(&self, id: u64, f: impl FnOnce(&mut ConnStatus)) {
        let mut c = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = c.iter_mut().find(|s| s.id == id) {
            f(s);
        }
    }

    /// Starts a connection task for `addr` unless one runs.
    fn add_proxy(self: &Arc<Self>, addr: &str) {
        let mut tasks = self.proxy_tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.contains_key(addr) {
            return;
        }
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ConnStatus {
                id,
                address: addr.to_owned(),
                state: ConnState::Connecting,
                proto_version: None,
                proxy_sc_address: None,
                handshakes: 0,
                last_error: None,
                image_hash: None,
                verdict_valid_until: None,
                verdict_expiries: 0,
            });
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::clone(self);
        let address = addr.to_owned();
        let task = tokio::spawn(async move {
            proxy::run(Arc::clone(&shared), id, address.clone(), stop_rx).await;
            // A proxy removed from the configuration leaves the admin pages when its task ends.
            let still = shared
                .proxy_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&address)
                .is_some_and(|t| t.id == id);
            if !still {
                shared
                    .conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|c| c.id != id);
            }
        });
        tasks.insert(addr.to_owned(), ProxyTask { id, stop, task });
        self.proxy_cnt.store(tasks.len() as u32, Ordering::Relaxed);
    }

    /// Makes the set of proxy connections equal `addrs`: new addresses are dialled, removed
    /// ones finish their running requests (up to the drain timeout) and close.
    pub(crate) fn set_proxies(self: &Arc<Self>, addrs: &[String]) -> Vec<JoinHandle<()>> {
        let removed: Vec<ProxyTask> = {
            let mut tasks = self.proxy_tasks.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = tasks
                .keys()
                .filter(|a| !addrs.contains(a))
                .cloned()
                .collect();
            gone.iter().filter_map(|a| tasks.remove(a)).collect()
        };
        for a in addrs {
            self.add_proxy(a);
        }
        self.proxy_cnt.store(
            self.proxy_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len() as u32,
            Ordering::Relaxed,
        );
        removed
            .into_iter()
            .map(|t| {
                let _ = t.stop.send(true);
                t.task
            })
            .collect()
    }

    /// Starts a payout for `proxy_sc` if one is due (or `force`d) and none is running.
    /// Returns whether one was started.
    pub(crate) fn maybe_payout(self: &Arc<Self>, proxy_sc: &str, force: bool) -> bool {
        let Some(sink) = self.payout_sink.clone() else {
            return false;
        };
        if *self.stopping.borrow() {
            return false;
        }
        let Some(rec) = self.store.get(proxy_sc) else {
            return false;
        };
        if rec.closed {
            return false;
        }
        let ready = rec.ready_tokens();
        let due = payout::payout_due(ready, self.fee_of(&rec), self.min_payout_nanoton);
        if ready == 0 || !(due || force) {
            return false;
        }
        let Some(boc) = rec
            .signed_payment_boc
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
        else {
            return false;
        };
        {
            let mut inflight = self
                .payouts_in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !inflight.insert(proxy_sc.to_owned()) {
                return false;
            }
        }
        let this = Arc::clone(self);
        let proxy_sc = proxy_sc.to_owned();
        let tokens = rec.signed_tokens;
        let new_tokens = rec.ready_tokens();
        let amount = payout::ready_nanoton(new_tokens, self.fee_of(&rec)).to_string();
        self.spawn_payout_task(async move {
            // A contract its proxy already paid and closed (after a params change) would
            // bounce the payout and keep the gas: read it first.
            if this.settle_from_chain(&sink, &proxy_sc, &rec).await == Some(PayoutDecision::Submit)
            {
                let submitted = sink.submit(&proxy_sc, boc, tokens).await;
                let entry = store::PayoutEntry {
                    proxy_sc: proxy_sc.clone(),
                    at: unix_now(),
                    tokens,
                    new_tokens,
                    amount_nanoton: amount,
                    status: match &submitted {
                        Ok(_) => store::PayoutStatus::Pending,
                        Err(_) => store::PayoutStatus::Failed,
                    },
                    reason: submitted.as_ref().err().cloned(),
                    sent: submitted.as_ref().ok().cloned().flatten(),
                    tx: None,
                };
                let follow = entry.sent.clone();
                if let Err(e) = this.store.record_payout(entry) {
                    tracing::error!(proxy = %proxy_sc, error = %e, "cannot record the payout sent");
                }
                if let Some(sent) = follow {
                    let (that, sink) = (Arc::clone(&this), Arc::clone(&sink));
                    this.spawn_payout_task(async move { that.follow_payout(&sink, &sent).await });
                }
                match submitted {
                    Ok(_) => {
                        // Recorded for the admin page before the paid-out tokens move.
                        this.last_payouts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(
                                proxy_sc.clone(),
                                LastPayout::Submitted {
                                    at: unix_now(),
                                    tokens,
                                },
                            );
                        if let Err(e) = this.store.mark_paid(&proxy_sc, tokens) {
                            tracing::error!(proxy = %proxy_sc, error = %e, "cannot record payout");
                        } else {
                            tracing::info!(proxy = %proxy_sc, tokens, "payout submitted");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(proxy = %proxy_sc, error = %e, "payout failed");
                        this.last_payouts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(
                                proxy_sc.clone(),
                                LastPayout::Failed {
                                    at: unix_now(),
                                    error: e.to_string(),
                                },
                            );
                    }
                }
            }
            this.payouts_in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&proxy_sc);
        });
        true
    }

    /// Runs a payout task where shutdown finds it, reaping those that ended.
    fn spawn_payout_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.payout_tasks.lock().unwrap_or_else(|p| p.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    /// Reads `rec`'s worker contract and records what it shows: closed (settled, nothing
    /// ready any more) or already paid. Returns the decision, `None` when the chain could
    /// not be read (nothing is sent then; the next pass reads again).
    async fn settle_from_chain(
        &self,
        sink: &Arc<dyn PayoutSink>,
        proxy_sc: &str,
        rec: &store::ProxyRecord,
    ) -> Option<PayoutDecision> {
        let on_chain = match sink.worker_contract(&rec.worker_sc_address).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(proxy = %proxy_sc, error = %e, "cannot read the worker contract");
                return None;
            }
        };
        let decision = payout::decide_payout(rec, on_chain);
        let recorded = match decision {
            PayoutDecision::Submit | PayoutDecision::Wait => return Some(decision),
            PayoutDecision::AlreadyPaid(t) => self.store.mark_paid(proxy_sc, t),
            PayoutDecision::Closed(t) => {
                let r = self.store.mark_closed(proxy_sc, t);
                if r.is_ok() {
                    self.event(
                        "contract_closed",
                        &format!(
                            "worker contract {} of proxy contract {proxy_sc} closed after paying {t} tokens",
                            rec.worker_sc_address
                        ),
                    );
                }
                r
            }
        };
        if let Err(e) = recorded {
            tracing::error!(proxy = %proxy_sc, error = %e, "cannot record the worker contract's state");
        }
        Some(decision)
    }

    /// Looks for the transaction of the payout `sent` every second until it shows (or
    /// [`PAYOUT_FOLLOW_TRIES`] passed; the contract check looks again every pass).
    /// Stops when the worker shuts down (the next start's contract check finds it).
    async fn follow_payout(&self, sink: &Arc<dyn PayoutSink>, sent: &SentPayout) {
        let mut stopping = self.stopping.clone();
        let look = async {
            for _ in 0..PAYOUT_FOLLOW_TRIES {
                if self.payout_tx_once(sink, sent).await {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            _ = look => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }

    /// Looks once for the transaction of `sent`; records it and answers `true` when found.
    async fn payout_tx_once(&self, sink: &Arc<dyn PayoutSink>, sent: &SentPayout) -> bool {
        match sink.payout_tx(sent).await {
            Ok(Some(tx)) => {
                if let Err(e) = self.store.payout_seen(&sent.body_hash, tx) {
                    tracing::error!(error = %e, "cannot record the payout's transaction");
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the payout's transaction");
                false
            }
        }
    }

    /// Reads the worker contract of every record not yet seen closed, so that one its proxy
    /// paid and closed shows as settled even while no payout is due.
    async fn check_contracts(&self) {
        let Some(sink) = self.payout_sink.clone() else {
            return;
        };
        for (proxy_sc, rec) in self.store.snapshot() {
            if !rec.closed {
                self.settle_from_chain(&sink, &proxy_sc, &rec).await;
            }
        }
        // Payouts still pending (a restart, or a transaction slower than the follower).
        for e in self.store.payouts() {
            if let (store::PayoutStatus::Pending, Some(sent)) = (e.status, &e.sent) {
                self.payout_tx_once(&sink, sent).await;
            }
        }
    }

    pub(crate) fn event(&self, kind: &'static str, detail: &str) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.operator.record(at, kind, "", detail);
    }

    /// The worker fee per token of `rec`'s contract: the one of the params it was derived
    /// under (an old contract keeps its own after a params change), else the current one.
    fn fee_of(&self, rec: &store::ProxyRecord) -> u64 {
        rec.worker_fee_per_token
            .unwrap_or(self.prices().worker_fee_per_token)
    }

    pub(crate) fn stats(&self) -> WorkerStats {
        let c = self.control();
        let in_flight = self
            .payouts_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let last = self
            .last_payouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let op = self.operator.snapshot();
        let payments = self
            .store
            .snapshot()
            .into_iter()
            .map(|(proxy_sc, r)| PaymentView {
                payout_in_flight: in_flight.contains(&proxy_sc),
                last_payout: last.get(&proxy_sc).cloned(),
                ready_tokens: r.ready_tokens(),
                ready_nanoton: payout::ready_nanoton(r.ready_tokens(), self.fee_of(&r)).to_string(),
                signed_nanoton: payout::ready_nanoton(r.signed_tokens, self.fee_of(&r)).to_string(),
                paid_out_nanoton: payout::ready_nanoton(r.paid_out_tokens, self.fee_of(&r))
                    .to_string(),
                proxy_sc_address: proxy_sc,
                signed_tokens: r.signed_tokens,
                db_tokens: r.db_tokens,
                max_tokens: r.max_tokens,
                paid_out_tokens: r.paid_out_tokens,
                closed: r.closed,
            })
            .collect();
        WorkerStats {
            model: self.model.clone(),
            owner_address: self.owner_address.clone(),
            coefficient: c.coefficient,
            enabled: !c.disabled(),
            force_disabled: c.force_disabled,
            uplink_ok: c.uplink_ok,
            draining: c.draining,
            model_not_listed: c.model_not_listed,
            root_version: *self.root_version.lock().unwrap_or_else(|p| p.into_inner()),
            active_requests: self.active.load(Ordering::SeqCst),
            max_active_requests: self.max_active,
            counters: self.counters.snapshot(),
            proxies: self.conns.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            payments,
            payouts: self.store.payouts(),
            events: op.events,
            event_counts: op.event_counts,
            clock_offset_secs: op.clock_offset_secs,
            clock_drifted: op.clock_drifted,
        }
    }
}

/// The last payout a worker tried for one proxy contract.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum LastPayout {
    /// The wallet sent it (Unix seconds), covering `tokens` cumulative tokens.
    Submitted {
        /// When.
        at: u64,
        /// Cumulative tokens it covers.
        tokens: u64,
    },
    /// The wallet could not send it.
    Failed {
        /// When.
        at: u64,
        /// Why.
        error: String,
    },
}

/// How many times (a second apart) a payout's transaction is looked for right after it was
/// sent.
const PAYOUT_FOLLOW_TRIES: u32 = 120;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Earnings held for one proxy contract.
#[derive(Clone, Debug, Serialize)]
pub struct PaymentView {
    /// Proxy contract.
    pub proxy_sc_address: String,
    /// Tokens of the best signed payout held.
    pub signed_tokens: u64,
    /// Tokens the proxy committed to its database.
    pub db_tokens: u64,
    /// Highest total the proxy reported.
    pub max_tokens: u64,
    /// Tokens already paid out.
    pub paid_out_tokens: u64,
    /// Signed but unpaid tokens.
    pub ready_tokens: u64,
    /// Their worth in nanoTON (decimal string: it may exceed 2^53).
    pub ready_nanoton: String,
    /// The signed tokens' worth in nanoTON (decimal string): what this contract earned.
    pub signed_nanoton: String,
    /// The paid-out tokens' worth in nanoTON (decimal string).
    pub paid_out_nanoton: String,
    /// A payout to this contract is being submitted now.
    pub payout_in_flight: bool,
    /// The last payout this process tried for it, since start (`None`: none yet).
    pub last_payout: Option<LastPayout>,
    /// The worker contract is closed on chain: its proxy paid it its last payout (after a
    /// params change); nothing is ready.
    pub closed: bool,
}

/// Everything `/jsonstats` shows.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerStats {
    /// Full model id.
    pub model: String,
    /// Earnings owner.
    pub owner_address: String,
    /// Current coefficient.
    pub coefficient: u32,
    /// Whether proxies may route to this worker.
    pub enabled: bool,
    /// Disabled by the operator.
    pub force_disabled: bool,
    /// Engine health.
    pub uplink_ok: bool,
    /// Shutting down.
    pub draining: bool,
    /// The root contract's configuration does not list this worker's model hash.
    pub model_not_listed: bool,
    /// Version of the last root configuration applied.
    pub root_version: Option<u32>,
    /// Requests running now.
    pub active_requests: usize,
    /// Limit.
    pub max_active_requests: u32,
    /// Counters.
    pub counters: CountersSnapshot,
    /// Proxy connections.
    pub proxies: Vec<ConnStatus>,
    /// Earnings per proxy.
    pub payments: Vec<PaymentView>,
    /// The latest payouts sent (at most 64, oldest first): pending until their transaction
    /// on the worker contract shows, then paid or failed.
    pub payouts: Vec<PayoutEntry>,
    /// Operator events, newest last.
    pub events: Vec<OperatorEvent>,
    /// Operator events since start, by kind.
    pub event_counts: std::collections::BTreeMap<&'static str, u64>,
    /// Seconds the local clock is ahead of the chain's (negative: behind), once a root read
    /// reported the chain's time.
    pub clock_offset_secs: Option<i64>,
    /// Whether that is beyond `clock_drift_max_seconds` (the `clock_drift` event is on).
    pub clock_drifted: bool,
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] WorkerConfigError),
    /// The payment state could not be opened.
    #[error(transparent)]
    Store(#[from] PaymentStoreError),
    /// The admin server could not start.
    #[error("admin server: {0}")]
    Admin(String),
}

/// The worker role.
pub struct Worker;

impl Worker {
    /// Validates `config`, opens the payment state, probes the engine once, starts the admin
    /// server, the engine health monitor and one connection task per proxy.
    pub async fn start(config: WorkerConfig) -> Result<WorkerHandle, WorkerError> {
        config.validate()?;
        let store = PaymentStore::open(&config.state_dir)?;
        let token =
            cocoon_service::admin::Token::of(config.admin.as_ref()).map_err(WorkerError::Admin)?;
        let probe = tokio::time::timeout(Duration::from_secs(10), config.engine.health()).await;
        let uplink_ok = matches!(probe, Ok(h) if h.up);
        let (control, _) = watch::channel(Control {
            force_disabled: false,
            uplink_ok,
            coefficient: config.coefficient,
            draining: false,
            model_not_listed: false,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            model_base: config.model_base_name().to_owned(),
            model: config.model.clone(),
            owner_address: config.owner_address.clone(),
            owner: cocoon_ton::parse_address(&config.owner_address).map_err(|e| {
                WorkerConfigError::Invalid {
                    field: "owner_address",
                    reason: e.to_string(),
                }
            })?,
            contract_params: std::sync::RwLock::new(config.contract_params.clone()),
            root_address: config.root_address.clone(),
            check_proxy_hashes: config.check_proxy_hashes,
            root: watch::channel(None).0,
            is_test: config.is_test,
            max_active: match config.max_active_requests {
                0 => config
                    .engine
                    .model_info()
                    .max_concurrency
                    .clamp(1, i32::MAX as u32),
                n => n,
            },
            proxy_cnt: AtomicU32::new(0),
            prices: std::sync::RwLock::new(config.prices),
            generation: watch::channel(0).0,
            min_payout_nanoton: config.min_payout_nanoton,
            engine: Arc::clone(&config.engine),
            tokenizer: config.tokenizer.clone(),
            connector: config.connector.clone(),
            timings: config.timings.clone(),
            store,
            counters: stats::Counters::default(),
            active: AtomicUsize::new(0),
            control,
            conns: Mutex::new(Vec::new()),
            operator: cocoon_service::events::OperatorLog::new(MAX_EVENTS),
            history: Mutex::new(cocoon_service::webui::series::History::new()),
            proxy_tasks: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(0),
            root_version: Mutex::new(None),
            root_wake: Arc::new(tokio::sync::Notify::new()),
            payout_sink: config.payout_sink.clone(),
            payouts_in_flight: Mutex::new(HashSet::new()),
            payout_tasks: Mutex::new(tokio::task::JoinSet::new()),
            stopping: stop_rx.clone(),
            last_payouts: Mutex::new(HashMap::new()),
        });
        let mut tasks = Vec::new();
        let role = Arc::clone(&shared);
        let admin_addr = cocoon_service::admin::spawn_configured(
            config.admin.as_ref(),
            admin::routes(),
            cocoon_service::admin::Admin { role, token },
            stop_rx.clone(),
            &mut tasks,
        )
        .await
        .map_err(WorkerError::Admin)?;
        tasks.push(tokio::spawn(health_monitor(
            Arc::clone(&shared),
            stop_rx.clone(),
        )));
        if shared.payout_sink.is_some() {
            tasks.push(tokio::spawn(contract_monitor(
                Arc::clone(&shared),
                stop_rx.clone(),
            )));
        }
        shared.set_proxies(&config.proxies);
        tracing::info!(
            model = %shared.model,
            proxies = config.proxies.len(),
            uplink_ok,
            "worker started"
        );
        Ok(WorkerHandle {
            shared,
            stop: stop_tx,
            tasks,
            admin_addr,
        })
    }
}

/// A running worker.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
}

impl WorkerHandle {
    /// The admin server's address, if one runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Everything `/jsonstats` shows.
    pub fn stats(&self) -> WorkerStats {
        self.shared.stats()
    }

    /// Records an operator event (admin page, `/metrics`, a warning in the log).
    pub fn operator_event(&self, kind: &'static str, detail: &str) {
        self.shared.event(kind, detail);
    }

    /// Shows the local clock's offset from the chain's, as `time` estimates it, on the
    /// admin pages and `/metrics` (the root watcher feeds it).
    pub fn follow_chain_time(&self, time: cocoon_service::chain::ChainTime) {
        self.shared.operator.follow_chain_time(time);
    }

    /// Proxy connections that completed the handshake and serve requests.
    pub fn ready_proxies(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|c| c.state == ConnState::Ready)
            .count()
    }

    /// Operator switch: enable or disable the worker on every proxy.
    pub fn set_enabled(&self, enabled: bool) {
        self.shared
            .control
            .send_modify(|c| c.force_disabled = !enabled);
    }

    /// Changes the coefficient; every proxy is told.
    pub fn set_coefficient(&self, coefficient: u32) -> Result<(), WorkerConfigError> {
        set_coefficient(&self.shared, coefficient)
    }

    /// Applies a root configuration update: new prices (multipliers and worker fee) take
    /// effect for requests that start from now on. When the contract params changed
    /// (`params_version` increased: every child contract address changes), pass them as
    /// `new_contract_params`; every proxy session is then closed and redialled so that the
    /// handshake runs under the new contracts (running requests are cancelled).
    pub fn set_prices_and_params(
        &self,
        prices: PriceTable,
        new_contract_params: Option<cocoon_ton::root::CocoonParams>,
    ) -> Result<(), WorkerConfigError> {
        if let Some(p) = &new_contract_params
            && p.worker_code.is_none()
        {
            return Err(WorkerConfigError::Invalid {
                field: "contract_params",
                reason: "worker contract code is missing".into(),
            });
        }
        *self
            .shared
            .prices
            .write()
            .unwrap_or_else(|p| p.into_inner()) = prices;
        if let Some(p) = new_contract_params {
            *self
                .shared
                .contract_params
                .write()
                .unwrap_or_else(|p| p.into_inner()) = Some(p);
            self.reconnect_all();
        }
        Ok(())
    }

    /// Notified when a proxy's handshake names a contract the known params do not give:
    /// pass it to the root watcher (`RootWatcher::with_wake`) to read the root early.
    pub fn root_wake(&self) -> Arc<tokio::sync::Notify> {
        self.shared.root_wake.clone()
    }

    /// Closes every proxy session; each is redialled at once and handshakes again.
    pub fn reconnect_all(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Submits payouts for every proxy with unpaid signed tokens, regardless of the threshold.
    /// Returns how many were started.
    pub fn payout_now(&self) -> usize {
        payout_all(&self.shared)
    }

    /// Replaces the set of proxies: new addresses are dialled, connections to removed ones
    /// finish their running requests (up to the drain timeout) and close.
    pub fn set_proxies(&self, addrs: &[String]) {
        drop(self.shared.set_proxies(addrs));
    }

    /// Graceful shutdown: proxies are told the worker is disabled, running requests get up to
    /// `Timings::drain_timeout` to finish, then sessions close and all tasks end.
    pub async fn shutdown(self) {
        self.shared.control.send_modify(|c| c.draining = true);
        let _ = self.stop.send(true);
        let mut all = self.shared.set_proxies(&[]);
        all.extend(self.tasks);
        let limit = self.shared.timings.drain_timeout + Duration::from_secs(5);
        for t in all {
            let abort = t.abort_handle();
            if tokio::time::timeout(limit, t).await.is_err() {
                abort.abort();
            }
        }
        // Payouts being sent finish (their record is written); followers of sent ones stop.
        let mut payouts = std::mem::take(
            &mut *self
                .shared
                .payout_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if tokio::time::timeout(limit, async {
            while payouts.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            payouts.shutdown().await;
        }
    }
}

pub(crate) fn set_coefficient(shared: &Shared, coefficient: u32) -> Result<(), WorkerConfigError> {
    if coefficient > config::MAX_COEFFICIENT {
        return Err(WorkerConfigError::Invalid {
            field: "coefficient",
            reason: format!("must be at most {}", config::MAX_COEFFICIENT),
        });
    }
    shared.control.send_modify(|c| c.coefficient = coefficient);
    Ok(())
}

pub(crate) fn payout_all(shared: &Arc<Shared>) -> usize {
    shared
        .store
        .snapshot()
        .into_iter()
        .filter(|(sc, _)| shared.maybe_payout(sc, true))
        .count()
}

/// Reads the worker contracts not yet seen closed every `contract_check_interval`.
async fn contract_monitor(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(shared.timings.contract_check_interval) => {}
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = shared.check_contracts() => {}
        }
    }
}

/// Probes the engine every `health_interval`; a change flips `uplink_ok`, which every proxy
/// connection turns into `worker.enabledDisabled`.
async fn health_monitor(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = shared.timings.health_interval;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let probe = tokio::select! {
            _ = stop.changed() => return,
            r = tokio::time::timeout(Duration::from_secs(10).max(every), shared.engine.health()) => r,
        };
        let up = matches!(&probe, Ok(h) if h.up);
        let changed = shared.control.send_if_modified(|c| {
            if c.uplink_ok != up {
                c.uplink_ok = up;
                true
            } else {
                false
            }
        });
        if changed {
            tracing::info!(up, "engine health changed");
        }
    }
}
