//! The root contract's storage and the typed network configuration (`RootConfig`).
//!
//! The root contract is the network's single source of truth: whitelisted image and model
//! hashes, registered proxies, prices and the child contract codes.
//! [`RootConfig::from_storage_cell`] reads its storage layout (COCOON-compatible, see
//! docs/cocoon-compat.md) and [`RootConfig::to_storage_cell`] writes it back, so the devnet
//! can deploy a root from a typed config and every runner reads the same values.
//!
//! Storage: `owner:MsgAddress ‖ version:uint32`, refs `[^data, ^params]`.
//! Data: `Maybe ^dict256 proxy_hashes ‖ Maybe ^dict32 registered_proxies ‖
//! last_proxy_seqno:uint32 ‖ Maybe ^dict256 worker_hashes ‖ Maybe ^dict256 model_hashes`.
//! Params: see [`CocoonParams`].

use tycho_types::cell::{Cell, CellBuilder, CellSlice, HashBytes};
use tycho_types::dict::Dict;
use tycho_types::models::StdAddr;

use crate::codec::{self, Field, LayoutError, Result, expect_end, load_addr, store_addr};
use crate::messages::ProxyEndpoint;

/// 1 TON in nanoTON.
pub const ONE_TON: u64 = 1_000_000_000;
/// Default price multiplier (ten-thousandths: 10000 = 1.0x) for fields absent in old params.
pub const DEFAULT_MULTIPLIER: u32 = 10_000;
/// Highest params `struct_version` the runners understand.
pub const MAX_STRUCT_VERSION: u8 = 3;

/// Which child codes a params cell carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeMask(pub u8);

impl CodeMask {
    /// The root keeps all three codes.
    pub const ROOT: CodeMask = CodeMask(7);
    /// A proxy contract carries the worker and client codes (to check child senders).
    pub const PROXY: CodeMask = CodeMask(6);
    /// Worker and client contracts carry no code.
    pub const NONE: CodeMask = CodeMask(0);
}

/// `CocoonParams`: prices, delays, stakes and child codes.
///
/// Layout: `struct_version:uint8 ‖ params_version:uint32 ‖ unique_id:uint32 ‖ is_test:bool ‖
/// price_per_token:Coins ‖ worker_fee_per_token:Coins ‖ [prompt_mult:uint32 if sv≥3] ‖
/// [cached_mult:uint32 if sv≥2] ‖ [completion_mult:uint32 if sv≥3] ‖ [reasoning_mult:uint32 if
/// sv≥2] ‖ proxy_delay_before_close:uint32 ‖ client_delay_before_close:uint32 ‖
/// [min_proxy_stake:Coins ‖ min_client_stake:Coins if sv≥1] ‖ Maybe ^proxy_code ‖ Maybe
/// ^worker_code ‖ Maybe ^client_code`. Absent multipliers read as 10000, absent stakes as
/// 1 TON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CocoonParams {
    /// Layout version, 0..=3.
    pub struct_version: u8,
    /// Bumped whenever child contract params change (all child addresses change with it).
    pub params_version: u32,
    /// Network instance id.
    pub unique_id: u32,
    /// Test network flag.
    pub is_test: bool,
    /// Price a client pays per adjusted token (nanoTON).
    pub price_per_token: u64,
    /// Fee a worker earns per adjusted token (nanoTON).
    pub worker_fee_per_token: u64,
    /// Prompt token multiplier (ten-thousandths).
    pub prompt_tokens_price_multiplier: u32,
    /// Cached prompt token multiplier (ten-thousandths).
    pub cached_tokens_price_multiplier: u32,
    /// Completion token multiplier (ten-thousandths).
    pub completion_tokens_price_multiplier: u32,
    /// Reasoning token multiplier (ten-thousandths).
    pub reasoning_tokens_price_multiplier: u32,
    /// Seconds a proxy must wait between close request and close completion.
    pub proxy_delay_before_close: u32,
    /// Seconds a client must wait before a forced refund.
    pub client_delay_before_close: u32,
    /// Minimum proxy stake (nanoTON).
    pub min_proxy_stake: u64,
    /// Minimum client stake (nanoTON); the initial stake of every client contract.
    pub min_client_stake: u64,
    /// Proxy contract code.
    pub proxy_code: Option<Cell>,
    /// Worker contract code.
    pub worker_code: Option<Cell>,
    /// Client contract code.
    pub client_code: Option<Cell>,
}

