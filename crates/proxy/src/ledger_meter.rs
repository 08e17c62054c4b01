//! The durable [`Meter`]: `cocoon-ledger` behind the proxy's metering trait, plus the
//! settlement loop that checkpoints it on chain.
//!
//! - Requests reserve, check and settle in the in-memory [`Ledger`] under a short lock.
//! - A committer thread writes queued updates to the [`Store`] (SQLite in production) with the
//!   ledger lock released during the fsync, so every settlement waiting at that moment shares
//!   one transaction (group commit). `settle` returns only once its update is committed: the
//!   client and the worker hear about tokens that survive `kill -9`.
//! - A failed commit fails the settlements waiting for it (their peers are told an
//!   accounting error, never a total the disk does not hold); the updates stay queued and
//!   the next commit retries them, so the tokens are still booked exactly once.
//! - [`LedgerMeter::run_settlement`] prepares `save_state` checkpoints, sends them through a
//!   [`CheckpointChain`], confirms the ones the chain shows, and submits client charges and
//!   worker payouts that are due. Receipts (`proxy.signedPayment`) only cover confirmed
//!   checkpoints, so they never exceed what the chain proves.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cocoon_ledger::{
    AccountKey, AccountView, ChainCheckpoint, ClientFunds, DuePolicy, Kind, Ledger, LedgerDb,
    LedgerError, LedgerEvent, OpenError, OpenOptions, Pending, RequestId as LedgerRequestId,
    Status, Store,
};
use cocoon_ton::StdAddr;
use cocoon_ton::keys::SigningKey;
use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::chain::{CheckpointChain, ClientContractState, ProxyChainError};
pub use crate::meter::LedgerStats;
use crate::meter::{
    ControlError, ControlOutcome, Durable, Meter, MeterError, Party, RequestId, Settled,
    Settlement, SettlementAction, Totals,
};
use crate::prices::price_table;

/// Commit progress, published by the committer thread.
#[derive(Debug, Clone, Default)]
struct CommitState {
    committed: u64,
    failures: u64,
    last_error: String,
    stopped: bool,
}

/// When the settlement loop acts.
#[derive(Debug, Clone)]
pub struct SettlementConfig {
    /// How often to look at the chain and prepare a checkpoint (default 30 s).
    pub interval: Duration,
    /// A checkpoint not seen on chain after this long is sent again.
    pub resend_after: Duration,
    /// Submit a client's charge once its unsettled, checkpointed usage is worth this many
    /// nanoTON (default 1 TON).
    pub min_client_charge: u128,
    /// Submit a worker's payout at this many nanoTON (default 10 TON).
    pub min_worker_payout: u128,
    /// A submitted receipt the chain does not show after this long is submitted again.
    pub receipt_resend_after: Duration,
    /// How often to run while a closing client still owes usage (its refund completes after
    /// `client_delay_before_close`; the charge must land first).
    pub urgent_interval: Duration,
    /// Withdraw the proxy contract's commission to its owner once it exceeds this many
    /// nanoTON (0: never automatically, the default; the operator's `withdraw` control works
    /// either way). A withdrawal sent is not repeated until the contract shows it landed
    /// (its commission dropped below the amount sent) or `receipt_resend_after` passed.
    pub auto_withdraw_above: u128,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            interval: Duration::from_secs(30),
            resend_after: Duration::from_secs(120),
            min_client_charge: 1_000_000_000,
            min_worker_payout: 10_000_000_000,
            receipt_resend_after: Duration::from_secs(3600),
            urgent_interval: Duration::from_secs(2),
            auto_withdraw_above: 0,
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `cocoon-ledger` as the proxy's [`Meter`].
pub struct LedgerMeter {
    ledger: Arc<Mutex<Ledger>>,
    key: Arc<SigningKey>,
    /// Where excess TON of submitted receipts goes (the proxy owner).
    excess_to: StdAddr,
    wake: Mutex<mpsc::Sender<()>>,
    commits: watch::Sender<CommitState>,
    /// Latest signed receipt per account (tokens, BoC), so unchanged totals are not re-signed.
    receipts: Mutex<HashMap<AccountKey, (u64, Vec<u8>)>>,
    submitted: Mutex<(u64, u64)>,
    /// Wakes the settlement loop early.
    kick: tokio::sync::Notify,
    /// The last checkpoint sent: (seqno, ledger seq then, when). One pass at a time.
    last_sent: tokio::sync::Mutex<Option<(u32, u64, std::time::Instant)>>,
    /// The chain and thresholds of the running settlement loop (for operator controls).
    settlement: std::sync::OnceLock<(Arc<dyn CheckpointChain>, SettlementConfig)>,
    /// The automatic withdrawal in flight: the commission it was sent for, and when.
    withdrawal: Mutex<Option<(u128, std::time::Instant)>>,
    /// Automatic withdrawals sent so far.
    auto_withdrawals: Mutex<u64>,
}

impl std::fmt::Debug for LedgerMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerMeter").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn addr(s: &str) -> Result<StdAddr, MeterError> {
    cocoon_ton::parse_address(s).map_err(|_| MeterError::UnknownClient(s.to_owned()))
}

