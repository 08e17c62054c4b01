//! [`ChannelOps`] over a TON node (`cocoon_ton::chain::Chain`: toncenter or the devnet) and
//! the client owner's standard wallet.
//!
//! Every sending operation runs alone (a `tokio::sync::Mutex` around the
//! [`WalletSender`]) and in four steps:
//!
//! 1. **Read and refuse early.** The client contract's storage is read and the operation is
//!    refused with [`ChannelError::Rejected`] — nothing sent, no fee spent — when the contract
//!    would throw anyway: not deployed, closed, not our contract, nothing to withdraw, close
//!    delay not over, a receipt that does not verify or is not newer than what is charged.
//!    Then the wallet's balance must cover the attached values plus [`Fees::wallet_margin`]
//!    ([`ChannelError::WalletTooLow`]).
//! 2. **Send.** The message(s) go into the wallet sender, which is ticked every
//!    [`TonChannels::poll`] until the wallet's seqno advances past them.
//! 3. **Find our transaction.** The client contract's transactions after the one read in
//!    step 1 are scanned for the message from our wallet with our opcode and query id. A
//!    failed transaction is [`ChannelError::Rejected`] with the contract's error code in
//!    words (the value bounces back to the wallet, less fees). Where the contract forwarded
//!    a payload to the proxy contract (coins for top-ups, withdrawals and refunds, or a
//!    registration), the proxy contract's transaction for it is found and checked the same
//!    way.
//! 4. **Check the result.** The state our transaction produced (the contract reports it to
//!    the proxy contract in `client_proxy_request`, so concurrent transactions by others do
//!    not blur it) must show the expected change, else [`ChannelError::Rejected`].
//!
//! Steps 2–3 share one deadline, [`TonChannels::confirm_timeout`] from the moment the
//! operation got the wallet; past it the result is [`ChannelError::Timeout`]. A timed-out
//! message is not cancelled: the wallet sender keeps delivering it (the next operation
//! first waits for it), so read [`ChannelOps::state`] before repeating an operation.
//!
//! Attached values ([`Fees`]): the contracts require at least 0.05 TON
//! (`MIN_GAS_VALUE`) on top of any amount moved and return everything unused as `excesses`
//! to the wallet, so attaching more only raises the balance the wallet must hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cocoon_ton::chain::{AccountStatus, Chain, Transaction, TxId};
use cocoon_ton::codec::Layout;
use cocoon_ton::contracts::{ClientStorage, Deployable};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::messages::{
    ClientProxyRequest, ClientStateData, ExtClientTopUp, OwnerClientChangeSecretHash,
    OwnerClientRegister, OwnerClientRequestRefund, OwnerClientWithdraw, op_and_query_id,
};
use cocoon_ton::opcodes as op;
use cocoon_ton::ops::failure;
use cocoon_ton::payments::{SignedOp, SignedPayment};
use cocoon_ton::root::CocoonParams;
use cocoon_ton::wallet::{OutMsg, SenderEvent, Wallet, WalletError, WalletSender};
use cocoon_ton::{HashBytes, StdAddr};
use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::payments::{ChannelError, ChannelOps, ChannelState, TON};

/// Contract state codes.
const NORMAL: u8 = 0;
const CLOSING: u8 = 1;
const CLOSED: u8 = 2;

/// The reserve a client contract keeps for itself (`CHILD_MIN_BALANCE`); a deploying top-up
/// leaves it on the new contract, so a deploy attaches it on top of the top-up's fee.
pub(crate) const CHILD_MIN_BALANCE: u64 = TON / 20;

/// Transactions read per page when looking for ours.
const PAGE: usize = 100;

