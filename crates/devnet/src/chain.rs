//! The chain core: accounts, a logical clock, and message processing through
//! `tycho-executor`.
//!
//! The devnet is one shard with one validator and no blocks to speak of. Every message that
//! enters ([`Devnet::send_external`], [`Devnet::faucet`], [`Devnet::send_internal`]) starts a
//! *batch*: it is executed against the destination account, and every internal message the
//! transaction emits is appended to a FIFO queue that is drained to completion before the
//! call returns. This is the processing order of `@ton/sandbox` (its `MessageQueueManager`),
//! and like the sandbox the logical time advances by 1,000,000 before each transaction and
//! the random seed is all zeroes, so the same inputs give the same transactions, hashes and
//! balances. Each batch is one synthetic masterchain "block" (`seqno` + 1).
//!
//! What the executor does is what TON does: value sent to an address without an account
//! creates an uninitialised account (compute phase skipped, `aborted = true`: that is *not* a
//! failure); a bounceable message that fails bounces back; an
//! external message that the contract does not accept is rejected and leaves no trace.
//!
//! Time only moves when asked to ([`Devnet::advance`], [`Devnet::set_now`]), so tests of
//! time-locked contract paths (two-phase close) are exact and repeatable.
//!
//! With a state directory the chain persists after every batch: `state.json` (clock and all
//! accounts as `ShardAccount` BOCs, replaced atomically) and `transactions.jsonl` (one
//! transaction BOC per line, appended first). On load, transactions newer than the saved
//! clock are dropped, so a crash between the two writes loses the whole batch, not half.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tycho_executor::{Executor, ExecutorInspector, ExecutorParams, ParsedConfig, TxError};
use tycho_types::boc::BocRepr;
use tycho_types::cell::Lazy;
use tycho_types::models::{
    Account, AccountState, ComputePhase, CurrencyCollection, IntAddr, IntMsgInfo, MsgInfo,
    OptionalAccount, OwnedMessage, ShardAccount, StateInit, StdAddr, Transaction, TxInfo,
};
use tycho_types::num::Tokens;
use tycho_types::prelude::*;
use tycho_vm::{GasParams, RcStackValue, VmCaller, VmGetterArgs, VmGetterError};

use crate::config::{ChainConfig, ChainConfigError};

/// Logical time added before every transaction (as `@ton/sandbox` does).
pub const LT_STEP: u64 = 1_000_000;
/// By default a batch that has run this many transactions is cut off (runaway message
/// loops); see [`Devnet::set_batch_limit`].
pub const MAX_TXS_PER_BATCH: usize = 10_000;
/// The largest value a faucet call may mint (1e9 TON); `Tokens` itself allows 2^120 - 1.
pub const MAX_FAUCET_NANOTON: u128 = 1_000_000_000_000_000_000;
/// Getter gas limit (the sandbox default).
pub const GETTER_GAS_LIMIT: u64 = 10_000_000;

/// The address the faucet's internal messages come from: `0:fafa…fa`. It never holds an
/// account unless someone sends value to it.
pub fn faucet_address() -> StdAddr {
    StdAddr::new(0, HashBytes([0xfa; 32]))
}

