//! Real workers on loopback: their configuration, and a worker with its own fake engine
//! dialling a [`Net`]'s proxy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_ton::StdAddr;
use cocoon_ton::root::RootConfig;
use cocoon_worker::{AdminConfig, PayoutSink, Timings, Worker, WorkerConfig, WorkerHandle};
use futures::future::BoxFuture;

use crate::engine::{EngineState, Words, engine, fake_engine};
use crate::fake_proxy::TestProxy;
use crate::fixtures::{MODEL, addr, prices, root};
use crate::identity::connector;
use crate::proxy::{Net, start_proxy};

/// A worker (owner `addr(0x44)`, coefficient 1.5, 4 slots) for `proxy`, with the engine at
/// `engine_base` and its state in `state_dir`; fast health checks and redials.
pub fn worker_config(proxy: &str, engine_base: &str, state_dir: &Path) -> WorkerConfig {
    let mut timings = Timings {
        payment_status_interval: (Duration::from_secs(60), Duration::from_secs(60)),
        health_interval: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(2),
        ..Timings::default()
    };
    timings.backoff.base = Duration::from_millis(50);
    timings.backoff.max = Duration::from_millis(300);
    WorkerConfig {
        proxies: vec![proxy.to_owned()],
        owner_address: addr(0x44).to_string(),
        model: MODEL.into(),
        coefficient: 1500,
        max_active_requests: 4,
        is_test: true,
        prices: prices(),
        min_payout_nanoton: 1000,
        state_dir: state_dir.to_owned(),
        engine: engine(engine_base),
        connector: connector(),
        admin: None,
        payout_sink: None,
        contract_params: None,
        root_address: None,
        check_proxy_hashes: true,
        tokenizer: None,
        timings,
    }
}

/// An admin server on loopback, its controls behind `token_file` (none: refused).
pub fn admin_config(token_file: Option<PathBuf>) -> AdminConfig {
    AdminConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        token_file,
        allowed_origins: vec![],
        allowed_hosts: vec![],
    }
}

/// Records submitted payouts.
#[derive(Default)]
pub struct RecordingSink {
    /// (proxy contract, payout BOC, tokens), in order.
    pub submitted: Mutex<Vec<(String, Vec<u8>, u64)>>,
}

impl PayoutSink for RecordingSink {
    fn submit(
        &self,
        proxy_sc: &str,
        boc: Vec<u8>,
        tokens: u64,
    ) -> BoxFuture<'_, Result<Option<cocoon_worker::SentPayout>, String>> {
        self.submitted
            .lock()
            .unwrap()
            .push((proxy_sc.to_owned(), boc, tokens));
        Box::pin(async { Ok(None) })
    }
}

/// A real worker with its own fake engine.
pub struct TestWorker {
    pub handle: WorkerHandle,
    pub engine: EngineState,
    pub owner: StdAddr,
    _dir: tempfile::TempDir,
}

/// A real worker owned by `addr(owner_byte)` with its own fake engine, dialling `net`'s
/// proxy and deriving its contract from `net`'s root.
pub async fn start_worker(net: &Net, owner_byte: u8) -> TestWorker {
    start_worker_with(net, owner_byte, |_| {}).await
}

/// [`start_worker`] with the configuration changed by `tweak` before the worker starts.
pub async fn start_worker_with(
    net: &Net,
    owner_byte: u8,
    tweak: impl FnOnce(&mut WorkerConfig),
) -> TestWorker {
    let (base, engine_state) = fake_engine().await;
    let dir = tempfile::tempdir().unwrap();
    let owner = addr(owner_byte);
    let mut cfg = worker_config(&net.proxy.worker_addr().to_string(), &base, dir.path());
    cfg.owner_address = owner.to_string();
    cfg.contract_params = Some(net.root.params.clone());
    cfg.tokenizer = Some(Arc::new(Words));
    tweak(&mut cfg);
    let handle = Worker::start(cfg).await.unwrap();
    TestWorker {
        handle,
        engine: engine_state,
        owner,
        _dir: dir,
    }
}

impl TestWorker {
    /// The worker contract the proxy derives.
    pub fn worker_sc(&self, net: &Net) -> String {
        net.worker_sc(&self.owner).to_string()
    }
}

/// A worker configured by [`worker_config`] (then `tweak`) dialling the fake proxy `proxy`,
/// with the engine at `engine_base` and its state in `state_dir`.
pub async fn start_worker_at(
    proxy: &TestProxy,
    engine_base: &str,
    state_dir: &Path,
    tweak: impl FnOnce(&mut WorkerConfig),
) -> WorkerHandle {
    let mut cfg = worker_config(&proxy.addr, engine_base, state_dir);
    tweak(&mut cfg);
    Worker::start(cfg).await.unwrap()
}

/// A proxy under `root` with our client contract (`addr(0x42)`, 10 TON, secret set) and
/// one worker (owner `addr(0x61)`) registered.
pub async fn network(root: RootConfig) -> (Net, TestWorker) {
    let net = start_proxy(root).await;
    net.fund_client(&addr(0x42), 10_000_000_000, true);
    let w = start_worker(&net, 0x61).await;
    net.wait_workers(1).await;
    (net, w)
}

/// A proxy under [`root`]`(1, true, true)` with one worker (owner `addr(owner_byte)`)
/// registered.
pub async fn proxy_with_worker(owner_byte: u8) -> (Net, TestWorker) {
    let net = start_proxy(root(1, true, true)).await;
    let w = start_worker(&net, owner_byte).await;
    net.wait_workers(1).await;
    (net, w)
}
