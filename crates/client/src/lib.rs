//! `cocoon-client`: the app developer's side of Cocoon, a local OpenAI-compatible gateway.
//!
//! Point any OpenAI SDK at `http://127.0.0.1:10000/v1`. Behind it the gateway keeps RA-TLS
//! sessions with several proxies from the root contract, refuses a proxy whose TEE evidence
//! or image hash does not pass (saying which check failed for which proxy), authorises with
//! each through our client contract (short with our secret, long through an on-chain
//! registration), sends each request to the least loaded ready proxy and, if that proxy
//! fails before the first byte, to the next (`request`); it verifies every signed receipt
//! and keeps the best one durably (`store`), and keeps the payment channels funded and
//! charged (`payments`, [`TonChannels`]). Optional API keys carry spending limits that hold
//! under concurrency ([`keys`]).
//!
//! As a library: [`Client::start`] with a [`ClientConfig`] gives a [`ClientHandle`] whose
//! [`ClientHandle::request`] runs a [`Request`] without HTTP (see `examples/library.rs`);
//! with `api_listen` set the same requests are served over HTTP (`http`).
#![forbid(unsafe_code)]

mod config;
mod extras;
mod http;
pub mod keys;
mod payments;
mod process;
mod proxy;
mod request;
mod settings;
mod stats;
mod store;
mod ton_channels;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cocoon_ratls::net::RatlsConnector;
use cocoon_ton::StdAddr;
use cocoon_ton::root::RootConfig;
use tokio::sync::{Notify, watch};

pub use config::{ClientConfig, StartError, Timings};
pub use http::{ClientStats, ProxyView, RootView};
pub use payments::{AutoPay, ChannelError, ChannelOps, ChannelState};
pub use process::run;
pub use proxy::ProxyInfo;
pub use request::{Answer, Collected, DEFAULT_MAX_COEFFICIENT, Request, Usage, worst_case_cost};
pub use settings::{DEFAULTS, Settings};
pub use stats::Snapshot;
pub use ton_channels::{Fees, TonChannels};

use keys::Keys;
use proxy::Slot;
use stats::Stats;
use store::Store;

/// State shared by the slots, the requests and the HTTP server.
pub(crate) struct Shared {
    root_tx: watch::Sender<RootConfig>,
    root_address: Option<StdAddr>,
    owner_address: StdAddr,
    secret: Vec<u8>,
    is_test: bool,
    connector: RatlsConnector,
    check_proxy_hashes: bool,
    /// Refuse proxy sessions below protocol 3 (no receipts).
    require_receipts: bool,
    /// How long answer receipts are kept.
    receipt_retention: std::time::Duration,
    /// Verifies the workers behind receipts.
    worker_verifier: Arc<cocoon_ratls::verifier::RatlsVerifier>,
    configured_proxies: Vec<String>,
    connections: usize,
    slots: Mutex<Vec<Arc<Slot>>>,
    ready_changed: Notify,
    store: Store,
    keys: Option<Keys>,
    admin_token_file: Option<PathBuf>,
    channels: Option<Arc<dyn ChannelOps>>,
    auto_pay: AutoPay,
    timings: Timings,
    stats: Stats,
    debug_log: stats::DebugLog,
    /// The last requests and spend per model, for the stats page (bounded).
    recent: stats::Recent,
    /// Receipts still on their way after their answer ended (`request::RECEIPT_WAIT` at
    /// most each): `GET /v1/receipts/{id}` waits for the check.
    late_receipts: request::LateReceipts,
    /// The stats page's time series (fixed memory), sampled once a second.
    history: std::sync::Mutex<cocoon_service::webui::series::History>,
    started: std::time::Instant,
    /// Notified when a proxy's handshake names a contract the known params do not give (the
    /// root may have changed): the root watcher reads it early.
    root_wake: Arc<Notify>,
}

