//! Worker selection: pure, with time and randomness passed in.
//!
//! Load alone (`running × average query time`) ignores whether the worker actually
//! answers, so each worker also carries a [`Health`]: a
//! time-decayed average latency and a sliding window of outcomes (success, time to first
//! token). Its *reputation* is the smoothed success rate times a time-to-first-token factor,
//! and the routing score is the expected latency divided by it:
//!
//! `score = (running + 1) × average latency / reputation` (lowest wins).
//!
//! A worker whose reputation is under the threshold is kept out of normal traffic and only
//! gets a probe now and then (so it can recover), or traffic when nobody healthy is left.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Routing knobs.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Half-life of the decayed average latency.
    pub latency_half_life: Duration,
    /// Latency assumed for a worker without history.
    pub latency_prior: Duration,
    /// Outcomes older than this are forgotten.
    pub window: Duration,
    /// At most this many outcomes are kept per worker.
    pub window_len: usize,
    /// Time to first token that costs nothing; slower lowers the reputation in proportion.
    pub ttft_reference: Duration,
    /// Under this reputation a worker gets only probe traffic.
    pub threshold: f64,
    /// Share of requests sent as probes to a worker under the threshold.
    pub probe_rate: f64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            latency_half_life: Duration::from_secs(300),
            latency_prior: Duration::from_secs(1),
            window: Duration::from_secs(600),
            window_len: 64,
            ttft_reference: Duration::from_secs(2),
            threshold: 0.5,
            probe_rate: 0.05,
        }
    }
}

/// One finished attempt on a worker.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    at: Instant,
    ok: bool,
    ttft: Option<Duration>,
}

/// What the proxy learned about one worker connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    /// Decayed average latency (seconds) and the time of its last update.
    latency: Option<(f64, Instant)>,
    outcomes: VecDeque<Outcome>,
}

impl Health {
    /// Records a successful request: total latency and time to first byte.
    pub(crate) fn success(
        &mut self,
        cfg: &RouterConfig,
        now: Instant,
        latency: Duration,
        ttft: Duration,
    ) {
        let x = latency.as_secs_f64();
        self.latency = Some(match self.latency {
            None => (x, now),
            Some((avg, at)) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                let half = cfg.latency_half_life.as_secs_f64().max(1e-3);
                // Old observations weigh 1/2 per half-life; a new one weighs at least 1/8.
                let keep = (0.5f64.powf(dt / half)).min(0.875);
                (avg * keep + x * (1.0 - keep), now)
            }
        });
        self.push(
            cfg,
            Outcome {
                at: now,
                ok: true,
                ttft: Some(ttft),
            },
        );
    }

    /// Records a failure or timeout (with its time to first byte, if any byte came).
    pub(crate) fn failure(&mut self, cfg: &RouterConfig, now: Instant, ttft: Option<Duration>) {
        self.push(
            cfg,
            Outcome {
                at: now,
                ok: false,
                ttft,
            },
        );
    }

    fn push(&mut self, cfg: &RouterConfig, o: Outcome) {
        self.outcomes.push_back(o);
        self.prune(cfg, o.at);
    }

    fn prune(&mut self, cfg: &RouterConfig, now: Instant) {
        while self.outcomes.len() > cfg.window_len.max(1) {
            self.outcomes.pop_front();
        }
        while let Some(f) = self.outcomes.front()
            && now.saturating_duration_since(f.at) > cfg.window
        {
            self.outcomes.pop_front();
        }
    }

    /// Average latency in seconds (the prior without history).
    pub(crate) fn avg_latency(&self, cfg: &RouterConfig) -> f64 {
        self.latency
            .map_or(cfg.latency_prior.as_secs_f64(), |(avg, _)| avg)
    }

    /// Mean time to first byte in seconds of the outcomes in the window at `now` that had
    /// one (`None`: none had).
    pub(crate) fn mean_ttft(&self, cfg: &RouterConfig, now: Instant) -> Option<f64> {
        let t: Vec<f64> = self
            .outcomes
            .iter()
            .filter(|o| now.saturating_duration_since(o.at) <= cfg.window)
            .filter_map(|o| o.ttft.map(|t| t.as_secs_f64()))
            .collect();
        (!t.is_empty()).then(|| t.iter().sum::<f64>() / t.len() as f64)
    }

    /// Outcomes in the window at `now`: (successes, total).
    pub(crate) fn counts(&self, cfg: &RouterConfig, now: Instant) -> (usize, usize) {
        let live = self
            .outcomes
            .iter()
            .filter(|o| now.saturating_duration_since(o.at) <= cfg.window);
        live.fold((0, 0), |(s, n), o| (s + usize::from(o.ok), n + 1))
    }

    /// Reputation in (0, 1]: smoothed success rate × time-to-first-token factor.
    pub(crate) fn reputation(&self, cfg: &RouterConfig, now: Instant) -> f64 {
        let live: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| now.saturating_duration_since(o.at) <= cfg.window)
            .collect();
        let ok = live.iter().filter(|o| o.ok).count() as f64;
        let n = live.len() as f64;
        // Two imaginary successes: a new worker starts at 1.0 and one failure does not
        // bury it, two failures in a row do.
        let success = (ok + 2.0) / (n + 2.0);
        let ttfts: Vec<f64> = live
            .iter()
            .filter_map(|o| o.ttft.map(|t| t.as_secs_f64()))
            .collect();
        let ttft_factor = if ttfts.is_empty() {
            1.0
        } else {
            let mean = ttfts.iter().sum::<f64>() / ttfts.len() as f64;
            let reference = cfg.ttft_reference.as_secs_f64().max(1e-3);
            (reference / mean.max(1e-9)).min(1.0)
        };
        (success * ttft_factor).clamp(1e-6, 1.0)
    }
}

