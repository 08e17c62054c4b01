//! `cocoon worker`: serve a model to the network's proxies and earn for every token.
//!
//! Configuration is layered (see `config.rs`; the keys and their defaults are in
//! `defaults/worker.toml`, `cocoon worker --print-defaults`). The engine is the embedded
//! llama.cpp with a model from the model store (pulled if it is a known alias and missing)
//! or an OpenAI-compatible server (`--backend URL`). With a root contract (`--root`), the
//! worker connects to the proxies it registers and follows its prices, params and model
//! whitelist, reading it every `root_poll_seconds`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cocoon_engine::store::{self, ModelStore};
use cocoon_engine::{BackendKind, Engine, HttpEngine, HttpEngineConfig, Tokenizer};
use cocoon_openai::{Multipliers, PriceTable};
use cocoon_worker::{AdminConfig, PayoutSink, Timings, Worker, WorkerConfig};
use serde::Deserialize;

use crate::chain_cfg::{self, RootRead, TonSettings};
use crate::config::{ConfigError, Layers};
use crate::role;

/// The embedded defaults: every key `cocoon worker` knows.
pub const DEFAULTS: &str = include_str!("defaults/worker.toml");

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    common: role::CommonArgs,
    /// Model store alias/name/id or GGUF path (embedded), or the full model id (--backend).
    #[arg(long)]
    model: Option<String>,
    /// OpenAI-compatible inference server instead of the embedded engine.
    #[arg(long)]
    backend: Option<String>,
    /// Proxy address host:port (repeatable).
    #[arg(long = "proxy")]
    proxies: Vec<String>,
    /// Root contract address to follow.
    #[arg(long)]
    root: Option<String>,
    /// toncenter v2 API URL.
    #[arg(long)]
    ton: Option<String>,
    /// Earnings owner address.
    #[arg(long)]
    owner: Option<String>,
}

/// The worker's settings, as the defaults file declares them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub model: String,
    pub backend_url: String,
    pub backend_kind: String,
    pub backend_model: String,
    pub models_dir: String,
    pub slots: u32,
    pub ctx_per_slot: u32,
    pub threads: u32,
    pub gpu_layers: u32,
    pub proxies: Vec<String>,
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
    pub coefficient: u32,
    pub max_active_requests: u32,
    pub is_test: bool,
    pub tee: String,
    pub proxy_policy: String,
    pub check_proxy_hashes: bool,
    pub pccs_url: String,
    pub kds_url: String,
    pub pow_max_difficulty: u32,
    pub state_dir: String,
    pub admin_listen: String,
    pub admin_token_file: String,
    pub admin_allowed_origins: Vec<String>,
    pub admin_allowed_hosts: Vec<String>,
    pub price_per_token: u64,
    pub worker_fee_per_token: u64,
    pub min_payout_ton: String,
    pub wallet_key_file: String,
    pub wallet_version: String,
    pub log: String,
}

/// Defaults, file, `COCOON_WORKER_*`, then flags.
pub fn layers(args: &WorkerArgs, env: Vec<(String, String)>) -> Result<Layers, ConfigError> {
    let proxies = (!args.proxies.is_empty()).then(|| args.proxies.join(","));
    let flags = vec![
        ("model", args.model.clone(), "--model"),
        ("backend_url", args.backend.clone(), "--backend"),
        ("root_address", args.root.clone(), "--root"),
        ("ton_url", args.ton.clone(), "--ton"),
        ("owner_address", args.owner.clone(), "--owner"),
        ("proxies", proxies, "--proxy"),
    ];
    args.common.layers("worker", DEFAULTS, env, flags)
}

/// The chain endpoint settings.
fn ton(s: &WorkerSettings) -> TonSettings<'_> {
    TonSettings {
        url: &s.ton_url,
        urls: &s.ton_urls,
        key_file: &s.ton_api_key_file,
        key_files: &s.ton_api_key_files,
        quorum: s.ton_quorum,
    }
}

