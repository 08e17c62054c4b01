//! [`CollateralFetcher`]: collateral served from memory and a [`CollateralStore`], fetched
//! in the background; [`collateral_cached_or_fetched`] for one-off verification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Clock, DEFAULT_REFRESH_MARGIN_SECS, DEFAULT_RETRY_SECS, PccsClient, quote_platform};
use crate::error::AttestError;
use crate::tdx::{CollateralSource, CollateralStore, PckCa, TdxCollateral};

#[derive(Debug, Default)]
struct Tracked {
    /// PCK CA of the platforms with this FMSPC (from a quote or the cached CRL).
    ca: Option<PckCa>,
    current: Option<Arc<TdxCollateral>>,
    last_error: Option<String>,
    /// Clock time of the last fetch attempt.
    last_attempt: Option<u64>,
}

/// What one refresh did.
#[derive(Debug)]
pub struct RefreshOutcome {
    /// The platform refreshed.
    pub fmspc: [u8; 6],
    /// `Ok(expires_at)` of the stored collateral, or why the fetch failed (the previous
    /// collateral, if any, stays in use).
    pub result: Result<u64, AttestError>,
}

/// Collateral served from memory and a cache directory, fetched from a PCCS/PCS when
/// missing and refreshed `margin` seconds before it expires (see the module docs).
pub struct CollateralFetcher {
    client: PccsClient,
    store: CollateralStore,
    margin: u64,
    retry: u64,
    state: Mutex<HashMap<[u8; 6], Tracked>>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for CollateralFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollateralFetcher")
            .field("client", &self.client)
            .field("dir", &self.store.dir())
            .field("margin", &self.margin)
            .finish_non_exhaustive()
    }
}

