//! Durable ledger updates per second on the SQLite store: one settlement per transaction
//! versus group commit of 8 and 64 settlements per transaction.
//!
//!     cargo run --release -p cocoon-ledger --example ledger_bench [DIR] [SECONDS]
//!
//! DIR (default: a temporary directory) should be on the disk the proxy would use: the
//! figure is bound by its fsync latency. Each row runs for SECONDS (default 3).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cocoon_ledger::{ClientFunds, LedgerDb, OpenOptions, RequestId, SqliteStore, Status};
use cocoon_openai::usage::{Multipliers, PriceTable, Usage};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::{HashBytes, StdAddr};

fn addr(n: u8) -> StdAddr {
    StdAddr::new(0, HashBytes([n; 32]))
}

/// Returns (settlements, commits, elapsed, worst commit).
fn run(path: &Path, group: u64, secs: f64) -> (u64, u64, Duration, Duration) {
    let key = SigningKey::from_seed(&[1; 32]).expect("seed");
    let opts = OpenOptions {
        params_version: 1,
        prices: PriceTable {
            price_per_token: 20,
            worker_fee_per_token: 16,
            multipliers: Multipliers::default(),
        },
        chain: BTreeMap::new(),
        session: [0; 32],
    };
    let store = SqliteStore::open(path).expect("open sqlite");
    let mut db = LedgerDb::open(store, &key, opts).expect("open ledger");
    let clients = 16u8;
    for c in 0..clients {
        let f = ClientFunds {
            balance: u64::MAX / 4,
            stake: u64::MAX / 4,
        };
        let p = db
            .observe_client(&addr(c), f, 0, Status::Open)
            .expect("observe");
        db.durable(p).expect("commit");
    }
    let (mut n, mut commits, mut worst) = (0u64, 0u64, Duration::ZERO);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..group {
            let req = RequestId::from_u64(n);
            db.reserve(&addr((n % u64::from(clients)) as u8), req, 10_000)
                .expect("reserve");
            let _ = db
                .settle(req, &addr(100 + (n % 8) as u8), &Usage::new(500, 200), 1000)
                .expect("settle");
            n += 1;
        }
        let t = Instant::now();
        db.commit().expect("commit");
        worst = worst.max(t.elapsed());
        commits += 1;
    }
    (n, commits, start.elapsed(), worst)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args.get(1).map_or(tmp.path().to_path_buf(), Into::into);
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    println!(
        "| settlements per transaction | settlements/s | transactions/s | mean time per transaction | worst commit |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for group in [1u64, 8, 64] {
        let path = dir.join(format!("ledger-bench-{group}-{}.db", std::process::id()));
        let (n, commits, elapsed, worst) = run(&path, group, secs);
        let e = elapsed.as_secs_f64();
        println!(
            "| {group} | {:.0} | {:.0} | {:.2} ms | {:.2} ms |",
            n as f64 / e,
            commits as f64 / e,
            e * 1000.0 / commits as f64,
            worst.as_secs_f64() * 1000.0
        );
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}
