//! The chain and trust settings every role that reads TON shares (proxy, worker, client):
//! which toncenter endpoints confirm a read and how many must agree (`ton_url`/`ton_urls`,
//! `ton_api_key_file`/`ton_api_key_files`, `ton_quorum`), which extra CA bundle HTTPS
//! clients trust (`extra_ca_file`, `extra_ca_in_tee`), and the [`RootWatcher`] that follows
//! the root contract, keeping the last agreed configuration when the endpoints disagree.
//!
//! Inside a TEE the host controls the disk, the network and the environment, so nothing
//! from the environment extends the trust store (`SSL_CERT_FILE` is not read), an extra
//! bundle inside a real TEE needs `extra_ca_in_tee = true` as well, and security-relevant
//! reads go through [`QuorumChain`].

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_openai::{Multipliers, PriceTable};
use cocoon_ton::StdAddr;
use cocoon_ton::ToncenterConfig;
use cocoon_ton::chain::{Chain, ChainError, load_root_config, load_root_config_timed};
use cocoon_ton::root::{CocoonParams, RootConfig};
use cocoon_ton::{ChainClock, Drift, DriftCheck};
use cocoon_ton::{QuorumChain, QuorumConfig, QuorumConfigError, check_quorum};
use futures::future::BoxFuture;
use rustls::pki_types::CertificateDer;

use crate::identity::TeeChoice;
use crate::refused::SettingError;

/// The chain client of a role: one endpoint (quorum 1) behaves as a plain toncenter client.
pub type Ton = QuorumChain;

/// A role's endpoint settings, as its defaults file declares them.
pub struct TonSettings<'a> {
    /// `ton_url`: the one endpoint when `ton_urls` is empty.
    pub url: &'a str,
    /// Whether `ton_url` was set by the operator (not left at its default).
    pub url_given: bool,
    /// `ton_urls`: independently operated endpoints.
    pub urls: &'a [String],
    /// `ton_api_key_file`: the key for `ton_url` (or for every endpoint of `ton_urls`).
    pub key_file: &'a str,
    /// `ton_api_key_files`: one per `ton_urls` entry, `-` for none.
    pub key_files: &'a [String],
    /// `ton_quorum`: endpoints that must give the same answer.
    pub quorum: u32,
}

