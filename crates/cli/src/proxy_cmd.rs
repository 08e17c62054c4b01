//! `cocoon proxy`: admit attested workers, route clients' requests to them, meter every
//! token in a durable ledger and settle on chain.
//!
//! Configuration is layered like the worker's (`defaults/proxy.toml`, `cocoon proxy
//! --print-defaults`). The proxy reads the root contract (required) for the image and model
//! whitelists, prices and params, and re-reads it every `root_poll_seconds`. Its books are
//! `<state_dir>/ledger.sqlite`; with a wallet it deploys its proxy contract if needed, sends
//! `save_state` checkpoints, and submits clients' charges and workers' payouts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cocoon_ledger::{OpenError, SqliteStore};
use cocoon_proxy::{
    AdminConfig, CheckpointChain, LedgerMeter, Proxy, ProxyConfig, RouterConfig, SettlementConfig,
    Timings, TonCheckpointChain, TonClientChain,
};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::wallet::{OutMsg, Wallet, WalletSender, WalletVersion};
use cocoon_ton::{HashBytes, StdAddr};
use serde::Deserialize;

use crate::chain_cfg::{self, RootRead, Ton, TonSettings};
use crate::config::{ConfigError, Layers};
use crate::role;

/// The embedded defaults: every key `cocoon proxy` knows.
pub const DEFAULTS: &str = include_str!("defaults/proxy.toml");

#[derive(Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    common: role::CommonArgs,
    /// Where workers connect (ip:port).
    #[arg(long)]
    worker_listen: Option<String>,
    /// Where clients connect (ip:port).
    #[arg(long)]
    client_listen: Option<String>,
    /// Root contract address.
    #[arg(long)]
    root: Option<String>,
    /// toncenter v2 API URL.
    #[arg(long)]
    ton: Option<String>,
    /// Owner address of the proxy (its contract and commission).
    #[arg(long)]
    owner: Option<String>,
}

/// The proxy's settings, as the defaults file declares them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    pub worker_listen: String,
    pub client_listen: String,
    pub root_address: String,
    pub ton_url: String,
    pub ton_urls: Vec<String>,
    pub ton_api_key_file: String,
    pub ton_api_key_files: Vec<String>,
    pub ton_quorum: u32,
    pub extra_ca_file: String,
    pub extra_ca_in_tee: bool,
    pub root_poll_seconds: u64,
    pub owner_address: String,
    pub proxy_key_file: String,
    pub wallet_key_file: String,
    pub wallet_version: String,
    pub stake_ton: String,
    pub is_test: bool,
    pub tee: String,
    pub worker_policy: String,
    pub client_policy: String,
    pub allow_unattested_clients: bool,
    pub pccs_url: String,
    pub kds_url: String,
    pub pow_difficulty: u32,
    pub checkpoint_seconds: u64,
    pub client_watch_seconds: u64,
    pub max_requests_per_session: usize,
    pub min_client_charge_ton: String,
    pub min_worker_payout_ton: String,
    pub state_dir: String,
    pub admin_listen: String,
    pub admin_token_file: String,
    pub admin_allowed_origins: Vec<String>,
    pub admin_allowed_hosts: Vec<String>,
    pub log: String,
}

/// Defaults, file, `COCOON_PROXY_*`, then flags.
pub fn layers(args: &ProxyArgs, env: Vec<(String, String)>) -> Result<Layers, ConfigError> {
    let flags = vec![
        (
            "worker_listen",
            args.worker_listen.clone(),
            "--worker-listen",
        ),
        (
            "client_listen",
            args.client_listen.clone(),
            "--client-listen",
        ),
        ("root_address", args.root.clone(), "--root"),
        ("ton_url", args.ton.clone(), "--ton"),
        ("owner_address", args.owner.clone(), "--owner"),
    ];
    args.common.layers("proxy", DEFAULTS, env, flags)
}

/// The chain endpoint settings.
fn ton(s: &ProxySettings) -> TonSettings<'_> {
    TonSettings {
        url: &s.ton_url,
        urls: &s.ton_urls,
        key_file: &s.ton_api_key_file,
        key_files: &s.ton_api_key_files,
        quorum: s.ton_quorum,
    }
}

