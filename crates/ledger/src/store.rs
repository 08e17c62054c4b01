//! Where rows live. A store is a dumb key-value table with atomic, durable batches; integrity
//! (MACs), ordering and meaning are the ledger's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::batch::Batch;
use crate::error::StoreError;

/// Durable storage for the ledger's rows.
///
/// Contract (what [`crate::LedgerDb`] relies on):
/// - [`Store::commit`] writes all rows of the batch or none, and returns only once they
///   survive a crash or power loss (`Ok` is the "completed" of rust-lightning's persistence
///   contract);
/// - [`Store::load`] returns the rows of the last successful commit, all of them.
pub trait Store {
    /// Every stored `(row key, value)`.
    fn load(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Upserts the batch's rows atomically and durably.
    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError>;
}

#[derive(Debug, Default)]
struct MemInner {
    rows: BTreeMap<String, Vec<u8>>,
    fail_next: usize,
    commits: u64,
}

/// An in-memory store for tests and fuzzing. Clones share the same rows, so a test can drop a
/// ledger ("crash") and reopen from a clone. It can also fail commits and tamper with rows.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        // A poisoned lock only means a test thread panicked; the rows are still consistent
        // because every commit replaces them under the lock in one step.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next `n` commits fail (without writing anything).
    pub fn fail_next_commits(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// Replaces a stored value (tamper tests).
    pub fn set_raw(&self, key: &str, value: Vec<u8>) {
        self.lock().rows.insert(key.to_string(), value);
    }

    /// A stored value.
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().rows.get(key).cloned()
    }

    /// All row keys.
    pub fn keys(&self) -> Vec<String> {
        self.lock().rows.keys().cloned().collect()
    }

    /// Successful commits so far.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    /// An independent copy (a backup taken now).
    pub fn deep_copy(&self) -> MemStore {
        let g = self.lock();
        MemStore {
            inner: Arc::new(Mutex::new(MemInner {
                rows: g.rows.clone(),
                fail_next: 0,
                commits: g.commits,
            })),
        }
    }
}

impl Store for MemStore {
    fn load(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .rows
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.fail_next > 0 {
            g.fail_next -= 1;
            return Err(StoreError::Backend("injected commit failure".into()));
        }
        for (k, v) in batch.rows() {
            g.rows.insert(k.clone(), v.clone());
        }
        g.commits += 1;
        Ok(())
    }
}
