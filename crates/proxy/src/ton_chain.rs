//! [`ClientChain`] and [`CheckpointChain`] over a TON node (`cocoon_ton::chain::Chain`:
//! toncenter or the devnet).
//!
//! - The client contract's state is its storage (`ClientStorage`): state, balance, stake,
//!   tokens charged and the secret hash (zero = none set).
//! - Long authorisation: the client's wallet sends `owner_client_register{nonce}` to its
//!   client contract, which forwards `client_proxy_request{owner, ^state, payload =
//!   client_proxy_register{nonce}}` to the proxy contract. The proxy contract's
//!   transactions are scanned from a cursor taken when this object was created (a nonce is
//!   only issued later, so nothing relevant is older); every registration seen is
//!   remembered, so a registration that landed before the client asked is still found.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use cocoon_ledger::ChainCheckpoint;
use cocoon_ton::StdAddr;
use cocoon_ton::chain::{AccountStatus, Chain, TxId};
use cocoon_ton::codec::Layout;
use cocoon_ton::contracts::ClientStorage;
use cocoon_ton::messages::{ClientProxyRegister, ClientProxyRequest, SaveState};
use cocoon_ton::payments::SignedPayment;
use cocoon_ton::wallet::{OutMsg, WalletSender};
use futures::future::BoxFuture;

use crate::chain::{CheckpointChain, ClientChain, ClientContractState, ProxyChainError};

/// Most transactions read per poll.
const PAGE: usize = 100;

struct Scan {
    cursor: Option<TxId>,
    registered: HashSet<(StdAddr, u64)>,
}

/// Client contract states kept as the last agreed value (bounded; see `client_state`).
const MAX_AGREED: usize = 10_000;

/// Client contract reads and registration polling through a TON node.
pub struct TonClientChain<C> {
    chain: C,
    /// The proxy contract whose transactions are scanned (changes with `switch_contract`).
    proxy_sc: Mutex<StdAddr>,
    poll: Duration,
    scan: tokio::sync::Mutex<Scan>,
    errors: Mutex<u64>,
    /// The last state of each client contract that the chain endpoints agreed on.
    agreed: Mutex<HashMap<StdAddr, ClientContractState>>,
}

fn unavailable(e: impl std::fmt::Display) -> ProxyChainError {
    ProxyChainError::Unavailable(e.to_string())
}

