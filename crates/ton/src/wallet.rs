//! Standard TON wallets (v4r2, v5r1) and a sender that resends until confirmed.
//!
//! Operators fund Cocoon from ordinary wallets, so we speak the two standard wallet
//! contracts. Their code BOCs are embedded (`crates/ton/wallets/*.code.boc`, taken from the
//! npm package `@ton/ton` 16.3.0) and checked against the well-known code hashes in tests.
//!
//! External messages carry `seqno` and `valid_until`; the wallet accepts one message per
//! seqno, so resending the *same* BOC is safe. [`WalletSender`] batches up to four internal
//! messages per external message, resends it until the seqno advances, and gives the
//! messages back to the queue if `valid_until` passes first; it
//! is behind the `wallet-sender` feature, since it drives a [`Chain`](crate::chain::Chain).

use tycho_types::cell::{Cell, CellBuilder, HashBytes};
use tycho_types::models::StdAddr;

use crate::chain::ChainError;
use crate::codec::{self, LayoutError, store_addr, store_coins};
use crate::contracts::state_init;
use crate::keys::SigningKey;

/// Send-mode flags of an internal message.
pub mod send_mode {
    /// Pay transfer fees separately from the value.
    pub const PAY_FEES_SEPARATELY: u8 = 1;
    /// Ignore errors in the action phase (required by v5r1 for external requests).
    pub const IGNORE_ERRORS: u8 = 2;
    /// Destroy the account if its balance becomes zero.
    pub const DESTROY_IF_ZERO: u8 = 32;
    /// Carry the remaining value of the inbound message.
    pub const CARRY_REMAINING_VALUE: u8 = 64;
    /// Carry the whole balance.
    pub const CARRY_ALL_BALANCE: u8 = 128;
    /// The usual mode: pay fees separately, ignore errors.
    pub const DEFAULT: u8 = PAY_FEES_SEPARATELY | IGNORE_ERRORS;
}

/// The most internal messages one external message carries.
pub const MAX_MESSAGES: usize = 4;

const V4R2_CODE: &[u8] = include_bytes!("../wallets/v4r2.code.boc");
const V5R1_CODE: &[u8] = include_bytes!("../wallets/v5r1.code.boc");

/// Well-known code hash of wallet v4r2.
pub const V4R2_CODE_HASH: &str = "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0";
/// Well-known code hash of wallet v5r1.
pub const V5R1_CODE_HASH: &str = "20834b7b72b112147e1b2fb457b84e74d1a30f04f737d4f62a668e9552d2b72f";

/// Default v4 subwallet id (plus the workchain).
pub const V4_DEFAULT_SUBWALLET: u32 = 698_983_191;
/// Mainnet global id (v5r1 wallet id).
pub const MAINNET_GLOBAL_ID: i32 = -239;
/// Testnet global id (v5r1 wallet id).
pub const TESTNET_GLOBAL_ID: i32 = -3;

const V5_SIGNED_EXTERNAL: u32 = 0x7369_676e;
const V5_ACTION_SEND_MSG: u32 = 0x0ec3_c86d;

#[cfg(feature = "wallet-sender")]
mod sender;
#[cfg(feature = "wallet-sender")]
pub use sender::{SenderEvent, WalletSender};

/// Errors building wallet messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// A cell could not be built.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// More than [`MAX_MESSAGES`] messages, or none.
    #[error("a wallet message carries 1 to {MAX_MESSAGES} internal messages, got {0}")]
    MessageCount(usize),
    /// v5r1 refuses external requests whose send mode lacks `IGNORE_ERRORS`.
    #[error("wallet v5r1 requires send mode with IGNORE_ERRORS (+2) in external requests, got {0}")]
    V5Mode(u8),
    /// The chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The wallet's data cell could not be read.
    #[error("unexpected wallet data layout")]
    Data,
}

/// Wallet contract version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalletVersion {
    /// Wallet v4 revision 2.
    V4R2,
    /// Wallet v5 revision 1 (W5).
    V5R1,
}

