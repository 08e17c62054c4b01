//! The durable state and the pure function that applies an update to it.

use std::collections::BTreeMap;

use cocoon_openai::usage::PriceTable;

use crate::account::Account;
use crate::types::{AccountKey, ChainCheckpoint, Kind, LedgerEvent, Status};
use crate::update::{Update, UpdateKind};

/// Ledger-wide durable fields (the `meta` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Seq of the last update applied.
    pub(crate) last_seq: u64,
    pub(crate) params_version: u32,
    pub(crate) prices: PriceTable,
    /// The seqno the next checkpoint gets (monotone across params versions).
    pub(crate) next_checkpoint: u32,
    /// Prepared, not yet confirmed checkpoints of the current contract.
    pub(crate) pending: BTreeMap<u32, [u8; 32]>,
    /// The last checkpoint of the current contract seen on chain.
    pub(crate) confirmed: Option<ChainCheckpoint>,
    /// nanoTON of commission accrued, all versions.
    pub(crate) commission: u128,
}

impl Meta {
    pub(crate) fn new(params_version: u32, prices: PriceTable) -> Self {
        Meta {
            last_seq: 0,
            params_version,
            prices,
            next_checkpoint: 1,
            pending: BTreeMap::new(),
            confirmed: None,
            commission: 0,
        }
    }
}

/// Everything that is persisted.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) meta: Meta,
    pub(crate) accounts: BTreeMap<AccountKey, Account>,
}

/// What applying one update did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Accounts whose durable fields changed (their rows must be written).
    pub(crate) touched: Vec<AccountKey>,
    /// Inconsistencies found (accounts frozen).
    pub(crate) events: Vec<LedgerEvent>,
}

impl Applied {
    fn freeze(&mut self, a: &mut Account, reason: String) {
        if a.frozen.is_none() {
            a.frozen = Some(reason.clone());
            self.events.push(LedgerEvent::Frozen {
                key: a.key.clone(),
                reason,
            });
        }
    }

    /// Freezes `a` when the chain shows more tokens than the ledger booked, saying
    /// `why(on_chain_tokens, tokens)`.
    fn freeze_if_chain_ahead(&mut self, a: &mut Account, why: impl FnOnce(u64, u64) -> String) {
        if a.on_chain_tokens > a.tokens {
            let reason = why(a.on_chain_tokens, a.tokens);
            self.freeze(a, reason);
        }
    }
}

impl State {
    pub(crate) fn new(meta: Meta) -> Self {
        State {
            meta,
            accounts: BTreeMap::new(),
        }
    }

    fn account(&mut self, key: &AccountKey) -> &mut Account {
        self.accounts
            .entry(key.clone())
            .or_insert_with(|| Account::new(key.clone()))
    }

