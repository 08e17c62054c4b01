//! The devnet for tests: a chain at [`T0`] with the root deployed, served on loopback, wallet
//! owners ([`Party`]) sending through the real toncenter client, and a proxy contract staked
//! by its owner ([`Chainnet`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cocoon_devnet::TxRecord;
use cocoon_devnet::api;
use cocoon_devnet::root::RootDeployment;
use cocoon_devnet::run::{RunOptions, Started, start};
use cocoon_proxy::{LedgerMeter, ProxyConfig, TonCheckpointChain, TonClientChain};
use cocoon_ton::chain::{Chain, TxId};
use cocoon_ton::codec::{Coins, Layout, encode_boc};
use cocoon_ton::contracts::{Deployable, client_contract, proxy_contract};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::messages::{ExtClientTopUp, ExtProxyIncreaseStake, OwnerClientChangeSecretHash};
use cocoon_ton::root::{CocoonParams, RootConfig};
use cocoon_ton::wallet::{OutMsg, Wallet, WalletSender};
use cocoon_ton::{Cell, HashBytes, StdAddr};
use cocoon_ton::{Toncenter, chain::Devnet as _};

use crate::fixtures::MODEL;
use crate::proxy::ledger_meter;

/// Every transaction of `a` after `after` (all with `None`), oldest first, decoded.
pub async fn txs_after(tc: &Toncenter, a: &StdAddr, after: Option<&TxId>) -> Vec<TxRecord> {
    tc.transactions_since(a, after, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|t| TxRecord::from_cell(a.workchain, t.raw.expect("data BOC")).unwrap())
        .collect()
}

/// The devnet clock at start.
pub const T0: u32 = 1_750_000_000;
/// One TON in nanoTON.
pub const TON: u128 = 1_000_000_000;
/// The signing key seed of the devnet's proxy.
pub const PROXY_KEY_SEED: [u8; 32] = [0x50; 32];
/// The `payout` op of the contracts' payouts to owners.
pub const PAYOUT_OP: u32 = 0xc59a7cd3;

/// Starts a devnet chain at [`T0`] with the root deployed, its state in a temporary
/// directory (kept with the result).
pub async fn start_chain() -> (Started, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        dir: Some(dir.path().to_path_buf()),
        now: Some(T0),
        deploy_root: true,
    };
    let started = tokio::task::spawn_blocking(move || start(&opts))
        .await
        .unwrap()
        .unwrap();
    (started, dir)
}

/// A devnet served over HTTP on loopback.
pub struct Devnet {
    /// The toncenter client for it.
    pub tc: Toncenter,
    /// Where its API listens.
    pub addr: SocketAddr,
    /// The root it deployed.
    pub root: RootDeployment,
    /// Its state directory.
    pub dir: tempfile::TempDir,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Starts a devnet ([`start_chain`]) and serves it on loopback.
pub async fn devnet() -> Devnet {
    let (started, dir) = start_chain().await;
    let root = started.root.clone().unwrap();
    let (addr, server) = api::spawn("127.0.0.1:0".parse().unwrap(), started.state)
        .await
        .unwrap();
    let tc = Toncenter::with_url(&format!("http://{addr}")).unwrap();
    Devnet {
        tc,
        addr,
        root,
        dir,
        server,
    }
}

/// A wallet (v4r2) owner sending through toncenter.
pub struct Party {
    pub key: SigningKey,
    pub wallet: Wallet,
    pub address: StdAddr,
    pub seqno: u32,
}

impl Party {
    /// The owner of the key `[seed; 32]`.
    pub fn new(seed: u8) -> Self {
        let key = SigningKey::from_seed(&[seed; 32]).unwrap();
        let wallet = Wallet::v4r2(key.public_key(), 0);
        let address = wallet.address().unwrap();
        Party {
            key,
            wallet,
            address,
            seqno: 0,
        }
    }