/// Values attached to the wallet's messages, nanoTON.
///
/// Measured on the devnet (the real contracts in a TVM, `tests/payments_devnet.rs`): a whole
/// operation — the wallet's transaction, the client contract, the proxy contract and the
/// returning `excesses` — costs the wallet 10 to 14 mTON (5 mTON when the client contract
/// refuses it; 38 mTON for a first deploy with its secret hash, which also deploys the
/// wallet and carries the contract's code). Each default covers several times that; what is
/// not used comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    /// Attached to owner operations (secret hash, register, withdraw, refund) and to charges.
    /// Default 0.7 TON; the contracts accept anything from 0.05 TON plus gas.
    pub op_value: u64,
    /// Added to a top-up's amount for gas (the contracts require amount + 0.05 TON; a deploy
    /// adds the child contract's minimum balance, 0.05 TON, on top).
    pub top_up_fee: u64,
    /// Kept back when checking the wallet's balance: the wallet's own gas and the forwarding
    /// fees it pays for its messages.
    pub wallet_margin: u64,
}

impl Default for Fees {
    fn default() -> Self {
        Fees {
            op_value: 7 * TON / 10,
            top_up_fee: TON / 10,
            wallet_margin: TON / 20,
        }
    }
}

/// [`ChannelOps`] through a TON node and the owner's wallet.
pub struct TonChannels<C: Chain> {
    chain: C,
    owner: StdAddr,
    sender: tokio::sync::Mutex<WalletSender<C>>,
    next_query_id: AtomicU64,
    /// How often the wallet and the contracts are polled while an operation is under way.
    pub poll: Duration,
    /// How long an operation may take from the moment it has the wallet until its
    /// transactions are found (default 120 s).
    pub confirm_timeout: Duration,
    /// Values attached to the wallet's messages.
    pub fees: Fees,
}

impl<C: Chain> std::fmt::Debug for TonChannels<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TonChannels")
            .field("owner", &self.owner.to_string())
            .field("poll", &self.poll)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("fees", &self.fees)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Unavailable(e.to_string())
}

fn rejected(s: impl Into<String>) -> ChannelError {
    ChannelError::Rejected(s.into())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ton(n: u64) -> String {
    format!("{}.{:09} TON", n / TON, n % TON)
}

/// What one read of a client contract gave.
struct Snapshot {
    /// Its storage; `None` while it is not deployed.
    storage: Option<ClientStorage>,
    /// Its latest transaction: ours come after it.
    last_tx: Option<TxId>,
    /// The chain's time of the answer, when the node says.
    now: Option<u64>,
}

impl Snapshot {
    fn state(&self) -> Option<ChannelState> {
        self.storage.as_ref().map(channel_state)
    }

    /// The storage, or why an operation on an undeployed contract is refused.
    fn deployed(&self, contract: &StdAddr) -> Result<&ClientStorage, ChannelError> {
        self.storage.as_ref().ok_or_else(|| {
            rejected(format!(
                "client contract {contract} is not deployed (deploy it with a top-up first)"
            ))
        })
    }
}

fn channel_state(s: &ClientStorage) -> ChannelState {
    ChannelState {
        state: s.state.0,
        balance: s.balance.0,
        stake: s.stake.0,
        tokens_used: s.tokens_used,
        unlock_ts: s.unlock_ts,
        secret_hash: (s.secret_hash != HashBytes::ZERO).then_some(s.secret_hash.0),
    }
}

/// The part of the storage a client contract reports to its proxy contract.
fn state_data(s: &ClientStorage) -> ClientStateData {
    ClientStateData {
        state: s.state,
        balance: s.balance,
        stake: s.stake,
        tokens_used: s.tokens_used,
        secret_hash: s.secret_hash,
    }
}

/// The owner check every owner operation makes.
fn owned_by(s: &ClientStorage, owner: &StdAddr, contract: &StdAddr) -> Result<(), ChannelError> {
    if &s.consts.0.owner != owner {
        return Err(rejected(format!(
            "client contract {contract} belongs to {}, not to this wallet {owner}",
            s.consts.0.owner
        )));
    }
    Ok(())
}

fn not_closed(s: &ClientStorage, contract: &StdAddr, what: &str) -> Result<(), ChannelError> {
    if s.state.0 == CLOSED {
        return Err(rejected(format!(
            "client contract {contract} is closed: no {what} any more"
        )));
    }
    Ok(())
}

/// The `client_proxy_request` a client-contract transaction sent to `proxy`: the state the
/// transaction produced and whether it carries a payload (coins for the proxy contract to
/// move, or a registration).
fn forwarded(tx: &Transaction, proxy: &StdAddr) -> Option<(ClientStateData, bool)> {
    tx.out_msgs
        .iter()
        .filter(|m| m.destination.as_ref() == Some(proxy))
        .find_map(|m| {
            let req = ClientProxyRequest::from_cell(m.body.as_ref()?).ok()?;
            Some((req.state.0, req.payload.is_some()))
        })
}

/// One message of an operation and what identifies its transaction on the contract.
struct Sent {
    msg: OutMsg,
    op: u32,
    query_id: u64,
    /// What it does, for messages ("top-up", "withdrawal").
    what: &'static str,
}

/// What an operation's transaction did on the client contract.
struct Done {
    /// The state right after it.
    state: Option<ClientStateData>,
}

impl<C: Chain + Clone + 'static> TonChannels<C> {
    /// Channels operated by `wallet` (signed with `key`) through `chain`. The chain client is
    /// cloned: one copy reads (never blocked by an operation under way), one sends.
    pub fn new(chain: C, wallet: Wallet, key: SigningKey) -> Result<Self, ChannelError> {
        let sender = WalletSender::new(chain.clone(), wallet, key)
            .map_err(|e| unavailable(format!("wallet address: {e}")))?;
        let owner = sender.address().clone();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Ok(TonChannels {
            chain,
            owner,
            sender: tokio::sync::Mutex::new(sender),
            next_query_id: AtomicU64::new(seed),
            poll: Duration::from_millis(200),
            confirm_timeout: Duration::from_secs(120),
            fees: Fees::default(),
        })
    }
}