fn meter_error(e: LedgerError) -> MeterError {
    match e {
        LedgerError::OutOfFunds {
            requested,
            available,
        } => MeterError::OutOfFunds {
            available,
            needed: requested,
        },
        LedgerError::ReservationExceeded { reserved, used } => {
            MeterError::ReservationExceeded { used, reserved }
        }
        LedgerError::UnknownAccount(k) => MeterError::UnknownClient(k.address.to_string()),
        LedgerError::UnknownRequest(_) => MeterError::UnknownRequest,
        LedgerError::DuplicateRequest(_) => MeterError::DuplicateRequest,
        LedgerError::Frozen { key, reason } => MeterError::Frozen(format!("{key}: {reason}")),
        LedgerError::NotOpen(_) => MeterError::Closing,
        other => MeterError::Refused(other.to_string()),
    }
}

fn funds_of(state: &ClientContractState) -> ClientFunds {
    ClientFunds {
        balance: state.balance,
        stake: state.stake,
    }
}

fn status_of(state: &ClientContractState) -> Status {
    if state.closed {
        Status::Closed
    } else if state.closing {
        Status::Closing
    } else {
        Status::Open
    }
}

fn totals(v: Option<AccountView>) -> Totals {
    v.map_or_else(Totals::default, |a| Totals {
        committed_to_blockchain: a.chain_tokens,
        committed_to_db: a.db_tokens,
        max: a.tokens,
    })
}