    /// Sends one internal message (with `init`, a deployment) from this wallet through
    /// `sendBoc`; the first one deploys the wallet too.
    pub async fn send(
        &mut self,
        tc: &Toncenter,
        to: &StdAddr,
        value: u128,
        body: Cell,
        init: Option<Cell>,
    ) {
        let now = tc.clock().await.unwrap() as u32;
        let mut msg = OutMsg::new(to.clone(), value as u64, Some(body));
        msg.state_init = init;
        let ext = self
            .wallet
            .external_transfer(&self.key, self.seqno, now + 600, &[msg], self.seqno == 0)
            .unwrap();
        tc.send_boc(&encode_boc(&ext)).await.unwrap();
        self.seqno += 1;
    }
}

/// A client top-up of `amount` nanoTON, excesses back to `owner`.
pub fn top_up(owner: &StdAddr, amount: u128) -> Cell {
    ExtClientTopUp {
        query_id: 2,
        amount: Coins(amount as u64),
        send_excesses_to: owner.clone(),
    }
    .to_cell()
    .unwrap()
}

/// The public key of the devnet's proxy.
pub fn proxy_pk() -> HashBytes {
    HashBytes(SigningKey::from_seed(&PROXY_KEY_SEED).unwrap().public_key())
}

/// Party 1 (100 TON from the faucet) deploys the proxy contract of key [`PROXY_KEY_SEED`]
/// under `root` with a stake of 10 TON.
pub async fn stake_proxy(
    tc: &Toncenter,
    params: &CocoonParams,
    root: &StdAddr,
) -> (Party, Deployable) {
    let mut owner = Party::new(1);
    let proxy = proxy_contract(params, &owner.address, &proxy_pk(), root).unwrap();
    tc.faucet(&owner.address, 100 * TON).await.unwrap();
    let body = ExtProxyIncreaseStake {
        query_id: 1,
        amount: Coins(10 * TON as u64),
        send_excesses_to: owner.address.clone(),
    }
    .to_cell()
    .unwrap();
    let init = proxy.state_init().unwrap();
    owner
        .send(tc, &proxy.address, 10 * TON + TON / 10, body, Some(init))
        .await;
    (owner, proxy)
}

/// Party `seed` (100 TON from the faucet) deploys its client contract with `proxy` by a top-up
/// of 5 TON.
pub async fn deploy_client(
    tc: &Toncenter,
    params: &CocoonParams,
    proxy: &StdAddr,
    seed: u8,
) -> (Party, StdAddr) {
    let mut owner = Party::new(seed);
    tc.faucet(&owner.address, 100 * TON).await.unwrap();
    let client = client_contract(params, &owner.address, proxy, &proxy_pk()).unwrap();
    let body = top_up(&owner.address, 5 * TON);
    let init = client.state_init().unwrap();
    owner
        .send(tc, &client.address, 5 * TON + TON / 10, body, Some(init))
        .await;
    (owner, client.address)
}

/// A served devnet with the root deployed and a staked proxy contract.
pub struct Chainnet {
    pub tc: Toncenter,
    pub params: CocoonParams,
    pub root: StdAddr,
    pub proxy_owner: Party,
    pub proxy: Deployable,
    pub devnet: Devnet,
}

/// A devnet ([`devnet`]) with the proxy contract staked ([`stake_proxy`]).
pub async fn chainnet() -> Chainnet {
    let devnet = devnet().await;
    let tc = devnet.tc.clone();
    let root = devnet.root.address.clone();
    let params = cocoon_devnet::root::test_params().unwrap();
    let (proxy_owner, proxy) = stake_proxy(&tc, &params, &root).await;
    Chainnet {
        tc,
        params,
        root,
        proxy_owner,
        proxy,
        devnet,
    }
}

impl Chainnet {
    /// The proxy's reads of client contracts on this chain, polling every 50 ms.
    pub async fn client_chain(&self) -> TonClientChain<Toncenter> {
        TonClientChain::new(
            self.tc.clone(),
            self.proxy.address.clone(),
            Duration::from_millis(50),
        )
        .await
        .unwrap()
    }

