//! The pure ledger: accounts, reservations, settlement and checkpoints, with no I/O and no
//! clock. Every durable change becomes a numbered [`Update`]; results a peer may be told are
//! wrapped in [`Pending`] until the store has committed the update that covers them.

use std::collections::{BTreeSet, HashMap};

use cocoon_openai::usage::{PriceTable, Usage};
use cocoon_ton::StdAddr;
use ring::digest;

use crate::account::{Account, AccountView};
use crate::codec::RowCodec;
use crate::error::LedgerError;
use crate::state::State;
use crate::types::{
    AccountKey, ChainCheckpoint, ClientFunds, Kind, LedgerEvent, RequestId, Status,
};
use crate::update::{Update, UpdateKind};

/// A result that must not reach a peer before the update behind it is durable.
///
/// Only [`Ledger::take_committed`] opens it, and only once the store has committed every
/// update up to [`Pending::seq`]. This is the persistence contract of rust-lightning's
/// `ChannelMonitorUpdateStatus::Completed`, enforced by the type system.
#[must_use = "a Pending result is only usable after the ledger commits it"]
#[derive(Debug)]
pub struct Pending<T> {
    seq: u64,
    value: T,
}

impl<T> Pending<T> {
    /// The update seq that must be committed first.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub(crate) fn into_value(self) -> T {
        self.value
    }
}

/// What a settled request cost. Handed out only after it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The request.
    pub request: RequestId,
    /// The client charged.
    pub client: AccountKey,
    /// The worker credited.
    pub worker: AccountKey,
    /// Adjusted tokens charged (never more than `reserved`).
    pub tokens: u64,
    /// Tokens that had been reserved.
    pub reserved: u64,
    /// Tokens the caller asked to book; above `reserved` the request was cut to it.
    pub reported: u64,
    /// nanoTON charged to the client.
    pub client_nanoton: u128,
    /// nanoTON credited to the worker.
    pub worker_nanoton: u128,
    /// nanoTON kept by the proxy.
    pub commission_nanoton: u128,
    /// The client's cumulative tokens after this request.
    pub client_tokens: u64,
    /// The worker's cumulative tokens after this request.
    pub worker_tokens: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    pub(crate) client: AccountKey,
    pub(crate) tokens: u64,
    /// Prices of the params version the request started under: a request running across a
    /// params change is charged to the old contract at the old prices.
    pub(crate) prices: PriceTable,
}

/// The proxy's money ledger (pure logic; see [`crate::LedgerDb`] for it joined to a store).
#[derive(Debug)]
pub struct Ledger {
    pub(crate) state: State,
    pub(crate) codec: RowCodec,
    pub(crate) session: [u8; 32],
    pub(crate) reservations: HashMap<RequestId, Reservation>,
    /// Updates applied in memory, not yet handed to the store.
    pub(crate) pending: Vec<Update>,
    pub(crate) touched: BTreeSet<AccountKey>,
    /// Last seq of the batch handed to the store and not yet acknowledged.
    pub(crate) in_flight: Option<u64>,
    pub(crate) committed_seq: u64,
    /// Seq of the last checkpoint confirmation (receipts wait until it is durable).
    pub(crate) confirm_seq: u64,
    pub(crate) events: Vec<LedgerEvent>,
    pub(crate) halted: Option<String>,
}

impl Ledger {
    /// Applies a new update in memory and queues it for the store.
    pub(crate) fn push(&mut self, kind: UpdateKind) -> u64 {
        let seq = self.state.meta.last_seq + 1;
        let u = Update { seq, kind };
        let applied = self.state.apply(&u);
        for k in applied.touched {
            if let Some(a) = self.state.accounts.get_mut(&k) {
                a.last_update = seq;
            }
            self.touched.insert(k);
        }
        self.events.extend(applied.events);
        self.pending.push(u);
        seq
    }

    fn pending_at<T>(&self, value: T) -> Pending<T> {
        Pending {
            seq: self.state.meta.last_seq,
            value,
        }
    }

    fn check_halted(&self) -> Result<(), LedgerError> {
        match &self.halted {
            Some(r) => Err(LedgerError::Halted(r.clone())),
            None => Ok(()),
        }
    }

