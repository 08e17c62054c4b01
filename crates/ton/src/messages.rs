//! Typed message bodies of the contracts.
//!
//! Layouts follow what COCOON's runners build and parse; a body only the contracts build
//! (root owner ops, payloads the contracts send to the proxy) follows the public contract
//! copy. Where the two disagree, docs/cocoon-compat.md says which one we follow and why.
//!
//! Every struct implements [`Layout`]: `to_cell` writes `op:32` followed by the fields,
//! `from_cell` checks the opcode and refuses trailing data.

use tycho_types::cell::{Cell, CellBuilder, CellSlice, HashBytes};
use tycho_types::models::StdAddr;

use crate::codec::{Coins, Field, InRef, Layout, LayoutError, Result, State2};
use crate::layout;
use crate::opcodes as op;

layout! {
    /// Excess coins returned to an owner (`excesses`).
    Excesses = op::EXCESSES { query_id: u64 }
}

layout! {
    /// Payout notification (`payout`).
    PayoutNotice = op::PAYOUT { query_id: u64 }
}

layout! {
    /// The proxy's on-chain checkpoint: `do_not_process ‖ qid ‖ proxy_save_state ‖ seqno:int32 ‖
    /// session_hash:256` (`ProxyContract::create_save_state_message`). The contract ignores it;
    /// the transaction is the record the proxy looks for.
    SaveState = op::DO_NOT_PROCESS {
        query_id: u64,
        /// Must be [`op::PROXY_SAVE_STATE`]; checked by [`SaveState::validate`].
        inner_op: u32,
        seqno: i32,
        session_hash: HashBytes,
    }
}

impl SaveState {
    /// A checkpoint body for `seqno` and this session's unique hash.
    pub fn new(query_id: u64, seqno: i32, session_hash: HashBytes) -> Self {
        Self {
            query_id,
            inner_op: op::PROXY_SAVE_STATE,
            seqno,
            session_hash,
        }
    }

    /// Parses and checks the inner opcode.
    pub fn parse(c: &Cell) -> Result<Self> {
        let v = Self::from_cell(c)?;
        if v.inner_op != op::PROXY_SAVE_STATE {
            return Err(LayoutError::Opcode {
                expected: op::PROXY_SAVE_STATE,
                found: v.inner_op,
            });
        }
        Ok(v)
    }
}

// ---------------------------------------------------------------- root owner operations