impl LedgerMeter {
    /// Loads `store` and opens the ledger (integrity and rollback checks against `options`),
    /// then starts the committer thread.
    pub fn open<S: Store + Send + 'static>(
        store: S,
        key: Arc<SigningKey>,
        excess_to: StdAddr,
        options: OpenOptions,
    ) -> Result<Arc<Self>, OpenError> {
        let db = LedgerDb::open(store, &key, options)?;
        let committed = db.committed_seq();
        let (ledger, store) = db.into_parts();
        for e in ledger.events() {
            report(e);
        }
        let ledger = Arc::new(Mutex::new(ledger));
        let (tx, rx) = mpsc::channel();
        let commits = watch::Sender::new(CommitState {
            committed,
            ..CommitState::default()
        });
        let (l, c) = (Arc::clone(&ledger), commits.clone());
        std::thread::Builder::new()
            .name("ledger-commit".into())
            .spawn(move || committer(store, l, rx, c))
            .map_err(|e| OpenError::Store(cocoon_ledger::StoreError::Backend(e.to_string())))?;
        Ok(Arc::new(LedgerMeter {
            ledger,
            key,
            excess_to,
            wake: Mutex::new(tx),
            commits,
            receipts: Mutex::default(),
            submitted: Mutex::default(),
            kick: tokio::sync::Notify::new(),
            last_sent: tokio::sync::Mutex::new(None),
            settlement: std::sync::OnceLock::new(),
            withdrawal: Mutex::new(None),
            auto_withdrawals: Mutex::new(0),
        }))
    }

    /// Opens the ledger for `root`'s params version and prices, with rollback detection
    /// against the checkpoints `chain` shows and a fresh random session.
    pub async fn open_for_root<S: Store + Send + 'static>(
        store: S,
        key: Arc<SigningKey>,
        excess_to: StdAddr,
        root: &cocoon_ton::root::RootConfig,
        chain: &dyn CheckpointChain,
    ) -> Result<Arc<Self>, OpenError> {
        let version = root.params.params_version;
        let checkpoints = Self::chain_checkpoints(chain, version)
            .await
            .map_err(|e| OpenError::Store(cocoon_ledger::StoreError::Backend(e.to_string())))?;
        let options = OpenOptions {
            params_version: version,
            prices: price_table(&root.params),
            chain: checkpoints,
            session: rand::random(),
        };
        Self::open(store, key, excess_to, options)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    /// Waits until `p` is committed, then opens it.
    async fn durable<T: Send + 'static>(&self, p: Pending<T>) -> Result<T, MeterError> {
        self.durable_later(p).await
    }

    /// The wait of [`Self::durable`], owning what it needs: the committer is woken now, and
    /// commit failures are counted from now.
    fn durable_later<T: Send + 'static>(
        &self,
        p: Pending<T>,
    ) -> impl std::future::Future<Output = Result<T, MeterError>> + Send + 'static {
        let seq = p.seq();
        let mut rx = self.commits.subscribe();
        let failures = rx.borrow().failures;
        if rx.borrow().committed < seq {
            let _ = lock(&self.wake).send(());
        }
        let ledger = Arc::clone(&self.ledger);
        async move { committed(&mut rx, failures, seq, &ledger, p).await }
    }

    /// A snapshot of one account.
    pub fn account(&self, kind: Party, address: &str) -> Option<AccountView> {
        let a = cocoon_ton::parse_address(address).ok()?;
        let l = self.ledger();
        let key = match kind {
            Party::Client => l.client_key(&a),
            Party::Worker => l.worker_key(&a),
        };
        l.account(&key)
    }

    /// Every account.
    pub fn accounts(&self) -> Vec<AccountView> {
        self.ledger().accounts()
    }

    /// Ledger-wide sums.
    pub fn totals(&self) -> cocoon_ledger::Totals {
        self.ledger().totals()
    }

    /// Broken invariants (empty when all hold).
    pub fn audit(&self) -> Vec<String> {
        self.ledger().audit()
    }

    /// The admin view.
    pub fn stats(&self) -> LedgerStats {
        let c = self.commits.borrow().clone();
        let (charges, payouts) = *lock(&self.submitted);
        let l = self.ledger();
        LedgerStats {
            params_version: l.params_version(),
            committed_seq: l.committed_seq(),
            last_seq: l.last_seq(),
            commit_failures: c.failures,
            last_commit_error: c.last_error,
            confirmed_checkpoint: l.confirmed_checkpoint().map(|c| c.seqno),
            pending_checkpoints: l.pending_checkpoints().iter().map(|c| c.seqno).collect(),
            commission_nanoton: l.commission_nanoton(),
            reservations: l.reservations(),
            halted: l.halted().map(str::to_owned),
            frozen: l
                .frozen()
                .into_iter()
                .map(|(k, r)| (k.to_string(), r))
                .collect(),
            charges_submitted: charges,
            payouts_submitted: payouts,
            auto_withdrawals: *lock(&self.auto_withdrawals),
        }
    }

    /// Moves the ledger to `root`'s params version and prices when it is newer (accounts of
    /// the older contracts close; see `Ledger::change_params`); durable when it returns.
    pub async fn change_params(
        &self,
        root: &cocoon_ton::root::RootConfig,
    ) -> Result<(), MeterError> {
        let version = root.params.params_version;
        // Not in the middle of a settlement pass: the move forgets the old contract's
        // pending checkpoints, and a pass that read one back from the chain before the move
        // would take it for one this ledger never prepared (and halt).
        let _pass = self.last_sent.lock().await;
        let p = {
            let mut l = self.ledger();
            if version <= l.params_version() {
                return Ok(());
            }
            l.change_params(version, price_table(&root.params))
                .map_err(meter_error)?
        };
        self.durable(p).await
    }

    /// Records that `key`'s contract shows closed on chain (its final receipt landed): no
    /// receipt is sent for it any more. Durable when it returns.
    pub async fn mark_closed(&self, key: &AccountKey) -> Result<(), MeterError> {
        let p = self.ledger().mark_closed(key).map_err(meter_error)?;
        self.durable(p).await
    }

    /// Freezes an account (operator action); durable when it returns.
    pub async fn freeze(&self, kind: Party, address: &str, reason: &str) -> Result<(), MeterError> {
        let a = addr(address)?;
        let p = {
            let mut l = self.ledger();
            let key = match kind {
                Party::Client => l.client_key(&a),
                Party::Worker => l.worker_key(&a),
            };
            l.freeze(&key, reason).map_err(meter_error)?
        };
        self.durable(p).await
    }

    /// The latest receipt for `key`. While a new confirmation is not durable yet (or the
    /// account is frozen), the last receipt already issued is sent again: peers must never
    /// see a receipt lower than one they hold, and an empty one counts as zero.
    fn signed(&self, key: &AccountKey) -> Option<Vec<u8>> {
        let tokens = self.ledger().account(key)?.chain_tokens;
        let cached = lock(&self.receipts).get(key).cloned();
        if let Some((t, boc)) = &cached
            && *t == tokens
        {
            return Some(boc.clone());
        }
        let fresh = self.ledger().receipt(key, 0, &self.excess_to, &self.key);
        let r = match fresh {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return cached.map(|(_, boc)| boc),
        };
        let Ok(boc) = r.payment.to_boc() else {
            return cached.map(|(_, boc)| boc);
        };
        lock(&self.receipts).insert(key.clone(), (r.tokens, boc.clone()));
        Some(boc)
    }

    /// One pass of the settlement loop: confirm checkpoints the chain shows, prepare and
    /// send a new one when something changed, submit due charges and payouts. Returns what
    /// went wrong with the chain, if anything (the next pass retries).
    pub async fn settle_once(
        &self,
        chain: &dyn CheckpointChain,
        cfg: &SettlementConfig,
    ) -> Result<(), ProxyChainError> {
        let mut last_sent = self.last_sent.lock().await;
        // 1. Confirm what the chain shows, in chain order.
        let after = self.ledger().checkpoint_cursor();
        for c in chain.checkpoints_since(after).await? {
            let r = self.ledger().confirm_checkpoint(c);
            match r {
                Ok(p) => {
                    if let Err(e) = self.durable(p).await {
                        tracing::warn!(error = %e, "checkpoint confirmation not committed yet");
                        return Ok(());
                    }
                    tracing::debug!(seqno = c.seqno, "checkpoint confirmed");
                }
                Err(e) => {
                    tracing::error!(seqno = c.seqno, error = %e,
                        "the chain shows a checkpoint this ledger never prepared: another proxy uses this key or the database was restored; receipts and new requests are halted");
                    return Ok(());
                }
            }
        }
        // 2. A new checkpoint when something changed (or the last one got lost).
        let (seq, pending) = {
            let l = self.ledger();
            (l.last_seq(), l.pending_checkpoints())
        };
        // A prepared checkpoint not on chain yet is sent again after `resend_after`, or at
        // once when this process never sent it (a crash between commit and send).
        let resend = match (last_sent.as_ref(), pending.last()) {
            (Some((s, _, at)), Some(p)) => *s != p.seqno || at.elapsed() >= cfg.resend_after,
            (None, Some(_)) => true,
            _ => false,
        };
        let changed = last_sent
            .as_ref()
            .is_none_or(|(_, at_seq, _)| seq > *at_seq);
        if resend {
            if let Some(p) = pending.last() {
                chain.send_checkpoint(*p).await?;
                *last_sent = Some((p.seqno, seq, std::time::Instant::now()));
            }
        } else if pending.is_empty() && changed {
            let p = self.ledger().prepare_checkpoint();
            match p {
                Ok(p) => match self.durable(p).await {
                    Ok(c) => {
                        let at = self.ledger().last_seq();
                        chain.send_checkpoint(c).await?;
                        *last_sent = Some((c.seqno, at, std::time::Instant::now()));
                    }
                    Err(e) => tracing::warn!(error = %e, "checkpoint not committed"),
                },
                Err(e) => tracing::warn!(error = %e, "no checkpoint prepared"),
            }
        }
        // 3. Charges and payouts that are due, and final receipts of closing accounts. What
        // was submitted is recorded durably: a receipt is not paid for twice, across
        // restarts too, unless the chain still does not show it after a while.
        let now = now_unix();
        let policy = DuePolicy {
            min_client_charge: cfg.min_client_charge,
            min_worker_payout: cfg.min_worker_payout,
            resend_after_secs: cfg.receipt_resend_after.as_secs(),
        };
        let due = self.ledger().due(&policy, now);
        for d in due {
            let boc = if d.last {
                let r = self
                    .ledger()
                    .final_receipt(&d.key, 0, &self.excess_to, &self.key);
                match r.map(|r| (r.tokens, r.payment.to_boc())) {
                    Ok((tokens, Ok(boc))) if tokens == d.tokens => boc,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(account = %d.key, error = %e, "final receipt not ready");
                        continue;
                    }
                }
            } else {
                match self.signed(&d.key) {
                    Some(boc) => boc,
                    None => continue,
                }
            };
            chain.submit_receipt(&d.key.address, boc).await?;
            let p = self
                .ledger()
                .receipt_submitted(&d.key, d.tokens, now, d.last);
            match p {
                Ok(p) => {
                    if let Err(e) = self.durable(p).await {
                        tracing::warn!(error = %e, "submitted receipt not recorded yet");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "submitted receipt not recorded"),
            }
            tracing::info!(account = %d.key, tokens = d.tokens, last = d.last, "receipt submitted");
            let mut s = lock(&self.submitted);
            match d.key.kind {
                Kind::Client => s.0 += 1,
                Kind::Worker => s.1 += 1,
            }
        }
        for e in self.ledger().take_events() {
            report(&e);
        }
        // 4. The commission, when it exceeds the threshold.
        if cfg.auto_withdraw_above > 0 {
            self.auto_withdraw(chain, cfg).await?;
        }
        Ok(())
    }

    /// Withdraws the proxy contract's commission when it exceeds `cfg.auto_withdraw_above`,
    /// once: while a withdrawal sent is not seen landed (the contract's commission below the
    /// amount it was sent for), none is sent again before `cfg.receipt_resend_after`.
    async fn auto_withdraw(
        &self,
        chain: &dyn CheckpointChain,
        cfg: &SettlementConfig,
    ) -> Result<(), ProxyChainError> {
        let Some(commission) = chain.commission().await? else {
            return Ok(());
        };
        {
            let mut w = lock(&self.withdrawal);
            if let Some((sent_for, at)) = *w {
                if commission < sent_for {
                    tracing::info!(
                        withdrawn_nanoton = %sent_for,
                        "commission withdrawal landed"
                    );
                    *w = None;
                } else if at.elapsed() < cfg.receipt_resend_after {
                    return Ok(());
                }
            }
        }
        if commission <= cfg.auto_withdraw_above {
            return Ok(());
        }
        chain.withdraw().await?;
        *lock(&self.withdrawal) = Some((commission, std::time::Instant::now()));
        *lock(&self.auto_withdrawals) += 1;
        tracing::info!(
            commission_nanoton = %commission,
            threshold_nanoton = %cfg.auto_withdraw_above,
            "commission above the threshold: withdrawal to the owner sent"
        );
        Ok(())
    }

    /// Runs [`Self::settle_once`] every `cfg.interval` until the task is dropped.
    pub async fn run_settlement(
        self: Arc<Self>,
        chain: Arc<dyn CheckpointChain>,
        cfg: SettlementConfig,
    ) {
        let _ = self.settlement.set((Arc::clone(&chain), cfg.clone()));
        loop {
            if let Err(e) = self.settle_once(&*chain, &cfg).await {
                tracing::warn!(error = %e, "settlement pass failed; retrying next interval");
            }
            // A closing client that still owes usage: run often until its charge is out.
            let next = if self.ledger().urgent() {
                cfg.interval.min(cfg.urgent_interval)
            } else {
                cfg.interval
            };
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = self.kick.notified() => {}
            }
        }
    }

    /// An operator action: `Checkpoint` (a settlement pass now), `Charge` / `Payout` (a pass
    /// that submits every client's charge / worker's payout with anything checkpointed and
    /// unsettled, whatever the thresholds), `Withdraw` (the commission to the owner).
    pub async fn control(&self, action: SettlementAction) -> Result<ControlOutcome, ControlError> {
        let Some((chain, cfg)) = self.settlement.get() else {
            return Err(ControlError::NoChain);
        };
        let mut cfg = cfg.clone();
        match action {
            SettlementAction::Checkpoint => {}
            SettlementAction::Charge => cfg.min_client_charge = 1,
            SettlementAction::Payout => cfg.min_worker_payout = 1,
            SettlementAction::Withdraw => {
                // Recorded like an automatic one, so the next settlement pass does not send
                // another for the same commission before this one landed.
                let commission = chain.commission().await.ok().flatten();
                chain.withdraw().await?;
                if let Some(c) = commission {
                    *lock(&self.withdrawal) = Some((c, std::time::Instant::now()));
                }
                tracing::info!("commission withdrawal sent by operator");
                return Ok(ControlOutcome::WithdrawalSent);
            }
        }
        let before = *lock(&self.submitted);
        self.settle_once(&**chain, &cfg).await?;
        let after = *lock(&self.submitted);
        tracing::info!(action = %action, "settlement pass run by operator");
        Ok(ControlOutcome::Pass {
            action,
            charges: after.0 - before.0,
            payouts: after.1 - before.1,
            confirmed_checkpoint: self.ledger().confirmed_checkpoint().map(|c| c.seqno),
        })
    }

    /// The last checkpoint on chain, as [`OpenOptions::chain`] wants it for `params_version`.
    pub async fn chain_checkpoints(
        chain: &dyn CheckpointChain,
        params_version: u32,
    ) -> Result<BTreeMap<u32, ChainCheckpoint>, ProxyChainError> {
        let all = chain.checkpoints_since(0).await?;
        Ok(all
            .into_iter()
            .max_by_key(|c| c.seqno)
            .map(|c| (params_version, c))
            .into_iter()
            .collect())
    }
}

