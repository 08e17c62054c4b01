//! The blockchain configuration the devnet runs under.
//!
//! We run contracts under the **real TON mainnet configuration**: gas prices, forwarding
//! prices, storage prices, size limits and global version all come from the config BOC that
//! `@ton/sandbox` 0.41.0 ships as `defaultConfig` (masterchain seqno 52956904). It is stored
//! verbatim in `config/mainnet-config.boc` (114,795 bytes; the dictionary root cell). Gas and
//! fees therefore match what the contracts pay on mainnet and in the sandbox tests.
//!
//! One adjustment is needed: `tycho-types` 0.3.6 only knows the original `workchain#a6`
//! constructor of `WorkchainDescr` (config param 12), while TON's current config uses
//! `workchain_v2#a7`, which appends split/merge timings and a persistent-state split depth.
//! Loading the dictionary through `tycho-types` therefore fails with `InvalidTag`. Instead of
//! swapping in a foreign descriptor, [`fix_workchains`] decodes each TON descriptor itself
//! (the fields common to both constructors), rebuilds it as a `tycho-types`
//! [`WorkchainDescription`] with the *same* values, and writes it back. The appended v2
//! fields only steer validators' shard split/merge decisions; transaction execution never
//! reads them, so nothing the executor sees changes.

use tycho_executor::ParsedConfig;
use tycho_types::error::Error as CellError;
use tycho_types::models::{
    BlockchainConfig, BlockchainConfigParams, WorkchainDescription, WorkchainFormat,
    WorkchainFormatBasic, WorkchainFormatExtended,
};
use tycho_types::prelude::*;

/// TON mainnet configuration as exported by `@ton/sandbox` 0.41.0 (`defaultConfig`).
pub const MAINNET_CONFIG_BOC: &[u8] = include_bytes!("../config/mainnet-config.boc");

/// Errors while loading a blockchain configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainConfigError {
    /// The BOC does not decode into a cell.
    #[error("config BOC does not decode: {0}")]
    Boc(String),
    /// A parameter is missing or malformed.
    #[error("config param {param}: {source}")]
    Param {
        /// Parameter number.
        param: u32,
        /// What went wrong.
        source: CellError,
    },
    /// The executor rejected the configuration.
    #[error("executor rejected config: {0}")]
    Parse(CellError),
}

/// A blockchain configuration ready for the executor and the getter VM.
pub struct ChainConfig {
    /// Raw parameters (with param 12 normalised, see the module docs).
    pub params: BlockchainConfigParams,
    /// Configuration contract address (param 0).
    pub address: HashBytes,
}

impl ChainConfig {
    /// Loads the bundled TON mainnet configuration.
    pub fn mainnet() -> Result<Self, ChainConfigError> {
        Self::from_boc(MAINNET_CONFIG_BOC)
    }

    /// Loads a configuration dictionary BOC (the root is the `Hashmap 32 ^Cell` of params).
    pub fn from_boc(boc: &[u8]) -> Result<Self, ChainConfigError> {
        let root = Boc::decode(boc).map_err(|e| ChainConfigError::Boc(e.to_string()))?;
        let mut params = BlockchainConfigParams::from_raw(root);
        fix_workchains(&mut params)?;
        let address = params
            .get_raw(0)
            .map_err(|source| ChainConfigError::Param { param: 0, source })?
            .ok_or(ChainConfigError::Param {
                param: 0,
                source: CellError::CellUnderflow,
            })?
            .load_u256()
            .map_err(|source| ChainConfigError::Param { param: 0, source })?;
        Ok(Self { params, address })
    }

    /// Parses the configuration for the executor at unix time `now` (storage prices are
    /// time-dependent).
    pub fn parsed(&self, now: u32) -> Result<ParsedConfig, ChainConfigError> {
        let config = BlockchainConfig {
            address: self.address,
            params: self.params.clone(),
        };
        ParsedConfig::parse(config, now).map_err(ChainConfigError::Parse)
    }
}

