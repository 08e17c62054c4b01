//! `cocoon-proxy`: the network side of the proxy role.
//!
//! Two RA-TLS listeners (proof-of-work before TLS): workers connect to one, clients to the
//! other. Workers are admitted against the root configuration (`admission`) and kept in a
//! registry with their load and health (`registry`, `router`); clients authorise through
//! their client contract (`chain`, `ton_chain`) and send `client.runQueryEx` messages,
//! which are reserved against the client's credit (`meter`), routed to a worker, relayed
//! back part by part as they arrive, retried once on another worker if the first failed
//! before any byte reached the client, and settled once (`forward`). An HTTP admin server
//! shows workers and clients and takes POST controls with a bearer token (`admin`).
//!
//! Start one with [`Proxy::start`] and a [`ProxyConfig`]; the [`ProxyHandle`] gives the bound
//! addresses, stats, root configuration updates (`update_root`, versions only increase; a
//! `params_version` change goes through `switch_contract` with the proxy contract of the new
//! params and closes every session so peers re-derive their contracts) and shutdown.
//! `contract_switch` decides what a params change means for the proxy's own contract;
//! [`ContractSwitch`] (in `process`) deploys the new one and retires the old ones.
//!
//! Where the rest plugs in:
//! - the durable ledger implements [`Meter`] (`settle` must be durable when it returns: the
//!   client's final info and both payment messages are sent only afterwards);
//! - chain reads for authorisation go through [`ClientChain`] ([`TonClientChain`] over any
//!   `cocoon_ton::chain::Chain`, [`MemoryChain`] for tests);
//! - signed receipts: handshakes and payment messages carry `proxy.signedPaymentEmpty`
//!   until a ledger confirms on-chain checkpoints, so no receipt covers usage the chain
//!   does not prove;
//! - checkpoints and on-chain settlement: [`LedgerMeter::run_settlement`] sends `save_state`
//!   checkpoints through a [`CheckpointChain`], confirms the ones the chain shows and submits
//!   the client charges and worker payouts that are due ([`SettlementConfig`]).
//!
//! Not here: protocol version 0 peers.
#![forbid(unsafe_code)]

mod admin;
mod admission;
mod chain;
mod client_side;
mod client_watch;
mod config;
mod contract_switch;
mod forward;
mod ledger_meter;
mod meter;
mod prices;
mod process;
mod queue;
mod receipts;
mod registry;
mod router;
mod settings;
mod ton_chain;
mod usage_audit;
mod worker_side;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cocoon_ratls::net::RatlsAcceptor;
use cocoon_ton::StdAddr;
use cocoon_ton::root::RootConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use chain::{CheckpointChain, ClientChain, ClientContractState, MemoryChain, ProxyChainError};
pub use config::{AdminConfig, ProxyConfig, ProxyStartError, Timings};
pub use contract_switch::{
    BookError, ChildOnChain, ContractBook, ContractIdentity, ContractRecord, OldProxyOnChain,
    RetireFacts, RetireStep, SwitchError, SwitchPlan, account_settled, plan, retire_step,
};
pub use ledger_meter::{LedgerMeter, LedgerStats, SettlementConfig};
pub use meter::{
    Charge, Durable, MemoryMeter, Meter, MeterError, Party, Settled, Settlement, SettlementAction,
};
pub use process::{ContractSwitch, root_hooks, run, switching_root_hooks, watch_events};
pub use queue::QueueStats;
pub use registry::REQUEST_BUFFER_BYTES;
pub use registry::{LatencyStats, WorkerStat};
pub use router::RouterConfig;
pub use settings::{DEFAULTS, Settings};
pub use ton_chain::{TonCheckpointChain, TonClientChain};

use crate::meter::Totals;
use crate::registry::Registry;