/// Checks what the types alone cannot, naming the key.
fn check(s: &ProxySettings, l: &Layers) -> Result<(), ConfigError> {
    ton(s).check(l)?;
    chain_cfg::check_extra_ca(l, &s.extra_ca_file, s.extra_ca_in_tee, &s.tee)?;
    for key in ["owner_address", "root_address"] {
        let v = if key == "owner_address" {
            &s.owner_address
        } else {
            &s.root_address
        };
        if v.is_empty() {
            return Err(l.invalid(key, "required"));
        }
        cocoon_ton::parse_address(v).map_err(|e| l.invalid(key, e))?;
    }
    for (key, v) in [
        ("worker_listen", &s.worker_listen),
        ("client_listen", &s.client_listen),
    ] {
        if v.parse::<std::net::SocketAddr>().is_err() {
            return Err(l.invalid(key, "expected ip:port"));
        }
    }
    if !s.admin_listen.is_empty() && s.admin_listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(l.invalid("admin_listen", "expected ip:port"));
    }
    role::check_browser_allowlist(
        l,
        &s.admin_allowed_origins,
        &s.admin_allowed_hosts,
        "admin_",
    )?;
    if s.root_poll_seconds == 0 {
        return Err(l.invalid("root_poll_seconds", "must be positive"));
    }
    if s.checkpoint_seconds == 0 {
        return Err(l.invalid("checkpoint_seconds", "must be positive"));
    }
    if s.client_watch_seconds == 0 {
        return Err(l.invalid("client_watch_seconds", "must be positive"));
    }
    if s.max_requests_per_session == 0 {
        return Err(l.invalid("max_requests_per_session", "must be positive"));
    }
    if s.tee == "none" {
        return Err(l.invalid("tee", "a proxy must be attested (auto, tdx, sev-snp, sim)"));
    }
    if s.pow_difficulty > 40 {
        return Err(l.invalid("pow_difficulty", "at most 40 bits"));
    }
    for key in [
        "stake_ton",
        "min_client_charge_ton",
        "min_worker_payout_ton",
    ] {
        let v = match key {
            "stake_ton" => &s.stake_ton,
            "min_client_charge_ton" => &s.min_client_charge_ton,
            _ => &s.min_worker_payout_ton,
        };
        cocoon_ton::parse_ton(v).map_err(|e| l.invalid(key, e))?;
    }
    if s.wallet_version.parse::<WalletVersion>().is_err() {
        return Err(l.invalid("wallet_version", "v4r2 or v5r1"));
    }
    if s.wallet_key_file.is_empty() && !s.is_test {
        return Err(l.invalid(
            "wallet_key_file",
            "required outside test networks: checkpoints, charges and payouts are sent from it",
        ));
    }
    Ok(())
}

pub fn main(args: ProxyArgs) -> ExitCode {
    let layers = layers(&args, std::env::vars().collect());
    role::main_with(
        DEFAULTS,
        args.common.print_defaults,
        args.common.print_config,
        layers,
        check,
        |s: &ProxySettings| s.log.clone(),
        run,
    )
}

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

fn wallet_sender(s: &ProxySettings, chain: &Ton) -> Result<WalletSender<Ton>, String> {
    let key = SigningKey::from_file(Path::new(&s.wallet_key_file))
        .map_err(|e| format!("wallet_key_file: {e}"))?;
    let version = s
        .wallet_version
        .parse::<WalletVersion>()
        .map_err(|e| e.to_string())?;
    let wallet = Wallet::new(version, key.public_key());
    WalletSender::new(chain.clone(), wallet, key).map_err(|e| e.to_string())
}

