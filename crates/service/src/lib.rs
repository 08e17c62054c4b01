//! `cocoon-service`: what Cocoon's long-running roles share, between the command line (which
//! parses arguments and layered settings) and the role crates (which own their processes):
//!
//! - [`browser`]: the browser guard every local HTTP server puts in front of its routes;
//! - [`admin`]: admin servers' bearer token, Prometheus writer, stats pages and their
//!   routes ([`admin::StatsPages`]), the operator switch ([`admin::Switch`]) and serving;
//! - [`events`]: operator events and the chain clock on the proxy's and worker's admin
//!   pages and `/metrics`;
//! - [`identity`]: a role's RA-TLS identity from this machine's TEE and its peer verifiers;
//! - [`kms`]: the key-release exchange with a `cocoon kms` and its client side;
//! - [`tee`]: which TEE this machine offers (one detection for every command);
//! - [`chain`]: the chain endpoints and trust settings, the [`chain::RootWatcher`] and the
//!   root params' price table;
//! - [`process`]: state directories, token files, logging, the stop signal;
//! - [`setting`]: the keys every role has ([`setting::Common`]) and every admin server has
//!   ([`setting::AdminSettings`]), their checks, and a refused setting named by its key;
//! - [`webui`]: `cocoon-webui`, the pages' shell, charts, formatting and time series
//!   (re-exported: every role's page is built with it);
//! - [`http`]: the one outbound HTTP client builder (`cocoon-http`, re-exported; it sits
//!   below `cocoon-ton` and `cocoon-attest`, which build their clients with it too).
#![forbid(unsafe_code)]

pub use cocoon_webui as webui;

pub mod admin;
pub mod browser;
pub mod chain;
pub mod events;
pub mod identity;
pub mod kms;
pub mod measured;
pub mod process;
mod refused;
pub mod setting;
pub mod tee;

pub use cocoon_http as http;
pub use refused::SettingError;