/// Request counters (monotone).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests_received: AtomicU64,
    pub requests_success: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub retries: AtomicU64,
    pub tokens_total: AtomicU64,
    pub workers_refused: AtomicU64,
    pub clients_refused: AtomicU64,
    /// Client contract reads of the watcher that failed.
    pub watch_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counter snapshot.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CounterStats {
    /// Queries received from clients.
    pub requests_received: u64,
    /// Requests answered in full.
    pub requests_success: u64,
    /// Requests that failed.
    pub requests_failed: u64,
    /// Requests refused before forwarding.
    pub requests_rejected: u64,
    /// Requests cancelled by the client or a deadline.
    pub requests_cancelled: u64,
    /// Attempts on another worker before the first byte.
    pub retries: u64,
    /// Adjusted tokens billed.
    pub adjusted_tokens_total: u64,
    /// Worker handshakes refused.
    pub workers_refused: u64,
    /// Client handshakes refused.
    pub clients_refused: u64,
    /// Client contract reads of the watcher that failed.
    pub watch_errors: u64,
    /// Client contract reads caused by (unauthenticated) handshakes.
    pub handshake_lookups: u64,
    /// Chain reads refused because the configured TON endpoints disagreed.
    pub ton_disagreements: u64,
}

/// A refused handshake, kept for the admin page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefusalStat {
    /// Unix seconds.
    pub at: u64,
    /// `worker` or `client`.
    pub kind: &'static str,
    /// The peer's address.
    pub peer: String,
    /// Why it was refused.
    pub reason: String,
}

/// Something the operator should look at (a worker's usage report refused or lowered, a
/// client contract starting to close, ...), kept for the admin pages.
pub use cocoon_service::events::OperatorEvent;

/// A connected client session.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientStat {
    /// Session id.
    pub session: u64,
    /// Owner of the client contract.
    pub owner: String,
    /// The client contract.
    pub client_sc: String,
    /// Whether the client has authorised.
    pub authorized: bool,
    /// Requests running.
    pub running: u32,
    /// The client's token totals.
    pub totals: Totals,
}

/// Everything the admin pages show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyStats {
    /// Whether new requests are accepted (the operator switch).
    pub enabled: bool,
    /// Test network.
    pub is_test: bool,
    /// The proxy contract.
    pub proxy_sc: String,
    /// Version of the root configuration in use.
    pub root_version: u32,
    /// Request counters.
    pub counters: CounterStats,
    /// Connected workers.
    pub workers: Vec<WorkerStat>,
    /// Requests waiting for a worker slot, and how long they waited.
    pub queue: QueueStats,
    /// Connected clients.
    pub clients: Vec<ClientStat>,
    /// Recent refused handshakes.
    pub refusals: Vec<RefusalStat>,
    /// Operator events, newest last.
    pub events: Vec<OperatorEvent>,
    /// Operator events since start, by kind.
    pub event_counts: std::collections::BTreeMap<&'static str, u64>,
    /// The durable ledger, when the meter has one.
    pub ledger: Option<LedgerStats>,
    /// Percentiles of the last successful attempts' latencies (none yet: `None`).
    pub latency: Option<registry::LatencyStats>,
    /// Seconds the local clock is ahead of the chain's (negative: behind), once a root read
    /// reported the chain's time.
    pub clock_offset_secs: Option<i64>,
    /// Whether that is beyond `clock_drift_max_seconds` (the `clock_drift` event is on).
    pub clock_drifted: bool,
}

/// What the admin server's `GET /public.json` says to anyone (the network explorer): the
/// proxy's contract, its own TEE and image hash, its totals and, per model, the enabled
/// workers and their capacity. Public identifiers and counts only; bounded by the workers
/// connected.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublicStats {
    /// The proxy contract.
    pub proxy_sc: String,
    /// Test network.
    pub is_test: bool,
    /// Whether new requests are accepted.
    pub enabled: bool,
    /// Version of the root configuration in use.
    pub root_version: u32,
    /// The TEE of the proxy's certificate (`tdx`, `sev-snp`, `sim`, ...; empty: none).
    pub tee: String,
    /// The image hash its evidence claims, hex (empty: none).
    pub image_hash: String,
    /// Requests answered in full.
    pub requests_success: u64,
    /// Adjusted tokens billed.
    pub adjusted_tokens_total: u64,
    /// Per model (full id), sorted.
    pub models: Vec<PublicModel>,
}

/// One model's supply at a proxy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublicModel {
    /// The full model id the workers announce.
    pub model: String,
    /// Enabled workers.
    pub workers: u32,
    /// Requests they take at once, together.
    pub capacity: u64,
    /// Requests running on them.
    pub running: u64,
    /// Their smallest price coefficient, thousandths.
    pub coefficient_min: i32,
    /// Their largest price coefficient, thousandths.
    pub coefficient_max: i32,
}