/// A TON `WorkchainDescr` decoded from either constructor (`#a6` or `#a7`).
struct TonWorkchainDescr(WorkchainDescription);

impl<'a> Load<'a> for TonWorkchainDescr {
    fn load_from(slice: &mut CellSlice<'a>) -> Result<Self, CellError> {
        // workchain#a6 / workchain_v2#a7: the first fields are shared.
        match slice.load_u8()? {
            0xa6 | 0xa7 => {}
            _ => return Err(CellError::InvalidTag),
        }
        let enabled_since = slice.load_u32()?;
        let actual_min_split = slice.load_u8()?;
        let min_split = slice.load_u8()?;
        let max_split = slice.load_u8()?;
        let basic = slice.load_bit()?;
        let active = slice.load_bit()?;
        let accept_msgs = slice.load_bit()?;
        let flags = slice.load_uint(13)?;
        if flags != 0 {
            return Err(CellError::InvalidData);
        }
        let zerostate_root_hash = slice.load_u256()?;
        let zerostate_file_hash = slice.load_u256()?;
        let version = slice.load_u32()?;
        let format = if basic {
            if slice.load_small_uint(4)? != 1 {
                return Err(CellError::InvalidTag);
            }
            WorkchainFormat::Basic(WorkchainFormatBasic::load_from(slice)?)
        } else {
            if slice.load_small_uint(4)? != 0 {
                return Err(CellError::InvalidTag);
            }
            WorkchainFormat::Extended(WorkchainFormatExtended::load_from(slice)?)
        };
        // The `#a7` tail (split/merge timings, persistent state split depth) is not used by
        // transaction execution and has no place in tycho's struct; it is left unread.
        Ok(Self(WorkchainDescription {
            enabled_since,
            actual_min_split,
            min_split,
            max_split,
            active,
            accept_msgs,
            zerostate_root_hash,
            zerostate_file_hash,
            version,
            format,
        }))
    }
}

/// Rewrites config param 12 into the `#a6` form `tycho-types` reads, keeping every value.
pub fn fix_workchains(params: &mut BlockchainConfigParams) -> Result<(), ChainConfigError> {
    let err = |source| ChainConfigError::Param { param: 12, source };
    let mut slice = params
        .get_raw(12)
        .map_err(err)?
        .ok_or(err(CellError::CellUnderflow))?;
    let ton: Dict<i32, TonWorkchainDescr> = Dict::load_from(&mut slice).map_err(err)?;
    let mut fixed = Dict::<i32, WorkchainDescription>::new();
    for entry in ton.iter() {
        let (id, TonWorkchainDescr(desc)) = entry.map_err(err)?;
        fixed.set(id, desc).map_err(err)?;
    }
    params.set_workchains(&fixed).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mainnet_config_parses_with_workchain_zero() {
        let config = ChainConfig::mainnet().expect("bundled config loads");
        let parsed = config.parsed(1_750_000_000).expect("executor parses it");
        let wc0 = parsed.workchains.get(&0).expect("workchain 0 is described");
        assert!(wc0.active && wc0.accept_msgs);
        assert!(matches!(wc0.format, WorkchainFormat::Basic(_)));
        // Mainnet's basechain gas price is 400 units of 2^-16 nanoton: 26214400.
        assert_eq!(parsed.gas_prices.gas_price, 26_214_400);
        assert_eq!(parsed.global_id, -239);
    }

    #[test]
    fn unfixed_param_12_is_what_tycho_cannot_read() {
        let root = Boc::decode(MAINNET_CONFIG_BOC).unwrap();
        let params = BlockchainConfigParams::from_raw(root);
        let config = BlockchainConfig {
            address: HashBytes::ZERO,
            params,
        };
        assert!(
            ParsedConfig::parse(config, 1_750_000_000).is_err(),
            "tycho reads TON's param 12 now: the fix can go"
        );
    }

    #[test]
    fn garbage_config_is_an_error() {
        assert!(matches!(
            ChainConfig::from_boc(b"not a boc"),
            Err(ChainConfigError::Boc(_))
        ));
    }
}
