//! Attestation for Cocoon (ARCHITECTURE D4): TDX quotes verified with `dcap-qvl`
//! (ring backend, Intel root key pinned), SEV-SNP reports (AMD roots pinned, CRLs from the
//! AMD KDS cache in [`kds`]), simulated evidence for test networks, quote
//! generation through Linux configfs-tsm, and one policy entry point,
//! [`Policy::evaluate`], whose [`VerifiedPeer`] is the only way verified facts reach
//! other crates.
//!
//! Verification is pure: time is always an argument and collateral comes from a
//! [`CollateralSource`] or [`SevCollateral`] that never waits on the network. Fetching it
//! (the PCCS client and [`CollateralFetcher`] in [`pccs`], the KDS client and
//! [`KdsFetcher`] in [`kds`]) is behind the default `fetch` feature, the only part of the
//! crate on tokio and reqwest. [`inspect`] describes verdicts for `cocoon attest`.
//! [`gpu`] verifies NVIDIA GPU confidential-computing evidence (no role requires it yet).
#![forbid(unsafe_code)]

mod cache;
mod error;
mod fs;
pub mod gpu;
pub mod inspect;
pub mod kds;
pub mod measure;
mod model;
pub mod pccs;
mod policy;
#[cfg(feature = "fetch")]
mod refresh;
pub mod sev;
pub mod sim;
pub mod tdx;
#[cfg(test)]
mod test_vectors;
pub mod tsm;

pub use cache::{CacheStats, VerificationCache};
pub use error::AttestError;
#[cfg(feature = "fetch")]
pub use kds::{KdsClient, KdsFetcher};
pub use kds::{SevCollateral, VcekStore};
pub use model::{Backend, Fault, Measurements, TcbStatus, TdxMeasurements, VerifiedPeer};
pub use pccs::Clock;
#[cfg(feature = "fetch")]
pub use pccs::{CollateralFetcher, PccsClient};
pub use policy::{Evidence, Policy, report_data_for_public_key};
pub use sim::SimKey;
pub use tdx::{CollateralSource, CollateralStore, NoCollateral, PckCa, TdxCollateral};