const MAX_REFUSALS: usize = 50;
const MAX_EVENTS: usize = 100;

/// State shared by every task of one proxy.
pub(crate) struct Shared {
    pub is_test: bool,
    /// The proxy contract in use. It changes with `root`'s `params_version` (see
    /// [`ProxyHandle::switch_contract`]), always while `root`'s write lock is held: read it
    /// with [`Shared::root_and_contract`] or [`Shared::proxy_sc`].
    proxy_sc: std::sync::RwLock<StdAddr>,
    pub owner_address: StdAddr,
    pub public_key: [u8; 32],
    pub router: RouterConfig,
    pub timings: Timings,
    pub root: watch::Sender<RootConfig>,
    pub meter: Arc<dyn Meter>,
    pub chain: Arc<dyn ClientChain>,
    pub lookups: client_watch::Lookups,
    pub registry: Arc<Registry>,
    pub clients: Mutex<HashMap<u64, ClientStat>>,
    pub refusals: Mutex<VecDeque<RefusalStat>>,
    /// Operator events and the chain clock, for the admin pages.
    pub operator: cocoon_service::events::OperatorLog,
    /// The admin page's time series (fixed memory), sampled once a second.
    pub history: Mutex<cocoon_service::webui::series::History>,
    pub counters: Counters,
    /// The TEE and image hash of our own certificate, as `/public.json` publishes them.
    pub attestation: Option<(&'static str, [u8; 32])>,
    pub enabled: AtomicBool,
    /// The `params_version` a contract switch is under way to (0: none): requests of the
    /// older params are refused, retryably, until the switch ends the sessions.
    pub switching_to: AtomicU32,
    next_id: AtomicU64,
}

pub(crate) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn root(&self) -> RootConfig {
        self.root.borrow().clone()
    }

    /// The root configuration and the proxy contract derived from its params, read
    /// together (a switch changes both under `root`'s lock).
    pub(crate) fn root_and_contract(&self) -> (RootConfig, StdAddr) {
        let root = self.root.borrow();
        let sc = self
            .proxy_sc
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (root.clone(), sc)
    }

    /// The proxy contract in use.
    pub(crate) fn proxy_sc(&self) -> StdAddr {
        self.root_and_contract().1
    }

    pub(crate) fn refused(&self, kind: &'static str, peer: &str, reason: &str) {
        tracing::warn!(kind, peer, reason, "handshake refused");
        let c = if kind == "worker" {
            &self.counters.workers_refused
        } else {
            &self.counters.clients_refused
        };
        Counters::inc(c);
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= MAX_REFUSALS {
            r.pop_front();
        }
        r.push_back(RefusalStat {
            at: now_unix() as u64,
            kind,
            peer: peer.to_owned(),
            reason: reason.to_owned(),
        });
    }

    /// A query of a `kind` peer ("worker" or "client") decoded into its message set. One
    /// that does not decode is answered here, and `Err` says whether the session goes on:
    /// after an unknown query it does; after a malformed one (a refusal of the peer,
    /// counted) or one too short it ends.
    pub(crate) fn decode_query<Q>(
        &self,
        decoded: Result<Q, cocoon_tl::DispatchError>,
        responder: cocoon_net::Responder,
        kind: &'static str,
        peer: &str,
    ) -> Result<(Q, cocoon_net::Responder), bool> {
        use cocoon_net::ErrorCode::ProtoViolation;
        use cocoon_tl::DispatchError;
        match decoded {
            Ok(q) => Ok((q, responder)),
            Err(DispatchError::Unknown { id, .. }) => {
                let reason = format!("unexpected query {id:08x} from a {kind}");
                let _ = responder.error(ProtoViolation as i32, reason);
                Err(true)
            }
            Err(e @ DispatchError::Malformed { .. }) => {
                let reason = e.to_string();
                self.refused(kind, peer, &reason);
                let _ = responder.error(ProtoViolation as i32, reason);
                Err(false)
            }
            Err(_) => {
                let _ = responder.error(ProtoViolation as i32, "query too short");
                Err(false)
            }
        }
    }

    /// Records an operator event (logged, counted, kept for the admin pages).
    pub(crate) fn event(&self, kind: &'static str, subject: &str, detail: &str) {
        self.operator
            .record(now_unix() as u64, kind, subject, detail);
    }

