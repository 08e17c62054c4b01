//! Root and wallet operations as library functions: what `cocoon root`, `cocoon wallet` and
//! `cocoon up` do on a chain, over any [`Chain`] and a standard wallet.
//!
//! Every sending operation goes through a [`WalletOps`]: the message is queued in a
//! [`WalletSender`], which is ticked until the wallet's seqno advances past it
//! ([`WalletOps::confirm_timeout`]). Where the message goes to a contract, the contract's own
//! transaction for it is then looked up (the inbound message from our wallet with our opcode
//! and query id, [`WalletOps::settle_timeout`]); a failed one is [`OpsError::Refused`] with the
//! contract's exit code, and the state it left is read back to check the effect.
//!
//! Errors keep what the chain decided apart from what went wrong on the way:
//! [`OpsError::Refused`], [`OpsError::NotApplied`], [`OpsError::NotOwner`] and
//! [`OpsError::AlreadyDeployed`] are the chain's (or the contract's) answers and retrying the
//! same operation will not help; [`OpsError::Chain`] is the node or the transport
//! ([`ChainError::is_retryable`] tells more).
//!
//! - [`root`](self::root): deploy a root, owner operations (image and model hashes, proxies,
//!   prices and params, [`change_params`] from a partial [`ParamsChange`], [`change_owner`],
//!   [`upgrade`]: new code for the root and its child contracts);
//! - [`funds`]: balances, transfers, devnet faucet top-ups (with feature `toncenter`),
//!   contract deployments.

pub mod funds;
pub mod root;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tycho_types::cell::Cell;
use tycho_types::models::StdAddr;

use crate::chain::{Chain, ChainError, Transaction, TxId};
use crate::codec::LayoutError;
use crate::keys::SigningKey;
use crate::messages::op_and_query_id;
use crate::wallet::{OutMsg, SenderEvent, Wallet, WalletError, WalletSender};

#[cfg(feature = "toncenter")]
pub use funds::faucet_top_up;
pub use funds::{Balance, balance, deploy_contract, transfer};
pub use root::{
    CodeUpgrade, DeployedRoot, ParamsChange, RootChange, RootOp, change_owner, change_params,
    deploy_root, root_op, upgrade,
};

/// Transactions read per page while looking for ours.
const PAGE: usize = 100;

/// Why an operation did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The contract's transaction for our message failed: the chain refused the operation
    /// (a bounceable message's value comes back to the wallet, less fees).
    #[error("{contract} refused the {what}: {}", refusal(*exit_code, *action_result_code))]
    Refused {
        /// The contract that refused.
        contract: StdAddr,
        /// The operation, e.g. `add-image`.
        what: String,
        /// Its TVM exit code, when the compute phase ran.
        exit_code: Option<i32>,
        /// The action phase result code, when one ran.
        action_result_code: Option<i32>,
    },
    /// The operation's transaction went through but the state does not show its effect.
    #[error("{0}")]
    NotApplied(String),
    /// Refused before sending: the wallet is not the root's owner.
    #[error(
        "wallet {wallet} is not the root owner ({owner}); use the owner's key (devnet: root_owner_key in /_devnet/info)"
    )]
    NotOwner {
        /// Our wallet.
        wallet: StdAddr,
        /// The root's owner.
        owner: StdAddr,
    },
    /// Refused before sending: a root with this owner and params is already on the chain.
    #[error("a root with this configuration is already deployed at {0}")]
    AlreadyDeployed(StdAddr),
    /// Refused before sending: the worker fee per token exceeds the price per token.
    #[error("worker fee {worker_fee} exceeds price {price}")]
    FeeAbovePrice {
        /// Price per token, nanoTON.
        price: u64,
        /// Worker fee per token, nanoTON.
        worker_fee: u64,
    },
    /// Refused before sending: an upgrade of the child codes would leave this one out (the
    /// root carries none and none was given).
    #[error("the root carries no {0} contract code; give all three child codes")]
    NoChildCode(&'static str),
    /// Refused before sending: not a proxy endpoint the runners can parse.
    #[error("{0:?} is not \"ip:port\" or \"ip:port ip:port\" (IPv4, as COCOON's runners parse it)")]
    BadEndpoint(String),
    /// The wallet's message passed its `valid_until` before the wallet accepted it.
    #[error("message with seqno {seqno} expired before it was accepted")]
    Expired {
        /// Its seqno.
        seqno: u32,
    },
    /// The wallet's seqno did not advance in time.
    #[error(
        "not confirmed within {}s (is the wallet funded? check `cocoon wallet balance`)",
        .0.as_secs()
    )]
    NotConfirmed(Duration),
    /// The wallet accepted the message but the destination showed no transaction for it.
    #[error(
        "the wallet sent the {what}, but {contract} showed no transaction for it within {}s (is the wallet's balance enough for the attached value?)",
        .within.as_secs()
    )]
    NoTransaction {
        /// The operation.
        what: String,
        /// The destination.
        contract: StdAddr,
        /// How long it was looked for.
        within: Duration,
    },
    /// The devnet faucet refused to mint.
    #[error("the devnet faucet refused: {0}")]
    Faucet(ChainError),
    /// The node or the transport failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A cell could not be built or parsed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A wallet message could not be built.
    #[error(transparent)]
    Wallet(WalletError),
}

