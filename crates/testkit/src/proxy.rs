//! A real proxy on loopback with sim attestation, the in-memory meter and chain, and an
//! admin server behind [`TOKEN`].

use std::sync::Arc;
use std::time::Duration;

use cocoon_net::{Incoming, SessionHandle};
use cocoon_proxy::{
    AdminConfig, CheckpointChain, ClientContractState, LedgerMeter, MemoryChain, MemoryMeter,
    Proxy, ProxyConfig, ProxyHandle, ProxyStartError, RouterConfig, Timings,
};
use cocoon_ratls::config::CertResolver;
use cocoon_tl::functions::worker as fworker;
use cocoon_tl::types::worker as tworker;
use cocoon_ton::contracts::Deployable;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::root::{CocoonParams, RootConfig};
use cocoon_ton::{HashBytes, StdAddr};
use tokio::sync::mpsc;

use crate::fixtures::{LIMIT, MODEL, POW, PROXY_SEED, SECRET, TOKEN, addr};
use crate::identity::{connector, sim_identity, sim_verifier};
use crate::wait::eventually;

/// A running proxy and what it was given.
pub struct Net {
    pub proxy: ProxyHandle,
    pub meter: Arc<MemoryMeter>,
    pub chain: Arc<MemoryChain>,
    pub root: RootConfig,
    pub proxy_sc: StdAddr,
    pub dir: tempfile::TempDir,
}

/// A proxy under `root` (contract `addr(0x11)`, owner `addr(0x33)`, key of [`PROXY_SEED`]).
pub async fn start_proxy(root: RootConfig) -> Net {
    start_proxy_with(root, |_| {}).await
}

/// [`start_proxy`] with the configuration changed by `tweak` before the proxy starts.
pub async fn start_proxy_with(root: RootConfig, tweak: impl FnOnce(&mut ProxyConfig)) -> Net {
    start_proxy_result(root, tweak).await.unwrap()
}

/// [`start_proxy_with`] returning the proxy's refusal to start.
pub async fn start_proxy_result(
    root: RootConfig,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> Result<Net, ProxyStartError> {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let meter = Arc::new(MemoryMeter::new());
    let chain = Arc::new(MemoryChain::new());
    let mut cfg = ProxyConfig {
        worker_listen: "127.0.0.1:0".parse().unwrap(),
        client_listen: "127.0.0.1:0".parse().unwrap(),
        certs: CertResolver::new(&sim_identity()).unwrap(),
        worker_verifier: sim_verifier(),
        client_verifier: sim_verifier(),
        pow_difficulty: POW,
        is_test: true,
        root,
        signing_key: Arc::new(SigningKey::from_seed(&PROXY_SEED).unwrap()),
        owner_address: addr(0x33),
        proxy_sc: addr(0x11),
        meter: meter.clone(),
        chain: chain.clone(),
        admin: Some(AdminConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            token_file: Some(token_file),
            allowed_origins: vec![],
            allowed_hosts: vec![],
        }),
        router: RouterConfig {
            probe_rate: 0.0,
            ..RouterConfig::default()
        },
        timings: Timings {
            cancel_grace: Duration::from_secs(5),
            ..Timings::default()
        },
        net: cocoon_net::Config::default(),
    };
    tweak(&mut cfg);
    let root = cfg.root.clone();
    // A tweak may give the proxy another contract (e.g. the one its root derives).
    let proxy_sc = cfg.proxy_sc.clone();
    let proxy = Proxy::start(cfg).await?;
    Ok(Net {
        proxy,
        meter,
        chain,
        root,
        proxy_sc,
        dir,
    })
}

/// Starting the proxy must fail; returns why.
pub async fn start_err(root: RootConfig, tweak: impl FnOnce(&mut ProxyConfig)) -> ProxyStartError {
    match start_proxy_result(root, tweak).await {
        Ok(_) => panic!("the proxy started with an unsafe configuration"),
        Err(e) => e,
    }
}

/// A ledger meter on a fresh SQLite file for `root`, reading its checkpoints from `chain`;
/// the directory lives as long as the returned guard.
pub async fn ledger_meter(
    key: Arc<SigningKey>,
    excess_to: StdAddr,
    root: &RootConfig,
    chain: &dyn CheckpointChain,
) -> (tempfile::TempDir, Arc<LedgerMeter>) {
    let dir = tempfile::tempdir().unwrap();
    let store = cocoon_ledger::SqliteStore::open(&dir.path().join("ledger.sqlite")).unwrap();
    let meter = LedgerMeter::open_for_root(store, key, excess_to, root, chain)
        .await
        .unwrap();
    (dir, meter)
}