/// Checks what the types alone cannot, naming the key.
fn check(s: &WorkerSettings, l: &Layers) -> Result<(), ConfigError> {
    ton(s).check(l)?;
    chain_cfg::check_extra_ca(l, &s.extra_ca_file, s.extra_ca_in_tee, &s.tee)?;
    if s.tee == "none" {
        return Err(l.invalid("tee", "a worker must be attested (auto, tdx, sev-snp, sim)"));
    }
    if s.owner_address.is_empty() {
        return Err(l.invalid(
            "owner_address",
            "required: the TON address that owns this worker's earnings",
        ));
    }
    cocoon_ton::parse_address(&s.owner_address).map_err(|e| l.invalid("owner_address", e))?;
    if !s.root_address.is_empty() {
        cocoon_ton::parse_address(&s.root_address).map_err(|e| l.invalid("root_address", e))?;
    }
    if !s.backend_url.is_empty() {
        if !(s.backend_url.starts_with("http://") || s.backend_url.starts_with("https://")) {
            return Err(l.invalid("backend_url", "expected an http:// or https:// URL"));
        }
        if BackendKind::parse(&s.backend_kind).is_none() {
            return Err(l.invalid(
                "backend_kind",
                "one of vllm, sglang, llama-server, ollama, openai",
            ));
        }
        if cocoon_worker::config::model_base_name(&s.model).is_none() {
            return Err(l.invalid("model", "expected the full model id Name@revision:sha256"));
        }
    }
    if s.root_address.is_empty() && s.proxies.is_empty() {
        return Err(l.invalid(
            "proxies",
            "no proxy to connect to: give --proxy host:port or --root ADDRESS",
        ));
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
    if !s.is_test && !s.check_proxy_hashes {
        return Err(l.invalid(
            "check_proxy_hashes",
            "may be turned off on test networks only",
        ));
    }
    if s.worker_fee_per_token > s.price_per_token {
        return Err(l.invalid("worker_fee_per_token", "must not exceed price_per_token"));
    }
    cocoon_ton::parse_ton(&s.min_payout_ton).map_err(|e| l.invalid("min_payout_ton", e))?;
    if s.wallet_version
        .parse::<cocoon_ton::wallet::WalletVersion>()
        .is_err()
    {
        return Err(l.invalid("wallet_version", "v4r2 or v5r1"));
    }
    Ok(())
}

pub fn main(args: WorkerArgs) -> ExitCode {
    let layers = layers(&args, std::env::vars().collect());
    role::main_with(
        DEFAULTS,
        args.common.print_defaults,
        args.common.print_config,
        layers,
        check,
        |s: &WorkerSettings| s.log.clone(),
        run,
    )
}

fn models_dir(s: &WorkerSettings) -> PathBuf {
    if s.models_dir.is_empty() {
        crate::model_cmd::default_dir()
    } else {
        PathBuf::from(&s.models_dir)
    }
}

/// The engine, the model id announced to proxies, and a tokenizer for cut-short answers.
async fn engine(
    s: &WorkerSettings,
) -> Result<(Arc<dyn Engine>, String, Option<Arc<dyn Tokenizer>>), String> {
    if !s.backend_url.is_empty() {
        let kind = BackendKind::parse(&s.backend_kind).unwrap_or(BackendKind::OpenAi);
        let name = if s.backend_model.is_empty() {
            cocoon_worker::config::model_base_name(&s.model)
                .unwrap_or(&s.model)
                .to_owned()
        } else {
            s.backend_model.clone()
        };
        let mut cfg = HttpEngineConfig::new(&s.backend_url, kind, name);
        cfg.extra_roots = chain_cfg::extra_roots(&s.extra_ca_file)?;
        let e = HttpEngine::new(cfg).map_err(|e| format!("backend: {e}"))?;
        return Ok((Arc::new(e), s.model.clone(), None));
    }
    let (path, id, name) = if Path::new(&s.model).is_file() {
        let dir = models_dir(s);
        let st = ModelStore::open(&dir).map_err(|e| e.to_string())?;
        let stem = Path::new(&s.model)
            .file_stem()
            .and_then(|x| x.to_str())
            .unwrap_or("model")
            .to_owned();
        // A file the store already holds (its blob) keeps its recorded identity.
        let given = std::fs::canonicalize(&s.model).map_err(|e| format!("{}: {e}", s.model))?;
        let known = st
            .list()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|r| std::fs::canonicalize(st.path_of(r)).is_ok_and(|p| p == given));
        let rec = match known {
            Some(r) => r,
            None => st
                .add_file(Path::new(&s.model), &stem, "local", None)
                .map_err(|e| e.to_string())?,
        };
        (st.path_of(&rec), rec.id(), rec.name)
    } else {
        let dir = models_dir(s);
        let st = ModelStore::open(&dir).map_err(|e| e.to_string())?;
        let rec = match st.get(&s.model) {
            Ok(r) => r,
            Err(e) => match store::known(&s.model) {
                Some(k) => {
                    eprintln!("model {} is not in {}; pulling it", s.model, dir.display());
                    let mut progress = crate::model_cmd::progress_printer(false);
                    st.pull_known(k, None, &mut progress)
                        .await
                        .map_err(|e| e.to_string())?
                }
                None => return Err(e.to_string()),
            },
        };
        (st.path_of(&rec), rec.id(), rec.name)
    };
    let mut cfg = cocoon_llama::LlamaConfig::new(&path, &name);
    cfg.slots = s.slots.max(1);
    cfg.ctx_per_slot = s.ctx_per_slot;
    if s.threads > 0 {
        cfg.threads = s.threads;
    }
    cfg.gpu_layers = s.gpu_layers;
    let e = tokio::task::spawn_blocking(move || cocoon_llama::LlamaEngine::load(cfg))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    let tok = e.tokenizer();
    Ok((Arc::new(e), id, Some(tok)))
}