impl std::str::FromStr for WalletVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "v4r2" | "v4" => Ok(Self::V4R2),
            "v5r1" | "v5" | "w5" => Ok(Self::V5R1),
            _ => Err(format!("unknown wallet version {s:?} (v4r2 or v5r1)")),
        }
    }
}

/// One internal message to send from the wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMsg {
    /// Destination.
    pub to: StdAddr,
    /// Value in nanoTON.
    pub value: u64,
    /// Bounce flag (false for deploys and for wallets).
    pub bounce: bool,
    /// Body (`None` = empty).
    pub body: Option<Cell>,
    /// `StateInit` to deploy the destination.
    pub state_init: Option<Cell>,
    /// Send mode.
    pub mode: u8,
}

impl OutMsg {
    /// A bounceable transfer with [`send_mode::DEFAULT`].
    pub fn new(to: StdAddr, value: u64, body: Option<Cell>) -> Self {
        Self {
            to,
            value,
            bounce: true,
            body,
            state_init: None,
            mode: send_mode::DEFAULT,
        }
    }

    /// A non-bounceable deploying transfer.
    pub fn deploy(to: StdAddr, value: u64, state_init: Cell, body: Option<Cell>) -> Self {
        Self {
            to,
            value,
            bounce: false,
            body,
            state_init: Some(state_init),
            mode: send_mode::DEFAULT,
        }
    }

    /// The `MessageRelaxed` cell (`int_msg_info$0`, ihr disabled, src `addr_none`).
    pub fn to_cell(&self) -> Result<Cell, LayoutError> {
        let mut b = CellBuilder::new();
        b.store_bit_zero()?; // int_msg_info$0
        b.store_bit_one()?; // ihr_disabled
        b.store_bit(self.bounce)?;
        b.store_bit_zero()?; // bounced
        b.store_small_uint(0, 2)?; // src: addr_none
        store_addr(&mut b, &self.to)?;
        store_coins(&mut b, self.value)?;
        b.store_bit_zero()?; // no extra currencies
        store_coins(&mut b, 0)?; // ihr_fee
        store_coins(&mut b, 0)?; // fwd_fee
        b.store_u64(0)?; // created_lt
        b.store_u32(0)?; // created_at
        match &self.state_init {
            Some(si) => {
                b.store_bit_one()?;
                b.store_bit_one()?; // as a reference
                b.store_reference(si.clone())?;
            }
            None => b.store_bit_zero()?,
        }
        match &self.body {
            Some(body) => {
                b.store_bit_one()?;
                b.store_reference(body.clone())?;
            }
            None => b.store_bit_zero()?,
        }
        Ok(b.build()?)
    }
}

/// A text comment body (`op = 0 ‖ UTF-8`), as wallets display it. At most 123 bytes (one
/// cell).
pub fn text_comment(text: &str) -> Result<Cell, LayoutError> {
    let bytes = text.as_bytes();
    if bytes.len() > 123 {
        return Err(LayoutError::Invalid {
            field: "comment",
            reason: format!("{} bytes, at most 123", bytes.len()),
        });
    }
    let mut b = CellBuilder::new();
    b.store_u32(0)?;
    b.store_raw(bytes, bytes.len() as u16 * 8)?;
    Ok(b.build()?)
}

/// An external inbound message to `dest` (`ext_in_msg_info$10`, body as a reference).
pub fn external_message(
    dest: &StdAddr,
    state_init: Option<&Cell>,
    body: &Cell,
) -> Result<Cell, LayoutError> {
    let mut b = CellBuilder::new();
    b.store_small_uint(0b10, 2)?;
    b.store_small_uint(0, 2)?; // src: addr_none
    store_addr(&mut b, dest)?;
    store_coins(&mut b, 0)?; // import_fee
    match state_init {
        Some(si) => {
            b.store_bit_one()?;
            b.store_bit_one()?;
            b.store_reference(si.clone())?;
        }
        None => b.store_bit_zero()?,
    }
    b.store_bit_one()?;
    b.store_reference(body.clone())?;
    Ok(b.build()?)
}

