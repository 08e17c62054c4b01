//! Following the root contract.
//!
//! The root contract is the network's registry: which proxies exist (and where), which model
//! hashes are allowed, and the params (prices, multipliers, child contract codes). A worker
//! that follows it needs no proxy list of its own and picks up price and params changes. The
//! caller fetches the configuration (`cocoon_ton::chain::load_root_config`) and hands it to
//! [`WorkerHandle::update_root`]; only a configuration whose `version`
//! is higher than the last one applied is taken. Proxy sessions check the proxy against the
//! configuration applied last: its attested image must be in `proxy_hashes`, and with a
//! root address its contract must derive from the root's params.

use std::sync::atomic::Ordering;

use cocoon_ton::root::{RootConfig, model_hash};

use crate::{WorkerConfigError, WorkerHandle};

pub(crate) use cocoon_service::chain::price_table;

/// Worker-facing endpoints of the registered proxies, in seqno order. A registered endpoint
/// is `"host:port"` (one port for everyone) or `"host_workers:port host_clients:port"`.
pub(crate) fn worker_endpoints(cfg: &RootConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in &cfg.registered_proxies {
        if let Some(e) = p.endpoint.0.split_whitespace().next()
            && !out.iter().any(|x| x == e)
        {
            out.push(e.to_owned());
        }
    }
    out
}

/// What [`WorkerHandle::update_root`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootUpdate {
    /// Not newer than the configuration already applied: nothing changed.
    Stale {
        /// The version applied before.
        applied: u32,
    },
    /// Applied.
    Applied {
        /// The configuration's version.
        version: u32,
        /// Proxies connected to from now on.
        proxies: Vec<String>,
        /// The contract params changed (`params_version`): every session was redialled.
        params_changed: bool,
        /// The root lists this worker's model hash. When it does not, the worker reports
        /// itself disabled (proxies would refuse it anyway) until a configuration lists it.
        model_allowed: bool,
    },
}

impl WorkerHandle {
    /// Applies a root configuration: the proxies it registers (plus `extra_proxies`, the
    /// operator's own list) become the proxy set; its prices apply to requests starting from
    /// now; a new `params_version` makes every session reconnect under the new contracts;
    /// a model missing from its whitelist disables the worker; a proxy whose image is no
    /// longer in `proxy_hashes` (with `check_proxy_hashes`) is dropped at once, its running
    /// requests cancelled, and refused when it is redialled.
    ///
    /// A configuration for the other kind of network (`is_test`) is refused.
    pub fn update_root(
        &self,
        cfg: &RootConfig,
        extra_proxies: &[String],
    ) -> Result<RootUpdate, WorkerConfigError> {
        let shared = &self.shared;
        if cfg.params.is_test != shared.is_test {
            return Err(WorkerConfigError::Invalid {
                field: "is_test",
                reason: format!(
                    "the root contract says is_test = {}, this worker is configured with {}",
                    cfg.params.is_test, shared.is_test
                ),
            });
        }
        {
            let mut applied = shared
                .root_version
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(v) = *applied
                && cfg.version <= v
            {
                return Ok(RootUpdate::Stale { applied: v });
            }
            *applied = Some(cfg.version);
        }
        let old = shared.contract_params();
        let params_changed = old
            .as_ref()
            .is_some_and(|o| o.params_version != cfg.params.params_version);
        // Contract addresses are checked against the params from now on when the root
        // carries the worker code (it does on every network deployed with Cocoon's root).
        let new_params = if cfg.params.worker_code.is_some() && (old.is_none() || params_changed) {
            Some(cfg.params.clone())
        } else {
            None
        };
        let had_params = old.is_some();
        self.set_prices_and_params(price_table(&cfg.params), new_params.clone())?;
        // Every open session re-checks its proxy against this configuration (image allowed,
        // contract derived) and closes at once if it no longer passes; handshakes waiting
        // for a first configuration go on.
        shared
            .root
            .send_replace(Some(std::sync::Arc::new(cfg.clone())));
        if new_params.is_some() && !had_params {
            // First params: sessions opened without address checks are redialled so that the
            // worker contract every proxy names is verified.
            self.reconnect_all();
        }
        let model_allowed = cfg.has_model_hash(&model_hash(&shared.model));
        let not_listed = !model_allowed;
        shared.control.send_if_modified(|c| {
            let changed = c.model_not_listed != not_listed;
            c.model_not_listed = not_listed;
            changed
        });
        if !model_allowed {
            tracing::warn!(model = %shared.model, version = cfg.version, "the root contract does not list this worker's model hash; reporting disabled");
        }
        let mut proxies = worker_endpoints(cfg);
        for p in extra_proxies {
            if !proxies.contains(p) {
                proxies.push(p.clone());
            }
        }
        self.set_proxies(&proxies);
        tracing::info!(
            version = cfg.version,
            proxies = proxies.len(),
            params_version = cfg.params.params_version,
            params_changed,
            model_allowed,
            "root configuration applied"
        );
        debug_assert_eq!(
            shared.proxy_cnt.load(Ordering::Relaxed) as usize,
            proxies.len()
        );
        Ok(RootUpdate::Applied {
            version: cfg.version,
            proxies,
            params_changed,
            model_allowed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_ton::messages::ProxyEndpoint;
    use cocoon_ton::root::{CocoonParams, RegisteredProxy};

    #[test]
    fn endpoints_take_the_worker_half_once() {
        let registered_proxies = [
            "10.0.0.1:5000 10.0.0.1:6000",
            "10.0.0.2:5000",
            "10.0.0.1:5000",
        ]
        .iter()
        .enumerate()
        .map(|(i, e)| RegisteredProxy {
            seqno: i as u32,
            endpoint: ProxyEndpoint((*e).to_owned()),
        })
        .collect();
        let cfg = RootConfig {
            owner: cocoon_ton::parse_address(&format!("0:{}", "00".repeat(32))).unwrap(),
            version: 1,
            registered_proxies,
            proxy_hashes: vec![],
            last_proxy_seqno: 0,
            worker_hashes: vec![],
            model_hashes: vec![],
            params: CocoonParams::default(),
        };
        assert_eq!(worker_endpoints(&cfg), ["10.0.0.1:5000", "10.0.0.2:5000"]);
        let p = price_table(&cfg.params);
        assert_eq!(p.price_per_token, 20);
        assert_eq!(p.worker_fee_per_token, 16);
        assert_eq!(p.multipliers.completion, 10_000);
    }
}
