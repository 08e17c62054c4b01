//! Invariant checks: what must hold whatever happened (crashes, bad peers, bad rows).
//! Used by the tests and the fuzz target, and cheap enough for a proxy's periodic self-check.

use std::collections::HashMap;

use crate::ledger::Ledger;
use crate::types::{AccountKey, Kind};

/// Ledger-wide sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Σ tokens charged to clients.
    pub client_tokens: u128,
    /// Σ tokens credited to workers.
    pub worker_tokens: u128,
    /// Σ nanoTON charged to clients.
    pub client_nanoton: u128,
    /// Σ nanoTON credited to workers.
    pub worker_nanoton: u128,
    /// nanoTON of commission.
    pub commission_nanoton: u128,
}

impl Ledger {
    /// Sums over all accounts whose rows are trusted.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            commission_nanoton: self.state.meta.commission,
            ..Totals::default()
        };
        for a in self.state.accounts.values().filter(|a| !a.corrupt) {
            match a.key.kind {
                Kind::Client => {
                    t.client_tokens += u128::from(a.tokens);
                    t.client_nanoton += a.nanoton;
                }
                Kind::Worker => {
                    t.worker_tokens += u128::from(a.tokens);
                    t.worker_nanoton += a.nanoton;
                }
            }
        }
        t
    }

    /// Every broken invariant, in words; empty when all hold. Conservation is only checked
    /// when no row is corrupt (a corrupt row's amounts are unknown).
    pub fn audit(&self) -> Vec<String> {
        let mut out = Vec::new();
        let corrupt = self.state.accounts.values().any(|a| a.corrupt);
        let t = self.totals();
        if !corrupt {
            if t.client_tokens != t.worker_tokens {
                out.push(format!(
                    "tokens: clients {} != workers {}",
                    t.client_tokens, t.worker_tokens
                ));
            }
            if t.client_nanoton != t.worker_nanoton + t.commission_nanoton {
                out.push(format!(
                    "nanoTON: clients {} != workers {} + commission {}",
                    t.client_nanoton, t.worker_nanoton, t.commission_nanoton
                ));
            }
        }
        let mut reserved: HashMap<&AccountKey, u64> = HashMap::new();
        for r in self.reservations.values() {
            *reserved.entry(&r.client).or_default() += r.tokens;
        }
        for a in self.state.accounts.values().filter(|a| !a.corrupt) {
            let k = &a.key;
            if a.chain_tokens > a.db_tokens || a.db_tokens > a.tokens {
                out.push(format!(
                    "{k}: chain {} ≤ db {} ≤ tokens {} broken",
                    a.chain_tokens, a.db_tokens, a.tokens
                ));
            }
            let mut prev = a.chain_tokens;
            for (s, v) in &a.at_checkpoint {
                if *v <= prev || *v > a.tokens {
                    out.push(format!(
                        "{k}: checkpoint {s} covers {v}, not in ({prev}, {}]",
                        a.tokens
                    ));
                }
                prev = *v;
            }
            if a.on_chain_tokens > a.tokens && a.frozen.is_none() {
                out.push(format!(
                    "{k}: on-chain {} > tokens {} but not frozen",
                    a.on_chain_tokens, a.tokens
                ));
            }
            if a.last_receipt > a.tokens {
                out.push(format!(
                    "{k}: receipt {} > tokens {}",
                    a.last_receipt, a.tokens
                ));
            }
            let r = reserved.get(k).copied().unwrap_or(0);
            if r != a.reserved {
                out.push(format!(
                    "{k}: reserved {} but reservations sum to {r}",
                    a.reserved
                ));
            }
        }
        out
    }
}