impl<C: Chain + 'static> TonClientChain<C> {
    /// Starts watching `proxy_sc` from its latest transaction.
    pub async fn new(chain: C, proxy_sc: StdAddr, poll: Duration) -> Result<Self, ProxyChainError> {
        let st = chain.account_state(&proxy_sc).await.map_err(unavailable)?;
        Ok(TonClientChain {
            chain,
            proxy_sc: Mutex::new(proxy_sc),
            poll,
            scan: tokio::sync::Mutex::new(Scan {
                cursor: st.last_tx,
                registered: HashSet::new(),
            }),
            errors: Mutex::new(0),
            agreed: Mutex::new(HashMap::new()),
        })
    }

    /// Registrations are looked for on `proxy_sc` from now on (a `params_version` change
    /// gave the proxy a new contract). Its transactions are read from its first one: the
    /// contract is new, and a client of the new params may have registered already.
    pub async fn switch_contract(&self, proxy_sc: StdAddr) {
        let mut s = self.scan.lock().await;
        let mut cur = self.proxy_sc.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != proxy_sc {
            *cur = proxy_sc;
            s.cursor = None;
        }
    }

    /// The proxy contract registrations are looked for on.
    pub fn proxy_sc(&self) -> StdAddr {
        self.proxy_sc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Poll failures so far (shown to the operator; polling goes on).
    pub fn poll_errors(&self) -> u64 {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers an agreed state (at most `MAX_AGREED` contracts; beyond that an arbitrary
    /// one is forgotten, which only means no kept value for it).
    fn remember(&self, client_sc: &StdAddr, st: &ClientContractState) {
        let mut m = self.agreed.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_AGREED
            && !m.contains_key(client_sc)
            && let Some(k) = m.keys().next().cloned()
        {
            m.remove(&k);
        }
        m.insert(client_sc.clone(), st.clone());
    }

    /// A read failed. When the endpoints did not reach a quorum the last agreed state stays
    /// in use (an operator event, not a refusal); otherwise, or with no agreed state yet,
    /// the read fails as before. A disagreement never yields a minority answer.
    fn kept_or_failed(
        &self,
        client_sc: &StdAddr,
        e: cocoon_ton::chain::ChainError,
    ) -> Result<Option<ClientContractState>, ProxyChainError> {
        if !matches!(e, cocoon_ton::chain::ChainError::NoQuorum { .. }) {
            return Err(unavailable(e));
        }
        let kept = self
            .agreed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_sc)
            .cloned();
        match kept {
            Some(st) => {
                tracing::error!(
                    client_sc = %client_sc,
                    error = %e,
                    "ton_no_quorum: keeping the last agreed client contract state"
                );
                Ok(Some(st))
            }
            None => Err(unavailable(e)),
        }
    }

    /// Reads new proxy-contract transactions and records the registrations among them.
    async fn scan_once(&self) -> Result<(), ProxyChainError> {
        let mut s = self.scan.lock().await;
        let proxy_sc = self.proxy_sc();
        loop {
            let txs = self
                .chain
                .transactions_since(&proxy_sc, s.cursor.as_ref(), PAGE)
                .await
                .map_err(unavailable)?;
            let n = txs.len();
            for tx in txs {
                if let Some((from, nonce)) = registration(&tx) {
                    s.registered.insert((from, nonce));
                }
                s.cursor = Some(tx.id);
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }
}

/// The client contract as the proxy needs it, from its account state (`None`: not deployed).
fn client_contract_state(
    st: cocoon_ton::chain::AccountState,
) -> Result<Option<ClientContractState>, ProxyChainError> {
    if st.status != AccountStatus::Active {
        return Ok(None);
    }
    let Some(data) = st.data else {
        return Ok(None);
    };
    let s = ClientStorage::from_cell(&data)
        .map_err(|e| unavailable(format!("client contract storage: {e}")))?;
    Ok(Some(ClientContractState {
        secret_hash: (s.secret_hash != cocoon_ton::HashBytes::ZERO).then_some(s.secret_hash.0),
        balance: s.balance.0,
        stake: s.stake.0,
        tokens_used: s.tokens_used,
        closing: s.state.0 == 1,
        closed: s.state.0 >= 2,
    }))
}

/// The `(client contract, nonce)` a transaction registers, if it is a registration.
fn registration(tx: &cocoon_ton::chain::Transaction) -> Option<(StdAddr, u64)> {
    if tx.outcome().ok().flatten().is_some_and(|o| o.failed()) {
        return None;
    }
    let msg = tx.in_msg.as_ref()?;
    let from = msg.source.clone()?;
    let body = msg.body.as_ref()?;
    let req = ClientProxyRequest::from_cell(body).ok()?;
    let payload = req.payload?;
    let reg = ClientProxyRegister::from_cell(&payload).ok()?;
    Some((from, reg.nonce))
}

impl<C: Chain + 'static> ClientChain for TonClientChain<C> {
    fn client_state<'a>(
        &'a self,
        client_sc: &'a StdAddr,
    ) -> BoxFuture<'a, Result<Option<ClientContractState>, ProxyChainError>> {
        Box::pin(async move {
            let st = match self.chain.account_state(client_sc).await {
                Ok(st) => st,
                Err(e) => return self.kept_or_failed(client_sc, e),
            };
            let read = client_contract_state(st);
            if let Ok(Some(s)) = &read {
                self.remember(client_sc, s);
            }
            read
        })
    }

    fn ton_disagreements(&self) -> u64 {
        self.chain.quorum_disagreements()
    }

    fn wait_register<'a>(
        &'a self,
        client_sc: &'a StdAddr,
        nonce: u64,
    ) -> BoxFuture<'a, Result<(), ProxyChainError>> {
        Box::pin(async move {
            let key = (client_sc.clone(), nonce);
            loop {
                match self.scan_once().await {
                    Ok(()) => {}
                    Err(e) => {
                        *self.errors.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                        tracing::warn!(error = %e, "polling the proxy contract failed");
                    }
                }
                if self.scan.lock().await.registered.contains(&key) {
                    return Ok(());
                }
                tokio::time::sleep(self.poll).await;
            }
        })
    }
}

