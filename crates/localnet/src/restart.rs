//! When a role that exited on its own is started again: exponential backoff, reset by a
//! stable run, and a limit on restarts within a window after which the role is given up.
//! Pure: the caller passes the times.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The restart rules.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Delay before the first restart (and after a stable run).
    pub(crate) first: Duration,
    /// The delay doubles on each quick exit up to this.
    pub(crate) max: Duration,
    /// Restarts allowed within `window`; one more exit gives the role up.
    pub(crate) limit: usize,
    /// The window the restarts are counted in.
    pub(crate) window: Duration,
    /// A run at least this long was a good one: the next delay is `first` again.
    pub(crate) stable: Duration,
}

/// What `cocoon up` does: 0.5 s doubling to 10 s, at most 5 restarts in 60 s.
pub(crate) const POLICY: Policy = Policy {
    first: Duration::from_millis(500),
    max: Duration::from_secs(10),
    limit: 5,
    window: Duration::from_secs(60),
    stable: Duration::from_secs(30),
};

/// What to do about an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Start the role again after `delay`; this is restart `nth` within the window.
    Restart {
        /// How long to wait first.
        delay: Duration,
        /// How many restarts the window holds now, this one included.
        nth: usize,
    },
    /// Too many exits: `exits` within the window, this one included.
    GiveUp {
        /// Exits counted.
        exits: usize,
    },
}

/// One role's restart history.
#[derive(Debug, Default)]
pub(crate) struct Restarts {
    /// The delay before the last restart, while the role keeps exiting quickly.
    last_delay: Option<Duration>,
    /// When each restart within the window was decided.
    recent: VecDeque<Instant>,
    /// Restarts over the whole run.
    total: u32,
}

impl Restarts {
    /// The role, started at `started`, exited at `now`.
    pub(crate) fn on_exit(&mut self, p: &Policy, started: Instant, now: Instant) -> Verdict {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > p.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= p.limit {
            return Verdict::GiveUp {
                exits: self.recent.len() + 1,
            };
        }
        let stable = now.saturating_duration_since(started) >= p.stable;
        let delay = match self.last_delay {
            Some(d) if !stable => d.saturating_mul(2).min(p.max),
            _ => p.first,
        };
        self.last_delay = Some(delay);
        self.recent.push_back(now);
        self.total = self.total.saturating_add(1);
        Verdict::Restart {
            delay,
            nth: self.recent.len(),
        }
    }

    /// Restarts over the whole run.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn restart(delay_ms: u64, nth: usize) -> Verdict {
        Verdict::Restart {
            delay: MS * delay_ms as u32,
            nth,
        }
    }

    #[test]
    fn quick_exits_back_off_doubling_then_the_role_is_given_up() {
        let mut r = Restarts::default();
        let mut now = Instant::now();
        let mut got = Vec::new();
        for _ in 0..6 {
            // Each run lasts 100 ms, then the wait before the next start.
            let started = now;
            now += MS * 100;
            let v = r.on_exit(&POLICY, started, now);
            if let Verdict::Restart { delay, .. } = &v {
                now += *delay;
            }
            got.push(v);
        }
        assert_eq!(
            got,
            [
                restart(500, 1),
                restart(1000, 2),
                restart(2000, 3),
                restart(4000, 4),
                restart(8000, 5),
                Verdict::GiveUp { exits: 6 },
            ]
        );
        assert_eq!(r.total(), 5);
    }

    #[test]
    fn the_delay_is_capped() {
        let p = Policy {
            limit: 100,
            window: Duration::from_secs(3600),
            ..POLICY
        };
        let mut r = Restarts::default();
        let t = Instant::now();
        let delays: Vec<Duration> = (0..8)
            .map(|_| match r.on_exit(&p, t, t) {
                Verdict::Restart { delay, .. } => delay,
                v => panic!("{v:?}"),
            })
            .collect();
        assert_eq!(delays[5], Duration::from_secs(10));
        assert_eq!(delays[7], Duration::from_secs(10));
    }

    #[test]
    fn a_stable_run_resets_the_delay_and_old_restarts_leave_the_window() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        assert_eq!(r.on_exit(&POLICY, t0, t0 + MS), restart(500, 1));
        assert_eq!(r.on_exit(&POLICY, t0, t0 + MS * 2), restart(1000, 2));
        // Ran 40 s: the delay starts over; both earlier restarts are still in the window.
        let start = t0 + MS * 1000;
        let exit = start + Duration::from_secs(40);
        assert_eq!(r.on_exit(&POLICY, start, exit), restart(500, 3));
        // Much later the window holds only the new restart.
        let later = exit + Duration::from_secs(61);
        let v = r.on_exit(&POLICY, later - Duration::from_secs(31), later);
        assert_eq!(v, restart(500, 1));
        // A role exiting once every 31 s is restarted for ever.
        let mut now = later;
        for _ in 0..20 {
            let started = now;
            now += Duration::from_secs(31);
            assert!(matches!(
                r.on_exit(&POLICY, started, now),
                Verdict::Restart { .. }
            ));
        }
    }
}