    /// The proxy's checkpoints on this chain, sent from its owner's wallet (deployed by the
    /// stake).
    pub fn checkpoint_chain(&self) -> TonCheckpointChain<Toncenter> {
        let key = SigningKey::from_seed(&[1; 32]).unwrap();
        let wallet = Wallet::v4r2(key.public_key(), 0);
        let sender = WalletSender::new(self.tc.clone(), wallet, key).unwrap();
        TonCheckpointChain::new(sender, self.proxy.address.clone())
    }

    /// The root configuration as deployed.
    pub async fn root_config(&self) -> RootConfig {
        cocoon_ton::chain::load_root_config(&self.tc, &self.root)
            .await
            .unwrap()
    }

    /// [`Chainnet::root_config`] admitting the sim worker image and the test model (the
    /// devnet root lists none), for a proxy that serves requests.
    pub async fn serving_root(&self) -> RootConfig {
        let mut root = self.root_config().await;
        root.worker_hashes = vec![HashBytes(cocoon_attest::sim::sim_image_hash())];
        root.model_hashes = vec![cocoon_ton::root::model_hash(MODEL)];
        root
    }

    /// The proxy's side of this chain under `root`: its reads of client contracts, its
    /// checkpoints, its key and a ledger on them ([`ledger_meter`]). Made after the clients
    /// it should see are deployed, as [`Chainnet::client_chain`] is.
    pub async fn chain_proxy(&self, root: &RootConfig) -> ChainProxy {
        let clients = Arc::new(self.client_chain().await);
        let checkpoints = Arc::new(self.checkpoint_chain());
        let key = Arc::new(self.proxy_key());
        let owner = self.proxy_owner.address.clone();
        let (dir, meter) = ledger_meter(key.clone(), owner.clone(), root, &*checkpoints).await;
        ChainProxy {
            clients,
            checkpoints,
            key,
            owner,
            proxy_sc: self.proxy.address.clone(),
            meter,
            _dir: dir,
        }
    }

    /// The proxy's signing key.
    pub fn proxy_key(&self) -> SigningKey {
        SigningKey::from_seed(&PROXY_KEY_SEED).unwrap()
    }

    /// A client owner whose top-up deploys its client contract (and sets `secret_hash`).
    pub async fn client(&self, seed: u8, secret_hash: Option<[u8; 32]>) -> (Party, StdAddr) {
        let (mut owner, client) =
            deploy_client(&self.tc, &self.params, &self.proxy.address, seed).await;
        if let Some(h) = secret_hash {
            let body = OwnerClientChangeSecretHash {
                query_id: 3,
                secret_hash: HashBytes(h),
                send_excesses_to: owner.address.clone(),
            }
            .to_cell()
            .unwrap();
            owner.send(&self.tc, &client, TON / 2, body, None).await;
        }
        (owner, client)
    }
}

/// A proxy's side of a [`Chainnet`] ([`Chainnet::chain_proxy`]).
pub struct ChainProxy {
    /// Its reads of client contracts.
    pub clients: Arc<TonClientChain<Toncenter>>,
    /// Its checkpoints, sent from its owner's wallet.
    pub checkpoints: Arc<TonCheckpointChain<Toncenter>>,
    /// Its signing key.
    pub key: Arc<SigningKey>,
    /// Its owner's address.
    pub owner: StdAddr,
    /// Its contract.
    pub proxy_sc: StdAddr,
    /// Its ledger, on [`ChainProxy::checkpoints`].
    pub meter: Arc<LedgerMeter>,
    _dir: tempfile::TempDir,
}

impl ChainProxy {
    /// Points a proxy's configuration at this side: chain, ledger, key, contract, owner.
    pub fn configure(&self, c: &mut ProxyConfig) {
        c.chain = self.clients.clone();
        c.meter = self.meter.clone();
        c.signing_key = self.key.clone();
        c.proxy_sc = self.proxy_sc.clone();
        c.owner_address = self.owner.clone();
    }

    /// Ticks the owner's wallet (what gets queued checkpoints and charges out) every 50 ms
    /// until aborted.
    pub fn spawn_ticker(&self) -> tokio::task::JoinHandle<()> {
        let checkpoints = self.checkpoints.clone();
        tokio::spawn(async move {
            loop {
                let _ = checkpoints.tick().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}