impl<C: Chain + 'static> TonChannels<C> {
    fn query_id(&self) -> u64 {
        self.next_query_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn balance_of(&self, a: &StdAddr) -> Result<u64, ChannelError> {
        let st = self
            .chain
            .account_state(a)
            .await
            .map_err(|e| unavailable(format!("wallet {a}: {e}")))?;
        Ok(u64::try_from(st.balance).unwrap_or(u64::MAX))
    }

    async fn snapshot(&self, contract: &StdAddr) -> Result<Snapshot, ChannelError> {
        let st = self
            .chain
            .account_state(contract)
            .await
            .map_err(|e| unavailable(format!("client contract {contract}: {e}")))?;
        let storage = match (st.status, &st.data) {
            (AccountStatus::Active, Some(data)) => Some(
                ClientStorage::from_cell(data)
                    .map_err(|e| unavailable(format!("client contract {contract} storage: {e}")))?,
            ),
            _ => None,
        };
        Ok(Snapshot {
            storage,
            last_tx: st.last_tx,
            now: st.sync_utime,
        })
    }

    /// Runs one operation (the caller holds the wallet): balance check, send, find each
    /// message's transaction on `contract` (and, where it forwarded a payload, on `proxy`).
    /// Returns one [`Done`] per message, in order.
    async fn run(
        &self,
        sender: &mut WalletSender<C>,
        contract: &StdAddr,
        proxy: &StdAddr,
        cursor: Option<TxId>,
        sent: Vec<Sent>,
    ) -> Result<Vec<Done>, ChannelError> {
        let value: u64 = sent.iter().map(|s| s.msg.value).sum();
        let need = value.saturating_add(self.fees.wallet_margin);
        let have = self.balance_of(&self.owner).await?;
        if have < need {
            return Err(ChannelError::WalletTooLow { have, need });
        }
        let proxy_cursor = self
            .chain
            .account_state(proxy)
            .await
            .map_err(|e| unavailable(format!("proxy contract {proxy}: {e}")))?
            .last_tx;
        let deadline = Instant::now() + self.confirm_timeout;
        self.deliver(
            sender,
            sent.iter().map(|s| s.msg.clone()).collect(),
            deadline,
        )
        .await?;

        let mut client = Scan::new(contract.clone(), cursor);
        let mut pool = Scan::new(proxy.clone(), proxy_cursor);
        let mut done = Vec::with_capacity(sent.len());
        for s in &sent {
            let tx = client
                .find(self, deadline, s.what, |tx| {
                    tx.in_msg.as_ref().is_some_and(|m| {
                        m.source.as_ref() == Some(&self.owner)
                            && m.body.as_ref().and_then(op_and_query_id) == Some((s.op, s.query_id))
                    })
                })
                .await?;
            if let Some(why) = failure(&tx) {
                return Err(rejected(format!(
                    "client contract {contract} refused the {} ({why}); the attached value \
                     bounced back to the wallet, less fees",
                    s.what
                )));
            }
            // A payload (coins to move, or a registration) is acted on by the proxy contract:
            // check that it was.
            let fwd = forwarded(&tx, proxy);
            if fwd.as_ref().is_some_and(|(_, payload)| *payload) {
                let ptx = pool
                    .find(self, deadline, s.what, |tx| {
                        tx.in_msg.as_ref().is_some_and(|m| {
                            m.source.as_ref() == Some(contract)
                                && m.body.as_ref().and_then(op_and_query_id)
                                    == Some((op::CLIENT_PROXY_REQUEST, s.query_id))
                        })
                    })
                    .await?;
                if let Some(why) = failure(&ptx) {
                    return Err(rejected(format!(
                        "proxy contract {proxy} refused the {} forwarded by client contract \
                         {contract} ({why}); the client contract has booked it, so its balance \
                         no longer matches the coins the proxy contract holds for it",
                        s.what
                    )));
                }
            }
            done.push(Done {
                state: fwd.map(|(st, _)| st),
            });
        }
        Ok(done)
    }

    /// Enqueues `msgs` and ticks the wallet sender until all of them are confirmed.
    async fn deliver(
        &self,
        sender: &mut WalletSender<C>,
        msgs: Vec<OutMsg>,
        deadline: Instant,
    ) -> Result<(), ChannelError> {
        let mut waiting = msgs.clone();
        for m in msgs {
            sender.enqueue(m);
        }
        let mut last_error = None;
        loop {
            match sender.tick(unix_now()).await {
                Ok(events) => {
                    for e in events {
                        match e {
                            SenderEvent::Confirmed { messages, .. } => {
                                for m in messages {
                                    if let Some(i) = waiting.iter().position(|w| *w == m) {
                                        waiting.swap_remove(i);
                                    }
                                }
                            }
                            SenderEvent::Expired { seqno } => {
                                tracing::warn!(seqno, "wallet message expired; sending it again");
                            }
                            SenderEvent::Sent { .. } | SenderEvent::Resent { .. } => {}
                        }
                    }
                }
                Err(WalletError::Chain(e)) => {
                    tracing::warn!(error = %e, "wallet tick failed; retrying");
                    last_error = Some(e.to_string());
                }
                Err(e) => return Err(unavailable(format!("wallet {}: {e}", self.owner))),
            }
            if waiting.is_empty() {
                return Ok(());
            }
            poll_until(deadline, self.poll, last_error.as_deref(), |last| {
                format!(
                    "wallet {} did not confirm its message within {:?}{last}; it is still being \
                     delivered",
                    self.owner, self.confirm_timeout,
                )
            })
            .await?;
        }
    }

    /// A message to `contract` with `body`, bounceable (a refused message returns its value).
    fn message(&self, contract: &StdAddr, value: u64, body: cocoon_ton::Cell) -> OutMsg {
        OutMsg::new(contract.clone(), value, Some(body))
    }

    /// Runs an operation of one message on a deployed contract: `check` sees its storage and
    /// the chain's time first and may refuse. Returns the storage before and the state the
    /// message's transaction produced.
    async fn owner_op(
        &self,
        contract: &StdAddr,
        check: impl FnOnce(&ClientStorage, Option<u64>) -> Result<(), ChannelError>,
        sent: Sent,
    ) -> Result<(ClientStorage, ClientStateData), ChannelError> {
        let mut sender = self.sender.lock().await;
        let snap = self.snapshot(contract).await?;
        let before = snap.deployed(contract)?;
        check(before, snap.now)?;
        let proxy = before.consts.0.proxy_sc.clone();
        let done = self
            .run(
                &mut sender,
                contract,
                &proxy,
                snap.last_tx.clone(),
                vec![sent],
            )
            .await?;
        let after = self.produced(contract, done).await?;
        Ok((before.clone(), after))
    }

    /// An owner-side message to `contract` whose body takes a fresh query id.
    fn sent(
        &self,
        contract: &StdAddr,
        op: u32,
        what: &'static str,
        value: u64,
        body: impl FnOnce(u64) -> Result<cocoon_ton::Cell, cocoon_ton::codec::LayoutError>,
    ) -> Result<Sent, ChannelError> {
        let query_id = self.query_id();
        let body = body(query_id).map_err(unavailable)?;
        Ok(Sent {
            msg: self.message(contract, value, body),
            op,
            query_id,
            what,
        })
    }

    /// A top-up of `amount` carrying `value` (the amount, fees and, when deploying, the
    /// reserve); the excess returns to the owner.
    fn top_up_sent(
        &self,
        contract: &StdAddr,
        what: &'static str,
        amount: u64,
        value: u64,
    ) -> Result<Sent, ChannelError> {
        self.sent(contract, op::EXT_CLIENT_TOP_UP, what, value, |query_id| {
            ExtClientTopUp {
                query_id,
                amount: cocoon_ton::codec::Coins(amount),
                send_excesses_to: self.owner.clone(),
            }
            .to_cell()
        })
    }

    /// The owner's change of the secret hash to `secret_hash`.
    fn secret_hash_sent(
        &self,
        contract: &StdAddr,
        secret_hash: [u8; 32],
    ) -> Result<Sent, ChannelError> {
        self.sent(
            contract,
            op::OWNER_CLIENT_CHANGE_SECRET_HASH,
            "secret hash change",
            self.fees.op_value,
            |query_id| {
                OwnerClientChangeSecretHash {
                    query_id,
                    secret_hash: HashBytes(secret_hash),
                    send_excesses_to: self.owner.clone(),
                }
                .to_cell()
            },
        )
    }

    /// The state the (last) transaction produced: from its report to the proxy contract, else
    /// read back.
    async fn produced(
        &self,
        contract: &StdAddr,
        done: Vec<Done>,
    ) -> Result<ClientStateData, ChannelError> {
        if let Some(st) = done.into_iter().last().and_then(|d| d.state) {
            return Ok(st);
        }
        let snap = self.snapshot(contract).await?;
        let s = snap.storage.ok_or_else(|| {
            rejected(format!(
                "client contract {contract} is not active after the operation"
            ))
        })?;
        Ok(state_data(&s))
    }
}

