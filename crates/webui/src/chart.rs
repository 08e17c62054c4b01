//! Charts as SVG markup, drawn on the server: pure functions of their data. Colours come
//! from the stylesheet's classes (`s0`…`s5`), so they follow the dark or light theme.

use std::fmt::Write as _;

use crate::fmt;
use crate::html::esc;

/// One line of a [`line_chart`]: a name for the legend and `(Unix time, value)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// The points, oldest first.
    pub points: Vec<(u64, f64)>,
}

impl Series {
    /// A series named `name`.
    pub fn new(name: &str, points: Vec<(u64, f64)>) -> Series {
        Series {
            name: name.to_owned(),
            points,
        }
    }
}

/// How a chart looks: its size in SVG units, the time the x axis ends at, and how its
/// values read.
#[derive(Debug, Clone, Copy)]
pub struct ChartOpts {
    /// Width in SVG units (the chart scales to its box).
    pub width: u32,
    /// Height of a line chart in SVG units.
    pub height: u32,
    /// The x axis's labels are times relative to this (Unix seconds): `−5 min`, `now`.
    pub now: u64,
    /// How an axis label or a bar's value reads.
    pub format: fn(f64) -> String,
}

impl ChartOpts {
    /// 640 × 200, values read by [`compact`].
    pub fn new(now: u64) -> ChartOpts {
        ChartOpts {
            width: 640,
            height: 200,
            now,
            format: compact,
        }
    }

    /// Values read by `format`.
    pub fn format(mut self, format: fn(f64) -> String) -> ChartOpts {
        self.format = format;
        self
    }
}

/// A value with a metric suffix, short enough for an axis: `950`, `1.2k`, `3.4M`, `0.25`,
/// `2.1m`, `2.1µ`, `3n`.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if a > 0.0 && a < 0.01 {
        return if a >= 1e-3 {
            format!("{}m", fmt::decimal(v * 1e3, 1))
        } else if a >= 1e-6 {
            format!("{}µ", fmt::decimal(v * 1e6, 1))
        } else {
            format!("{}n", fmt::decimal(v * 1e9, 1))
        };
    }
    if a >= 1e9 {
        format!("{}G", fmt::decimal(v / 1e9, 1))
    } else if a >= 1e6 {
        format!("{}M", fmt::decimal(v / 1e6, 1))
    } else if a >= 1e4 {
        format!("{}k", fmt::decimal(v / 1e3, 1))
    } else if a >= 100.0 || a == 0.0 {
        fmt::decimal(v, 0)
    } else {
        fmt::decimal(v, 2)
    }
}

/// A nanoTON value as TON for an axis: [`compact`] of TON.
pub fn compact_ton(nano: f64) -> String {
    compact(nano / 1e9)
}

/// The smallest "nice" number (1, 2, 2.5, 5 × 10ⁿ) at or above `v`.
fn nice(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|x| *x >= v * 0.999_999)
        .unwrap_or(10.0 * p)
}

const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 26.0;

/// A line chart of `series` over time: a y axis from 0 with three labelled grid lines, an x
/// axis labelled relative to `opts.now`, one polyline per series, a legend when there are
/// several. Without points it says so.
pub fn line_chart(series: &[Series], opts: &ChartOpts) -> String {
    let (w, h) = (
        f64::from(opts.width.max(200)),
        f64::from(opts.height.max(80)),
    );
    let mut o = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">",
        esc(&series
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "))
    );
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut t0, mut t1, mut ymax) = (u64::MAX, 0u64, 0f64);
    for (t, v) in all {
        t0 = t0.min(*t);
        t1 = t1.max(*t);
        if v.is_finite() {
            ymax = ymax.max(*v);
        }
    }
    if t0 > t1 {
        let _ = write!(
            o,
            "<text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data yet</text></svg>",
            w / 2.0,
            h / 2.0
        );
        return o;
    }
    let top = nice(ymax);
    let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
    let span = (t1 - t0).max(1) as f64;
    let x = |t: u64| LEFT + (t - t0) as f64 / span * pw;
    let y = |v: f64| TOP + ph - (v.clamp(0.0, top) / top) * ph;
    for i in 0..=2 {
        let v = top * f64::from(i) / 2.0;
        let yy = y(v);
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/>\
             <text class=\"axis\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            esc(&(opts.format)(v))
        );
    }
    for (i, t, label) in x_ticks(t0, t1, opts.now) {
        let anchor = ["start", "middle", "end"][i];
        let _ = write!(
            o,
            "<text class=\"axis\" x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            x(t),
            h - 8.0,
            esc(&label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            o,
            "<polyline class=\"line s{}\" points=\"{}\"><title>{}</title></polyline>",
            i % 6,
            pts.join(" "),
            esc(&s.name)
        );
    }
    o.push_str("</svg>");
    if series.len() > 1 {
        o.push_str("<p class=\"legend\">");
        for (i, s) in series.iter().enumerate() {
            let _ = write!(o, "<span class=\"key k{}\">{}</span>", i % 6, esc(&s.name));
        }
        o.push_str("</p>");
    }
    o
}