/// Errors of the chain core. Each says what was wrong with the input or the state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevnetError {
    /// The bytes are not a BOC, or the root cell is not a message.
    #[error("bad message BOC: {0}")]
    BadBoc(String),
    /// The message is well-formed but cannot enter the chain this way.
    #[error("bad message: {0}")]
    BadMessage(String),
    /// The destination contract did not accept the external message.
    #[error(
        "cannot apply external message to current state : External message was not accepted{}",
        match .exit_code { Some(c) => format!(" (exit code {c})"), None => String::new() }
    )]
    NotAccepted {
        /// The compute phase exit code, when the VM ran.
        exit_code: Option<i32>,
    },
    /// An address string did not parse.
    #[error("bad address {0:?}: expected raw (0:hex) or user-friendly (base64) form")]
    BadAddress(String),
    /// Time may only move forward.
    #[error("time cannot go backwards: now is {now}, asked for {asked}")]
    TimeBackwards {
        /// Current chain time.
        now: u32,
        /// Requested time.
        asked: u64,
    },
    /// A faucet amount outside `1..=MAX_FAUCET_NANOTON`.
    #[error("faucet amount must be between 1 and {MAX_FAUCET_NANOTON} nanoton, got {0}")]
    BadAmount(u128),
    /// The account has no code, so get-methods cannot run.
    #[error("account {0} is not active (no code); cannot run get-methods")]
    NotActive(String),
    /// The get-method stack argument is malformed.
    #[error("bad stack: {0}")]
    BadStack(String),
    /// A batch hit the transaction limit; what ran is kept, the rest of the queue dropped.
    #[error("batch stopped after {limit} transactions ({left} messages left unprocessed)")]
    RunawayBatch {
        /// The limit in force.
        limit: usize,
        /// Messages dropped.
        left: usize,
    },
    /// The configuration failed to load.
    #[error(transparent)]
    Config(#[from] ChainConfigError),
    /// Reading or writing the state directory failed.
    #[error("state directory {path}: {message}")]
    Storage {
        /// The file involved.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The executor or the cell layer failed on data we built ourselves.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DevnetError {
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

/// A message as recorded in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgRecord {
    /// Hash of the message cell.
    pub hash: HashBytes,
    /// Source address (`None` for inbound external messages).
    pub src: Option<StdAddr>,
    /// Destination address (`None` for outbound external messages without one).
    pub dst: Option<StdAddr>,
    /// Attached value in nanoton (0 for external messages).
    pub value: u128,
    /// Forwarding fee paid for an internal message.
    pub fwd_fee: u128,
    /// `created_lt` of an internal or outbound external message.
    pub created_lt: u64,
    /// `created_at` of an internal or outbound external message.
    pub created_at: u32,
    /// Whether the message is bounceable.
    pub bounce: bool,
    /// Whether this is a bounced message.
    pub bounced: bool,
    /// The body as a cell.
    pub body: Cell,
    /// The state init, if attached.
    pub init: Option<Cell>,
    /// `true` for inbound external messages.
    pub external_in: bool,
    /// `true` for outbound external messages (logs/events).
    pub external_out: bool,
    /// The message cell itself.
    pub cell: Cell,
}

impl MsgRecord {
    /// Decodes a message cell.
    pub fn from_cell(cell: &Cell) -> Result<Self, DevnetError> {
        let msg = cell
            .parse::<OwnedMessage>()
            .map_err(|e| DevnetError::BadBoc(format!("not a message: {e}")))?;
        let body = {
            let (range, root) = &msg.body;
            let slice = range
                .apply(root)
                .map_err(|e| DevnetError::BadBoc(format!("message body: {e}")))?;
            CellBuilder::build_from(slice).map_err(DevnetError::internal)?
        };
        let init = msg
            .init
            .as_ref()
            .map(CellBuilder::build_from)
            .transpose()
            .map_err(DevnetError::internal)?;
        let std = |a: &IntAddr| match a {
            IntAddr::Std(a) => Some(a.clone()),
            IntAddr::Var(_) => None,
        };
        let mut rec = MsgRecord {
            hash: *cell.repr_hash(),
            src: None,
            dst: None,
            value: 0,
            fwd_fee: 0,
            created_lt: 0,
            created_at: 0,
            bounce: false,
            bounced: false,
            body,
            init,
            external_in: false,
            external_out: false,
            cell: cell.clone(),
        };
        match &msg.info {
            MsgInfo::Int(info) => {
                rec.src = std(&info.src);
                rec.dst = std(&info.dst);
                rec.value = info.value.tokens.into_inner();
                rec.fwd_fee = info.fwd_fee.into_inner();
                rec.created_lt = info.created_lt;
                rec.created_at = info.created_at;
                rec.bounce = info.bounce;
                rec.bounced = info.bounced;
            }
            MsgInfo::ExtIn(info) => {
                rec.dst = std(&info.dst);
                rec.external_in = true;
            }
            MsgInfo::ExtOut(info) => {
                rec.src = std(&info.src);
                rec.created_lt = info.created_lt;
                rec.created_at = info.created_at;
                rec.external_out = true;
            }
        }
        Ok(rec)
    }
}

/// One executed transaction with the facts tests and the API need, decoded once.
#[derive(Debug, Clone)]
pub struct TxRecord {
    /// The account.
    pub account: StdAddr,
    /// Logical time of the transaction.
    pub lt: u64,
    /// Hash of the transaction cell.
    pub hash: HashBytes,
    /// Unix time of the transaction.
    pub now: u32,
    /// Previous transaction of this account.
    pub prev_lt: u64,
    /// Hash of the previous transaction of this account.
    pub prev_hash: HashBytes,
    /// The inbound message.
    pub in_msg: Option<MsgRecord>,
    /// Outbound messages in order.
    pub out_msgs: Vec<MsgRecord>,
    /// Compute phase exit code (`None` when the compute phase was skipped).
    pub exit_code: Option<i32>,
    /// Gas used by the compute phase (0 when skipped).
    pub gas_used: u64,
    /// Action phase result code (`None` without an action phase).
    pub action_result_code: Option<i32>,
    /// Total fees of the transaction in nanoton.
    pub total_fees: u128,
    /// Storage fees collected in the storage phase.
    pub storage_fees: u128,
    /// Whether the transaction was aborted.
    pub aborted: bool,
    /// Whether the compute phase was skipped (e.g. no code yet).
    pub compute_skipped: bool,
    /// The transaction cell.
    pub cell: Cell,
}

impl TxRecord {
    /// Everything the transaction cost its account and the chain: its total fees plus the
    /// forwarding fees of the internal messages it sent (what a balance sheet over accounts
    /// must add back).
    pub fn fees_paid(&self) -> u128 {
        self.total_fees
            + self
                .out_msgs
                .iter()
                .filter(|m| !m.external_out)
                .map(|m| m.fwd_fee)
                .sum::<u128>()
    }

    /// Decodes a transaction cell.
    pub fn from_cell(workchain: i8, cell: Cell) -> Result<Self, DevnetError> {
        let tx = cell
            .parse::<Transaction>()
            .map_err(|e| DevnetError::Internal(format!("transaction cell: {e}")))?;
        let info = tx.load_info().map_err(DevnetError::internal)?;
        let mut rec = TxRecord {
            account: StdAddr::new(workchain, tx.account),
            lt: tx.lt,
            hash: *cell.repr_hash(),
            now: tx.now,
            prev_lt: tx.prev_trans_lt,
            prev_hash: tx.prev_trans_hash,
            in_msg: tx.in_msg.as_ref().map(MsgRecord::from_cell).transpose()?,
            out_msgs: Vec::new(),
            exit_code: None,
            gas_used: 0,
            action_result_code: None,
            total_fees: tx.total_fees.tokens.into_inner(),
            storage_fees: 0,
            aborted: false,
            compute_skipped: true,
            cell: cell.clone(),
        };
        for entry in tx.out_msgs.iter() {
            let (_, msg) = entry.map_err(DevnetError::internal)?;
            rec.out_msgs.push(MsgRecord::from_cell(&msg)?);
        }
        if let TxInfo::Ordinary(info) = info {
            rec.aborted = info.aborted;
            if let Some(storage) = &info.storage_phase {
                rec.storage_fees = storage.storage_fees_collected.into_inner();
            }
            if let ComputePhase::Executed(c) = &info.compute_phase {
                rec.compute_skipped = false;
                rec.exit_code = Some(c.exit_code);
                rec.gas_used = c.gas_used.into_inner();
            }
            rec.action_result_code = info.action_phase.as_ref().map(|a| a.result_code);
        }
        Ok(rec)
    }

    /// A failure: aborted with a compute phase that ran,
    /// or an action phase that failed. Value landing on an uninitialised account is not one.
    pub fn failed(&self) -> bool {
        (self.aborted && !self.compute_skipped) || self.action_result_code.is_some_and(|c| c != 0)
    }
}

/// A get-method result.
#[derive(Debug)]
pub struct GetterOutput {
    /// TVM exit code (0 or 1 is success).
    pub exit_code: i32,
    /// Gas consumed.
    pub gas_used: u64,
    /// Result stack, bottom first.
    pub stack: Vec<RcStackValue>,
}

/// Account status in toncenter's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// No account or no code yet.
    Uninitialized,
    /// Has code and data.
    Active,
    /// Frozen for unpaid storage.
    Frozen,
}