    /// Applies `u`. Total: never panics, whatever the update says; contradictions freeze the
    /// accounts involved. Deterministic, so replaying the same updates gives the same state.
    pub(crate) fn apply(&mut self, u: &Update) -> Applied {
        let mut out = Applied::default();
        self.meta.last_seq = u.seq;
        match &u.kind {
            UpdateKind::ObserveClient {
                key,
                funds,
                charged,
                status,
            } => {
                if self.accounts.get(key).is_some_and(|a| a.corrupt) {
                    return out;
                }
                let current = key.params_version == self.meta.params_version;
                let a = self.account(key);
                a.funds = Some(*funds);
                a.on_chain_tokens = a.on_chain_tokens.max(*charged);
                a.status = observed_status(a.status, *status, current);
                out.freeze_if_chain_ahead(a, |chain, ledger| {
                    format!("chain says {chain} tokens charged, ledger knows only {ledger}")
                });
                out.touched.push(key.clone());
            }
            UpdateKind::ObserveWorker { key, paid } => {
                if self.accounts.get(key).is_some_and(|a| a.corrupt) {
                    return out;
                }
                let a = self.account(key);
                a.on_chain_tokens = a.on_chain_tokens.max(*paid);
                out.freeze_if_chain_ahead(a, |chain, ledger| {
                    format!("chain says {chain} tokens paid out, ledger knows only {ledger} earned")
                });
                out.touched.push(key.clone());
            }
            UpdateKind::Charge {
                client,
                worker,
                tokens,
                client_nanoton,
                worker_nanoton,
                commission_nanoton,
                ..
            } => self.apply_charge(
                &mut out,
                client,
                worker,
                *tokens,
                [*client_nanoton, *worker_nanoton, *commission_nanoton],
            ),
            UpdateKind::CheckpointPrepared(c) => {
                // Accounts of older versions are covered too: their final receipts also wait
                // for a confirmed checkpoint (requests running across a params change may
                // still add to them).
                for a in self.accounts.values_mut() {
                    if a.corrupt || a.status == Status::Closed {
                        continue;
                    }
                    if a.tokens > a.last_checkpointed() {
                        a.at_checkpoint.insert(c.seqno, a.tokens);
                        out.touched.push(a.key.clone());
                    }
                }
                self.meta.pending.insert(c.seqno, c.hash);
                self.meta.next_checkpoint =
                    self.meta.next_checkpoint.max(c.seqno.saturating_add(1));
            }
            UpdateKind::CheckpointConfirmed(c) => {
                for a in self.accounts.values_mut() {
                    if a.corrupt {
                        continue;
                    }
                    let covered: Vec<u32> =
                        a.at_checkpoint.range(..=c.seqno).map(|(s, _)| *s).collect();
                    let Some(last) = covered.last() else { continue };
                    let tokens = a.at_checkpoint[last];
                    for s in covered {
                        a.at_checkpoint.remove(&s);
                    }
                    if tokens >= a.chain_tokens && tokens <= a.tokens {
                        a.chain_tokens = tokens;
                    } else {
                        let msg = format!(
                            "checkpoint {} covers {tokens} tokens, outside [{}, {}]",
                            c.seqno, a.chain_tokens, a.tokens
                        );
                        out.freeze(a, msg);
                    }
                    out.touched.push(a.key.clone());
                }
                self.meta.pending.retain(|s, _| *s > c.seqno);
                self.meta.confirmed = Some(*c);
            }
            UpdateKind::ParamsChanged { version, prices } => {
                for a in self.accounts.values_mut() {
                    if a.corrupt || a.key.params_version >= *version {
                        continue;
                    }
                    let mut changed = !a.at_checkpoint.is_empty();
                    a.at_checkpoint.clear();
                    if a.status == Status::Open {
                        a.status = Status::Closing;
                        changed = true;
                    }
                    if changed {
                        out.touched.push(a.key.clone());
                    }
                }
                self.meta.params_version = *version;
                self.meta.prices = *prices;
                self.meta.pending.clear();
                self.meta.confirmed = None;
            }
            UpdateKind::Freeze { key, reason } => {
                if let Some(a) = self.accounts.get_mut(key).filter(|a| !a.corrupt) {
                    out.freeze(a, reason.clone());
                    out.touched.push(key.clone());
                }
            }
            UpdateKind::Unfreeze { key } => {
                if let Some(a) = self.accounts.get_mut(key).filter(|a| !a.corrupt) {
                    a.frozen = None;
                    out.touched.push(key.clone());
                }
            }
            UpdateKind::Closed { key } => {
                if let Some(a) = self.accounts.get_mut(key).filter(|a| !a.corrupt) {
                    a.status = Status::Closed;
                    a.at_checkpoint.clear();
                    out.touched.push(key.clone());
                }
            }
            UpdateKind::ReceiptSubmitted { key, submitted } => {
                if let Some(a) = self.accounts.get_mut(key).filter(|a| !a.corrupt) {
                    a.submitted = *submitted;
                    out.touched.push(key.clone());
                }
            }
        }
        out
    }

    fn apply_charge(
        &mut self,
        out: &mut Applied,
        client: &AccountKey,
        worker: &AccountKey,
        tokens: u64,
        [client_nanoton, worker_nanoton, commission]: [u128; 3],
    ) {
        let c = self
            .accounts
            .get(client)
            .map(|a| (a.tokens, a.nanoton, a.corrupt));
        let w = self
            .accounts
            .get(worker)
            .map(|a| (a.tokens, a.nanoton, a.corrupt));
        let ok = client.kind == Kind::Client
            && worker.kind == Kind::Worker
            && client_nanoton == worker_nanoton.saturating_add(commission)
            && !matches!(c, Some((_, _, true)))
            && !matches!(w, Some((_, _, true)));
        let (ct, cn, _) = c.unwrap_or((0, 0, false));
        let (wt, wn, _) = w.unwrap_or((0, 0, false));
        let sums = (
            ct.checked_add(tokens),
            cn.checked_add(client_nanoton),
            wt.checked_add(tokens),
            wn.checked_add(worker_nanoton),
            self.meta.commission.checked_add(commission),
        );
        let (Some(ct), Some(cn), Some(wt), Some(wn), Some(total), true) =
            (sums.0, sums.1, sums.2, sums.3, sums.4, ok)
        else {
            // Refused as a whole so that conservation holds; both parties are frozen.
            for key in [client, worker] {
                if let Some(a) = self.accounts.get_mut(key).filter(|a| !a.corrupt) {
                    out.freeze(a, format!("inconsistent charge of {tokens} tokens refused"));
                    out.touched.push(key.clone());
                }
            }
            return;
        };
        let a = self.account(client);
        (a.tokens, a.nanoton) = (ct, cn);
        let a = self.account(worker);
        (a.tokens, a.nanoton) = (wt, wn);
        self.meta.commission = total;
        out.touched.push(client.clone());
        out.touched.push(worker.clone());
    }
}

