//! Time series kept in fixed memory: rings of buckets at one-second, one-minute and one-hour
//! steps (5 minutes, 24 hours and 30 days of history), fed with the time as an argument.
//!
//! A counter is fed its cumulative value and keeps the increase per bucket; a gauge keeps
//! the largest value seen per bucket. Nothing here reads a clock.

use std::collections::BTreeMap;

/// How a bucket combines what is added to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The sum (increases of a counter).
    Sum,
    /// The largest value (a gauge).
    Max,
}

/// A ring of `len` buckets, `step` seconds each: the latest `len × step` seconds.
#[derive(Debug, Clone)]
pub struct Ring {
    step: u64,
    buckets: Box<[f64]>,
    /// The newest bucket's index (`t / step`), once anything was added.
    head: Option<u64>,
    mode: Mode,
}

impl Ring {
    /// An empty ring (`step` and `len` at least 1).
    pub fn new(step: u64, len: usize, mode: Mode) -> Ring {
        Ring {
            step: step.max(1),
            buckets: vec![0.0; len.max(1)].into_boxed_slice(),
            head: None,
            mode,
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Adds `v` at Unix time `t`; a time older than the ring holds is dropped.
    pub fn add(&mut self, t: u64, v: f64) {
        if !v.is_finite() {
            return;
        }
        let slot = t / self.step;
        let len = self.len();
        match self.head {
            Some(h) if slot + len <= h => return,
            Some(h) if slot > h => {
                // Clear the buckets between the old head and the new one (at most all).
                let from = (h + 1).max(slot.saturating_sub(len - 1));
                for s in from..=slot {
                    self.buckets[(s % len) as usize] = 0.0;
                }
                self.head = Some(slot);
            }
            Some(_) => {}
            None => {
                self.buckets.fill(0.0);
                self.head = Some(slot);
            }
        }
        let b = &mut self.buckets[(slot % len) as usize];
        *b = match self.mode {
            Mode::Sum => *b + v,
            Mode::Max => b.max(v),
        };
    }

    /// The ring's buckets as of `now`, oldest first: `(bucket start, value)`, zero where
    /// nothing was added.
    pub fn points(&self, now: u64) -> Vec<(u64, f64)> {
        let len = self.len();
        let last = now / self.step;
        let first = (last + 1).saturating_sub(len);
        (first..=last)
            .map(|s| {
                let v = match self.head {
                    Some(h) if s <= h && s + len > h => self.buckets[(s % len) as usize],
                    _ => 0.0,
                };
                (s * self.step, v)
            })
            .collect()
    }
}

/// Which ring of a [`Rings`] to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// 300 one-second buckets: the last 5 minutes.
    Seconds,
    /// 1440 one-minute buckets: the last 24 hours.
    Minutes,
    /// 720 one-hour buckets: the last 30 days.
    Hours,
}

/// One series at three resolutions.
#[derive(Debug, Clone)]
pub struct Rings {
    seconds: Ring,
    minutes: Ring,
    hours: Ring,
}

impl Rings {
    /// Empty rings combining values as `mode` says.
    pub fn new(mode: Mode) -> Rings {
        Rings {
            seconds: Ring::new(1, 300, mode),
            minutes: Ring::new(60, 1440, mode),
            hours: Ring::new(3600, 720, mode),
        }
    }

    /// Adds `v` at `t` to every resolution.
    pub fn add(&mut self, t: u64, v: f64) {
        self.seconds.add(t, v);
        self.minutes.add(t, v);
        self.hours.add(t, v);
    }

    /// The buckets of `span` as of `now` ([`Ring::points`]).
    pub fn points(&self, span: Span, now: u64) -> Vec<(u64, f64)> {
        match span {
            Span::Seconds => self.seconds.points(now),
            Span::Minutes => self.minutes.points(now),
            Span::Hours => self.hours.points(now),
        }
    }
}

#[derive(Debug, Clone)]
struct Track {
    rings: Rings,
    /// A counter's last cumulative value (`None` for a gauge, or before the first).
    last: Option<u64>,
    counter: bool,
}

/// Named series, each kept in [`Rings`]; names are the program's own (`&'static str`), so
/// the memory is fixed by the code, not by what peers send.
#[derive(Debug, Clone, Default)]
pub struct History {
    tracks: BTreeMap<&'static str, Track>,
}

impl History {
    /// No series yet.
    pub fn new() -> History {
        History::default()
    }

    /// Records a counter's cumulative value at `t`: its increase since the last call goes
    /// into the bucket of `t` (the first call only sets the baseline; a counter that went
    /// back, a restart, counts from zero).
    pub fn counter(&mut self, name: &'static str, t: u64, cumulative: u64) {
        let tr = self.tracks.entry(name).or_insert_with(|| Track {
            rings: Rings::new(Mode::Sum),
            last: None,
            counter: true,
        });
        let inc = match tr.last {
            None => 0,
            Some(l) if cumulative >= l => cumulative - l,
            Some(_) => cumulative,
        };
        tr.last = Some(cumulative);
        tr.rings.add(t, inc as f64);
    }

