//! The explorer's pure core: what it has read ([`Snapshot`]) turned into the page and the
//! JSON of `/api/network` at a given time. No I/O and no clock: the server hands both in.
//!
//! Everything a proxy's stats or the chain said is clipped ([`clip`]) and escaped by the page
//! shell; counts are bounded where they are read.

use std::collections::BTreeMap;

use cocoon_openai::usage::{COEFFICIENT_ONE, adjust_tokens};
use cocoon_ton::HashBytes;
use cocoon_ton::root::{RootConfig, model_hash};
use cocoon_webui::chart::{self, ChartOpts, Series};
use cocoon_webui::fmt;
use cocoon_webui::html::{Card, Cell, Page, Table, Tone};
use cocoon_webui::series::{History, Span};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::history::{PaidTo, Payouts, RootHistory};
use crate::verify::{Checked, Verdict, client_endpoint};

/// Longest text kept from a proxy's stats.
pub const MAX_TEXT: usize = 200;
/// Most models kept from one proxy's stats.
pub const MAX_MODELS: usize = 64;
/// Tokens per price unit shown: prices are per million tokens.
pub const PER: u64 = 1_000_000;
/// The series of tokens served (all proxies together) in [`Snapshot::tokens`].
pub const TOKENS: &str = "tokens served";

/// `s` cut to [`MAX_TEXT`] characters.
pub fn clip(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

/// The last answer of a source, kept with its time, and the last failure.
#[derive(Debug, Clone)]
pub struct Fetched<T> {
    /// The last good answer.
    pub data: Option<T>,
    /// When it came (unix seconds; 0: never).
    pub at: u64,
    /// Why the last try failed (`None`: it did not).
    pub error: Option<String>,
}

impl<T> Default for Fetched<T> {
    fn default() -> Self {
        Fetched {
            data: None,
            at: 0,
            error: None,
        }
    }
}

impl<T> Fetched<T> {
    /// A good answer at `now`.
    pub fn ok(&mut self, data: T, now: u64) {
        self.data = Some(data);
        self.at = now;
        self.error = None;
    }

    /// A failed try (the last good answer stays).
    pub fn failed(&mut self, error: impl Into<String>) {
        self.error = Some(clip(&error.into()));
    }

    /// `live`, `stale` (a good answer older than `max_age` or a failed last try) or
    /// `unreachable` (no good answer yet), with its tone.
    pub fn status(&self, now: u64, max_age: u64) -> (&'static str, Tone) {
        match &self.data {
            None => ("unreachable", Tone::Bad),
            Some(_) if self.error.is_some() || now.saturating_sub(self.at) > max_age => {
                ("stale", Tone::Warn)
            }
            Some(_) => ("live", Tone::Good),
        }
    }
}

/// What a followed proxy's `/public.json` says of its TEE and image is its own report
/// (unauthenticated); the explorer's RA-TLS handshake ([`crate::verify`]) is what verifies
/// them.
pub const ATTESTATION_NOTE: &str =
    "reported by the proxy; the verified columns come from the explorer's RA-TLS handshake";

/// Whether the image hash `s` reports is in the root's `proxy_hashes`: `None` without a
/// root read or without a reported hash; a reported value that is no 32-byte hex hash is
/// not allowed.
fn reported_image_allowed(s: &ProxyPublic, cfg: Option<&RootConfig>) -> Option<bool> {
    let cfg = cfg?;
    if s.image_hash.is_empty() {
        return None;
    }
    Some(hash_allowed(&s.image_hash, cfg))
}

/// Whether `hex_hash` is a 32-byte hex hash in the root's `proxy_hashes`.
fn hash_allowed(hex_hash: &str, cfg: &RootConfig) -> bool {
    let mut h = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut h).is_ok() && cfg.has_proxy_hash(&HashBytes(h))
}

/// A proxy as the explorer's own handshake found it, checked against the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedView {
    /// Whether the proxy is verified: attested under the policy, its certificate valid, its
    /// measured image in the root's `proxy_hashes`.
    pub verified: bool,
    /// `verified`, or `not verified: <reason>`, or `not checked ...`.
    pub label: String,
    /// The TEE of the verified evidence.
    pub tee: Option<String>,
    /// The measured image hash, hex.
    pub image_hash: Option<String>,
    /// Whether the measured image is in the root's `proxy_hashes` (`None`: no attestation
    /// or no root read).
    pub image_allowed: Option<bool>,
    /// The TCB status of the evidence.
    pub tcb_status: Option<String>,
    /// Until when its certificate is valid (unix seconds).
    pub valid_until: Option<u64>,
    /// When the handshake was (unix seconds).
    pub checked_at: Option<u64>,
}

impl VerifiedView {
    /// The view of the last check `c` (`None`: none yet; `checking`: whether the explorer
    /// dials proxies at all) under the root `cfg` at `now`.
    pub fn of(
        c: Option<&Checked>,
        cfg: Option<&RootConfig>,
        now: u64,
        checking: bool,
    ) -> VerifiedView {
        let mut v = VerifiedView {
            verified: false,
            label: String::new(),
            tee: None,
            image_hash: None,
            image_allowed: None,
            tcb_status: None,
            valid_until: None,
            checked_at: c.map(|c| c.at),
        };
        let Some(c) = c else {
            v.label = if checking {
                "not checked yet".into()
            } else {
                "not checked (the explorer dials no proxy)".into()
            };
            return v;
        };
        match &c.verdict {
            Verdict::Attested {
                tee,
                image_hash,
                tcb_status,
                valid_until,
            } => {
                v.tee = Some(tee.clone());
                v.image_hash = Some(image_hash.clone());
                v.tcb_status = Some(tcb_status.clone());
                v.valid_until = Some(*valid_until);
                v.image_allowed = cfg.map(|cfg| hash_allowed(image_hash, cfg));
                v.label = if *valid_until < now {
                    format!(
                        "not verified: its certificate expired at {}",
                        fmt::utc(*valid_until)
                    )
                } else {
                    match v.image_allowed {
                        None => "not verified: attested, the root not read yet".into(),
                        Some(false) => format!(
                            "not verified: attested image {} is not in the root's proxy_hashes",
                            short(image_hash)
                        ),
                        Some(true) => {
                            v.verified = true;
                            "verified".into()
                        }
                    }
                };
            }
            Verdict::Refused { reason, .. } | Verdict::Unreachable { reason } => {
                v.label = format!("not verified: {reason}");
            }
        }
        v
    }

