//! The SQLite store: real files, reopen, tampering, file copies taken mid-run, restored old
//! copies, and a child process killed with SIGKILL in the middle of a workload.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use cocoon_ledger::{
    ChainCheckpoint, ClientFunds, LedgerDb, LedgerError, OpenError, OpenOptions, RequestId,
    SqliteStore, Status,
};
use cocoon_openai::usage::{Multipliers, PriceTable, Usage};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::{HashBytes, StdAddr};

fn key() -> SigningKey {
    SigningKey::from_seed(&[0x42; 32]).unwrap()
}

fn prices() -> PriceTable {
    PriceTable {
        price_per_token: 20,
        worker_fee_per_token: 15,
        multipliers: Multipliers::default(),
    }
}

fn addr(n: u8) -> StdAddr {
    StdAddr::new(0, HashBytes([n; 32]))
}

fn opts(chain: Option<ChainCheckpoint>) -> OpenOptions {
    OpenOptions {
        params_version: 1,
        prices: prices(),
        chain: chain
            .map(|c| (1, c))
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        session: [9; 32],
    }
}

fn open(path: &Path, chain: Option<ChainCheckpoint>) -> Result<LedgerDb<SqliteStore>, OpenError> {
    LedgerDb::open(SqliteStore::open(path)?, &key(), opts(chain))
}

fn fund(db: &mut LedgerDb<SqliteStore>, clients: u8) {
    for c in 0..clients {
        let f = ClientFunds {
            balance: 1_000_000_000,
            stake: 1_000_000_000,
        };
        let p = db.observe_client(&addr(c), f, 0, Status::Open).unwrap();
        db.durable(p).unwrap();
    }
}

/// One request; not committed.
fn request(db: &mut LedgerDb<SqliteStore>, i: u64, clients: u8) {
    let client = addr((i % u64::from(clients)) as u8);
    let req = RequestId::from_u64(i);
    db.reserve(&client, req, 1000).unwrap();
    let _ = db
        .settle(
            req,
            &addr(100 + (i % 3) as u8),
            &Usage::new(i % 50, i % 7),
            1000 + i % 500,
        )
        .unwrap();
}

fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let wal = |p: &Path| p.with_extension("db-wal");
    if wal(from).exists() {
        std::fs::copy(wal(from), wal(to)).unwrap();
    }
}

#[test]
fn reopen_gives_identical_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut db = open(&path, None).unwrap();
    fund(&mut db, 3);
    for i in 0..40 {
        request(&mut db, i, 3);
        if i % 8 == 7 {
            db.commit().unwrap(); // group commit of 8 settlements
        }
    }
    db.commit().unwrap();
    let p = db.prepare_checkpoint().unwrap();
    let c = db.durable(p).unwrap();
    let p = db.confirm_checkpoint(c).unwrap();
    db.durable(p).unwrap();
    let before = db.snapshot();
    let totals = db.totals();
    assert!(db.audit().is_empty());
    drop(db);
    let db = open(&path, Some(c)).unwrap();
    assert_eq!(db.snapshot(), before);
    assert_eq!(db.totals(), totals);
    assert!(db.audit().is_empty());
    assert!(db.events().is_empty());
    // WAL mode really is on.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn tampered_sqlite_row_freezes_that_account() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut db = open(&path, None).unwrap();
    fund(&mut db, 2);
    request(&mut db, 0, 2);
    request(&mut db, 1, 2);
    db.commit().unwrap();
    let victim = db.client_key(&addr(0));
    drop(db);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut v: Vec<u8> = conn
        .query_row(
            "SELECT value FROM ledger_rows WHERE key = ?1",
            [victim.row_key()],
            |r| r.get(0),
        )
        .unwrap();
    let n = v.len();
    v[n - 3] ^= 0x01; // flip a bit inside the JSON
    conn.execute(
        "UPDATE ledger_rows SET value = ?2 WHERE key = ?1",
        rusqlite::params![victim.row_key(), v],
    )
    .unwrap();
    drop(conn);
    let mut db = open(&path, None).unwrap();
    assert_eq!(db.frozen().len(), 1);
    assert_eq!(db.frozen()[0].0, victim);
    assert!(matches!(
        db.reserve(&addr(0), RequestId::from_u64(10), 1),
        Err(LedgerError::Frozen { .. })
    ));
    request(&mut db, 11, 2); // client 1
    db.commit().unwrap();
}