impl From<WalletError> for OpsError {
    fn from(e: WalletError) -> Self {
        match e {
            WalletError::Chain(c) => OpsError::Chain(c),
            WalletError::Layout(l) => OpsError::Layout(l),
            other => OpsError::Wallet(other),
        }
    }
}

impl OpsError {
    /// Whether the chain (or a contract, or a check against the chain's state) decided
    /// against the operation, as opposed to a transport, timeout or local failure.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            OpsError::Refused { .. }
                | OpsError::NotApplied(_)
                | OpsError::NotOwner { .. }
                | OpsError::AlreadyDeployed(_)
                | OpsError::FeeAbovePrice { .. }
                | OpsError::BadEndpoint(_)
                | OpsError::NoChildCode(_)
        )
    }
}

/// Why a transaction failed, in words (its exit code and what the contracts mean by it);
/// `None` when it did not fail or the node did not send the raw transaction.
pub fn failure(tx: &Transaction) -> Option<String> {
    let o = tx.outcome().ok().flatten()?;
    o.failed()
        .then(|| refusal(o.exit_code, o.action_result_code))
}

fn refusal(exit_code: Option<i32>, action_result_code: Option<i32>) -> String {
    match exit_code {
        Some(c) if c != 0 && c != 1 => format!("exit code {c}: {}", exit_meaning(c)),
        _ => format!(
            "its action phase failed with result code {}",
            action_result_code.unwrap_or(-1)
        ),
    }
}

/// A Cocoon contract's exit code in words (the codes of `contracts/src/common.tolk`, and the
/// TVM's own for malformed bodies and gas).
pub fn exit_meaning(code: i32) -> &'static str {
    match code {
        1001 => "the sender is not the contract's owner",
        1002 => "the proxy's signature does not verify",
        1003 => "the signed receipt's inner op or query id differ from the outer ones",
        1004 => "the signed receipt names another contract",
        1005 => "the receipt's token count does not exceed the one already charged",
        1006 => "not allowed in the contract's current state (closing or closed)",
        1007 => "the close delay has not passed yet",
        1008 => "the attached value does not cover the operation and its gas",
        1009 => "the proxy contract cannot pay without touching coins it must keep",
        1010 => "the sender is not the expected child contract",
        1011 => "the new stake is too low",
        1012 => "the balance does not exceed the stake: nothing to withdraw",
        1013 => "the proxy endpoint text is malformed",
        1014 => "no registered proxy has this seqno",
        1015 => "the worker fee per token exceeds the price per token",
        1016 => "the proxy's params carry no client code",
        0xFFFF => "unknown operation",
        9 => "malformed message body",
        13 => "out of gas",
        _ => "unexpected error",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type EventHook = Box<dyn Fn(&SenderEvent) + Send + Sync>;

/// A standard wallet that sends operations and waits for them (see the module docs).
///
/// Messages of an operation that failed with [`OpsError::Expired`] or
/// [`OpsError::NotConfirmed`] stay with the wallet sender, which delivers them during the
/// next operation on the same `WalletOps`; read the state before repeating one.
pub struct WalletOps<C: Chain> {
    sender: WalletSender<C>,
    next_query_id: u64,
    on_event: Option<EventHook>,
    /// How long the wallet may take to accept a message (its seqno advancing; default 60 s).
    pub confirm_timeout: Duration,
    /// How long, once the wallet accepted a message, the destination's transaction and its
    /// effect may take to show (default 10 s).
    pub settle_timeout: Duration,
    /// How often the wallet and the contracts are polled meanwhile (default 200 ms).
    pub poll: Duration,
}

impl<C: Chain> std::fmt::Debug for WalletOps<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletOps")
            .field("sender", &self.sender)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("settle_timeout", &self.settle_timeout)
            .finish_non_exhaustive()
    }
}

