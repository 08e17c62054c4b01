//! The worker's durable payment state: per proxy, the best proxy-signed payout it holds.
//!
//! Kept in memory only, the receipts a worker was given would be lost on a restart and the
//! balance comparison on reconnect would have nothing to compare, so the state
//! is a small JSON file in the worker's state directory, rewritten atomically (temporary
//! file, fsync, rename, fsync of the directory) *before* the new value is relied on: a
//! receipt is never acknowledged, compared or paid out unless it is on disk.
//!
//! Every counter is monotonic. A proxy that reports a lower signed total, a lower database
//! total or a lower maximum than the worker holds has lost or rolled back state; the caller
//! closes the connection so that the next handshake compares balances again.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::payout::{PayoutTx, SentPayout};

/// File name inside the state directory.
pub(crate) const STATE_FILE: &str = "payments.json";
const FORMAT_VERSION: u32 = 1;

/// What the worker holds for one proxy contract.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRecord {
    /// Proxy signing key (hex), pinned at first contact.
    pub proxy_public_key: String,
    /// This worker's contract for that proxy (raw form), pinned at first contact.
    pub worker_sc_address: String,
    /// Tokens of the best verified signed payout.
    pub signed_tokens: u64,
    /// That payout as BOC (hex); `None` until one arrived.
    pub signed_payment_boc: Option<String>,
    /// Tokens the proxy says are committed to its database.
    pub db_tokens: u64,
    /// The highest token total the proxy reported.
    pub max_tokens: u64,
    /// Tokens already paid out through the worker contract.
    pub paid_out_tokens: u64,
    /// The worker fee per token of the params this contract was derived under (a fee change
    /// bumps `params_version`, so it is fixed per contract); `None` when the worker had no
    /// params at first contact (the current fee is used then).
    #[serde(default)]
    pub worker_fee_per_token: Option<u64>,
    /// The worker contract was seen closed on chain: its proxy paid it its last payout (after
    /// a params change); nothing is ready and no payout is sent to it any more. Read as
    /// `false` from older files.
    #[serde(default)]
    pub closed: bool,
}

impl ProxyRecord {
    /// Signed tokens not yet paid out.
    pub fn ready_tokens(&self) -> u64 {
        if self.closed {
            return 0;
        }
        self.signed_tokens.saturating_sub(self.paid_out_tokens)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    proxies: BTreeMap<String, ProxyRecord>,
    /// The latest payouts sent, oldest first, at most [`MAX_PAYOUTS`] (none in older files).
    #[serde(default)]
    payouts: VecDeque<PayoutEntry>,
}

/// How many payouts the state file keeps.
pub(crate) const MAX_PAYOUTS: usize = 64;

/// Where a payout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutStatus {
    /// Sent from the wallet; its transaction on the worker contract has not shown yet.
    Pending,
    /// The worker contract's transaction received it and went through.
    Paid,
    /// Not sent, or refused on chain (see `reason`).
    Failed,
}

/// One payout the worker sent (or tried to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutEntry {
    /// The proxy contract whose receipt it cashes.
    pub proxy_sc: String,
    /// When it was sent (Unix seconds).
    pub at: u64,
    /// Cumulative tokens the receipt covers.
    pub tokens: u64,
    /// Tokens it pays beyond those already paid.
    pub new_tokens: u64,
    /// Their worth, nanoTON (decimal string).
    pub amount_nanoton: String,
    /// Where it stands.
    pub status: PayoutStatus,
    /// Why it failed.
    pub reason: Option<String>,
    /// How to find its transaction (`None`: a sink without a chain, or not sent).
    pub sent: Option<SentPayout>,
    /// The worker contract's transaction that received it, once seen.
    pub tx: Option<PayoutTx>,
}

/// Why an update was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentStoreError {
    /// The state file could not be read or written.
    #[error("payment state {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The proxy reported less than the worker already holds.
    #[error("{what} went down: proxy reports {got}, worker holds {held}")]
    Lower {
        /// Which counter.
        what: &'static str,
        /// Reported value.
        got: u64,
        /// Held value.
        held: u64,
    },
    /// A known proxy contract came back with another key or worker contract.
    #[error("{what} changed for a known proxy contract")]
    IdentityChanged {
        /// Which part.
        what: &'static str,
    },
    /// The proxy is not registered (handshake not done).
    #[error("unknown proxy contract")]
    UnknownProxy,
}