    /// Whether the proxy reports (in its `/public.json`) another image than the one its
    /// handshake attested.
    pub fn mismatch(&self, reported: Option<&ProxyPublic>) -> bool {
        match (&self.image_hash, reported) {
            (Some(attested), Some(r)) => !r.image_hash.eq_ignore_ascii_case(attested),
            _ => false,
        }
    }

    fn tone(&self) -> Tone {
        if self.verified {
            Tone::Good
        } else if self.checked_at.is_none() {
            Tone::Warn
        } else {
            Tone::Bad
        }
    }

    fn json(&self, reported: Option<&ProxyPublic>) -> Value {
        json!({
            "verified": self.verified,
            "status": self.label,
            "tee": self.tee,
            "image_hash": self.image_hash,
            "image_allowed": self.image_allowed,
            "tcb_status": self.tcb_status,
            "valid_until": self.valid_until,
            "checked_at": self.checked_at,
            "image_mismatch": self.mismatch(reported),
        })
    }
}

/// The first 16 hex digits of a hash, for a label.
fn short(h: &str) -> String {
    let s: String = h.chars().take(16).collect();
    if h.chars().count() > 16 {
        format!("{s}…")
    } else {
        s
    }
}

/// The host of an `http(s)://host[:port]/...` URL.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    Some(host_of(authority))
}

/// The host of `host[:port]` (an IPv6 host in brackets keeps them).
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| &authority[..h.len() + 1]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// A proxy's `/public.json` (see the proxy's `PublicStats`), as the explorer reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyPublic {
    /// The proxy contract.
    pub proxy_sc: String,
    /// Test network.
    pub is_test: bool,
    /// Taking requests.
    pub enabled: bool,
    /// The root version it follows.
    pub root_version: u32,
    /// Its TEE.
    pub tee: String,
    /// Its image hash, hex.
    pub image_hash: String,
    /// Requests answered.
    pub requests_success: u64,
    /// Adjusted tokens billed.
    pub adjusted_tokens_total: u64,
    /// Supply per model.
    pub models: Vec<ModelSupply>,
}

/// One model's workers at a proxy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSupply {
    /// The full model id.
    pub model: String,
    /// Enabled workers.
    pub workers: u32,
    /// Requests at once.
    pub capacity: u64,
    /// Requests running.
    pub running: u64,
    /// Lowest coefficient, thousandths.
    pub coefficient_min: i32,
    /// Highest coefficient, thousandths.
    pub coefficient_max: i32,
}

impl ProxyPublic {
    /// Parses a `/public.json` body, clipping its texts and keeping at most [`MAX_MODELS`]
    /// models.
    pub fn parse(body: &[u8]) -> Result<ProxyPublic, String> {
        let mut p: ProxyPublic = serde_json::from_slice(body)
            .map_err(|e| format!("not the proxy's public JSON: {e}"))?;
        p.proxy_sc = clip(&p.proxy_sc);
        p.tee = clip(&p.tee);
        p.image_hash = clip(&p.image_hash);
        p.models.truncate(MAX_MODELS);
        for m in &mut p.models {
            m.model = clip(&m.model);
        }
        Ok(p)
    }
}

/// What the chain says about the root.
#[derive(Debug, Clone)]
pub struct RootRead {
    /// Its configuration.
    pub config: RootConfig,
    /// The chain's time of the state read, when reported.
    pub chain_time: Option<u64>,
}

/// A proxy the explorer follows: its stats and its contract on chain.
#[derive(Debug, Clone, Default)]
pub struct ProxySource {
    /// Its public stats URL.
    pub url: String,
    /// Its last stats.
    pub stats: Fetched<ProxyPublic>,
    /// Its contract's balance (the stake), nanoTON.
    pub balance: Fetched<u128>,
    /// What its contract paid out.
    pub payouts: Payouts,
}

/// Everything the explorer has read.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The root contract's address.
    pub root_address: String,
    /// The chain endpoints (URLs without credentials).
    pub endpoints: Vec<String>,
    /// Seconds between reads: an answer older than twice this is stale.
    pub poll_secs: u64,
    /// The root.
    pub root: Fetched<RootRead>,
    /// Its params history.
    pub history: RootHistory,
    /// The proxies.
    pub proxies: Vec<ProxySource>,
    /// Tokens served by the proxies, sampled at each read.
    pub tokens: History,
    /// Whether the explorer dials the registered proxies to verify them.
    pub checking: bool,
    /// The last verdict of each registered proxy's client endpoint (as registered).
    pub verified: BTreeMap<String, Checked>,
}

/// The price per [`PER`] tokens of a category with `multiplier` at `coefficient`, nanoTON,
/// as a proxy bills it.
pub fn per_million(price_per_token: u64, multiplier: u32, coefficient: u64) -> u128 {
    u128::from(adjust_tokens(PER, coefficient, multiplier.into())) * u128::from(price_per_token)
}

/// What a hash in the root's allowlists is.
fn meaning(kind: &str, h: &HashBytes, names: &BTreeMap<[u8; 32], String>) -> String {
    if h.0 == cocoon_attest::sim::sim_image_hash() {
        return "the simulated TEE image (test networks only)".into();
    }
    if h.0 == cocoon_attest::tdx::fake_tdx_image_hash() {
        return "COCOON's fake-TDX test image (test networks only)".into();
    }
    if let Some(n) = names.get(&h.0) {
        return n.clone();
    }
    match kind {
        "model" => "a model no followed proxy serves (the root keeps only its hash)".into(),
        _ => "an image no followed proxy runs".into(),
    }
}

/// One model across the followed proxies.
#[derive(Debug, Default)]
struct ModelRow {
    workers: u64,
    capacity: u64,
    running: u64,
    proxies: u64,
    coefficient_min: Option<i32>,
}

