//! Low-level cell codec shared by every layout in this crate.
//!
//! Addresses are always `addr_std` without anycast (`0b100`, 8-bit workchain, 256-bit
//! account); coins are `VarUInteger 16` but values above 8 bytes are refused. These are the
//! rules of COCOON's runners, so a cell we accept is one they accept and a cell we build is
//! bit-identical to theirs (see docs/cocoon-compat.md).
//!
//! [`Field`] is implemented for each primitive so that the message and storage structs in
//! [`crate::messages`] can be declared as plain field lists by a macro.

use tycho_types::cell::{Cell, CellBuilder, CellFamily, CellSlice, HashBytes};
use tycho_types::models::StdAddr;

/// A layout error: the cell does not have the expected shape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The cell ran out of bits/refs or overflowed while building.
    #[error("cell: {0}")]
    Cell(#[from] tycho_types::error::Error),
    /// The body starts with another opcode.
    #[error("unexpected opcode {found:#010x}, expected {expected:#010x}")]
    Opcode {
        /// Opcode the parser wanted.
        expected: u32,
        /// Opcode found in the cell.
        found: u32,
    },
    /// An address is not `addr_std` without anycast.
    #[error("address is not a standard internal address (addr_std, no anycast)")]
    BadAddress,
    /// A coins value uses more than 8 bytes (the runners refuse these).
    #[error("coins value of {0} bytes exceeds 8 bytes")]
    CoinsTooLong(u8),
    /// Bits or references left after the last field.
    #[error("{what}: {bits} trailing bits and {refs} trailing refs")]
    Trailing {
        /// Which layout was parsed.
        what: &'static str,
        /// Unread bits.
        bits: u16,
        /// Unread references.
        refs: u8,
    },
    /// A BOC could not be decoded.
    #[error("bad BOC: {0}")]
    Boc(String),
    /// A field holds a value outside its allowed range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Result alias for layout operations.
pub type Result<T, E = LayoutError> = std::result::Result<T, E>;

/// Stores an address: `0b10`, no anycast, i8 workchain,
/// 256-bit account id.
pub fn store_addr(b: &mut CellBuilder, a: &StdAddr) -> Result<()> {
    if a.anycast.is_some() {
        return Err(LayoutError::BadAddress);
    }
    b.store_small_uint(0b100, 3)?;
    b.store_u8(a.workchain as u8)?;
    b.store_u256(&a.address)?;
    Ok(())
}

/// Loads an address: the first 3 bits must be `0b100`.
pub fn load_addr(s: &mut CellSlice<'_>) -> Result<StdAddr> {
    let tag = s.load_small_uint(3)?;
    if tag != 0b100 {
        return Err(LayoutError::BadAddress);
    }
    let wc = s.load_u8()? as i8;
    let address = s.load_u256()?;
    Ok(StdAddr::new(wc, address))
}

/// Stores a coins amount (`VarUInteger 16`, minimal length).
pub fn store_coins(b: &mut CellBuilder, v: u64) -> Result<()> {
    let len = (8 - v.leading_zeros() as u16 / 8) as u8;
    b.store_small_uint(len, 4)?;
    if len > 0 {
        b.store_uint(v, len as u16 * 8)?;
    }
    Ok(())
}

/// Loads a coins amount; like the runners, refuses lengths above 8 bytes.
pub fn load_coins(s: &mut CellSlice<'_>) -> Result<u64> {
    let len = s.load_small_uint(4)?;
    if len > 8 {
        return Err(LayoutError::CoinsTooLong(len));
    }
    if len == 0 {
        return Ok(0);
    }
    Ok(s.load_uint(len as u16 * 8)?)
}

/// Fails with [`LayoutError::Trailing`] if the slice still holds bits or refs.
pub fn expect_end(s: &CellSlice<'_>, what: &'static str) -> Result<()> {
    if s.size_bits() != 0 || s.size_refs() != 0 {
        return Err(LayoutError::Trailing {
            what,
            bits: s.size_bits(),
            refs: s.size_refs(),
        });
    }
    Ok(())
}

/// Decodes a BOC (with or without CRC) into its root cell.
pub fn decode_boc(bytes: &[u8]) -> Result<Cell> {
    tycho_types::boc::Boc::decode(bytes).map_err(|e| LayoutError::Boc(e.to_string()))
}

/// Decodes a base64 BOC.
pub fn decode_boc_base64(s: &str) -> Result<Cell> {
    tycho_types::boc::Boc::decode_base64(s.trim()).map_err(|e| LayoutError::Boc(e.to_string()))
}

/// Encodes a cell as a standard BOC (no CRC, no index).
pub fn encode_boc(cell: &Cell) -> Vec<u8> {
    tycho_types::boc::Boc::encode(cell)
}

/// Encodes a cell as a base64 BOC.
pub fn encode_boc_base64(cell: &Cell) -> String {
    tycho_types::boc::Boc::encode_base64(cell)
}

/// The empty cell (no bits, no refs).
pub fn empty_cell() -> Cell {
    Cell::empty_cell()
}

/// A coins amount (nanoTON), stored as `VarUInteger 16` of at most 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Coins(pub u64);

/// A 2-bit state field (`uint2`): 0 normal, 1 closing, 2 closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct State2(pub u8);

/// A 512-bit Ed25519 signature stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

/// A value stored in a child cell (`^T`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRef<T>(pub T);

/// One field of a layout: how it is stored and loaded.
pub trait Field: Sized {
    /// Appends the field.
    fn store(&self, b: &mut CellBuilder) -> Result<()>;
    /// Reads the field.
    fn load(s: &mut CellSlice<'_>) -> Result<Self>;
}

/// `Field` for a type the cell API stores and loads as is, with `$store` and `$load`.
macro_rules! plain_field {
    ($t:ty, $store:ident, $load:ident) => {
        impl Field for $t {
            fn store(&self, b: &mut CellBuilder) -> Result<()> {
                Ok(b.$store(*self)?)
            }
            fn load(s: &mut CellSlice<'_>) -> Result<Self> {
                Ok(s.$load()?)
            }
        }
    };
}

plain_field!(u64, store_u64, load_u64);
plain_field!(u32, store_u32, load_u32);
plain_field!(bool, store_bit, load_bit);

impl Field for i32 {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        Ok(b.store_u32(*self as u32)?)
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        Ok(s.load_u32()? as i32)
    }
}

impl Field for HashBytes {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        Ok(b.store_u256(self)?)
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        Ok(s.load_u256()?)
    }
}