/// What a proxy reported in one message.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// A verified signed payout: (tokens, BOC). `Some((0, empty))` for an empty payment.
    pub signed: Option<(u64, Vec<u8>)>,
    /// Its database total.
    pub db_tokens: Option<u64>,
    /// Its maximum total.
    pub max_tokens: Option<u64>,
    /// Whether a lower maximum is an inconsistency (it is, except in the balance comparison,
    /// where the proxy's own error code reports it).
    pub strict_max: bool,
}

/// One report for [`PaymentStore::apply_all`].
#[derive(Clone, Debug)]
pub struct Report {
    /// What the proxy reported.
    pub obs: Observed,
    /// Whether values below what is held are dropped rather than refused: reports that
    /// travel outside the session's order (a payment status answer) only raise.
    pub raise_only: bool,
}

/// The state file and its in-memory copy.
#[derive(Debug)]
pub struct PaymentStore {
    path: PathBuf,
    state: Mutex<StateFile>,
    /// State-file writes since open.
    writes: std::sync::atomic::AtomicU64,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> PaymentStoreError {
    PaymentStoreError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

impl PaymentStore {
    /// Opens (or creates) the state in `dir`.
    pub fn open(dir: &Path) -> Result<Self, PaymentStoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let path = dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let s: StateFile = serde_json::from_slice(&bytes).map_err(|e| io_err(&path, e))?;
                if s.version != FORMAT_VERSION {
                    return Err(io_err(
                        &path,
                        format!("unknown format version {}", s.version),
                    ));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile {
                version: FORMAT_VERSION,
                proxies: BTreeMap::new(),
                payouts: VecDeque::new(),
            },
            Err(e) => return Err(io_err(&path, e)),
        };
        Ok(PaymentStore {
            path,
            state: Mutex::new(state),
            writes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many times the state file was written since it was opened.
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateFile> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, state: &StateFile) -> Result<(), PaymentStoreError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| io_err(&self.path, e))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| io_err(&self.path, e))?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            // Makes the rename itself durable; not supported everywhere, hence best effort.
            let _ = d.sync_all();
        }
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The record for `proxy_sc`.
    pub fn get(&self, proxy_sc: &str) -> Option<ProxyRecord> {
        self.lock().proxies.get(proxy_sc).cloned()
    }

