//! The whole `cocoon client` process: its RA-TLS identity and proxy verification, the chain
//! endpoints and the root it follows, its wallet-funded payment channels, its secret, and the
//! gateway with its OpenAI API. The command line only parses settings and calls [`run`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cocoon_service::chain::{ChainTime, RootHook, RootWatcher, load_root_patiently};
use cocoon_service::identity::ProxyDialer;
use cocoon_service::process;
use cocoon_ton::root::RootConfig;

use crate::settings::Settings;
use crate::{AutoPay, ChannelOps, Client, ClientConfig, ClientHandle, Timings, TonChannels};

/// The secret: read, or created (0600, 32 random bytes in hex) when missing.
fn secret(configured: &str, state_dir: &Path) -> Result<Vec<u8>, String> {
    let path = if configured.is_empty() {
        state_dir.join("secret")
    } else {
        PathBuf::from(configured)
    };
    process::ensure_token_file(&path)?;
    process::read_first_line(&path)
        .map(String::into_bytes)
        .map_err(|e| format!("secret_file {e}"))
}

/// The client's step on a newer root configuration (proxies, images, prices, params).
pub(crate) fn root_hooks(handle: &ClientHandle) -> Vec<RootHook<'_>> {
    vec![Box::new(move |c: RootConfig| {
        Box::pin(async move {
            handle.update_root(c);
            Ok(())
        })
    })]
}

/// Runs a client until `shutdown` resolves.
pub async fn run(s: Settings, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let c = &s.common;
    let start = c.start("client")?;
    let state_dir = &start.state_dir;
    let ProxyDialer { connector, tee } =
        c.proxy_dialer(&s.proxy_policy, s.pow_max_difficulty, &start)?;
    // Workers (their certificates arrive with receipts) are verified under the same policy,
    // with the GPU requirement when one is set.
    let gpu = s.gpu.requirement().map_err(|e| e.to_string())?;
    let worker_verifier = match &gpu {
        None => None,
        Some(g) => Some(cocoon_service::identity::peer_verifier(
            cocoon_service::identity::PeerVerification {
                gpu: Some(g),
                ..c.verification(&s.proxy_policy, &start)
            },
        )?),
    };
    let chain = c.chain(&start)?;
    let root_addr = cocoon_ton::parse_address(&c.root_address).map_err(|e| e.to_string())?;
    let root = load_root_patiently(&chain, &root_addr, Duration::from_secs(30)).await?;

    let channels: Option<Arc<dyn ChannelOps>> = match c.wallet()? {
        None => None,
        Some((wallet, key)) => Some(Arc::new(
            TonChannels::new(chain.clone(), wallet, key).map_err(|e| e.to_string())?,
        )),
    };
    let owner = match (&channels, c.owner_address.as_str()) {
        (Some(ch), "") => ch.owner(),
        (Some(ch), o) => {
            let o = cocoon_ton::parse_address(o).map_err(|e| e.to_string())?;
            if o != ch.owner() {
                return Err(format!(
                    "owner_address {o} is not the wallet's address {}: the wallet sends every \
                     owner operation, so it must own the contracts",
                    ch.owner()
                ));
            }
            o
        }
        (None, o) => cocoon_ton::parse_address(o).map_err(|e| e.to_string())?,
    };
    let top_up_amount = if s.top_up_ton.is_empty() {
        0
    } else {
        cocoon_ton::parse_ton(&s.top_up_ton).map_err(|e| e.to_string())?
    };
    let timings = Timings {
        default_timeout: Duration::from_secs(s.request_timeout_seconds),
        payment_status_interval: Duration::from_secs(s.payment_status_seconds),
        ..Timings::default()
    };
    let version = root.version;
    let cfg = ClientConfig {
        api_listen: Some(s.api_listen.parse().map_err(|_| "api_listen")?),
        allowed_origins: s.allowed_origins.clone(),
        allowed_hosts: s.allowed_hosts.clone(),
        proxies: s.proxies.clone(),
        connections: s.connections,
        root,
        root_address: Some(root_addr.clone()),
        owner_address: owner.clone(),
        secret: secret(&s.secret_file, state_dir)?,
        is_test: c.is_test,
        connector,
        check_proxy_hashes: s.check_proxy_hashes,
        require_receipts: s.require_receipts,
        worker_verifier,
        receipt_retention: std::time::Duration::from_secs(
            s.receipt_retention_days.saturating_mul(86_400),
        ),
        state_path: Some(state_dir.join("client.sqlite")),
        api_keys_file: (!s.api_keys_file.is_empty()).then(|| PathBuf::from(&s.api_keys_file)),
        admin_token_file: Some(process::admin_token_file(&s.admin_token_file, state_dir)?),
        channels,
        auto_pay: AutoPay {
            top_up: s.auto_top_up,
            charge: s.auto_charge,
            top_up_amount,
        },
        timings,
    };
    let handle = Client::start(cfg).await.map_err(|e| e.to_string())?;
    let bound: Vec<_> = handle
        .api_addr()
        .map(|a| ("api_listen", a))
        .into_iter()
        .collect();
    process::write_ready_file(&c.ready_file, &bound)?;
    let api = handle.api_addr().map(|a| a.to_string()).unwrap_or_default();
    eprintln!(
        "client: OpenAI API on http://{api}/v1, stats http://{api}/stats; owner {owner}, tee {}, state {}",
        tee.name(),
        state_dir.display()
    );
    // The watcher logs a local clock that leaves the chain's as a warning (`clock_drift`).
    let watcher = RootWatcher::new(
        chain.clone(),
        root_addr,
        Duration::from_secs(c.root_poll_seconds),
        version,
    )
    .with_time(ChainTime::new(c.clock_drift_max_seconds))
    .with_wake(handle.root_wake());
    tokio::select! {
        _ = shutdown => {}
        _ = watcher.run(root_hooks(&handle), |_| {}) => {}
    }
    eprintln!("client: stopping");
    handle.shutdown().await;
    Ok(())
}