impl Default for CocoonParams {
    fn default() -> Self {
        Self {
            struct_version: MAX_STRUCT_VERSION,
            params_version: 1,
            unique_id: 0,
            is_test: true,
            price_per_token: 20,
            worker_fee_per_token: 16,
            prompt_tokens_price_multiplier: DEFAULT_MULTIPLIER,
            cached_tokens_price_multiplier: DEFAULT_MULTIPLIER,
            completion_tokens_price_multiplier: DEFAULT_MULTIPLIER,
            reasoning_tokens_price_multiplier: DEFAULT_MULTIPLIER,
            proxy_delay_before_close: 600,
            client_delay_before_close: 300,
            min_proxy_stake: ONE_TON,
            min_client_stake: ONE_TON,
            proxy_code: None,
            worker_code: None,
            client_code: None,
        }
    }
}

impl CocoonParams {
    /// Parses a params cell exactly as `RootContractConfig::load_from_state` does.
    pub fn from_cell(c: &Cell) -> Result<Self> {
        let mut s = c.as_slice()?;
        let sv = s.load_u8()?;
        if sv > MAX_STRUCT_VERSION {
            return Err(LayoutError::Invalid {
                field: "struct_version",
                reason: format!("{sv} (at most {MAX_STRUCT_VERSION} is known)"),
            });
        }
        let params_version = s.load_u32()?;
        let unique_id = s.load_u32()?;
        let is_test = s.load_bit()?;
        let price_per_token = codec::load_coins(&mut s)?;
        let worker_fee_per_token = codec::load_coins(&mut s)?;
        let mut p = CocoonParams {
            struct_version: sv,
            params_version,
            unique_id,
            is_test,
            price_per_token,
            worker_fee_per_token,
            ..Default::default()
        };
        if sv >= 3 {
            p.prompt_tokens_price_multiplier = s.load_u32()?;
        }
        if sv >= 2 {
            p.cached_tokens_price_multiplier = s.load_u32()?;
        }
        if sv >= 3 {
            p.completion_tokens_price_multiplier = s.load_u32()?;
        }
        if sv >= 2 {
            p.reasoning_tokens_price_multiplier = s.load_u32()?;
        }
        p.proxy_delay_before_close = s.load_u32()?;
        p.client_delay_before_close = s.load_u32()?;
        if sv >= 1 {
            p.min_proxy_stake = codec::load_coins(&mut s)?;
            p.min_client_stake = codec::load_coins(&mut s)?;
        }
        p.proxy_code = Option::<Cell>::load(&mut s)?;
        p.worker_code = Option::<Cell>::load(&mut s)?;
        p.client_code = Option::<Cell>::load(&mut s)?;
        expect_end(&s, "CocoonParams")?;
        Ok(p)
    }