layout! {
    /// Root owner: whitelist a worker image hash.
    AddWorkerType = op::ROOT_ADD_WORKER_TYPE { query_id: u64, hash: HashBytes }
}
layout! {
    /// Root owner: remove a worker image hash.
    DelWorkerType = op::ROOT_DEL_WORKER_TYPE { query_id: u64, hash: HashBytes }
}
layout! {
    /// Root owner: whitelist a model hash (SHA-256 of `Name@rev:hash`).
    AddModelType = op::ROOT_ADD_MODEL_TYPE { query_id: u64, hash: HashBytes }
}
layout! {
    /// Root owner: remove a model hash.
    DelModelType = op::ROOT_DEL_MODEL_TYPE { query_id: u64, hash: HashBytes }
}
layout! {
    /// Root owner: whitelist a proxy image hash.
    AddProxyType = op::ROOT_ADD_PROXY_TYPE { query_id: u64, hash: HashBytes }
}
layout! {
    /// Root owner: remove a proxy image hash.
    DelProxyType = op::ROOT_DEL_PROXY_TYPE { query_id: u64, hash: HashBytes }
}
layout! {
    /// Root owner: register a proxy endpoint; the root assigns the next seqno.
    RegisterProxy = op::ROOT_REGISTER_PROXY { query_id: u64, endpoint: ProxyEndpoint }
}
layout! {
    /// Root owner: unregister the proxy with this seqno.
    UnregisterProxy = op::ROOT_UNREGISTER_PROXY { query_id: u64, seqno: u32 }
}
layout! {
    /// Root owner: replace the endpoint of a registered proxy.
    UpdateProxy = op::ROOT_UPDATE_PROXY { query_id: u64, seqno: u32, endpoint: ProxyEndpoint }
}
layout! {
    /// Root owner: change prices (bumps `params_version`: every child address changes).
    ChangePrice = op::ROOT_CHANGE_PRICE {
        query_id: u64,
        price_per_token: Coins,
        worker_fee_per_token: Coins,
    }
}
layout! {
    /// Root owner: change prices, close delays and minimum stakes (public contract copy).
    ChangeParams = op::ROOT_CHANGE_PARAMS {
        query_id: u64,
        price_per_token: Coins,
        worker_fee_per_token: Coins,
        proxy_delay_before_close: u32,
        client_delay_before_close: u32,
        min_proxy_stake: Coins,
        min_client_stake: Coins,
    }
}
layout! {
    /// Root owner: change the four price multipliers, ten-thousandths (Cocoon extension;
    /// bumps `params_version`).
    ChangeMultipliers = op::ROOT_CHANGE_MULTIPLIERS {
        query_id: u64,
        prompt: u32,
        cached: u32,
        completion: u32,
        reasoning: u32,
    }
}
layout! {
    /// Root owner: replace the child contract codes.
    UpgradeContracts = op::ROOT_UPGRADE_CONTRACTS {
        query_id: u64,
        proxy_code: Cell,
        worker_code: Cell,
        client_code: Cell,
    }
}
layout! {
    /// Root owner: replace the root code.
    UpgradeRoot = op::ROOT_UPGRADE { query_id: u64, new_code: Cell }
}
layout! {
    /// Root owner: clear whitelists and registered proxies.
    ResetRoot = op::ROOT_RESET { query_id: u64 }
}
layout! {
    /// Root owner: replace root data and code.
    UpgradeFull = op::ROOT_UPGRADE_FULL { query_id: u64, new_data: Cell, new_code: Cell }
}
layout! {
    /// Root owner: transfer ownership (public contract copy).
    ChangeOwner = op::ROOT_CHANGE_OWNER { query_id: u64, new_owner: StdAddr }
}

/// A registered proxy's endpoint text as the root stores it: `type:1 (0 = text) ‖ len:7 ‖
/// bytes`, where the text is `"ip:port"` or `"ip_for_workers:port ip_for_clients:port"`.
/// Only type 0 exists; the runners skip entries of any other type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyEndpoint(pub String);

impl Field for ProxyEndpoint {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        let bytes = self.0.as_bytes();
        if bytes.len() > 127 {
            return Err(LayoutError::Invalid {
                field: "proxy endpoint",
                reason: format!("{} bytes, at most 127", bytes.len()),
            });
        }
        b.store_bit_zero()?;
        b.store_small_uint(bytes.len() as u8, 7)?;
        b.store_raw(bytes, bytes.len() as u16 * 8)?;
        Ok(())
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        if s.load_bit()? {
            return Err(LayoutError::Invalid {
                field: "proxy endpoint",
                reason: "type 1 (only type 0, text, is defined)".into(),
            });
        }
        let len = s.load_small_uint(7)? as usize;
        let mut buf = vec![0u8; len];
        s.load_raw(&mut buf, len as u16 * 8)?;
        String::from_utf8(buf)
            .map(ProxyEndpoint)
            .map_err(|_| LayoutError::Invalid {
                field: "proxy endpoint",
                reason: "not UTF-8".into(),
            })
    }
}

impl ProxyEndpoint {
    /// The two socket addresses `(for_workers, for_clients)`, parsed as the runners do (IPv4
    /// only; a single address serves both).
    pub fn socket_addrs(&self) -> Option<(std::net::SocketAddrV4, std::net::SocketAddrV4)> {
        let parse = |s: &str| -> Option<std::net::SocketAddrV4> {
            let s = s
                .strip_prefix('[')
                .and_then(|x| x.strip_suffix(']'))
                .unwrap_or(s);
            s.parse().ok()
        };
        match self.0.split_once(' ') {
            None => {
                let a = parse(&self.0)?;
                Some((a, a))
            }
            Some((w, c)) => Some((parse(w)?, parse(c)?)),
        }
    }
}