impl Shared {
    pub(crate) fn root(&self) -> RootConfig {
        self.root_tx.borrow().clone()
    }

    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Proxy client addresses to choose from: the configured ones, else the root's.
    fn candidates(&self) -> Vec<String> {
        if !self.configured_proxies.is_empty() {
            return self.configured_proxies.clone();
        }
        self.root()
            .registered_proxies
            .iter()
            .filter_map(|p| p.endpoint.socket_addrs().map(|(_, c)| c.to_string()))
            .collect()
    }

    async fn wait_ready(&self, until: tokio::time::Instant) {
        loop {
            let notified = self.ready_changed.notified();
            if self.slots().iter().any(|s| s.ready().is_some()) {
                return;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return;
            }
        }
    }
}

/// Starts gateways.
pub struct Client;

/// A running gateway.
pub struct ClientHandle {
    shared: Arc<Shared>,
    api_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Client {
    /// Opens the state, starts one task per proxy (up to `connections`), the supervisor that
    /// replaces proxies that stay down, and the HTTP API if `api_listen` is set.
    pub async fn start(cfg: ClientConfig) -> Result<ClientHandle, StartError> {
        // Checked first: a misconfigured gateway must not come up even briefly.
        if let Some(addr) = cfg.api_listen
            && cfg.api_keys_file.is_none()
            && cocoon_service::browser::beyond_loopback(&addr)
        {
            return Err(StartError::Exposed(addr));
        }
        let browser =
            cocoon_service::browser::Allowlist::new(&cfg.allowed_origins, &cfg.allowed_hosts)?;
        // A gateway of one network must not talk to the other's proxies (sim attestation
        // and test prices on one side, real money on the other).
        if cfg.root.params.is_test != cfg.is_test {
            return Err(StartError::TestMismatch {
                root: cfg.root.params.is_test,
                ours: cfg.is_test,
            });
        }
        let store = Store::open(cfg.state_path.as_deref()).map_err(|error| StartError::State {
            path: cfg
                .state_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| ":memory:".into()),
            error,
        })?;
        let keys = match &cfg.api_keys_file {
            Some(p) => {
                let specs = keys::load(p).map_err(|error| StartError::Keys {
                    path: p.display().to_string(),
                    error,
                })?;
                let spent = store.key_spends().map_err(|error| StartError::State {
                    path: "key_spend".into(),
                    error,
                })?;
                Some(Keys::new(specs, &spent))
            }
            None => None,
        };
        if let Some(p) = &cfg.admin_token_file {
            http::read_token(p).map_err(|error| StartError::Token {
                path: p.display().to_string(),
                error,
            })?;
        }
        let worker_verifier = cfg
            .worker_verifier
            .clone()
            .unwrap_or_else(|| Arc::clone(cfg.connector.verifier()));
        let shared = Arc::new(Shared {
            root_tx: watch::channel(cfg.root).0,
            root_address: cfg.root_address,
            owner_address: cfg.owner_address,
            secret: cfg.secret,
            is_test: cfg.is_test,
            connector: cfg.connector,
            check_proxy_hashes: cfg.check_proxy_hashes,
            require_receipts: cfg.require_receipts,
            receipt_retention: cfg.receipt_retention,
            worker_verifier,
            configured_proxies: cfg.proxies,
            connections: cfg.connections.max(1),
            slots: Mutex::default(),
            ready_changed: Notify::new(),
            store,
            keys,
            admin_token_file: cfg.admin_token_file,
            channels: cfg.channels,
            auto_pay: cfg.auto_pay,
            timings: cfg.timings,
            stats: Stats::default(),
            debug_log: Default::default(),
            recent: Default::default(),
            late_receipts: Default::default(),
            history: Default::default(),
            started: std::time::Instant::now(),
            root_wake: Arc::new(Notify::new()),
        });
        let mut candidates = shared.candidates();
        if candidates.is_empty() {
            return Err(StartError::NoProxies);
        }
        shuffle(&mut candidates);
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for addr in candidates.into_iter().take(shared.connections) {
            add_slot(&shared, addr, &mut tasks);
        }
        tasks.push(tokio::spawn(supervise(shared.clone(), stop.subscribe())));
        let mut api_addr = None;
        if let Some(addr) = cfg.api_listen {
            let (bound, task) = http::serve(shared.clone(), addr, browser, stop.subscribe())
                .await
                .map_err(|error| StartError::Listen { addr, error })?;
            api_addr = Some(bound);
            tasks.push(task);
        }
        Ok(ClientHandle {
            shared,
            api_addr,
            tasks,
            stop,
        })
    }
}

