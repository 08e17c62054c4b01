//! An in-memory [`Chain`] for tests of code that drives one (this crate's unit tests, and
//! other crates' tests through the `testing` feature): it records the BOCs sent and answers
//! the account states the test sets. Get-methods always fail (exit code 11).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    AccountState, AccountStatus, Chain, ChainError, GetMethodResult, StackValue, Transaction, TxId,
};
use crate::root::RootConfig;
use crate::{Cell, StdAddr};

#[derive(Default)]
struct State {
    sent: Vec<Vec<u8>>,
    accounts: HashMap<StdAddr, AccountState>,
    /// The state of every address without its own (none: a nonexistent account).
    others: Option<AccountState>,
    /// Account reads fail as when the endpoints do not agree.
    disagreeing: bool,
    /// The chain's time reported with every account state.
    utime: Option<u64>,
    fail_sends: bool,
}

/// An in-memory chain whose accounts the test sets; clones share it.
#[derive(Clone, Default)]
pub struct FakeChain(Arc<Mutex<State>>);

/// An account in `status` with `balance` nanoTON and `data` as its storage.
pub fn account(status: AccountStatus, balance: u128, data: Option<Cell>) -> AccountState {
    AccountState {
        balance,
        status,
        code: None,
        data,
        last_tx: None,
        sync_utime: None,
    }
}

impl FakeChain {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The BOCs sent so far, in order.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.state().sent.clone()
    }

    /// `a`'s state from now on.
    pub fn set_account(&self, a: &StdAddr, st: AccountState) {
        self.state().accounts.insert(a.clone(), st);
    }

    /// `a` is an active wallet (balance 1) with `data` as its storage.
    pub fn set_wallet(&self, a: &StdAddr, data: Cell) {
        self.set_account(a, account(AccountStatus::Active, 1, Some(data)));
    }

    /// The state of every address without its own.
    pub fn set_others(&self, st: AccountState) {
        self.state().others = Some(st);
    }

    /// Every address without its own state is an active root contract holding `c`.
    pub fn set_root(&self, c: &RootConfig) -> Result<(), crate::codec::LayoutError> {
        let data = c.to_storage_cell()?;
        self.set_others(account(AccountStatus::Active, 1, Some(data)));
        Ok(())
    }

    /// Account reads fail with [`ChainError::NoQuorum`] (the endpoints disagree) while `v`.
    pub fn set_disagreeing(&self, v: bool) {
        self.state().disagreeing = v;
    }

    /// The chain's time, reported with every account state.
    pub fn set_utime(&self, t: u64) {
        self.state().utime = Some(t);
    }

    /// Sends fail (a transport error) while `v`.
    pub fn fail_sends(&self, v: bool) {
        self.state().fail_sends = v;
    }
}

impl Chain for FakeChain {
    async fn send_boc(&self, boc: &[u8]) -> Result<(), ChainError> {
        let mut g = self.state();
        if g.fail_sends {
            return Err(ChainError::Transport("fake send failure".into()));
        }
        g.sent.push(boc.to_vec());
        Ok(())
    }

    async fn run_get_method(
        &self,
        _: &StdAddr,
        method: &str,
        _: &[StackValue],
    ) -> Result<GetMethodResult, ChainError> {
        Err(ChainError::GetMethodExit {
            method: method.into(),
            exit_code: 11,
        })
    }

    async fn account_state(&self, a: &StdAddr) -> Result<AccountState, ChainError> {
        let g = self.state();
        if g.disagreeing {
            return Err(ChainError::NoQuorum {
                what: format!("account {a}"),
                quorum: 2,
                answers: Vec::new(),
            });
        }
        let mut st = match (g.accounts.get(a), &g.others) {
            (Some(st), _) | (None, Some(st)) => st.clone(),
            (None, None) => account(AccountStatus::Nonexist, 0, None),
        };
        st.sync_utime = g.utime;
        Ok(st)
    }

    async fn transactions_since(
        &self,
        _: &StdAddr,
        _: Option<&TxId>,
        _: usize,
    ) -> Result<Vec<Transaction>, ChainError> {
        Ok(Vec::new())
    }

    async fn masterchain_seqno(&self) -> Result<u32, ChainError> {
        Ok(1)
    }
}
