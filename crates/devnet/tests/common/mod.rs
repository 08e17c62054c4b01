//! Test helpers: the standard wallet v3r2 (code from `@ton/ton`, recorded in the sandbox
//! vectors), signed with `ring` Ed25519, and the sandbox reference vectors.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::Value;
use tycho_types::models::{
    ExtInMsgInfo, IntAddr, IntMsgInfo, MsgInfo, OwnedMessage, StateInit, StdAddr,
};
use tycho_types::num::Tokens;
use tycho_types::prelude::*;

/// The sandbox reference run (see `data/gen-sandbox-vectors.cjs`).
pub(crate) fn vectors() -> Value {
    serde_json::from_str(include_str!("../data/sandbox-wallet-vectors.json")).unwrap()
}

/// Wallet v3r2 code, as `@ton/ton` 16.3.0 ships it.
pub(crate) fn wallet_v3r2_code() -> Cell {
    let v = vectors();
    Boc::decode_base64(v["wallet_code_boc"].as_str().unwrap()).unwrap()
}

pub(crate) const SUBWALLET: u32 = 698_983_191;

/// One wallet request. Every field is its own so tests can corrupt each one.
pub(crate) struct Transfer<'a> {
    pub seqno: u32,
    pub valid_until: u32,
    pub to: &'a StdAddr,
    pub value: u128,
    pub bounce: bool,
    /// Carry the wallet's state init (its first message deploys it).
    pub with_init: bool,
}

impl<'a> Transfer<'a> {
    /// `value` to `to` as the wallet's message `seqno`, valid until `valid_until`; not
    /// bounceable, without the state init.
    pub(crate) fn new(seqno: u32, valid_until: u32, to: &'a StdAddr, value: u128) -> Self {
        Transfer {
            seqno,
            valid_until,
            to,
            value,
            bounce: false,
            with_init: false,
        }
    }

    /// Bounceable.
    pub(crate) fn bounce(self) -> Self {
        Transfer {
            bounce: true,
            ..self
        }
    }

    /// With the wallet's state init.
    pub(crate) fn with_init(self) -> Self {
        Transfer {
            with_init: true,
            ..self
        }
    }
}

pub(crate) struct Wallet {
    pub key: Ed25519KeyPair,
    pub init: StateInit,
    pub address: StdAddr,
}

impl Wallet {
    pub(crate) fn from_seed(seed: u8) -> Self {
        let key = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let mut data = CellBuilder::new();
        data.store_u32(0).unwrap();
        data.store_u32(SUBWALLET).unwrap();
        data.store_raw(key.public_key().as_ref(), 256).unwrap();
        let init = StateInit {
            split_depth: None,
            special: None,
            code: Some(wallet_v3r2_code()),
            data: Some(data.build().unwrap()),
            libraries: Dict::new(),
        };
        let hash = *CellBuilder::build_from(&init).unwrap().repr_hash();
        Self {
            key,
            init,
            address: StdAddr::new(0, hash),
        }
    }

    /// A signed external message carrying one internal transfer (send mode 3), signed by
    /// `signer` (tests pass a stranger's key too).
    pub(crate) fn transfer(&self, signer: &Ed25519KeyPair, t: Transfer<'_>) -> Vec<u8> {
        let Transfer {
            seqno,
            valid_until,
            to,
            value,
            bounce,
            with_init,
        } = t;
        let internal = OwnedMessage {
            info: MsgInfo::Int(IntMsgInfo {
                ihr_disabled: true,
                bounce,
                bounced: false,
                src: IntAddr::Std(StdAddr::new(0, HashBytes::ZERO)),
                dst: to.clone().into(),
                value: tycho_types::models::CurrencyCollection::new(value),
                extra_flags: Default::default(),
                fwd_fee: Tokens::ZERO,
                created_lt: 0,
                created_at: 0,
            }),
            init: None,
            body: Cell::empty_cell().into(),
            layout: None,
        };
        // Wallets send messages with addr_none as source; build that by hand.
        let internal = with_addr_none_src(internal);
        let mut signing = CellBuilder::new();
        signing.store_u32(SUBWALLET).unwrap();
        signing.store_u32(valid_until).unwrap();
        signing.store_u32(seqno).unwrap();
        signing.store_u8(3).unwrap();
        signing.store_reference(internal).unwrap();
        let signing = signing.build().unwrap();
        let sig = signer.sign(signing.repr_hash().as_slice());
        let mut body = CellBuilder::new();
        body.store_raw(sig.as_ref(), 512).unwrap();
        body.store_slice(signing.as_slice().unwrap()).unwrap();
        let body = body.build().unwrap();
        let ext = OwnedMessage {
            info: MsgInfo::ExtIn(ExtInMsgInfo {
                src: None,
                dst: self.address.clone().into(),
                import_fee: Tokens::ZERO,
            }),
            init: with_init.then(|| self.init.clone()),
            body: body.into(),
            layout: None,
        };
        Boc::encode(CellBuilder::build_from(ext).unwrap())
    }
}

/// Re-encodes an internal message with `src = addr_none` (what wallets put there).
fn with_addr_none_src(msg: OwnedMessage) -> Cell {
    let MsgInfo::Int(info) = &msg.info else {
        unreachable!()
    };
    let mut b = CellBuilder::new();
    // int_msg_info$0 ihr_disabled bounce bounced src:addr_none$00 dest value ihr_fee/extra
    // fwd_fee created_lt created_at, init:nothing$0, body:left$0 (empty).
    b.store_bit_zero().unwrap();
    b.store_bit(info.ihr_disabled).unwrap();
    b.store_bit(info.bounce).unwrap();
    b.store_bit(info.bounced).unwrap();
    b.store_small_uint(0, 2).unwrap();
    info.dst.store_into(&mut b, Cell::empty_context()).unwrap();
    info.value
        .store_into(&mut b, Cell::empty_context())
        .unwrap();
    Tokens::ZERO
        .store_into(&mut b, Cell::empty_context())
        .unwrap();
    info.fwd_fee
        .store_into(&mut b, Cell::empty_context())
        .unwrap();
    b.store_u64(0).unwrap();
    b.store_u32(0).unwrap();
    b.store_bit_zero().unwrap();
    b.store_bit_zero().unwrap();
    b.build().unwrap()
}

pub(crate) fn addr(hex_byte: u8) -> StdAddr {
    StdAddr::new(0, HashBytes([hex_byte; 32]))
}

pub(crate) const TON: u128 = 1_000_000_000;
