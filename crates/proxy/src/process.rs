//! The whole `cocoon proxy` process: its key and RA-TLS identity, the verifiers of workers
//! and clients, the chain endpoints, the proxy contract (deployed with its stake when the
//! operator's wallet is configured), the ledger on SQLite, the settlement and wallet tasks,
//! the root watcher and the network side. The command line only parses settings and calls
//! [`run`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cocoon_ledger::{OpenError, SqliteStore};
use cocoon_service::chain::{RootHook, RootWatcher, Ton, load_root_patiently};
use cocoon_service::identity::{self, PeerVerification, RoleIdentity};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::root::RootConfig;
use cocoon_ton::wallet::{OutMsg, WalletSender};
use cocoon_ton::{HashBytes, StdAddr};

use crate::settings::Settings;
use crate::{
    CheckpointChain, LedgerMeter, MemoryChain, Proxy, ProxyConfig, ProxyHandle, RouterConfig,
    SettlementConfig, Timings, TonCheckpointChain, TonClientChain,
};

/// The proxy key: read, or created (0600) when missing.
fn proxy_key(configured: &str, state_dir: &Path) -> Result<SigningKey, String> {
    let path = if configured.is_empty() {
        state_dir.join("proxy-key")
    } else {
        PathBuf::from(configured)
    };
    if !path.exists() {
        let k = SigningKey::generate().map_err(|e| e.to_string())?;
        k.write_new_file(&path)
            .map_err(|e| format!("proxy_key_file {}: {e}", path.display()))?;
        eprintln!("proxy: new proxy key in {}", path.display());
    }
    SigningKey::from_file(&path).map_err(|e| format!("proxy_key_file {}: {e}", path.display()))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether the proxy contract at `a` is active.
async fn is_active(chain: &Ton, a: &StdAddr) -> Result<bool, String> {
    use cocoon_ton::chain::{AccountStatus, Chain};
    let st = chain
        .account_state(a)
        .await
        .map_err(|e| format!("proxy contract: {e}"))?;
    Ok(st.status == AccountStatus::Active)
}

/// Deploys the proxy contract with its stake when it is not active yet.
async fn ensure_deployed(
    stake_ton: &str,
    sender: &mut WalletSender<Ton>,
    contract: &cocoon_ton::contracts::Deployable,
) -> Result<(), String> {
    use cocoon_ton::codec::{Coins, Layout};
    if is_active(sender.chain(), &contract.address).await? {
        return Ok(());
    }
    let stake = cocoon_ton::parse_ton(stake_ton).map_err(|e| e.to_string())?;
    let body = cocoon_ton::messages::ExtProxyIncreaseStake {
        query_id: 1,
        amount: Coins(stake),
        send_excesses_to: sender.address().clone(),
    }
    .to_cell()
    .map_err(|e| e.to_string())?;
    let init = contract.state_init().map_err(|e| e.to_string())?;
    // Stake plus 0.1 TON for the deployment's fees; the excess comes back.
    sender.enqueue(OutMsg::deploy(
        contract.address.clone(),
        stake + 100_000_000,
        init,
        Some(body),
    ));
    eprintln!(
        "proxy: deploying the proxy contract {} with {stake_ton} TON stake",
        contract.address
    );
    for _ in 0..60 {
        sender
            .tick(now_unix())
            .await
            .map_err(|e| format!("deploying the proxy contract: {e}"))?;
        if is_active(sender.chain(), &contract.address).await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err("the proxy contract did not become active within 60 s".into())
}

/// The proxy's steps on a newer root configuration, in order: the ledger moves to the new
/// params first (the accounts of the old contracts close, durably), and only then does the
/// network side apply it (a `params_version` change ends the sessions, whose peers come
/// back under the new contracts). If the ledger refuses, the network keeps the old
/// configuration and the watcher tries again.
pub fn root_hooks<'a>(meter: &'a LedgerMeter, handle: &'a ProxyHandle) -> Vec<RootHook<'a>> {
    vec![
        Box::new(move |c: RootConfig| {
            Box::pin(async move {
                meter
                    .change_params(&c)
                    .await
                    .map_err(|e| format!("ledger refused the new params: {e}"))
            })
        }),
        Box::new(move |c: RootConfig| {
            Box::pin(async move { handle.update_root(c).map_err(|e| e.to_string()) })
        }),
    ]
}

/// Runs a proxy until `shutdown` resolves.
pub async fn run(s: Settings, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let c = &s.common;
    let start = c.start("proxy")?;
    let state_dir = &start.state_dir;
    let RoleIdentity {
        resolver,
        source,
        tee,
    } = identity::identity(c.tee().map_err(|e| e.to_string())?, c.is_test, state_dir)?;
    let _refresh = identity::spawn_identity_refresh(&resolver, source);
    let workers = c.verification(&s.worker_policy, &start);
    let worker_verifier = identity::peer_verifier(workers)?;
    let client_verifier = identity::peer_verifier(PeerVerification {
        policy: &s.client_policy,
        allow_unattested: s.allow_unattested_clients,
        ..workers
    })?;
    // The endpoints were checked with the settings; here only their clients are built.
    let chain = c.chain(&start)?;
    let root_addr = cocoon_ton::parse_address(&c.root_address).map_err(|e| e.to_string())?;
    let owner = cocoon_ton::parse_address(&c.owner_address).map_err(|e| e.to_string())?;
    let root = load_root_patiently(&chain, &root_addr, Duration::from_secs(30)).await?;
    let key = Arc::new(proxy_key(&s.proxy_key_file, state_dir)?);
    let contract = cocoon_ton::contracts::proxy_contract(
        &root.params,
        &owner,
        &HashBytes(key.public_key()),
        &root_addr,
    )
    .map_err(|e| format!("proxy contract: {e}"))?;
    let proxy_sc: StdAddr = contract.address.clone();

    // Settlement chain: the operator's wallet, or none (test networks only).
    let checkpoints: Option<Arc<TonCheckpointChain<Ton>>> = match c.wallet()? {
        None => {
            eprintln!(
                "proxy: no wallet_key_file: no checkpoints, receipts stay empty (test network only)"
            );
            None
        }
        Some((wallet, key)) => {
            let mut sender =
                WalletSender::new(chain.clone(), wallet, key).map_err(|e| e.to_string())?;
            ensure_deployed(&s.stake_ton, &mut sender, &contract).await?;
            Some(Arc::new(TonCheckpointChain::new(sender, proxy_sc.clone())))
        }
    };
    let store =
        SqliteStore::open(&state_dir.join("ledger.sqlite")).map_err(|e| format!("ledger: {e}"))?;
    let none = MemoryChain::new();
    let cp: &dyn CheckpointChain = match &checkpoints {
        Some(c) => &**c,
        None => &none,
    };
    let meter = LedgerMeter::open_for_root(store, key.clone(), owner.clone(), &root, cp)
        .await
        .map_err(|e| match e {
            OpenError::RolledBack { .. } | OpenError::ChainBehind { .. } => format!(
                "ledger {}: {e}. The database is older than what the chain shows (restored \
                 from a backup, or another proxy uses this key); refusing to run on it.",
                state_dir.join("ledger.sqlite").display()
            ),
            other => format!("ledger: {other}"),
        })?;
    let clients = Arc::new(
        TonClientChain::new(chain.clone(), proxy_sc.clone(), Duration::from_secs(2))
            .await
            .map_err(|e| e.to_string())?,
    );
    let admin = s.admin.config(state_dir)?;
    let cfg = ProxyConfig {
        worker_listen: s.worker_listen.parse().map_err(|_| "worker_listen")?,
        client_listen: s.client_listen.parse().map_err(|_| "client_listen")?,
        certs: resolver,
        worker_verifier,
        client_verifier,
        pow_difficulty: s.pow_difficulty,
        is_test: c.is_test,
        root: root.clone(),
        signing_key: key.clone(),
        owner_address: owner,
        proxy_sc: proxy_sc.clone(),
        meter: meter.clone(),
        chain: clients,
        admin,
        router: RouterConfig::default(),
        timings: Timings {
            client_watch_interval: Some(Duration::from_secs(s.client_watch_seconds)),
            max_session_requests: s.max_requests_per_session,
            ..Timings::default()
        },
        net: cocoon_net::Config::default(),
    };
    let handle = Proxy::start(cfg).await.map_err(|e| e.to_string())?;
    eprintln!(
        "proxy: contract {proxy_sc}, workers on {}, clients on {}, tee {}, state {}",
        handle.worker_addr(),
        handle.client_addr(),
        tee.name(),
        state_dir.display()
    );
    if let Some(a) = handle.admin_addr() {
        eprintln!("proxy: admin http://{a}/stats");
    }
    let mut tasks = Vec::new();
    if let Some(c) = &checkpoints {
        let cfg = SettlementConfig {
            interval: Duration::from_secs(s.checkpoint_seconds),
            resend_after: Duration::from_secs(s.checkpoint_seconds * 4),
            min_client_charge: u128::from(
                cocoon_ton::parse_ton(&s.min_client_charge_ton).map_err(|e| e.to_string())?,
            ),
            min_worker_payout: u128::from(
                cocoon_ton::parse_ton(&s.min_worker_payout_ton).map_err(|e| e.to_string())?,
            ),
            auto_withdraw_above: u128::from(
                cocoon_ton::parse_ton(&s.auto_withdraw_ton).map_err(|e| e.to_string())?,
            ),
            ..SettlementConfig::default()
        };
        let c2 = Arc::clone(c);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Err(e) = c2.tick().await {
                    tracing::warn!(error = %e, "proxy wallet tick failed");
                }
            }
        }));
        let chain: Arc<dyn CheckpointChain> = c.clone();
        tasks.push(tokio::spawn(meter.clone().run_settlement(chain, cfg)));
    }
    let watcher = RootWatcher::new(
        chain.clone(),
        root_addr.clone(),
        Duration::from_secs(c.root_poll_seconds),
        root.version,
    );
    let root_name = root_addr.to_string();
    let watch = watcher.run(root_hooks(&meter, &handle), || {
        handle.operator_event(
            "ton_no_quorum",
            &root_name,
            "the chain endpoints do not agree on the root configuration; keeping the last agreed one",
        );
    });
    tokio::select! {
        _ = shutdown => {}
        _ = watch => {}
    }
    eprintln!("proxy: stopping");
    for t in tasks {
        t.abort();
    }
    handle.shutdown().await;
    Ok(())
}
