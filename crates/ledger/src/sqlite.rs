//! The durable store: one SQLite file in WAL mode with `synchronous=FULL` (ARCHITECTURE D8).
//!
//! Every commit is a `BEGIN IMMEDIATE` transaction that upserts the batch's rows; with WAL and
//! `synchronous=FULL` the commit is fsynced before `commit` returns, so it survives `kill -9`
//! and power loss. A batch of many updates costs one fsync: that is the group commit.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};

use crate::batch::Batch;
use crate::error::StoreError;
use crate::store::Store;

/// SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        // journal_mode answers with a row; read it to make sure WAL is on.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "could not enable WAL (journal_mode={mode})"
            )));
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS ledger_rows (
                 key   TEXT PRIMARY KEY NOT NULL,
                 value BLOB NOT NULL
             ) WITHOUT ROWID;",
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(SqliteStore { conn })
    }

    /// Overwrites one stored value (tamper tests; never used by the ledger).
    pub fn set_raw(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO ledger_rows(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM ledger_rows ORDER BY key")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO ledger_rows(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?;
            for (k, v) in batch.rows() {
                stmt.execute(params![k, v])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