// ---------------------------------------------------------------- child -> proxy notifications

layout! {
    /// Worker contract -> proxy contract: `owner, state:2, tokens:64, Maybe ^payload`.
    WorkerProxyRequest = op::WORKER_PROXY_REQUEST {
        query_id: u64,
        owner: StdAddr,
        state: State2,
        tokens: u64,
        payload: Option<Cell>,
    }
}

layout! {
    /// Payload of [`WorkerProxyRequest`] for a payout, as the contract copy sends it.
    ///
    /// The contracts produce this body, so theirs is the layout (see docs/cocoon-compat.md).
    WorkerProxyPayoutRequest = op::WORKER_PROXY_PAYOUT_REQUEST {
        worker_part: Coins,
        proxy_part: Coins,
        send_excesses_to: StdAddr,
    }
}

layout! {
    /// Client state carried by [`ClientProxyRequest`] (`^{state:2, balance, stake,
    /// tokens_used:64, secret_hash:256}`).
    ClientStateData {
        state: State2,
        balance: Coins,
        stake: Coins,
        tokens_used: u64,
        secret_hash: HashBytes,
    }
}

layout! {
    /// Client contract -> proxy contract: `owner, ^state, Maybe ^payload`.
    ClientProxyRequest = op::CLIENT_PROXY_REQUEST {
        query_id: u64,
        owner: StdAddr,
        state: InRef<ClientStateData>,
        payload: Option<Cell>,
    }
}

layout! {
    /// Payload: top-up forwarded to the proxy.
    ClientProxyTopUp = op::CLIENT_PROXY_TOP_UP { amount: Coins, send_excesses_to: StdAddr }
}

layout! {
    /// Payload: registration. The runner reads `nonce:64` right after the opcode
    /// (`ProxyContract.cpp`); the public contract copy declares it empty — the runner wins.
    ClientProxyRegister = op::CLIENT_PROXY_REGISTER { nonce: u64 }
}

layout! {
    /// Payload: refund granted by the proxy's signed final charge.
    ClientProxyRefundGranted = op::CLIENT_PROXY_REFUND_GRANTED {
        amount: Coins,
        send_excesses_to: StdAddr,
    }
}

layout! {
    /// Payload: forced refund after `client_delay_before_close` (paid from the proxy stake).
    ClientProxyRefundForce = op::CLIENT_PROXY_REFUND_FORCE {
        amount: Coins,
        send_excesses_to: StdAddr,
    }
}

// ---------------------------------------------------------------- proxy contract

layout! {
    /// Anyone: increase the proxy stake.
    ExtProxyIncreaseStake = op::EXT_PROXY_INCREASE_STAKE {
        query_id: u64,
        amount: Coins,
        send_excesses_to: StdAddr,
    }
}

layout! {
    /// Withdraw the proxy's commission to its owner (`ProxyContract::create_withdraw_message`).
    ExtProxyPayoutRequest = op::EXT_PROXY_PAYOUT_REQUEST {
        query_id: u64,
        send_excesses_to: StdAddr,
    }
}

layout! {
    /// Owner starts closing the proxy contract.
    ///
    /// The contracts read `op ‖ qid ‖ address`, so that is what we build (see
    /// docs/cocoon-compat.md).
    OwnerProxyClose = op::OWNER_PROXY_CLOSE { query_id: u64, send_excesses_to: StdAddr }
}

// ---------------------------------------------------------------- worker contract

layout! {
    /// Owner asks the worker contract to notify the proxy of its state.
    OwnerWorkerRegister = op::OWNER_WORKER_REGISTER { query_id: u64, send_excesses_to: StdAddr }
}

// ---------------------------------------------------------------- client contract

