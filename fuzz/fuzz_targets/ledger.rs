//! The proxy's money ledger (`cocoon_ledger`) driven by arbitrary sequences of operations over
//! the in-memory store, with crashes and restarts.
//!
//! Input: a sequence of operations, one op byte then its argument bytes, decoded by
//! `cocoon_ledger::sim::ops_from_bytes` (missing bytes read as 0): observe a client's
//! contract (fund), reserve, settle with random usage (prompt, completion, cached,
//! reasoning, coefficient), cancel, commit, make the next commit fail, prepare a checkpoint
//! and put it on chain, confirm the next on-chain checkpoint, confirm a forged checkpoint,
//! ask for a receipt, observe on-chain settlement (sometimes more than the ledger knows),
//! crash (drop everything uncommitted) and reopen, back up the store, restore the backup,
//! change the root params version, close an old-version account with its final receipt.
//!
//! Checked after every operation (by `cocoon_ledger::sim`, which panics on a violation):
//! no panic in the ledger; conservation (Σ client tokens = Σ worker tokens; Σ client nanoTON
//! = Σ worker nanoTON + commission); counters ordered and never negative; reservations add
//! up; results are hidden until committed; every acknowledged commit survives a crash and
//! replaying the acknowledged updates rebuilds the state; receipts verify, are bound to the
//! account's contract and never decrease, across crashes and restores; a checkpoint this
//! ledger put on chain is never refused at reopen, a forged one halts the ledger, and a
//! restored backup the chain has moved past is refused; chain contradictions freeze the
//! account instead of aborting.
#![no_main]

use cocoon_ledger::sim::{Sim, ops_from_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Bound the work per input: long inputs add little beyond the first few hundred ops.
    let ops = ops_from_bytes(&data[..data.len().min(4096)]);
    let mut sim = Sim::new();
    sim.run(&ops);
});