async fn run(s: WorkerSettings) -> Result<(), String> {
    let state_dir = role::state_dir(&s.state_dir, "worker")?;
    let extra_roots = chain_cfg::extra_roots(&s.extra_ca_file)?;
    let role::ProxyDialer { connector, tee } = role::proxy_dialer(
        &s.tee,
        &s.proxy_policy,
        s.is_test,
        role::Pccs {
            url: &s.pccs_url,
            extra_roots: &extra_roots,
        },
        &s.kds_url,
        s.pow_max_difficulty,
        &state_dir,
    )?;

    let (engine, model_id, tokenizer) = engine(&s).await?;
    let chain = ton(&s).chain(&extra_roots)?;
    let payout_sink: Option<Arc<dyn PayoutSink>> = if s.wallet_key_file.is_empty() {
        None
    } else {
        let key = cocoon_ton::keys::SigningKey::from_file(Path::new(&s.wallet_key_file))
            .map_err(|e| format!("wallet_key_file: {e}"))?;
        let version = s
            .wallet_version
            .parse::<cocoon_ton::wallet::WalletVersion>()
            .map_err(|e| e.to_string())?;
        let wallet = cocoon_ton::wallet::Wallet::new(version, key.public_key());
        let sender = cocoon_ton::wallet::WalletSender::new(chain.clone(), wallet, key)
            .map_err(|e| e.to_string())?;
        let sink = Arc::new(cocoon_worker::chain_sink::ChainPayoutSink::new(
            sender,
            cocoon_worker::chain_sink::DEFAULT_ATTACH_NANOTON,
        ));
        sink.spawn_ticker(Duration::from_secs(5));
        Some(sink)
    };
    let admin = if s.admin_listen.is_empty() {
        None
    } else {
        let token_file = role::admin_token_file(&s.admin_token_file, &state_dir)?;
        Some(AdminConfig {
            bind: s.admin_listen.parse().map_err(|_| "admin_listen")?,
            token_file: Some(token_file),
            allowed_origins: s.admin_allowed_origins.clone(),
            allowed_hosts: s.admin_allowed_hosts.clone(),
        })
    };
    let min_payout = cocoon_ton::parse_ton(&s.min_payout_ton).map_err(|e| e.to_string())?;
    let root = if s.root_address.is_empty() {
        None
    } else {
        Some(cocoon_ton::parse_address(&s.root_address).map_err(|e| e.to_string())?)
    };
    // With a root, its configuration is read first: proxies, prices and params come from it.
    let first_root = match &root {
        Some(r) => Some(chain_cfg::load_root_patiently(&chain, r, Duration::from_secs(30)).await?),
        None => None,
    };
    let prices = match &first_root {
        Some(c) => cocoon_worker::root::price_table(&c.params),
        None => PriceTable {
            price_per_token: s.price_per_token,
            worker_fee_per_token: s.worker_fee_per_token,
            multipliers: Multipliers::default(),
        },
    };
    let cfg = WorkerConfig {
        proxies: s.proxies.clone(),
        owner_address: s.owner_address.clone(),
        model: model_id.clone(),
        coefficient: s.coefficient,
        max_active_requests: s.max_active_requests,
        is_test: s.is_test,
        prices,
        min_payout_nanoton: u128::from(min_payout),
        state_dir: state_dir.clone(),
        engine,
        connector,
        admin,
        tokenizer,
        payout_sink,
        contract_params: None,
        // With a root, proxies are checked against it: image allowed, contract derived.
        root_address: root.clone(),
        check_proxy_hashes: s.check_proxy_hashes,
        timings: Timings::default(),
    };
    let handle = Worker::start(cfg).await.map_err(|e| e.to_string())?;
    eprintln!(
        "worker: model {model_id} (root model hash {}), tee {tee}, state {}",
        hex::encode(cocoon_ton::root::model_hash(&model_id).0),
        state_dir.display()
    );
    if let Some(a) = handle.admin_addr() {
        eprintln!("worker: admin http://{a}/stats");
    }
    if let Some(c) = &first_root {
        handle
            .apply_root_config(c, &s.proxies)
            .map_err(|e| e.to_string())?;
    }
    let poll = async {
        let Some(r) = &root else {
            return std::future::pending::<()>().await;
        };
        let every = Duration::from_secs(s.root_poll_seconds);
        loop {
            tokio::time::sleep(every).await;
            // Without agreement of the chain endpoints the configuration in use stays.
            if let RootRead::Agreed(c) = chain_cfg::poll_root(&chain, r).await
                && let Err(e) = handle.apply_root_config(&c, &s.proxies)
            {
                tracing::error!(error = %e, "root configuration refused");
            }
        }
    };
    tokio::select! {
        _ = role::stop_signal() => {}
        _ = poll => {}
    }
    eprintln!("worker: stopping (running requests may finish)");
    handle.shutdown().await;
    Ok(())
}