layout! {
    /// Anyone tops up a client contract (`ClientContract::create_topup_message`).
    ExtClientTopUp = op::EXT_CLIENT_TOP_UP {
        query_id: u64,
        amount: Coins,
        send_excesses_to: StdAddr,
    }
}
layout! {
    /// Owner tops up and reopens a closing client contract.
    OwnerClientTopUpReopen = op::OWNER_CLIENT_TOP_UP_REOPEN {
        query_id: u64,
        amount: Coins,
        send_excesses_to: StdAddr,
    }
}
layout! {
    /// Owner registers with the proxy (nonce from the proxy's `authLong`).
    OwnerClientRegister = op::OWNER_CLIENT_REGISTER {
        query_id: u64,
        nonce: u64,
        send_excesses_to: StdAddr,
    }
}
layout! {
    /// Owner changes the secret hash used for short authentication.
    OwnerClientChangeSecretHash = op::OWNER_CLIENT_CHANGE_SECRET_HASH {
        query_id: u64,
        secret_hash: HashBytes,
        send_excesses_to: StdAddr,
    }
}
layout! {
    /// Owner changes the secret hash and tops up.
    OwnerClientChangeSecretHashAndTopUp = op::OWNER_CLIENT_CHANGE_SECRET_HASH_AND_TOP_UP {
        query_id: u64,
        amount: Coins,
        secret_hash: HashBytes,
        send_excesses_to: StdAddr,
    }
}
layout! {
    /// Owner requests a refund (first call: closing; second call after the delay: closed).
    OwnerClientRequestRefund = op::OWNER_CLIENT_REQUEST_REFUND {
        query_id: u64,
        send_excesses_to: StdAddr,
    }
}
layout! {
    /// Owner increases the stake.
    ///
    /// The stake value is written, as the contracts read it (see docs/cocoon-compat.md).
    OwnerClientIncreaseStake = op::OWNER_CLIENT_INCREASE_STAKE {
        query_id: u64,
        new_stake: Coins,
        send_excesses_to: StdAddr,
    }
}
layout! {
    /// Owner withdraws `balance - stake`.
    OwnerClientWithdraw = op::OWNER_CLIENT_WITHDRAW { query_id: u64, send_excesses_to: StdAddr }
}

