//! Worker configuration.
//!
//! The worker is configured by its caller (the `cocoon worker` command builds this from the
//! TOML file, env and flags). Everything a peer could influence is validated elsewhere; this
//! module only checks that the operator's own settings make sense, so that a bad setting
//! fails at start with one clear message instead of at the first request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cocoon_engine::{Engine, Tokenizer};
use cocoon_net::BackoffConfig;
use cocoon_openai::PriceTable;
use cocoon_ratls::net::RatlsConnector;

use crate::payout::PayoutSink;

/// Lowest protocol version the worker speaks.
pub(crate) const MIN_PROTO_VERSION: i32 = 1;
/// Highest protocol version the worker speaks: version 2 plus our version 3 additions.
pub(crate) const MAX_PROTO_VERSION: i32 = 3;
/// Largest coefficient the proxies accept (`0 ≤ coefficient < 1e9`).
pub(crate) const MAX_COEFFICIENT: u32 = 999_999_999;

/// Everything the worker needs to run.
pub struct WorkerConfig {
    /// Proxy worker-facing endpoints (`host:port`), one connection each. May start empty:
    /// `WorkerHandle::set_proxies` and `WorkerHandle::update_root` change the set later.
    pub proxies: Vec<String>,
    /// The TON address that owns this worker's earnings.
    pub owner_address: String,
    /// Full model id `Name@revision:sha256`; clients address the model by `Name`.
    pub model: String,
    /// Price coefficient in thousandths (1000 = 1.0×).
    pub coefficient: u32,
    /// Requests served at once, over all proxies; 0: as many as the engine serves at once
    /// (`ModelInfo::max_concurrency`: the embedded engine's slots).
    pub max_active_requests: u32,
    /// Test network (must match the proxy's and the root contract's flag).
    pub is_test: bool,
    /// Network prices: the category multipliers adjust token counts; `worker_fee_per_token`
    /// turns them into nanoTON for the payout threshold.
    pub prices: PriceTable,
    /// Submit a payout once the unpaid signed earnings reach this many nanoTON.
    pub min_payout_nanoton: u128,
    /// Where the best signed payment per proxy is kept (`payments.json`).
    pub state_dir: PathBuf,
    /// The inference engine.
    pub engine: Arc<dyn Engine>,
    /// RA-TLS connector (our certificate, the proxy attestation policy, PoW limit).
    pub connector: RatlsConnector,
    /// HTTP admin server, if any.
    pub admin: Option<AdminConfig>,
    /// Counts tokens of an answer cut short (cancelled, session lost, timed out) when the
    /// engine reported no usage for it; without one such answers bill only reported usage.
    pub tokenizer: Option<Arc<dyn Tokenizer>>,
    /// Where payouts go (the worker contract through a wallet); `None` keeps receipts only.
    pub payout_sink: Option<Arc<dyn PayoutSink>>,
    /// The root contract's child-contract params (with the worker code). When given, the
    /// worker contract address a proxy names in the handshake must be the one derived from
    /// them, our owner, the proxy contract and the proxy key; receipts bound to any other
    /// contract would pay someone else. `None` trusts the proxy's word (test networks).
    pub contract_params: Option<cocoon_ton::root::CocoonParams>,
    /// The root contract this worker follows. When given, the worker serves no proxy before
    /// a root configuration is applied (`WorkerHandle::update_root`), derives each
    /// proxy's contract address from the root's params, the proxy's owner and key and this
    /// address (refusing a proxy that names another one), and derives its own worker
    /// contract from that. `None` (library use without a root): the proxy's contract is
    /// taken from its word.
    pub root_address: Option<cocoon_ton::StdAddr>,
    /// Refuse proxies whose attested image hash is not in the root configuration's
    /// `proxy_hashes` (checked in every handshake and again on every root update). Applies
    /// once a root configuration is applied; without one only the connector's attestation
    /// policy judges the proxy.
    pub check_proxy_hashes: bool,
    /// Intervals and timeouts.
    pub timings: Timings,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("proxies", &self.proxies)
            .field("owner_address", &self.owner_address)
            .field("model", &self.model)
            .field("coefficient", &self.coefficient)
            .field("max_active_requests", &self.max_active_requests)
            .field("is_test", &self.is_test)
            .field("root_address", &self.root_address)
            .field("check_proxy_hashes", &self.check_proxy_hashes)
            .field("state_dir", &self.state_dir)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// The HTTP admin server's settings.
pub use cocoon_service::admin::AdminConfig;

/// Intervals and timeouts.
#[derive(Clone, Debug)]
pub struct Timings {
    /// `worker.updatePaymentStatus` is sent at a random moment in this range (default 10–20 s).
    pub payment_status_interval: (Duration, Duration),
    /// Engine health probe period (default 2 s).
    pub health_interval: Duration,
    /// Timeout of each handshake query (default 30 s).
    pub handshake_timeout: Duration,
    /// Timeout of a payment status query (default 60 s).
    pub payment_status_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// On shutdown, how long running requests may finish before their sessions close.
    pub drain_timeout: Duration,
    /// With a payout wallet, how often the worker contracts not yet seen closed are read to
    /// find those their proxy paid and closed (default 60 s).
    pub contract_check_interval: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            payment_status_interval: (Duration::from_secs(10), Duration::from_secs(20)),
            health_interval: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(30),
            payment_status_timeout: Duration::from_secs(60),
            backoff: BackoffConfig::default(),
            drain_timeout: Duration::from_secs(30),
            contract_check_interval: Duration::from_secs(60),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerConfigError {
    /// Which setting and why.
    #[error("invalid worker setting `{field}`: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WorkerConfigError {
    WorkerConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl WorkerConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), WorkerConfigError> {
        if self.proxies.iter().any(|p| p.trim().is_empty()) {
            return Err(invalid("proxies", "an empty address"));
        }
        if self.proxies.len() > i32::MAX as usize {
            return Err(invalid("proxies", "too many"));
        }
        cocoon_ton::parse_address(&self.owner_address)
            .map_err(|e| invalid("owner_address", e.to_string()))?;
        model_base_name(&self.model).ok_or_else(|| {
            invalid(
                "model",
                "expected `Name@revision:sha256` (or a bare `Name`)",
            )
        })?;
        if self.coefficient > MAX_COEFFICIENT {
            return Err(invalid(
                "coefficient",
                format!("must be at most {MAX_COEFFICIENT}"),
            ));
        }
        if self.max_active_requests > i32::MAX as u32 {
            return Err(invalid(
                "max_active_requests",
                "must be between 0 (the engine's) and 2^31-1",
            ));
        }
        let (lo, hi) = self.timings.payment_status_interval;
        if lo.is_zero() || hi < lo {
            return Err(invalid(
                "timings.payment_status_interval",
                "needs 0 < min ≤ max",
            ));
        }
        if let Some(p) = &self.contract_params
            && p.worker_code.is_none()
        {
            return Err(invalid(
                "contract_params",
                "worker contract code is missing",
            ));
        }
        if self.timings.health_interval.is_zero() {
            return Err(invalid("timings.health_interval", "must be positive"));
        }
        Ok(())
    }

    /// The name clients use for the model (the part before `@`).
    pub fn model_base_name(&self) -> &str {
        model_base_name(&self.model).unwrap_or(&self.model)
    }
}

/// `Name` of `Name@revision:sha256`; `None` if the id is malformed.
pub fn model_base_name(model: &str) -> Option<&str> {
    let (name, rest) = match model.split_once('@') {
        Some((n, r)) => (n, Some(r)),
        None => (model, None),
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    if let Some(rest) = rest {
        let (rev, hash) = rest.split_once(':')?;
        if rev.is_empty()
            || hash.len() != 64
            || !hash.bytes().all(|b| b.is_ascii_hexdigit())
            || rev.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return None;
        }
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids() {
        let h = "ab".repeat(32);
        assert_eq!(model_base_name(&format!("Smol@v1:{h}")), Some("Smol"));
        assert_eq!(model_base_name("Smol"), Some("Smol"));
        assert_eq!(model_base_name(&format!("@v1:{h}")), None);
        assert_eq!(model_base_name("Smol@v1:abc"), None);
        assert_eq!(model_base_name("Smol@v1"), None);
        assert_eq!(model_base_name(&format!("Smol@:{h}")), None);
        assert_eq!(model_base_name("Sm ol"), None);
    }
}
