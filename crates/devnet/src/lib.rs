//! `cocoon-devnet`: an embedded local TON chain for development and tests.
//!
//! There is no local TON network to run here (no lite-server or validator builds without
//! GitHub), so the devnet is the Anvil/Hardhat pattern: the real
//! compiled contracts run in a pure-Rust TVM (`tycho-vm` + `tycho-executor`, which matched
//! `@ton/sandbox` gas exactly on every transaction we compared) under the real TON mainnet
//! configuration, and the chain is served over the same toncenter v2 HTTP API that production
//! uses. Services, tests and `cocoon up` therefore talk to the devnet with the very client
//! they use against mainnet.
//!
//! - [`config`]: the mainnet config BOC and the one fix tycho needs (param 12).
//! - [`chain`]: the chain core ([`Devnet`]): accounts, clock, message queue, getters,
//!   persistence.
//! - [`stack`]: toncenter's get-method stack JSON <-> TVM stack values.
//! - [`api`]: the axum server (toncenter v2 subset + `/_devnet/*` controls).
//! - [`root`]: deploys Cocoon's root contract at start-up.
//! - [`run`]: start-up and serving (what `cocoon devnet` runs).
//! - [`fake`]: extra endpoints over the same chain whose answers tests rewrite (lying nodes).
#![forbid(unsafe_code)]

pub mod api;
pub mod chain;
pub mod config;
pub mod fake;
pub mod root;
pub mod run;
pub mod stack;

pub use chain::{Devnet, DevnetError, GetMethodId, TxRecord};