    /// The account if it exists and is not a corrupt-row placeholder.
    fn usable(&self, key: &AccountKey) -> Result<&Account, LedgerError> {
        let a = self
            .state
            .accounts
            .get(key)
            .ok_or_else(|| LedgerError::UnknownAccount(key.clone()))?;
        if a.corrupt {
            return Err(LedgerError::Frozen {
                key: key.clone(),
                reason: a.frozen.clone().unwrap_or_default(),
            });
        }
        Ok(a)
    }

    fn not_frozen(a: &Account) -> Result<(), LedgerError> {
        match &a.frozen {
            Some(reason) => Err(LedgerError::Frozen {
                key: a.key.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    // === keys and views ===

    /// The key of the client contract `address` under the current params version.
    pub fn client_key(&self, address: &StdAddr) -> AccountKey {
        AccountKey::client(self.state.meta.params_version, address.clone())
    }

    /// The key of the worker contract `address` under the current params version.
    pub fn worker_key(&self, address: &StdAddr) -> AccountKey {
        AccountKey::worker(self.state.meta.params_version, address.clone())
    }

    /// Current root `params_version`.
    pub fn params_version(&self) -> u32 {
        self.state.meta.params_version
    }

    /// Current prices.
    pub fn prices(&self) -> PriceTable {
        self.state.meta.prices
    }

    /// One account's counters.
    pub fn account(&self, key: &AccountKey) -> Option<AccountView> {
        let p = self.state.meta.prices.price_per_token;
        self.state.accounts.get(key).map(|a| a.view(p))
    }

    /// All accounts, in key order.
    pub fn accounts(&self) -> Vec<AccountView> {
        let p = self.state.meta.prices.price_per_token;
        self.state.accounts.values().map(|a| a.view(p)).collect()
    }

    /// Frozen accounts and why.
    pub fn frozen(&self) -> Vec<(AccountKey, String)> {
        self.state
            .accounts
            .values()
            .filter_map(|a| a.frozen.clone().map(|r| (a.key.clone(), r)))
            .collect()
    }

    /// Inconsistencies found since the ledger was opened (the operator's list).
    pub fn events(&self) -> &[LedgerEvent] {
        &self.events
    }

    /// Why the whole ledger is halted, if it is (a checkpoint it never made is on chain).
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// nanoTON of commission accrued.
    pub fn commission_nanoton(&self) -> u128 {
        self.state.meta.commission
    }

    /// The last confirmed checkpoint of the current proxy contract.
    pub fn confirmed_checkpoint(&self) -> Option<ChainCheckpoint> {
        self.state.meta.confirmed
    }

    /// Seq of the last update applied in memory.
    pub fn last_seq(&self) -> u64 {
        self.state.meta.last_seq
    }

    /// Seq of the last update the store acknowledged.
    pub fn committed_seq(&self) -> u64 {
        self.committed_seq
    }

    /// Number of running reservations.
    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    /// Takes the events recorded so far (for an operator log or alert), leaving none.
    pub fn take_events(&mut self) -> Vec<LedgerEvent> {
        std::mem::take(&mut self.events)
    }

    // === chain observations ===

    /// Records a client contract's on-chain state (creates the account on first sight).
    /// An observation older than the last one (fewer tokens charged) is ignored. If the
    /// chain shows more charged than the ledger knows, the account is frozen.
    pub fn observe_client(
        &mut self,
        address: &StdAddr,
        funds: ClientFunds,
        charged: u64,
        status: Status,
    ) -> Result<Pending<()>, LedgerError> {
        let key = self.client_key(address);
        self.observe_client_key(key, funds, charged, status)
    }

    /// [`Self::observe_client`] for an account of any params version (see
    /// [`Self::find_client`]).
    pub fn observe_client_key(
        &mut self,
        key: AccountKey,
        funds: ClientFunds,
        charged: u64,
        status: Status,
    ) -> Result<Pending<()>, LedgerError> {
        if let Some(a) = self.state.accounts.get(&key) {
            if a.corrupt {
                return Err(LedgerError::Frozen {
                    key,
                    reason: a.frozen.clone().unwrap_or_default(),
                });
            }
            if charged < a.on_chain_tokens
                || (a.funds == Some(funds) && a.on_chain_tokens == charged && a.status == status)
            {
                return Ok(self.pending_at(()));
            }
        }
        let seq = self.push(UpdateKind::ObserveClient {
            key,
            funds,
            charged,
            status,
        });
        Ok(Pending { seq, value: () })
    }

    /// Records a worker contract's on-chain paid-out tokens (creates the account).
    pub fn observe_worker(
        &mut self,
        address: &StdAddr,
        paid: u64,
    ) -> Result<Pending<()>, LedgerError> {
        let key = self.worker_key(address);
        if let Some(a) = self.state.accounts.get(&key) {
            if a.corrupt {
                return Err(LedgerError::Frozen {
                    key,
                    reason: a.frozen.clone().unwrap_or_default(),
                });
            }
            if paid <= a.on_chain_tokens {
                return Ok(self.pending_at(()));
            }
        }
        let seq = self.push(UpdateKind::ObserveWorker { key, paid });
        Ok(Pending { seq, value: () })
    }

    // === request lifecycle ===

    /// Reserves `tokens` adjusted tokens of `client`'s credit for a request (compute them with
    /// `PriceTable::reservation`). Reservations are volatile by design: a crash ends the
    /// requests holding them, so they are not persisted and a reopened ledger has none.
    pub fn reserve(
        &mut self,
        client: &StdAddr,
        request: RequestId,
        tokens: u64,
    ) -> Result<(), LedgerError> {
        self.check_halted()?;
        if self.reservations.contains_key(&request) {
            return Err(LedgerError::DuplicateRequest(request));
        }
        let key = self.client_key(client);
        let price = self.state.meta.prices.price_per_token;
        let a = self.usable(&key)?;
        Self::not_frozen(a)?;
        if a.status != Status::Open {
            return Err(LedgerError::NotOpen(key));
        }
        let available = a.available(price);
        if tokens > available {
            return Err(LedgerError::OutOfFunds {
                requested: tokens,
                available,
            });
        }
        if let Some(a) = self.state.accounts.get_mut(&key) {
            a.reserved += tokens; // ≤ available, so no overflow
        }
        self.reservations.insert(
            request,
            Reservation {
                client: key,
                tokens,
                prices: self.state.meta.prices,
            },
        );
        Ok(())
    }

    /// Adjusted tokens `usage` costs at `coefficient`, and whether they still fit the
    /// reservation. Call it on every answer part as it streams: on
    /// [`LedgerError::ReservationExceeded`] stop relaying and settle what was used.
    pub fn check_part(
        &self,
        request: RequestId,
        usage: &Usage,
        coefficient: u64,
    ) -> Result<u64, LedgerError> {
        let r = self
            .reservations
            .get(&request)
            .ok_or(LedgerError::UnknownRequest(request))?;
        self.check_tokens(request, r.prices.adjust(usage, coefficient).total)
    }

    /// [`Self::check_part`] for usage already in adjusted tokens (what a worker reports in
    /// `tokensUsed.total_tokens_used`); returns `used` when it fits.
    pub fn check_tokens(&self, request: RequestId, used: u64) -> Result<u64, LedgerError> {
        let r = self
            .reservations
            .get(&request)
            .ok_or(LedgerError::UnknownRequest(request))?;
        if used > r.tokens {
            return Err(LedgerError::ReservationExceeded {
                reserved: r.tokens,
                used,
            });
        }
        Ok(used)
    }

    /// Whether `usage` would exceed the request's reservation (unknown requests exceed).
    pub fn would_exceed(&self, request: RequestId, usage: &Usage, coefficient: u64) -> bool {
        self.check_part(request, usage, coefficient).is_err()
    }

    /// Settles a request: charges the client for the actual `usage` at `coefficient` (at the
    /// prices of the params version the request was reserved under), credits
    /// `worker` (created on first credit), adds the commission and releases the reservation.
    ///
    /// Usage above the reservation is booked at the reservation: the
    /// client reserved, and its credit covers, no more; [`Settlement::reported`] keeps what was
    /// asked so the proxy can tell. [`Self::check_part`] is how it stops a stream before.
    pub fn settle(
        &mut self,
        request: RequestId,
        worker: &StdAddr,
        usage: &Usage,
        coefficient: u64,
    ) -> Result<Pending<Settlement>, LedgerError> {
        let tokens = self
            .reservations
            .get(&request)
            .ok_or(LedgerError::UnknownRequest(request))?
            .prices
            .adjust(usage, coefficient)
            .total;
        self.settle_tokens(request, worker, tokens)
    }

    /// [`Self::settle`] for usage already in adjusted tokens (the worker's reported total).
    pub fn settle_tokens(
        &mut self,
        request: RequestId,
        worker: &StdAddr,
        tokens: u64,
    ) -> Result<Pending<Settlement>, LedgerError> {
        let r = self
            .reservations
            .get(&request)
            .ok_or(LedgerError::UnknownRequest(request))?
            .clone();
        let worker = AccountKey::worker(r.client.params_version, worker.clone());
        let reported = tokens;
        let tokens = tokens.min(r.tokens);
        self.usable(&r.client)?;
        if let Some(w) = self.state.accounts.get(&worker).filter(|w| w.corrupt) {
            return Err(LedgerError::Frozen {
                key: worker,
                reason: w.frozen.clone().unwrap_or_default(),
            });
        }
        let prices = r.prices;
        let client_nanoton = prices.client_cost(tokens);
        let worker_nanoton = prices.worker_earning(tokens);
        let commission_nanoton = prices.commission(tokens);
        self.reservations.remove(&request);
        if let Some(a) = self.state.accounts.get_mut(&r.client) {
            a.reserved = a.reserved.saturating_sub(r.tokens);
        }
        let seq = if tokens == 0 {
            self.state.meta.last_seq
        } else {
            self.push(UpdateKind::Charge {
                request,
                client: r.client.clone(),
                worker: worker.clone(),
                tokens,
                client_nanoton,
                worker_nanoton,
                commission_nanoton,
            })
        };
        let tokens_of = |k: &AccountKey| self.state.accounts.get(k).map_or(0, |a| a.tokens);
        let value = Settlement {
            request,
            client_tokens: tokens_of(&r.client),
            worker_tokens: tokens_of(&worker),
            client: r.client,
            worker,
            tokens,
            reserved: r.tokens,
            reported,
            client_nanoton,
            worker_nanoton,
            commission_nanoton,
        };
        Ok(Pending { seq, value })
    }

    /// Cancels a request that used nothing; returns the tokens released.
    pub fn cancel(&mut self, request: RequestId) -> Result<u64, LedgerError> {
        let r = self
            .reservations
            .remove(&request)
            .ok_or(LedgerError::UnknownRequest(request))?;
        if let Some(a) = self.state.accounts.get_mut(&r.client) {
            a.reserved = a.reserved.saturating_sub(r.tokens);
        }
        Ok(r.tokens)
    }

    // === checkpoints ===

    fn checkpoint_hash(&self, seqno: u32) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"cocoon-ledger/checkpoint/v1");
        ctx.update(&self.session);
        ctx.update(&seqno.to_be_bytes());
        for a in self.state.accounts.values() {
            ctx.update(a.key.row_key().as_bytes());
            ctx.update(&a.tokens.to_be_bytes());
        }
        let mut h = [0u8; 32];
        h.copy_from_slice(ctx.finish().as_ref());
        h
    }

    /// Prepares the next `save_state` checkpoint. It covers every account's tokens as of now;
    /// once committed, send `(seqno, hash)` on chain, and feed the transaction back with
    /// [`Self::confirm_checkpoint`] when it appears. The hash binds the checkpoint to this
    /// session and this state, so a restored or forked database cannot reproduce it.
    pub fn prepare_checkpoint(&mut self) -> Result<Pending<ChainCheckpoint>, LedgerError> {
        self.check_halted()?;
        let seqno = self.state.meta.next_checkpoint;
        if seqno > i32::MAX as u32 {
            return Err(LedgerError::SeqnoOverflow);
        }
        let c = ChainCheckpoint {
            seqno,
            hash: self.checkpoint_hash(seqno),
        };
        let seq = self.push(UpdateKind::CheckpointPrepared(c));
        Ok(Pending { seq, value: c })
    }

    /// Records that checkpoint `c` is on chain: usage it covers becomes receipt-able once
    /// this update is committed. Feed each `save_state` transaction once, in chain order. A
    /// checkpoint this ledger never prepared means another instance writes with our key or
    /// this database was rolled back: the whole ledger halts (no reservations, no receipts)
    /// and [`LedgerError::UnknownCheckpoint`] is returned.
    pub fn confirm_checkpoint(&mut self, c: ChainCheckpoint) -> Result<Pending<()>, LedgerError> {
        self.check_halted()?;
        if self.state.meta.confirmed == Some(c) {
            return Ok(self.pending_at(()));
        }
        if self.state.meta.pending.get(&c.seqno) != Some(&c.hash) {
            self.halted = Some(format!("unknown checkpoint {} on chain", c.seqno));
            self.events.push(LedgerEvent::UnknownCheckpoint(c));
            return Err(LedgerError::UnknownCheckpoint(c));
        }
        let seq = self.push(UpdateKind::CheckpointConfirmed(c));
        self.confirm_seq = seq;
        Ok(Pending { seq, value: () })
    }

    /// Checkpoints on chain with a seqno up to this one are already accounted for: the
    /// confirmed one, or, after a params change (which forgets the old contract's
    /// confirmation), everything before the next seqno this ledger hands out. Seqnos only grow
    /// across versions, so an old contract's checkpoints never look unknown.
    pub fn checkpoint_cursor(&self) -> u32 {
        let m = &self.state.meta;
        match (m.confirmed, m.pending.keys().next()) {
            (Some(c), _) => c.seqno,
            (None, Some(first)) => first.saturating_sub(1),
            (None, None) => m.next_checkpoint.saturating_sub(1),
        }
    }

    /// Prepared checkpoints not yet seen on chain.
    pub fn pending_checkpoints(&self) -> Vec<ChainCheckpoint> {
        self.state
            .meta
            .pending
            .iter()
            .map(|(s, h)| ChainCheckpoint {
                seqno: *s,
                hash: *h,
            })
            .collect()
    }

    // === params and operator ===

    /// Root params moved to `version`: every open account of an older
    /// version becomes `Closing` (no new requests; running ones still settle into it);
    /// prepared checkpoints of the old contract are dropped. Once the requests are done and a
    /// checkpoint of the new contract covering them is confirmed, issue, per old account,
    /// [`Self::final_receipt`] (client grant-refund / worker last payout), then
    /// [`Self::mark_closed`] when the chain shows the contract closed. Proxy-contract close
    /// messages carry no tokens: sign them with `cocoon_ton::payments` directly.
    pub fn change_params(
        &mut self,
        version: u32,
        prices: PriceTable,
    ) -> Result<Pending<()>, LedgerError> {
        // A halted ledger (a checkpoint it never made is on chain) moves nowhere.
        self.check_halted()?;
        let current = self.state.meta.params_version;
        if version <= current {
            return Err(LedgerError::ParamsNotNewer {
                current,
                new: version,
            });
        }
        let seq = self.push(UpdateKind::ParamsChanged { version, prices });
        Ok(Pending { seq, value: () })
    }

    /// Freezes an account (operator action or proxy-detected inconsistency).
    pub fn freeze(&mut self, key: &AccountKey, reason: &str) -> Result<Pending<()>, LedgerError> {
        self.usable(key)?;
        let seq = self.push(UpdateKind::Freeze {
            key: key.clone(),
            reason: reason.to_string(),
        });
        Ok(Pending { seq, value: () })
    }

    /// Unfreezes an account after the operator checked it. Accounts whose stored row failed
    /// its integrity check cannot be unfrozen: their data is not trusted.
    pub fn unfreeze(&mut self, key: &AccountKey) -> Result<Pending<()>, LedgerError> {
        self.usable(key)?;
        let seq = self.push(UpdateKind::Unfreeze { key: key.clone() });
        Ok(Pending { seq, value: () })
    }

    /// Marks an account's contract closed on chain.
    pub fn mark_closed(&mut self, key: &AccountKey) -> Result<Pending<()>, LedgerError> {
        self.usable(key)?;
        let seq = self.push(UpdateKind::Closed { key: key.clone() });
        Ok(Pending { seq, value: () })
    }

    /// Records that a receipt for `key` carrying `tokens` was submitted at `now` (unix
    /// seconds); `last` for a final one. Durable, so that it is not sent again after a restart.
    pub fn receipt_submitted(
        &mut self,
        key: &AccountKey,
        tokens: u64,
        now: u64,
        last: bool,
    ) -> Result<Pending<()>, LedgerError> {
        self.usable(key)?;
        let seq = self.push(UpdateKind::ReceiptSubmitted {
            key: key.clone(),
            submitted: crate::types::Submitted {
                tokens,
                at: now,
                last,
            },
        });
        Ok(Pending { seq, value: () })
    }

    /// The account of the client contract at `address`, under whichever params version it
    /// was opened (contract addresses differ between versions).
    pub fn find_client(&self, address: &StdAddr) -> Option<AccountKey> {
        let current = self.client_key(address);
        if self.state.accounts.contains_key(&current) {
            return Some(current);
        }
        self.state
            .accounts
            .keys()
            .rev()
            .find(|k| k.kind == Kind::Client && k.address == *address)
            .cloned()
    }

    /// Client contracts whose on-chain state the proxy must follow: every client account not
    /// closed with usage the contract has not been charged for, or that is closing.
    pub fn clients_to_watch(&self) -> Vec<AccountKey> {
        self.state
            .accounts
            .values()
            .filter(|a| a.key.kind == Kind::Client && !a.corrupt && a.status != Status::Closed)
            .filter(|a| a.tokens > a.on_chain_tokens || a.status == Status::Closing)
            .map(|a| a.key.clone())
            .collect()
    }

    /// Whether a closing client still owes usage that no submitted receipt covers: the
    /// settlement should run often until its charge is out (the client's refund can complete
    /// after `client_delay_before_close`).
    pub fn urgent(&self) -> bool {
        self.state.accounts.values().any(|a| {
            a.key.kind == Kind::Client
                && a.status == Status::Closing
                && !a.corrupt
                && a.frozen.is_none()
                && a.tokens > a.on_chain_tokens.max(a.submitted.tokens)
        })
    }

    /// Receipts worth submitting now (see [`DuePolicy`]), each with whether it is final.
    pub fn due(&self, policy: &DuePolicy, now: u64) -> Vec<Due> {
        let p = self.state.meta.prices;
        let current = self.state.meta.params_version;
        let committed = self.committed_seq;
        let mut out = Vec::new();
        for a in self.state.accounts.values() {
            if a.corrupt || a.frozen.is_some() || a.status == Status::Closed {
                continue;
            }
            // A final receipt closes the contract: for an account of older params (the proxy
            // retires it), and for a client that asked to close (the cooperative refund: the
            // client is charged everything and gets the rest at once).
            let closable = a.status == Status::Closing
                && a.reserved == 0
                && a.chain_tokens == a.tokens
                && a.last_update <= committed
                && self.confirm_seq <= committed;
            let recent = now.saturating_sub(a.submitted.at) < policy.resend_after_secs;
            // (A worker that earned nothing has no contract to close.)
            if closable && (a.key.kind == Kind::Client || a.tokens > 0) {
                if !(a.submitted.last && recent) {
                    out.push(Due {
                        key: a.key.clone(),
                        tokens: a.tokens,
                        last: true,
                    });
                }
                continue;
            }
            let delta = a.chain_tokens.saturating_sub(a.on_chain_tokens);
            if delta == 0 {
                continue;
            }
            let worth = match (a.key.kind, a.status) {
                // A closing client is charged whatever it owes, before its refund completes.
                (Kind::Client, Status::Closing) => true,
                (Kind::Client, _) => {
                    // Charged before its unsettled usage reaches half its stake, so the
                    // credit (bounded by the stake beyond what was charged) never runs out.
                    let half_stake = a.funds.map_or(u128::MAX, |f| u128::from(f.stake / 2));
                    p.client_cost(delta) >= policy.min_client_charge.min(half_stake.max(1))
                }
                (Kind::Worker, _) => {
                    a.key.params_version == current
                        && p.worker_earning(delta) >= policy.min_worker_payout
                }
            };
            let already = a.submitted.tokens >= a.chain_tokens && recent;
            if worth && !already {
                out.push(Due {
                    key: a.key.clone(),
                    tokens: a.chain_tokens,
                    last: false,
                });
            }
        }
        out
    }
}

/// When receipts are worth an on-chain transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuePolicy {
    /// nanoTON of checkpointed, uncharged usage before an open client is charged (the
    /// proxy's default: 1 TON); lowered to half the client's stake when that is less.
    pub min_client_charge: u128,
    /// nanoTON of checkpointed, unpaid earnings before a worker is paid (the proxy's default:
    /// 10 TON).
    pub min_worker_payout: u128,
    /// A receipt submitted this long ago that the chain does not show yet is sent again.
    pub resend_after_secs: u64,
}

/// A receipt to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The account.
    pub key: AccountKey,
    /// Its cumulative tokens.
    pub tokens: u64,
    /// Final: client grant-refund or worker last payout (closes the contract).
    pub last: bool,
}