    /// Builds the params cell with the codes selected by `mask` (bit 0 proxy, bit 1 worker,
    /// bit 2 client), as `serialize_params_cell(mask)` does. Fields the struct version does
    /// not carry are left out.
    pub fn to_cell(&self, mask: CodeMask) -> Result<Cell> {
        let sv = self.struct_version;
        if sv > MAX_STRUCT_VERSION {
            return Err(LayoutError::Invalid {
                field: "struct_version",
                reason: format!("{sv} (at most {MAX_STRUCT_VERSION} is known)"),
            });
        }
        let mut b = CellBuilder::new();
        b.store_u8(sv)?;
        b.store_u32(self.params_version)?;
        b.store_u32(self.unique_id)?;
        b.store_bit(self.is_test)?;
        codec::store_coins(&mut b, self.price_per_token)?;
        codec::store_coins(&mut b, self.worker_fee_per_token)?;
        if sv >= 3 {
            b.store_u32(self.prompt_tokens_price_multiplier)?;
        }
        if sv >= 2 {
            b.store_u32(self.cached_tokens_price_multiplier)?;
        }
        if sv >= 3 {
            b.store_u32(self.completion_tokens_price_multiplier)?;
        }
        if sv >= 2 {
            b.store_u32(self.reasoning_tokens_price_multiplier)?;
        }
        b.store_u32(self.proxy_delay_before_close)?;
        b.store_u32(self.client_delay_before_close)?;
        if sv >= 1 {
            codec::store_coins(&mut b, self.min_proxy_stake)?;
            codec::store_coins(&mut b, self.min_client_stake)?;
        }
        let pick = |bit: u8, c: &Option<Cell>| if mask.0 & bit != 0 { c.clone() } else { None };
        pick(1, &self.proxy_code).store(&mut b)?;
        pick(2, &self.worker_code).store(&mut b)?;
        pick(4, &self.client_code).store(&mut b)?;
        Ok(b.build()?)
    }
}

/// A registered proxy: the seqno the root assigned and its endpoint text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredProxy {
    /// Seqno (dictionary key).
    pub seqno: u32,
    /// `"ip:port"` or `"ip_workers:port ip_clients:port"`.
    pub endpoint: ProxyEndpoint,
}

/// The typed root configuration: every field of `rootConfig.configV5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootConfig {
    /// Root owner (may send owner operations).
    pub owner: StdAddr,
    /// Bumped on every root change; runners adopt a config only if it increases.
    pub version: u32,
    /// Whitelisted proxy image hashes (sorted).
    pub proxy_hashes: Vec<HashBytes>,
    /// Registered proxies (sorted by seqno; non-text entries are skipped, as the runners do).
    pub registered_proxies: Vec<RegisteredProxy>,
    /// Last seqno assigned to a registered proxy.
    pub last_proxy_seqno: u32,
    /// Whitelisted worker image hashes (sorted).
    pub worker_hashes: Vec<HashBytes>,
    /// Whitelisted model hashes (sorted).
    pub model_hashes: Vec<HashBytes>,
    /// Params (prices, delays, stakes, codes).
    pub params: CocoonParams,
}

fn hash_dict(hashes: &[HashBytes]) -> Result<Option<Cell>> {
    let mut d = Dict::<HashBytes, ()>::new();
    for h in hashes {
        d.set(h, ())?;
    }
    Ok(d.into_root())
}

fn read_hash_dict(s: &mut CellSlice<'_>) -> Result<Vec<HashBytes>> {
    let root = Option::<Cell>::load(s)?;
    let d = Dict::<HashBytes, ()>::from_raw(root);
    let mut out = Vec::new();
    for k in d.keys() {
        out.push(k?);
    }
    out.sort();
    Ok(out)
}

