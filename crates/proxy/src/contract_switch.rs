//! The proxy contract across `params_version` changes, as pure decisions: the chain's state
//! and time come in as arguments, the process (`process.rs`) does the I/O.
//!
//! A proxy contract's address is derived from the root params (with the owner, the proxy
//! key and the root). When the root's `params_version` changes, clients and workers derive
//! the proxy contract from the new params and refuse any other, so the proxy:
//! 1. derives its new contract and deploys it with its stake ([`plan`]);
//! 2. moves its ledger to the new params (the old accounts close: final receipts);
//! 3. switches, in one step, the contract it advertises, the one whose registrations it
//!    watches and the one its checkpoints go to;
//! 4. retires the old contract ([`retire_step`]): once every old account's contract shows
//!    closed on chain (client grant-refund, worker last payout), it sends the signed close
//!    request, waits `proxy_delay_before_close` by the chain's clock, and sends the signed
//!    close-complete, which hands stake, commission and whatever is left to the owner.
//!
//! Every contract the proxy used is kept in a small book ([`ContractBook`], a text file in
//! the state directory), so a contract retired while the process was down is closed after
//! the restart too.

use cocoon_ton::root::RootConfig;
use cocoon_ton::{HashBytes, StdAddr};

/// A proxy contract: the params version it was derived from, and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractRecord {
    /// The root `params_version` of its params.
    pub params_version: u32,
    /// Its address.
    pub address: StdAddr,
}

/// What a proxy contract's address is derived from besides the params.
#[derive(Debug, Clone)]
pub struct ContractIdentity {
    /// The proxy's owner (gets the stake and commission back).
    pub owner: StdAddr,
    /// The proxy's public signing key.
    pub public_key: HashBytes,
    /// The root contract.
    pub root: StdAddr,
}

impl ContractIdentity {
    /// The proxy contract for `root`'s params.
    pub fn contract(
        &self,
        root: &RootConfig,
    ) -> Result<cocoon_ton::contracts::Deployable, SwitchError> {
        cocoon_ton::contracts::proxy_contract(
            &root.params,
            &self.owner,
            &self.public_key,
            &self.root,
        )
        .map_err(|e| SwitchError::Derive {
            version: root.params.params_version,
            reason: e.to_string(),
        })
    }
}

/// What to do with a root configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchPlan {
    /// Same params version: the contract stays.
    Keep,
    /// New params: deploy `to` when it is missing, then switch to it; `from` retires.
    Switch {
        /// The contract in use.
        from: ContractRecord,
        /// The contract of the new params.
        to: ContractRecord,
    },
}

/// Why a root configuration cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchError {
    /// The root's `params_version` went back (the root never does that; an endpoint that
    /// answers from an old state does).
    #[error("params_version {offered} is older than {current}, the one in use")]
    Older {
        /// In use.
        current: u32,
        /// Offered.
        offered: u32,
    },
    /// The contract could not be derived from the params (a malformed params cell).
    #[error("proxy contract for params_version {version}: {reason}")]
    Derive {
        /// The params version.
        version: u32,
        /// Why.
        reason: String,
    },
}

/// Decides what a root configuration means for the proxy contract in use.
pub fn plan(
    current: &ContractRecord,
    root: &RootConfig,
    id: &ContractIdentity,
) -> Result<SwitchPlan, SwitchError> {
    let offered = root.params.params_version;
    if offered == current.params_version {
        return Ok(SwitchPlan::Keep);
    }
    if offered < current.params_version {
        return Err(SwitchError::Older {
            current: current.params_version,
            offered,
        });
    }
    let to = ContractRecord {
        params_version: offered,
        address: id.contract(root)?.address,
    };
    Ok(SwitchPlan::Switch {
        from: current.clone(),
        to,
    })
}

/// A client or worker contract of a retiring proxy contract, as the chain shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOnChain {
    /// Not deployed (or gone).
    Missing,
    /// Deployed and not closed.
    Open,
    /// Closed: its final receipt landed.
    Closed,
}

/// Whether an old account needs nothing more on chain: its contract is closed, or it has
/// nothing to settle and no contract to close (a worker that earned nothing never had one).
pub fn account_settled(is_worker: bool, tokens: u64, on_chain: ChildOnChain) -> bool {
    match on_chain {
        ChildOnChain::Closed => true,
        ChildOnChain::Missing => tokens == 0 && is_worker,
        ChildOnChain::Open => false,
    }
}