/// Walks a contract's transactions after a cursor, keeping what it read.
struct Scan {
    address: StdAddr,
    cursor: Option<TxId>,
    seen: Vec<Transaction>,
}

impl Scan {
    fn new(address: StdAddr, cursor: Option<TxId>) -> Self {
        Scan {
            address,
            cursor,
            seen: Vec::new(),
        }
    }

    /// The first transaction matching `pred`, polling until `deadline`.
    async fn find<C: Chain + 'static>(
        &mut self,
        ch: &TonChannels<C>,
        deadline: Instant,
        what: &str,
        pred: impl Fn(&Transaction) -> bool,
    ) -> Result<Transaction, ChannelError> {
        let mut last_error = None;
        loop {
            if let Some(i) = self.seen.iter().position(&pred) {
                return Ok(self.seen.remove(i));
            }
            match ch
                .chain
                .transactions_since(&self.address, self.cursor.as_ref(), PAGE)
                .await
            {
                Ok(txs) => {
                    let full = txs.len() >= PAGE;
                    if let Some(t) = txs.last() {
                        self.cursor = Some(t.id.clone());
                    }
                    self.seen.extend(txs);
                    if full || self.seen.iter().any(&pred) {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(address = %self.address, error = %e, "reading transactions failed; retrying");
                    last_error = Some(e.to_string());
                }
            }
            poll_until(deadline, ch.poll, last_error.as_deref(), |last| {
                format!(
                    "the wallet sent the {what}, but {} showed no transaction for it within {:?}{last}",
                    self.address, ch.confirm_timeout,
                )
            })
            .await?;
        }
    }
}