impl RootConfig {
    /// Parses the root contract's storage (c4) as the runners do.
    pub fn from_storage_cell(c: &Cell) -> Result<Self> {
        let mut s = c.as_slice()?;
        let owner = load_addr(&mut s)?;
        let data = s.load_reference_cloned()?;
        let params = s.load_reference_cloned()?;
        let version = s.load_u32()?;
        expect_end(&s, "root storage")?;
        let params = CocoonParams::from_cell(&params)?;

        let mut d = data.as_slice()?;
        let proxy_hashes = read_hash_dict(&mut d)?;
        let proxies_root = Option::<Cell>::load(&mut d)?;
        let mut registered_proxies = Vec::new();
        let proxies = Dict::<u32, ()>::from_raw(proxies_root);
        for seqno in proxies.keys() {
            let seqno = seqno?;
            let Some(mut v) = proxies.get_raw(seqno)? else {
                continue;
            };
            // Entries of another type are skipped, as `load_from_state` does.
            if v.get_bit(0)? {
                continue;
            }
            let endpoint = ProxyEndpoint::load(&mut v)?;
            registered_proxies.push(RegisteredProxy { seqno, endpoint });
        }
        registered_proxies.sort_by_key(|p| p.seqno);
        let last_proxy_seqno = d.load_u32()?;
        let worker_hashes = read_hash_dict(&mut d)?;
        let model_hashes = read_hash_dict(&mut d)?;
        expect_end(&d, "root data")?;
        Ok(RootConfig {
            owner,
            version,
            proxy_hashes,
            registered_proxies,
            last_proxy_seqno,
            worker_hashes,
            model_hashes,
            params,
        })
    }

    /// Parses a BOC of the root storage.
    pub fn from_storage_boc(bytes: &[u8]) -> Result<Self> {
        Self::from_storage_cell(&codec::decode_boc(bytes)?)
    }

    /// Builds the root data cell (the `^data` child).
    pub fn data_cell(&self) -> Result<Cell> {
        let mut b = CellBuilder::new();
        hash_dict(&self.proxy_hashes)?.store(&mut b)?;
        let mut proxies = Dict::<u32, CellBuilder>::new();
        for p in &self.registered_proxies {
            let mut v = CellBuilder::new();
            p.endpoint.store(&mut v)?;
            proxies.set(p.seqno, v)?;
        }
        proxies.into_root().store(&mut b)?;
        b.store_u32(self.last_proxy_seqno)?;
        hash_dict(&self.worker_hashes)?.store(&mut b)?;
        hash_dict(&self.model_hashes)?.store(&mut b)?;
        Ok(b.build()?)
    }

    /// Builds the whole root storage cell (what the devnet deploys as the root's data).
    pub fn to_storage_cell(&self) -> Result<Cell> {
        let mut b = CellBuilder::new();
        store_addr(&mut b, &self.owner)?;
        b.store_u32(self.version)?;
        b.store_reference(self.data_cell()?)?;
        b.store_reference(self.params.to_cell(CodeMask::ROOT)?)?;
        Ok(b.build()?)
    }

    /// Whether a worker image hash is whitelisted.
    pub fn has_worker_hash(&self, h: &HashBytes) -> bool {
        self.worker_hashes.binary_search(h).is_ok()
    }

    /// Whether a proxy image hash is whitelisted.
    pub fn has_proxy_hash(&self, h: &HashBytes) -> bool {
        self.proxy_hashes.binary_search(h).is_ok()
    }

    /// Whether a model hash is whitelisted.
    pub fn has_model_hash(&self, h: &HashBytes) -> bool {
        self.model_hashes.binary_search(h).is_ok()
    }
}