/// The status after observing the contract in `seen`: closed is final; a client of the
/// current params that tops up and reopens (closing → normal on chain) is open again; an
/// account of older params stays closing whatever its contract says (the proxy closes it).
fn observed_status(was: Status, seen: Status, current_params: bool) -> Status {
    match (was, seen) {
        (Status::Closed, _) | (_, Status::Closed) => Status::Closed,
        (Status::Closing, Status::Open) if !current_params => Status::Closing,
        (_, seen) => seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AccountKey, ClientFunds};
    use cocoon_openai::usage::Multipliers;
    use cocoon_ton::{HashBytes, StdAddr};

    fn state() -> State {
        State::new(Meta::new(
            1,
            PriceTable {
                price_per_token: 10,
                worker_fee_per_token: 8,
                multipliers: Multipliers::default(),
            },
        ))
    }

    fn keys() -> (AccountKey, AccountKey) {
        (
            AccountKey::client(1, StdAddr::new(0, HashBytes([1; 32]))),
            AccountKey::worker(1, StdAddr::new(0, HashBytes([2; 32]))),
        )
    }

    fn charge(seq: u64, tokens: u64, nanos: [u128; 3]) -> Update {
        let (client, worker) = keys();
        Update {
            seq,
            kind: UpdateKind::Charge {
                request: crate::types::RequestId::from_u64(seq),
                client,
                worker,
                tokens,
                client_nanoton: nanos[0],
                worker_nanoton: nanos[1],
                commission_nanoton: nanos[2],
            },
        }
    }

    #[test]
    fn an_unbalanced_or_overflowing_charge_is_refused_whole_and_freezes() {
        let mut s = state();
        let (c, w) = keys();
        s.apply(&charge(1, 10, [100, 80, 20]));
        assert_eq!((s.accounts[&c].tokens, s.accounts[&w].tokens), (10, 10));
        // Client pays 100 but only 90 is accounted for.
        let out = s.apply(&charge(2, 10, [100, 80, 10]));
        assert_eq!(out.events.len(), 2);
        assert_eq!((s.accounts[&c].tokens, s.accounts[&w].tokens), (10, 10));
        assert_eq!(s.meta.commission, 20);
        assert!(s.accounts[&c].frozen.is_some() && s.accounts[&w].frozen.is_some());
        // Token overflow: refused the same way.
        s.apply(&charge(3, u64::MAX, [0, 0, 0]));
        assert_eq!(s.accounts[&c].tokens, 10);
    }

    #[test]
    fn chain_status_only_moves_forward_and_contradictions_freeze() {
        let mut s = state();
        let (c, _) = keys();
        let observe = |charged, status| Update {
            seq: 1,
            kind: UpdateKind::ObserveClient {
                key: c.clone(),
                funds: ClientFunds {
                    balance: 1,
                    stake: 1,
                },
                charged,
                status,
            },
        };
        s.apply(&observe(0, Status::Closing));
        assert_eq!(s.accounts[&c].status, Status::Closing);
        // A client that tops up and reopens is open again ...
        s.apply(&observe(0, Status::Open));
        assert_eq!(s.accounts[&c].status, Status::Open);
        s.apply(&observe(0, Status::Closing));
        // ... but closed is final.
        s.apply(&observe(0, Status::Closed));
        s.apply(&observe(0, Status::Open));
        assert_eq!(s.accounts[&c].status, Status::Closed);
        assert!(s.accounts[&c].frozen.is_none());
        let out = s.apply(&observe(5, Status::Closing));
        assert!(s.accounts[&c].frozen.is_some());
        assert_eq!(out.events.len(), 1);
    }
}
