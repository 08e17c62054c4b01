//! The client's own durable state: a small SQLite file (WAL).
//!
//! - `receipts`: the best proxy-signed charge held for each client contract (the highest
//!   token count that verified), as the BOC that can be submitted on chain;
//! - `key_spend`: nanoTON spent and requests made per API key (by its hash);
//! - `totals`: request and token counters across restarts;
//! - `answer_receipts`: each answer's verified receipt document (JSON), by request id, with
//!   the hash of the API key that asked, kept for the retention period.
//!
//! Every write is one statement in autocommit mode, so a crash loses at most the write in
//! progress; receipts only ever increase (`ON CONFLICT … WHERE excluded.tokens > tokens`).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

/// A receipt as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredReceipt {
    pub client_sc: String,
    pub proxy_sc: String,
    pub tokens: u64,
    pub boc: Vec<u8>,
}

/// The state database.
pub(crate) struct Store {
    conn: Mutex<Connection>,
}

/// SQLite integers are signed: larger values are stored as `i64::MAX`, never wrapped.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn err(e: rusqlite::Error) -> String {
    e.to_string()
}

impl Store {
    /// Opens (creating) the database at `path`, or an in-memory one.
    pub(crate) fn open(path: Option<&Path>) -> Result<Store, String> {
        let conn = match path {
            Some(p) => {
                if let Some(dir) = p.parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                }
                let c = Connection::open(p).map_err(err)?;
                c.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
                c.pragma_update(None, "synchronous", "FULL").map_err(err)?;
                c
            }
            None => Connection::open_in_memory().map_err(err)?,
        };
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS receipts (
                 client_sc TEXT PRIMARY KEY,
                 proxy_sc TEXT NOT NULL,
                 tokens INTEGER NOT NULL,
                 boc BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS key_spend (
                 key_hash TEXT PRIMARY KEY,
                 spent INTEGER NOT NULL,
                 requests INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS totals (
                 name TEXT PRIMARY KEY,
                 value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS answer_receipts (
                 id TEXT PRIMARY KEY,
                 key_hash TEXT,
                 created INTEGER NOT NULL,
                 doc TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS answer_receipts_created ON answer_receipts (created);",
        )
        .map_err(err)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `r` if it is better than the one held; returns whether it was.
    pub(crate) fn save_receipt(&self, r: &StoredReceipt) -> Result<bool, String> {
        let n = self
            .conn()
            .prepare_cached(
                "INSERT INTO receipts (client_sc, proxy_sc, tokens, boc) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(client_sc) DO UPDATE SET proxy_sc = excluded.proxy_sc,
                     tokens = excluded.tokens, boc = excluded.boc
                 WHERE excluded.tokens > receipts.tokens",
            )
            .and_then(|mut st| st.execute(params![r.client_sc, r.proxy_sc, clamp(r.tokens), r.boc]))
            .map_err(err)?;
        Ok(n > 0)
    }

    /// The best receipt held for `client_sc`.
    pub(crate) fn receipt(&self, client_sc: &str) -> Result<Option<StoredReceipt>, String> {
        self.conn()
            .query_row(
                "SELECT client_sc, proxy_sc, tokens, boc FROM receipts WHERE client_sc = ?1",
                params![client_sc],
                |row| {
                    Ok(StoredReceipt {
                        client_sc: row.get(0)?,
                        proxy_sc: row.get(1)?,
                        tokens: row.get::<_, i64>(2)? as u64,
                        boc: row.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(err)
    }

    /// Keeps an answer's receipt document, and drops those created before `keep_after`
    /// (Unix seconds).
    pub(crate) fn save_answer_receipt(
        &self,
        id: &str,
        key_hash: Option<&str>,
        created: u64,
        doc: &str,
        keep_after: u64,
    ) -> Result<(), String> {
        let c = self.conn();
        c.prepare_cached(
            "INSERT OR REPLACE INTO answer_receipts (id, key_hash, created, doc)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut st| st.execute(params![id, key_hash, clamp(created), doc]))
        .map_err(err)?;
        c.prepare_cached("DELETE FROM answer_receipts WHERE created < ?1")
            .and_then(|mut st| st.execute(params![clamp(keep_after)]))
            .map_err(err)?;
        Ok(())
    }

    /// An answer's receipt document and the hash of the API key that asked.
    pub(crate) fn answer_receipt(
        &self,
        id: &str,
    ) -> Result<Option<(Option<String>, String)>, String> {
        self.conn()
            .query_row(
                "SELECT key_hash, doc FROM answer_receipts WHERE id = ?1",
                params![id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(err)
    }

    /// Adds one request costing `nanoton` to a key.
    pub(crate) fn add_key_spend(&self, key_hash: &str, nanoton: u64) -> Result<(), String> {
        self.conn()
            .prepare_cached(
                "INSERT INTO key_spend (key_hash, spent, requests) VALUES (?1, ?2, 1)
                 ON CONFLICT(key_hash) DO UPDATE SET spent = spent + excluded.spent,
                     requests = requests + 1",
            )
            .and_then(|mut st| st.execute(params![key_hash, clamp(nanoton)]))
            .map_err(err)?;
        Ok(())
    }

    /// Every key's `(hash, spent nanoTON, requests)`.
    pub(crate) fn key_spends(&self) -> Result<Vec<(String, u64, u64)>, String> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT key_hash, spent, requests FROM key_spend")
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Adds to named counters in one transaction.
    pub(crate) fn add_totals(&self, adds: &[(&str, u64)]) -> Result<(), String> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO totals (name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                )
                .map_err(err)?;
            for (name, v) in adds {
                st.execute(params![name, clamp(*v)]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Every counter.
    pub(crate) fn totals(&self) -> Result<Vec<(String, u64)>, String> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT name, value FROM totals ORDER BY name")
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(tokens: u64) -> StoredReceipt {
        StoredReceipt {
            client_sc: "c".into(),
            proxy_sc: "p".into(),
            tokens,
            boc: vec![tokens as u8],
        }
    }

    #[test]
    fn receipts_only_increase_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.sqlite");
        let s = Store::open(Some(&path)).unwrap();
        assert!(s.save_receipt(&r(10)).unwrap());
        assert!(!s.save_receipt(&r(5)).unwrap());
        assert!(!s.save_receipt(&r(10)).unwrap());
        assert!(s.save_receipt(&r(12)).unwrap());
        s.add_key_spend("k", 100).unwrap();
        s.add_key_spend("k", 50).unwrap();
        s.add_totals(&[("requests", 2), ("tokens", 7)]).unwrap();
        s.add_totals(&[("requests", 1)]).unwrap();
        drop(s);
        let s = Store::open(Some(&path)).unwrap();
        assert_eq!(s.receipt("c").unwrap().unwrap().tokens, 12);
        assert_eq!(s.receipt("c").unwrap().unwrap().boc, vec![12]);
        assert_eq!(s.receipt("d").unwrap(), None);
        assert_eq!(s.key_spends().unwrap(), vec![("k".into(), 150, 2)]);
        assert_eq!(
            s.totals().unwrap(),
            vec![("requests".into(), 3), ("tokens".into(), 7)]
        );
    }

    #[test]
    fn answer_receipts_are_kept_for_the_retention_period_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.sqlite");
        let s = Store::open(Some(&path)).unwrap();
        s.save_answer_receipt("a", Some("k1"), 100, "{\"a\":1}", 0)
            .unwrap();
        s.save_answer_receipt("b", None, 200, "{\"b\":1}", 50)
            .unwrap();
        drop(s);
        let s = Store::open(Some(&path)).unwrap();
        assert_eq!(
            s.answer_receipt("a").unwrap(),
            Some((Some("k1".into()), "{\"a\":1}".into()))
        );
        assert_eq!(
            s.answer_receipt("b").unwrap(),
            Some((None, "{\"b\":1}".into()))
        );
        // A later save past the first one's retention drops it.
        s.save_answer_receipt("c", None, 300, "{}", 150).unwrap();
        assert_eq!(s.answer_receipt("a").unwrap(), None);
        assert!(s.answer_receipt("b").unwrap().is_some());
        assert_eq!(s.answer_receipt("zz").unwrap(), None);
    }
}