/// A retiring proxy contract as the chain shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldProxyOnChain {
    /// Not deployed, or gone (nothing to close).
    Missing,
    /// Open (`state` 0).
    Normal,
    /// Closing until `unlock_ts` (chain time).
    Closing {
        /// When close-complete is allowed.
        unlock_ts: u32,
    },
    /// Closed: everything went to the owner.
    Closed,
}

/// What the proxy knows about a retiring contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetireFacts {
    /// Its accounts (ledger) whose contracts are not settled on chain yet.
    pub open_accounts: usize,
    /// Frozen accounts among them: they need the operator.
    pub frozen_accounts: usize,
    /// The contract on chain.
    pub proxy: OldProxyOnChain,
    /// The chain's time (the answering node's last block), unix seconds.
    pub chain_now: u64,
}

/// The next step in retiring a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireStep {
    /// Final receipts are still landing; nothing to send.
    WaitAccounts {
        /// Accounts not settled.
        open: usize,
        /// Frozen ones among them.
        frozen: usize,
    },
    /// Send the signed close request (→ closing, `unlock_ts = now + proxy_delay_before_close`).
    RequestClose,
    /// Closing; close-complete is refused before `until` (chain time).
    WaitUnlock {
        /// `unlock_ts`.
        until: u64,
    },
    /// Send the signed close-complete (→ closed, the whole balance to the owner).
    CompleteClose,
    /// Closed or gone: forget it.
    Done,
}

/// Decides the next step for a retiring contract. The close request goes out only once
/// every old account is settled: while closing the contract still takes charges and
/// payouts, but close-complete hands everything left to the owner, so a worker whose last
/// payout had not landed would be paid from nothing.
pub fn retire_step(f: &RetireFacts) -> RetireStep {
    match f.proxy {
        OldProxyOnChain::Missing | OldProxyOnChain::Closed => RetireStep::Done,
        _ if f.open_accounts > 0 => RetireStep::WaitAccounts {
            open: f.open_accounts,
            frozen: f.frozen_accounts,
        },
        OldProxyOnChain::Normal => RetireStep::RequestClose,
        OldProxyOnChain::Closing { unlock_ts } if f.chain_now < u64::from(unlock_ts) => {
            RetireStep::WaitUnlock {
                until: u64::from(unlock_ts),
            }
        }
        OldProxyOnChain::Closing { .. } => RetireStep::CompleteClose,
    }
}

/// Every proxy contract this proxy used, and which of them are closed. Kept as text, one
/// contract a line: `<params_version> <address> open|closed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContractBook {
    entries: Vec<(ContractRecord, bool)>,
}

/// A line of the book that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct BookError {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

impl ContractBook {
    /// Parses the book's text.
    pub fn parse(text: &str) -> Result<Self, BookError> {
        let mut entries = Vec::new();
        for (i, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let err = |reason: String| BookError {
                line: i + 1,
                reason,
            };
            let parts: Vec<&str> = l.split_whitespace().collect();
            let [v, a, st] = parts[..] else {
                return Err(err(
                    "expected `<params_version> <address> open|closed`".into()
                ));
            };
            let params_version = v.parse().map_err(|_| err(format!("bad version {v:?}")))?;
            let address = cocoon_ton::parse_address(a).map_err(|e| err(e.to_string()))?;
            let closed = match st {
                "open" => false,
                "closed" => true,
                other => return Err(err(format!("bad state {other:?}"))),
            };
            entries.push((
                ContractRecord {
                    params_version,
                    address,
                },
                closed,
            ));
        }
        Ok(ContractBook { entries })
    }

    /// The book's text.
    pub fn render(&self) -> String {
        let mut s =
            String::from("# proxy contracts used by this proxy: params_version address state\n");
        for (r, closed) in &self.entries {
            let st = if *closed { "closed" } else { "open" };
            s.push_str(&format!("{} {} {st}\n", r.params_version, r.address));
        }
        s
    }

    /// Records `r` as used (open). Returns whether the book changed.
    pub fn record(&mut self, r: &ContractRecord) -> bool {
        if self.entries.iter().any(|(e, _)| e == r) {
            return false;
        }
        self.entries.push((r.clone(), false));
        true
    }

    /// Marks the contract at `address` closed. Returns whether the book changed.
    pub fn mark_closed(&mut self, address: &StdAddr) -> bool {
        let mut changed = false;
        for (e, closed) in &mut self.entries {
            if &e.address == address && !*closed {
                *closed = true;
                changed = true;
            }
        }
        changed
    }

