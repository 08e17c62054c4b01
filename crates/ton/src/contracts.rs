//! Storage layouts of the proxy, client and worker contracts, and their addresses.
//!
//! A child contract's address is the hash of its `StateInit` (code + initial data), and the
//! initial data embeds the root params cell. Every party recomputes these addresses and
//! rejects a counterpart whose address does not match, so the initial data must be
//! bit-identical to what COCOON's runners build (see docs/cocoon-compat.md).

use tycho_types::cell::{Cell, CellBuilder, HashBytes};
use tycho_types::models::StdAddr;

use crate::codec::{Coins, InRef, Layout, LayoutError, Result, State2};
use crate::layout;
use crate::root::{CocoonParams, CodeMask};

layout! {
    /// Proxy contract storage: `owner, public_key:256, root, state:2, balance:Coins,
    /// stake:Coins, unlock_ts:32, ^params`.
    ProxyStorage {
        owner: StdAddr,
        public_key: HashBytes,
        root: StdAddr,
        state: State2,
        /// Commission ready to withdraw.
        balance: Coins,
        stake: Coins,
        unlock_ts: u32,
        params: Cell,
    }
}

layout! {
    /// The constant part of a client contract: `owner, proxy_sc, proxy_public_key:256`.
    ClientConstData {
        owner: StdAddr,
        proxy_sc: StdAddr,
        proxy_public_key: HashBytes,
    }
}

layout! {
    /// Client contract storage: `state:2, balance:Coins, stake:Coins, tokens_used:64,
    /// unlock_ts:32, secret_hash:256, ^const, ^params`.
    ClientStorage {
        state: State2,
        balance: Coins,
        stake: Coins,
        tokens_used: u64,
        unlock_ts: u32,
        secret_hash: HashBytes,
        consts: InRef<ClientConstData>,
        params: Cell,
    }
}

layout! {
    /// Worker contract storage: `owner, proxy_sc, proxy_public_key:256, state:2, tokens:64,
    /// ^params`.
    WorkerStorage {
        owner: StdAddr,
        proxy_sc: StdAddr,
        proxy_public_key: HashBytes,
        state: State2,
        tokens: u64,
        params: Cell,
    }
}

/// The `StateInit` cell: `split_depth:Maybe=0 ‖ special:Maybe=0 ‖ code:Maybe=1 ‖ data:Maybe=1
/// ‖ library:HashmapE=0`, refs `[code, data]`.
pub fn state_init(code: &Cell, data: &Cell) -> Result<Cell> {
    let mut b = CellBuilder::new();
    b.store_small_uint(0b0011, 4)?;
    b.store_reference(code.clone())?;
    b.store_reference(data.clone())?;
    b.store_bit_zero()?;
    Ok(b.build()?)
}

/// The workchain-0 address of a contract with this code and initial data.
pub fn contract_address(code: &Cell, data: &Cell) -> Result<StdAddr> {
    Ok(StdAddr::new(0, *state_init(code, data)?.repr_hash()))
}

fn code<'a>(c: &'a Option<Cell>, which: &'static str) -> Result<&'a Cell> {
    c.as_ref().ok_or(LayoutError::Invalid {
        field: which,
        reason: "the root params carry no code for this contract".into(),
    })
}

/// Initial data of a proxy contract (params with worker and client codes).
pub fn proxy_init_data(
    params: &CocoonParams,
    owner: &StdAddr,
    public_key: &HashBytes,
    root: &StdAddr,
) -> Result<Cell> {
    ProxyStorage {
        owner: owner.clone(),
        public_key: *public_key,
        root: root.clone(),
        state: State2(0),
        balance: Coins(0),
        stake: Coins(0),
        unlock_ts: 0,
        params: params.to_cell(CodeMask::PROXY)?,
    }
    .to_cell()
}

/// Initial data of a client contract: stake starts at `min_client_stake`.
pub fn client_init_data(
    params: &CocoonParams,
    owner: &StdAddr,
    proxy_sc: &StdAddr,
    proxy_public_key: &HashBytes,
) -> Result<Cell> {
    ClientStorage {
        state: State2(0),
        balance: Coins(0),
        stake: Coins(params.min_client_stake),
        tokens_used: 0,
        unlock_ts: 0,
        secret_hash: HashBytes::ZERO,
        consts: InRef(ClientConstData {
            owner: owner.clone(),
            proxy_sc: proxy_sc.clone(),
            proxy_public_key: *proxy_public_key,
        }),
        params: params.to_cell(CodeMask::NONE)?,
    }
    .to_cell()
}

/// Initial data of a worker contract.
pub fn worker_init_data(
    params: &CocoonParams,
    owner: &StdAddr,
    proxy_sc: &StdAddr,
    proxy_public_key: &HashBytes,
) -> Result<Cell> {
    WorkerStorage {
        owner: owner.clone(),
        proxy_sc: proxy_sc.clone(),
        proxy_public_key: *proxy_public_key,
        state: State2(0),
        tokens: 0,
        params: params.to_cell(CodeMask::NONE)?,
    }
    .to_cell()
}

/// A contract ready to deploy: code, initial data and the address they give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployable {
    /// Code cell.
    pub code: Cell,
    /// Initial data cell.
    pub data: Cell,
    /// Derived address.
    pub address: StdAddr,
}

impl Deployable {
    /// Computes the address of `code` + `data`.
    pub fn new(code: Cell, data: Cell) -> Result<Self> {
        let address = contract_address(&code, &data)?;
        Ok(Self {
            code,
            data,
            address,
        })
    }

