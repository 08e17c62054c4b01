//! How values read on a page: every number, time, hash and flag goes through one of these,
//! so a page never prints a Rust `Debug` value (`Some(3)`, `[1, 2]`).

/// nanoTON as TON with up to 9 decimals, trailing zeros trimmed: `1.5 TON`, `0 TON`.
pub fn ton(nanoton: u128) -> String {
    format!("{} TON", ton_number(nanoton))
}

/// [`ton`] without the unit.
pub fn ton_number(nanoton: u128) -> String {
    let whole = nanoton / 1_000_000_000;
    let frac = nanoton % 1_000_000_000;
    if frac == 0 {
        return thousands(whole);
    }
    let f = format!("{frac:09}");
    format!("{}.{}", thousands(whole), f.trim_end_matches('0'))
}

/// A signed nanoTON amount as [`ton`] does it, with `−` for a negative one.
pub fn ton_signed(nanoton: i128) -> String {
    if nanoton < 0 {
        format!("−{}", ton(nanoton.unsigned_abs()))
    } else {
        ton(nanoton.unsigned_abs())
    }
}

/// An integer with thousands separators: `1 234 567` uses a thin space (U+202F), which
/// neither wraps nor reads as a decimal mark.
pub fn thousands(n: impl Into<u128>) -> String {
    let s = n.into().to_string();
    let mut o = String::with_capacity(s.len() + s.len() / 3 * 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            o.push('\u{202f}');
        }
        o.push(c);
    }
    o
}

/// A token count: [`thousands`].
pub fn tokens(n: u64) -> String {
    thousands(n)
}

/// A float with at most `decimals` decimals, trailing zeros trimmed; not finite reads `–`.
pub fn decimal(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A share in `0..=1` as a percentage: `97.5 %`.
pub fn percent(share: f64) -> String {
    format!("{} %", decimal(share * 100.0, 1))
}

/// A duration in milliseconds: `850 ms`, `1.25 s`, `3 min 4 s`, `2 h 5 min`, `3 d 4 h`.
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{} s", decimal(ms as f64 / 1000.0, 2))
    } else {
        secs(ms / 1000)
    }
}

/// A duration in seconds: `45 s`, `3 min 4 s`, `2 h 5 min`, `3 d 4 h`.
pub fn secs(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => two(s / 60, "min", s % 60, "s"),
        3600..86_400 => two(s / 3600, "h", s % 3600 / 60, "min"),
        _ => two(s / 86_400, "d", s % 86_400 / 3600, "h"),
    }
}

fn two(a: u64, ua: &str, b: u64, ub: &str) -> String {
    if b == 0 {
        format!("{a} {ua}")
    } else {
        format!("{a} {ua} {b} {ub}")
    }
}

/// How long before `now` the time `then` was (both Unix seconds): `12 s ago`, `in 5 s` for
/// a time ahead of `now`, `just now` within a second.
pub fn ago(now: u64, then: u64) -> String {
    if then > now {
        return format!("in {}", secs(then - now));
    }
    match now - then {
        0 => "just now".into(),
        d => format!("{} ago", secs(d)),
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(unix: u64) -> String {
    let days = unix / 86_400;
    let rem = unix % 86_400;
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 as (year, month, day): Howard Hinnant's civil-from-days.
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A long identifier (hash, key, address) shortened to its first and last `keep`
/// characters around `…`; short ones are returned whole.
pub fn short(s: &str, keep: usize) -> String {
    let n = s.chars().count();
    if n <= 2 * keep + 1 {
        return s.to_owned();
    }
    let head: String = s.chars().take(keep).collect();
    let tail: String = s.chars().skip(n - keep).collect();
    format!("{head}…{tail}")
}

/// `yes` or `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// An optional value read through `f`, `–` when absent.
pub fn or_dash<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ton_trims_and_groups() {
        assert_eq!(ton(0), "0 TON");
        assert_eq!(ton(1_500_000_000), "1.5 TON");
        assert_eq!(ton(1), "0.000000001 TON");
        assert_eq!(ton(1_234_000_000_000), "1\u{202f}234 TON");
        assert_eq!(ton_signed(-2_000_000_000), "−2 TON");
        assert_eq!(
            ton_number(u128::from(u64::MAX)),
            "18\u{202f}446\u{202f}744\u{202f}073.709551615"
        );
    }

    #[test]
    fn counts_durations_and_times() {
        assert_eq!(tokens(0), "0");
        assert_eq!(tokens(999), "999");
        assert_eq!(tokens(1000), "1\u{202f}000");
        assert_eq!(tokens(1_234_567), "1\u{202f}234\u{202f}567");
        assert_eq!(millis(850), "850 ms");
        assert_eq!(millis(1250), "1.25 s");
        assert_eq!(millis(61_000), "1 min 1 s");
        assert_eq!(secs(7500), "2 h 5 min");
        assert_eq!(secs(3 * 86_400), "3 d");
        assert_eq!(ago(100, 88), "12 s ago");
        assert_eq!(ago(100, 100), "just now");
        assert_eq!(ago(100, 105), "in 5 s");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_709_251_199), "2024-02-29 23:59:59 UTC");
        assert_eq!(decimal(2.50, 2), "2.5");
        assert_eq!(decimal(3.0, 2), "3");
        assert_eq!(decimal(f64::NAN, 2), "–");
        assert_eq!(percent(0.975), "97.5 %");
    }

    #[test]
    fn hashes_shorten_and_options_read_as_words() {
        let h = "a".repeat(64);
        assert_eq!(short(&h, 6), format!("{}…{}", "a".repeat(6), "a".repeat(6)));
        assert_eq!(short("abc", 6), "abc");
        assert_eq!(yes_no(true), "yes");
        assert_eq!(or_dash(None::<u8>, |v| v.to_string()), "–");
        assert_eq!(or_dash(Some(3u8), |v| v.to_string()), "3");
    }
}
