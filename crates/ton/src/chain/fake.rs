//! An in-memory [`Chain`] for tests of code that drives one (this crate's unit tests, and
//! other crates' tests through the `testing` feature): it records the BOCs sent and answers
//! the account states and transactions the test sets. Get-methods always fail (exit code
//! 11).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    AccountState, AccountStatus, Chain, ChainError, GetMethodResult, StackValue, Transaction, TxId,
    TxMessage,
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
    /// Transactions in the order pushed.
    txs: Vec<Transaction>,
    fail_sends: bool,
    fail_reads: bool,
}

/// An in-memory chain whose accounts the test sets; clones share it.
#[derive(Clone, Default)]
pub struct FakeChain(Arc<Mutex<State>>);

/// Transaction `lt` (hash `[lt; 32]`, no fee) carrying `in_msg`.
pub fn transaction(lt: u64, in_msg: Option<TxMessage>) -> Transaction {
    Transaction {
        id: TxId {
            lt,
            hash: [lt as u8; 32],
        },
        utime: 0,
        fee: 0,
        in_msg,
        out_msgs: Vec::new(),
        raw: None,
    }
}

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

    /// Account and transaction reads fail (a transport error: the node is down) while `v`.
    pub fn fail_reads(&self, v: bool) {
        self.state().fail_reads = v;
    }

    /// Appends a transaction of the account its inbound message goes to (its `last_tx`
    /// from now on, unless the test set one).
    pub fn push_tx(&self, tx: Transaction) {
        self.state().txs.push(tx);
    }
}

impl State {
    fn txs_of<'a>(&'a self, a: &'a StdAddr) -> impl Iterator<Item = &'a Transaction> {
        self.txs
            .iter()
            .filter(move |t| t.in_msg.as_ref().and_then(|m| m.destination.as_ref()) == Some(a))
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
        if g.fail_reads {
            return Err(ChainError::Transport("fake node down".into()));
        }
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
        if st.last_tx.is_none() {
            st.last_tx = g.txs_of(a).last().map(|t| t.id.clone());
        }
        Ok(st)
    }

    async fn transactions_since(
        &self,
        account: &StdAddr,
        cursor: Option<&TxId>,
        limit: usize,
    ) -> Result<Vec<Transaction>, ChainError> {
        let g = self.state();
        if g.fail_reads {
            return Err(ChainError::Transport("fake node down".into()));
        }
        // Newer than `cursor`, oldest first; without one, the newest `limit`.
        let newer: Vec<&Transaction> = g
            .txs_of(account)
            .filter(|t| cursor.is_none_or(|c| t.id.lt > c.lt))
            .collect();
        let skip = match cursor {
            None => newer.len().saturating_sub(limit),
            Some(_) => 0,
        };
        Ok(newer.into_iter().skip(skip).take(limit).cloned().collect())
    }

    async fn masterchain_seqno(&self) -> Result<u32, ChainError> {
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(lt: u64, to: &StdAddr) -> Transaction {
        let m = TxMessage {
            source: None,
            destination: Some(to.clone()),
            value: 0,
            body: None,
        };
        transaction(lt, Some(m))
    }

    #[tokio::test]
    async fn answers_what_the_test_set() {
        let chain = FakeChain::default();
        let (a, b) = (StdAddr::ZERO, StdAddr::new(0, crate::HashBytes([1; 32])));
        assert_eq!(
            chain.account_state(&a).await.unwrap().status,
            AccountStatus::Nonexist
        );
        chain.set_account(&a, account(AccountStatus::Active, 5, None));
        chain.set_others(account(AccountStatus::Uninit, 7, None));
        assert_eq!(chain.account_state(&a).await.unwrap().balance, 5);
        assert_eq!(chain.account_state(&b).await.unwrap().balance, 7);
        for lt in 1..=3 {
            chain.push_tx(tx(lt, &b));
        }
        chain.push_tx(tx(4, &a));
        let lts = |v: Vec<Transaction>| v.iter().map(|t| t.id.lt).collect::<Vec<_>>();
        let since = |a: &StdAddr, after: Option<TxId>, limit: usize| {
            let chain = chain.clone();
            let a = a.clone();
            async move {
                lts(chain
                    .transactions_since(&a, after.as_ref(), limit)
                    .await
                    .unwrap())
            }
        };
        assert_eq!(since(&b, None, 2).await, [2, 3]);
        assert_eq!(since(&b, Some(tx(1, &b).id), 1).await, [2]);
        assert_eq!(since(&a, None, 9).await, [4]);
        let last = chain.account_state(&b).await.unwrap().last_tx;
        assert_eq!(last, Some(tx(3, &b).id));
        chain.fail_reads(true);
        assert!(chain.account_state(&a).await.is_err());
        chain.fail_reads(false);
        chain.set_disagreeing(true);
        assert!(matches!(
            chain.account_state(&a).await,
            Err(ChainError::NoQuorum { .. })
        ));
        chain.send_boc(&[1]).await.unwrap();
        chain.fail_sends(true);
        assert!(chain.send_boc(&[2]).await.is_err());
        assert_eq!(chain.sent(), vec![vec![1]]);
    }
}
