//! Attestation for Cocoon (ARCHITECTURE D4): TDX quotes verified with `dcap-qvl`
//! (ring backend, Intel root key pinned), SEV-SNP reports (AMD roots pinned, CRLs from the
//! AMD KDS cache in [`kds`]), simulated evidence for test networks, quote
//! generation through Linux configfs-tsm, and one policy entry point,
//! [`Policy::evaluate`], whose [`VerifiedPeer`] is the only way verified facts reach
//! other crates.
#![forbid(unsafe_code)]

pub mod cache;
mod error;
pub mod kds;
mod model;
pub mod pccs;
mod policy;
pub mod sev;
pub mod sim;
pub mod tdx;
pub mod tsm;

pub use error::AttestError;
pub use kds::{KdsClient, KdsFetcher, SevCollateral, VcekStore};
pub use model::{Backend, Measurements, TcbStatus, TdxMeasurements, VerifiedPeer};
pub use pccs::{CollateralFetcher, PccsClient};
pub use policy::{Evidence, Policy, report_data_for_public_key};
pub use sim::SimKey;
pub use tdx::{CollateralStore, PckCa, TdxCollateral};