impl TonSettings<'_> {
    /// The endpoints in use.
    pub fn endpoints(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.to_owned()]
        } else {
            self.urls.to_vec()
        }
    }

    /// Refuses what cannot confirm a read, naming the key.
    pub fn check(&self) -> Result<(), SettingError> {
        if !self.urls.is_empty() && self.url_given {
            return Err(SettingError::new(
                "ton_url",
                "set ton_url or ton_urls, not both",
            ));
        }
        let urls = self.endpoints();
        let key = if self.urls.is_empty() {
            "ton_url"
        } else {
            "ton_urls"
        };
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(SettingError::new(
                    key,
                    format!("{u:?} is not an http(s):// URL"),
                ));
            }
        }
        check_quorum(&urls, self.quorum as usize).map_err(|e| match e {
            QuorumConfigError::NoEndpoints => SettingError::new("ton_url", "required"),
            QuorumConfigError::ZeroQuorum => SettingError::new("ton_quorum", "must be at least 1"),
            QuorumConfigError::QuorumAboveEndpoints { quorum, endpoints } => SettingError::new(
                "ton_quorum",
                format!(
                    "{quorum} endpoints cannot agree when only {endpoints} are configured \
                     (ton_url/ton_urls)"
                ),
            ),
            QuorumConfigError::Duplicate(u) => SettingError::new(
                key,
                format!(
                    "{u} is listed twice (same scheme, host and port); one server cannot count \
                     as two"
                ),
            ),
            other => SettingError::new(key, other.to_string()),
        })?;
        if !self.key_files.is_empty() {
            if self.urls.is_empty() {
                return Err(SettingError::new(
                    "ton_api_key_files",
                    "goes with ton_urls (ton_url takes ton_api_key_file)",
                ));
            }
            if !self.key_file.is_empty() {
                return Err(SettingError::new(
                    "ton_api_key_file",
                    "set ton_api_key_file or ton_api_key_files, not both",
                ));
            }
            if self.key_files.len() != self.urls.len() {
                return Err(SettingError::new(
                    "ton_api_key_files",
                    format!(
                        "{} entries for {} ton_urls (one each, \"-\" for none)",
                        self.key_files.len(),
                        self.urls.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The API key file of endpoint `i`, if any.
    fn key_file_of(&self, i: usize) -> Option<&str> {
        let f = match self.key_files.get(i) {
            Some(f) => f.as_str(),
            None => self.key_file,
        };
        (!f.is_empty() && f != "-").then_some(f)
    }

    /// The chain client: one toncenter client per endpoint, each with its own key and
    /// `extra_roots`, confirmed by `ton_quorum`.
    pub fn chain(&self, extra_roots: &[CertificateDer<'static>]) -> Result<Ton, String> {
        let mut endpoints = Vec::new();
        for (i, url) in self.endpoints().into_iter().enumerate() {
            let mut cfg = ToncenterConfig::new(url);
            if let Some(f) = self.key_file_of(i) {
                let k = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
                cfg.api_key = Some(k.trim().to_owned());
            }
            cfg.extra_roots = extra_roots.to_vec();
            endpoints.push(cfg);
        }
        QuorumChain::toncenter(endpoints, QuorumConfig::new(self.quorum as usize))
            .map_err(|e| e.to_string())
    }
}

/// Reads a PEM bundle of CA certificates (at least one).
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Checks `extra_ca_file`: readable, and inside a real TEE (`tee` is `tdx`, `sev-snp`, or
/// `auto` finding one) only with `extra_ca_in_tee`, since there the host controls the disk.
pub fn check_extra_ca(
    extra_ca_file: &str,
    extra_ca_in_tee: bool,
    tee: TeeChoice,
) -> Result<(), SettingError> {
    if extra_ca_file.is_empty() {
        return Ok(());
    }
    if let Ok(b @ (cocoon_attest::Backend::Tdx | cocoon_attest::Backend::SevSnp)) = tee.resolve()
        && !extra_ca_in_tee
    {
        return Err(SettingError::new(
            "extra_ca_file",
            format!(
                "refused inside a TEE ({}): the host controls the disk, so an extra CA lets it \
                 impersonate any server; set extra_ca_in_tee = true to trust it anyway",
                b.name()
            ),
        ));
    }
    load_ca_bundle(Path::new(extra_ca_file))
        .map(|_| ())
        .map_err(|e| SettingError::new("extra_ca_file", e))
}

/// The certificates of `extra_ca_file` (none when empty).
pub fn extra_roots(extra_ca_file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    if extra_ca_file.is_empty() {
        return Ok(Vec::new());
    }
    load_ca_bundle(Path::new(extra_ca_file)).map_err(|e| format!("extra_ca_file {e}"))
}

/// The price table of the root's params: what workers adjust their usage with and what
/// proxies charge by.
pub fn price_table(p: &CocoonParams) -> PriceTable {
    PriceTable {
        price_per_token: p.price_per_token,
        worker_fee_per_token: p.worker_fee_per_token,
        multipliers: Multipliers {
            prompt: p.prompt_tokens_price_multiplier,
            cached: p.cached_tokens_price_multiplier,
            completion: p.completion_tokens_price_multiplier,
            reasoning: p.reasoning_tokens_price_multiplier,
        },
    }
}

/// Reads the root contract's configuration, retrying for up to `patience` while the chain
/// is not reachable yet (a devnet still starting) or its endpoints do not agree yet.
pub async fn load_root_patiently<C: Chain>(
    chain: &C,
    root: &StdAddr,
    patience: Duration,
) -> Result<RootConfig, String> {
    let end = tokio::time::Instant::now() + patience;
    loop {
        match load_root_config(chain, root).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() >= end => {
                return Err(format!("cannot read the root contract {root}: {e}"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "root contract not readable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One periodic read of the root configuration.
#[derive(Debug)]
pub enum RootRead {
    /// The endpoints agreed on this configuration, read from the chain's state at this time
    /// (`sync_utime`, when the endpoints report it).
    Agreed(Box<RootConfig>, Option<u64>),
    /// They did not: the caller keeps its last agreed configuration. Logged as the operator
    /// event `ton_no_quorum` (with endpoints and answer hashes, never payloads).
    NoQuorum,
    /// The read failed otherwise (endpoint down, contract unreadable): kept as well.
    Failed,
}

/// Reads the root configuration for a role's poll; see [`RootRead`].
pub async fn poll_root<C: Chain>(chain: &C, root: &StdAddr) -> RootRead {
    match load_root_config_timed(chain, root).await {
        Ok((c, utime)) => RootRead::Agreed(Box::new(c), utime),
        Err(e @ ChainError::NoQuorum { .. }) => {
            tracing::error!(
                root = %root,
                error = %e,
                "ton_no_quorum: the chain endpoints do not agree on the root configuration; \
                 keeping the last agreed one"
            );
            RootRead::NoQuorum
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the root contract; keeping the last one");
            RootRead::Failed
        }
    }
}

/// The local Unix time.
pub fn local_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The chain's clock as a role sees it: a [`ChainClock`] fed with the block times of the
/// root watcher's reads and a [`DriftCheck`] with the role's `clock_drift_max_seconds`.
/// Cloned into whatever shows it (admin pages, `/metrics`) or needs the chain's time.
#[derive(Debug, Clone)]
pub struct ChainTime(Arc<Mutex<(ChainClock, DriftCheck)>>);

impl ChainTime {
    /// No observation yet; a local clock more than `max_drift_secs` off is reported (0: off).
    pub fn new(max_drift_secs: u64) -> Self {
        ChainTime(Arc::new(Mutex::new((
            ChainClock::new(),
            DriftCheck::new(max_drift_secs),
        ))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (ChainClock, DriftCheck)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a block time seen at `local_now`; says when the local clock crossed the
    /// tolerance.
    pub fn observe(&self, sync_utime: u64, local_now: u64) -> Option<Drift> {
        let mut g = self.lock();
        let (clock, check) = &mut *g;
        clock.observe(sync_utime, local_now);
        check.check(clock)
    }

    /// Seconds the local clock is ahead of the chain's (negative: behind), once observed.
    pub fn offset(&self) -> Option<i64> {
        self.lock().0.offset()
    }

    /// Whether the local clock is outside the tolerance.
    pub fn drifted(&self) -> bool {
        self.lock().1.drifted()
    }

    /// The tolerance in seconds (0: the check is off).
    pub fn max_drift_secs(&self) -> u64 {
        self.lock().1.max_secs()
    }

    /// The chain's time at local time `local_now`, by the estimate (`local_now` until a
    /// block time was observed).
    pub fn chain_now(&self, local_now: u64) -> u64 {
        self.lock().0.chain_now(local_now)
    }
}

/// What a [`RootWatcher`] tells its role besides applying configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// The endpoints did not agree on the root configuration.
    NoQuorum,
    /// The local clock left (or came back within) the tolerance around the chain's.
    Clock(Drift),
}

/// The operator event's text for a clock change: (`clock_drift` or `clock_agrees`, detail).
pub fn drift_event(d: Drift, max_secs: u64) -> (&'static str, String) {
    let side = |o: i64| {
        if o >= 0 {
            format!("{o} s ahead of")
        } else {
            format!("{} s behind", o.unsigned_abs())
        }
    };
    match d {
        Drift::Drifted { offset } => (
            "clock_drift",
            format!(
                "the local clock is {} the chain's (last block time; tolerance {max_secs} s): \
                 fix the host's time (NTP); contracts judge delays and expiries by the chain's",
                side(offset)
            ),
        ),
        Drift::Agrees { offset } => (
            "clock_agrees",
            format!(
                "the local clock is back within {max_secs} s of the chain's ({})",
                side(offset)
            ),
        ),
    }
}

/// One step a role takes when the root configuration moves to a newer version (it gets its
/// own copy of the configuration).
pub type RootHook<'a> = Box<dyn FnMut(RootConfig) -> BoxFuture<'a, Result<(), String>> + Send + 'a>;

/// What one poll of a [`RootWatcher`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// A newer version was applied by every hook.
    Applied(u32),
    /// Nothing newer (or the read failed, or the endpoints disagreed).
    Unchanged,
    /// A hook refused the newer version; it is tried again at the next poll.
    Refused {
        /// The refused version.
        version: u32,
        /// The hook's reason.
        error: String,
    },
    /// The endpoints did not agree: the last agreed configuration stays.
    NoQuorum,
}

/// Follows the root contract: every `every`, reads its configuration and, when it is newer
/// than the last applied one, runs the role's hooks in order (e.g. the proxy's ledger moves
/// to the new params before the network side learns them). A hook that fails stops the
/// rest and leaves the version unapplied, so the next poll runs them all again.
pub struct RootWatcher<C> {
    chain: C,
    root: StdAddr,
    every: Duration,
    applied: u32,
    time: ChainTime,
    events: Vec<WatchEvent>,
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// The least time between two reads of the root when a role wakes its watcher early.
pub const ROOT_WAKE_FLOOR: Duration = Duration::from_secs(1);

impl<C: Chain> RootWatcher<C> {
    /// Watches `root` on `chain`; `applied` is the version the role started with.
    pub fn new(chain: C, root: StdAddr, every: Duration, applied: u32) -> Self {
        RootWatcher {
            chain,
            root,
            every,
            applied,
            time: ChainTime::new(0),
            events: Vec::new(),
            wake: None,
        }
    }

    /// Feeds `time` with the block time of each read (by default a clock of its own with the
    /// drift check off).
    pub fn with_time(mut self, time: ChainTime) -> Self {
        self.time = time;
        self
    }

    /// The chain's time as this watcher's reads see it.
    pub fn time(&self) -> &ChainTime {
        &self.time
    }

    /// The events of the polls so far that nobody took yet (what [`RootWatcher::run`] hands
    /// to its role).
    pub fn take_events(&mut self) -> Vec<WatchEvent> {
        std::mem::take(&mut self.events)
    }

    /// Reads the root early (at most once per [`ROOT_WAKE_FLOOR`]) when `wake` is notified:
    /// a role that learns from a peer that the root may have changed (a proxy naming a
    /// contract the known params do not give) need not wait for the next poll.
    pub fn with_wake(mut self, wake: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// The last version every hook applied.
    pub fn applied(&self) -> u32 {
        self.applied
    }

    /// One read and, if newer, the hooks.
    pub async fn poll_once(&mut self, hooks: &mut [RootHook<'_>]) -> Polled {
        let read = poll_root(&self.chain, &self.root).await;
        if let RootRead::Agreed(_, Some(utime)) = &read
            && let Some(d) = self.time.observe(*utime, local_now())
        {
            let (kind, detail) = drift_event(d, self.time.max_drift_secs());
            match d {
                Drift::Drifted { offset } => tracing::warn!(offset, "{kind}: {detail}"),
                Drift::Agrees { offset } => tracing::info!(offset, "{kind}: {detail}"),
            }
            self.events.push(WatchEvent::Clock(d));
        }
        match read {
            RootRead::Agreed(c, _) if c.version > self.applied => {
                for h in hooks.iter_mut() {
                    if let Err(error) = h(c.as_ref().clone()).await {
                        tracing::error!(version = c.version, %error, "root configuration refused");
                        return Polled::Refused {
                            version: c.version,
                            error,
                        };
                    }
                }
                self.applied = c.version;
                Polled::Applied(c.version)
            }
            RootRead::NoQuorum => {
                self.events.push(WatchEvent::NoQuorum);
                Polled::NoQuorum
            }
            RootRead::Agreed(..) | RootRead::Failed => Polled::Unchanged,
        }
    }

    /// Polls at once and then every `every`, forever (until the future is dropped), so a
    /// local clock far from the chain's is reported as the role starts; `on_event` hears
    /// each time the endpoints disagree and each time the local clock leaves or rejoins the
    /// chain's (the proxy and the worker record operator events; the watcher itself logs
    /// the clock's changes).
    pub async fn run(mut self, mut hooks: Vec<RootHook<'_>>, mut on_event: impl FnMut(WatchEvent)) {
        loop {
            self.poll_once(&mut hooks).await;
            for e in self.take_events() {
                on_event(e);
            }
            match self.wake.clone() {
                Some(w) => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.every) => {}
                        _ = w.notified() => {
                            tracing::debug!("root read early: a peer suggests a newer configuration");
                            tokio::time::sleep(ROOT_WAKE_FLOOR.min(self.every)).await;
                        }
                    }
                }
                None => tokio::time::sleep(self.every).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use cocoon_ton::chain::fake::FakeChain;

    use super::*;

    fn config(version: u32) -> RootConfig {
        let owner = StdAddr::new(0, cocoon_ton::HashBytes([1; 32]));
        RootConfig {
            owner,
            version,
            proxy_hashes: Vec::new(),
            registered_proxies: Vec::new(),
            last_proxy_seqno: 0,
            worker_hashes: Vec::new(),
            model_hashes: Vec::new(),
            params: Default::default(),
        }
    }

    #[tokio::test]
    async fn hooks_run_in_order_once_per_newer_version_and_a_refusal_is_retried() {
        let chain = FakeChain::default();
        chain.set_disagreeing(true);
        let root = StdAddr::new(0, cocoon_ton::HashBytes([2; 32]));
        let mut w = RootWatcher::new(chain.clone(), root, Duration::from_secs(1), 1);
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let refuse = Arc::new(Mutex::new(true));
        let (l1, l2, r) = (log.clone(), log.clone(), refuse.clone());
        let mut hooks: Vec<RootHook<'_>> = vec![
            Box::new(move |c: RootConfig| {
                let (l, r, v) = (l1.clone(), r.clone(), c.version);
                Box::pin(async move {
                    l.lock().unwrap().push(format!("first {v}"));
                    if *r.lock().unwrap() {
                        return Err("not yet".to_owned());
                    }
                    Ok(())
                })
            }),
            Box::new(move |c: RootConfig| {
                let (l, v) = (l2.clone(), c.version);
                Box::pin(async move {
                    l.lock().unwrap().push(format!("second {v}"));
                    Ok(())
                })
            }),
        ];
        // The endpoints disagree: nothing runs, the caller is told.
        assert_eq!(w.poll_once(&mut hooks).await, Polled::NoQuorum);
        // Not newer than what the role started with.
        chain.set_disagreeing(false);
        chain.set_root(&config(1)).unwrap();
        assert_eq!(w.poll_once(&mut hooks).await, Polled::Unchanged);
        // Newer, but the first hook refuses: the second never runs, the version stays.
        chain.set_root(&config(2)).unwrap();
        assert!(matches!(
            w.poll_once(&mut hooks).await,
            Polled::Refused { version: 2, .. }
        ));
        assert_eq!(w.applied(), 1);
        *refuse.lock().unwrap() = false;
        assert_eq!(w.poll_once(&mut hooks).await, Polled::Applied(2));
        assert_eq!(w.poll_once(&mut hooks).await, Polled::Unchanged);
        assert_eq!(*log.lock().unwrap(), vec!["first 2", "first 2", "second 2"]);
    }

    #[tokio::test]
    async fn run_reports_a_far_clock_at_start_not_one_interval_later() {
        let chain = FakeChain::default();
        chain.set_root(&config(1)).unwrap();
        chain.set_utime(local_now() + 7_200);
        let root = StdAddr::new(0, cocoon_ton::HashBytes([2; 32]));
        let time = ChainTime::new(120);
        let w =
            RootWatcher::new(chain, root, Duration::from_secs(3_600), 1).with_time(time.clone());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let run = w.run(Vec::new(), move |e| s2.lock().unwrap().push(e));
        tokio::pin!(run);
        // The first poll runs before the first hour-long sleep.
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen.lock().unwrap().is_empty() && tokio::time::Instant::now() < give_up {
            tokio::select! {
                _ = &mut run => unreachable!("run returned"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        let seen = seen.lock().unwrap().clone();
        assert!(
            matches!(
                seen[..],
                [WatchEvent::Clock(Drift::Drifted {
                    offset: -7_201..=-7_199
                })]
            ),
            "{seen:?}"
        );
        assert!(time.drifted());
        let (kind, detail) = drift_event(Drift::Drifted { offset: -7_200 }, 120);
        assert_eq!(kind, "clock_drift");
        assert!(detail.contains("7200 s behind the chain's"), "{detail}");
        let (kind, detail) = drift_event(Drift::Agrees { offset: 3 }, 120);
        assert_eq!(kind, "clock_agrees");
        assert!(
            detail.contains("within 120 s") && detail.contains("3 s ahead of"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn a_woken_watcher_reads_the_root_early_but_not_more_than_once_a_second() {
        let chain = FakeChain::default();
        chain.set_root(&config(1)).unwrap();
        let root = StdAddr::new(0, cocoon_ton::HashBytes([2; 32]));
        let wake = Arc::new(tokio::sync::Notify::new());
        let w = RootWatcher::new(chain.clone(), root, Duration::from_secs(3600), 1)
            .with_wake(wake.clone());
        let seen = Arc::new(Mutex::new(Vec::<u32>::new()));
        let s2 = seen.clone();
        let hooks: Vec<RootHook<'static>> = vec![Box::new(move |c: RootConfig| {
            let s = s2.clone();
            Box::pin(async move {
                s.lock().unwrap().push(c.version);
                Ok(())
            })
        })];
        let task = tokio::spawn(w.run(hooks, |_| {}));
        // The read at start finds version 1, already applied; version 2 comes after it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        chain.set_root(&config(2)).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(seen.lock().unwrap().is_empty(), "no read before the hour");
        let t0 = tokio::time::Instant::now();
        wake.notify_one();
        while seen.lock().unwrap().is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "not read when woken"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(t0.elapsed() >= ROOT_WAKE_FLOOR, "{:?}", t0.elapsed());
        assert_eq!(*seen.lock().unwrap(), vec![2]);
        task.abort();
    }

    #[test]
    fn endpoint_settings_are_checked_naming_the_key() {
        let urls2 = vec![
            "https://a.example".to_owned(),
            "https://b.example".to_owned(),
        ];
        let t = |urls: &[String], quorum, url_given| {
            TonSettings {
                url: "http://127.0.0.1:8081",
                url_given,
                urls,
                key_file: "",
                key_files: &[],
                quorum,
            }
            .check()
        };
        assert!(t(&[], 1, false).is_ok());
        assert!(t(&urls2, 2, false).is_ok());
        assert_eq!(t(&[], 0, false).unwrap_err().key, "ton_quorum");
        assert!(
            t(&urls2, 3, false)
                .unwrap_err()
                .reason
                .starts_with("3 endpoints cannot agree")
        );
        assert_eq!(t(&urls2, 1, true).unwrap_err().key, "ton_url");
        let dup = vec![
            "https://a.example".to_owned(),
            "https://A.example/".to_owned(),
        ];
        assert!(
            t(&dup, 1, false)
                .unwrap_err()
                .reason
                .contains("listed twice")
        );
        let ftp = vec!["ftp://a.example".to_owned()];
        assert!(
            t(&ftp, 1, false)
                .unwrap_err()
                .reason
                .contains("not an http(s)://")
        );
    }

    #[test]
    fn per_endpoint_keys_and_ca_bundles() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = dir.path().join("k1");
        std::fs::write(&k1, "secret-one\n").unwrap();
        let urls = vec!["http://a.example".to_owned(), "http://b.example".to_owned()];
        let files = vec![k1.display().to_string(), "-".to_owned()];
        let t = TonSettings {
            url: "",
            url_given: false,
            urls: &urls,
            key_file: "",
            key_files: &files,
            quorum: 2,
        };
        assert_eq!(t.key_file_of(0), Some(k1.to_str().unwrap()));
        assert_eq!(t.key_file_of(1), None);
        let q = t.chain(&[]).unwrap();
        assert!(!format!("{q:?}").contains("secret"), "{q:?}");
        let short = vec!["/k1".to_owned()];
        let e = TonSettings {
            key_files: &short,
            ..t
        }
        .check()
        .unwrap_err();
        assert_eq!(e.key, "ton_api_key_files");
        // A bundle without certificates, or no file, is refused; a real one loads.
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        assert!(
            load_ca_bundle(&bad)
                .unwrap_err()
                .contains("no PEM certificate")
        );
        assert!(load_ca_bundle(&dir.path().join("missing.pem")).is_err());
        let good = dir.path().join("ca.pem");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert_eq!(load_ca_bundle(&good).unwrap().len(), 1);
        // Inside a TEE the bundle needs the second key.
        use cocoon_attest::Backend;
        let g = good.to_str().unwrap();
        let e = check_extra_ca(g, false, TeeChoice::Fixed(Backend::Tdx)).unwrap_err();
        assert!(e.reason.contains("refused inside a TEE (tdx)"), "{e}");
        check_extra_ca(g, true, TeeChoice::Fixed(Backend::SevSnp)).unwrap();
        check_extra_ca(g, false, TeeChoice::Fixed(Backend::Sim)).unwrap();
        check_extra_ca("", false, TeeChoice::Fixed(Backend::Tdx)).unwrap();
        assert!(
            check_extra_ca(bad.to_str().unwrap(), false, TeeChoice::Fixed(Backend::Sim)).is_err()
        );
    }
}