impl AccountStatus {
    /// The toncenter string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uninitialized => "uninitialized",
            Self::Active => "active",
            Self::Frozen => "frozen",
        }
    }
}

/// A snapshot of one account, as the API reports it.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    /// Balance in nanoton.
    pub balance: u128,
    /// Status.
    pub status: AccountStatus,
    /// Code cell when active.
    pub code: Option<Cell>,
    /// Data cell when active.
    pub data: Option<Cell>,
    /// Frozen state hash when frozen.
    pub frozen_hash: Option<HashBytes>,
    /// Last transaction lt (0 if none).
    pub last_lt: u64,
    /// Last transaction hash (zero if none).
    pub last_hash: HashBytes,
}

/// A synthetic masterchain block id.
#[derive(Debug, Clone, Copy)]
pub struct BlockRef {
    /// Sequence number: one per batch.
    pub seqno: u32,
    /// Deterministic stand-in for the block root hash.
    pub root_hash: HashBytes,
    /// Deterministic stand-in for the block file hash.
    pub file_hash: HashBytes,
}

/// The embedded chain.
pub struct Devnet {
    config: ChainConfig,
    parsed: ParsedConfig,
    caller: VmCaller,
    now: u32,
    lt: u64,
    seqno: u32,
    accounts: BTreeMap<StdAddr, ShardAccount>,
    txs: BTreeMap<StdAddr, Vec<TxRecord>>,
    tx_count: u64,
    batch_limit: usize,
    dir: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    version: u32,
    now: u32,
    lt: u64,
    seqno: u32,
    /// raw address -> base64 BOC of the `ShardAccount`.
    accounts: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct SavedTx {
    account: String,
    lt: u64,
    boc: String,
}

const STATE_FILE: &str = "state.json";
const TXS_FILE: &str = "transactions.jsonl";

impl Devnet {
    /// A fresh in-memory chain under the TON mainnet config with the clock at `now`.
    pub fn new(now: u32) -> Result<Self, DevnetError> {
        Self::with_config(ChainConfig::mainnet()?, now)
    }