impl CollateralFetcher {
    /// A fetcher for `client`, caching in `store`. Collateral already in the directory is
    /// loaded (and tracked for refresh); unreadable files are refetched.
    pub fn new(client: PccsClient, store: CollateralStore) -> Self {
        let mut map = HashMap::new();
        for fmspc in store.list() {
            let t = match store.load_unchecked(&fmspc) {
                Ok(c) => Tracked {
                    ca: Some(c.pck_ca),
                    current: Some(Arc::new(c)),
                    ..Tracked::default()
                },
                Err(e) => Tracked {
                    last_error: Some(e.to_string()),
                    ..Tracked::default()
                },
            };
            map.insert(fmspc, t);
        }
        Self {
            client,
            store,
            margin: DEFAULT_REFRESH_MARGIN_SECS,
            retry: DEFAULT_RETRY_SECS,
            state: Mutex::new(map),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Refresh `secs` seconds before the earliest `nextUpdate` (default
    /// [`DEFAULT_REFRESH_MARGIN_SECS`]).
    pub fn with_refresh_margin(mut self, secs: u64) -> Self {
        self.margin = secs;
        self
    }

    /// Background fetches of one FMSPC are at least `secs` apart (default
    /// [`DEFAULT_RETRY_SECS`]), so a failing PCCS or a PCCS without newer collateral is not
    /// asked again on every handshake.
    pub fn with_retry_interval(mut self, secs: u64) -> Self {
        self.retry = secs;
        self
    }

    /// The PCCS client it fetches with.
    pub fn client(&self) -> &PccsClient {
        &self.client
    }

    /// The on-disk store it saves to.
    pub fn store(&self) -> &CollateralStore {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 6], Tracked>> {
        // Every update is a single field assignment: a poisoned map is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The collateral for `fmspc` valid at `now`. A missing one is requested from the
    /// background refresher ([`Self::spawn_refresher`]) and reported as
    /// [`AttestError::MissingCollateral`] naming the FMSPC; an expired one as
    /// [`AttestError::CollateralExpired`] naming the FMSPC and the item. Never blocks on
    /// the network.
    pub fn collateral(
        &self,
        fmspc: &[u8; 6],
        ca: PckCa,
        now: u64,
    ) -> Result<TdxCollateral, AttestError> {
        let mut st = self.lock();
        let t = st.entry(*fmspc).or_default();
        t.ca = Some(ca);
        // Collateral cached for the other PCK CA cannot verify this quote: fetch again.
        let current = t.current.clone().filter(|c| c.pck_ca == ca);
        let Some(c) = current else {
            let last = t
                .last_error
                .as_ref()
                .map(|e| format!("; last fetch failed: {e}"))
                .unwrap_or_default();
            drop(st);
            self.wake.notify_one();
            return Err(AttestError::MissingCollateral {
                what: format!(
                    "TDX collateral for FMSPC {} (PCK {ca} CA): not in {} and not fetched yet \
                     from {}{last}; fetch requested",
                    hex::encode_upper(fmspc),
                    self.store.dir().display(),
                    self.client.base_url(),
                ),
            });
        };
        drop(st);
        if now.saturating_add(self.margin) >= c.expires_at() {
            self.wake.notify_one();
        }
        c.check_window(now, None)?;
        Ok((*c).clone())
    }

    /// [`Self::collateral`] for the FMSPC and PCK CA named by the quote's PCK certificate.
    pub fn collateral_for_quote(
        &self,
        quote: &[u8],
        now: u64,
    ) -> Result<TdxCollateral, AttestError> {
        let (fmspc, ca) = quote_platform(quote)?;
        self.collateral(&fmspc, ca, now)
    }

    /// Fetch the collateral for `fmspc` now; on success write it to the cache directory
    /// (atomically) and serve it from then on. It must be valid at `now` and not older
    /// than the collateral it replaces; otherwise the old one stays.
    pub async fn refresh(
        &self,
        fmspc: &[u8; 6],
        ca: PckCa,
        now: u64,
    ) -> Result<Arc<TdxCollateral>, AttestError> {
        let result = self.fetch_checked(fmspc, ca, now).await;
        let mut st = self.lock();
        let t = st.entry(*fmspc).or_default();
        t.ca = Some(ca);
        t.last_attempt = Some(now);
        match result {
            Ok(c) => {
                t.current = Some(Arc::clone(&c));
                t.last_error = None;
                Ok(c)
            }
            Err(e) => {
                t.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    async fn fetch_checked(
        &self,
        fmspc: &[u8; 6],
        ca: PckCa,
        now: u64,
    ) -> Result<Arc<TdxCollateral>, AttestError> {
        let c = self.client.fetch(fmspc, ca).await?;
        c.check_window(now, None)?;
        let current = self.lock().get(fmspc).and_then(|t| t.current.clone());
        if let Some(old) = current
            && (c.tcb_info_issue < old.tcb_info_issue
                || c.qe_identity_issue < old.qe_identity_issue)
        {
            return Err(AttestError::InvalidCollateral {
                what: format!(
                    "collateral for FMSPC {} from {}",
                    hex::encode_upper(fmspc),
                    self.client.base_url()
                ),
                reason: "older than the cached collateral".into(),
            });
        }
        self.store.save(&c)?;
        Ok(Arc::new(c))
    }

    /// FMSPCs whose collateral is missing or within `margin` of expiry at `now`, whose PCK
    /// CA is known, and that were not tried within the retry interval.
    pub fn due(&self, now: u64) -> Vec<([u8; 6], PckCa)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .filter_map(|(f, t)| {
                let ca = t.ca?;
                if t.last_attempt
                    .is_some_and(|a| a <= now && now < a.saturating_add(self.retry))
                {
                    return None;
                }
                let due = t.current.as_ref().is_none_or(|c| {
                    c.pck_ca != ca || now.saturating_add(self.margin) >= c.expires_at()
                });
                due.then_some((*f, ca))
            })
            .collect();
        out.sort_unstable_by_key(|(f, _)| *f);
        out
    }

    /// Refresh every collateral that is [`Self::due`] at `now`.
    pub async fn refresh_due(&self, now: u64) -> Vec<RefreshOutcome> {
        let mut out = Vec::new();
        for (fmspc, ca) in self.due(now) {
            let result = self.refresh(&fmspc, ca, now).await;
            match &result {
                Ok(c) => tracing::info!(
                    fmspc = %hex::encode_upper(fmspc),
                    expires_at = c.expires_at(),
                    "TDX collateral refreshed"
                ),
                Err(e) => tracing::warn!(
                    fmspc = %hex::encode_upper(fmspc),
                    error = %e,
                    "TDX collateral refresh failed; previous collateral kept"
                ),
            }
            out.push(RefreshOutcome {
                fmspc,
                result: result.map(|c| c.expires_at()),
            });
        }
        out
    }

    /// Run [`Self::refresh_due`] every `interval`, and at once when
    /// [`Self::collateral`] finds a collateral missing or due. Abort the handle to stop.
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

    /// The last fetch error for `fmspc`, if its last fetch failed.
    pub fn last_error(&self, fmspc: &[u8; 6]) -> Option<String> {
        self.lock().get(fmspc).and_then(|t| t.last_error.clone())
    }
}

/// The collateral for `quote` for a one-off verification (`cocoon attest`): from `store` when
/// valid at `now`, else fetched from `client` now (with a `store`, checked and saved there as
/// the background refresher would). Without a `client` the stored one (or why there is none)
/// is returned; with neither, the collateral is missing.
pub async fn collateral_cached_or_fetched(
    quote: &[u8],
    store: Option<&CollateralStore>,
    client: Option<&PccsClient>,
    now: u64,
) -> Result<TdxCollateral, AttestError> {
    let (fmspc, ca) = quote_platform(quote)?;
    let cached = store.map(|s| s.load(&fmspc, now));
    let Some(client) = client else {
        return cached.unwrap_or_else(|| {
            Err(AttestError::MissingCollateral {
                what: "no PCCS and no collateral directory".into(),
            })
        });
    };
    if let Some(Ok(c)) = cached {
        return Ok(c);
    }
    match store {
        Some(store) => CollateralFetcher::new(client.clone(), store.clone())
            .refresh(&fmspc, ca, now)
            .await
            .map(|c| (*c).clone()),
        None => client.fetch(&fmspc, ca).await,
    }
}

/// The fetcher as the handshake's collateral source: memory only; a missing collateral is
/// requested from the refresher ([`CollateralFetcher::spawn_refresher`]) and the handshake
/// fails with `MissingCollateral` naming the FMSPC.
impl CollateralSource for CollateralFetcher {
    fn collateral_for(&self, quote: &[u8], now: u64) -> Result<TdxCollateral, AttestError> {
        self.collateral_for_quote(quote, now)
    }
}
