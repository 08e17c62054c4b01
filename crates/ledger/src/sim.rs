//! Test and fuzz harness: drives a [`Ledger`] over a [`MemStore`] with a sequence of
//! operations — requests, usage, checkpoints, chain observations, store failures, crashes,
//! restores of old backups, params changes — and checks the invariants after every step.
//!
//! **It panics when an invariant breaks** (that is its job as a test oracle); never call it
//! from production code. Used by this crate's tests (plain and proptest) and by
//! `fuzz/fuzz_targets/ledger.rs`.
//!
//! Invariants checked:
//! - [`Ledger::audit`] is clean: conservation (Σ client tokens = Σ worker tokens, Σ client
//!   nanoTON = Σ worker nanoTON + commission), counters ordered, none negative;
//! - every acknowledged commit survives a crash: the store holds exactly the state
//!   acknowledged last, and replaying every acknowledged update rebuilds it;
//! - receipts never decrease for an account, across crashes and restores, and after any
//!   successful reopen the account's confirmed tokens still cover the largest receipt issued;
//! - a checkpoint on chain is never refused by the database that prepared it, and an old
//!   backup that does not know the chain's checkpoint is refused;
//! - receipts verify under the proxy key and are bound to the account's contract.

use std::collections::{BTreeMap, HashMap};

use cocoon_openai::usage::{
    CompletionTokensDetails, Multipliers, PriceTable, PromptTokensDetails, Usage,
};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::{HashBytes, StdAddr};

use crate::error::{LedgerError, OpenError};
use crate::ledger::Ledger;
use crate::open::OpenOptions;
use crate::store::{MemStore, Store};
use crate::types::{AccountKey, ChainCheckpoint, ClientFunds, RequestId, Status};
use crate::update::Update;

/// One step of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Observe client `client`'s contract with this balance and stake (nanoTON).
    Fund {
        /// Client index.
        client: u8,
        /// Balance.
        balance: u64,
        /// Stake.
        stake: u64,
    },
    /// Reserve `tokens` for a new request of `client`.
    Reserve {
        /// Client index.
        client: u8,
        /// Tokens.
        tokens: u64,
    },
    /// Settle running request `req` (index into the running ones) served by `worker`.
    Settle {
        /// Running-request index.
        req: u8,
        /// Worker index.
        worker: u8,
        /// Usage.
        usage: Usage,
        /// Worker coefficient.
        coefficient: u64,
    },
    /// Cancel running request `req`.
    Cancel {
        /// Running-request index.
        req: u8,
    },
    /// Commit queued updates (one batch).
    Commit,
    /// Make the next commit fail.
    FailNextCommit,
    /// Prepare a checkpoint, commit, send it on chain.
    Checkpoint,
    /// Feed the next on-chain checkpoint to the ledger.
    Confirm,
    /// Feed a checkpoint the ledger never made.
    BogusConfirm(u8),
    /// Ask for the receipt of client/worker `idx`.
    Receipt {
        /// Worker (true) or client.
        worker: bool,
        /// Index.
        idx: u8,
    },
    /// The chain shows the client/worker settled up to its confirmed tokens
    /// (`overshoot > 0`: more than the ledger knows — must freeze, not abort).
    ObserveSettled {
        /// Worker (true) or client.
        worker: bool,
        /// Index.
        idx: u8,
        /// Tokens beyond the confirmed ones.
        overshoot: u64,
    },
    /// Kill the process: drop everything not committed, reopen.
    Crash,
    /// Take a backup of the store now.
    Backup,
    /// Replace the store by the backup and reopen (an operator restoring an old copy).
    Restore,
    /// Root params move to the next version.
    ParamsChange,
    /// Ask for the final receipt of an old-version account and mark it closed.
    Close {
        /// Worker (true) or client.
        worker: bool,
        /// Index.
        idx: u8,
    },
}

const CLIENTS: u8 = 4;
const WORKERS: u8 = 3;