/// Waits for the next poll (`poll`, at most until `deadline`); once `deadline` has passed, a
/// timeout saying `timed_out(" (last chain error: …)" when there was one)`.
async fn poll_until(
    deadline: Instant,
    poll: Duration,
    last_error: Option<&str>,
    timed_out: impl FnOnce(String) -> String,
) -> Result<(), ChannelError> {
    let now = Instant::now();
    if now >= deadline {
        let last = last_error
            .map(|e| format!(" (last chain error: {e})"))
            .unwrap_or_default();
        return Err(ChannelError::Timeout(timed_out(last)));
    }
    tokio::time::sleep(poll.min(deadline - now)).await;
    Ok(())
}

/// nanoTON charged between two states (`tokens_used` grew by the proxy's charges).
fn charged_between(before: &ClientStorage, after: &ClientStateData, price: u64) -> u64 {
    after
        .tokens_used
        .saturating_sub(before.tokens_used)
        .saturating_mul(price)
}

fn price_of(s: &ClientStorage) -> u64 {
    CocoonParams::from_cell(&s.params)
        .map(|p| p.price_per_token)
        .unwrap_or(0)
}

/// The top-up check: the balance grew by `amount` (less anything charged in between).
fn check_top_up(
    contract: &StdAddr,
    before: &ClientStorage,
    after: &ClientStateData,
    amount: u64,
) -> Result<(), ChannelError> {
    let expected = before.balance.0.saturating_add(amount);
    let got = after
        .balance
        .0
        .saturating_add(charged_between(before, after, price_of(before)));
    if got < expected {
        return Err(rejected(format!(
            "client contract {contract} accepted the top-up but its balance is {} instead of {}",
            ton(after.balance.0),
            ton(expected)
        )));
    }
    Ok(())
}