/// Waits on `rx` until update `seq` is committed (an error when a commit failed after
/// `failures` were counted, or the committer stopped), then opens `p`.
async fn committed<T>(
    rx: &mut watch::Receiver<CommitState>,
    failures: u64,
    seq: u64,
    ledger: &Mutex<Ledger>,
    p: Pending<T>,
) -> Result<T, MeterError> {
    loop {
        {
            let s = rx.borrow_and_update();
            if s.committed >= seq {
                break;
            }
            if s.failures > failures {
                return Err(MeterError::Storage(s.last_error.clone()));
            }
            if s.stopped {
                return Err(MeterError::Storage("the ledger committer stopped".into()));
            }
        }
        if rx.changed().await.is_err() {
            return Err(MeterError::Storage("the ledger committer stopped".into()));
        }
    }
    lock(ledger)
        .take_committed(p)
        .map_err(|_| MeterError::Storage("commit order violated".into()))
}

fn report(e: &LedgerEvent) {
    match e {
        LedgerEvent::Frozen { key, reason } => {
            tracing::error!(account = %key, reason, "ledger account frozen; operator action needed");
        }
        LedgerEvent::CorruptRow { row_key, reason } => {
            tracing::error!(
                row = row_key,
                reason,
                "ledger row failed its integrity check; account frozen"
            );
        }
        LedgerEvent::UnknownCheckpoint(c) => {
            tracing::error!(
                seqno = c.seqno,
                "unknown checkpoint on chain; ledger halted"
            );
        }
    }
}