impl Snapshot {
    /// The running total of the value the followed proxy contracts sent to `to` (all of it
    /// when `None`), after each event in time order, for a chart; what fell out of the kept
    /// events counts from the start.
    fn paid_over_time(&self, to: Option<PaidTo>) -> Vec<(u64, f64)> {
        let mut events: Vec<(u64, u128)> = Vec::new();
        let mut sum = 0u128;
        for p in &self.proxies {
            let q = &p.payouts;
            let (total, kept): (u128, Vec<(u64, u128)>) = match to {
                Some(k) => (
                    match k {
                        PaidTo::Workers => q.to_workers,
                        PaidTo::Clients => q.to_clients,
                        PaidTo::Other => q.total - q.to_workers - q.to_clients,
                    },
                    q.of(k).collect(),
                ),
                None => (q.total, q.events.iter().map(|e| (e.0, e.1)).collect()),
            };
            sum = sum.saturating_add(total.saturating_sub(kept.iter().map(|e| e.1).sum()));
            events.extend(kept);
        }
        events.sort_by_key(|e| e.0);
        events
            .into_iter()
            .map(|(t, v)| {
                sum = sum.saturating_add(v);
                (t, sum as f64)
            })
            .collect()
    }

    /// An empty snapshot of `root_address` read every `poll_secs` from `endpoints`, following
    /// the proxies whose public stats are at `proxy_urls`.
    pub fn new(
        root_address: &str,
        endpoints: Vec<String>,
        poll_secs: u64,
        proxy_urls: &[String],
    ) -> Snapshot {
        Snapshot {
            root_address: root_address.to_owned(),
            endpoints,
            poll_secs,
            proxies: proxy_urls
                .iter()
                .map(|u| ProxySource {
                    url: u.clone(),
                    ..ProxySource::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    /// The view of the registered endpoint `endpoint`.
    fn registered_view(&self, endpoint: &str, now: u64) -> VerifiedView {
        let cfg = self.root.data.as_ref().map(|r| &r.config);
        VerifiedView::of(self.verified.get(endpoint), cfg, now, self.checking)
    }

    /// The registered endpoint a followed proxy's stats URL belongs to: the only one
    /// checked whose client endpoint has the URL's host (`None` when none or several do).
    fn endpoint_of(&self, stats_url: &str) -> Option<&str> {
        let host = url_host(stats_url)?;
        let mut found = self
            .verified
            .keys()
            .filter(|ep| host_of(client_endpoint(ep)) == host);
        let one = found.next()?;
        found.next().is_none().then_some(one.as_str())
    }

    /// The view of the followed proxy at `stats_url`.
    fn followed_view(&self, stats_url: &str, now: u64) -> VerifiedView {
        match self.endpoint_of(stats_url) {
            Some(ep) => self.registered_view(ep, now),
            None => {
                let mut v = VerifiedView::of(None, None, now, self.checking);
                if self.checking {
                    v.label = "not verified: no one registered endpoint on its host".into();
                }
                v
            }
        }
    }

    fn max_age(&self) -> u64 {
        self.poll_secs.max(1).saturating_mul(2).saturating_add(5)
    }

    fn models(&self) -> BTreeMap<String, ModelRow> {
        let mut out: BTreeMap<String, ModelRow> = BTreeMap::new();
        for p in &self.proxies {
            let Some(s) = &p.stats.data else { continue };
            for m in &s.models {
                let r = out.entry(m.model.clone()).or_default();
                r.workers += u64::from(m.workers);
                r.capacity = r.capacity.saturating_add(m.capacity);
                r.running = r.running.saturating_add(m.running);
                r.proxies += 1;
                let c = m.coefficient_min.max(0);
                r.coefficient_min = Some(r.coefficient_min.map_or(c, |x| x.min(c)));
            }
        }
        out
    }

    /// Names of known hashes: models the proxies serve, images they run.
    fn names(&self) -> BTreeMap<[u8; 32], String> {
        let mut n = BTreeMap::new();
        for model in self.models().keys() {
            n.insert(model_hash(model).0, format!("model {model}"));
        }
        for p in &self.proxies {
            let Some(s) = &p.stats.data else { continue };
            let mut h = [0u8; 32];
            if hex::decode_to_slice(&s.image_hash, &mut h).is_ok() {
                n.entry(h)
                    .or_insert_with(|| format!("the image of proxy {}", s.proxy_sc));
            }
        }
        n
    }

    /// The figures of `/api/network` at `now`.
    pub fn json(&self, now: u64) -> Value {
        let max_age = self.max_age();
        let (root_status, _) = self.root.status(now, max_age);
        let cfg = self.root.data.as_ref().map(|r| &r.config);
        let names = self.names();
        let models = self.models();
        let prices = cfg.map(|c| {
            let p = &c.params;
            let cat = |price: u64| {
                json!({
                    "prompt": per_million(price, p.prompt_tokens_price_multiplier, COEFFICIENT_ONE).to_string(),
                    "cached": per_million(price, p.cached_tokens_price_multiplier, COEFFICIENT_ONE).to_string(),
                    "completion": per_million(price, p.completion_tokens_price_multiplier, COEFFICIENT_ONE).to_string(),
                    "reasoning": per_million(price, p.reasoning_tokens_price_multiplier, COEFFICIENT_ONE).to_string(),
                })
            };
            json!({
                "params_version": p.params_version,
                "price_per_token": p.price_per_token,
                "worker_fee_per_token": p.worker_fee_per_token,
                "commission_per_token": p.price_per_token.saturating_sub(p.worker_fee_per_token),
                "multipliers": {
                    "prompt": p.prompt_tokens_price_multiplier,
                    "cached": p.cached_tokens_price_multiplier,
                    "completion": p.completion_tokens_price_multiplier,
                    "reasoning": p.reasoning_tokens_price_multiplier,
                },
                "per_million": cat(p.price_per_token),
                "worker_per_million": cat(p.worker_fee_per_token),
                "min_proxy_stake": p.min_proxy_stake,
                "min_client_stake": p.min_client_stake,
                "proxy_delay_before_close": p.proxy_delay_before_close,
                "client_delay_before_close": p.client_delay_before_close,
            })
        });
        let model_rows: Vec<Value> = models
            .iter()
            .map(|(m, r)| {
                let h = model_hash(m);
                json!({
                    "model": m,
                    "hash": hex::encode(h.0),
                    "allowed": cfg.map(|c| c.has_model_hash(&h)),
                    "workers": r.workers,
                    "capacity": r.capacity,
                    "running": r.running,
                    "proxies": r.proxies,
                    "coefficient_min": r.coefficient_min,
                })
            })
            .collect();
        let proxies: Vec<Value> = self
            .proxies
            .iter()
            .map(|p| {
                let (status, _) = p.stats.status(now, max_age);
                let s = p.stats.data.as_ref();
                let image_allowed = s.and_then(|s| reported_image_allowed(s, cfg));
                json!({
                    "url": p.url,
                    "status": status,
                    "age_secs": (p.stats.at > 0).then(|| now.saturating_sub(p.stats.at)),
                    "error": p.stats.error,
                    "proxy_sc": s.map(|s| &s.proxy_sc),
                    "tee": s.map(|s| &s.tee),
                    "image_hash": s.map(|s| &s.image_hash),
                    "image_allowed": image_allowed,
                    "attestation": ATTESTATION_NOTE,
                    "endpoint": self.endpoint_of(&p.url),
                    "verified": self.followed_view(&p.url, now).json(s),
                    "stake": p.balance.data.map(|b| b.to_string()),
                    "workers": s.map(|s| s.models.iter().map(|m| u64::from(m.workers)).sum::<u64>()),
                    "adjusted_tokens_total": s.map(|s| s.adjusted_tokens_total),
                    "paid_out": p.payouts.total.to_string(),
                    "paid_to_workers": p.payouts.to_workers.to_string(),
                    "refunded_to_clients": p.payouts.to_clients.to_string(),
                })
            })
            .collect();
        let mut hashes = Vec::new();
        if let Some(c) = cfg {
            for (kind, list) in [
                ("proxy image", &c.proxy_hashes),
                ("worker image", &c.worker_hashes),
                ("model", &c.model_hashes),
            ] {
                for h in list.iter().take(crate::MAX_LIST) {
                    hashes.push(json!({
                        "kind": kind,
                        "hash": hex::encode(h.0),
                        "meaning": meaning(kind, h, &names),
                    }));
                }
            }
        }
        json!({
            "root": self.root_address,
            "status": root_status,
            "age_secs": (self.root.at > 0).then(|| now.saturating_sub(self.root.at)),
            "error": self.root.error,
            "root_version": cfg.map(|c| c.version),
            "is_test": cfg.map(|c| c.params.is_test),
            "prices": prices,
            "models": model_rows,
            "proxies": proxies,
            "registered_proxies": cfg.map(|c| c.registered_proxies.iter().take(crate::MAX_LIST).map(|r| json!({
                "seqno": r.seqno,
                "endpoint": clip(&r.endpoint.0),
                "verified": self.registered_view(&r.endpoint.0, now).json(None),
            })).collect::<Vec<_>>()),
            "hashes": hashes,
            "price_history": self.history.changes,
            "history_from_deployment": self.history.deployed_at.is_some(),
            "deployed_at": self.history.deployed_at,
            "history_gaps": self.history.gaps,
            "tokens_served": self.proxies.iter().filter_map(|p| p.stats.data.as_ref()).map(|s| s.adjusted_tokens_total).sum::<u64>(),
            "paid_out": self.proxies.iter().map(|p| p.payouts.total).sum::<u128>().to_string(),
            "paid_to_workers": self.proxies.iter().map(|p| p.payouts.to_workers).sum::<u128>().to_string(),
            "refunded_to_clients": self.proxies.iter().map(|p| p.payouts.to_clients).sum::<u128>().to_string(),
        })
    }

    /// The explorer's page at `now`.
    pub fn page(&self, now: u64) -> Page {
        let max_age = self.max_age();
        let mut page = Page::new("Cocoon network explorer");
        page.subtitle(&format!("root contract {}", self.root_address))
            .refresh(u32::try_from(self.poll_secs.clamp(5, 300)).unwrap_or(30));
        let (root_status, root_tone) = self.root.status(now, max_age);
        let cfg = self.root.data.as_ref().map(|r| &r.config);
        let models = self.models();
        let names = self.names();
        let workers: u64 = models.values().map(|m| m.workers).sum();
        let capacity: u64 = models.values().map(|m| m.capacity).sum();
        let live = self
            .proxies
            .iter()
            .filter(|p| p.stats.status(now, max_age).0 == "live")
            .count();
        let tokens: u64 = self
            .proxies
            .iter()
            .filter_map(|p| p.stats.data.as_ref())
            .map(|s| s.adjusted_tokens_total)
            .sum();
        let paid: u128 = self.proxies.iter().map(|p| p.payouts.total).sum();
        let to_workers: u128 = self.proxies.iter().map(|p| p.payouts.to_workers).sum();
        let to_clients: u128 = self.proxies.iter().map(|p| p.payouts.to_clients).sum();
        let chain_note = match (&self.root.error, self.root.at) {
            (_, 0) => "never read".to_owned(),
            (Some(e), at) => format!("last read {} ago; then: {e}", fmt::ago(now, at)),
            (None, at) => format!("read {}", fmt::ago(now, at)),
        };
        page.cards(&[
            Card::new("Chain", root_status)
                .tone(root_tone)
                .note(chain_note)
                .id("chain_status"),
            Card::new("Models", fmt::thousands(models.len() as u64)).id("models"),
            Card::new("Workers", fmt::thousands(workers))
                .note(format!("{} requests at once", fmt::thousands(capacity)))
                .id("workers"),
            Card::new("Proxies", format!("{live} / {}", self.proxies.len()))
                .note("live / followed")
                .id("proxies"),
            Card::new("Tokens served", fmt::tokens(tokens)).id("tokens_served"),
            Card::new("TON paid out", fmt::ton(paid))
                .note("sent by the proxy contracts")
                .id("paid_out"),
            Card::new("Paid to workers", fmt::ton(to_workers))
                .note("payouts of worker contracts' requests")
                .id("paid_to_workers"),
            Card::new("Refunded to clients", fmt::ton(to_clients))
                .note("refunds of client contracts' requests")
                .id("refunded_to_clients"),
            Card::new(
                "Root version",
                fmt::or_dash(cfg.map(|c| c.version), |v| v.to_string()),
            )
            .id("root_version"),
        ]);

        // Models and their prices per 1M tokens.
        let mut t = Table::new(
            "Models and prices per 1M tokens (at their workers' lowest coefficient)",
            &[
                "Model",
                "Allowed",
                "Workers",
                "Capacity",
                "Prompt",
                "Cached",
                "Completion",
                "Reasoning",
            ],
        )
        .id("models")
        .empty("no followed proxy serves a model (yet)");
        for (m, r) in &models {
            let h = model_hash(m);
            let allowed = cfg.map(|c| c.has_model_hash(&h));
            let coef = r.coefficient_min.map_or(COEFFICIENT_ONE, |c| c as u64);
            let price = |mult: fn(&RootConfig) -> u32| {
                cfg.map_or(Cell::Text("–".into()), |c| {
                    Cell::Num(fmt::ton(per_million(
                        c.params.price_per_token,
                        mult(c),
                        coef,
                    )))
                })
            };
            t.row(vec![
                Cell::Long(m.clone()),
                match allowed {
                    Some(true) => Cell::Badge(Tone::Good, "allowed".into()),
                    Some(false) => Cell::Badge(Tone::Bad, "not allowed".into()),
                    None => Cell::Text("–".into()),
                },
                Cell::Num(fmt::thousands(r.workers)),
                Cell::Num(fmt::thousands(r.capacity)),
                price(|c| c.params.prompt_tokens_price_multiplier),
                price(|c| c.params.cached_tokens_price_multiplier),
                price(|c| c.params.completion_tokens_price_multiplier),
                price(|c| c.params.reasoning_tokens_price_multiplier),
            ]);
        }
        page.table(&t);

        if let Some(c) = cfg {
            let p = &c.params;
            let mult = |m: u32| format!("× {}", fmt::decimal(f64::from(m) / 10_000.0, 2));
            page.facts(
                "Prices (the root's params)",
                &[
                    (
                        "Price per token",
                        Cell::Num(fmt::ton(p.price_per_token.into())),
                    ),
                    (
                        "Worker fee per token",
                        Cell::Num(fmt::ton(p.worker_fee_per_token.into())),
                    ),
                    (
                        "Proxy commission per token",
                        Cell::Num(fmt::ton(
                            p.price_per_token
                                .saturating_sub(p.worker_fee_per_token)
                                .into(),
                        )),
                    ),
                    ("Prompt", Cell::Num(mult(p.prompt_tokens_price_multiplier))),
                    ("Cached", Cell::Num(mult(p.cached_tokens_price_multiplier))),
                    (
                        "Completion",
                        Cell::Num(mult(p.completion_tokens_price_multiplier)),
                    ),
                    (
                        "Reasoning",
                        Cell::Num(mult(p.reasoning_tokens_price_multiplier)),
                    ),
                    ("Params version", Cell::Num(p.params_version.to_string())),
                    (
                        "Minimum proxy stake",
                        Cell::Num(fmt::ton(p.min_proxy_stake.into())),
                    ),
                    (
                        "Minimum client stake",
                        Cell::Num(fmt::ton(p.min_client_stake.into())),
                    ),
                    (
                        "Network",
                        Cell::Text(if p.is_test { "test" } else { "production" }.into()),
                    ),
                ],
            );
        }

        // Proxies.
        let mut t = Table::new(
            "Proxies (TEE and image as each proxy reports them, and as the explorer's RA-TLS handshake verified them)",
            &[
                "Stats",
                "Status",
                "Contract",
                "TEE (reported)",
                "Image (reported)",
                "Reported image allowed",
                "Verified",
                "TEE (verified)",
                "Image (verified)",
                "Stake",
                "Commission / 1M",
                "Workers",
                "Tokens served",
            ],
        )
        .id("proxy-table")
        .empty("no proxy stats followed (--proxy-stats)");
        for p in &self.proxies {
            let (status, tone) = p.stats.status(now, max_age);
            let label = match (&p.stats.error, p.stats.at) {
                (Some(e), 0) => format!("{status}: {e}"),
                (_, 0) => status.to_owned(),
                (_, at) => format!("{status}, {} old", fmt::secs(now.saturating_sub(at))),
            };
            let s = p.stats.data.as_ref();
            let allowed = s.and_then(|s| reported_image_allowed(s, cfg));
            let v = self.followed_view(&p.url, now);
            let commission = cfg.map_or("–".into(), |c| {
                let per = c
                    .params
                    .price_per_token
                    .saturating_sub(c.params.worker_fee_per_token);
                fmt::ton(u128::from(per) * u128::from(PER))
            });
            t.row(vec![
                Cell::Long(p.url.clone()),
                Cell::Badge(tone, label),
                Cell::Hash(s.map(|s| s.proxy_sc.clone()).unwrap_or_default()),
                Cell::Text(s.map_or("–".into(), |s| {
                    if s.tee.is_empty() {
                        "none".into()
                    } else {
                        s.tee.clone()
                    }
                })),
                Cell::Hash(s.map(|s| s.image_hash.clone()).unwrap_or_default()),
                match allowed {
                    Some(true) => Cell::Badge(Tone::Good, "allowed (as reported)".into()),
                    Some(false) => Cell::Badge(Tone::Bad, "not allowed".into()),
                    None => Cell::Text("–".into()),
                },
                Cell::Badge(v.tone(), v.label.clone()),
                Cell::Text(v.tee.clone().unwrap_or_else(|| "–".into())),
                if v.mismatch(s) {
                    Cell::Badge(
                        Tone::Bad,
                        format!(
                            "mismatch: reports {}, attested {}",
                            short(s.map_or("", |s| &s.image_hash)),
                            short(v.image_hash.as_deref().unwrap_or_default())
                        ),
                    )
                } else {
                    Cell::Hash(v.image_hash.clone().unwrap_or_default())
                },
                Cell::Num(fmt::or_dash(p.balance.data, fmt::ton)),
                Cell::Num(commission),
                Cell::Num(fmt::or_dash(s, |s| {
                    fmt::thousands(s.models.iter().map(|m| u64::from(m.workers)).sum::<u64>())
                })),
                Cell::Num(fmt::or_dash(s, |s| fmt::tokens(s.adjusted_tokens_total))),
            ]);
        }
        page.table(&t);

        // Activity over time.
        let tokens_series = Series::new(TOKENS, self.tokens.points(TOKENS, Span::Minutes, now));
        let paid_series: Vec<Series> = [
            ("payouts to workers", Some(PaidTo::Workers)),
            ("refunds to clients", Some(PaidTo::Clients)),
            ("all value sent", None),
        ]
        .into_iter()
        .map(|(name, to)| Series::new(name, self.paid_over_time(to)))
        .filter(|s| !s.points.is_empty())
        .collect();
        page.panels(&[
            (
                "Tokens served (all followed proxies)",
                chart::line_chart(&[tokens_series], &ChartOpts::new(now)),
            ),
            (
                "TON sent by the proxy contracts: payouts to workers, refunds to clients",
                chart::line_chart(
                    &paid_series,
                    &ChartOpts::new(now).format(chart::compact_ton),
                ),
            ),
        ]);

        // Registered proxies.
        let mut t = Table::new(
            "Proxies registered in the root, verified by the explorer's RA-TLS handshake",
            &[
                "Seqno",
                "Endpoint",
                "Verified",
                "TEE",
                "Image (attested)",
                "Image allowed",
                "TCB",
                "Valid until",
                "Checked",
            ],
        )
        .id("registered")
        .empty("none registered");
        if let Some(c) = cfg {
            for r in c.registered_proxies.iter().take(crate::MAX_LIST) {
                let v = self.registered_view(&r.endpoint.0, now);
                t.row(vec![
                    Cell::Num(r.seqno.to_string()),
                    Cell::Long(clip(&r.endpoint.0)),
                    Cell::Badge(v.tone(), v.label.clone()),
                    Cell::Text(v.tee.clone().unwrap_or_else(|| "–".into())),
                    Cell::Hash(v.image_hash.clone().unwrap_or_default()),
                    match v.image_allowed {
                        Some(true) => Cell::Badge(Tone::Good, "allowed".into()),
                        Some(false) => Cell::Badge(Tone::Bad, "not allowed".into()),
                        None => Cell::Text("–".into()),
                    },
                    Cell::Text(v.tcb_status.clone().unwrap_or_else(|| "–".into())),
                    Cell::Text(fmt::or_dash(v.valid_until, fmt::utc)),
                    Cell::Text(fmt::or_dash(v.checked_at, |t| fmt::ago(now, t))),
                ]);
            }
        }
        page.table(&t);

        // Price history.
        let mut t = Table::new("Price history", &["When", "Change", "Field", "Old", "New"])
            .id("history")
            .empty("no params change among the root's transactions read");
        for ch in self.history.changes.iter().rev() {
            for f in &ch.fields {
                let show = |v: u64| match f.field {
                    "price_per_token"
                    | "worker_fee_per_token"
                    | "min_proxy_stake"
                    | "min_client_stake" => fmt::ton(v.into()),
                    "proxy_delay_before_close" | "client_delay_before_close" => fmt::secs(v),
                    _ => format!("× {}", fmt::decimal(v as f64 / 10_000.0, 2)),
                };
                t.row(vec![
                    Cell::Text(fmt::utc(ch.at)),
                    Cell::Text(ch.op.into()),
                    Cell::Text(f.field.replace('_', " ")),
                    Cell::Num(f.old.map_or_else(|| "before the history read".into(), show)),
                    Cell::Num(show(f.new)),
                ]);
            }
        }
        page.table(&t);

        // Allowed hashes.
        let mut t = Table::new("Allowed hashes", &["Kind", "Hash", "What it is"])
            .id("hashes")
            .empty("the root allows nothing");
        if let Some(c) = cfg {
            for (kind, list) in [
                ("proxy image", &c.proxy_hashes),
                ("worker image", &c.worker_hashes),
                ("model", &c.model_hashes),
            ] {
                for h in list.iter().take(crate::MAX_LIST) {
                    t.row(vec![
                        Cell::Text(kind.into()),
                        Cell::Hash(hex::encode(h.0)),
                        Cell::Text(meaning(kind, h, &names)),
                    ]);
                }
            }
        }
        page.table(&t);

        let history_note = match self.history.deployed_at {
            Some(d) => format!("price history since the deployment ({})", fmt::utc(d)),
            None => format!(
                "price history of the last {} root transactions read",
                self.history.transactions
            ),
        };
        let gaps = self.history.gaps + self.proxies.iter().map(|p| p.payouts.gaps).sum::<u64>();
        let gaps_note = if gaps > 0 {
            format!(
                " {gaps} read(s) found more new transactions than a page: some changes or payouts between reads are missing."
            )
        } else {
            String::new()
        };
        page.footer(&format!(
            "Read from {} every {}; {history_note}.{gaps_note}",
            self.endpoints.join(", "),
            fmt::secs(self.poll_secs),
        ));
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_ton::StdAddr;
    use cocoon_ton::messages::ProxyEndpoint;
    use cocoon_ton::root::{CocoonParams, RegisteredProxy};

    const MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct@main:abcd";
    const NOW: u64 = 1_800_000_000;

    fn config() -> RootConfig {
        RootConfig {
            owner: StdAddr::new(0, HashBytes([1; 32])),
            version: 9,
            proxy_hashes: vec![HashBytes(cocoon_attest::sim::sim_image_hash())],
            registered_proxies: vec![RegisteredProxy {
                seqno: 1,
                endpoint: ProxyEndpoint("127.0.0.1:12000".into()),
            }],
            last_proxy_seqno: 1,
            worker_hashes: vec![HashBytes([5; 32])],
            model_hashes: vec![model_hash(MODEL)],
            params: CocoonParams {
                price_per_token: 20,
                worker_fee_per_token: 15,
                prompt_tokens_price_multiplier: 10_000,
                cached_tokens_price_multiplier: 1_000,
                completion_tokens_price_multiplier: 80_000,
                reasoning_tokens_price_multiplier: 80_000,
                is_test: true,
                ..CocoonParams::default()
            },
        }
    }

    fn stats(extra_model: &str) -> ProxyPublic {
        ProxyPublic::parse(
            json!({
                "proxy_sc": "0:".to_owned() + &"ab".repeat(32),
                "tee": "sim",
                "image_hash": hex::encode(cocoon_attest::sim::sim_image_hash()),
                "adjusted_tokens_total": 1234,
                "models": [
                    {"model": MODEL, "workers": 2, "capacity": 8, "running": 1,
                     "coefficient_min": 1000, "coefficient_max": 1500},
                    {"model": extra_model, "workers": 1, "capacity": 1},
                ],
                "unknown_field": [1, 2, 3],
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn snapshot() -> Snapshot {
        let urls = [
            "http://127.0.0.1:9101/public.json".to_owned(),
            "http://10.0.0.9:1/public.json".to_owned(),
            "http://10.0.0.8:1/public.json".to_owned(),
        ];
        let mut s = Snapshot::new("0:0101", vec!["http://127.0.0.1:8081".into()], 10, &urls);
        s.root.ok(
            RootRead {
                config: config(),
                chain_time: Some(NOW),
            },
            NOW - 3,
        );
        s.proxies[0]
            .stats
            .ok(stats("<script>alert(1)</script>"), NOW - 2);
        s.proxies[0].balance.ok(5_000_000_000, NOW - 2);
        // Stale: a good answer, then a failure.
        s.proxies[1].stats.ok(stats("Other@x:y"), NOW - 100);
        s.proxies[1].stats.failed("connection refused");
        // Never answered.
        s.proxies[2].stats.failed("timed out");
        s
    }

    #[test]
    fn prices_per_million_follow_the_root_params_and_the_coefficient() {
        assert_eq!(per_million(20, 10_000, 1000), 20_000_000);
        assert_eq!(per_million(20, 1_000, 1000), 2_000_000);
        assert_eq!(per_million(20, 80_000, 1500), 240_000_000);
        let j = snapshot().json(NOW);
        assert_eq!(j["prices"]["per_million"]["prompt"], "20000000");
        assert_eq!(j["prices"]["per_million"]["cached"], "2000000");
        assert_eq!(j["prices"]["per_million"]["completion"], "160000000");
        assert_eq!(j["prices"]["worker_per_million"]["prompt"], "15000000");
        assert_eq!(j["prices"]["commission_per_token"], 5);
        assert_eq!(j["root_version"], 9);
        assert_eq!(j["status"], "live");
    }

    #[test]
    fn models_workers_and_proxies_add_up_with_their_freshness() {
        let j = snapshot().json(NOW);
        let m = j["models"].as_array().unwrap();
        let smol = m.iter().find(|m| m["model"] == MODEL).unwrap();
        // Two proxies with stats (one stale) serve it.
        assert_eq!(smol["workers"], 4);
        assert_eq!(smol["capacity"], 16);
        assert_eq!(smol["allowed"], true);
        let other = m.iter().find(|m| m["model"] == "Other@x:y").unwrap();
        assert_eq!(other["allowed"], false);
        let p = j["proxies"].as_array().unwrap();
        assert_eq!(p[0]["status"], "live");
        assert_eq!(p[0]["image_allowed"], true);
        assert_eq!(p[0]["stake"], "5000000000");
        assert_eq!(p[0]["tee"], "sim");
        assert_eq!(p[1]["status"], "stale");
        assert_eq!(p[1]["age_secs"], 100);
        assert_eq!(p[2]["status"], "unreachable");
        assert_eq!(p[2]["error"], "timed out");
        let h = j["hashes"].as_array().unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0]["kind"], "proxy image");
        assert!(h[0]["meaning"].as_str().unwrap().contains("simulated"));
        assert_eq!(h[2]["meaning"], format!("model {MODEL}"));
        assert_eq!(j["tokens_served"], 1234 * 2);
    }

    #[test]
    fn a_proxys_tee_and_image_are_shown_as_reported_and_checked_against_the_root() {
        let mut s = snapshot();
        // Proxy 1 reports an image the root does not allow, proxy 2 a hash that is none.
        let mut other = stats("Other@x:y");
        other.image_hash = hex::encode([7u8; 32]);
        s.proxies[1].stats.ok(other, NOW - 2);
        let mut garbage = stats("Other@x:y");
        garbage.image_hash = "sim image, trust me".into();
        s.proxies[2].stats.ok(garbage, NOW - 2);
        let j = s.json(NOW);
        let p = j["proxies"].as_array().unwrap();
        assert_eq!(p[0]["image_allowed"], true);
        assert_eq!(p[1]["image_allowed"], false);
        assert_eq!(p[2]["image_allowed"], false);
        for row in p {
            assert_eq!(row["attestation"], ATTESTATION_NOTE);
        }
        let html = s.page(NOW).render();
        assert!(
            html.contains("TEE and image as each proxy reports them, and as the explorer"),
            "no note on the proxies table"
        );
        assert!(html.contains("TEE (reported)") && html.contains("Reported image allowed"));
        let table = html.split("id=\"proxy-table\"").nth(1).unwrap();
        let table = table.split("</table>").next().unwrap();
        assert_eq!(
            table.matches(">allowed (as reported)<").count(),
            1,
            "{table}"
        );
        assert_eq!(
            table
                .matches("not checked (the explorer dials no proxy)")
                .count(),
            3,
            "{table}"
        );
        assert_eq!(table.matches(">not allowed<").count(), 2, "{table}");
    }

    #[test]
    fn the_page_escapes_what_peers_say_and_shows_no_debug_values() {
        let html = snapshot().page(NOW).render();
        assert!(!html.contains("<script>alert"), "unescaped");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        for bad in ["Some(", "None", "[184]"] {
            assert!(!html.contains(bad), "{bad} in the page");
        }
        assert!(html.contains(MODEL));
        assert!(html.contains(&fmt::ton(20_000_000)));
        assert!(html.contains("unreachable: timed out"));
        assert!(html.contains("stale, "));
        assert!(html.contains("127.0.0.1:12000"));
        // Hostile sizes are clipped.
        let long = "x".repeat(10_000);
        let p = ProxyPublic::parse(
            json!({"proxy_sc": long, "models": vec![json!({"model": "m"}); 1000]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(p.proxy_sc.len(), MAX_TEXT);
        assert_eq!(p.models.len(), MAX_MODELS);
        assert!(ProxyPublic::parse(b"[1,2]").is_err());
        // An empty snapshot renders too.
        let empty = Snapshot::new("0:00", vec![], 10, &[]).page(NOW).render();
        assert!(empty.contains("unreachable") && !empty.contains("None"));
    }

    fn attested(image: [u8; 32], valid_until: u64) -> Checked {
        Checked {
            verdict: Verdict::Attested {
                tee: "sim".into(),
                image_hash: hex::encode(image),
                tcb_status: "UpToDate".into(),
                valid_until,
            },
            at: NOW - 5,
        }
    }

    /// Proxy 0 (127.0.0.1) and the registered 127.0.0.1:12000 of [`config`], checked.
    fn checked(c: Checked) -> Snapshot {
        let mut s = snapshot();
        s.checking = true;
        s.verified.insert("127.0.0.1:12000".into(), c);
        s
    }

    #[test]
    fn a_proxy_attested_with_an_allowed_image_is_verified() {
        let sim = cocoon_attest::sim::sim_image_hash();
        let s = checked(attested(sim, NOW + 3600));
        let j = s.json(NOW);
        let r = &j["registered_proxies"][0]["verified"];
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["status"], "verified");
        assert_eq!(r["tee"], "sim");
        assert_eq!(r["image_hash"], hex::encode(sim));
        assert_eq!(r["image_allowed"], true);
        assert_eq!(r["valid_until"], NOW + 3600);
        // The followed proxy on the same host gets the verdict; the others (other hosts)
        // have no registered endpoint.
        let p = j["proxies"].as_array().unwrap();
        assert_eq!(p[0]["endpoint"], "127.0.0.1:12000");
        assert_eq!(p[0]["verified"]["verified"], true);
        assert_eq!(p[0]["verified"]["image_mismatch"], false);
        assert_eq!(p[1]["verified"]["verified"], false);
        assert!(
            p[1]["verified"]["status"]
                .as_str()
                .unwrap()
                .starts_with("not verified: no one registered endpoint")
        );
        let html = s.page(NOW).render();
        let reg = html.split("id=\"registered\"").nth(1).unwrap();
        assert!(reg.contains(">verified<"), "{reg}");
        // Expired: not verified.
        let j = checked(attested(sim, NOW - 1)).json(NOW);
        let r = &j["registered_proxies"][0]["verified"];
        assert_eq!(r["verified"], false);
        assert!(r["status"].as_str().unwrap().contains("expired"), "{r}");
    }

    #[test]
    fn a_refused_or_unreachable_proxy_is_not_verified_with_the_reason() {
        for verdict in [
            Verdict::Refused {
                reason: "attestation refused: backend sim not allowed".into(),
                peer_fault: true,
            },
            Verdict::Unreachable {
                reason: "no handshake: tcp: connection refused".into(),
            },
        ] {
            let reason = match &verdict {
                Verdict::Refused { reason, .. } | Verdict::Unreachable { reason } => reason.clone(),
                Verdict::Attested { .. } => unreachable!(),
            };
            let s = checked(Checked {
                verdict,
                at: NOW - 1,
            });
            let j = s.json(NOW);
            let r = &j["proxies"][0]["verified"];
            assert_eq!(r["verified"], false);
            assert_eq!(r["status"], format!("not verified: {reason}"));
            assert!(r["image_hash"].is_null() && r["tee"].is_null());
            // What it reports is still allowed by the root: only the handshake counts.
            assert_eq!(j["proxies"][0]["image_allowed"], true);
            let html = s.page(NOW).render();
            assert!(html.contains(&format!("not verified: {reason}")), "{html}");
        }
    }

    #[test]
    fn a_proxy_reporting_another_image_than_it_attests_is_a_mismatch() {
        // It reports the allowed sim image; its handshake attested another one.
        let s = checked(attested([9; 32], NOW + 3600));
        let j = s.json(NOW);
        let r = &j["proxies"][0]["verified"];
        assert_eq!(r["verified"], false);
        assert_eq!(r["image_mismatch"], true);
        assert_eq!(r["image_allowed"], false);
        assert!(
            r["status"]
                .as_str()
                .unwrap()
                .contains("is not in the root's proxy_hashes"),
            "{r}"
        );
        let html = s.page(NOW).render();
        let table = html.split("id=\"proxy-table\"").nth(1).unwrap();
        let table = table.split("</table>").next().unwrap();
        assert!(table.contains("mismatch: reports "), "{table}");
        // Two registered endpoints on the proxy's host: no guess.
        let mut s = s;
        s.verified
            .insert("127.0.0.1:12001".into(), attested([9; 32], NOW + 3600));
        let j = s.json(NOW);
        assert!(j["proxies"][0]["endpoint"].is_null());
        assert_eq!(j["proxies"][0]["verified"]["image_mismatch"], false);
    }

    #[test]
    fn hosts_of_urls_and_endpoints() {
        assert_eq!(
            url_host("http://127.0.0.1:9101/public.json"),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("https://u:p@example.org/x"), Some("example.org"));
        assert_eq!(url_host("http://[::1]:80/p"), Some("[::1]"));
        assert_eq!(url_host("nope"), None);
        assert_eq!(host_of("[::1]:12000"), "[::1]");
        assert_eq!(host_of("10.0.0.1:12000"), "10.0.0.1");
    }
}