    /// A fresh in-memory chain under the given config.
    pub fn with_config(config: ChainConfig, now: u32) -> Result<Self, DevnetError> {
        let parsed = config.parsed(now)?;
        let caller = VmCaller {
            libraries: Dict::new(),
            behaviour_modifiers: Default::default(),
            config: config.params.clone(),
        };
        Ok(Self {
            config,
            parsed,
            caller,
            now,
            lt: 0,
            seqno: 0,
            accounts: BTreeMap::new(),
            txs: BTreeMap::new(),
            tx_count: 0,
            batch_limit: MAX_TXS_PER_BATCH,
            dir: None,
        })
    }

    /// Opens (or creates) a persistent chain in `dir`. An existing state is reloaded and
    /// `now` is ignored; a new one starts at `now`.
    pub fn open(dir: &Path, now: u32) -> Result<Self, DevnetError> {
        fs::create_dir_all(dir).map_err(|e| storage(dir, e))?;
        let state_path = dir.join(STATE_FILE);
        let mut chain = Self::new(now)?;
        chain.dir = Some(dir.to_path_buf());
        if !state_path.exists() {
            // Start the transaction log empty: a stale one from a crashed first run must not
            // be replayed against a fresh state.
            let txs_path = dir.join(TXS_FILE);
            if txs_path.exists() {
                fs::remove_file(&txs_path).map_err(|e| storage(&txs_path, e))?;
            }
            chain.save_state()?;
            return Ok(chain);
        }
        let text = fs::read_to_string(&state_path).map_err(|e| storage(&state_path, e))?;
        let saved: SavedState = serde_json::from_str(&text).map_err(|e| storage(&state_path, e))?;
        if saved.version != 1 {
            return Err(storage(
                &state_path,
                format!("unknown state version {}", saved.version),
            ));
        }
        chain.set_clock_raw(saved.now)?;
        chain.lt = saved.lt;
        chain.seqno = saved.seqno;
        for (addr, boc) in &saved.accounts {
            let address: StdAddr = addr.parse().map_err(|e| storage(&state_path, e))?;
            let account: ShardAccount =
                BocRepr::decode_base64(boc).map_err(|e| storage(&state_path, e))?;
            chain.accounts.insert(address, account);
        }
        let txs_path = dir.join(TXS_FILE);
        if txs_path.exists() {
            let text = fs::read_to_string(&txs_path).map_err(|e| storage(&txs_path, e))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let Ok(saved_tx) = serde_json::from_str::<SavedTx>(line) else {
                    // A torn last line from a crash: everything after it is uncommitted.
                    break;
                };
                if saved_tx.lt > chain.lt {
                    continue; // from a batch whose state was never committed
                }
                let account: StdAddr = saved_tx
                    .account
                    .parse()
                    .map_err(|e| storage(&txs_path, e))?;
                let cell = Boc::decode_base64(&saved_tx.boc).map_err(|e| storage(&txs_path, e))?;
                let rec = TxRecord::from_cell(account.workchain, cell)?;
                chain.txs.entry(account).or_default().push(rec);
                chain.tx_count += 1;
            }
        }
        Ok(chain)
    }