/// The secret hash check after a change: the contract holds `expected` now.
fn holds_secret_hash(
    contract: &StdAddr,
    got: HashBytes,
    expected: [u8; 32],
) -> Result<(), ChannelError> {
    if got != HashBytes(expected) {
        return Err(rejected(format!(
            "client contract {contract} accepted the secret hash change but does not hold the \
             new hash"
        )));
    }
    Ok(())
}

impl<C: Chain + 'static> ChannelOps for TonChannels<C> {
    fn owner(&self) -> StdAddr {
        self.owner.clone()
    }

    fn wallet_balance(&self) -> BoxFuture<'_, Result<u64, ChannelError>> {
        Box::pin(async move { self.balance_of(&self.owner).await })
    }

    fn state<'a>(
        &'a self,
        contract: &'a StdAddr,
    ) -> BoxFuture<'a, Result<Option<ChannelState>, ChannelError>> {
        Box::pin(async move { Ok(self.snapshot(contract).await?.state()) })
    }

    fn deploy<'a>(
        &'a self,
        contract: &'a Deployable,
        amount: u64,
        secret_hash: Option<[u8; 32]>,
    ) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let addr = &contract.address;
            let mut sender = self.sender.lock().await;
            let snap = self.snapshot(addr).await?;
            // What the contract will hold once deployed (or holds already).
            let initial = ClientStorage::from_cell(&contract.data)
                .map_err(|e| unavailable(format!("client contract {addr} initial data: {e}")))?;
            let before = snap.storage.clone().unwrap_or(initial);
            not_closed(&before, addr, "top-ups")?;
            if secret_hash.is_some() {
                owned_by(&before, &self.owner, addr)?;
            }
            // The deploying top-up also leaves the new contract its reserve.
            let value = amount
                .saturating_add(self.fees.top_up_fee)
                .saturating_add(CHILD_MIN_BALANCE);
            let mut top_up = self.top_up_sent(addr, "deploying top-up", amount, value)?;
            top_up.msg.state_init = Some(contract.state_init().map_err(unavailable)?);
            let mut sent = vec![top_up];
            if let Some(h) = secret_hash {
                sent.push(self.secret_hash_sent(addr, h)?);
            }
            let proxy = before.consts.0.proxy_sc.clone();
            let done = self
                .run(&mut sender, addr, &proxy, snap.last_tx.clone(), sent)
                .await?;
            let mut states = done.into_iter().map(|d| d.state);
            let topped = states.next().flatten();
            let now = self.snapshot(addr).await?;
            let Some(active) = now.storage else {
                return Err(rejected(format!(
                    "client contract {addr} is not active after its deploying top-up"
                )));
            };
            let topped = topped.unwrap_or_else(|| state_data(&active));
            check_top_up(addr, &before, &topped, amount)?;
            if let Some(h) = secret_hash {
                let after = states
                    .next()
                    .flatten()
                    .map_or(active.secret_hash, |s| s.secret_hash);
                holds_secret_hash(addr, after, h)?;
            }
            Ok(())
        })
    }

    fn set_secret_hash<'a>(
        &'a self,
        contract: &'a StdAddr,
        secret_hash: [u8; 32],
    ) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let owner = &self.owner;
            let sent = self.secret_hash_sent(contract, secret_hash)?;
            let check = |s: &ClientStorage, _| {
                owned_by(s, owner, contract)?;
                not_closed(s, contract, "secret hash changes")
            };
            let (_, after) = self.owner_op(contract, check, sent).await?;
            holds_secret_hash(contract, after.secret_hash, secret_hash)
        })
    }

    fn register<'a>(
        &'a self,
        contract: &'a StdAddr,
        nonce: u64,
    ) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let owner = &self.owner;
            let sent = self.sent(
                contract,
                op::OWNER_CLIENT_REGISTER,
                "registration",
                self.fees.op_value,
                |query_id| {
                    OwnerClientRegister {
                        query_id,
                        nonce,
                        send_excesses_to: owner.clone(),
                    }
                    .to_cell()
                },
            )?;
            let check = |s: &ClientStorage, _| {
                owned_by(s, owner, contract)?;
                not_closed(s, contract, "registrations")
            };
            // Success is the transaction itself (and the proxy contract's, checked in `run`).
            self.owner_op(contract, check, sent).await?;
            Ok(())
        })
    }

    fn top_up<'a>(
        &'a self,
        contract: &'a StdAddr,
        amount: u64,
    ) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let sent = self.top_up_sent(
                contract,
                "top-up",
                amount,
                amount.saturating_add(self.fees.top_up_fee),
            )?;
            // Anyone may top up: no owner check.
            let check = |s: &ClientStorage, _| not_closed(s, contract, "top-ups");
            let (before, after) = self.owner_op(contract, check, sent).await?;
            check_top_up(contract, &before, &after, amount)
        })
    }

    fn charge<'a>(
        &'a self,
        contract: &'a StdAddr,
        receipt: &'a SignedPayment,
    ) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            // The query id is the receipt's own (it is signed); only the excess address changes.
            let body = receipt.repack(&self.owner).to_cell().map_err(unavailable)?;
            let sent = Sent {
                msg: self.message(contract, self.fees.op_value, body),
                op: op::EXT_CLIENT_CHARGE_SIGNED,
                query_id: receipt.query_id,
                what: "charge",
            };
            let mut tokens = 0;
            let check = |s: &ClientStorage, _| {
                not_closed(s, contract, "charges")?;
                let p = receipt
                    .verify(
                        SignedOp::ClientCharge,
                        contract,
                        &s.consts.0.proxy_public_key.0,
                    )
                    .map_err(|e| {
                        rejected(format!(
                            "the charge receipt is not valid for client contract {contract}: {e}"
                        ))
                    })?;
                tokens = p.tokens.unwrap_or(0);
                if tokens <= s.tokens_used {
                    return Err(rejected(format!(
                        "client contract {contract} has {} tokens charged already; a receipt \
                         for {tokens} is not newer",
                        s.tokens_used
                    )));
                }
                Ok(())
            };
            let (_, after) = self.owner_op(contract, check, sent).await?;
            if after.tokens_used < tokens {
                return Err(rejected(format!(
                    "client contract {contract} accepted the charge but shows {} tokens charged \
                     instead of {tokens}",
                    after.tokens_used
                )));
            }
            Ok(())
        })
    }

    fn withdraw<'a>(&'a self, contract: &'a StdAddr) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let owner = &self.owner;
            let sent = self.sent(
                contract,
                op::OWNER_CLIENT_WITHDRAW,
                "withdrawal",
                self.fees.op_value,
                |query_id| {
                    OwnerClientWithdraw {
                        query_id,
                        send_excesses_to: owner.clone(),
                    }
                    .to_cell()
                },
            )?;
            let check = |s: &ClientStorage, _| {
                owned_by(s, owner, contract)?;
                if s.state.0 != NORMAL {
                    return Err(rejected(format!(
                        "client contract {contract} is closing or closed: withdrawals are only \
                         possible while it is open"
                    )));
                }
                if s.balance.0 <= s.stake.0 {
                    return Err(rejected(format!(
                        "nothing to withdraw: client contract {contract} holds {}, not more \
                         than its stake {}",
                        ton(s.balance.0),
                        ton(s.stake.0)
                    )));
                }
                Ok(())
            };
            let (_, after) = self.owner_op(contract, check, sent).await?;
            if after.balance.0 != after.stake.0 {
                return Err(rejected(format!(
                    "client contract {contract} accepted the withdrawal but holds {} instead of \
                     its stake {}",
                    ton(after.balance.0),
                    ton(after.stake.0)
                )));
            }
            Ok(())
        })
    }

    fn request_refund<'a>(
        &'a self,
        contract: &'a StdAddr,
    ) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let owner = &self.owner;
            let sent = self.sent(
                contract,
                op::OWNER_CLIENT_REQUEST_REFUND,
                "refund request",
                self.fees.op_value,
                |query_id| {
                    OwnerClientRequestRefund {
                        query_id,
                        send_excesses_to: owner.clone(),
                    }
                    .to_cell()
                },
            )?;
            let mut phase = NORMAL;
            let check = |s: &ClientStorage, now: Option<u64>| {
                owned_by(s, owner, contract)?;
                phase = s.state.0;
                match phase {
                    NORMAL => Ok(()),
                    CLOSING => match now {
                        Some(now) if now < u64::from(s.unlock_ts) => Err(rejected(format!(
                            "client contract {contract} is closing and unlocks at {} ({} s from \
                             now): the refund of the rest can be requested then",
                            s.unlock_ts,
                            u64::from(s.unlock_ts) - now
                        ))),
                        _ => Ok(()),
                    },
                    _ => Err(rejected(format!(
                        "client contract {contract} is closed already"
                    ))),
                }
            };
            let (_, after) = self.owner_op(contract, check, sent).await?;
            if phase == NORMAL {
                // Phase one: closing, unlock_ts set, the part above the stake refunded.
                let unlock = self
                    .snapshot(contract)
                    .await?
                    .storage
                    .map_or(0, |s| s.unlock_ts);
                if after.state.0 != CLOSING || unlock == 0 || after.balance.0 > after.stake.0 {
                    return Err(rejected(format!(
                        "client contract {contract} accepted the refund request but is not \
                         closing with its balance down to the stake (state {}, balance {}, \
                         stake {}, unlock_ts {unlock})",
                        after.state.0,
                        ton(after.balance.0),
                        ton(after.stake.0)
                    )));
                }
            } else if after.state.0 != CLOSED || after.balance.0 != 0 {
                // Phase two: closed, the rest refunded.
                return Err(rejected(format!(
                    "client contract {contract} accepted the final refund request but is not \
                     closed and empty (state {}, balance {})",
                    after.state.0,
                    ton(after.balance.0)
                )));
            }
            Ok(())
        })
    }
}