/// SHA-256 of [`SECRET`], as a client contract stores it.
pub fn secret_hash() -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(SECRET).into()
}

impl Net {
    /// The client contract the proxy derives for `owner`.
    pub fn client_sc(&self, owner: &StdAddr) -> StdAddr {
        self.derive(cocoon_ton::contracts::client_contract, owner)
    }

    /// The worker contract the proxy derives for a worker owned by `owner`.
    pub fn worker_sc(&self, owner: &StdAddr) -> StdAddr {
        self.derive(cocoon_ton::contracts::worker_contract, owner)
    }

    /// The contract `f` derives for `owner` with this proxy under its root's params.
    fn derive<E: std::fmt::Debug>(
        &self,
        f: impl Fn(&CocoonParams, &StdAddr, &StdAddr, &HashBytes) -> Result<Deployable, E>,
        owner: &StdAddr,
    ) -> StdAddr {
        f(
            &self.root.params,
            owner,
            &self.proxy_sc,
            &HashBytes(self.proxy.public_key()),
        )
        .unwrap()
        .address
    }

    /// Deploys a client contract with `balance` nanoTON (stake the same) and our secret.
    pub fn fund_client(&self, owner: &StdAddr, balance: u64, with_secret: bool) -> StdAddr {
        let sc = self.client_sc(owner);
        self.chain.set_client(
            sc.clone(),
            ClientContractState {
                secret_hash: with_secret.then(secret_hash),
                balance,
                stake: balance,
                tokens_used: 0,
                closing: false,
                closed: false,
            },
        );
        sc
    }

    /// Waits until exactly `n` workers are registered.
    pub async fn wait_workers(&self, n: usize) {
        eventually("workers registered", || self.proxy.ready_workers() == n).await;
    }

    /// The admin server's base URL.
    pub fn admin(&self) -> String {
        format!("http://{}", self.proxy.admin_addr().unwrap())
    }
}

/// A worker the test drives by hand: a session with `net`'s proxy after
/// `worker.connectToProxy` as owner `addr(0x49)` serving [`MODEL`] at `coefficient` with
/// `max_active` slots, speaking protocol 1 to `max_proto`; returns the proxy's answer too.
pub async fn raw_worker(
    net: &Net,
    coefficient: i32,
    max_active: i32,
    max_proto: i32,
) -> (
    SessionHandle,
    mpsc::Receiver<Incoming>,
    tworker::ConnectedToProxy,
) {
    let (h, incoming, _peer) = connector()
        .connect(&net.proxy.worker_addr().to_string())
        .await
        .unwrap();
    let connected: tworker::ConnectedToProxy = h
        .query_tl(
            &fworker::ConnectToProxy {
                params: tworker::Params {
                    worker_owner_address: addr(0x49).to_string(),
                    model: MODEL.into(),
                    coefficient,
                    is_test: Some(true),
                    proxy_cnt: Some(1),
                    max_active_requests: Some(max_active),
                    min_proto_version: Some(1),
                    max_proto_version: Some(max_proto),
                },
            },
            LIMIT,
        )
        .await
        .unwrap();
    (h, incoming, connected)
}

/// The rest of a hand-driven worker's handshake: `worker.compareBalanceWithProxy` claiming
/// `max_tokens` (nothing committed), then `worker.proxyHandshakeComplete` (enabled); returns
/// the comparison's result.
pub async fn finish_handshake(
    h: &SessionHandle,
    max_tokens: i64,
) -> tworker::CompareBalanceWithProxyResult {
    let cmp = h
        .query_tl(
            &fworker::CompareBalanceWithProxy {
                tokens_committed_to_blockchain: 0,
                tokens_committed_to_db: 0,
                max_tokens,
            },
            LIMIT,
        )
        .await
        .unwrap();
    let _: tworker::ProxyHandshakeCompleted = h
        .query_tl(
            &fworker::ProxyHandshakeComplete { is_disabled: false },
            LIMIT,
        )
        .await
        .unwrap();
    cmp
}