impl Field for StdAddr {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        store_addr(b, self)
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        load_addr(s)
    }
}

impl Field for Coins {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        store_coins(b, self.0)
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        load_coins(s).map(Coins)
    }
}

impl Field for State2 {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        if self.0 > 3 {
            return Err(LayoutError::Invalid {
                field: "state",
                reason: format!("{} does not fit in 2 bits", self.0),
            });
        }
        Ok(b.store_small_uint(self.0, 2)?)
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        Ok(State2(s.load_small_uint(2)?))
    }
}

impl Field for Signature {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        Ok(b.store_raw(&self.0, 512)?)
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        let mut out = [0u8; 64];
        s.load_raw(&mut out, 512)?;
        Ok(Signature(out))
    }
}

impl Field for Cell {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        Ok(b.store_reference(self.clone())?)
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        Ok(s.load_reference_cloned()?)
    }
}

impl Field for Option<Cell> {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        match self {
            Some(c) => {
                b.store_bit_one()?;
                b.store_reference(c.clone())?;
            }
            None => b.store_bit_zero()?,
        }
        Ok(())
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        if s.load_bit()? {
            Ok(Some(s.load_reference_cloned()?))
        } else {
            Ok(None)
        }
    }
}

impl<T: Layout> Field for InRef<T> {
    fn store(&self, b: &mut CellBuilder) -> Result<()> {
        Ok(b.store_reference(self.0.to_cell()?)?)
    }
    fn load(s: &mut CellSlice<'_>) -> Result<Self> {
        let c = s.load_reference_cloned()?;
        Ok(InRef(T::from_cell(&c)?))
    }
}

