//! Handing updates to the store and learning that they are durable.
//!
//! The proxy may batch (group commit): [`Ledger::take_batch`] takes every queued update and
//! the rows they touched, the store writes them in one transaction, then
//! [`Ledger::batch_committed`] or [`Ledger::batch_failed`] reports the outcome. Mutations may
//! go on while a batch is being written (the ledger can be unlocked meanwhile); they go into
//! the next batch. One batch is in flight at a time, so batches commit in seq order.

use std::collections::BTreeMap;

use crate::codec::META_KEY;
use crate::ledger::{Ledger, Pending};
use crate::types::AccountKey;
use crate::update::Update;

/// Updates and the rows to write for them, atomically.
#[derive(Debug)]
pub struct Batch {
    updates: Vec<Update>,
    rows: Vec<(String, Vec<u8>)>,
    tokens: Vec<(AccountKey, u64)>,
    last_seq: u64,
}

impl Batch {
    /// The updates, in seq order.
    pub fn updates(&self) -> &[Update] {
        &self.updates
    }

    /// `(row key, sealed value)` pairs to upsert in one transaction.
    pub fn rows(&self) -> &[(String, Vec<u8>)] {
        &self.rows
    }

    /// Seq of the last update in the batch.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

impl Ledger {
    /// Takes everything queued for the store. `None` when there is nothing to write or a
    /// batch is already in flight.
    pub fn take_batch(&mut self) -> Option<Batch> {
        if self.pending.is_empty() || self.in_flight.is_some() {
            return None;
        }
        let updates = std::mem::take(&mut self.pending);
        let touched = std::mem::take(&mut self.touched);
        let mut rows = Vec::with_capacity(touched.len() + 1);
        let mut tokens = Vec::with_capacity(touched.len());
        for k in touched {
            if let Some(a) = self.state.accounts.get(&k).filter(|a| !a.corrupt) {
                rows.push((k.row_key(), self.codec.encode_account(a)));
                tokens.push((k, a.tokens));
            }
        }
        rows.push((
            META_KEY.to_string(),
            self.codec.encode_meta(&self.state.meta),
        ));
        let last_seq = self.state.meta.last_seq;
        self.in_flight = Some(last_seq);
        Some(Batch {
            updates,
            rows,
            tokens,
            last_seq,
        })
    }

    /// The store committed `batch` durably.
    pub fn batch_committed(&mut self, batch: Batch) {
        for (k, t) in batch.tokens {
            if let Some(a) = self.state.accounts.get_mut(&k) {
                a.db_tokens = a.db_tokens.max(t);
            }
        }
        self.committed_seq = self.committed_seq.max(batch.last_seq);
        self.in_flight = None;
    }

    /// The store failed to commit `batch`: its updates are queued again, ahead of newer ones,
    /// and the next batch rewrites the rows from the current state.
    pub fn batch_failed(&mut self, batch: Batch) {
        let mut updates = batch.updates;
        updates.append(&mut self.pending);
        self.pending = updates;
        self.touched
            .extend(batch.tokens.into_iter().map(|(k, _)| k));
        self.in_flight = None;
    }

    /// Whether the update behind `p` is durable.
    pub fn is_committed<T>(&self, p: &Pending<T>) -> bool {
        p.seq() <= self.committed_seq
    }

    /// Opens `p` if the update behind it is durable; gives it back otherwise.
    pub fn take_committed<T>(&self, p: Pending<T>) -> Result<T, Pending<T>> {
        if self.is_committed(&p) {
            Ok(p.into_value())
        } else {
            Err(p)
        }
    }

    /// Updates applied in memory and not yet committed.
    pub fn uncommitted(&self) -> usize {
        self.pending.len()
    }

    /// The durable state as the store would hold it after committing everything:
    /// row key → JSON (MACs stripped). Two ledgers with equal snapshots hold the same money.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let strip = |v: Vec<u8>| String::from_utf8_lossy(&v[32..]).into_owned();
        out.insert(
            META_KEY.to_string(),
            strip(self.codec.encode_meta(&self.state.meta)),
        );
        for a in self.state.accounts.values().filter(|a| !a.corrupt) {
            out.insert(a.key.row_key(), strip(self.codec.encode_account(a)));
        }
        out
    }
}