impl<C: Chain> WalletOps<C> {
    /// Operations sent from `wallet`, signed with `key`, through `chain`. An unconfirmed
    /// message is resent every 10 s (the same BOC, so it is accepted at most once).
    pub fn new(chain: C, wallet: Wallet, key: SigningKey) -> Result<Self, OpsError> {
        let mut sender = WalletSender::new(chain, wallet, key)?;
        sender.resend_every = Duration::from_secs(10);
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(WalletOps {
            sender,
            next_query_id: seed,
            on_event: None,
            confirm_timeout: Duration::from_secs(60),
            settle_timeout: Duration::from_secs(10),
            poll: Duration::from_millis(200),
        })
    }

    /// The wallet's address.
    pub fn address(&self) -> &StdAddr {
        self.sender.address()
    }

    /// The chain client.
    pub fn chain(&self) -> &C {
        self.sender.chain()
    }

    /// Calls `f` with every event of the wallet sender (sent, resent, confirmed, expired).
    pub fn on_event(&mut self, f: impl Fn(&SenderEvent) + Send + Sync + 'static) {
        self.on_event = Some(Box::new(f));
    }

    /// A query id not used before by this `WalletOps` (seeded from the clock).
    pub fn query_id(&mut self) -> u64 {
        self.next_query_id = self.next_query_id.wrapping_add(1);
        self.next_query_id
    }

    /// Sends `msgs` (at most [`crate::wallet::MAX_MESSAGES`] go in one external message) and
    /// waits until the wallet accepted all of them; returns the last accepted seqno.
    pub async fn send(&mut self, msgs: Vec<OutMsg>) -> Result<u32, OpsError> {
        let mut waiting = msgs.clone();
        for m in msgs {
            self.sender.enqueue(m);
        }
        let deadline = Instant::now() + self.confirm_timeout;
        let mut last = 0;
        loop {
            for ev in self.sender.tick(unix_now()).await? {
                if let Some(f) = &self.on_event {
                    f(&ev);
                }
                match ev {
                    SenderEvent::Confirmed { seqno, messages } => {
                        waiting.retain(|m| !messages.contains(m));
                        last = seqno;
                    }
                    SenderEvent::Expired { seqno } => return Err(OpsError::Expired { seqno }),
                    SenderEvent::Sent { .. } | SenderEvent::Resent { .. } => {}
                }
            }
            if waiting.is_empty() {
                return Ok(last);
            }
            if Instant::now() >= deadline {
                return Err(OpsError::NotConfirmed(self.confirm_timeout));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Sends `msg` and returns the destination's transaction for it, refused when that
    /// transaction failed. `what` names the operation in errors.
    pub async fn send_checked(&mut self, msg: OutMsg, what: &str) -> Result<Transaction, OpsError> {
        let to = msg.to.clone();
        let body = msg.body.clone();
        let cursor = self.chain().account_state(&to).await?.last_tx;
        self.send(vec![msg]).await?;
        let tx = self.find_tx(&to, cursor, body.as_ref(), what).await?;
        if let Ok(Some(o)) = tx.outcome()
            && o.failed()
        {
            return Err(OpsError::Refused {
                contract: to,
                what: what.to_owned(),
                exit_code: o.exit_code,
                action_result_code: o.action_result_code,
            });
        }
        Ok(tx)
    }

    /// The first transaction of `contract` after `cursor` whose inbound message is ours:
    /// from this wallet, with `body`'s opcode and query id (any body when `None`).
    async fn find_tx(
        &self,
        contract: &StdAddr,
        mut cursor: Option<TxId>,
        body: Option<&Cell>,
        what: &str,
    ) -> Result<Transaction, OpsError> {
        let want = body.and_then(op_and_query_id);
        let ours = |tx: &Transaction| {
            tx.in_msg.as_ref().is_some_and(|m| {
                m.source.as_ref() == Some(self.address())
                    && (want.is_none() || m.body.as_ref().and_then(op_and_query_id) == want)
            })
        };
        let deadline = Instant::now() + self.settle_timeout;
        loop {
            let txs = self
                .chain()
                .transactions_since(contract, cursor.as_ref(), PAGE)
                .await?;
            let full = txs.len() >= PAGE;
            if let Some(t) = txs.last() {
                cursor = Some(t.id.clone());
            }
            if let Some(tx) = txs.into_iter().find(&ours) {
                return Ok(tx);
            }
            if full {
                continue;
            }
            if Instant::now() >= deadline {
                return Err(OpsError::NoTransaction {
                    what: what.to_owned(),
                    contract: contract.clone(),
                    within: self.settle_timeout,
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Polls `probe` until it gives a value or [`WalletOps::settle_timeout`] passes.
    async fn settle<T, F>(&self, mut probe: impl FnMut() -> F) -> Result<Option<T>, OpsError>
    where
        F: Future<Output = Result<Option<T>, OpsError>>,
    {
        let deadline = Instant::now() + self.settle_timeout;
        loop {
            if let Some(v) = probe().await? {
                return Ok(Some(v));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