/// A standard wallet: version, workchain, public key and wallet id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    /// Contract version.
    pub version: WalletVersion,
    /// Workchain.
    pub workchain: i8,
    /// Owner public key.
    pub public_key: [u8; 32],
    /// v4 subwallet id, or the v5r1 wallet id (global id XOR context).
    pub wallet_id: u32,
}

impl Wallet {
    /// A v4r2 wallet with the default subwallet id.
    pub fn v4r2(public_key: [u8; 32], workchain: i8) -> Self {
        Self {
            version: WalletVersion::V4R2,
            workchain,
            public_key,
            wallet_id: V4_DEFAULT_SUBWALLET.wrapping_add(workchain as i32 as u32),
        }
    }

    /// A v5r1 wallet with a client context (`1 ‖ workchain:8 ‖ version:8=0 ‖ subwallet:15`)
    /// XOR the network global id.
    pub fn v5r1(
        public_key: [u8; 32],
        workchain: i8,
        network_global_id: i32,
        subwallet: u16,
    ) -> Self {
        let context: u32 =
            (1u32 << 31) | ((workchain as u8 as u32) << 23) | (subwallet as u32 & 0x7fff);
        Self {
            version: WalletVersion::V5R1,
            workchain,
            public_key,
            wallet_id: (network_global_id as u32) ^ context,
        }
    }

    /// A default wallet of `version` on workchain 0, mainnet ids.
    pub fn new(version: WalletVersion, public_key: [u8; 32]) -> Self {
        Self::on_network(version, public_key, false)
    }

    /// A default wallet of `version` on workchain 0; a v5r1 wallet id carries the testnet's
    /// global id when `testnet` (v4r2 ids do not depend on the network).
    pub fn on_network(version: WalletVersion, public_key: [u8; 32], testnet: bool) -> Self {
        match version {
            WalletVersion::V4R2 => Self::v4r2(public_key, 0),
            WalletVersion::V5R1 => {
                let global_id = if testnet {
                    TESTNET_GLOBAL_ID
                } else {
                    MAINNET_GLOBAL_ID
                };
                Self::v5r1(public_key, 0, global_id, 0)
            }
        }
    }

    /// The embedded code cell.
    pub fn code(&self) -> Result<Cell, LayoutError> {
        codec::decode_boc(match self.version {
            WalletVersion::V4R2 => V4R2_CODE,
            WalletVersion::V5R1 => V5R1_CODE,
        })
    }

    /// The initial data cell.
    pub fn initial_data(&self) -> Result<Cell, LayoutError> {
        let mut b = CellBuilder::new();
        match self.version {
            WalletVersion::V4R2 => {
                b.store_u32(0)?; // seqno
                b.store_u32(self.wallet_id)?;
                b.store_u256(&HashBytes(self.public_key))?;
                b.store_bit_zero()?; // no plugins
            }
            WalletVersion::V5R1 => {
                b.store_bit_one()?; // signature auth allowed
                b.store_u32(0)?; // seqno
                b.store_u32(self.wallet_id)?;
                b.store_u256(&HashBytes(self.public_key))?;
                b.store_bit_zero()?; // no extensions
            }
        }
        Ok(b.build()?)
    }

    /// The `StateInit` cell.
    pub fn state_init(&self) -> Result<Cell, LayoutError> {
        state_init(&self.code()?, &self.initial_data()?)
    }

    /// The wallet address.
    pub fn address(&self) -> Result<StdAddr, LayoutError> {
        Ok(StdAddr::new(
            self.workchain,
            *self.state_init()?.repr_hash(),
        ))
    }

