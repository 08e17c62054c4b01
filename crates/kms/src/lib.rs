//! `cocoon-kms`: the key-release role (`cocoon kms serve`), meant to run in a TEE itself.
//!
//! It releases a role's secret keys (the proxy's receipt-signing key, a wallet key, a
//! data-disk key) only to an RA-TLS peer whose attestation verifies and whose image hash the
//! root contract allows for the role it claims, derived from one master secret over role,
//! identity and purpose ([`Master::derive`]). Several instances share the master only after
//! attesting each other ([`load_master`]); on disk the master exists only sealed with a key
//! the TEE derives ([`SealKey`]). The exchange and its client side are in
//! `cocoon_service::kms`; docs/ra-tls.md describes them, docs/operations.md rotation and
//! recovery.
#![forbid(unsafe_code)]

mod allow;
mod derive;
mod master;
mod process;
mod seal;
mod server;
mod settings;

pub use allow::RootAllowlist;
pub use derive::Master;
pub use master::{MasterSource, PeerKms, load_master};
pub use process::{SEALED_MASTER, run};
#[cfg(feature = "snp-seal")]
pub use seal::snp_key_request;
pub use seal::{SealBackend, SealError, SealKey};
pub use server::{KeyService, bound_identity};
pub use settings::{DEFAULTS, Settings};
