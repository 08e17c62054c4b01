//! Which images may have which role's keys: the root contract's proxy and worker hashes, read
//! through the `Chain` trait and cached for a short time; one read at a time, each with a time
//! limit, so peers cannot make the KMS read the chain without bound.

use std::sync::Arc;
use std::time::Duration;

use cocoon_service::kms::{KmsRole, Refusal};
use cocoon_ton::HashBytes;
use cocoon_ton::StdAddr;
use cocoon_ton::chain::{Chain, load_root_config};
use cocoon_ton::root::RootConfig;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Time limit on one read of the root.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The root's allowlists, cached for `ttl`.
pub struct RootAllowlist<C> {
    chain: C,
    root: StdAddr,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<RootConfig>)>>,
}

impl<C: Chain> RootAllowlist<C> {
    /// Reads `root` on `chain`, at most once per `ttl`.
    pub fn new(chain: C, root: StdAddr, ttl: Duration) -> Self {
        RootAllowlist {
            chain,
            root,
            ttl,
            cached: Mutex::new(None),
        }
    }

    /// The root's config, from the cache while it is younger than the TTL. A failed read
    /// leaves the cache as it was (an expired config is not used).
    async fn config(&self) -> Result<Arc<RootConfig>, String> {
        let mut cached = self.cached.lock().await;
        if let Some((at, c)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(c));
        }
        let c = tokio::time::timeout(READ_TIMEOUT, load_root_config(&self.chain, &self.root))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let c = Arc::new(c);
        *cached = Some((Instant::now(), Arc::clone(&c)));
        Ok(c)
    }

    /// Whether the root allows `image` for `role` (proxy or worker).
    pub async fn allows(&self, role: KmsRole, image: &[u8; 32]) -> Result<bool, Refusal> {
        let c = self.config().await.map_err(|e| {
            tracing::warn!(root = %self.root, error = %e, "kms: cannot read the root contract");
            Refusal::RootUnavailable
        })?;
        let h = HashBytes(*image);
        Ok(match role {
            KmsRole::Proxy => c.has_proxy_hash(&h),
            KmsRole::Worker => c.has_worker_hash(&h),
            KmsRole::Kms => false,
        })
    }
}