    pub(crate) fn update_client(&self, id: u64, f: impl FnOnce(&mut ClientStat)) {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            f(c);
        }
    }

    pub(crate) fn public(&self) -> PublicStats {
        let c = &self.counters;
        let mut models: std::collections::BTreeMap<String, PublicModel> = Default::default();
        for w in self.registry.stats(&self.router, Instant::now()) {
            if !w.enabled {
                continue;
            }
            let m = models.entry(w.model.clone()).or_insert(PublicModel {
                model: w.model.clone(),
                workers: 0,
                capacity: 0,
                running: 0,
                coefficient_min: w.coefficient,
                coefficient_max: w.coefficient,
            });
            m.workers += 1;
            m.capacity += u64::from(w.max_active);
            m.running += u64::from(w.running);
            m.coefficient_min = m.coefficient_min.min(w.coefficient);
            m.coefficient_max = m.coefficient_max.max(w.coefficient);
        }
        let (tee, image_hash) = match self.attestation {
            Some((t, h)) => (t.to_owned(), hex::encode(h)),
            None => (String::new(), String::new()),
        };
        PublicStats {
            proxy_sc: self.proxy_sc().to_string(),
            is_test: self.is_test,
            enabled: self.enabled.load(Ordering::SeqCst),
            root_version: self.root.borrow().version,
            tee,
            image_hash,
            requests_success: c.requests_success.load(Ordering::Relaxed),
            adjusted_tokens_total: c.tokens_total.load(Ordering::Relaxed),
            models: models.into_values().collect(),
        }
    }

    pub(crate) fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut clients: Vec<ClientStat> = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        clients.sort_by_key(|c| c.session);
        for cl in &mut clients {
            if !cl.client_sc.is_empty() {
                cl.totals = self.meter.client_totals(&cl.client_sc);
            }
        }
        let op = self.operator.snapshot();
        ProxyStats {
            enabled: self.enabled.load(Ordering::SeqCst),
            is_test: self.is_test,
            proxy_sc: self.proxy_sc().to_string(),
            root_version: self.root.borrow().version,
            counters: CounterStats {
                requests_received: l(&c.requests_received),
                requests_success: l(&c.requests_success),
                requests_failed: l(&c.requests_failed),
                requests_rejected: l(&c.requests_rejected),
                requests_cancelled: l(&c.requests_cancelled),
                retries: l(&c.retries),
                adjusted_tokens_total: l(&c.tokens_total),
                workers_refused: l(&c.workers_refused),
                clients_refused: l(&c.clients_refused),
                watch_errors: l(&c.watch_errors),
                handshake_lookups: l(&self.lookups.reads),
                ton_disagreements: self.chain.ton_disagreements(),
            },
            workers: self.registry.stats(&self.router, Instant::now()),
            queue: self.registry.queue_stats(),
            clients,
            refusals: self
                .refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
            events: op.events,
            event_counts: op.event_counts,
            ledger: self.meter.ledger_stats(),
            latency: self.registry.latency(),
            clock_offset_secs: op.clock_offset_secs,
            clock_drifted: op.clock_drifted,
        }
    }
}

/// Starts proxies.
pub struct Proxy;

/// A running proxy.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    worker_addr: SocketAddr,
    client_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why a root configuration update was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootUpdateError {
    /// A version not newer than the one in use.
    #[error("root configuration version {got} is not newer than {have}")]
    NotNewer {
        /// The version offered.
        got: u32,
        /// The version in use.
        have: u32,
    },
    /// A configuration whose `is_test` differs from the proxy's.
    #[error("root configuration switches is_test")]
    TestMismatch,
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ProxyStartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ProxyStartError::Bind {
            addr,
            reason: e.to_string(),
        })
}