/// The committer thread: takes queued updates, commits them with the ledger unlocked,
/// publishes progress. Ends when the meter is dropped.
fn committer<S: Store>(
    mut store: S,
    ledger: Arc<Mutex<Ledger>>,
    wake: mpsc::Receiver<()>,
    commits: watch::Sender<CommitState>,
) {
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {}
        loop {
            let Some(batch) = lock(&ledger).take_batch() else {
                break;
            };
            match store.commit(&batch) {
                Ok(()) => {
                    let seq = {
                        let mut l = lock(&ledger);
                        l.batch_committed(batch);
                        l.committed_seq()
                    };
                    commits.send_modify(|s| s.committed = seq);
                }
                Err(e) => {
                    lock(&ledger).batch_failed(batch);
                    tracing::error!(error = %e, "ledger commit failed; waiting requests fail, updates stay queued");
                    commits.send_modify(|s| {
                        s.failures += 1;
                        s.last_error = e.to_string();
                    });
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
    commits.send_modify(|s| s.stopped = true);
}

impl Meter for LedgerMeter {
    fn open_client<'a>(
        &'a self,
        client: &'a str,
        state: &'a ClientContractState,
        _price_per_token: u64,
    ) -> BoxFuture<'a, Result<Totals, MeterError>> {
        Box::pin(async move {
            let a = addr(client)?;
            let p = {
                let mut l = self.ledger();
                let key = l.client_key(&a);
                l.observe_client_key(key, funds_of(state), state.tokens_used, status_of(state))
                    .map_err(meter_error)?
            };
            self.durable(p).await?;
            Ok(self.client_totals(client))
        })
    }

    fn observe_client<'a>(
        &'a self,
        client: &'a str,
        state: &'a ClientContractState,
        _price_per_token: u64,
    ) -> BoxFuture<'a, Result<(), MeterError>> {
        Box::pin(async move {
            let a = addr(client)?;
            let p = {
                let mut l = self.ledger();
                let Some(key) = l.find_client(&a) else {
                    return Ok(());
                };
                l.observe_client_key(key, funds_of(state), state.tokens_used, status_of(state))
                    .map_err(meter_error)?
            };
            self.durable(p).await
        })
    }

    fn clients_to_watch(&self) -> Vec<String> {
        self.ledger()
            .clients_to_watch()
            .into_iter()
            .map(|k| k.address.to_string())
            .collect()
    }

    fn kick(&self) {
        self.kick.notify_one();
    }

    fn reserve<'a>(
        &'a self,
        client: &'a str,
        request_id: RequestId,
        max_tokens: u64,
    ) -> BoxFuture<'a, Result<(), MeterError>> {
        let r = addr(client).and_then(|a| {
            self.ledger()
                .reserve(&a, LedgerRequestId(request_id), max_tokens)
                .map_err(meter_error)
        });
        Box::pin(async move { r })
    }

    fn check_part(&self, request_id: &RequestId, used_so_far: u64) -> Result<(), MeterError> {
        self.ledger()
            .check_tokens(LedgerRequestId(*request_id), used_so_far)
            .map(|_| ())
            .map_err(meter_error)
    }

    fn book(&self, request_id: RequestId, s: Settlement) -> Result<Durable, MeterError> {
        let worker = addr(&s.worker)?;
        let client = cocoon_ton::parse_address(&s.client).ok();
        let p = self
            .ledger()
            .settle_tokens(LedgerRequestId(request_id), &worker, s.usage.total)
            .map_err(meter_error)?;
        let wait = self.durable_later(p);
        let ledger = Arc::clone(&self.ledger);
        Ok(Box::pin(async move {
            wait.await?;
            let l = lock(&ledger);
            let client = client.and_then(|c| l.account(&l.client_key(&c)));
            Ok(Settled {
                client: totals(client),
                worker: totals(l.account(&l.worker_key(&worker))),
            })
        }))
    }

    fn cancel<'a>(&'a self, request_id: RequestId) -> BoxFuture<'a, Result<(), MeterError>> {
        let _ = self.ledger().cancel(LedgerRequestId(request_id));
        Box::pin(async { Ok(()) })
    }

    fn client_totals(&self, client: &str) -> Totals {
        totals(self.account(Party::Client, client))
    }

    fn worker_totals(&self, worker: &str) -> Totals {
        totals(self.account(Party::Worker, worker))
    }

    fn receipt(&self, party: Party, address: &str) -> Option<Vec<u8>> {
        let a = cocoon_ton::parse_address(address).ok()?;
        let key = {
            let l = self.ledger();
            match party {
                Party::Client => l.client_key(&a),
                Party::Worker => l.worker_key(&a),
            }
        };
        self.signed(&key)
    }

    fn ledger_stats(&self) -> Option<LedgerStats> {
        Some(self.stats())
    }

    fn accounts(&self) -> Vec<AccountView> {
        LedgerMeter::accounts(self)
    }

    fn control(
        &self,
        action: SettlementAction,
    ) -> BoxFuture<'_, Result<ControlOutcome, ControlError>> {
        Box::pin(LedgerMeter::control(self, action))
    }
}