/// Deploys the proxy contract with its stake when it is not active yet.
async fn ensure_deployed(
    s: &ProxySettings,
    sender: &mut WalletSender<Ton>,
    contract: &cocoon_ton::contracts::Deployable,
) -> Result<(), String> {
    use cocoon_ton::chain::{AccountStatus, Chain};
    use cocoon_ton::codec::{Coins, Layout};
    let st = sender
        .chain()
        .account_state(&contract.address)
        .await
        .map_err(|e| format!("proxy contract: {e}"))?;
    if st.status == AccountStatus::Active {
        return Ok(());
    }
    let stake = cocoon_ton::parse_ton(&s.stake_ton).map_err(|e| e.to_string())?;
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
        "proxy: deploying the proxy contract {} with {} TON stake",
        contract.address, s.stake_ton
    );
    for _ in 0..60 {
        sender
            .tick(now_unix())
            .await
            .map_err(|e| format!("deploying the proxy contract: {e}"))?;
        let st = sender
            .chain()
            .account_state(&contract.address)
            .await
            .map_err(|e| format!("proxy contract: {e}"))?;
        if st.status == AccountStatus::Active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err("the proxy contract did not become active within 60 s".into())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn run(s: ProxySettings) -> Result<(), String> {
    let state_dir = role::state_dir(&s.state_dir, "proxy")?;
    let extra_roots = chain_cfg::extra_roots(&s.extra_ca_file)?;
    let role::RoleIdentity {
        resolver,
        source,
        tee,
    } = role::identity(&s.tee, s.is_test, &state_dir)?;
    let _refresh = role::spawn_identity_refresh(&resolver, source);
    let worker_verifier = role::peer_verifier(
        &s.worker_policy,
        s.is_test,
        role::Pccs {
            url: &s.pccs_url,
            extra_roots: &extra_roots,
        },
        &s.kds_url,
        &state_dir,
    )?;
    let client_verifier = role::peer_verifier_with(
        &s.client_policy,
        s.is_test,
        role::Pccs {
            url: &s.pccs_url,
            extra_roots: &extra_roots,
        },
        &s.kds_url,
        &state_dir,
        s.allow_unattested_clients,
    )?;
    let chain = ton(&s).chain(&extra_roots)?;
    let root_addr = cocoon_ton::parse_address(&s.root_address).map_err(|e| e.to_string())?;
    let owner = cocoon_ton::parse_address(&s.owner_address).map_err(|e| e.to_string())?;
    let root = chain_cfg::load_root_patiently(&chain, &root_addr, Duration::from_secs(30)).await?;
    let key = Arc::new(proxy_key(&s.proxy_key_file, &state_dir)?);
    let contract = cocoon_ton::contracts::proxy_contract(
        &root.params,
        &owner,
        &HashBytes(key.public_key()),
        &root_addr,
    )
    .map_err(|e| format!("proxy contract: {e}"))?;
    let proxy_sc: StdAddr = contract.address.clone();

    // Settlement chain: the operator's wallet, or none (test networks only).
    let checkpoints: Option<Arc<TonCheckpointChain<Ton>>> = if s.wallet_key_file.is_empty() {
        eprintln!(
            "proxy: no wallet_key_file: no checkpoints, receipts stay empty (test network only)"
        );
        None
    } else {
        let mut sender = wallet_sender(&s, &chain)?;
        ensure_deployed(&s, &mut sender, &contract).await?;
        Some(Arc::new(TonCheckpointChain::new(sender, proxy_sc.clone())))
    };
    let store =
        SqliteStore::open(&state_dir.join("ledger.sqlite")).map_err(|e| format!("ledger: {e}"))?;
    let none = cocoon_proxy::MemoryChain::new();
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
    let admin = if s.admin_listen.is_empty() {
        None
    } else {
        Some(AdminConfig {
            bind: s.admin_listen.parse().map_err(|_| "admin_listen")?,
            token_file: Some(role::admin_token_file(&s.admin_token_file, &state_dir)?),
            allowed_origins: s.admin_allowed_origins.clone(),
            allowed_hosts: s.admin_allowed_hosts.clone(),
        })
    };
    let cfg = ProxyConfig {
        worker_listen: s.worker_listen.parse().map_err(|_| "worker_listen")?,
        client_listen: s.client_listen.parse().map_err(|_| "client_listen")?,
        certs: resolver,
        worker_verifier,
        client_verifier,
        pow_difficulty: s.pow_difficulty,
        is_test: s.is_test,
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
        "proxy: contract {proxy_sc}, workers on {}, clients on {}, tee {tee}, state {}",
        handle.worker_addr(),
        handle.client_addr(),
        state_dir.display()
    );
    if let Some(a) = handle.admin_addr() {
        eprintln!("proxy: admin http://{a}/stats");
    }
    let settle = match &checkpoints {
        Some(c) => {
            let cfg = SettlementConfig {
                interval: Duration::from_secs(s.checkpoint_seconds),
                resend_after: Duration::from_secs(s.checkpoint_seconds * 4),
                min_client_charge: u128::from(
                    cocoon_ton::parse_ton(&s.min_client_charge_ton).map_err(|e| e.to_string())?,
                ),
                min_worker_payout: u128::from(
                    cocoon_ton::parse_ton(&s.min_worker_payout_ton).map_err(|e| e.to_string())?,
                ),
                ..SettlementConfig::default()
            };
            let c2 = Arc::clone(c);
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if let Err(e) = c2.tick().await {
                        tracing::warn!(error = %e, "proxy wallet tick failed");
                    }
                }
            });
            let chain: Arc<dyn CheckpointChain> = c.clone();
            Some((
                tokio::spawn(meter.clone().run_settlement(chain, cfg)),
                ticker,
            ))
        }
        None => None,
    };
    let poll = async {
        let every = Duration::from_secs(s.root_poll_seconds);
        loop {
            tokio::time::sleep(every).await;
            // A disagreement of the chain endpoints keeps the configuration in use (an operator
            // event, logged by `poll_root` and counted in the stats' `ton_disagreements`); only
            // an agreed, newer one is applied.
            match chain_cfg::poll_root(&chain, &root_addr).await {
                RootRead::Agreed(c) if c.version > handle.stats().root_version => {
                    let c = *c;
                    // New params: the ledger closes the old contracts' accounts first.
                    if let Err(e) = meter.change_params(&c).await {
                        tracing::error!(error = %e, "ledger refused the new params");
                        continue;
                    }
                    if let Err(e) = handle.update_root(c) {
                        tracing::error!(error = %e, "root configuration refused");
                    }
                }
                RootRead::NoQuorum => handle.operator_event(
                    "ton_no_quorum",
                    &root_addr.to_string(),
                    "the chain endpoints do not agree on the root configuration; keeping the last agreed one",
                ),
                RootRead::Agreed(_) | RootRead::Failed => {}
            }
        }
    };
    tokio::select! {
        _ = role::stop_signal() => {}
        _ = poll => {}
    }
    eprintln!("proxy: stopping");
    if let Some((a, b)) = settle {
        a.abort();
        b.abort();
    }
    handle.shutdown().await;
    Ok(())
}
