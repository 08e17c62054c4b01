//! `cocoon-tl`: the TL binary codec and the types of the Cocoon API scheme (protocol
//! versions 2 and 3), generated from `schema/*.tl` by `build.rs`. Pure: no I/O, no clocks.
//!
//! - [`types`]: one struct per constructor (bare encoding: fields only; boxed: id + fields);
//! - [`enums`]: one enum per boxed type, one variant per constructor;
//! - [`functions`]: queries, each with `TlFunction::Return`, plus a per-namespace `Any` enum;
//! - [`messages`]: message sets (`schema/messages.tl`), what one peer may send another; every
//!   enum here and in `enums`/`functions` has a `decode` with a typed [`DispatchError`];
//! - [`frame`]: the `len ‖ seqno ‖ payload` framing of a session;
//! - [`json`]: schema-driven decoding to JSON and back, for tools and tests;
//! - [`capture`]: hex captures (frames or one object) to JSON and back, for tools.
#![forbid(unsafe_code)]

pub mod capture;
pub mod codec;
pub mod codes;
mod dispatch;
pub mod frame;
pub mod json;
pub mod schema;

pub use codec::{
    BOOL_FALSE, BOOL_TRUE, BareRead, BareWrite, Error, ErrorKind, Identifiable, Location, Reader,
    Result, TlFunction, TlRead, TlWrite, bytes_len, peek_constructor, write,
};
pub use dispatch::DispatchError;

/// One declaration of the scheme, as compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConstructorInfo {
    /// Full TL name, e.g. `client.runQueryEx`.
    pub name: &'static str,
    /// Constructor id.
    pub id: u32,
    /// The text whose CRC-32 is the id (unless `explicit_id`).
    pub canonical: &'static str,
    /// True when the id is given explicitly in the scheme.
    pub explicit_id: bool,
    /// True for a function (query) declaration.
    pub is_function: bool,
    /// The boxed type it belongs to (for functions: the answer type).
    pub result: &'static str,
    /// Protocol version that introduced it.
    pub since_proto: u32,
}

/// Look a constructor up by id.
pub fn constructor_by_id(id: u32) -> Option<&'static ConstructorInfo> {
    CONSTRUCTORS.iter().find(|c| c.id == id)
}

/// Look a constructor up by its TL name.
pub fn constructor_by_name(name: &str) -> Option<&'static ConstructorInfo> {
    CONSTRUCTORS.iter().find(|c| c.name == name)
}

#[allow(clippy::all, clippy::pedantic, unused_mut)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}
pub use generated::{
    BOXED_TYPES, CONSTRUCTORS, enums, functions, messages, roundtrip_boxed, types,
};

/// Proptest strategies for every constructor (`any_client_run_query_ex()` and so on).
#[cfg(any(test, feature = "arbitrary"))]
#[allow(clippy::all, clippy::pedantic)]
pub mod arbitrary {
    include!(concat!(env!("OUT_DIR"), "/arbitrary.rs"));

    /// Typed encode → decode gives the value back; the JSON codec decodes the same bytes and
    /// encodes them back bit for bit.
    pub fn check_roundtrip<T>(value: &T) -> std::result::Result<(), TestCaseError>
    where
        T: crate::TlWrite + crate::TlRead + PartialEq + std::fmt::Debug,
    {
        let bytes = value.to_bytes();
        let back = T::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, value);
        let json =
            crate::json::decode_boxed(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again =
            crate::json::encode_boxed(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again, bytes.clone());
        let typed = crate::roundtrip_boxed(&bytes)
            .ok_or_else(|| TestCaseError::fail("constructor missing from roundtrip_boxed"))?
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(typed, bytes);
        Ok(())
    }
}

/// Shown by `Debug` instead of the contents of a `bytes` field, which may hold a prompt.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ByteLen(pub usize);

impl std::fmt::Debug for ByteLen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}
