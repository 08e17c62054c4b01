//! The chain's clock as seen from a local one.
//!
//! Contracts judge time by the block they run in (`now()` in Tolk): close delays, unlock
//! times, a wallet message's `valid_until`. A real chain's time is the last block's `utime`,
//! which a toncenter read reports as `sync_utime`; the devnet's clock moves only when asked.
//! [`ChainClock`] estimates how far the local clock is from the chain's from the
//! `sync_utime`s a role observes anyway (the root watcher's reads), and [`DriftCheck`] turns
//! that estimate into one report when the local clock leaves a tolerance and one when it
//! comes back. Pure: both take the local time as an argument.

use std::collections::VecDeque;

/// Observations kept; the estimate is their median, so one read from a node stuck on an old
/// block is outvoted, and a clock that was stepped shows after three reads.
const SAMPLES: usize = 5;

/// The local clock's offset from the chain's, estimated from observed block times.
///
/// Each read gives `local_now − sync_utime`: the true offset plus how old the node's last
/// block was (a few seconds on a live chain). The estimate is the median of the last
/// [`SAMPLES`] reads (the lower of the two middle ones while their number is even).
#[derive(Debug, Clone, Default)]
pub struct ChainClock {
    samples: VecDeque<i64>,
}

impl ChainClock {
    /// A clock with no observation yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the chain reported `sync_utime` when the local clock read `local_now`
    /// (both Unix seconds).
    pub fn observe(&mut self, sync_utime: u64, local_now: u64) {
        let d = i128::from(local_now) - i128::from(sync_utime);
        let d = d.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(d);
    }

    /// Seconds the local clock is ahead of the chain's (negative: behind), once observed.
    pub fn offset(&self) -> Option<i64> {
        let mut v: Vec<i64> = self.samples.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len().checked_sub(1)? / 2).copied()
    }

    /// The chain's time now by this estimate; the local time until anything was observed.
    pub fn chain_now(&self, local_now: u64) -> u64 {
        match self.offset() {
            Some(o) => {
                let t = i128::from(local_now) - i128::from(o);
                t.clamp(0, i128::from(u64::MAX)) as u64
            }
            None => local_now,
        }
    }
}

/// A change a [`DriftCheck`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// The local clock left the tolerance: `offset` seconds ahead of the chain (negative:
    /// behind).
    Drifted {
        /// Local minus chain, seconds.
        offset: i64,
    },
    /// It is back within the tolerance.
    Agrees {
        /// Local minus chain, seconds.
        offset: i64,
    },
}

/// Reports a local clock further than `max_secs` from the chain's, once per excursion.
#[derive(Debug, Clone)]
pub struct DriftCheck {
    max_secs: u64,
    drifted: bool,
}

impl DriftCheck {
    /// Tolerates `max_secs` either way; 0 turns the check off.
    pub fn new(max_secs: u64) -> Self {
        DriftCheck {
            max_secs,
            drifted: false,
        }
    }

    /// Whether the local clock is outside the tolerance now (as of the last check).
    pub fn drifted(&self) -> bool {
        self.drifted
    }

    /// The tolerance in seconds (0: off).
    pub fn max_secs(&self) -> u64 {
        self.max_secs
    }

    /// Judges the clock's current estimate; says so when it crosses the tolerance.
    pub fn check(&mut self, clock: &ChainClock) -> Option<Drift> {
        if self.max_secs == 0 {
            return None;
        }
        let offset = clock.offset()?;
        let out = offset.unsigned_abs() > self.max_secs;
        match (out, self.drifted) {
            (true, false) => {
                self.drifted = true;
                Some(Drift::Drifted { offset })
            }
            (false, true) => {
                self.drifted = false;
                Some(Drift::Agrees { offset })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_read_outvotes_a_stuck_node_and_follows_a_stepped_clock() {
        let mut c = ChainClock::new();
        assert_eq!((c.offset(), c.chain_now(1_000)), (None, 1_000));
        // A live chain: blocks 2..9 s old when read, local clock right.
        for (local, lag) in [(1_000, 7), (1_030, 2), (1_060, 9)] {
            c.observe(local - lag, local);
        }
        assert_eq!(c.offset(), Some(7));
        assert_eq!(c.chain_now(1_100), 1_093);
        // One node answers from a block ten minutes old: outvoted.
        c.observe(1_090 - 600, 1_090);
        assert_eq!(c.offset(), Some(7));
        // The local clock is stepped 600 s ahead: the third read after it shows it.
        for (i, want) in [(0, 9), (1, 600), (2, 603)] {
            let chain = 1_120 + 30 * i;
            c.observe(chain - 3, chain + 600);
            assert_eq!(c.offset(), Some(want), "read {i}");
        }
        // And stepped back: the same.
        for (i, want) in [(0, 603), (1, 603), (2, 3)] {
            let chain = 1_300 + 30 * i;
            c.observe(chain - 3, chain);
            assert_eq!(c.offset(), Some(want), "read {i}");
        }
    }

    #[test]
    fn behind_and_extreme_values_do_not_overflow() {
        let mut c = ChainClock::new();
        c.observe(5_000, 1_000);
        assert_eq!(c.offset(), Some(-4_000));
        assert_eq!(c.chain_now(1_010), 5_010);
        let mut c = ChainClock::new();
        c.observe(u64::MAX, 0);
        assert_eq!(c.offset(), Some(i64::MIN));
        assert_eq!(c.chain_now(0), 1 << 63, "the offset saturates at i64::MIN");
        let mut c = ChainClock::new();
        c.observe(0, u64::MAX);
        assert_eq!(c.chain_now(0), 0);
    }

    #[test]
    fn drift_is_reported_once_per_excursion_either_way() {
        let mut d = DriftCheck::new(120);
        let mut c = ChainClock::new();
        assert_eq!(d.check(&c), None, "nothing observed");
        c.observe(1_000, 1_100);
        assert_eq!(d.check(&c), None, "within 120 s");
        let mut ahead = ChainClock::new();
        ahead.observe(1_000, 1_121);
        assert_eq!(d.check(&ahead), Some(Drift::Drifted { offset: 121 }));
        assert!(d.drifted());
        assert_eq!(d.check(&ahead), None, "reported once");
        assert_eq!(d.check(&c), Some(Drift::Agrees { offset: 100 }));
        let mut behind = ChainClock::new();
        behind.observe(2_000, 1_000);
        assert_eq!(d.check(&behind), Some(Drift::Drifted { offset: -1_000 }));
        let mut off = DriftCheck::new(0);
        assert_eq!(off.check(&behind), None, "0 turns the check off");
        assert!(!off.drifted());
    }
}
