//! A ledger joined to its store: the simple way to use the crate.

use std::ops::{Deref, DerefMut};

use cocoon_ton::keys::SigningKey;

use crate::error::{OpenError, StoreError};
use crate::ledger::{Ledger, Pending};
use crate::open::OpenOptions;
use crate::store::Store;

/// [`Ledger`] plus a [`Store`]. Derefs to the ledger for every operation; [`Self::commit`]
/// writes everything queued in one transaction (group commit).
///
/// For concurrency, the proxy may instead drive [`Ledger::take_batch`] /
/// [`Store::commit`] / [`Ledger::batch_committed`] itself so the ledger lock is not held
/// during the fsync.
#[derive(Debug)]
pub struct LedgerDb<S: Store> {
    ledger: Ledger,
    store: S,
}

impl<S: Store> LedgerDb<S> {
    /// Loads the store and opens the ledger (integrity and rollback checks: see
    /// [`Ledger::open`]); updates made while opening are committed before this returns.
    pub fn open(
        mut store: S,
        proxy_key: &SigningKey,
        options: OpenOptions,
    ) -> Result<Self, OpenError> {
        let rows = store.load()?;
        let ledger = Ledger::open(rows, proxy_key, options)?;
        let mut db = LedgerDb { ledger, store };
        db.commit()?;
        Ok(db)
    }

    /// Commits every queued update; returns the committed seq. On failure the updates stay
    /// queued and the next commit retries them.
    pub fn commit(&mut self) -> Result<u64, StoreError> {
        while let Some(batch) = self.ledger.take_batch() {
            match self.store.commit(&batch) {
                Ok(()) => self.ledger.batch_committed(batch),
                Err(e) => {
                    self.ledger.batch_failed(batch);
                    return Err(e);
                }
            }
        }
        Ok(self.ledger.committed_seq())
    }

    /// Commits, then opens `p`.
    pub fn durable<T>(&mut self, p: Pending<T>) -> Result<T, StoreError> {
        self.commit()?;
        self.ledger.take_committed(p).map_err(|_| {
            StoreError::Backend("a batch taken outside LedgerDb is still in flight".into())
        })
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Splits into ledger and store (anything uncommitted is only in the ledger).
    pub fn into_parts(self) -> (Ledger, S) {
        (self.ledger, self.store)
    }
}

impl<S: Store> Deref for LedgerDb<S> {
    type Target = Ledger;
    fn deref(&self) -> &Ledger {
        &self.ledger
    }
}

impl<S: Store> DerefMut for LedgerDb<S> {
    fn deref_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }
}