    /// All records.
    pub fn snapshot(&self) -> Vec<(String, ProxyRecord)> {
        self.lock()
            .proxies
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Records first contact with a proxy contract, or checks that its key and our worker
    /// contract are the ones seen before.
    pub fn register(
        &self,
        proxy_sc: &str,
        proxy_public_key: &[u8; 32],
        worker_sc: &str,
        worker_fee_per_token: Option<u64>,
    ) -> Result<ProxyRecord, PaymentStoreError> {
        let key = hex::encode(proxy_public_key);
        let mut st = self.lock();
        if let Some(r) = st.proxies.get(proxy_sc) {
            if r.proxy_public_key != key {
                return Err(PaymentStoreError::IdentityChanged {
                    what: "proxy public key",
                });
            }
            if r.worker_sc_address != worker_sc {
                return Err(PaymentStoreError::IdentityChanged {
                    what: "worker contract address",
                });
            }
            return Ok(r.clone());
        }
        let rec = ProxyRecord {
            proxy_public_key: key,
            worker_sc_address: worker_sc.to_owned(),
            worker_fee_per_token,
            ..ProxyRecord::default()
        };
        st.proxies.insert(proxy_sc.to_owned(), rec.clone());
        if let Err(e) = self.persist(&st) {
            st.proxies.remove(proxy_sc);
            return Err(e);
        }
        Ok(rec)
    }

    /// Applies what a proxy reported. Refuses (changing nothing) if any counter is lower than
    /// the one held; otherwise raises the held values and persists them before returning.
    /// Returns the record as now held.
    pub fn apply(&self, proxy_sc: &str, obs: &Observed) -> Result<ProxyRecord, PaymentStoreError> {
        self.apply_all(
            proxy_sc,
            &[Report {
                obs: obs.clone(),
                raise_only: false,
            }],
        )
    }

    /// Applies `reports` in order, as [`PaymentStore::apply`] would one after the other, and
    /// persists the result once before returning it. At the first report that goes below
    /// what the reports before it left, what those raised is persisted and the error
    /// returned.
    pub fn apply_all(
        &self,
        proxy_sc: &str,
        reports: &[Report],
    ) -> Result<ProxyRecord, PaymentStoreError> {
        let mut st = self.lock();
        let cur = held(&st, proxy_sc)?;
        let mut next = cur.clone();
        let mut failed = None;
        for r in reports {
            let obs = if r.raise_only {
                raised_only(&next, &r.obs)
            } else {
                r.obs.clone()
            };
            match raised(&next, &obs) {
                Ok(n) => next = n,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if next != cur {
            self.replace(&mut st, proxy_sc, cur, next.clone())?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(next),
        }
    }

    /// Records that signed tokens up to `tokens` were paid out.
    pub fn mark_paid(&self, proxy_sc: &str, tokens: u64) -> Result<(), PaymentStoreError> {
        let mut st = self.lock();
        let cur = held(&st, proxy_sc)?;
        if tokens <= cur.paid_out_tokens {
            return Ok(());
        }
        let mut next = cur.clone();
        next.paid_out_tokens = tokens.min(cur.signed_tokens);
        self.replace(&mut st, proxy_sc, cur, next)
    }

    /// Records that the worker contract of `proxy_sc` is closed on chain after paying
    /// `paid_tokens` in all (the proxy's final payout): the record is settled.
    pub fn mark_closed(&self, proxy_sc: &str, paid_tokens: u64) -> Result<(), PaymentStoreError> {
        let mut st = self.lock();
        let cur = held(&st, proxy_sc)?;
        let mut next = cur.clone();
        next.closed = true;
        next.paid_out_tokens = cur.paid_out_tokens.max(paid_tokens.min(cur.signed_tokens));
        if next == cur {
            return Ok(());
        }
        self.replace(&mut st, proxy_sc, cur, next)
    }

    /// The payouts kept, oldest first.
    pub fn payouts(&self) -> Vec<PayoutEntry> {
        self.lock().payouts.iter().cloned().collect()
    }

    /// Records a payout, dropping the oldest beyond [`MAX_PAYOUTS`].
    pub fn record_payout(&self, entry: PayoutEntry) -> Result<(), PaymentStoreError> {
        let mut st = self.lock();
        st.payouts.push_back(entry);
        while st.payouts.len() > MAX_PAYOUTS {
            st.payouts.pop_front();
        }
        self.persist(&st)
    }

    /// Records the transaction of the pending payout whose message body has hash
    /// `body_hash`: paid, or failed with the chain's reason.
    pub fn payout_seen(&self, body_hash: &str, tx: PayoutTx) -> Result<(), PaymentStoreError> {
        let mut st = self.lock();
        let Some(e) = st.payouts.iter_mut().find(|e| {
            e.status == PayoutStatus::Pending
                && e.sent.as_ref().is_some_and(|s| s.body_hash == body_hash)
        }) else {
            return Ok(());
        };
        e.status = if tx.failed.is_some() {
            PayoutStatus::Failed
        } else {
            PayoutStatus::Paid
        };
        e.reason.clone_from(&tx.failed);
        e.tx = Some(tx);
        self.persist(&st)
    }

    /// Holds `next` for `proxy_sc` once persisted; on failure `cur` stays held.
    fn replace(
        &self,
        st: &mut StateFile,
        proxy_sc: &str,
        cur: ProxyRecord,
        next: ProxyRecord,
    ) -> Result<(), PaymentStoreError> {
        st.proxies.insert(proxy_sc.to_owned(), next);
        if let Err(e) = self.persist(st) {
            st.proxies.insert(proxy_sc.to_owned(), cur);
            return Err(e);
        }
        Ok(())
    }
}

/// `cur` raised by `obs`, or the counter `obs` lowers.
fn raised(cur: &ProxyRecord, obs: &Observed) -> Result<ProxyRecord, PaymentStoreError> {
    let mut next = cur.clone();
    if let Some((tokens, boc)) = &obs.signed {
        if *tokens < cur.signed_tokens {
            return Err(PaymentStoreError::Lower {
                what: "signed payment",
                got: *tokens,
                held: cur.signed_tokens,
            });
        }
        if *tokens > cur.signed_tokens {
            next.signed_tokens = *tokens;
            next.signed_payment_boc = Some(hex::encode(boc));
        }
    }
    if let Some(db) = obs.db_tokens {
        if db < cur.db_tokens {
            return Err(PaymentStoreError::Lower {
                what: "tokens committed to the proxy database",
                got: db,
                held: cur.db_tokens,
            });
        }
        next.db_tokens = db;
    }
    if let Some(max) = obs.max_tokens {
        if obs.strict_max && max < cur.max_tokens {
            return Err(PaymentStoreError::Lower {
                what: "maximum known tokens",
                got: max,
                held: cur.max_tokens,
            });
        }
        next.max_tokens = next.max_tokens.max(max);
    }
    next.max_tokens = next.max_tokens.max(next.db_tokens).max(next.signed_tokens);
    Ok(next)
}

/// `obs` without the values below `held`'s (a report that may arrive out of order raises
/// what is held, never fails).
fn raised_only(held: &ProxyRecord, obs: &Observed) -> Observed {
    let mut obs = obs.clone();
    obs.signed = obs.signed.filter(|s| s.0 >= held.signed_tokens);
    obs.db_tokens = obs.db_tokens.filter(|d| *d >= held.db_tokens);
    obs.max_tokens = obs.max_tokens.filter(|m| *m >= held.max_tokens);
    obs
}

/// The record held for `proxy_sc`.
fn held(st: &StateFile, proxy_sc: &str) -> Result<ProxyRecord, PaymentStoreError> {
    st.proxies
        .get(proxy_sc)
        .cloned()
        .ok_or(PaymentStoreError::UnknownProxy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(t: u64) -> Observed {
        Observed {
            signed: Some((t, vec![t as u8])),
            ..Observed::default()
        }
    }

    fn sent(i: usize) -> PayoutEntry {
        PayoutEntry {
            proxy_sc: "0:11".into(),
            at: i as u64,
            tokens: i as u64,
            new_tokens: 1,
            amount_nanoton: "10".into(),
            status: PayoutStatus::Pending,
            reason: None,
            sent: Some(SentPayout {
                worker_sc: "0:22".into(),
                body_hash: format!("{i:064x}"),
                after_lt: None,
                after_hash: None,
            }),
            tx: None,
        }
    }

    #[test]
    fn payouts_are_bounded_durable_and_settled_by_their_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = PaymentStore::open(dir.path()).unwrap();
        for i in 0..MAX_PAYOUTS + 3 {
            s.record_payout(sent(i)).unwrap();
        }
        let kept = s.payouts();
        assert_eq!(kept.len(), MAX_PAYOUTS);
        assert_eq!(kept[0].at, 3, "the oldest went first");
        let tx = |failed: Option<&str>| PayoutTx {
            hash: "ab".repeat(32),
            lt: 7,
            utime: 9,
            failed: failed.map(str::to_owned),
        };
        s.payout_seen(&format!("{:064x}", 10), tx(None)).unwrap();
        s.payout_seen(&format!("{:064x}", 11), tx(Some("exit code 1001")))
            .unwrap();
        // Unknown or already settled: nothing changes.
        s.payout_seen(&format!("{:064x}", 1), tx(None)).unwrap();
        s.payout_seen(&format!("{:064x}", 11), tx(None)).unwrap();
        drop(s);
        let s = PaymentStore::open(dir.path()).unwrap();
        let p = s.payouts();
        let find = |i: u64| p.iter().find(|e| e.at == i).unwrap();
        assert_eq!(find(10).status, PayoutStatus::Paid);
        assert_eq!(find(10).tx.as_ref().unwrap().lt, 7);
        assert_eq!(find(11).status, PayoutStatus::Failed);
        assert_eq!(find(11).reason.as_deref(), Some("exit code 1001"));
        assert_eq!(find(12).status, PayoutStatus::Pending);
    }

    #[test]
    fn monotonic_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let s = PaymentStore::open(dir.path()).unwrap();
        assert!(matches!(
            s.apply("p", &signed(1)),
            Err(PaymentStoreError::UnknownProxy)
        ));
        s.register("p", &[1; 32], "0:aa", Some(16)).unwrap();
        assert_eq!(s.apply("p", &signed(10)).unwrap().signed_tokens, 10);
        assert!(matches!(
            s.apply("p", &signed(9)),
            Err(PaymentStoreError::Lower {
                got: 9,
                held: 10,
                ..
            })
        ));
        // Equal is consistent and changes nothing.
        assert_eq!(s.apply("p", &signed(10)).unwrap().signed_tokens, 10);
        let db = Observed {
            db_tokens: Some(20),
            max_tokens: Some(25),
            strict_max: true,
            ..Observed::default()
        };
        s.apply("p", &db).unwrap();
        let lower_db = Observed {
            db_tokens: Some(19),
            ..Observed::default()
        };
        assert!(s.apply("p", &lower_db).is_err());
        let lower_max = Observed {
            max_tokens: Some(24),
            strict_max: true,
            ..Observed::default()
        };
        assert!(s.apply("p", &lower_max).is_err());
        let lax_max = Observed {
            max_tokens: Some(24),
            ..Observed::default()
        };
        assert_eq!(s.apply("p", &lax_max).unwrap().max_tokens, 25);
        s.mark_paid("p", 10).unwrap();
        assert!(matches!(
            s.register("p", &[2; 32], "0:aa", None),
            Err(PaymentStoreError::IdentityChanged { .. })
        ));
        assert!(matches!(
            s.register("p", &[1; 32], "0:bb", None),
            Err(PaymentStoreError::IdentityChanged { .. })
        ));
        drop(s);
        let again = PaymentStore::open(dir.path()).unwrap();
        let r = again.get("p").unwrap();
        assert_eq!(
            (
                r.signed_tokens,
                r.db_tokens,
                r.max_tokens,
                r.paid_out_tokens
            ),
            (10, 20, 25, 10)
        );
        assert_eq!(r.signed_payment_boc.as_deref(), Some("0a"));
        assert_eq!(r.ready_tokens(), 0);
        assert_eq!(
            r.worker_fee_per_token,
            Some(16),
            "the contract's own fee is kept"
        );
        // A state file written before the fee was recorded reads as unknown.
        let old = r#"{"version":1,"proxies":{"q":{"proxy_public_key":"01","worker_sc_address":"0:cc","signed_tokens":0,"signed_payment_boc":null,"db_tokens":0,"max_tokens":0,"paid_out_tokens":0}}}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), old).unwrap();
        let s = PaymentStore::open(dir.path()).unwrap();
        assert_eq!(s.get("q").unwrap().worker_fee_per_token, None);
        assert!(!s.get("q").unwrap().closed, "older files read as open");
    }

    #[test]
    fn reports_applied_together_are_checked_in_order_and_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = PaymentStore::open(dir.path()).unwrap();
        s.register("p", &[1; 32], "0:aa", None).unwrap();
        let w0 = s.writes();
        let ordered = |obs| Report {
            obs,
            raise_only: false,
        };
        let db = |t| Observed {
            db_tokens: Some(t),
            ..Observed::default()
        };
        // Three raises and an out-of-order status answer below the second: one write.
        let status = Report {
            obs: Observed {
                db_tokens: Some(15),
                max_tokens: Some(40),
                strict_max: true,
                ..Observed::default()
            },
            raise_only: true,
        };
        let r = s
            .apply_all(
                "p",
                &[
                    ordered(signed(10)),
                    ordered(db(20)),
                    status,
                    ordered(signed(30)),
                ],
            )
            .unwrap();
        assert_eq!((r.signed_tokens, r.db_tokens, r.max_tokens), (30, 20, 40));
        assert_eq!(s.writes(), w0 + 1);
        // A report below what the ones before it left: those are kept (and written), the
        // error returned, and nothing after it applied.
        let err = s
            .apply_all(
                "p",
                &[
                    ordered(signed(35)),
                    ordered(signed(34)),
                    ordered(signed(50)),
                ],
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                PaymentStoreError::Lower {
                    got: 34,
                    held: 35,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(s.writes(), w0 + 2);
        drop(s);
        let again = PaymentStore::open(dir.path()).unwrap();
        assert_eq!(again.get("p").unwrap().signed_tokens, 35);
        // Nothing raised, nothing written.
        again
            .apply_all("p", &[ordered(signed(35)), ordered(db(20))])
            .unwrap();
        assert_eq!(again.writes(), 0);
    }

    #[test]
    fn a_closed_contract_is_settled_durably() {
        let dir = tempfile::tempdir().unwrap();
        let s = PaymentStore::open(dir.path()).unwrap();
        s.register("p", &[1; 32], "0:aa", Some(16)).unwrap();
        s.apply("p", &signed(43)).unwrap();
        assert_eq!(s.get("p").unwrap().ready_tokens(), 43);
        // The proxy's final payout covered more than the worker holds signed.
        s.mark_closed("p", 50).unwrap();
        drop(s);
        let s = PaymentStore::open(dir.path()).unwrap();
        let r = s.get("p").unwrap();
        assert!(r.closed);
        assert_eq!((r.paid_out_tokens, r.ready_tokens()), (43, 0));
        assert!(matches!(
            s.mark_closed("q", 1),
            Err(PaymentStoreError::UnknownProxy)
        ));
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(
            PaymentStore::open(dir.path()),
            Err(PaymentStoreError::Io { .. })
        ));
    }
}
