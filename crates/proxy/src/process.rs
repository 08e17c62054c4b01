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
use cocoon_service::chain::{
    ChainTime, RootHook, RootWatcher, Ton, WatchEvent, drift_event, load_root_patiently,
};
use cocoon_service::identity::{self, PeerVerification, RoleIdentity};
use cocoon_ton::chain::Chain;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::root::RootConfig;
use cocoon_ton::wallet::{OutMsg, WalletSender};
use cocoon_ton::{HashBytes, StdAddr};

use crate::contract_switch::{
    ChildOnChain, ContractBook, ContractIdentity, ContractRecord, OldProxyOnChain, RetireFacts,
    RetireStep, SwitchPlan, account_settled, plan, retire_step,
};
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

/// The proxy key and the wallet released by the KMS of `kms`, bound to `owner_address`;
/// held in memory only.
async fn kms_keys(
    s: &Settings,
    start: &cocoon_service::setting::Start,
) -> Result<(SigningKey, Option<(cocoon_ton::wallet::Wallet, SigningKey)>), String> {
    use cocoon_service::kms::{KmsRole, Purpose, role_keys};
    let c = &s.common;
    let keys = role_keys(
        c,
        start,
        s.kms_client(),
        KmsRole::Proxy,
        &[Purpose::Signing, Purpose::Wallet],
    )
    .await?;
    let [signing, wallet] = keys.as_slice() else {
        return Err("the kms sent the wrong number of keys".into());
    };
    let signing = SigningKey::from_seed(&signing.0).map_err(|e| e.to_string())?;
    let (wallet, wallet_key) =
        c.wallet_of(SigningKey::from_seed(&wallet.0).map_err(|e| e.to_string())?)?;
    let address = wallet.address().map_err(|e| e.to_string())?;
    eprintln!(
        "proxy: keys from kms {}: proxy key {}, wallet {address}",
        s.kms,
        hex::encode(signing.public_key())
    );
    Ok((signing, Some((wallet, wallet_key))))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether the proxy contract at `a` is active.
async fn is_active<C: Chain>(chain: &C, a: &StdAddr) -> Result<bool, String> {
    use cocoon_ton::chain::AccountStatus;
    let st = chain
        .account_state(a)
        .await
        .map_err(|e| format!("proxy contract: {e}"))?;
    Ok(st.status == AccountStatus::Active)
}

/// Deploys the proxy contract with its stake when it is not active yet.
async fn ensure_deployed<C: Chain>(
    stake_ton: &str,
    sender: &mut WalletSender<C>,
    contract: &cocoon_ton::contracts::Deployable,
) -> Result<(), String> {
    use cocoon_ton::codec::{Coins, Layout};
    if is_active(sender.chain(), &contract.address).await? {
        return Ok(());
    }
    // A deployment still on its way (an earlier try timed out waiting for it) is waited
    // for, not sent again: a second one would add a second stake.
    if sender.pending_to(&contract.address) {
        return wait_active(sender, contract).await;
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
    wait_active(sender, contract).await
}

/// Sends what the wallet has queued until `contract` is active (60 s at most).
async fn wait_active<C: Chain>(
    sender: &mut WalletSender<C>,
    contract: &cocoon_ton::contracts::Deployable,
) -> Result<(), String> {
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

/// How long a close request or close-complete that the chain does not show yet waits
/// before it is sent again.
const RETIRE_RESEND: Duration = Duration::from_secs(60);

struct SwitchState {
    current: ContractRecord,
    book: ContractBook,
    /// The last close message sent per retiring contract, and when.
    sent: std::collections::HashMap<StdAddr, (RetireStep, std::time::Instant)>,
}

/// The proxy contract across `params_version` changes: the I/O around the decisions of
/// `contract_switch` ([`plan`], [`retire_step`]). [`Self::prepare`] deploys the contract of new params,
/// [`Self::apply`] switches to it (what sessions advertise, where registrations are looked
/// for, where checkpoints go), [`Self::retire_once`] moves each old contract towards closed.
pub struct ContractSwitch<C: Chain> {
    chain: C,
    id: ContractIdentity,
    key: Arc<SigningKey>,
    stake_ton: String,
    wallet: Option<Arc<TonCheckpointChain<C>>>,
    clients: Arc<TonClientChain<C>>,
    book_path: PathBuf,
    state: tokio::sync::Mutex<SwitchState>,
}

fn load_book(path: &Path) -> Result<ContractBook, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => ContractBook::parse(&t).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ContractBook::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes the book (a new file renamed over the old one).
fn save_book(path: &Path, book: &ContractBook) -> Result<(), String> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, book.render())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A client or worker contract's state as [`ChildOnChain`].
fn child_on_chain(
    kind: cocoon_ledger::Kind,
    st: &cocoon_ton::chain::AccountState,
) -> Result<ChildOnChain, String> {
    use cocoon_ton::chain::AccountStatus;
    use cocoon_ton::codec::Layout;
    let (true, Some(data)) = (st.status == AccountStatus::Active, st.data.as_ref()) else {
        return Ok(ChildOnChain::Missing);
    };
    let state = match kind {
        cocoon_ledger::Kind::Client => {
            cocoon_ton::contracts::ClientStorage::from_cell(data)
                .map_err(|e| e.to_string())?
                .state
                .0
        }
        cocoon_ledger::Kind::Worker => {
            cocoon_ton::contracts::WorkerStorage::from_cell(data)
                .map_err(|e| e.to_string())?
                .state
                .0
        }
    };
    Ok(if state >= 2 {
        ChildOnChain::Closed
    } else {
        ChildOnChain::Open
    })
}

/// A proxy contract's state as [`OldProxyOnChain`].
fn proxy_on_chain(st: &cocoon_ton::chain::AccountState) -> Result<OldProxyOnChain, String> {
    use cocoon_ton::chain::AccountStatus;
    use cocoon_ton::codec::Layout;
    let (true, Some(data)) = (st.status == AccountStatus::Active, st.data.as_ref()) else {
        return Ok(OldProxyOnChain::Missing);
    };
    let ps = cocoon_ton::contracts::ProxyStorage::from_cell(data).map_err(|e| e.to_string())?;
    Ok(match ps.state.0 {
        0 => OldProxyOnChain::Normal,
        1 => OldProxyOnChain::Closing {
            unlock_ts: ps.unlock_ts,
        },
        _ => OldProxyOnChain::Closed,
    })
}

impl<C: Chain + Clone + 'static> ContractSwitch<C> {
    /// Uses `current` (recorded in the book at `book_path`, which lists the older
    /// contracts still to retire). Without `wallet` nothing is deployed or sent (test
    /// networks without checkpoints): the switch only changes addresses.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        chain: C,
        id: ContractIdentity,
        key: Arc<SigningKey>,
        stake_ton: &str,
        wallet: Option<Arc<TonCheckpointChain<C>>>,
        clients: Arc<TonClientChain<C>>,
        book_path: PathBuf,
        current: ContractRecord,
    ) -> Result<Self, String> {
        let mut book = load_book(&book_path)?;
        if book.record(&current) {
            save_book(&book_path, &book)?;
        }
        Ok(ContractSwitch {
            chain,
            id,
            key,
            stake_ton: stake_ton.to_owned(),
            wallet,
            clients,
            book_path,
            state: tokio::sync::Mutex::new(SwitchState {
                current,
                book,
                sent: Default::default(),
            }),
        })
    }

    /// The contract in use.
    pub async fn current(&self) -> ContractRecord {
        self.state.lock().await.current.clone()
    }

    /// Older contracts not closed yet.
    pub async fn retiring(&self) -> Vec<ContractRecord> {
        let s = self.state.lock().await;
        s.book.retiring(s.current.params_version)
    }

    /// Before the ledger moves: with new params, deploys their contract with the stake
    /// (nothing changes while this runs; the old contract keeps serving). An error leaves
    /// everything as it was and the watcher tries again.
    pub async fn prepare(&self, root: &RootConfig) -> Result<(), String> {
        let current = self.current().await;
        let SwitchPlan::Switch { to, .. } =
            plan(&current, root, &self.id).map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let Some(wallet) = &self.wallet else {
            return Ok(());
        };
        let contract = self.id.contract(root).map_err(|e| e.to_string())?;
        eprintln!(
            "proxy: params_version {} -> {}: new proxy contract {}",
            current.params_version, to.params_version, to.address
        );
        let mut sender = wallet.wallet().await;
        ensure_deployed(&self.stake_ton, &mut sender, &contract).await
    }

    /// After the ledger moved: applies `root` to the network side and, with new params,
    /// switches to their contract in the same step (sessions of the old params end; new
    /// ones advertise the new contract), then points the registration scan and the
    /// checkpoints at it. The contract is in the book before anything uses it.
    pub async fn apply(&self, root: RootConfig, handle: &ProxyHandle) -> Result<(), String> {
        let mut s = self.state.lock().await;
        match plan(&s.current, &root, &self.id).map_err(|e| e.to_string())? {
            SwitchPlan::Keep => handle.update_root(root).map_err(|e| e.to_string()),
            SwitchPlan::Switch { from, to } => {
                let switched = if s.book.record(&to) {
                    save_book(&self.book_path, &s.book)
                } else {
                    Ok(())
                }
                .and_then(|()| {
                    handle
                        .switch_contract(root, to.address.clone())
                        .map_err(|e| e.to_string())
                });
                // On an error sessions keep the old contract and the watcher tries the
                // version again; the ledger has moved already, so requests of the old params
                // stay refused retryably (at the ledger they would fail for good).
                switched?;
                self.clients.switch_contract(to.address.clone()).await;
                if let Some(w) = &self.wallet {
                    w.switch_contract(to.address.clone()).await;
                }
                handle.operator_event(
                    "proxy_contract_switched",
                    &to.address.to_string(),
                    &format!(
                        "params_version {} -> {}: serving on the new contract; the old one {} closes once its final receipts landed",
                        from.params_version, to.params_version, from.address
                    ),
                );
                s.current = to;
                Ok(())
            }
        }
    }

    /// One pass over the contracts to retire: old accounts whose contract shows closed are
    /// marked closed in the ledger; a contract whose accounts are all settled gets its
    /// signed close request, and after `proxy_delay_before_close` (chain time) its
    /// close-complete; a closed one leaves the book. Returns each contract's step.
    pub async fn retire_once(
        &self,
        meter: &LedgerMeter,
    ) -> Result<Vec<(ContractRecord, RetireStep)>, String> {
        let retiring = self.retiring().await;
        let mut out = Vec::new();
        for r in retiring {
            let mut open = 0;
            let mut frozen = 0;
            for a in meter.accounts() {
                if a.key.params_version != r.params_version
                    || a.status == cocoon_ledger::Status::Closed
                {
                    continue;
                }
                let st = self
                    .chain
                    .account_state(&a.key.address)
                    .await
                    .map_err(|e| e.to_string())?;
                // One account that cannot be read or recorded holds back only its own
                // contract's retirement (as a frozen one: it needs the operator), not the
                // pass over every other account and contract.
                let is_worker = a.key.kind == cocoon_ledger::Kind::Worker;
                let settled = child_on_chain(a.key.kind, &st)
                    .map(|on_chain| account_settled(is_worker, a.tokens, on_chain));
                let recorded = match settled {
                    Ok(true) => meter.mark_closed(&a.key).await.map_err(|e| e.to_string()),
                    Ok(false) => {
                        open += 1;
                        frozen += usize::from(a.frozen.is_some());
                        continue;
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = recorded {
                    tracing::error!(account = %a.key.address, error = %e, "old account not settled; its contract's retirement waits for the operator");
                    open += 1;
                    frozen += 1;
                }
            }
            let st = self
                .chain
                .account_state(&r.address)
                .await
                .map_err(|e| e.to_string())?;
            let facts = RetireFacts {
                open_accounts: open,
                frozen_accounts: frozen,
                proxy: proxy_on_chain(&st)?,
                chain_now: st.sync_utime.unwrap_or_else(now_unix),
            };
            let step = retire_step(&facts);
            match step {
                RetireStep::RequestClose | RetireStep::CompleteClose => {
                    self.send_close(&r, step).await?;
                }
                RetireStep::Done => {
                    let mut s = self.state.lock().await;
                    if s.book.mark_closed(&r.address) {
                        save_book(&self.book_path, &s.book)?;
                        eprintln!("proxy: old proxy contract {} closed", r.address);
                    }
                    s.sent.remove(&r.address);
                }
                RetireStep::WaitAccounts { .. } | RetireStep::WaitUnlock { .. } => {}
            }
            out.push((r, step));
        }
        Ok(out)
    }

    /// Sends the signed close request or close-complete for `r` (once a minute at most).
    async fn send_close(&self, r: &ContractRecord, step: RetireStep) -> Result<(), String> {
        use cocoon_ton::payments::{PaymentPayload, SignedOp};
        let Some(wallet) = &self.wallet else {
            return Ok(());
        };
        {
            let s = self.state.lock().await;
            if let Some((last, at)) = s.sent.get(&r.address)
                && *last == step
                && at.elapsed() < RETIRE_RESEND
            {
                return Ok(());
            }
        }
        let op = if step == RetireStep::RequestClose {
            SignedOp::ProxyCloseRequest
        } else {
            SignedOp::ProxyCloseComplete
        };
        let me = wallet.wallet().await.address().clone();
        let boc = PaymentPayload {
            op,
            query_id: now_unix(),
            tokens: None,
            contract: r.address.clone(),
        }
        .sign(&self.key, &me)
        .and_then(|p| p.to_boc())
        .map_err(|e| e.to_string())?;
        CheckpointChain::submit_receipt(&**wallet, &r.address, boc)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("proxy: old proxy contract {}: {op:?} sent", r.address);
        self.state
            .lock()
            .await
            .sent
            .insert(r.address.clone(), (step, std::time::Instant::now()));
        Ok(())
    }
}

/// [`root_hooks`] for a proxy whose contract follows the params: the contract of new
/// params is deployed first (the old one serves meanwhile), then the ledger moves, then
/// the network side and the contract switch in one step ([`ContractSwitch::apply`]).
pub fn switching_root_hooks<'a, C: Chain + Clone + 'static>(
    meter: &'a LedgerMeter,
    handle: &'a ProxyHandle,
    switch: &'a ContractSwitch<C>,
) -> Vec<RootHook<'a>> {
    vec![
        Box::new(move |c: RootConfig| Box::pin(async move { switch.prepare(&c).await })),
        Box::new(move |c: RootConfig| {
            Box::pin(async move {
                let switching = c.params.params_version > switch.current().await.params_version;
                if switching {
                    handle.begin_params_switch(c.params.params_version);
                }
                let r = meter
                    .change_params(&c)
                    .await
                    .map_err(|e| format!("ledger refused the new params: {e}"));
                if r.is_err() && switching {
                    handle.abort_params_switch();
                }
                r
            })
        }),
        Box::new(move |c: RootConfig| Box::pin(async move { switch.apply(c, handle).await })),
    ]
}

/// What the proxy makes of its root watcher's events: operator events `ton_no_quorum` (the
/// subject is the root contract `root`), `clock_drift` and `clock_agrees` (judged with
/// `time`'s tolerance).
pub fn watch_events<'a>(
    handle: &'a ProxyHandle,
    root: &'a str,
    time: &ChainTime,
) -> impl FnMut(WatchEvent) + 'a {
    let max = time.max_drift_secs();
    move |e| {
        match e {
        WatchEvent::NoQuorum => handle.operator_event(
            "ton_no_quorum",
            root,
            "the chain endpoints do not agree on the root configuration; keeping the last agreed one",
        ),
        WatchEvent::Clock(d) => {
            let (kind, detail) = drift_event(d, max);
            handle.operator_event(kind, "local clock", &detail);
        }
    }
    }
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
    let gpu = s.gpu.requirement().map_err(|e| e.to_string())?;
    let worker_verifier = identity::peer_verifier(PeerVerification {
        gpu: gpu.as_ref(),
        ..workers
    })?;
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
    let (key, wallet) = if s.kms.is_empty() {
        (proxy_key(&s.proxy_key_file, state_dir)?, c.wallet()?)
    } else {
        kms_keys(&s, &start).await?
    };
    let key = Arc::new(key);
    let id = ContractIdentity {
        owner: owner.clone(),
        public_key: HashBytes(key.public_key()),
        root: root_addr.clone(),
    };
    let contract = id.contract(&root).map_err(|e| e.to_string())?;
    let proxy_sc: StdAddr = contract.address.clone();

    // Settlement chain: the operator's wallet, or none (test networks only).
    let checkpoints: Option<Arc<TonCheckpointChain<Ton>>> = match wallet {
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
    let switch = Arc::new(ContractSwitch::new(
        chain.clone(),
        id,
        key.clone(),
        &s.stake_ton,
        checkpoints.clone(),
        clients.clone(),
        state_dir.join("proxy-contracts"),
        ContractRecord {
            params_version: root.params.params_version,
            address: proxy_sc.clone(),
        },
    )?);
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
        chain: clients.clone(),
        admin,
        router: RouterConfig::default(),
        timings: Timings {
            client_watch_interval: Some(Duration::from_secs(s.client_watch_seconds)),
            max_session_requests: s.max_requests_per_session,
            queue_max_per_model: s.queue_max_per_model,
            queue_max_wait: Duration::from_secs(s.queue_max_wait_secs),
            worker_ping: (s.worker_ping_seconds > 0)
                .then(|| Duration::from_secs(s.worker_ping_seconds)),
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
    let mut bound = vec![
        ("worker_listen", handle.worker_addr()),
        ("client_listen", handle.client_addr()),
    ];
    bound.extend(handle.admin_addr().map(|a| ("admin_listen", a)));
    cocoon_service::process::write_ready_file(&c.ready_file, &bound)?;
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
        let every = cfg.interval;
        let chain: Arc<dyn CheckpointChain> = c.clone();
        tasks.push(tokio::spawn(meter.clone().run_settlement(chain, cfg)));
        // Old proxy contracts (params changes): closed once their final receipts landed.
        let (sw, m) = (Arc::clone(&switch), meter.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                match sw.retire_once(&m).await {
                    Ok(steps) => {
                        for (r, step) in steps {
                            tracing::info!(contract = %r.address, params_version = r.params_version, ?step, "retiring old proxy contract");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "retiring old proxy contracts failed; retrying"),
                }
                tokio::time::sleep(every).await;
            }
        }));
    }
    let time = ChainTime::new(c.clock_drift_max_seconds);
    handle.follow_chain_time(time.clone());
    let watcher = RootWatcher::new(
        chain.clone(),
        root_addr.clone(),
        Duration::from_secs(c.root_poll_seconds),
        root.version,
    )
    .with_time(time.clone());
    let root_name = root_addr.to_string();
    let watch = watcher.run(
        switching_root_hooks(&meter, &handle, &*switch),
        watch_events(&handle, &root_name, &time),
    );
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