/// Reads a body's opcode and query id, as the runners' `on_transaction` handlers do (`None`
/// if the body is shorter than 96 bits).
pub fn op_and_query_id(body: &Cell) -> Option<(u32, u64)> {
    let mut s = body.as_slice().ok()?;
    let op = s.load_u32().ok()?;
    let qid = s.load_u64().ok()?;
    Some((op, qid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(n: u8) -> StdAddr {
        StdAddr::new(0, HashBytes([n; 32]))
    }

    fn rt<T: Layout + PartialEq + std::fmt::Debug>(v: T) {
        let c = v.to_cell().unwrap();
        let back = T::from_cell(&c).unwrap();
        assert_eq!(back, v);
        let boc = v.to_boc().unwrap();
        assert_eq!(T::from_boc(&boc).unwrap(), v);
        if let Some(op) = T::opcode() {
            assert_eq!(crate::codec::peek_opcode(&c), Some(op));
        }
    }

    #[test]
    fn every_body_round_trips() {
        let code = crate::codec::empty_cell();
        let h = HashBytes([9; 32]);
        rt(Excesses { query_id: 1 });
        rt(PayoutNotice { query_id: 2 });
        rt(SaveState::new(3, -5, h));
        rt(AddWorkerType {
            query_id: 4,
            hash: h,
        });
        rt(DelWorkerType {
            query_id: 4,
            hash: h,
        });
        rt(AddModelType {
            query_id: 4,
            hash: h,
        });
        rt(DelModelType {
            query_id: 4,
            hash: h,
        });
        rt(AddProxyType {
            query_id: 4,
            hash: h,
        });
        rt(DelProxyType {
            query_id: 4,
            hash: h,
        });
        rt(RegisterProxy {
            query_id: 5,
            endpoint: ProxyEndpoint("1.2.3.4:5000 1.2.3.4:5001".into()),
        });
        rt(UnregisterProxy {
            query_id: 6,
            seqno: 7,
        });
        rt(UpdateProxy {
            query_id: 6,
            seqno: 7,
            endpoint: ProxyEndpoint("10.0.0.1:1".into()),
        });
        rt(ChangePrice {
            query_id: 8,
            price_per_token: Coins(20),
            worker_fee_per_token: Coins(15),
        });
        rt(ChangeParams {
            query_id: 8,
            price_per_token: Coins(20),
            worker_fee_per_token: Coins(15),
            proxy_delay_before_close: 600,
            client_delay_before_close: 300,
            min_proxy_stake: Coins(1_000_000_000),
            min_client_stake: Coins(1_000_000_000),
        });
        rt(ChangeMultipliers {
            query_id: 8,
            prompt: 10000,
            cached: 1000,
            completion: 80000,
            reasoning: 80000,
        });
        rt(UpgradeContracts {
            query_id: 9,
            proxy_code: code.clone(),
            worker_code: code.clone(),
            client_code: code.clone(),
        });
        rt(UpgradeRoot {
            query_id: 9,
            new_code: code.clone(),
        });
        rt(ResetRoot { query_id: 9 });
        rt(UpgradeFull {
            query_id: 9,
            new_data: code.clone(),
            new_code: code.clone(),
        });
        rt(ChangeOwner {
            query_id: 9,
            new_owner: addr(1),
        });
        rt(WorkerProxyRequest {
            query_id: 10,
            owner: addr(2),
            state: State2(2),
            tokens: 99,
            payload: Some(
                WorkerProxyPayoutRequest {
                    worker_part: Coins(5),
                    proxy_part: Coins(6),
                    send_excesses_to: addr(3),
                }
                .to_cell()
                .unwrap(),
            ),
        });
        rt(WorkerProxyPayoutRequest {
            worker_part: Coins(5),
            proxy_part: Coins(0),
            send_excesses_to: addr(3),
        });
        rt(ClientProxyRequest {
            query_id: 11,
            owner: addr(4),
            state: InRef(ClientStateData {
                state: State2(1),
                balance: Coins(7),
                stake: Coins(8),
                tokens_used: 9,
                secret_hash: h,
            }),
            payload: Some(ClientProxyRegister { nonce: 77 }.to_cell().unwrap()),
        });
        rt(ClientProxyTopUp {
            amount: Coins(1),
            send_excesses_to: addr(5),
        });
        rt(ClientProxyRegister { nonce: 12 });
        rt(ClientProxyRefundGranted {
            amount: Coins(1),
            send_excesses_to: addr(5),
        });
        rt(ClientProxyRefundForce {
            amount: Coins(1),
            send_excesses_to: addr(5),
        });
        rt(ExtProxyIncreaseStake {
            query_id: 13,
            amount: Coins(3),
            send_excesses_to: addr(6),
        });
        rt(ExtProxyPayoutRequest {
            query_id: 14,
            send_excesses_to: addr(6),
        });
        rt(OwnerProxyClose {
            query_id: 16,
            send_excesses_to: addr(6),
        });
        rt(OwnerWorkerRegister {
            query_id: 15,
            send_excesses_to: addr(7),
        });
        rt(ExtClientTopUp {
            query_id: 16,
            amount: Coins(10),
            send_excesses_to: addr(8),
        });
        rt(OwnerClientTopUpReopen {
            query_id: 16,
            amount: Coins(10),
            send_excesses_to: addr(8),
        });
        rt(OwnerClientRegister {
            query_id: 17,
            nonce: 18,
            send_excesses_to: addr(8),
        });
        rt(OwnerClientChangeSecretHash {
            query_id: 19,
            secret_hash: h,
            send_excesses_to: addr(8),
        });
        rt(OwnerClientChangeSecretHashAndTopUp {
            query_id: 19,
            amount: Coins(2),
            secret_hash: h,
            send_excesses_to: addr(8),
        });
        rt(OwnerClientRequestRefund {
            query_id: 20,
            send_excesses_to: addr(8),
        });
        rt(OwnerClientIncreaseStake {
            query_id: 21,
            new_stake: Coins(2),
            send_excesses_to: addr(8),
        });
        rt(OwnerClientWithdraw {
            query_id: 22,
            send_excesses_to: addr(8),
        });
    }

    /// The exact bit layout of the client top-up, written out by hand from
    /// `ClientContract::create_topup_message`: op, qid, coins, address.
    #[test]
    fn topup_bits_match_runner_layout() {
        let body = ExtClientTopUp {
            query_id: 1,
            amount: Coins(0x0102),
            send_excesses_to: addr(0xaa),
        };
        let c = body.to_cell().unwrap();
        assert_eq!(c.bit_len(), 32 + 64 + 4 + 16 + 267);
        let mut b = CellBuilder::new();
        b.store_u32(0xf172e6c2).unwrap();
        b.store_u64(1).unwrap();
        b.store_small_uint(2, 4).unwrap();
        b.store_u16(0x0102).unwrap();
        b.store_small_uint(0b100, 3).unwrap();
        b.store_u8(0).unwrap();
        b.store_u256(&HashBytes([0xaa; 32])).unwrap();
        assert_eq!(c.repr_hash(), b.build().unwrap().repr_hash());
    }

    #[test]
    fn wrong_opcode_and_trailing_bits_are_typed_errors() {
        let c = Excesses { query_id: 1 }.to_cell().unwrap();
        assert!(matches!(
            PayoutNotice::from_cell(&c),
            Err(LayoutError::Opcode {
                expected: op::PAYOUT,
                found: op::EXCESSES
            })
        ));
        let mut b = CellBuilder::new();
        b.store_u32(op::EXCESSES).unwrap();
        b.store_u64(1).unwrap();
        b.store_bit_one().unwrap();
        let c = b.build().unwrap();
        assert!(matches!(
            Excesses::from_cell(&c),
            Err(LayoutError::Trailing { bits: 1, .. })
        ));
        // truncated
        let mut b = CellBuilder::new();
        b.store_u32(op::EXCESSES).unwrap();
        let c = b.build().unwrap();
        assert!(matches!(Excesses::from_cell(&c), Err(LayoutError::Cell(_))));
    }

    #[test]
    fn save_state_checks_inner_op() {
        let mut s = SaveState::new(1, 2, HashBytes::ZERO);
        assert_eq!(SaveState::parse(&s.to_cell().unwrap()).unwrap(), s);
        s.inner_op = 1;
        assert!(SaveState::parse(&s.to_cell().unwrap()).is_err());
    }

    #[test]
    fn proxy_endpoint_parsing() {
        let e = ProxyEndpoint("1.2.3.4:80".into());
        let (w, c) = e.socket_addrs().unwrap();
        assert_eq!(w, c);
        assert_eq!(w.port(), 80);
        let e = ProxyEndpoint("1.2.3.4:80 5.6.7.8:90".into());
        let (w, c) = e.socket_addrs().unwrap();
        assert_eq!((w.port(), c.port()), (80, 90));
        assert!(ProxyEndpoint("host:80".into()).socket_addrs().is_none());
        let long = ProxyEndpoint("x".repeat(128));
        assert!(
            RegisterProxy {
                query_id: 0,
                endpoint: long
            }
            .to_cell()
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn client_proxy_request_round_trips(
            qid in any::<u64>(), st in 0u8..4, bal in any::<u64>(), stake in any::<u64>(),
            used in any::<u64>(), h in any::<[u8; 32]>(), nonce in proptest::option::of(any::<u64>()),
        ) {
            let v = ClientProxyRequest {
                query_id: qid,
                owner: addr(1),
                state: InRef(ClientStateData {
                    state: State2(st), balance: Coins(bal), stake: Coins(stake),
                    tokens_used: used, secret_hash: HashBytes(h),
                }),
                payload: nonce.map(|n| ClientProxyRegister { nonce: n }.to_cell().unwrap()),
            };
            prop_assert_eq!(ClientProxyRequest::from_cell(&v.to_cell().unwrap()).unwrap(), v);
        }

        #[test]
        fn op_and_qid_peek(qid in any::<u64>()) {
            let c = OwnerClientWithdraw { query_id: qid, send_excesses_to: addr(1) }.to_cell().unwrap();
            prop_assert_eq!(op_and_query_id(&c), Some((op::OWNER_CLIENT_WITHDRAW, qid)));
        }
    }
}