    /// Sets how many transactions one batch may run (at least 1).
    pub fn set_batch_limit(&mut self, limit: usize) {
        self.batch_limit = limit.max(1);
    }

    /// Current unix time of the chain.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// Current logical time (the lt of the latest transaction's block step).
    pub fn lt(&self) -> u64 {
        self.lt
    }

    /// Number of transactions executed (since genesis, including reloaded ones).
    pub fn tx_count(&self) -> u64 {
        self.tx_count
    }

    /// Number of accounts that exist.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// The state directory, if persistent.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The latest synthetic block.
    pub fn last_block(&self) -> BlockRef {
        self.block_ref(self.seqno)
    }

    /// Block ids are derived from `(seqno)` only, so they are stable across restarts.
    pub fn block_ref(&self, seqno: u32) -> BlockRef {
        let hash = |tag: u32| {
            let mut b = CellBuilder::new();
            // Building a 64-bit cell cannot fail.
            let _ = b.store_u32(tag);
            let _ = b.store_u32(seqno);
            b.build().map(|c| *c.repr_hash()).unwrap_or_default()
        };
        BlockRef {
            seqno,
            root_hash: hash(0x524f_4f54), // "ROOT"
            file_hash: hash(0x4649_4c45), // "FILE"
        }
    }

    /// Moves the clock forward by `seconds`.
    pub fn advance(&mut self, seconds: u64) -> Result<u32, DevnetError> {
        let target = u64::from(self.now) + seconds;
        self.set_now(target)
    }

    /// Sets the clock to `unix` (must not be earlier than now).
    pub fn set_now(&mut self, unix: u64) -> Result<u32, DevnetError> {
        if unix < u64::from(self.now) || unix > u64::from(u32::MAX) {
            return Err(DevnetError::TimeBackwards {
                now: self.now,
                asked: unix,
            });
        }
        self.set_clock_raw(unix as u32)?;
        self.persist(&[])?;
        Ok(self.now)
    }

    fn set_clock_raw(&mut self, now: u32) -> Result<(), DevnetError> {
        self.now = now;
        self.parsed
            .update_storage_prices(now)
            .map_err(DevnetError::internal)
    }

    /// The raw `ShardAccount` for `addr` (an empty one if the account does not exist).
    pub fn shard_account(&self, addr: &StdAddr) -> Result<ShardAccount, DevnetError> {
        match self.accounts.get(addr) {
            Some(acc) => Ok(acc.clone()),
            None => empty_shard_account(),
        }
    }

    /// Account facts for the API.
    pub fn account(&self, addr: &StdAddr) -> Result<AccountInfo, DevnetError> {
        let shard = self.shard_account(addr)?;
        let account = shard.load_account().map_err(DevnetError::internal)?;
        let mut info = AccountInfo {
            balance: 0,
            status: AccountStatus::Uninitialized,
            code: None,
            data: None,
            frozen_hash: None,
            last_lt: shard.last_trans_lt,
            last_hash: shard.last_trans_hash,
        };
        if let Some(acc) = account {
            info.balance = acc.balance.tokens.into_inner();
            match acc.state {
                AccountState::Uninit => {}
                AccountState::Active(state) => {
                    info.status = AccountStatus::Active;
                    info.code = state.code;
                    info.data = state.data;
                }
                AccountState::Frozen(hash) => {
                    info.status = AccountStatus::Frozen;
                    info.frozen_hash = Some(hash);
                }
            }
        }
        Ok(info)
    }

    /// Transactions of `addr`, newest first, starting at (and including) `from_lt` if given,
    /// going back no further than `to_lt` (exclusive, 0 = no bound), at most `limit`.
    pub fn transactions(
        &self,
        addr: &StdAddr,
        from_lt: Option<u64>,
        to_lt: u64,
        limit: usize,
    ) -> Vec<&TxRecord> {
        let Some(list) = self.txs.get(addr) else {
            return Vec::new();
        };
        list.iter()
            .rev()
            .filter(|t| from_lt.is_none_or(|lt| t.lt <= lt))
            .take_while(|t| t.lt > to_lt)
            .take(limit)
            .collect()
    }