impl Proxy {
    /// Checks the configuration, binds both listeners (and the admin server) and serves.
    pub async fn start(cfg: ProxyConfig) -> Result<ProxyHandle, ProxyStartError> {
        use cocoon_attest::Backend;
        // Workers must be attested for real on a production network. Clients need no
        // attestation at all (their trust rests on their funded contract), so the
        // client verifier is not restricted here.
        if !cfg.is_test
            && cfg
                .worker_verifier
                .policy()
                .allowed_backends
                .contains(&Backend::Sim)
        {
            return Err(ProxyStartError::SimOnProduction("worker"));
        }
        if !cfg.is_test
            && cfg
                .worker_verifier
                .gpu_requirement()
                .is_some_and(|g| g.allow_unbound_nonce || !g.policy.require_rim_signatures)
        {
            return Err(ProxyStartError::UnboundGpuNonceOnProduction);
        }
        if cfg.root.params.is_test != cfg.is_test {
            return Err(ProxyStartError::TestMismatch);
        }
        if cfg.root.params.worker_code.is_none() {
            return Err(ProxyStartError::MissingCode("worker"));
        }
        if cfg.root.params.client_code.is_none() {
            return Err(ProxyStartError::MissingCode("client"));
        }
        let token =
            cocoon_service::admin::Token::of(cfg.admin.as_ref()).map_err(ProxyStartError::Admin)?;
        let wl = bind(cfg.worker_listen).await?;
        let cl = bind(cfg.client_listen).await?;
        let worker_addr = wl.local_addr().map_err(|e| ProxyStartError::Bind {
            addr: cfg.worker_listen,
            reason: e.to_string(),
        })?;
        let client_addr = cl.local_addr().map_err(|e| ProxyStartError::Bind {
            addr: cfg.client_listen,
            reason: e.to_string(),
        })?;
        let wacc = RatlsAcceptor::new(
            Arc::clone(&cfg.certs),
            Arc::clone(&cfg.worker_verifier),
            cfg.pow_difficulty,
            cocoon_net::Config {
                acceptor_ping_every: cfg.timings.worker_ping,
                ..cfg.net.clone()
            },
        )
        .map_err(|e| ProxyStartError::Tls(e.to_string()))?;
        let cacc = RatlsAcceptor::new(
            Arc::clone(&cfg.certs),
            Arc::clone(&cfg.client_verifier),
            cfg.pow_difficulty,
            cfg.net.clone(),
        )
        .map_err(|e| ProxyStartError::Tls(e.to_string()))?;
        let shared = Arc::new(Shared {
            is_test: cfg.is_test,
            proxy_sc: std::sync::RwLock::new(cfg.proxy_sc),
            owner_address: cfg.owner_address,
            public_key: cfg.signing_key.public_key(),
            router: cfg.router,
            timings: cfg.timings.clone(),
            root: watch::channel(cfg.root).0,
            meter: cfg.meter,
            chain: cfg.chain,
            lookups: client_watch::Lookups::new(
                cfg.timings.lookup_ttl,
                cfg.timings.lookups_per_minute,
                cfg.timings.lookup_burst,
            ),
            registry: Arc::new(Registry::new(
                cfg.timings.request_buffer_bytes,
                cfg.timings.queue_max_per_model,
            )),
            clients: Mutex::default(),
            refusals: Mutex::default(),
            operator: cocoon_service::events::OperatorLog::new(MAX_EVENTS),
            history: Mutex::new(cocoon_service::webui::series::History::new()),
            counters: Counters::default(),
            attestation: cocoon_ratls::inspect::own_attestation(
                &cfg.certs.current().cert[0],
                now_unix() as u64,
            ),
            enabled: AtomicBool::new(true),
            switching_to: AtomicU32::new(0),
            next_id: AtomicU64::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        // Workers refused by the certificate verifier (attestation, GPU evidence) are listed
        // with the other refused handshakes.
        let on_refused: cocoon_ratls::net::RefusalHook = {
            let shared = Arc::clone(&shared);
            Arc::new(move |addr, reason| {
                shared.refused(
                    "worker",
                    &addr.to_string(),
                    &format!("certificate: {reason}"),
                );
            })
        };
        let (wtask, mut wrx) =
            wacc.spawn_listener_with(wl, cfg.timings.max_handshakes, Some(on_refused));
        let (ctask, mut crx) = cacc.spawn_listener(cl, cfg.timings.max_handshakes);
        tasks.push(wtask);
        tasks.push(ctask);
        {
            let shared = Arc::clone(&shared);
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(a) = wrx.recv().await {
                    tokio::spawn(worker_side::run(Arc::clone(&shared), a, stop.clone()));
                }
            }));
        }
        {
            let shared = Arc::clone(&shared);
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(a) = crx.recv().await {
                    tokio::spawn(client_side::run(Arc::clone(&shared), a, stop.clone()));
                }
            }));
        }
        if let Some(every) = cfg.timings.client_watch_interval {
            tasks.push(tokio::spawn(client_watch::run(
                Arc::clone(&shared),
                every,
                stop_rx.clone(),
            )));
        }
        let role = Arc::clone(&shared);
        let admin_addr = cocoon_service::admin::spawn_configured(
            cfg.admin.as_ref(),
            admin::routes(),
            cocoon_service::admin::Admin { role, token },
            stop_rx.clone(),
            &mut tasks,
        )
        .await
        .map_err(ProxyStartError::Admin)?;
        tracing::info!(%worker_addr, %client_addr, "proxy listening");
        Ok(ProxyHandle {
            shared,
            worker_addr,
            client_addr,
            admin_addr,
            stop,
            tasks,
        })
    }
}