/// Value sent with a `save_state` (the contract ignores the message and the transaction is
/// the record).
pub(crate) const SAVE_STATE_NANOTON: u64 = 1;
/// Value attached to a submitted charge or payout (the excess returns to the sender).
pub(crate) const RECEIPT_ATTACH_NANOTON: u64 = 50_000_000;

struct CheckpointScan {
    cursor: Option<TxId>,
    seen: Vec<ChainCheckpoint>,
}

/// [`CheckpointChain`] through a TON node and the proxy operator's wallet: checkpoints are
/// `save_state` messages from that wallet to the proxy contract, read back from the
/// contract's transactions (only those whose sender is our wallet count); receipts are
/// sent to their contract with the excess returned to the wallet.
pub struct TonCheckpointChain<C: Chain> {
    sender: tokio::sync::Mutex<WalletSender<C>>,
    /// Where checkpoints and commission withdrawals go (changes with `switch_contract`).
    proxy_sc: Mutex<StdAddr>,
    scan: tokio::sync::Mutex<CheckpointScan>,
}

impl<C: Chain + 'static> TonCheckpointChain<C> {
    /// Checkpoints of `proxy_sc` sent by `sender`'s wallet.
    pub fn new(sender: WalletSender<C>, proxy_sc: StdAddr) -> Self {
        TonCheckpointChain {
            sender: tokio::sync::Mutex::new(sender),
            proxy_sc: Mutex::new(proxy_sc),
            scan: tokio::sync::Mutex::new(CheckpointScan {
                cursor: None,
                seen: Vec::new(),
            }),
        }
    }

    /// Checkpoints and commission withdrawals go to `proxy_sc` from now on (a
    /// `params_version` change gave the proxy a new contract); the checkpoints are read
    /// back from its transactions, from its first one. Seqnos keep growing across the
    /// switch, so the ledger's cursor stays valid.
    pub async fn switch_contract(&self, proxy_sc: StdAddr) {
        let mut scan = self.scan.lock().await;
        let mut cur = self.proxy_sc.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != proxy_sc {
            *cur = proxy_sc;
            scan.cursor = None;
            scan.seen.clear();
        }
    }

    /// Where checkpoints go now.
    pub fn proxy_sc(&self) -> StdAddr {
        self.proxy_sc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The operator's wallet, held while the guard lives (deployments queue behind it).
    pub async fn wallet(&self) -> tokio::sync::MutexGuard<'_, WalletSender<C>> {
        self.sender.lock().await
    }

    /// Sends queued wallet messages (and settles the one in flight); call periodically.
    pub async fn tick(&self) -> Result<(), ProxyChainError> {
        let mut s = self.sender.lock().await;
        if s.pending() == 0 {
            return Ok(());
        }
        s.tick(crate::now_unix() as u64)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn enqueue(&self, msg: OutMsg) -> Result<(), ProxyChainError> {
        let mut s = self.sender.lock().await;
        s.enqueue(msg);
        s.tick(crate::now_unix() as u64)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

impl<C: Chain + 'static> CheckpointChain for TonCheckpointChain<C> {
    fn send_checkpoint(&self, c: ChainCheckpoint) -> BoxFuture<'_, Result<(), ProxyChainError>> {
        Box::pin(async move {
            let seqno = i32::try_from(c.seqno).map_err(unavailable)?;
            let body = SaveState::new(u64::from(c.seqno), seqno, cocoon_ton::HashBytes(c.hash))
                .to_cell()
                .map_err(unavailable)?;
            self.enqueue(OutMsg::new(self.proxy_sc(), SAVE_STATE_NANOTON, Some(body)))
                .await
        })
    }

    fn checkpoints_since(
        &self,
        after: u32,
    ) -> BoxFuture<'_, Result<Vec<ChainCheckpoint>, ProxyChainError>> {
        Box::pin(async move {
            let ours = self.sender.lock().await.address().clone();
            let found = {
                let s = self.sender.lock().await;
                let mut scan = self.scan.lock().await;
                let proxy_sc = self.proxy_sc();
                loop {
                    let txs = s
                        .chain()
                        .transactions_since(&proxy_sc, scan.cursor.as_ref(), PAGE)
                        .await
                        .map_err(unavailable)?;
                    let n = txs.len();
                    for tx in txs {
                        if let Some(c) = save_state(&tx, &ours) {
                            scan.seen.push(c);
                        }
                        scan.cursor = Some(tx.id);
                    }
                    if n < PAGE {
                        break;
                    }
                }
                scan.seen
                    .iter()
                    .filter(|c| c.seqno > after)
                    .copied()
                    .collect()
            };
            Ok(found)
        })
    }

    fn submit_receipt<'a>(
        &'a self,
        contract: &'a StdAddr,
        boc: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), ProxyChainError>> {
        Box::pin(async move {
            let sp = SignedPayment::from_boc(&boc).map_err(unavailable)?;
            let me = self.sender.lock().await.address().clone();
            let body = sp.repack(&me).to_cell().map_err(unavailable)?;
            self.enqueue(OutMsg::new(
                contract.clone(),
                RECEIPT_ATTACH_NANOTON,
                Some(body),
            ))
            .await
        })
    }

    fn withdraw(&self) -> BoxFuture<'_, Result<(), ProxyChainError>> {
        Box::pin(async move {
            let me = self.sender.lock().await.address().clone();
            let body = cocoon_ton::messages::ExtProxyPayoutRequest {
                query_id: crate::now_unix() as u64,
                send_excesses_to: me,
            }
            .to_cell()
            .map_err(unavailable)?;
            self.enqueue(OutMsg::new(
                self.proxy_sc(),
                WITHDRAW_ATTACH_NANOTON,
                Some(body),
            ))
            .await
        })
    }

    fn commission(&self) -> BoxFuture<'_, Result<Option<u128>, ProxyChainError>> {
        Box::pin(async move {
            // The current contract: an old one's commission goes to the owner when it closes.
            let proxy_sc = self.proxy_sc();
            let st = {
                let s = self.sender.lock().await;
                s.chain()
                    .account_state(&proxy_sc)
                    .await
                    .map_err(unavailable)?
            };
            if st.status != AccountStatus::Active {
                return Ok(Some(0));
            }
            let Some(data) = st.data else {
                return Ok(Some(0));
            };
            let s = cocoon_ton::contracts::ProxyStorage::from_cell(&data)
                .map_err(|e| unavailable(format!("proxy contract storage: {e}")))?;
            Ok(Some(u128::from(s.balance.0)))
        })
    }
}