    /// Finds one transaction by account, lt and hash.
    pub fn transaction(&self, addr: &StdAddr, lt: u64, hash: &HashBytes) -> Option<&TxRecord> {
        self.txs
            .get(addr)?
            .iter()
            .find(|t| t.lt == lt && &t.hash == hash)
    }

    /// Sends an external inbound message (a BOC). Returns every transaction of the batch in
    /// execution order; the first is the receiver's.
    pub fn send_external(&mut self, boc: &[u8]) -> Result<Vec<TxRecord>, DevnetError> {
        let cell = Boc::decode(boc).map_err(|e| DevnetError::BadBoc(e.to_string()))?;
        let msg = cell
            .parse::<OwnedMessage>()
            .map_err(|e| DevnetError::BadBoc(format!("not a message: {e}")))?;
        if !matches!(msg.info, MsgInfo::ExtIn(_)) {
            return Err(DevnetError::BadMessage(
                "sendBoc takes external inbound messages (ext_in_msg_info$10)".into(),
            ));
        }
        self.run_batch(cell)
    }

    /// Injects an internal message as-is (test harnesses and differential tests). The value
    /// it carries is minted: no sender account is debited.
    pub fn send_internal(&mut self, boc: &[u8]) -> Result<Vec<TxRecord>, DevnetError> {
        let cell = Boc::decode(boc).map_err(|e| DevnetError::BadBoc(e.to_string()))?;
        let msg = cell
            .parse::<OwnedMessage>()
            .map_err(|e| DevnetError::BadBoc(format!("not a message: {e}")))?;
        if !matches!(msg.info, MsgInfo::Int(_)) {
            return Err(DevnetError::BadMessage(
                "expected an internal message".into(),
            ));
        }
        self.run_batch(cell)
    }

    /// A non-bounceable internal message from [`faucet_address`] to `addr` carrying `value`
    /// nanoton (and `init`, when deploying) with an empty body, created now.
    fn faucet_message(&self, addr: &StdAddr, value: u128, init: Option<StateInit>) -> OwnedMessage {
        OwnedMessage {
            info: MsgInfo::Int(IntMsgInfo {
                ihr_disabled: true,
                bounce: false,
                bounced: false,
                src: faucet_address().into(),
                dst: addr.clone().into(),
                value: CurrencyCollection::new(value),
                extra_flags: Default::default(),
                fwd_fee: Tokens::ZERO,
                created_lt: self.lt,
                created_at: self.now,
            }),
            init,
            body: Cell::empty_cell().into(),
            layout: None,
        }
    }

    /// Credits `amount` nanoton to `addr` with a non-bounceable internal message from
    /// [`faucet_address`]. A missing account becomes an uninitialised one holding the value.
    pub fn faucet(&mut self, addr: &StdAddr, amount: u128) -> Result<Vec<TxRecord>, DevnetError> {
        if amount == 0 || amount > MAX_FAUCET_NANOTON {
            return Err(DevnetError::BadAmount(amount));
        }
        self.check_destination(addr)?;
        let msg = self.faucet_message(addr, amount, None);
        let cell = CellBuilder::build_from(msg).map_err(DevnetError::internal)?;
        self.run_batch(cell)
    }

    /// Deploys `code`/`data` with a non-bounceable internal message from [`faucet_address`]
    /// carrying `value` nanoton and the state init (the contract runs with an empty body).
    /// Returns the contract address and the batch.
    pub fn deploy(
        &mut self,
        code: Cell,
        data: Cell,
        value: u128,
    ) -> Result<(StdAddr, Vec<TxRecord>), DevnetError> {
        if value == 0 || value > MAX_FAUCET_NANOTON {
            return Err(DevnetError::BadAmount(value));
        }
        let init = StateInit {
            split_depth: None,
            special: None,
            code: Some(code),
            data: Some(data),
            libraries: Dict::new(),
        };
        let hash = *CellBuilder::build_from(&init)
            .map_err(DevnetError::internal)?
            .repr_hash();
        let addr = StdAddr::new(0, hash);
        let msg = self.faucet_message(&addr, value, Some(init));
        let cell = CellBuilder::build_from(msg).map_err(DevnetError::internal)?;
        let txs = self.run_batch(cell)?;
        Ok((addr, txs))
    }

