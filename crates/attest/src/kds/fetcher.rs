//! [`KdsFetcher`]: KDS data served from memory and a [`VcekStore`], fetched in the
//! background; [`crl_cached_or_fetched`] for one-off verification.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    CLOCK_SKEW_SECS, DEFAULT_CRL_MAX_AGE_SECS, DEFAULT_REFRESH_MARGIN_SECS, DEFAULT_RETRY_SECS,
    KdsClient, KdsRoots, SevCertChain, SevCollateralSource, SevCrl, Vcek, VcekKey, VcekStore,
    fetch_error,
};
use crate::error::AttestError;
use crate::pccs::Clock;
use crate::sev::SevGeneration;

/// One cached item and its fetch bookkeeping.
#[derive(Debug)]
struct Slot<T> {
    current: Option<Arc<T>>,
    /// Someone asked for it (a lookup, or [`KdsFetcher::with_products`]).
    wanted: bool,
    /// Clock time of the last fetch attempt and of the last successful fetch.
    last_attempt: Option<u64>,
    fetched_at: Option<u64>,
    last_error: Option<String>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            current: None,
            wanted: false,
            last_attempt: None,
            fetched_at: None,
            last_error: None,
        }
    }
}

impl<T> Slot<T> {
    fn retry_ok(&self, now: u64, retry: u64) -> bool {
        !self
            .last_attempt
            .is_some_and(|a| a <= now && now < a.saturating_add(retry))
    }

    fn record<E: ToString>(&mut self, now: u64, result: &Result<Arc<T>, E>) {
        self.last_attempt = Some(now);
        match result {
            Ok(v) => {
                self.current = Some(Arc::clone(v));
                self.fetched_at = Some(now);
                self.last_error = None;
            }
            Err(e) => self.last_error = Some(e.to_string()),
        }
    }

    fn last_error_suffix(&self) -> String {
        self.last_error
            .as_ref()
            .map(|e| format!("; last fetch failed: {e}"))
            .unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct State {
    chains: HashMap<SevGeneration, Slot<SevCertChain>>,
    crls: HashMap<SevGeneration, Slot<SevCrl>>,
    vceks: HashMap<VcekKey, Slot<Vcek>>,
}

/// Marks `key` wanted in `slots`; its current value, and the suffix naming its last fetch
/// error for a "missing" message.
fn want<K: Eq + std::hash::Hash, T>(
    slots: &mut HashMap<K, Slot<T>>,
    key: K,
) -> (Option<Arc<T>>, String) {
    let slot = slots.entry(key).or_default();
    slot.wanted = true;
    (slot.current.clone(), slot.last_error_suffix())
}

/// The keys in `slots` that are wanted, not tried within `retry` seconds of `now`, and
/// `stale` (missing, expiring or too old).
fn due_keys<K: Clone, T>(
    slots: &HashMap<K, Slot<T>>,
    now: u64,
    retry: u64,
    stale: impl Fn(&Slot<T>) -> bool,
) -> Vec<K> {
    slots
        .iter()
        .filter(|(_, s)| s.wanted && s.retry_ok(now, retry))
        .filter(|(_, s)| stale(s))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Records an attempt at `key` in `slots` (wanted from now on) and passes `result` on.
fn record_in<K: Eq + std::hash::Hash, T>(
    slots: &mut HashMap<K, Slot<T>>,
    key: K,
    now: u64,
    result: Result<Arc<T>, AttestError>,
) -> Result<Arc<T>, AttestError> {
    let slot = slots.entry(key).or_default();
    slot.wanted = true;
    slot.record(now, &result);
    result
}

/// What a background pass may fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KdsItem {
    /// A generation's certificate chain.
    CertChain(SevGeneration),
    /// A generation's CRL.
    Crl(SevGeneration),
    /// One chip's VCEK at one TCB.
    Vcek(VcekKey),
}

impl std::fmt::Display for KdsItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KdsItem::CertChain(p) => write!(f, "{p} cert_chain"),
            KdsItem::Crl(p) => write!(f, "{p} CRL"),
            KdsItem::Vcek(k) => write!(f, "{k}"),
        }
    }
}