    /// Reads the seqno from the wallet's current data cell.
    pub fn seqno_from_data(&self, data: &Cell) -> Result<u32, WalletError> {
        let mut s = data.as_slice().map_err(|_| WalletError::Data)?;
        if self.version == WalletVersion::V5R1 {
            s.load_bit().map_err(|_| WalletError::Data)?;
        }
        s.load_u32().map_err(|_| WalletError::Data)
    }

    /// The signed body of an external request sending `msgs`.
    pub fn transfer_body(
        &self,
        key: &SigningKey,
        seqno: u32,
        valid_until: u32,
        msgs: &[OutMsg],
    ) -> Result<Cell, WalletError> {
        if msgs.is_empty() || msgs.len() > MAX_MESSAGES {
            return Err(WalletError::MessageCount(msgs.len()));
        }
        match self.version {
            WalletVersion::V4R2 => {
                let mut b = CellBuilder::new();
                b.store_u32(self.wallet_id).map_err(LayoutError::from)?;
                b.store_u32(valid_until).map_err(LayoutError::from)?;
                b.store_u32(seqno).map_err(LayoutError::from)?;
                b.store_u8(0).map_err(LayoutError::from)?; // op: simple send
                for m in msgs {
                    b.store_u8(m.mode).map_err(LayoutError::from)?;
                    b.store_reference(m.to_cell()?).map_err(LayoutError::from)?;
                }
                let unsigned = b.build().map_err(LayoutError::from)?;
                let sig = key.sign(unsigned.repr_hash().as_slice());
                let mut out = CellBuilder::new();
                out.store_raw(&sig, 512).map_err(LayoutError::from)?;
                out.store_slice(unsigned.as_slice().map_err(LayoutError::from)?)
                    .map_err(LayoutError::from)?;
                Ok(out.build().map_err(LayoutError::from)?)
            }
            WalletVersion::V5R1 => {
                // out list: each node = ^prev ‖ action_send_msg mode ^msg, head = last action
                let mut list = codec::empty_cell();
                for m in msgs {
                    if m.mode & send_mode::IGNORE_ERRORS == 0 {
                        return Err(WalletError::V5Mode(m.mode));
                    }
                    let mut n = CellBuilder::new();
                    n.store_reference(list).map_err(LayoutError::from)?;
                    n.store_u32(V5_ACTION_SEND_MSG).map_err(LayoutError::from)?;
                    n.store_u8(m.mode).map_err(LayoutError::from)?;
                    n.store_reference(m.to_cell()?).map_err(LayoutError::from)?;
                    list = n.build().map_err(LayoutError::from)?;
                }
                let mut b = CellBuilder::new();
                b.store_u32(V5_SIGNED_EXTERNAL).map_err(LayoutError::from)?;
                b.store_u32(self.wallet_id).map_err(LayoutError::from)?;
                b.store_u32(valid_until).map_err(LayoutError::from)?;
                b.store_u32(seqno).map_err(LayoutError::from)?;
                b.store_bit_one().map_err(LayoutError::from)?; // Maybe ^OutList
                b.store_reference(list).map_err(LayoutError::from)?;
                b.store_bit_zero().map_err(LayoutError::from)?; // no extended actions
                let unsigned = b.clone().build().map_err(LayoutError::from)?;
                let sig = key.sign(unsigned.repr_hash().as_slice());
                b.store_raw(&sig, 512).map_err(LayoutError::from)?;
                Ok(b.build().map_err(LayoutError::from)?)
            }
        }
    }