/// A worker as the router sees it at one instant.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub id: u64,
    pub enabled: bool,
    /// Silent for two ping intervals: not picked, but waited for as a busy worker is (it
    /// may be heard again before the request's deadline).
    pub suspect: bool,
    pub coefficient: i32,
    pub running: u32,
    pub max_active: u32,
    /// Seconds.
    pub avg_latency: f64,
    pub reputation: f64,
}

/// Why nobody was picked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RouteError {
    #[error("no workers for model")]
    NoWorkers,
    #[error("can run this query with coefficient={0}")]
    CoefficientTooLow(i32),
    #[error("all workers are busy")]
    AllBusy,
}

/// The pick and whether it was a probe of a worker under the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pick {
    pub id: u64,
    pub probe: bool,
}

fn score(c: &Candidate) -> f64 {
    f64::from(c.running + 1) * c.avg_latency.max(1e-6) / c.reputation.max(1e-6)
}

fn best<'a>(it: impl Iterator<Item = &'a Candidate>) -> Option<&'a Candidate> {
    it.min_by(|a, b| score(a).total_cmp(&score(b)).then(a.id.cmp(&b.id)))
}

/// Picks a worker among `candidates` (one model), skipping `exclude`. `roll` is a uniform
/// random number in [0, 1) deciding whether a probe is sent.
pub(crate) fn choose(
    cfg: &RouterConfig,
    candidates: &[Candidate],
    max_coefficient: i32,
    exclude: &[u64],
    roll: f64,
) -> Result<Pick, RouteError> {
    let live: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.enabled && !exclude.contains(&c.id))
        .collect();
    if live.is_empty() {
        return Err(RouteError::NoWorkers);
    }
    let priced: Vec<&Candidate> = live
        .iter()
        .copied()
        .filter(|c| c.coefficient <= max_coefficient)
        .collect();
    if priced.is_empty() {
        let min = live.iter().map(|c| c.coefficient).min().unwrap_or(0);
        return Err(RouteError::CoefficientTooLow(min));
    }
    let free: Vec<&Candidate> = priced
        .into_iter()
        .filter(|c| c.running < c.max_active && !c.suspect)
        .collect();
    let healthy = best(
        free.iter()
            .copied()
            .filter(|c| c.reputation >= cfg.threshold),
    );
    let weak = best(
        free.iter()
            .copied()
            .filter(|c| c.reputation < cfg.threshold),
    );
    match (healthy, weak) {
        (Some(w), Some(p)) if roll < cfg.probe_rate => {
            let _ = w;
            Ok(Pick {
                id: p.id,
                probe: true,
            })
        }
        (Some(h), _) => Ok(Pick {
            id: h.id,
            probe: false,
        }),
        (None, Some(p)) => Ok(Pick {
            id: p.id,
            probe: false,
        }),
        (None, None) => Err(RouteError::AllBusy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: u64, running: u32, lat: f64, rep: f64) -> Candidate {
        Candidate {
            id,
            enabled: true,
            suspect: false,
            coefficient: 1000,
            running,
            max_active: 4,
            avg_latency: lat,
            reputation: rep,
        }
    }

    fn pick(cands: &[Candidate]) -> Result<u64, RouteError> {
        choose(&RouterConfig::default(), cands, 4000, &[], 0.9).map(|p| p.id)
    }

    #[test]
    fn least_loaded_wins() {
        let c = [
            cand(1, 2, 1.0, 1.0),
            cand(2, 0, 1.0, 1.0),
            cand(3, 1, 1.0, 1.0),
        ];
        assert_eq!(pick(&c), Ok(2));
    }

    #[test]
    fn faster_wins_at_equal_load_and_load_outweighs_small_speed_gains() {
        let c = [cand(1, 0, 2.0, 1.0), cand(2, 0, 0.5, 1.0)];
        assert_eq!(pick(&c), Ok(2));
        // (3 + 1) × 0.5 = 2.0 > (0 + 1) × 1.0
        let c = [cand(1, 0, 1.0, 1.0), cand(2, 3, 0.5, 1.0)];
        assert_eq!(pick(&c), Ok(1));
    }

    #[test]
    fn reputation_weighs_and_threshold_keeps_weak_workers_to_probes() {
        // Worker 2 is faster but failing: under the threshold, only probes.
        let c = [cand(1, 1, 1.0, 0.9), cand(2, 0, 0.1, 0.3)];
        let cfg = RouterConfig::default();
        assert_eq!(
            choose(&cfg, &c, 4000, &[], 0.9),
            Ok(Pick {
                id: 1,
                probe: false
            })
        );
        assert_eq!(
            choose(&cfg, &c, 4000, &[], 0.01),
            Ok(Pick { id: 2, probe: true })
        );
        // Nobody healthy left: the weak worker gets the traffic.
        assert_eq!(pick(&c[1..]), Ok(2));
        // Above the threshold the reputation divides the score.
        let c = [cand(1, 0, 1.0, 0.6), cand(2, 0, 1.0, 1.0)];
        assert_eq!(pick(&c), Ok(2));
    }

    #[test]
    fn filters_capacity_coefficient_disabled_and_excluded() {
        let mut full = cand(1, 4, 0.1, 1.0);
        full.max_active = 4;
        let mut pricey = cand(2, 0, 0.1, 1.0);
        pricey.coefficient = 5000;
        let mut off = cand(3, 0, 0.1, 1.0);
        off.enabled = false;
        let ok = cand(4, 3, 5.0, 1.0);
        let c = [full.clone(), pricey.clone(), off.clone(), ok];
        assert_eq!(pick(&c), Ok(4));
        let cfg = RouterConfig::default();
        assert_eq!(choose(&cfg, &c, 4000, &[4], 0.9), Err(RouteError::AllBusy));
        assert_eq!(
            choose(&cfg, &[pricey.clone()], 1000, &[], 0.9),
            Err(RouteError::CoefficientTooLow(5000))
        );
        assert_eq!(
            choose(&cfg, &[off], 4000, &[], 0.9),
            Err(RouteError::NoWorkers)
        );
        assert_eq!(
            choose(&cfg, &[], 4000, &[], 0.9),
            Err(RouteError::NoWorkers)
        );
    }

    #[test]
    fn suspect_workers_are_waited_for_as_busy_ones() {
        // Every worker silent: the request waits in the queue (all busy), not refused as
        // if the model had no workers.
        let mut quiet = cand(1, 0, 0.1, 1.0);
        quiet.suspect = true;
        let cfg = RouterConfig::default();
        assert_eq!(
            choose(&cfg, std::slice::from_ref(&quiet), 4000, &[], 0.9),
            Err(RouteError::AllBusy)
        );
        // A healthy one beside it takes the request, even when busier and slower.
        let c = [quiet.clone(), cand(2, 3, 5.0, 1.0)];
        assert_eq!(pick(&c), Ok(2));
        // A suspect worker's price still counts: too dear is refused at once.
        assert_eq!(
            choose(&cfg, &[quiet], 500, &[], 0.9),
            Err(RouteError::CoefficientTooLow(1000))
        );
    }

    #[test]
    fn health_tracks_failures_ttft_and_forgets_old_outcomes() {
        let cfg = RouterConfig::default();
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.reputation(&cfg, t0), 1.0);
        assert_eq!(h.avg_latency(&cfg), 1.0);
        h.failure(&cfg, t0, None);
        let one = h.reputation(&cfg, t0);
        assert!(one > cfg.threshold && one < 1.0, "{one}");
        h.failure(&cfg, t0, None);
        assert!(h.reputation(&cfg, t0) <= cfg.threshold);
        // Outside the window the failures no longer count.
        let later = t0 + cfg.window + Duration::from_secs(1);
        assert_eq!(h.reputation(&cfg, later), 1.0);
        // A slow first token lowers the reputation in proportion.
        let mut slow = Health::default();
        slow.success(&cfg, t0, Duration::from_secs(9), Duration::from_secs(8));
        let r = slow.reputation(&cfg, t0);
        assert!((r - 0.25).abs() < 1e-9, "{r}");
        assert_eq!(slow.avg_latency(&cfg), 9.0);
        assert_eq!(slow.counts(&cfg, t0), (1, 1));
    }

    #[test]
    fn latency_decays_toward_recent_values() {
        let cfg = RouterConfig::default();
        let t0 = Instant::now();
        let mut h = Health::default();
        h.success(&cfg, t0, Duration::from_secs(10), Duration::from_millis(10));
        h.success(
            &cfg,
            t0 + cfg.latency_half_life,
            Duration::from_secs(2),
            Duration::from_millis(10),
        );
        assert!((h.avg_latency(&cfg) - 6.0).abs() < 1e-9);
        // Back to back, a new value still moves the average by at least 1/8.
        h.success(
            &cfg,
            t0 + cfg.latency_half_life,
            Duration::from_secs(14),
            Duration::from_millis(10),
        );
        assert!((h.avg_latency(&cfg) - 7.0).abs() < 1e-9);
    }

    #[test]
    fn window_is_bounded() {
        let cfg = RouterConfig {
            window_len: 3,
            ..RouterConfig::default()
        };
        let t0 = Instant::now();
        let mut h = Health::default();
        for _ in 0..10 {
            h.failure(&cfg, t0, None);
        }
        assert_eq!(h.counts(&cfg, t0), (0, 3));
    }
}