/// The model hash the root whitelists: SHA-256 of the full model id (`Name@rev:hash`).
pub fn model_hash(model_id: &str) -> HashBytes {
    let d = ring::digest::digest(&ring::digest::SHA256, model_id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    HashBytes(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_config() -> RootConfig {
        let code = |n: u8| {
            let mut b = CellBuilder::new();
            b.store_u8(n).unwrap();
            Some(b.build().unwrap())
        };
        RootConfig {
            owner: StdAddr::new(0, HashBytes([1; 32])),
            version: 7,
            proxy_hashes: vec![HashBytes([3; 32]), HashBytes([2; 32])],
            registered_proxies: vec![
                RegisteredProxy {
                    seqno: 1,
                    endpoint: ProxyEndpoint("127.0.0.1:8801".into()),
                },
                RegisteredProxy {
                    seqno: 4,
                    endpoint: ProxyEndpoint("10.0.0.1:1 10.0.0.1:2".into()),
                },
            ],
            last_proxy_seqno: 4,
            worker_hashes: vec![HashBytes([5; 32])],
            model_hashes: vec![model_hash("Qwen/Qwen3-8B@abc:def")],
            params: CocoonParams {
                proxy_code: code(1),
                worker_code: code(2),
                client_code: code(3),
                ..Default::default()
            },
        }
    }

    #[test]
    fn root_storage_round_trips() {
        let mut cfg = sample_config();
        let c = cfg.to_storage_cell().unwrap();
        let back = RootConfig::from_storage_cell(&c).unwrap();
        cfg.proxy_hashes.sort();
        assert_eq!(back, cfg);
        assert!(back.has_proxy_hash(&HashBytes([2; 32])));
        assert!(!back.has_worker_hash(&HashBytes([2; 32])));
        assert!(back.has_model_hash(&model_hash("Qwen/Qwen3-8B@abc:def")));
        // storage layout: owner(267) + version(32), refs [data, params]
        assert_eq!(c.bit_len(), 267 + 32);
        assert_eq!(c.reference_count(), 2);
    }

    #[test]
    fn empty_dicts_are_single_zero_bits() {
        let cfg = RootConfig {
            proxy_hashes: vec![],
            registered_proxies: vec![],
            worker_hashes: vec![],
            model_hashes: vec![],
            ..sample_config()
        };
        let d = cfg.data_cell().unwrap();
        assert_eq!(d.bit_len(), 1 + 1 + 32 + 1 + 1);
        assert_eq!(d.reference_count(), 0);
    }

    #[test]
    fn params_versions_have_expected_sizes_and_defaults() {
        // (struct_version, bits without code maybe-bits): header 8+32+32+1, two coins of 12
        // bits (values < 256), delays 64, stakes 2x(4+32) for 1 TON
        for (sv, extra) in [(0u8, 0u16), (1, 72), (2, 72 + 64), (3, 72 + 128)] {
            let p = CocoonParams {
                struct_version: sv,
                ..Default::default()
            };
            let c = p.to_cell(CodeMask::NONE).unwrap();
            assert_eq!(c.bit_len(), 73 + 24 + 64 + extra + 3, "sv {sv}");
            let back = CocoonParams::from_cell(&c).unwrap();
            assert_eq!(back.struct_version, sv);
            assert_eq!(back.min_client_stake, ONE_TON);
            assert_eq!(back.prompt_tokens_price_multiplier, DEFAULT_MULTIPLIER);
        }
        // multipliers that a v1 cell cannot carry read back as defaults
        let p = CocoonParams {
            struct_version: 1,
            cached_tokens_price_multiplier: 5000,
            ..Default::default()
        };
        let back = CocoonParams::from_cell(&p.to_cell(CodeMask::NONE).unwrap()).unwrap();
        assert_eq!(back.cached_tokens_price_multiplier, DEFAULT_MULTIPLIER);
        // sv 2 carries cached and reasoning only
        let p = CocoonParams {
            struct_version: 2,
            cached_tokens_price_multiplier: 5000,
            prompt_tokens_price_multiplier: 7000,
            ..Default::default()
        };
        let back = CocoonParams::from_cell(&p.to_cell(CodeMask::NONE).unwrap()).unwrap();
        assert_eq!(back.cached_tokens_price_multiplier, 5000);
        assert_eq!(back.prompt_tokens_price_multiplier, DEFAULT_MULTIPLIER);
    }

    #[test]
    fn code_mask_selects_codes() {
        let p = sample_config().params;
        let proxy = CocoonParams::from_cell(&p.to_cell(CodeMask::PROXY).unwrap()).unwrap();
        assert!(proxy.proxy_code.is_none());
        assert!(proxy.worker_code.is_some() && proxy.client_code.is_some());
        let none = CocoonParams::from_cell(&p.to_cell(CodeMask::NONE).unwrap()).unwrap();
        assert!(none.worker_code.is_none());
    }

    #[test]
    fn bad_params_are_typed_errors() {
        let mut b = CellBuilder::new();
        b.store_u8(4).unwrap();
        b.store_zeros(200).unwrap();
        assert!(matches!(
            CocoonParams::from_cell(&b.build().unwrap()),
            Err(LayoutError::Invalid {
                field: "struct_version",
                ..
            })
        ));
        let mut b = CellBuilder::new();
        b.store_u8(3).unwrap();
        assert!(matches!(
            CocoonParams::from_cell(&b.build().unwrap()),
            Err(LayoutError::Cell(_))
        ));
    }

    #[test]
    fn non_text_proxy_entries_are_skipped() {
        let cfg = sample_config();
        // rebuild the data cell with one extra entry of type 1
        let mut proxies = Dict::<u32, CellBuilder>::new();
        for p in &cfg.registered_proxies {
            let mut v = CellBuilder::new();
            p.endpoint.store(&mut v).unwrap();
            proxies.set(p.seqno, v).unwrap();
        }
        let mut v = CellBuilder::new();
        v.store_bit_one().unwrap();
        v.store_u32(0xdeadbeef).unwrap();
        proxies.set(9, v).unwrap();
        let mut b = CellBuilder::new();
        hash_dict(&cfg.proxy_hashes).unwrap().store(&mut b).unwrap();
        proxies.into_root().store(&mut b).unwrap();
        b.store_u32(9).unwrap();
        hash_dict(&cfg.worker_hashes)
            .unwrap()
            .store(&mut b)
            .unwrap();
        hash_dict(&cfg.model_hashes).unwrap().store(&mut b).unwrap();
        let data = b.build().unwrap();
        let mut sb = CellBuilder::new();
        store_addr(&mut sb, &cfg.owner).unwrap();
        sb.store_u32(1).unwrap();
        sb.store_reference(data).unwrap();
        sb.store_reference(cfg.params.to_cell(CodeMask::ROOT).unwrap())
            .unwrap();
        let back = RootConfig::from_storage_cell(&sb.build().unwrap()).unwrap();
        assert_eq!(back.registered_proxies.len(), 2);
        assert_eq!(back.last_proxy_seqno, 9);
    }

    proptest! {
        #[test]
        fn params_round_trip(
            sv in 0u8..=3, pv in any::<u32>(), uid in any::<u32>(), t in any::<bool>(),
            price in any::<u64>(), fee in any::<u64>(), m in any::<[u32; 4]>(),
            d in any::<[u32; 2]>(), st in any::<[u64; 2]>(),
        ) {
            let mut p = CocoonParams {
                struct_version: sv, params_version: pv, unique_id: uid, is_test: t,
                price_per_token: price, worker_fee_per_token: fee,
                prompt_tokens_price_multiplier: m[0], cached_tokens_price_multiplier: m[1],
                completion_tokens_price_multiplier: m[2], reasoning_tokens_price_multiplier: m[3],
                proxy_delay_before_close: d[0], client_delay_before_close: d[1],
                min_proxy_stake: st[0], min_client_stake: st[1],
                proxy_code: None, worker_code: None, client_code: None,
            };
            let back = CocoonParams::from_cell(&p.to_cell(CodeMask::ROOT).unwrap()).unwrap();
            if sv < 3 { p.prompt_tokens_price_multiplier = DEFAULT_MULTIPLIER; p.completion_tokens_price_multiplier = DEFAULT_MULTIPLIER; }
            if sv < 2 { p.cached_tokens_price_multiplier = DEFAULT_MULTIPLIER; p.reasoning_tokens_price_multiplier = DEFAULT_MULTIPLIER; }
            if sv < 1 { p.min_proxy_stake = ONE_TON; p.min_client_stake = ONE_TON; }
            prop_assert_eq!(back, p);
        }
    }
}
