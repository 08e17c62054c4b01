//! Crash consistency: random workloads with crashes (uncommitted updates dropped), failing
//! commits, restores of old backups and params changes, checked by `cocoon_ledger::sim`
//! after every step (conservation, no negative counter, receipts never decrease, every
//! acknowledged commit survives and replays to the same state, rollbacks refused).

use cocoon_ledger::sim::{Op, Sim, SimStats, ops_from_bytes, usage};
use proptest::prelude::*;

/// Deterministic bytes for seed `s` (xorshift64*), biased so workloads make progress.
fn workload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn add(total: &mut SimStats, s: SimStats) {
    total.settled += s.settled;
    total.commits += s.commits;
    total.crashes += s.crashes;
    total.receipts += s.receipts;
    total.rollbacks_refused += s.rollbacks_refused;
    total.confirmed += s.confirmed;
}

#[test]
fn random_workloads_survive_crashes() {
    let mut total = SimStats::default();
    for seed in 0..40 {
        let ops = ops_from_bytes(&workload(seed, 900));
        let mut sim = Sim::new();
        sim.run(&ops);
        add(&mut total, sim.stats);
    }
    // The workloads must actually exercise the interesting paths.
    assert!(total.settled > 250, "{total:?}");
    assert!(total.crashes > 40, "{total:?}");
    assert!(total.receipts > 50, "{total:?}");
    assert!(total.confirmed > 50, "{total:?}");
    assert!(total.rollbacks_refused > 0, "{total:?}");
    println!("{total:?}");
}

#[test]
fn scripted_crash_between_settle_and_commit_loses_only_the_unacknowledged() {
    let mut sim = Sim::new();
    let fund = Op::Fund {
        client: 0,
        balance: 1_000_000_000,
        stake: 1_000_000_000,
    };
    let settle = Op::Settle {
        req: 0,
        worker: 0,
        usage: usage(100, 50, 0, 0),
        coefficient: 1000,
    };
    sim.run(&[
        fund,
        Op::Commit,
        Op::Reserve {
            client: 0,
            tokens: 10_000,
        },
        settle.clone(),
        Op::Checkpoint,
        Op::Confirm,
        Op::Commit,
        Op::Receipt {
            worker: false,
            idx: 0,
        },
        Op::Receipt {
            worker: true,
            idx: 0,
        },
        Op::Reserve {
            client: 0,
            tokens: 10_000,
        },
        Op::FailNextCommit,
        settle,
        Op::Crash,
        Op::Receipt {
            worker: false,
            idx: 0,
        },
    ]);
    assert_eq!(sim.stats.settled, 1);
    assert_eq!(sim.stats.receipts, 3);
    let t = sim.ledger().totals();
    // 100 prompt + 50 completion at multipliers 1.0 / 2.0 → 200 tokens, only the first request.
    assert_eq!((t.client_tokens, t.worker_tokens), (200, 200));
    assert_eq!(t.client_nanoton, 200 * 21);
    assert_eq!(t.worker_nanoton + t.commission_nanoton, 200 * 21);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn proptest_crash_consistency(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut sim = Sim::new();
        sim.run(&ops_from_bytes(&bytes));
    }
}
