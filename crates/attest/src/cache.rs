//! A bounded, thread-safe cache of verification verdicts.
//!
//! Verifying a TDX quote costs milliseconds (certificate chains, CRLs, ECDSA), and a busy
//! proxy sees the same peer's evidence again on every reconnection. [`VerificationCache`]
//! remembers successful verdicts keyed by `SHA-256(policy identity ‖ evidence)`, where the
//! evidence is every input that decides the verdict (quote, collateral, expected report
//! data, ...; see [`VerificationCache::get_or_verify`]).
//!
//! Every entry expires: at `min(inserted + ttl, peer.valid_until())`,
//! so a cached verdict never outlives the collateral it was established with, and changes
//! to Intel's TCB status reach peers within `ttl`.
//!
//! **Errors are not cached.** A refusal may be transient (collateral not fetched yet, clock
//! skew), and caching it would make it stick; a flood of bad evidence has to be rate-limited
//! before verification anyway, since each distinct input would miss the cache.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::AttestError;
use crate::model::VerifiedPeer;
use crate::policy::Policy;

/// Default number of verdicts kept.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;
/// Default time to live of a verdict, in seconds.
pub(crate) const DEFAULT_TTL_SECS: u64 = 3_600;

/// A stable identity of a [`Policy`]: SHA-256 over a tag and the policy's complete debug
/// form (every field, allowlists included), so two caches' keys agree exactly when their
/// policies are equal.
pub(crate) fn policy_identity(policy: &Policy) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cocoon-attest policy identity v1\0");
    h.update(format!("{policy:?}").as_bytes());
    h.finalize().into()
}

#[derive(Debug)]
struct Entry {
    peer: VerifiedPeer,
    /// `now` when verified: a lookup at an earlier time misses (the verdict was only
    /// established from then on, e.g. collateral not-before dates).
    verified_at: u64,
    /// First second at which the entry is no longer used.
    expires: u64,
    /// Recency stamp for eviction.
    used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<[u8; 32], Entry>,
    clock: u64,
    hits: u64,
    misses: u64,
}

/// Counters of a [`VerificationCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Verdicts held.
    pub entries: usize,
    /// Lookups that found a live verdict.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
}

/// Verdicts of [`Policy::evaluate`] (or any verification producing a [`VerifiedPeer`]),
/// bounded in size and time. `Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct VerificationCache {
    inner: Mutex<Inner>,
    policy_id: [u8; 32],
    ttl: u64,
    capacity: usize,
}