    /// A child contract: its code `which` from the root params (an error if they carry none),
    /// then the initial data `data` builds.
    fn from_params(
        code_in_params: &Option<Cell>,
        which: &'static str,
        data: impl FnOnce() -> Result<Cell>,
    ) -> Result<Self> {
        let code = code(code_in_params, which)?.clone();
        Self::new(code, data()?)
    }

    /// The `StateInit` cell to attach to the deploying message.
    pub fn state_init(&self) -> Result<Cell> {
        state_init(&self.code, &self.data)
    }
}

/// The proxy contract for `(owner, public_key)` under these params, using the root's
/// proxy code.
pub fn proxy_contract(
    params: &CocoonParams,
    owner: &StdAddr,
    public_key: &HashBytes,
    root: &StdAddr,
) -> Result<Deployable> {
    Deployable::from_params(&params.proxy_code, "proxy_code", || {
        proxy_init_data(params, owner, public_key, root)
    })
}

/// The client contract of `owner` with this proxy.
pub fn client_contract(
    params: &CocoonParams,
    owner: &StdAddr,
    proxy_sc: &StdAddr,
    proxy_public_key: &HashBytes,
) -> Result<Deployable> {
    Deployable::from_params(&params.client_code, "client_code", || {
        client_init_data(params, owner, proxy_sc, proxy_public_key)
    })
}

/// The worker contract of `owner` with this proxy.
pub fn worker_contract(
    params: &CocoonParams,
    owner: &StdAddr,
    proxy_sc: &StdAddr,
    proxy_public_key: &HashBytes,
) -> Result<Deployable> {
    Deployable::from_params(&params.worker_code, "worker_code", || {
        worker_init_data(params, owner, proxy_sc, proxy_public_key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root::tests::sample_config;

    fn a(n: u8) -> StdAddr {
        StdAddr::new(0, HashBytes([n; 32]))
    }

    #[test]
    fn state_init_layout() {
        let code = crate::codec::empty_cell();
        let si = state_init(&code, &code).unwrap();
        assert_eq!(si.bit_len(), 5);
        assert_eq!(si.reference_count(), 2);
        // bits 00110 -> byte 0x30 with completion tag
        let mut s = si.as_slice().unwrap();
        assert_eq!(s.load_small_uint(5).unwrap(), 0b00110);
    }

    #[test]
    fn storages_round_trip_and_layouts_have_expected_sizes() {
        let p = sample_config().params;
        let proxy = proxy_init_data(&p, &a(1), &HashBytes([2; 32]), &a(3)).unwrap();
        let ps = ProxyStorage::from_cell(&proxy).unwrap();
        assert_eq!(ps.owner, a(1));
        assert_eq!(proxy.bit_len(), 267 + 256 + 267 + 2 + 4 + 4 + 32);
        let pp = CocoonParams::from_cell(&ps.params).unwrap();
        assert!(pp.proxy_code.is_none() && pp.worker_code.is_some() && pp.client_code.is_some());

        let client = client_init_data(&p, &a(4), &a(5), &HashBytes([6; 32])).unwrap();
        let cs = ClientStorage::from_cell(&client).unwrap();
        assert_eq!(cs.stake, Coins(p.min_client_stake));
        assert_eq!(cs.consts.0.proxy_sc, a(5));
        assert_eq!(client.bit_len(), 2 + 4 + (4 + 32) + 64 + 32 + 256);
        assert_eq!(client.reference_count(), 2);

        let worker = worker_init_data(&p, &a(7), &a(8), &HashBytes([9; 32])).unwrap();
        let ws = WorkerStorage::from_cell(&worker).unwrap();
        assert_eq!(ws.proxy_public_key, HashBytes([9; 32]));
        assert_eq!(worker.bit_len(), 267 + 267 + 256 + 2 + 64);
    }

    #[test]
    fn addresses_depend_on_every_input() {
        let p = sample_config().params;
        let k = HashBytes([2; 32]);
        let base = client_contract(&p, &a(1), &a(2), &k).unwrap().address;
        assert_ne!(base, client_contract(&p, &a(9), &a(2), &k).unwrap().address);
        assert_ne!(base, client_contract(&p, &a(1), &a(9), &k).unwrap().address);
        assert_ne!(
            base,
            client_contract(&p, &a(1), &a(2), &HashBytes([3; 32]))
                .unwrap()
                .address
        );
        let mut p2 = p.clone();
        p2.params_version += 1;
        assert_ne!(
            base,
            client_contract(&p2, &a(1), &a(2), &k).unwrap().address
        );
        // the worker/client address does not depend on the child codes carried by the root
        // params (mask 0), only on its own code
        let mut p3 = p.clone();
        p3.worker_code = Some(crate::codec::empty_cell());
        assert_eq!(
            base,
            client_contract(&p3, &a(1), &a(2), &k).unwrap().address
        );
        let w = worker_contract(&p, &a(1), &a(2), &k).unwrap();
        assert_ne!(w.address, base);
        assert_eq!(w.address, contract_address(&w.code, &w.data).unwrap());
        assert_eq!(*w.state_init().unwrap().repr_hash(), w.address.address);
    }

    #[test]
    fn missing_code_is_a_typed_error() {
        let p = CocoonParams::default();
        assert!(matches!(
            proxy_contract(&p, &a(1), &HashBytes::ZERO, &a(2)),
            Err(LayoutError::Invalid {
                field: "proxy_code",
                ..
            })
        ));
    }
}