/// Reads operations from fuzz bytes (never fails; short input just ends the workload).
pub fn ops_from_bytes(data: &[u8]) -> Vec<Op> {
    let mut it = data.iter().copied();
    let mut next = move || it.next();
    let mut ops = Vec::new();
    while let Some(tag) = next() {
        let mut b = || u64::from(next().unwrap_or(0));
        let op = match tag % 20 {
            0 | 1 => Op::Fund {
                client: (b() as u8) % CLIENTS,
                balance: b() * 1_000 + b() * 100_000,
                stake: b() * 1_000 + b() * 100_000,
            },
            2..=4 => Op::Reserve {
                client: (b() as u8) % CLIENTS,
                tokens: b() * 16 + b(),
            },
            5..=7 => {
                let (req, worker) = (b() as u8, (b() as u8) % WORKERS);
                let (prompt, completion) = (b() * 8 + b(), b() * 8 + b());
                let (cached, reasoning) = (b(), b());
                Op::Settle {
                    req,
                    worker,
                    usage: usage(prompt, completion, cached, reasoning),
                    coefficient: 500 + b() * 20,
                }
            }
            8 => Op::Cancel { req: b() as u8 },
            9 | 10 => Op::Commit,
            11 => Op::FailNextCommit,
            12 => Op::Checkpoint,
            13 => Op::Confirm,
            14 => Op::Receipt {
                worker: b() % 2 == 1,
                idx: b() as u8,
            },
            15 => Op::ObserveSettled {
                worker: b() % 2 == 1,
                idx: b() as u8,
                overshoot: if b() == 0xff { 1 + b() } else { 0 },
            },
            16 => Op::Crash,
            17 => match b() % 8 {
                0 => Op::Restore,
                1 => Op::BogusConfirm(b() as u8),
                2 => Op::ParamsChange,
                _ => Op::Backup,
            },
            _ => Op::Close {
                worker: b() % 2 == 1,
                idx: b() as u8,
            },
        };
        ops.push(op);
    }
    ops
}

/// A usage with cached and reasoning details.
pub fn usage(prompt: u64, completion: u64, cached: u64, reasoning: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: cached,
        }),
        completion_tokens_details: Some(CompletionTokensDetails {
            reasoning_tokens: reasoning,
        }),
    }
}

/// The prices of params version `v` in the simulation.
pub fn prices(v: u32) -> PriceTable {
    PriceTable {
        price_per_token: 20 + u64::from(v),
        worker_fee_per_token: 16,
        multipliers: Multipliers {
            prompt: 10_000,
            cached: 1_000,
            completion: 20_000,
            reasoning: 15_000,
        },
    }
}

fn addr(kind: u8, i: u8) -> StdAddr {
    let mut b = [0u8; 32];
    b[0] = kind;
    b[1] = i;
    StdAddr::new(0, HashBytes(b))
}

/// Client `i`'s contract address (the same across params versions, for simplicity).
pub fn client_addr(i: u8) -> StdAddr {
    addr(1, i % CLIENTS)
}

/// Worker `i`'s contract address.
pub fn worker_addr(i: u8) -> StdAddr {
    addr(2, i % WORKERS)
}

#[derive(Clone)]
struct Acked {
    snapshot: BTreeMap<String, String>,
    updates: Vec<Update>,
    /// Params version the (then empty) store was first opened with.
    genesis: u32,
}

struct Backup {
    store: MemStore,
    acked: Acked,
}

/// The simulation.
pub struct Sim {
    key: SigningKey,
    store: MemStore,
    ledger: Ledger,
    /// Checkpoints on chain, per proxy contract (params version), in chain order.
    chain: BTreeMap<u32, Vec<ChainCheckpoint>>,
    /// How many of the current contract's checkpoints the ledger has been fed.
    fed: usize,
    acked: Acked,
    backup: Option<Backup>,
    running: Vec<RequestId>,
    next_request: u64,
    version: u32,
    max_receipt: HashMap<AccountKey, u64>,
    session: u64,
    reopened_empty: bool,
    /// Counters for test reports.
    pub stats: SimStats,
}