/// The x axis's labels over `[t0, t1]`: (position 0 start, 1 middle, 2 end; time; text).
/// Three when they read apart; one point (all three would sit on it) or a span too short
/// for a middle of its own gets only distinct labels, so none overlap or repeat.
fn x_ticks(t0: u64, t1: u64, now: u64) -> Vec<(usize, u64, String)> {
    // The charts end now: the last bucket is the one in progress.
    let label = |i: usize, t: u64| {
        if i == 2 || t >= now {
            "now".to_owned()
        } else {
            format!("−{}", fmt::secs(now - t))
        }
    };
    if t0 == t1 {
        return vec![(0, t0, label(if t0 >= now { 2 } else { 0 }, t0))];
    }
    let mut ticks = vec![(0, t0, label(0, t0))];
    let mid = t0 + (t1 - t0) / 2;
    let (first, last) = (label(0, t0), label(2, t1));
    let middle = label(1, mid);
    if mid > t0 && middle != first && middle != last {
        ticks.push((1, mid, middle));
    }
    if last != first {
        ticks.push((2, t1, last));
    }
    ticks
}

/// A horizontal bar chart: one labelled bar per `(label, value)`, the value written after
/// it, bars scaled to the largest. Without bars it says so.
pub fn bar_chart(bars: &[(String, f64)], opts: &ChartOpts) -> String {
    let w = f64::from(opts.width.max(200));
    if bars.is_empty() {
        return "<p class=\"empty\">nothing yet</p>".into();
    }
    let row = 28.0;
    let h = row * bars.len() as f64 + 4.0;
    let label_w = (w * 0.3).min(180.0);
    let value_w = 110.0;
    let bar_w = w - label_w - value_w;
    let max = bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let mut o = format!(
        "<svg class=\"chart bars\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">",
        esc(&bars
            .iter()
            .map(|b| b.0.as_str())
            .collect::<Vec<_>>()
            .join(", "))
    );
    let chars = (label_w / 10.0) as usize;
    for (i, (label, v)) in bars.iter().enumerate() {
        let y0 = 2.0 + row * i as f64;
        let len = if max > 0.0 && v.is_finite() {
            (v.max(0.0) / max * bar_w).max(1.0)
        } else {
            1.0
        };
        let shown = if label.chars().count() > chars {
            fmt::short(label, chars.saturating_sub(1) / 2)
        } else {
            label.clone()
        };
        let _ = write!(
            o,
            "<g><title>{}: {}</title><text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar s{}\" x=\"{label_w}\" y=\"{:.1}\" width=\"{len:.1}\" height=\"{}\" rx=\"3\"/>\
             <text class=\"value\" x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            esc(label),
            esc(&(opts.format)(*v)),
            label_w - 8.0,
            y0 + 19.0,
            esc(&shown),
            i % 6,
            y0 + 3.0,
            row - 6.0,
            label_w + len + 6.0,
            y0 + 19.0,
            esc(&(opts.format)(*v))
        );
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers_and_compact_values() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(1.7), 2.0);
        assert_eq!(nice(2.1), 2.5);
        assert_eq!(nice(450.0), 500.0);
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(950.0), "950");
        assert_eq!(compact(12_300.0), "12.3k");
        assert_eq!(compact(3_400_000.0), "3.4M");
        assert_eq!(compact(0.25), "0.25");
        assert_eq!(compact_ton(1.5e9), "1.5");
        assert_eq!(compact(0.0025), "2.5m");
        assert_eq!(compact_ton(2112.0), "2.1µ");
        assert_eq!(compact(3e-9), "3n");
    }

    #[test]
    fn a_line_chart_has_axes_labels_and_one_line_per_series() {
        let now = 1000;
        let a = Series::new(
            "requests",
            (700..=1000).map(|t| (t, (t % 7) as f64)).collect(),
        );
        let b = Series::new("errors <x>", vec![(700, 1.0), (1000, 2.0)]);
        let svg = line_chart(&[a, b], &ChartOpts::new(now));
        assert!(svg.starts_with("<svg class=\"chart\" viewBox=\"0 0 640 200\""));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("class=\"grid\"").count(), 3);
        // y from 0 to the nice top (max 6 → 10); x from −5 min to now.
        assert!(svg.contains(">0</text>") && svg.contains(">10</text>"));
        assert!(svg.contains(">−5 min</text>") && svg.contains(">now</text>"));
        assert!(svg.contains("errors &lt;x&gt;") && !svg.contains("<x>"));
        assert!(svg.contains("class=\"legend\""));
        // Every point lies inside the plot.
        let pts = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        for p in pts.split(' ') {
            let (x, y) = p.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((LEFT..=640.0 - RIGHT).contains(&x) && (TOP..=200.0 - BOTTOM).contains(&y));
        }
    }

    /// The x axis's labels as (x, text).
    fn x_labels(svg: &str) -> Vec<(f64, String)> {
        svg.split("<text class=\"axis\" x=\"")
            .skip(1)
            .filter(|t| t.contains(" y=\"192\""))
            .map(|t| {
                let x = t.split('"').next().unwrap().parse().unwrap();
                let text = t.split('>').nth(1).unwrap().split('<').next().unwrap();
                (x, text.to_owned())
            })
            .collect()
    }

    #[test]
    fn few_points_get_x_labels_that_do_not_overlap() {
        let now = 1000;
        // One point: one label (three would sit on one spot).
        let one = line_chart(&[Series::new("a", vec![(1000, 1.0)])], &ChartOpts::new(now));
        assert_eq!(x_labels(&one), vec![(LEFT, "now".to_owned())]);
        let old = line_chart(&[Series::new("a", vec![(940, 1.0)])], &ChartOpts::new(now));
        assert_eq!(x_labels(&old), vec![(LEFT, "−1 min".to_owned())]);
        // Two points a second apart: two labels at the two ends, no middle repeating one.
        let two = line_chart(
            &[Series::new("a", vec![(999, 1.0), (1000, 2.0)])],
            &ChartOpts::new(now),
        );
        let l = x_labels(&two);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!((l[0].1.as_str(), l[1].1.as_str()), ("−1 s", "now"));
        assert!(l[1].0 - l[0].0 > 100.0, "{l:?}");
        // Three points: three distinct labels, apart.
        let three = line_chart(
            &[Series::new("a", vec![(998, 1.0), (999, 1.0), (1000, 2.0)])],
            &ChartOpts::new(now),
        );
        let l = x_labels(&three);
        assert_eq!(
            l.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
            ["−2 s", "−1 s", "now"]
        );
        assert!(l.windows(2).all(|w| w[1].0 - w[0].0 > 100.0), "{l:?}");
    }

    #[test]
    fn charts_without_data_say_so() {
        assert!(line_chart(&[], &ChartOpts::new(0)).contains("no data yet"));
        assert!(
            line_chart(&[Series::new("x", vec![])], &ChartOpts::new(0)).contains("no data yet")
        );
        assert!(bar_chart(&[], &ChartOpts::new(0)).contains("nothing yet"));
    }

    #[test]
    fn bars_scale_to_the_largest_and_escape_labels() {
        let svg = bar_chart(
            &[("<m>".into(), 2e9), ("b".into(), 1e9), ("c".into(), 0.0)],
            &ChartOpts::new(0).format(|v| fmt::ton(v as u128)),
        );
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("&lt;m&gt;: 2 TON") && !svg.contains("<m>"));
        let widths: Vec<f64> = svg
            .split("width=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            (widths[0] - 2.0 * widths[1]).abs() < 0.2 && widths[2] == 1.0,
            "{widths:?}"
        );
    }
}