    /// The contracts to retire: open ones of an older params version than `current`.
    pub fn retiring(&self, current: u32) -> Vec<ContractRecord> {
        self.entries
            .iter()
            .filter(|(e, closed)| !*closed && e.params_version < current)
            .map(|(e, _)| e.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(n: u8) -> StdAddr {
        StdAddr::new(0, HashBytes([n; 32]))
    }

    fn rec(v: u32, n: u8) -> ContractRecord {
        ContractRecord {
            params_version: v,
            address: a(n),
        }
    }

    fn root(params_version: u32) -> RootConfig {
        let params =
            cocoon_ton::code::with_child_codes(cocoon_ton::root::CocoonParams::default()).unwrap();
        let mut r = cocoon_ton::code::initial_root_config(a(9), params);
        r.params.params_version = params_version;
        r
    }

    fn id() -> ContractIdentity {
        ContractIdentity {
            owner: a(1),
            public_key: HashBytes([2; 32]),
            root: a(3),
        }
    }

    #[test]
    fn same_version_keeps_newer_switches_older_is_refused() {
        let cur = ContractRecord {
            params_version: 4,
            address: id().contract(&root(4)).unwrap().address,
        };
        assert_eq!(plan(&cur, &root(4), &id()).unwrap(), SwitchPlan::Keep);
        let SwitchPlan::Switch { from, to } = plan(&cur, &root(5), &id()).unwrap() else {
            panic!("a newer params_version switches");
        };
        assert_eq!(from, cur);
        assert_eq!(to.params_version, 5);
        assert_eq!(to.address, id().contract(&root(5)).unwrap().address);
        assert_ne!(to.address, cur.address, "the params are in the address");
        assert_eq!(
            plan(&cur, &root(3), &id()),
            Err(SwitchError::Older {
                current: 4,
                offered: 3
            })
        );
    }

    #[test]
    fn old_accounts_settle_when_closed_or_empty_workers() {
        assert!(account_settled(false, 10, ChildOnChain::Closed));
        assert!(account_settled(true, 10, ChildOnChain::Closed));
        assert!(!account_settled(false, 10, ChildOnChain::Open));
        assert!(
            !account_settled(false, 0, ChildOnChain::Open),
            "a client's refund"
        );
        assert!(account_settled(true, 0, ChildOnChain::Missing));
        assert!(
            !account_settled(true, 5, ChildOnChain::Missing),
            "earned, not paid"
        );
        assert!(!account_settled(false, 0, ChildOnChain::Missing));
    }

    #[test]
    fn retirement_waits_for_accounts_then_requests_waits_and_completes() {
        let f = |open, proxy, now| RetireFacts {
            open_accounts: open,
            frozen_accounts: 0,
            proxy,
            chain_now: now,
        };
        use OldProxyOnChain::*;
        assert_eq!(
            retire_step(&f(2, Normal, 100)),
            RetireStep::WaitAccounts { open: 2, frozen: 0 }
        );
        assert_eq!(retire_step(&f(0, Normal, 100)), RetireStep::RequestClose);
        let closing = Closing { unlock_ts: 200 };
        assert_eq!(
            retire_step(&f(0, closing, 199)),
            RetireStep::WaitUnlock { until: 200 }
        );
        assert_eq!(retire_step(&f(0, closing, 200)), RetireStep::CompleteClose);
        // Closing with an account not settled (the close request went out before a
        // restart found one open): close-complete waits for it, whatever the time.
        assert_eq!(
            retire_step(&f(1, closing, 500)),
            RetireStep::WaitAccounts { open: 1, frozen: 0 }
        );
        assert_eq!(retire_step(&f(3, Closed, 0)), RetireStep::Done);
        assert_eq!(retire_step(&f(0, Missing, 0)), RetireStep::Done);
    }

    #[test]
    fn the_book_round_trips_and_lists_what_to_retire() {
        let mut b = ContractBook::default();
        assert!(b.record(&rec(1, 7)));
        assert!(!b.record(&rec(1, 7)));
        assert!(b.record(&rec(2, 8)));
        assert_eq!(b.retiring(2), vec![rec(1, 7)]);
        let back = ContractBook::parse(&b.render()).unwrap();
        assert_eq!(back, b);
        assert!(b.mark_closed(&a(7)));
        assert!(!b.mark_closed(&a(7)));
        assert!(b.retiring(2).is_empty());
        assert_eq!(ContractBook::parse(&b.render()).unwrap(), b);
        assert_eq!(ContractBook::parse("1 x open").unwrap_err().line, 1);
        assert!(
            ContractBook::parse(
                "# c\n\n1 0:0000000000000000000000000000000000000000000000000000000000000000 shut"
            )
            .is_err()
        );
    }
}