fn shuffle(v: &mut [String]) {
    for i in (1..v.len()).rev() {
        let j = rand::random_range(0..=i);
        v.swap(i, j);
    }
}

fn add_slot(shared: &Arc<Shared>, addr: String, tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
    let slot = Slot::new(addr);
    shared
        .slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(slot.clone());
    tasks.push(tokio::spawn(proxy::run(shared.clone(), slot)));
}

/// Replaces a proxy that stayed down for `replace_after` by a registered one not in use.
async fn supervise(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let slots = shared.slots();
        let in_use: Vec<String> = slots.iter().map(|s| s.address.clone()).collect();
        let mut spare: Vec<String> = shared
            .candidates()
            .into_iter()
            .filter(|c| !in_use.contains(c))
            .collect();
        shuffle(&mut spare);
        let mut new_tasks = Vec::new();
        for s in slots {
            if spare.is_empty() {
                break;
            }
            if s.not_ready_for() >= shared.timings.replace_after {
                let next = spare.remove(0);
                tracing::info!(proxy = %s.address, replacement = %next, "replacing a proxy that stayed down");
                let _ = s.stop.send(true);
                shared
                    .slots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|x| !Arc::ptr_eq(x, &s));
                add_slot(&shared, next, &mut new_tasks);
            }
        }
        // Slot tasks end on their own when stopped; nothing to join here.
        drop(new_tasks);
    }
}

impl ClientHandle {
    /// Notified when a proxy's handshake names a contract the known params do not give:
    /// pass it to the root watcher (`RootWatcher::with_wake`) to read the root early.
    pub fn root_wake(&self) -> Arc<Notify> {
        self.shared.root_wake.clone()
    }

    /// Where the HTTP API listens.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Runs a request up to its answer's head; read the rest from the [`Answer`].
    pub async fn request(&self, req: Request) -> Result<Answer, cocoon_openai::ApiError> {
        self.shared.start_request(req).await
    }

    /// Waits until at least one proxy is ready (or `timeout` passes); returns whether one is.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        self.shared
            .wait_ready(tokio::time::Instant::now() + timeout)
            .await;
        self.ready_proxies() > 0
    }

    /// Proxies with a ready, authorised session.
    pub fn ready_proxies(&self) -> usize {
        self.shared
            .slots()
            .iter()
            .filter(|s| s.ready().is_some())
            .count()
    }

    /// Every proxy's state.
    pub fn proxies(&self) -> Vec<ProxyInfo> {
        self.shared.slots().iter().map(|s| s.info()).collect()
    }

    /// The figures `/jsonstats` shows.
    pub fn stats(&self) -> http::ClientStats {
        http::json_stats(&self.shared)
    }

    /// Takes a new root configuration (a `params_version` change reconnects every proxy so
    /// that contracts are derived again). Every open session is checked against it at once:
    /// a proxy whose image it no longer lists (or whose contract no longer derives) is
    /// dropped, and a configuration whose `is_test` is not ours drops every session and
    /// refuses new ones until a matching configuration arrives.
    pub fn update_root(&self, root: RootConfig) {
        if root.params.is_test != self.shared.is_test {
            tracing::error!(
                version = root.version,
                root_is_test = root.params.is_test,
                is_test = self.shared.is_test,
                "the root configuration switched is_test; every proxy session is dropped"
            );
        }
        self.shared.root_tx.send_replace(root);
    }

    /// Runs the automatic payment policy against every ready proxy now.
    pub async fn maintain(&self) -> Result<(), String> {
        for s in self.shared.slots() {
            if let Some(l) = s.ready() {
                self.shared.maintain(&s, &l).await?;
            }
        }
        Ok(())
    }

    /// Stops every task and closes every session.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for s in self.shared.slots() {
            let _ = s.stop.send(true);
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
    }
}