    fn check_destination(&self, addr: &StdAddr) -> Result<(), DevnetError> {
        if addr.anycast.is_some() {
            return Err(DevnetError::BadMessage(
                "anycast addresses are not supported".into(),
            ));
        }
        match self.parsed.workchains.get(&i32::from(addr.workchain)) {
            _ if addr.is_masterchain() => Ok(()),
            Some(wc) if wc.active && wc.accept_msgs => Ok(()),
            _ => Err(DevnetError::BadMessage(format!(
                "workchain {} does not exist or does not accept messages",
                addr.workchain
            ))),
        }
    }

    fn run_batch(&mut self, first: Cell) -> Result<Vec<TxRecord>, DevnetError> {
        let mut done: Vec<TxRecord> = Vec::new();
        let drained = self.drain(first, &mut done);
        // Whatever executed is part of the chain now, even if the batch stopped early.
        self.commit_batch(&done)?;
        drained.map(|()| done)
    }

    fn drain(&mut self, first: Cell, done: &mut Vec<TxRecord>) -> Result<(), DevnetError> {
        let mut queue = VecDeque::from([first]);
        let mut first_msg = true;
        while let Some(msg_cell) = queue.pop_front() {
            if done.len() >= self.batch_limit {
                return Err(DevnetError::RunawayBatch {
                    limit: self.batch_limit,
                    left: queue.len() + 1,
                });
            }
            let msg = msg_cell
                .parse::<OwnedMessage>()
                .map_err(|e| DevnetError::BadBoc(format!("not a message: {e}")))?;
            let (dst, is_external) = match &msg.info {
                MsgInfo::Int(info) => (&info.dst, false),
                MsgInfo::ExtIn(info) => (&info.dst, true),
                MsgInfo::ExtOut(_) => continue, // logs leave the chain
            };
            let dst = match dst {
                IntAddr::Std(a) => a.clone(),
                IntAddr::Var(_) => {
                    return Err(DevnetError::BadMessage(
                        "addr_var destinations are not supported".into(),
                    ));
                }
            };
            if first_msg {
                self.check_destination(&dst)?;
            }
            let tx = self.execute(&dst, is_external, msg_cell, first_msg)?;
            first_msg = false;
            for out in &tx.out_msgs {
                if !out.external_out {
                    queue.push_back(out.cell.clone());
                }
            }
            done.push(tx);
        }
        Ok(())
    }

    fn execute(
        &mut self,
        dst: &StdAddr,
        is_external: bool,
        msg: Cell,
        first: bool,
    ) -> Result<TxRecord, DevnetError> {
        let lt = self.lt + LT_STEP;
        let params = ExecutorParams {
            block_unixtime: self.now,
            block_lt: lt,
            ..Default::default()
        };
        let state = self.shard_account(dst)?;
        let mut inspector = ExecutorInspector::default();
        let result = Executor::new(&params, &self.parsed)
            .with_min_lt(lt)
            .begin_ordinary_ext(dst, is_external, msg, &state, Some(&mut inspector));
        let uncommitted = match result {
            Ok(tx) => tx,
            Err(TxError::Skipped) if is_external && first => {
                return Err(DevnetError::NotAccepted {
                    exit_code: inspector.exit_code,
                });
            }
            Err(TxError::Skipped) => {
                return Err(DevnetError::Internal(
                    "executor skipped an internal message".into(),
                ));
            }
            Err(TxError::Fatal(e)) => return Err(DevnetError::Internal(format!("{e:#}"))),
        };
        let output = uncommitted
            .commit()
            .map_err(|e| DevnetError::Internal(format!("{e:#}")))?;
        self.lt = lt;
        let tx_cell = output.transaction.into_inner();
        let rec = TxRecord::from_cell(dst.workchain, tx_cell)?;
        // An account that ends with nothing (e.g. a zero-value message to a missing
        // account) is not stored: it does not exist.
        let exists = output
            .new_state
            .load_account()
            .map_err(DevnetError::internal)?
            .is_some();
        if exists {
            self.accounts.insert(dst.clone(), output.new_state);
        } else {
            self.accounts.remove(dst);
        }
        self.txs.entry(dst.clone()).or_default().push(rec.clone());
        self.tx_count += 1;
        Ok(rec)
    }

    fn commit_batch(&mut self, txs: &[TxRecord]) -> Result<(), DevnetError> {
        if txs.is_empty() {
            return Ok(());
        }
        self.seqno += 1;
        self.persist(txs)
    }

