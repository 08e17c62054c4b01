//! Following clients' contracts while they use the proxy, and the lookups strangers cause.
//!
//! A client contract read when the client authorises does not stay true, because the
//! contract changes under a session: top-ups and charges move the credit, and
//! the owner can ask for a refund at any time. Usage the proxy has not charged yet is backed
//! only by the client's stake, and after `client_delay_before_close` the refund of that
//! stake completes, paid out of the proxy's own stake. So:
//!
//! - [`run`] re-reads, every `client_watch_interval`, the contract of every authorised client
//!   and of every ledger account with usage the contract has not been charged for (or that is
//!   closing), and feeds each read to the meter: credit follows top-ups and charges, and a
//!   closing contract stops getting new requests at once, is recorded as an operator event,
//!   and wakes the settlement, which charges everything it owes (any amount) and, once nothing
//!   runs, grants the refund cooperatively (the final receipt closes the contract).
//! - [`Lookups`] bounds what `client.connectToProxy` — sent before any authentication — can
//!   make the proxy read from its chain endpoint: one read per contract per `ttl` (cached),
//!   and a token bucket per peer address.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_ton::StdAddr;
use tokio::sync::watch;

use crate::Shared;
use crate::chain::{ClientChain, ClientContractState, ProxyChainError};

/// Watches client contracts until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut closing: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        pass(&shared, &mut closing).await;
    }
}

/// One round over the watched contracts.
pub(crate) async fn pass(shared: &Shared, closing: &mut BTreeSet<String>) {
    let mut set: BTreeSet<String> = shared.meter.clients_to_watch().into_iter().collect();
    set.extend(
        shared
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| c.authorized && !c.client_sc.is_empty())
            .map(|c| c.client_sc.clone()),
    );
    let price = shared.root.borrow().params.price_per_token;
    for sc in set {
        let Ok(addr) = cocoon_ton::parse_address(&sc) else {
            continue;
        };
        let state = match shared.chain.client_state(&addr).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                shared
                    .counters
                    .watch_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(client_sc = %sc, error = %e, "reading a client contract failed");
                continue;
            }
        };
        if let Err(e) = shared.meter.observe_client(&sc, &state, price).await {
            tracing::warn!(client_sc = %sc, error = %e, "client contract state not recorded");
            continue;
        }
        if state.closing && closing.insert(sc.clone()) {
            shared.event(
                "client_closing",
                &sc,
                "the client asked for its refund: no new requests; charging what it owes",
            );
            shared.meter.kick();
        } else if !state.closing {
            closing.remove(&sc);
        }
    }
}

/// A token bucket: `burst` lookups at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a lookup was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LookupError {
    #[error("too many contract lookups from this address; retry later")]
    RateLimited,
    #[error(transparent)]
    Chain(#[from] ProxyChainError),
}

/// Chain reads made for unauthenticated handshakes, cached and rate-limited.
pub(crate) struct Lookups {
    ttl: Duration,
    per_minute: f64,
    burst: f64,
    cache: Mutex<HashMap<StdAddr, (Instant, Option<ClientContractState>)>>,
    peers: Mutex<HashMap<IpAddr, Bucket>>,
    /// Reads actually sent to the chain (for the admin pages and tests).
    pub reads: std::sync::atomic::AtomicU64,
}

/// Most contracts (and peers) remembered; older entries are dropped first when full.
const MAX_ENTRIES: usize = 10_000;

impl Lookups {
    pub(crate) fn new(ttl: Duration, per_minute: u32, burst: u32) -> Self {
        Lookups {
            ttl,
            per_minute: f64::from(per_minute.max(1)),
            burst: f64::from(burst.max(1)),
            cache: Mutex::default(),
            peers: Mutex::default(),
            reads: Default::default(),
        }
    }

    /// Takes a lookup from `peer`'s bucket; `false` when it is empty.
    fn allow(&self, peer: IpAddr, now: Instant) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= MAX_ENTRIES && !peers.contains_key(&peer) {
            // Full buckets carry no information: forget them first.
            let (burst, rate) = (self.burst, self.per_minute);
            peers.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate / 60.0 < burst
            });
            if peers.len() >= MAX_ENTRIES {
                peers.clear();
            }
        }
        let b = peers.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.per_minute / 60.0;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The client contract's state for a handshake from `peer`: from the cache when read
    /// less than `ttl` ago, else from the chain if `peer` still has lookups left.
    pub(crate) async fn client_state(
        &self,
        chain: &dyn ClientChain,
        peer: IpAddr,
        sc: &StdAddr,
    ) -> Result<Option<ClientContractState>, LookupError> {
        let now = Instant::now();
        if let Some((at, s)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(sc)
            && now.saturating_duration_since(*at) < self.ttl
        {
            return Ok(s.clone());
        }
        if !self.allow(peer, now) {
            return Err(LookupError::RateLimited);
        }
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = chain.client_state(sc).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(sc.clone(), (now, s.clone()));
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_over_time_and_are_per_peer() {
        let l = Lookups::new(Duration::from_secs(10), 60, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow(a, t0)));
        assert!(!l.allow(a, t0));
        assert!(l.allow(b, t0), "another peer has its own bucket");
        // 60 a minute: one more after a second.
        assert!(l.allow(a, t0 + Duration::from_secs(1)));
        assert!(!l.allow(a, t0 + Duration::from_secs(1)));
    }
}