/// What happened during a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimStats {
    /// Settled requests.
    pub settled: u64,
    /// Successful commits.
    pub commits: u64,
    /// Crashes (and reopens).
    pub crashes: u64,
    /// Receipts issued.
    pub receipts: u64,
    /// Restores refused as rolled back.
    pub rollbacks_refused: u64,
    /// Confirmed checkpoints.
    pub confirmed: u64,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    /// A fresh simulation at params version 1.
    pub fn new() -> Self {
        let key = SigningKey::from_seed(&[0x5a; 32]).expect("seed");
        let store = MemStore::new();
        let ledger =
            Ledger::open(Vec::new(), &key, Self::options(1, BTreeMap::new(), 0)).expect("fresh");
        Sim {
            key,
            store,
            acked: Acked {
                snapshot: ledger.snapshot(),
                updates: Vec::new(),
                genesis: 1,
            },
            ledger,
            chain: BTreeMap::new(),
            fed: 0,
            backup: None,
            running: Vec::new(),
            next_request: 1,
            version: 1,
            max_receipt: HashMap::new(),
            session: 0,
            reopened_empty: false,
            stats: SimStats::default(),
        }
    }

    fn options(version: u32, chain: BTreeMap<u32, ChainCheckpoint>, session: u64) -> OpenOptions {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&session.to_be_bytes());
        OpenOptions {
            params_version: version,
            prices: prices(version),
            chain,
            session: s,
        }
    }

    /// The ledger under test.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Runs `ops`, checking invariants after each, then a final crash and reopen.
    pub fn run(&mut self, ops: &[Op]) {
        for op in ops {
            self.step(op);
            self.check();
        }
        self.verify_replay();
        self.crash_and_reopen();
        self.check();
    }

    /// Replaying every acknowledged update from an empty state gives the acknowledged state
    /// (checked once per run: it costs the whole history).
    pub fn verify_replay(&self) {
        if self.acked.updates.is_empty() {
            return;
        }
        let g = self.acked.genesis;
        let replayed = Ledger::replay(&self.key, g, prices(g), &self.acked.updates);
        assert_eq!(replayed.snapshot(), self.acked.snapshot, "replay differs");
    }

    fn commit(&mut self) -> bool {
        let Some(batch) = self.ledger.take_batch() else {
            return self.ledger.uncommitted() == 0;
        };
        match self.store.commit(&batch) {
            Ok(()) => {
                let updates = batch.updates().to_vec();
                self.ledger.batch_committed(batch);
                self.acked.updates.extend(updates);
                self.acked.snapshot = self.ledger.snapshot();
                self.stats.commits += 1;
                true
            }
            Err(_) => {
                self.ledger.batch_failed(batch);
                false
            }
        }
    }

    /// Applies one operation.
    pub fn step(&mut self, op: &Op) {
        match op {
            Op::Fund {
                client,
                balance,
                stake,
            } => {
                let charged = self
                    .ledger
                    .account(&self.ledger.client_key(&client_addr(*client)))
                    .map_or(0, |a| a.on_chain_tokens);
                let funds = ClientFunds {
                    balance: *balance,
                    stake: *stake,
                };
                let r =
                    self.ledger
                        .observe_client(&client_addr(*client), funds, charged, Status::Open);
                expect_ok_or_frozen(r.map(|_| ()));
            }
            Op::Reserve { client, tokens } => self.reserve(*client, *tokens),
            Op::Settle {
                req,
                worker,
                usage,
                coefficient,
            } => self.settle(*req, *worker, usage, *coefficient),
            Op::Cancel { req } => {
                if !self.running.is_empty() {
                    let id = self.running.remove(usize::from(*req) % self.running.len());
                    self.ledger.cancel(id).expect("cancel a running request");
                }
            }
            Op::Commit => {
                self.commit();
            }
            Op::FailNextCommit => self.store.fail_next_commits(1),
            Op::Checkpoint => self.checkpoint(),
            Op::Confirm => self.confirm(),
            Op::BogusConfirm(b) => {
                let c = ChainCheckpoint {
                    seqno: u32::from(*b),
                    hash: [*b ^ 0x55; 32],
                };
                match self.ledger.confirm_checkpoint(c) {
                    Err(LedgerError::UnknownCheckpoint(_)) => {
                        assert!(self.ledger.halted().is_some());
                        // Everything refuses now; the operator restarts.
                        assert!(matches!(
                            self.ledger
                                .reserve(&client_addr(0), RequestId::from_u64(u64::MAX), 0),
                            Err(LedgerError::Halted(_))
                        ));
                        self.crash_and_reopen();
                    }
                    Err(LedgerError::Halted(_)) => {}
                    other => panic!("bogus checkpoint accepted: {other:?}"),
                }
            }
            Op::Receipt { worker, idx } => self.receipt(*worker, *idx),
            Op::ObserveSettled {
                worker,
                idx,
                overshoot,
            } => self.observe_settled(*worker, *idx, *overshoot),
            Op::Crash => self.crash_and_reopen(),
            Op::Backup => {
                self.backup = Some(Backup {
                    store: self.store.deep_copy(),
                    acked: self.acked.clone(),
                });
            }
            Op::Restore => self.restore(),
            Op::ParamsChange => {
                let v = self.version + 1;
                let _ = self
                    .ledger
                    .change_params(v, prices(v))
                    .expect("newer version");
                self.version = v;
                self.fed = 0;
            }
            Op::Close { worker, idx } => self.close(*worker, *idx),
        }
    }

    fn reserve(&mut self, client: u8, tokens: u64) {
        let id = RequestId::from_u64(self.next_request);
        self.next_request += 1;
        let key = self.ledger.client_key(&client_addr(client));
        let before = self.ledger.account(&key);
        match self.ledger.reserve(&client_addr(client), id, tokens) {
            Ok(()) => {
                let b = before.expect("reserved on a known account");
                assert!(tokens <= b.available, "reserved beyond available");
                self.running.push(id);
            }
            Err(LedgerError::OutOfFunds {
                requested,
                available,
            }) => {
                assert_eq!(requested, tokens);
                assert!(available < tokens);
                assert_eq!(before.map(|b| b.available), Some(available));
            }
            Err(
                LedgerError::UnknownAccount(_)
                | LedgerError::Frozen { .. }
                | LedgerError::NotOpen(_)
                | LedgerError::Halted(_),
            ) => {}
            Err(e) => panic!("reserve: {e}"),
        }
    }

    fn settle(&mut self, req: u8, worker: u8, usage: &Usage, coefficient: u64) {
        if self.running.is_empty() {
            return;
        }
        let id = self.running.remove(usize::from(req) % self.running.len());
        let exceeded = self.ledger.would_exceed(id, usage, coefficient);
        let p = match self
            .ledger
            .settle(id, &worker_addr(worker), usage, coefficient)
        {
            Ok(p) => p,
            Err(LedgerError::Frozen { .. }) => {
                self.ledger.cancel(id).expect("cancel after refused settle");
                return;
            }
            Err(e) => panic!("settle: {e}"),
        };
        // Not visible before commit (unless it changed nothing durable).
        let p = match self.ledger.take_committed(p) {
            Ok(s) => {
                assert_eq!(s.tokens, 0, "a charge was visible before its commit");
                return;
            }
            Err(p) => p,
        };
        if !self.commit() {
            return;
        }
        let s = self.ledger.take_committed(p).expect("committed");
        let prices = prices(s.client.params_version);
        let asked = prices.adjust(usage, coefficient).total;
        assert_eq!(s.reported, asked);
        assert_eq!(s.tokens, asked.min(s.reserved));
        assert_eq!(s.client_nanoton, prices.client_cost(s.tokens));
        assert_eq!(s.worker_nanoton, prices.worker_earning(s.tokens));
        assert_eq!(s.client_nanoton, s.worker_nanoton + s.commission_nanoton);
        assert_eq!(exceeded, asked > s.reserved);
        self.stats.settled += 1;
    }

    fn checkpoint(&mut self) {
        let p = match self.ledger.prepare_checkpoint() {
            Ok(p) => p,
            Err(LedgerError::Halted(_)) => return,
            Err(e) => panic!("prepare: {e}"),
        };
        let p = match self.ledger.take_committed(p) {
            Ok(_) => panic!("checkpoint visible before its commit"),
            Err(p) => p,
        };
        if self.commit() {
            let c = self.ledger.take_committed(p).expect("committed");
            self.chain
                .entry(self.ledger.params_version())
                .or_default()
                .push(c);
        }
    }

    fn confirm(&mut self) {
        let chain = self
            .chain
            .get(&self.ledger.params_version())
            .cloned()
            .unwrap_or_default();
        let Some(c) = chain.get(self.fed).copied() else {
            return;
        };
        match self.ledger.confirm_checkpoint(c) {
            Ok(_) => {
                self.fed += 1;
                self.stats.confirmed += 1;
            }
            Err(LedgerError::Halted(_)) => {}
            Err(e) => panic!("our own checkpoint {c:?} refused: {e}"),
        }
    }

    fn key_of(&self, worker: bool, idx: u8, version: u32) -> AccountKey {
        if worker {
            AccountKey::worker(version, worker_addr(idx))
        } else {
            AccountKey::client(version, client_addr(idx))
        }
    }

    fn record_receipt(&mut self, r: &crate::receipt::Receipt) {
        let pk = self.key.public_key();
        let p = r
            .payment
            .verify(r.op, &r.key.address, &pk)
            .expect("receipt verifies");
        assert_eq!(p.tokens, Some(r.tokens));
        let max = self.max_receipt.entry(r.key.clone()).or_default();
        assert!(
            r.tokens >= *max,
            "receipt went back from {} to {}",
            max,
            r.tokens
        );
        *max = r.tokens;
        self.stats.receipts += 1;
    }

    fn receipt(&mut self, worker: bool, idx: u8) {
        let key = self.key_of(worker, idx, self.version);
        let excess = key.address.clone();
        match self.ledger.receipt(&key, 7, &excess, &self.key.clone()) {
            Ok(Some(r)) => {
                let a = self.ledger.account(&key).expect("account");
                assert_eq!(r.tokens, a.chain_tokens);
                assert!(r.tokens <= a.db_tokens, "receipt covers uncommitted usage");
                self.record_receipt(&r);
            }
            Ok(None) => {}
            Err(LedgerError::NotDurable) => {
                assert!(self.ledger.uncommitted() > 0);
            }
            Err(
                LedgerError::UnknownAccount(_)
                | LedgerError::Frozen { .. }
                | LedgerError::Halted(_),
            ) => {}
            Err(e) => panic!("receipt: {e}"),
        }
    }

    fn observe_settled(&mut self, worker: bool, idx: u8, overshoot: u64) {
        let key = self.key_of(worker, idx, self.version);
        let Some(a) = self.ledger.account(&key) else {
            return;
        };
        let settled = a.chain_tokens + overshoot;
        let r = if worker {
            self.ledger.observe_worker(&key.address, settled)
        } else {
            let funds = a.funds.unwrap_or(ClientFunds {
                balance: 0,
                stake: 0,
            });
            self.ledger
                .observe_client(&key.address, funds, settled, a.status)
        };
        expect_ok_or_frozen(r.map(|_| ()));
        if settled > a.tokens {
            let after = self.ledger.account(&key).expect("account");
            assert!(after.frozen.is_some(), "chain contradiction did not freeze");
        }
    }

    fn close(&mut self, worker: bool, idx: u8) {
        if self.version == 1 {
            return;
        }
        let key = self.key_of(worker, idx, self.version - 1);
        let excess = key.address.clone();
        match self
            .ledger
            .final_receipt(&key, 9, &excess, &self.key.clone())
        {
            Ok(r) => {
                let a = self.ledger.account(&key).expect("account");
                assert_eq!(r.tokens, a.tokens);
                assert_eq!(a.db_tokens, a.tokens);
                self.record_receipt(&r);
                let _ = self.ledger.mark_closed(&key).expect("close");
            }
            Err(
                LedgerError::NotDurable
                | LedgerError::NotClosable { .. }
                | LedgerError::UnknownAccount(_)
                | LedgerError::Frozen { .. }
                | LedgerError::Halted(_),
            ) => {}
            Err(e) => panic!("final receipt: {e}"),
        }
    }

    fn stripped_store(&self) -> BTreeMap<String, String> {
        let mut s = self.store.clone();
        s.load()
            .expect("load")
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v[32..]).into_owned()))
            .collect()
    }

    fn reopen(&mut self) -> Result<Ledger, OpenError> {
        self.session += 1;
        let chain = self
            .chain
            .iter()
            .filter_map(|(v, c)| c.last().map(|c| (*v, *c)))
            .collect();
        let mut store = self.store.clone();
        let rows = store.load().expect("load");
        self.reopened_empty = rows.is_empty();
        Ledger::open(
            rows,
            &self.key,
            Self::options(self.version, chain, self.session),
        )
    }

    /// Drops the ledger as a crash would (uncommitted updates are lost), checks that the
    /// store holds exactly the acknowledged state, reopens and commits the open-time updates.
    pub fn crash_and_reopen(&mut self) {
        self.stats.crashes += 1;
        let mut durable = self.stripped_store();
        if self.acked.updates.is_empty() && durable.is_empty() {
            durable = self.acked.snapshot.clone(); // nothing ever written: fresh meta only
        }
        assert_eq!(durable, self.acked.snapshot, "acknowledged state lost");
        let ledger = self.reopen().expect("reopen after crash");
        self.install(ledger);
    }

    fn install(&mut self, ledger: Ledger) {
        self.ledger = ledger;
        if self.reopened_empty {
            self.acked.genesis = self.version;
        }
        self.running.clear();
        // The open may have confirmed the chain's last checkpoint: everything fed.
        self.fed = self
            .chain
            .get(&self.ledger.params_version())
            .map_or(0, |c| c.len());
        self.store.fail_next_commits(0);
        // Open-time updates (confirmation, params change) are committed before serving.
        while self.ledger.uncommitted() > 0 {
            assert!(self.commit(), "commit after reopen");
        }
        for (k, r) in &self.max_receipt {
            if let Some(a) = self.ledger.account(k)
                && a.frozen.is_none()
            {
                let covered = a.chain_tokens;
                assert!(
                    covered >= *r,
                    "{k}: reopened state covers {covered} tokens but {r} were receipted"
                );
            }
        }
    }

    fn restore(&mut self) {
        let Some(b) = self.backup.take() else { return };
        let current = std::mem::replace(&mut self.store, b.store.deep_copy());
        match self.reopen() {
            Ok(ledger) => {
                self.acked = b.acked;
                self.install(ledger);
            }
            Err(OpenError::RolledBack { .. }) => {
                // The chain proves the backup is old: refused, keep running on the real store.
                self.stats.rollbacks_refused += 1;
                self.store = current;
                self.crash_and_reopen();
            }
            Err(e) => panic!("restore: unexpected {e}"),
        }
    }

    /// Checks the invariants that must hold between any two steps.
    pub fn check(&self) {
        let problems = self.ledger.audit();
        assert!(problems.is_empty(), "invariants broken: {problems:?}");
        for (k, r) in &self.max_receipt {
            if let Some(a) = self.ledger.account(k) {
                assert!(a.last_receipt <= a.tokens.max(*r));
            }
        }
    }
}

fn expect_ok_or_frozen(r: Result<(), LedgerError>) {
    match r {
        Ok(()) | Err(LedgerError::Frozen { .. }) => {}
        Err(e) => panic!("unexpected {e}"),
    }
}
