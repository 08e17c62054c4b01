//! The whole `cocoon worker` process: its RA-TLS identity and proxy verification, the engine
//! (the embedded llama.cpp with a model from the store, or an OpenAI-compatible server), the
//! chain endpoints and the root it follows, its payout wallet, the admin server. The command
//! line only parses settings and calls [`run`].

use std::future::Future;
#[cfg(feature = "embedded")]
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cocoon_engine::{BackendKind, Engine, HttpEngine, HttpEngineConfig, Tokenizer};
use cocoon_openai::{Multipliers, PriceTable};
use cocoon_service::chain::{
    ChainTime, RootHook, RootWatcher, WatchEvent, drift_event, extra_roots, load_root_patiently,
};
use cocoon_service::identity::ProxyDialer;
use cocoon_ton::root::RootConfig;

use crate::settings::Settings;
use crate::{PayoutSink, Timings, Worker, WorkerConfig, WorkerHandle};

/// An engine ready to serve: the engine, the model id announced to proxies, and a tokenizer
/// for answers cut short (embedded engine only).
pub(crate) type LoadedEngine = (Arc<dyn Engine>, String, Option<Arc<dyn Tokenizer>>);

/// The engine the settings name: `backend_url` (an OpenAI-compatible server), else the
/// embedded llama.cpp with `model` from the store (pulled first when it is a known alias that
/// is missing) or a GGUF file (added to the store).
pub(crate) async fn engine(s: &Settings) -> Result<LoadedEngine, String> {
    if !s.backend_url.is_empty() {
        let kind = BackendKind::parse(&s.backend_kind).unwrap_or(BackendKind::OpenAi);
        let name = if s.backend_model.is_empty() {
            crate::config::model_base_name(&s.model)
                .unwrap_or(&s.model)
                .to_owned()
        } else {
            s.backend_model.clone()
        };
        let mut cfg = HttpEngineConfig::new(&s.backend_url, kind, name);
        cfg.extra_roots = extra_roots(&s.common.extra_ca_file)?;
        let e = HttpEngine::new(cfg).map_err(|e| format!("backend: {e}"))?;
        return Ok((Arc::new(e), s.model.clone(), None));
    }
    embedded(s).await
}

#[cfg(feature = "embedded")]
async fn embedded(s: &Settings) -> Result<LoadedEngine, String> {
    use cocoon_engine::store::{self, ModelStore};
    let dir = if s.models_dir.is_empty() {
        store::default_dir()
    } else {
        PathBuf::from(&s.models_dir)
    };
    let st = ModelStore::open(&dir).map_err(|e| e.to_string())?;
    let (path, id, name, sha256) = if Path::new(&s.model).is_file() {
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
        (st.path_of(&rec), rec.id(), rec.name, rec.sha256)
    } else {
        let rec = match st.get(&s.model) {
            Ok(r) => r,
            Err(e) => match store::known(&s.model) {
                Some(k) => {
                    eprintln!("model {} is not in {}; pulling it", s.model, dir.display());
                    let mut progress = store::progress_printer(false);
                    st.pull_known(k, None, &mut progress)
                        .await
                        .map_err(|e| e.to_string())?
                }
                None => return Err(e.to_string()),
            },
        };
        (st.path_of(&rec), rec.id(), rec.name, rec.sha256)
    };
    let mut cfg = cocoon_llama::LlamaConfig::new(&path, &name);
    // The file must still be the one the model id names (its store blob may have been
    // changed on disk since it was pulled); what loads is what the proxy admits.
    cfg.expected_sha256 = Some(sha256);
    cfg.slots = s.slots.max(1);
    cfg.ctx_per_slot = s.ctx_per_slot;
    if s.threads > 0 {
        cfg.threads = s.threads;
    }
    cfg.gpu_layers = s.gpu_layers;
    cfg.serve = match s.embeddings.as_str() {
        "on" => cocoon_llama::Serve::GenerateAndEmbed,
        "only" => cocoon_llama::Serve::Embed,
        _ => cocoon_llama::Serve::Generate,
    };
    let e = tokio::task::spawn_blocking(move || cocoon_llama::LlamaEngine::load(cfg))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    let tok = e.tokenizer();
    Ok((Arc::new(e), id, Some(tok)))
}

#[cfg(not(feature = "embedded"))]
async fn embedded(s: &Settings) -> Result<LoadedEngine, String> {
    Err(format!(
        "this build has no embedded engine for {} (cocoon-worker's `embedded` feature); set \
         backend_url",
        s.model
    ))
}

/// What the worker makes of its root watcher's events: operator events `clock_drift` and
/// `clock_agrees` (judged with `time`'s tolerance).
pub fn watch_events<'a>(handle: &'a WorkerHandle, time: &ChainTime) -> impl FnMut(WatchEvent) + 'a {
    let max = time.max_drift_secs();
    move |e| {
        if let WatchEvent::Clock(d) = e {
            let (kind, detail) = drift_event(d, max);
            handle.operator_event(kind, &detail);
        }
    }
}