/// What one background fetch did: `Ok(())` when the item was verified and stored, or why
/// not (the previous value, if any, stays in use).
#[derive(Debug)]
pub struct KdsRefreshOutcome {
    /// What was fetched.
    pub item: KdsItem,
    /// Whether it was verified and stored.
    pub result: Result<(), AttestError>,
}

/// KDS data served from memory and a [`VcekStore`], fetched in the background when missing
/// or due (see the module docs). Lookups never touch the network.
pub struct KdsFetcher {
    client: KdsClient,
    store: VcekStore,
    margin: u64,
    retry: u64,
    crl_max_age: u64,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for KdsFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdsFetcher")
            .field("client", &self.client)
            .field("dir", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl KdsFetcher {
    /// A fetcher for `client`, caching in `store`. What the directory already holds is
    /// loaded if it verifies at `now` (and tracked for refresh); anything else is ignored
    /// and fetched again when needed.
    pub fn new(client: KdsClient, store: VcekStore, now: u64) -> Self {
        let mut st = State::default();
        for product in SevGeneration::ALL {
            if let Ok(chain) = store.load_chain(product, now) {
                let chain = Arc::new(chain);
                for key in store.list_vceks(product) {
                    if let Ok(v) = store.load_vcek_with(&key, &chain, now) {
                        let slot = st.vceks.entry(key).or_default();
                        slot.current = Some(Arc::new(v));
                        slot.wanted = true;
                    }
                }
                let slot = st.chains.entry(product).or_default();
                slot.current = Some(chain);
                slot.wanted = true;
            }
            if let Ok(crl) = store.load_crl(product) {
                let slot = st.crls.entry(product).or_default();
                slot.current = Some(Arc::new(crl));
                slot.wanted = true;
            }
        }
        Self {
            client,
            store,
            margin: DEFAULT_REFRESH_MARGIN_SECS,
            retry: DEFAULT_RETRY_SECS,
            crl_max_age: DEFAULT_CRL_MAX_AGE_SECS,
            state: Mutex::new(st),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Fetch the CRLs of `products` in the next background pass, before any handshake
    /// asks (otherwise a product's first SEV-SNP handshake fails and triggers the fetch).
    pub fn with_products(self, products: &[SevGeneration]) -> Self {
        {
            let mut st = self.lock();
            for p in products {
                st.crls.entry(*p).or_default().wanted = true;
            }
        }
        self
    }

    /// Refresh a CRL `secs` before its `nextUpdate` (default
    /// [`DEFAULT_REFRESH_MARGIN_SECS`]).
    pub fn with_refresh_margin(mut self, secs: u64) -> Self {
        self.margin = secs;
        self
    }

    /// Fetches of one item are at least `secs` apart (default [`DEFAULT_RETRY_SECS`]).
    pub fn with_retry_interval(mut self, secs: u64) -> Self {
        self.retry = secs;
        self
    }

    /// Fetch each CRL again at least every `secs` (default [`DEFAULT_CRL_MAX_AGE_SECS`]).
    pub fn with_crl_max_age(mut self, secs: u64) -> Self {
        self.crl_max_age = secs;
        self
    }

    /// The KDS client it fetches with.
    pub fn client(&self) -> &KdsClient {
        &self.client
    }

    /// The on-disk store it saves to.
    pub fn store(&self) -> &VcekStore {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a few field assignments: a poisoned map is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn missing(&self, what: String, path: PathBuf, last: String) -> AttestError {
        self.wake.notify_one();
        AttestError::MissingCollateral {
            what: format!(
                "{what}: not in {} and not fetched yet from {}{last}; fetch requested",
                path.display(),
                self.client.base_url()
            ),
        }
    }

    /// The verified CRL of `product` (its freshness is judged by [`check_revocation`]). A
    /// missing one is requested from the background refresher; one within `margin` of its
    /// `nextUpdate` wakes it. Never touches the network.
    pub fn crl(&self, product: SevGeneration, now: u64) -> Result<Arc<SevCrl>, AttestError> {
        let (current, last) = want(&mut self.lock().crls, product);
        let Some(crl) = current else {
            return Err(self.missing(
                format!("AMD {product} CRL"),
                self.store.crl_path(product),
                last,
            ));
        };
        if now.saturating_add(self.margin) >= crl.next_update {
            self.wake.notify_one();
        }
        Ok(crl)
    }

    /// The verified ASK/ARK chain of `product`, valid at `now`. Never touches the network.
    pub fn chain(
        &self,
        product: SevGeneration,
        now: u64,
    ) -> Result<Arc<SevCertChain>, AttestError> {
        let (current, last) = want(&mut self.lock().chains, product);
        match current {
            Some(c) if now <= c.not_after => Ok(c),
            _ => Err(self.missing(
                format!("AMD {product} cert_chain"),
                self.store.chain_path(product),
                last,
            )),
        }
    }

    /// The verified VCEK `key`, valid at `now` (for an attester whose host gives it no
    /// certificate table). A missing one is requested from the background refresher.
    /// Never touches the network.
    pub fn vcek(&self, key: &VcekKey, now: u64) -> Result<Arc<Vcek>, AttestError> {
        key.check()
            .map_err(|r| AttestError::KdsConfig(format!("{key}: {r}")))?;
        let mut st = self.lock();
        st.chains.entry(key.product).or_default().wanted = true;
        let (current, last) = want(&mut st.vceks, key.clone());
        drop(st);
        match current {
            Some(v) if now <= v.not_after => Ok(v),
            _ => Err(self.missing(key.to_string(), self.store.vcek_path(key), last)),
        }
    }

    /// Items that are wanted and missing or due at `now`, and were not tried within the
    /// retry interval: chains first (VCEK checks need them), then CRLs, then VCEKs.
    pub fn due(&self, now: u64) -> Vec<KdsItem> {
        let st = self.lock();
        let near = |t: u64| now.saturating_add(self.margin) >= t;
        let mut chains = due_keys(&st.chains, now, self.retry, |s| {
            s.current.as_ref().is_none_or(|c| near(c.not_after))
        });
        chains.sort_unstable();
        let mut crls = due_keys(&st.crls, now, self.retry, |s| {
            s.current.as_ref().is_none_or(|c| near(c.next_update))
                || s.fetched_at
                    .is_none_or(|f| now >= f.saturating_add(self.crl_max_age))
        });
        crls.sort_unstable();
        let mut vceks = due_keys(&st.vceks, now, self.retry, |s| {
            s.current.as_ref().is_none_or(|v| near(v.not_after))
        });
        vceks.sort_by(|a, b| (a.product, &a.hwid).cmp(&(b.product, &b.hwid)));
        chains
            .into_iter()
            .map(KdsItem::CertChain)
            .chain(crls.into_iter().map(KdsItem::Crl))
            .chain(vceks.into_iter().map(KdsItem::Vcek))
            .collect()
    }

    /// Fetch the chain of `product` now; verified, it is stored and served.
    pub async fn refresh_chain(
        &self,
        product: SevGeneration,
        now: u64,
    ) -> Result<Arc<SevCertChain>, AttestError> {
        let result = async {
            let c = self
                .client
                .fetch_cert_chain(product, self.store.roots(), now)
                .await?;
            self.store.save_chain(&c)?;
            Ok(Arc::new(c))
        }
        .await;
        record_in(&mut self.lock().chains, product, now, result)
    }

    /// Fetch the CRL of `product` now. A verified CRL replaces the cached one unless it is
    /// older (a rollback); it is stored and served.
    pub async fn refresh_crl(
        &self,
        product: SevGeneration,
        now: u64,
    ) -> Result<Arc<SevCrl>, AttestError> {
        let result = async {
            let crl = self.client.fetch_crl(product, self.store.roots()).await?;
            let current = self
                .lock()
                .crls
                .get(&product)
                .and_then(|s| s.current.clone());
            if let Some(old) = current
                && crl.older_than(&old)
            {
                return Err(fetch_error(
                    product,
                    "CRL",
                    &self.client.crl_url(product),
                    format!(
                        "served CRL (thisUpdate {}) is older than the cached one (thisUpdate {})",
                        crl.this_update, old.this_update
                    ),
                ));
            }
            if crl.this_update > now.saturating_add(CLOCK_SKEW_SECS) {
                return Err(fetch_error(
                    product,
                    "CRL",
                    &self.client.crl_url(product),
                    format!(
                        "thisUpdate {} is in the future (now {now})",
                        crl.this_update
                    ),
                ));
            }
            self.store.save_crl(&crl)?;
            Ok(Arc::new(crl))
        }
        .await;
        record_in(&mut self.lock().crls, product, now, result)
    }

    /// Fetch the VCEK `key` now (and its product's chain, if not cached); verified, it is
    /// stored and served.
    pub async fn refresh_vcek(&self, key: &VcekKey, now: u64) -> Result<Arc<Vcek>, AttestError> {
        let result = async {
            let cached = self
                .lock()
                .chains
                .get(&key.product)
                .and_then(|s| s.current.clone())
                .filter(|c| now <= c.not_after);
            let chain = match cached {
                Some(c) => c,
                None => self.refresh_chain(key.product, now).await?,
            };
            let v = self.client.fetch_vcek(key, &chain, now).await?;
            self.store.save_vcek(&v)?;
            Ok(Arc::new(v))
        }
        .await;
        record_in(&mut self.lock().vceks, key.clone(), now, result)
    }

    /// Fetch every item that is [`Self::due`] at `now`.
    pub async fn refresh_due(&self, now: u64) -> Vec<KdsRefreshOutcome> {
        let mut out = Vec::new();
        for item in self.due(now) {
            let result = match &item {
                KdsItem::CertChain(p) => self.refresh_chain(*p, now).await.map(drop),
                KdsItem::Crl(p) => self.refresh_crl(*p, now).await.map(drop),
                KdsItem::Vcek(k) => self.refresh_vcek(k, now).await.map(drop),
            };
            match &result {
                Ok(()) => tracing::info!(item = %item, "AMD KDS data refreshed"),
                Err(e) => tracing::warn!(
                    item = %item,
                    error = %e,
                    "AMD KDS refresh failed; previous data kept"
                ),
            }
            out.push(KdsRefreshOutcome { item, result });
        }
        out
    }

    /// Run [`Self::refresh_due`] every `interval`, and at once when a lookup finds
    /// something missing or due. Abort the handle to stop.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        clock: Clock,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        crate::refresh::spawn(
            self,
            |f| &f.wake,
            clock,
            interval,
            |f, now| async move {
                f.refresh_due(now).await;
            },
        )
    }

    /// The last fetch error of `item`, if its last fetch failed.
    pub fn last_error(&self, item: &KdsItem) -> Option<String> {
        let st = self.lock();
        match item {
            KdsItem::CertChain(p) => st.chains.get(p).and_then(|s| s.last_error.clone()),
            KdsItem::Crl(p) => st.crls.get(p).and_then(|s| s.last_error.clone()),
            KdsItem::Vcek(k) => st.vceks.get(k).and_then(|s| s.last_error.clone()),
        }
    }
}

/// The fetcher as the handshake's CRL source: memory only, misses wake the refresher.
impl SevCollateralSource for KdsFetcher {
    fn crl(&self, product: SevGeneration, now: u64) -> Result<Arc<SevCrl>, AttestError> {
        KdsFetcher::crl(self, product, now)
    }

    fn describe(&self) -> String {
        format!(
            "AMD KDS cache {} from {}",
            self.store.dir().display(),
            self.client.base_url()
        )
    }
}

/// AMD's CRL of `product` for a one-off verification (`cocoon attest`): from `store` while it
/// is fresh at `now`, else fetched from `client` now and, with a `store`, saved there as the
/// background refresher would. Without a `client` the stored CRL is returned whatever its
/// age (the verification judges it); with neither, the CRL is missing.
pub async fn crl_cached_or_fetched(
    product: SevGeneration,
    store: Option<&VcekStore>,
    client: Option<&KdsClient>,
    now: u64,
) -> Result<Arc<SevCrl>, AttestError> {
    let cached = store.map(|s| s.load_crl(product));
    let Some(client) = client else {
        return match cached {
            Some(r) => r.map(Arc::new),
            None => Err(AttestError::MissingCollateral {
                what: format!("AMD {product} CRL: no KDS and no cache directory"),
            }),
        };
    };
    if let Some(Ok(c)) = &cached
        && now <= c.next_update()
    {
        return Ok(Arc::new(c.clone()));
    }
    match store {
        Some(store) => {
            KdsFetcher::new(client.clone(), store.clone(), now)
                .refresh_crl(product, now)
                .await
        }
        None => client
            .fetch_crl(product, &KdsRoots::amd())
            .await
            .map(Arc::new),
    }
}