    fn persist(&self, txs: &[TxRecord]) -> Result<(), DevnetError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if !txs.is_empty() {
            let path = dir.join(TXS_FILE);
            let mut lines = String::new();
            for tx in txs {
                let saved = SavedTx {
                    account: tx.account.to_string(),
                    lt: tx.lt,
                    boc: Boc::encode_base64(&tx.cell),
                };
                lines.push_str(&serde_json::to_string(&saved).map_err(DevnetError::internal)?);
                lines.push('\n');
            }
            let mut file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| storage(&path, e))?;
            file.write_all(lines.as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(|e| storage(&path, e))?;
        }
        self.save_state()
    }

    /// Writes the state file now (a no-op for an in-memory chain). Every batch and clock
    /// change already persists; this is for shutdown.
    pub fn flush(&self) -> Result<(), DevnetError> {
        self.save_state()
    }

    fn save_state(&self) -> Result<(), DevnetError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut accounts = BTreeMap::new();
        for (addr, acc) in &self.accounts {
            let boc = BocRepr::encode_base64(acc).map_err(DevnetError::internal)?;
            accounts.insert(addr.to_string(), boc);
        }
        let saved = SavedState {
            version: 1,
            now: self.now,
            lt: self.lt,
            seqno: self.seqno,
            accounts,
        };
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(&saved).map_err(DevnetError::internal)?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| storage(&path, e))
    }

    /// Puts an account in place directly (genesis deployments). The account must be
    /// consistent with `addr`.
    pub fn put_account(&mut self, addr: &StdAddr, account: Account) -> Result<(), DevnetError> {
        if account.address != IntAddr::Std(addr.clone()) {
            return Err(DevnetError::BadMessage(
                "account address does not match".into(),
            ));
        }
        let shard = ShardAccount {
            account: Lazy::new(&OptionalAccount(Some(account))).map_err(DevnetError::internal)?,
            last_trans_hash: HashBytes::ZERO,
            last_trans_lt: 0,
        };
        self.accounts.insert(addr.clone(), shard);
        self.save_state()
    }

    /// Runs get-method `method` (name or numeric id) on `addr` with `stack` (bottom first).
    pub fn run_get_method(
        &self,
        addr: &StdAddr,
        method: &GetMethodId,
        stack: Vec<RcStackValue>,
    ) -> Result<GetterOutput, DevnetError> {
        let shard = self.shard_account(addr)?;
        let account = shard
            .load_account()
            .map_err(DevnetError::internal)?
            .ok_or_else(|| DevnetError::NotActive(addr.to_string()))?;
        let mut args = VmGetterArgs::default();
        args.now = self.now;
        args.rand_seed = HashBytes::ZERO;
        args.gas_params = GasParams {
            max: GETTER_GAS_LIMIT,
            limit: GETTER_GAS_LIMIT,
            ..GasParams::getter()
        };
        let id = match method {
            GetMethodId::Name(name) => {
                tycho_vm::VmGetterMethodId::as_getter_method_id(name.as_str())
            }
            GetMethodId::Id(id) => *id,
        };
        let out = self
            .caller
            .call_getter_ext(&account, id, stack, &args, None)
            .map_err(|e| match e {
                VmGetterError::NoCode => DevnetError::NotActive(addr.to_string()),
                other => DevnetError::Internal(other.to_string()),
            })?;
        Ok(GetterOutput {
            exit_code: out.exit_code,
            gas_used: out.gas_used,
            stack: out.stack,
        })
    }

    /// The executor configuration in force (for tools that need prices).
    pub fn parsed_config(&self) -> &ParsedConfig {
        &self.parsed
    }

    /// The raw configuration.
    pub fn config(&self) -> &ChainConfig {
        &self.config
    }
}

/// A get-method selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetMethodId {
    /// By name; the id is `crc16(name) | 0x10000`.
    Name(String),
    /// By numeric id.
    Id(u32),
}

fn empty_shard_account() -> Result<ShardAccount, DevnetError> {
    Ok(ShardAccount {
        account: Lazy::new(&OptionalAccount::EMPTY).map_err(DevnetError::internal)?,
        last_trans_hash: HashBytes::ZERO,
        last_trans_lt: 0,
    })
}

fn storage(path: &Path, e: impl std::fmt::Display) -> DevnetError {
    DevnetError::Storage {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