impl VerificationCache {
    /// A cache for verdicts under `policy`, kept at most `ttl_secs` and at most `capacity`
    /// entries (at least 1).
    pub fn new(policy: &Policy, ttl_secs: u64, capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            policy_id: policy_identity(policy),
            ttl: ttl_secs,
            capacity: capacity.max(1),
        }
    }

    /// [`Self::new`] with a TTL of one hour and room for 10 000 verdicts.
    pub fn with_defaults(policy: &Policy) -> Self {
        Self::new(policy, DEFAULT_TTL_SECS, DEFAULT_CAPACITY)
    }

    fn key(&self, evidence: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.policy_id);
        for part in evidence {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent (every update
        // is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached verdict for `evidence` at `now`, or the result of `verify()`, which is
    /// cached when it is `Ok` and still valid at `now`.
    ///
    /// `evidence` must hold every input of the verdict besides the policy and the time:
    /// for TDX the quote, the collateral (its JSON) and the expected report data; for
    /// SEV-SNP the report, VCEK, chain and expected report data. The parts are hashed with
    /// their lengths, so `[a, b]` and `[a ‖ b]` are different keys.
    ///
    /// The lock is not held while `verify` runs: concurrent misses on the same evidence
    /// both verify, and the later result replaces the earlier.
    pub fn get_or_verify<F>(
        &self,
        evidence: &[&[u8]],
        now: u64,
        verify: F,
    ) -> Result<VerifiedPeer, AttestError>
    where
        F: FnOnce() -> Result<VerifiedPeer, AttestError>,
    {
        let key = self.key(evidence);
        {
            let mut inner = self.lock();
            inner.clock += 1;
            let stamp = inner.clock;
            let fresh = match inner.map.get_mut(&key) {
                Some(e) if now >= e.verified_at && now < e.expires => {
                    e.used = stamp;
                    Some(e.peer.clone())
                }
                Some(_) => None,
                None => None,
            };
            match fresh {
                Some(peer) => {
                    inner.hits += 1;
                    return Ok(peer);
                }
                None => {
                    inner.map.remove(&key);
                    inner.misses += 1;
                }
            }
        }
        let peer = verify()?;
        let expires = now.saturating_add(self.ttl).min(peer.valid_until());
        if expires > now {
            let mut inner = self.lock();
            if inner.map.len() >= self.capacity && !inner.map.contains_key(&key) {
                inner.map.retain(|_, e| e.expires > now);
                while inner.map.len() >= self.capacity {
                    let Some(oldest) = inner
                        .map
                        .iter()
                        .min_by_key(|(_, e)| e.used)
                        .map(|(k, _)| *k)
                    else {
                        break;
                    };
                    inner.map.remove(&oldest);
                }
            }
            inner.clock += 1;
            let used = inner.clock;
            inner.map.insert(
                key,
                Entry {
                    peer: peer.clone(),
                    verified_at: now,
                    expires,
                    used,
                },
            );
        }
        Ok(peer)
    }

    /// Drops every entry expired at `now`.
    pub fn purge_expired(&self, now: u64) {
        self.lock().map.retain(|_, e| e.expires > now);
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.lock().map.clear();
    }

    /// Verdicts held (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no verdict is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most verdicts held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long a verdict is kept, seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl
    }

    /// Entry and hit/miss counters.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            entries: inner.map.len(),
            hits: inner.hits,
            misses: inner.misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, Measurements, TcbStatus};
    use std::cell::Cell;

    fn peer(valid_until: u64) -> VerifiedPeer {
        VerifiedPeer {
            backend: Backend::Sim,
            measurements: Measurements::Sim {
                measurement: [0xFF; 48],
                rtmr3: None,
            },
            image_hash: [1; 32],
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            report_data: [2; 64],
            public_key: None,
            valid_until,
            gpu: None,
        }
    }

    fn counted<'a>(
        calls: &'a Cell<u32>,
        valid_until: u64,
    ) -> impl FnOnce() -> Result<VerifiedPeer, AttestError> + 'a {
        move || {
            calls.set(calls.get() + 1);
            Ok(peer(valid_until))
        }
    }

    #[test]
    fn second_lookup_hits() {
        let cache = VerificationCache::new(&Policy::tdx_default(), 60, 10);
        let calls = Cell::new(0);
        let a = cache.get_or_verify(&[b"quote", b"coll"], 1000, counted(&calls, 5000));
        let b = cache.get_or_verify(&[b"quote", b"coll"], 1010, counted(&calls, 5000));
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(calls.get(), 1);
        assert_eq!(
            cache.stats(),
            CacheStats {
                entries: 1,
                hits: 1,
                misses: 1
            }
        );
        // Different parts (even with the same concatenation) are a different key.
        cache
            .get_or_verify(&[b"quotecoll"], 1010, counted(&calls, 5000))
            .unwrap();
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn expires_by_ttl() {
        let cache = VerificationCache::new(&Policy::tdx_default(), 60, 10);
        let calls = Cell::new(0);
        cache
            .get_or_verify(&[b"q"], 1000, counted(&calls, 1_000_000))
            .unwrap();
        cache
            .get_or_verify(&[b"q"], 1059, counted(&calls, 1_000_000))
            .unwrap();
        assert_eq!(calls.get(), 1);
        cache
            .get_or_verify(&[b"q"], 1060, counted(&calls, 1_000_000))
            .unwrap();
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn expires_by_valid_until() {
        let cache = VerificationCache::new(&Policy::tdx_default(), 3600, 10);
        let calls = Cell::new(0);
        cache
            .get_or_verify(&[b"q"], 1000, counted(&calls, 1010))
            .unwrap();
        cache
            .get_or_verify(&[b"q"], 1009, counted(&calls, 1010))
            .unwrap();
        assert_eq!(calls.get(), 1);
        cache
            .get_or_verify(&[b"q"], 1010, counted(&calls, 1010))
            .unwrap();
        assert_eq!(calls.get(), 2);
        // Already expired when verified: not stored.
        cache
            .get_or_verify(&[b"r"], 2000, counted(&calls, 2000))
            .unwrap();
        assert!(cache.len() <= 1);
    }

    #[test]
    fn earlier_time_misses() {
        let cache = VerificationCache::new(&Policy::tdx_default(), 60, 10);
        let calls = Cell::new(0);
        cache
            .get_or_verify(&[b"q"], 1000, counted(&calls, 5000))
            .unwrap();
        cache
            .get_or_verify(&[b"q"], 999, counted(&calls, 5000))
            .unwrap();
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn errors_are_not_cached() {
        let cache = VerificationCache::new(&Policy::tdx_default(), 60, 10);
        let calls = Cell::new(0);
        for _ in 0..2 {
            let r = cache.get_or_verify(&[b"bad"], 1000, || {
                calls.set(calls.get() + 1);
                Err(AttestError::ReportDataMismatch)
            });
            assert!(matches!(r, Err(AttestError::ReportDataMismatch)));
        }
        assert_eq!(calls.get(), 2);
        assert!(cache.is_empty());
    }

    #[test]
    fn bound_respected_and_recent_entries_kept() {
        let cache = VerificationCache::new(&Policy::tdx_default(), 60, 4);
        let calls = Cell::new(0);
        for i in 0u32..4 {
            cache
                .get_or_verify(&[&i.to_le_bytes()], 1000, counted(&calls, 5000))
                .unwrap();
        }
        // Touch 0 so that 1 is the least recently used.
        cache
            .get_or_verify(&[&0u32.to_le_bytes()], 1001, counted(&calls, 5000))
            .unwrap();
        assert_eq!(calls.get(), 4);
        for i in 4u32..100 {
            cache
                .get_or_verify(&[&i.to_le_bytes()], 1002, counted(&calls, 5000))
                .unwrap();
            assert!(cache.len() <= 4);
        }
        assert_eq!(cache.len(), 4);
        // The most recent ones are still there.
        let before = calls.get();
        cache
            .get_or_verify(&[&99u32.to_le_bytes()], 1003, counted(&calls, 5000))
            .unwrap();
        assert_eq!(calls.get(), before);
    }

    #[test]
    fn policy_is_part_of_the_key() {
        let mut other = Policy::tdx_default();
        other.min_tcb_status = TcbStatus::OutOfDate;
        assert_ne!(
            policy_identity(&Policy::tdx_default()),
            policy_identity(&other)
        );
        assert_eq!(
            policy_identity(&Policy::tdx_default()),
            policy_identity(&Policy::tdx_default())
        );
        let a = VerificationCache::new(&Policy::tdx_default(), 60, 4);
        let b = VerificationCache::new(&other, 60, 4);
        assert_ne!(a.key(&[b"q"]), b.key(&[b"q"]));
    }

    #[test]
    fn shared_between_threads() {
        let cache = std::sync::Arc::new(VerificationCache::new(&Policy::tdx_default(), 60, 100));
        let handles: Vec<_> = (0u8..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0u8..50 {
                        cache
                            .get_or_verify(&[&[t, i]], 1000, || Ok(peer(5000)))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(cache.len(), 100);
    }
}