/// The worker's step on a newer root configuration: proxies, prices, params and the model
/// whitelist follow it (see [`WorkerHandle::update_root`]).
pub(crate) fn root_hooks<'a>(handle: &'a WorkerHandle, proxies: &'a [String]) -> Vec<RootHook<'a>> {
    vec![Box::new(move |c: RootConfig| {
        Box::pin(async move {
            handle
                .update_root(&c, proxies)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })]
}

/// Runs a worker until `shutdown` resolves.
pub async fn run(s: Settings, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let c = &s.common;
    let start = c.start("worker")?;
    let state_dir = &start.state_dir;
    let gpu = s.gpu_source().map_err(|e| e.to_string())?;
    let ProxyDialer { connector, tee } =
        c.proxy_dialer_with_gpu(&s.proxy_policy, s.pow_max_difficulty, &start, gpu)?;
    let (engine, model_id, tokenizer) = engine(&s).await?;
    let chain = c.chain(&start)?;
    let wallet = if s.kms.is_empty() {
        c.wallet()?
    } else {
        use cocoon_service::kms::{KmsRole, Purpose, role_keys};
        let keys = role_keys(
            c,
            &start,
            s.kms_client(),
            KmsRole::Worker,
            &[Purpose::Wallet],
        )
        .await?;
        let seed = keys.first().ok_or("the kms sent no key")?;
        let key = cocoon_ton::keys::SigningKey::from_seed(&seed.0).map_err(|e| e.to_string())?;
        let (wallet, key) = c.wallet_of(key)?;
        let address = wallet.address().map_err(|e| e.to_string())?;
        eprintln!("worker: wallet key from kms {}: wallet {address}", s.kms);
        Some((wallet, key))
    };
    // The wallet's resend ticker, stopped with the worker.
    let mut ticker = None;
    let payout_sink: Option<Arc<dyn PayoutSink>> = match wallet {
        None => None,
        Some((wallet, key)) => {
            let sender = cocoon_ton::wallet::WalletSender::new(chain.clone(), wallet, key)
                .map_err(|e| e.to_string())?;
            let deploy =
                cocoon_ton::parse_ton(&s.contract_deploy_ton).map_err(|e| e.to_string())?;
            let sink = Arc::new(
                crate::chain_sink::ChainPayoutSink::new(
                    sender,
                    crate::chain_sink::DEFAULT_ATTACH_NANOTON,
                )
                .with_deploy_value(deploy),
            );
            ticker = Some(sink.spawn_ticker(Duration::from_secs(5)));
            Some(sink)
        }
    };
    let admin = s.admin.config(state_dir)?;
    let min_payout = cocoon_ton::parse_ton(&s.min_payout_ton).map_err(|e| e.to_string())?;
    let root = if c.root_address.is_empty() {
        None
    } else {
        Some(cocoon_ton::parse_address(&c.root_address).map_err(|e| e.to_string())?)
    };
    // With a root, its configuration is read first: proxies, prices and params come from it.
    let first_root = match &root {
        Some(r) => Some(load_root_patiently(&chain, r, Duration::from_secs(30)).await?),
        None => None,
    };
    let prices = match &first_root {
        Some(c) => crate::root::price_table(&c.params),
        None => PriceTable {
            price_per_token: s.price_per_token,
            worker_fee_per_token: s.worker_fee_per_token,
            multipliers: Multipliers::default(),
        },
    };
    let cfg = WorkerConfig {
        proxies: s.proxies.clone(),
        owner_address: c.owner_address.clone(),
        model: model_id.clone(),
        coefficient: s.coefficient,
        max_active_requests: s.max_active_requests,
        is_test: c.is_test,
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
        "worker: model {model_id} (root model hash {}), tee {}, state {}",
        hex::encode(cocoon_ton::root::model_hash(&model_id).0),
        tee.name(),
        state_dir.display()
    );
    if let Some(a) = handle.admin_addr() {
        eprintln!("worker: admin http://{a}/stats");
    }
    if let Some(c) = &first_root {
        handle
            .update_root(c, &s.proxies)
            .map_err(|e| e.to_string())?;
    }
    let bound: Vec<_> = handle
        .admin_addr()
        .map(|a| ("admin_listen", a))
        .into_iter()
        .collect();
    cocoon_service::process::write_ready_file(&c.ready_file, &bound)?;
    let watch = async {
        let (Some(r), Some(first)) = (&root, &first_root) else {
            return std::future::pending::<()>().await;
        };
        let time = ChainTime::new(c.clock_drift_max_seconds);
        handle.follow_chain_time(time.clone());
        let watcher = RootWatcher::new(
            chain.clone(),
            r.clone(),
            Duration::from_secs(c.root_poll_seconds),
            first.version,
        )
        .with_time(time.clone())
        .with_wake(handle.root_wake());
        watcher
            .run(
                root_hooks(&handle, &s.proxies),
                watch_events(&handle, &time),
            )
            .await;
    };
    tokio::select! {
        _ = shutdown => {}
        _ = watch => {}
    }
    eprintln!("worker: stopping (running requests may finish)");
    handle.shutdown().await;
    if let Some(t) = ticker {
        t.abort();
    }
    Ok(())
}