impl ProxyHandle {
    /// Where workers connect.
    pub fn worker_addr(&self) -> SocketAddr {
        self.worker_addr
    }

    /// Where clients connect.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The admin server, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The proxy's public signing key.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.public_key
    }

    /// What the admin pages show.
    pub fn stats(&self) -> ProxyStats {
        self.shared.stats()
    }

    /// Workers that completed the handshake.
    pub fn ready_workers(&self) -> usize {
        self.shared.registry.ids().len()
    }

    /// Applies a newer root configuration. Connected workers whose image or model is no
    /// longer allowed are disconnected. A `params_version` change needs the proxy contract
    /// of the new params too: use [`Self::switch_contract`] for it.
    pub fn update_root(&self, cfg: RootConfig) -> Result<(), RootUpdateError> {
        self.apply_root(cfg, None)
    }

    /// Applies a newer root configuration and, in the same step, the proxy contract derived
    /// from its params: sessions opened afterwards advertise `proxy_sc` and derive client
    /// and worker contracts from it; sessions of the old params end (their peers come back).
    pub fn switch_contract(
        &self,
        cfg: RootConfig,
        proxy_sc: StdAddr,
    ) -> Result<(), RootUpdateError> {
        self.apply_root(cfg, Some(proxy_sc))
    }

    /// A switch to `params_version` starts (the ledger moves next): requests under older
    /// params are refused with a retryable error (`NotReady`, "proxy is switching …") until
    /// [`Self::switch_contract`] applies it or [`Self::abort_params_switch`] is called.
    pub fn begin_params_switch(&self, params_version: u32) {
        self.shared
            .switching_to
            .store(params_version, Ordering::SeqCst);
    }

    /// The switch did not happen (the ledger refused): requests are taken again.
    pub fn abort_params_switch(&self) {
        self.shared.switching_to.store(0, Ordering::SeqCst);
    }

    /// The proxy contract in use.
    pub fn proxy_sc(&self) -> StdAddr {
        self.shared.proxy_sc()
    }

    fn apply_root(
        &self,
        cfg: RootConfig,
        proxy_sc: Option<StdAddr>,
    ) -> Result<(), RootUpdateError> {
        if cfg.params.is_test != self.shared.is_test {
            return Err(RootUpdateError::TestMismatch);
        }
        let mut res = Ok(());
        self.shared.root.send_if_modified(|cur| {
            if cfg.version <= cur.version {
                res = Err(RootUpdateError::NotNewer {
                    got: cfg.version,
                    have: cur.version,
                });
                return false;
            }
            if let Some(sc) = proxy_sc {
                // Under the root's write lock: no reader sees the new contract with the
                // old params or the other way round.
                *self
                    .shared
                    .proxy_sc
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = sc;
                self.shared.switching_to.store(0, Ordering::SeqCst);
            }
            *cur = cfg;
            true
        });
        res
    }

    /// Records an operator event (shown on the admin pages, counted on `/metrics`).
    pub fn operator_event(&self, kind: &'static str, subject: &str, detail: &str) {
        self.shared.event(kind, subject, detail);
    }

    /// Shows the local clock's offset from the chain's, as `time` estimates it, on the
    /// admin pages and `/metrics` (the root watcher feeds it).
    pub fn follow_chain_time(&self, time: cocoon_service::chain::ChainTime) {
        self.shared.operator.follow_chain_time(time);
    }

    /// Takes part in routing (or stops: new requests and registrations are refused).
    pub fn set_enabled(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Stops listening and closes every session.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
