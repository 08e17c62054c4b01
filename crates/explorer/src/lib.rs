//! `cocoon-explorer`: the network explorer `cocoon explorer` serves, read-only, from any TON
//! endpoint (the devnet of `cocoon up` or toncenter) and the proxies' public stats.
//!
//! - [`history`]: the root's params changes replayed from its transactions, and what a
//!   contract paid out over time (pure, bounded);
//! - [`view`]: the pure core: what was read ([`view::Snapshot`]) and the time in, the page
//!   (models with their prices per 1M tokens by category, proxies with their TEE, image,
//!   stake and commission, workers and capacity per model, tokens served and TON paid over
//!   time, the price history, the allowlisted hashes with what each is) and the JSON of
//!   `/api/network` out;
//! - [`verify`]: the explorer's own RA-TLS handshake with each registered proxy (as a
//!   client without money does) and its verdict, bounded and cached;
//! - [`server`]: the reads (each under a timeout; a source that fails keeps its last good
//!   answer, shown as stale with its age) and the HTTP server behind the browser guard.
#![forbid(unsafe_code)]

pub mod history;
pub mod server;
pub mod verify;
pub mod view;

pub use server::{ExplorerConfig, spawn};

/// Most entries shown of any list the root keeps (allowlists, registered proxies).
pub const MAX_LIST: usize = 256;