    /// The complete external message (with `StateInit` when `deploy` is set), ready for
    /// `sendBoc`.
    pub fn external_transfer(
        &self,
        key: &SigningKey,
        seqno: u32,
        valid_until: u32,
        msgs: &[OutMsg],
        deploy: bool,
    ) -> Result<Cell, WalletError> {
        let body = self.transfer_body(key, seqno, valid_until, msgs)?;
        let si = if deploy {
            Some(self.state_init()?)
        } else {
            None
        };
        Ok(external_message(&self.address()?, si.as_ref(), &body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_seed(&[3u8; 32]).unwrap()
    }

    #[test]
    fn embedded_codes_have_well_known_hashes() {
        let w4 = Wallet::v4r2([0; 32], 0);
        assert_eq!(w4.code().unwrap().repr_hash().to_string(), V4R2_CODE_HASH);
        let w5 = Wallet::v5r1([0; 32], 0, MAINNET_GLOBAL_ID, 0);
        assert_eq!(w5.code().unwrap().repr_hash().to_string(), V5R1_CODE_HASH);
    }

    #[test]
    fn wallet_ids() {
        assert_eq!(Wallet::v4r2([0; 32], 0).wallet_id, 698_983_191);
        assert_eq!(Wallet::v4r2([0; 32], -1).wallet_id, 698_983_190);
        // the well-known default W5 wallet id on mainnet, workchain 0
        assert_eq!(
            Wallet::v5r1([0; 32], 0, MAINNET_GLOBAL_ID, 0).wallet_id,
            2_147_483_409
        );
        assert_ne!(
            Wallet::v5r1([0; 32], 0, TESTNET_GLOBAL_ID, 0).wallet_id,
            Wallet::v5r1([0; 32], 0, MAINNET_GLOBAL_ID, 0).wallet_id
        );
        // The network only changes a v5r1 wallet's id.
        let v5 = WalletVersion::V5R1;
        assert_eq!(
            Wallet::on_network(v5, [0; 32], true),
            Wallet::v5r1([0; 32], 0, TESTNET_GLOBAL_ID, 0)
        );
        assert_eq!(
            Wallet::on_network(v5, [0; 32], false),
            Wallet::new(v5, [0; 32])
        );
        let v4 = WalletVersion::V4R2;
        assert_eq!(
            Wallet::on_network(v4, [0; 32], true),
            Wallet::v4r2([0; 32], 0)
        );
    }

    /// Addresses for the key with seed `[3; 32]`, computed independently with `@ton/ton`
    /// 16.3.0 (`WalletContractV4.create({workchain: 0, publicKey})`,
    /// `WalletContractV5R1.create({workchain: 0, publicKey})` and with `networkGlobalId: -3`).
    #[test]
    fn addresses_match_ton_ton() {
        let k = key();
        assert_eq!(
            hex::encode(k.public_key()),
            "ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1"
        );
        let pk = k.public_key();
        assert_eq!(
            Wallet::v4r2(pk, 0).address().unwrap().to_string(),
            "0:6ffbe3fe7d89d618fcb1660fb80ec100af39dc66ebab3eb89c0b03b6cf7b67c3"
        );
        assert_eq!(
            Wallet::new(WalletVersion::V5R1, pk)
                .address()
                .unwrap()
                .to_string(),
            "0:60ccd9c99b60057f5b1b39d9cfcd79ffc34a5d2881cc863ca1201a21ea8ea42a"
        );
        assert_eq!(
            Wallet::v5r1(pk, 0, TESTNET_GLOBAL_ID, 0)
                .address()
                .unwrap()
                .to_string(),
            "0:debeac2c880a8c95b5c282b64f325be71f4a179031a83b35aa5d06b342dfef9f"
        );
    }

    #[test]
    fn v4_body_layout_and_signature() {
        let k = key();
        let w = Wallet::v4r2(k.public_key(), 0);
        let to = StdAddr::new(0, HashBytes([1; 32]));
        let msgs = vec![OutMsg::new(to.clone(), 5, None), OutMsg::new(to, 6, None)];
        let body = w.transfer_body(&k, 7, 1000, &msgs).unwrap();
        assert_eq!(body.bit_len(), 512 + 32 * 3 + 8 + 8 * 2);
        assert_eq!(body.reference_count(), 2);
        let mut s = body.as_slice().unwrap();
        let mut sig = [0u8; 64];
        s.load_raw(&mut sig, 512).unwrap();
        let rest = CellBuilder::build_from(s).unwrap();
        assert!(crate::keys::verify(
            &k.public_key(),
            rest.repr_hash().as_slice(),
            &sig
        ));
        let mut s = rest.as_slice().unwrap();
        assert_eq!(s.load_u32().unwrap(), w.wallet_id);
        assert_eq!(s.load_u32().unwrap(), 1000);
        assert_eq!(s.load_u32().unwrap(), 7);
    }

    #[test]
    fn v5_body_layout_and_signature() {
        let k = key();
        let w = Wallet::new(WalletVersion::V5R1, k.public_key());
        let to = StdAddr::new(0, HashBytes([1; 32]));
        let msgs: Vec<_> = (0..4).map(|i| OutMsg::new(to.clone(), i, None)).collect();
        let body = w.transfer_body(&k, 1, 99, &msgs).unwrap();
        let mut s = body.as_slice().unwrap();
        assert_eq!(s.load_u32().unwrap(), V5_SIGNED_EXTERNAL);
        assert_eq!(s.load_u32().unwrap(), w.wallet_id);
        // signature is the last 512 bits, over the hash of everything before it
        let bits = body.bit_len();
        let mut full = body.as_slice().unwrap();
        let signed = full
            .load_prefix(bits - 512, body.reference_count())
            .unwrap();
        let mut sig = [0u8; 64];
        full.load_raw(&mut sig, 512).unwrap();
        let signed_cell = CellBuilder::build_from(signed).unwrap();
        assert!(crate::keys::verify(
            &k.public_key(),
            signed_cell.repr_hash().as_slice(),
            &sig
        ));
        // out list head carries the last message (value 3)
        let head = body.reference(0).unwrap();
        let mut h = head.as_slice().unwrap();
        assert_eq!(h.load_u32().unwrap(), V5_ACTION_SEND_MSG);
        // too many / missing ignore-errors mode
        let five: Vec<_> = (0..5)
            .map(|i| OutMsg::new(StdAddr::ZERO, i, None))
            .collect();
        assert!(matches!(
            w.transfer_body(&k, 1, 99, &five),
            Err(WalletError::MessageCount(5))
        ));
        let mut m = OutMsg::new(StdAddr::ZERO, 1, None);
        m.mode = send_mode::PAY_FEES_SEPARATELY;
        assert!(matches!(
            w.transfer_body(&k, 1, 99, &[m]),
            Err(WalletError::V5Mode(1))
        ));
    }

    #[test]
    fn internal_message_parses_as_tycho_relaxed_message() {
        use tycho_types::models::{OwnedRelaxedMessage, RelaxedMsgInfo};
        let si = Wallet::v4r2([1; 32], 0).state_init().unwrap();
        let body = crate::messages::Excesses { query_id: 5 };
        let m = OutMsg::deploy(
            StdAddr::new(0, HashBytes([2; 32])),
            123,
            si,
            Some(crate::codec::Layout::to_cell(&body).unwrap()),
        );
        let c = m.to_cell().unwrap();
        let parsed: OwnedRelaxedMessage = c.parse().unwrap();
        let RelaxedMsgInfo::Int(info) = parsed.info else {
            panic!("not internal")
        };
        assert!(!info.bounce);
        assert_eq!(info.value.tokens.into_inner(), 123);
        assert!(parsed.init.is_some());
    }

    #[test]
    fn external_message_parses_as_tycho_message() {
        use tycho_types::models::{MsgInfo, OwnedMessage};
        let k = key();
        let w = Wallet::v4r2(k.public_key(), 0);
        let ext = w
            .external_transfer(&k, 0, 100, &[OutMsg::new(StdAddr::ZERO, 1, None)], true)
            .unwrap();
        let parsed: OwnedMessage = ext.parse().unwrap();
        let MsgInfo::ExtIn(info) = parsed.info else {
            panic!("not external")
        };
        assert_eq!(info.dst, w.address().unwrap().into());
        assert!(parsed.init.is_some());
    }
}