    /// Records a gauge's value at `t` (a bucket keeps the largest value seen in it).
    pub fn gauge(&mut self, name: &'static str, t: u64, v: f64) {
        self.tracks
            .entry(name)
            .or_insert_with(|| Track {
                rings: Rings::new(Mode::Max),
                last: None,
                counter: false,
            })
            .rings
            .add(t, v);
    }

    /// The buckets of `name` at `span` as of `now`; empty for a name never recorded.
    pub fn points(&self, name: &str, span: Span, now: u64) -> Vec<(u64, f64)> {
        self.tracks
            .get(name)
            .map(|t| t.rings.points(span, now))
            .unwrap_or_default()
    }

    /// Whether `name` is a counter (its buckets are increases) rather than a gauge.
    pub fn is_counter(&self, name: &str) -> bool {
        self.tracks.get(name).is_some_and(|t| t.counter)
    }

    /// The names recorded so far.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.tracks.keys().copied()
    }
}

/// `points` combined into at most `n` points, each group of consecutive points summed
/// (`Mode::Sum`) or its largest kept (`Mode::Max`), stamped with the group's first time.
pub fn downsample(points: &[(u64, f64)], n: usize, mode: Mode) -> Vec<(u64, f64)> {
    if n == 0 || points.len() <= n {
        return points.to_vec();
    }
    let group = points.len().div_ceil(n);
    points
        .chunks(group)
        .map(|c| {
            let v = c.iter().map(|p| p.1);
            let v = match mode {
                Mode::Sum => v.sum(),
                Mode::Max => v.fold(f64::MIN, f64::max),
            };
            (c[0].0, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_its_window_and_forgets_what_fell_out() {
        let mut r = Ring::new(1, 5, Mode::Sum);
        r.add(100, 1.0);
        r.add(100, 2.0);
        r.add(102, 4.0);
        let p = r.points(102);
        assert_eq!(
            p,
            vec![(98, 0.0), (99, 0.0), (100, 3.0), (101, 0.0), (102, 4.0)]
        );
        // Later, the old buckets are gone, not wrapped around.
        assert_eq!(r.points(106).iter().map(|p| p.1).sum::<f64>(), 4.0);
        assert_eq!(r.points(107).iter().map(|p| p.1).sum::<f64>(), 0.0);
        // A late value within the window lands in its bucket; one too old is dropped.
        r.add(101, 1.0);
        r.add(90, 9.0);
        assert_eq!(r.points(102)[3], (101, 1.0));
        // A jump far ahead clears everything (and only writes the new bucket).
        r.add(10_000, 7.0);
        assert_eq!(r.points(10_000).iter().map(|p| p.1).sum::<f64>(), 7.0);
        assert_eq!(r.points(10_000).len(), 5);
        // Not-finite values are ignored.
        r.add(10_000, f64::NAN);
        assert_eq!(r.points(10_000)[4].1, 7.0);
    }

    #[test]
    fn gauges_keep_the_peak_of_a_bucket() {
        let mut r = Ring::new(60, 3, Mode::Max);
        r.add(60, 3.0);
        r.add(119, 5.0);
        r.add(120, 1.0);
        assert_eq!(r.points(120), vec![(0, 0.0), (60, 5.0), (120, 1.0)]);
    }

    #[test]
    fn rings_have_fixed_sizes() {
        let mut r = Rings::new(Mode::Sum);
        for t in 0..100_000u64 {
            r.add(5_000_000 + t * 7, 1.0);
        }
        let now = 5_700_000;
        assert_eq!(r.points(Span::Seconds, now).len(), 300);
        assert_eq!(r.points(Span::Minutes, now).len(), 1440);
        assert_eq!(r.points(Span::Hours, now).len(), 720);
        // Near the epoch there are fewer buckets to show.
        assert_eq!(r.points(Span::Hours, 7200).len(), 3);
        // The last 5 minutes of one value every 7 s.
        let s: f64 = r.points(Span::Seconds, now - 7).iter().map(|p| p.1).sum();
        assert!((42.0..=43.0).contains(&s), "{s}");
    }

    #[test]
    fn counters_record_increases_and_survive_a_restart() {
        let mut h = History::new();
        h.counter("req", 10, 100); // baseline
        h.counter("req", 11, 103);
        h.counter("req", 12, 2); // restarted: counts from zero
        h.gauge("queue", 12, 4.0);
        let p = h.points("req", Span::Seconds, 12);
        assert_eq!(&p[p.len() - 3..], &[(10, 0.0), (11, 3.0), (12, 2.0)]);
        assert!(h.is_counter("req") && !h.is_counter("queue"));
        assert_eq!(
            h.points("queue", Span::Seconds, 12).last(),
            Some(&(12, 4.0))
        );
        assert!(h.points("nope", Span::Seconds, 12).is_empty());
        assert_eq!(h.names().collect::<Vec<_>>(), vec!["queue", "req"]);
    }

    #[test]
    fn downsampling_sums_or_keeps_peaks() {
        let p: Vec<(u64, f64)> = (0..10).map(|i| (i, i as f64)).collect();
        assert_eq!(
            downsample(&p, 5, Mode::Sum),
            vec![(0, 1.0), (2, 5.0), (4, 9.0), (6, 13.0), (8, 17.0)]
        );
        assert_eq!(downsample(&p, 4, Mode::Max).len(), 4);
        assert_eq!(downsample(&p, 20, Mode::Sum), p);
    }
}