#[test]
fn file_copies_taken_between_commits_hold_the_acknowledged_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut db = open(&path, None).unwrap();
    fund(&mut db, 2);
    let mut acked = Vec::new();
    for i in 0..30 {
        request(&mut db, i, 2);
        if i % 3 == 0 {
            db.commit().unwrap();
            // A "crash" here: copy the files while the ledger is open, with uncommitted
            // work about to pile up.
            let copy = dir.path().join(format!("copy{i}.db"));
            copy_db(&path, &copy);
            acked.push((copy, db.snapshot()));
        }
    }
    // Anything after the last commit is lost in the copies, nothing before it.
    for (copy, snapshot) in acked {
        let db = open(&copy, None).unwrap();
        assert_eq!(db.snapshot(), snapshot);
        assert!(db.audit().is_empty());
    }
}

#[test]
fn restored_old_sqlite_copy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let old = dir.path().join("old.db");
    let mut db = open(&path, None).unwrap();
    fund(&mut db, 1);
    request(&mut db, 0, 1);
    db.commit().unwrap();
    copy_db(&path, &old);
    let p = db.prepare_checkpoint().unwrap();
    let c = db.durable(p).unwrap();
    let p = db.confirm_checkpoint(c).unwrap();
    db.durable(p).unwrap();
    drop(db);
    assert!(matches!(
        open(&old, Some(c)),
        Err(OpenError::RolledBack { .. })
    ));
    open(&path, Some(c)).unwrap();
}

const CHILD_ENV: &str = "COCOON_LEDGER_TEST_CHILD_DB";

/// Runs inside the child process started by `sigkill_mid_workload_loses_nothing_acknowledged`:
/// commits requests forever, printing each acknowledged commit.
#[test]
#[ignore = "child process of sigkill_mid_workload_loses_nothing_acknowledged"]
fn sigkill_child_workload() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let path = Path::new(&path);
    let mut db = open(path, None).unwrap();
    if db.accounts().is_empty() {
        fund(&mut db, 3);
    }
    for i in 0.. {
        for j in 0..(i % 4 + 1) {
            request(&mut db, i * 8 + j, 3);
        }
        let seq = db.commit().unwrap();
        let t = db.totals();
        println!("ACK {seq} {}", t.client_tokens);
    }
}

#[test]
fn sigkill_mid_workload_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let exe = std::env::current_exe().unwrap();
    let mut last_tokens = 0u128;
    for round in 0..8u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_child_workload",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let kill_after = 3 + (round * 7) % 23; // vary the kill point
        let mut acked = None;
        let mut seen = 0;
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("ACK ") {
                let mut it = rest.split(' ');
                let seq: u64 = it.next().unwrap().parse().unwrap();
                let tokens: u128 = it.next().unwrap().parse().unwrap();
                acked = Some((seq, tokens));
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (seq, tokens) = acked.expect("child acknowledged commits");
        let db = open(&path, None).unwrap();
        // Everything acknowledged survived; at most the commits the child made after its
        // last printed line are on top; nothing is half-applied.
        assert!(db.committed_seq() >= seq, "round {round}: lost commits");
        let t = db.totals();
        assert!(t.client_tokens >= tokens && t.client_tokens >= last_tokens);
        assert_eq!(t.client_tokens, t.worker_tokens);
        assert_eq!(t.client_nanoton, t.worker_nanoton + t.commission_nanoton);
        assert!(db.audit().is_empty(), "{:?}", db.audit());
        last_tokens = t.client_tokens;
    }
}