/// A whole-cell layout (a storage cell or a message body).
pub trait Layout: Sized {
    /// Name used in errors.
    const NAME: &'static str;
    /// Appends every field.
    fn store_fields(&self, b: &mut CellBuilder) -> Result<()>;
    /// Reads every field (the opcode, if any, is read by the caller).
    fn load_fields(s: &mut CellSlice<'_>) -> Result<Self>;
    /// The opcode this layout starts with, if it is a message body.
    fn opcode() -> Option<u32> {
        None
    }

    /// Builds the cell.
    fn to_cell(&self) -> Result<Cell> {
        let mut b = CellBuilder::new();
        if let Some(op) = Self::opcode() {
            b.store_u32(op)?;
        }
        self.store_fields(&mut b)?;
        Ok(b.build()?)
    }

    /// Parses a cell, requiring the opcode (if any) and nothing left over.
    fn from_cell(c: &Cell) -> Result<Self> {
        let mut s = c.as_slice()?;
        let v = Self::load_from_slice(&mut s)?;
        expect_end(&s, Self::NAME)?;
        Ok(v)
    }

    /// Parses from a slice (opcode included), leaving the rest of the slice unread.
    fn load_from_slice(s: &mut CellSlice<'_>) -> Result<Self> {
        if let Some(expected) = Self::opcode() {
            let found = s.load_u32()?;
            if found != expected {
                return Err(LayoutError::Opcode { expected, found });
            }
        }
        Self::load_fields(s)
    }

    /// Builds the cell and serialises it as a BOC.
    fn to_boc(&self) -> Result<Vec<u8>> {
        Ok(encode_boc(&self.to_cell()?))
    }

    /// Parses a BOC.
    fn from_boc(bytes: &[u8]) -> Result<Self> {
        Self::from_cell(&decode_boc(bytes)?)
    }
}

/// Declares a struct whose cell layout is its fields in order, optionally after an opcode.
#[macro_export]
#[doc(hidden)]
macro_rules! layout {
    (
        $(#[$meta:meta])*
        $name:ident $(= $op:path)? {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $(
                #[doc = concat!("Layout field `", stringify!($field), "`, stored in declaration order.")]
                #[doc = ""]
                $(#[$fmeta])* pub $field: $ty,
            )*
        }

        impl $crate::codec::Layout for $name {
            const NAME: &'static str = stringify!($name);
            #[allow(unused_variables)]
            fn store_fields(&self, b: &mut tycho_types::cell::CellBuilder) -> $crate::codec::Result<()> {
                $( $crate::codec::Field::store(&self.$field, b)?; )*
                Ok(())
            }
            #[allow(unused_variables)]
            fn load_fields(s: &mut tycho_types::cell::CellSlice<'_>) -> $crate::codec::Result<Self> {
                Ok(Self { $( $field: <$ty as $crate::codec::Field>::load(s)?, )* })
            }
            $( fn opcode() -> Option<u32> { Some($op) } )?
        }
    };
}

/// Reads the opcode of a body without consuming it (`None` for bodies shorter than 32 bits).
pub fn peek_opcode(c: &Cell) -> Option<u32> {
    let s = c.as_slice().ok()?;
    s.get_u32(0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn address_layout_is_267_bits() {
        let a = StdAddr::new(-1, HashBytes([7u8; 32]));
        let mut b = CellBuilder::new();
        store_addr(&mut b, &a).unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.bit_len(), 267);
        let mut s = c.as_slice().unwrap();
        assert_eq!(load_addr(&mut s).unwrap(), a);
    }

    #[test]
    fn addr_none_and_var_addr_are_refused() {
        let mut b = CellBuilder::new();
        b.store_small_uint(0, 2).unwrap();
        b.store_zeros(300).unwrap();
        let c = b.build().unwrap();
        assert!(matches!(
            load_addr(&mut c.as_slice().unwrap()),
            Err(LayoutError::BadAddress)
        ));
    }

    #[test]
    fn coins_longer_than_8_bytes_are_refused() {
        let mut b = CellBuilder::new();
        b.store_small_uint(9, 4).unwrap();
        b.store_zeros(72).unwrap();
        let c = b.build().unwrap();
        assert!(matches!(
            load_coins(&mut c.as_slice().unwrap()),
            Err(LayoutError::CoinsTooLong(9))
        ));
    }

    #[test]
    fn coins_encoding_is_minimal() {
        for (v, bits) in [(0u64, 4u16), (1, 12), (255, 12), (256, 20), (u64::MAX, 68)] {
            let mut b = CellBuilder::new();
            store_coins(&mut b, v).unwrap();
            assert_eq!(b.size_bits(), bits, "value {v}");
        }
    }

    proptest! {
        #[test]
        fn coins_round_trip(v in any::<u64>()) {
            let mut b = CellBuilder::new();
            store_coins(&mut b, v).unwrap();
            let c = b.build().unwrap();
            let mut s = c.as_slice().unwrap();
            prop_assert_eq!(load_coins(&mut s).unwrap(), v);
            prop_assert_eq!(s.size_bits(), 0);
        }

        #[test]
        fn address_round_trip(wc in any::<i8>(), a in any::<[u8; 32]>()) {
            let addr = StdAddr::new(wc, HashBytes(a));
            let mut b = CellBuilder::new();
            store_addr(&mut b, &addr).unwrap();
            let c = b.build().unwrap();
            prop_assert_eq!(load_addr(&mut c.as_slice().unwrap()).unwrap(), addr);
        }
    }
}