/// Value sent with a commission withdrawal request (the excess returns).
pub(crate) const WITHDRAW_ATTACH_NANOTON: u64 = 50_000_000;

/// The checkpoint a transaction records, if it is a `save_state` from `ours`.
fn save_state(tx: &cocoon_ton::chain::Transaction, ours: &StdAddr) -> Option<ChainCheckpoint> {
    let msg = tx.in_msg.as_ref()?;
    if msg.source.as_ref() != Some(ours) {
        return None;
    }
    let s = SaveState::parse(msg.body.as_ref()?).ok()?;
    Some(ChainCheckpoint {
        seqno: u32::try_from(s.seqno).ok()?,
        hash: s.session_hash.0,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cocoon_ton::HashBytes;
    use cocoon_ton::chain::TxMessage;
    use cocoon_ton::chain::fake::{FakeChain, account, transaction};
    use cocoon_ton::codec::{Coins, State2};
    use cocoon_ton::messages::ClientStateData;
    use cocoon_ton::root::CocoonParams;

    use super::*;

    fn a(n: u8) -> StdAddr {
        StdAddr::new(0, HashBytes([n; 32]))
    }

    /// Pushes the proxy contract's `lt`-th transaction: `body` from `from`.
    fn push_tx(node: &FakeChain, lt: u64, from: StdAddr, body: cocoon_ton::Cell) {
        let m = TxMessage {
            source: Some(from),
            destination: Some(a(0x11)),
            value: 1,
            body: Some(body),
        };
        node.push_tx(transaction(lt, Some(m)));
    }

    fn register_body(nonce: Option<u64>) -> cocoon_ton::Cell {
        ClientProxyRequest {
            query_id: 1,
            owner: a(0x51),
            state: cocoon_ton::codec::InRef(ClientStateData {
                state: State2(0),
                balance: Coins(5),
                stake: Coins(5),
                tokens_used: 0,
                secret_hash: HashBytes::ZERO,
            }),
            payload: nonce.map(|n| ClientProxyRegister { nonce: n }.to_cell().unwrap()),
        }
        .to_cell()
        .unwrap()
    }

    #[tokio::test]
    async fn reads_client_storage() {
        let node = FakeChain::default();
        let params = CocoonParams::default();
        let data = cocoon_ton::contracts::client_init_data(
            &params,
            &a(0x51),
            &a(0x11),
            &HashBytes([7; 32]),
        )
        .unwrap();
        let mut s = ClientStorage::from_cell(&data).unwrap();
        s.balance = Coins(1000);
        s.stake = Coins(400);
        s.tokens_used = 3;
        s.secret_hash = HashBytes([9; 32]);
        node.set_account(
            &a(0x61),
            account(AccountStatus::Active, 1, Some(s.to_cell().unwrap())),
        );
        let c = TonClientChain::new(node.clone(), a(0x11), Duration::from_millis(5))
            .await
            .unwrap();
        let st = c.client_state(&a(0x61)).await.unwrap().unwrap();
        assert_eq!(
            st,
            ClientContractState {
                secret_hash: Some([9; 32]),
                balance: 1000,
                stake: 400,
                tokens_used: 3,
                closing: false,
                closed: false
            }
        );
        assert_eq!(c.client_state(&a(0x62)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn finds_registrations_before_and_after_the_wait() {
        let node = FakeChain::default();
        // History before the proxy started is not scanned.
        push_tx(&node, 1, a(0x61), register_body(Some(1)));
        let c = Arc::new(
            TonClientChain::new(node.clone(), a(0x11), Duration::from_millis(5))
                .await
                .unwrap(),
        );
        // Landed before the client asked.
        push_tx(&node, 2, a(0x61), register_body(Some(2)));
        // Not registrations: no payload, another sender's nonce.
        push_tx(&node, 3, a(0x61), register_body(None));
        push_tx(&node, 4, a(0x62), register_body(Some(3)));
        c.wait_register(&a(0x61), 2).await.unwrap();
        let c2 = c.clone();
        let waiting = tokio::spawn(async move { c2.wait_register(&a(0x61), 3).await });
        let old =
            tokio::time::timeout(Duration::from_millis(50), c.wait_register(&a(0x61), 1)).await;
        assert!(
            old.is_err(),
            "registrations older than the proxy are ignored"
        );
        // A node failure is counted and polling goes on.
        node.fail_reads(true);
        let down =
            tokio::time::timeout(Duration::from_millis(50), c.wait_register(&a(0x61), 9)).await;
        assert!(down.is_err());
        assert!(c.poll_errors() > 0);
        node.fail_reads(false);
        push_tx(&node, 5, a(0x61), register_body(Some(3)));
        waiting.await.unwrap().unwrap();
    }
}
