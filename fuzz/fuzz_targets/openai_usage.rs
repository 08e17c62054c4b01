//! An engine's answer as the worker and the proxy read it: `cocoon_openai::UsageTracker` and
//! the SSE parser under it (`cocoon_openai::sse::SseParser`), fed arbitrary bytes in arbitrary
//! chunks.
//!
//! Input: a flags byte (bit 0: collect the generated text; bits 1-2: the buffer limit, 16 MiB,
//! 16 B, 256 B or 4 KiB; the rest: the coefficient the usage is priced at, in steps of 250),
//! then `n:u8` and `n % 16` chunk-size bytes (used in a cycle; size = byte + 1; none: one
//! chunk), then the answer.
//!
//! Checked: no panic.
//! - SSE parser: the events, the error and `is_idle` do not depend on the chunking; without an
//!   error the events are those of a parser without a limit, and before one they are a prefix
//!   of them; field values hold no line break (and an `id` no NUL).
//! - Tracker, after every chunk: usage, values seen and generated pieces never decrease, and
//!   `[DONE]` and a broken stream stay; the collected text stays within the limit. Fed in chunks
//!   or whole, it reaches the same usage, pieces, `[DONE]` and text when neither broke, and it
//!   breaks on the same streams when the answer is SSE. (A JSON answer may be a stream of
//!   values: a bare top-level number split across chunks reads as two values, so there only
//!   unbroken runs are compared.)
//! - Usage: the billing categories add up to the reported counts, and pricing never panics.
#![no_main]

use cocoon_openai::sse::{Event, SseParser};
use cocoon_openai::{Multipliers, PriceTable, Usage, UsageTracker};
use libfuzzer_sys::fuzz_target;

const LIMITS: [usize; 4] = [16 << 20, 16, 256, 4096];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, body) = rest.split_at(n);
    let collect = flags & 1 != 0;
    let limit = LIMITS[usize::from((flags >> 1) & 3)];
    let coefficient = u64::from(flags >> 3) * 250;
    let chunks = chunk(body, sizes);

    check_sse(body, &chunks, limit);

    let whole = track(std::iter::once(body), limit, collect);
    let parts = track(chunks.iter().copied(), limit, collect);
    let sse = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| !matches!(b, b'{' | b'['));
    if sse || body.len() <= limit {
        if sse {
            assert_eq!(
                whole.broken().is_some(),
                parts.broken().is_some(),
                "broken differs: {:?} / {:?}",
                whole.broken(),
                parts.broken()
            );
        }
        if whole.broken().is_none() && parts.broken().is_none() {
            assert_eq!(whole.usage(), parts.usage());
            assert_eq!(whole.saw_done(), parts.saw_done());
            assert_eq!(whole.generated_pieces(), parts.generated_pieces());
            assert_eq!(whole.text(), parts.text());
            if sse {
                assert_eq!(whole.values_seen(), parts.values_seen());
            }
        }
    }

    for t in [&whole, &parts] {
        if let Some(u) = t.usage() {
            check_usage(&u, coefficient);
        }
    }
});

/// `body` cut into chunks whose sizes cycle through `sizes` (each + 1); one chunk when empty.
fn chunk<'a>(body: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![body];
    }
    let mut out = Vec::new();
    let mut rest = body;
    for &s in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at((usize::from(s) + 1).min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

fn check_sse(body: &[u8], chunks: &[&[u8]], limit: usize) {
    let reference = SseParser::with_limit(usize::MAX)
        .push(body)
        .expect("no limit, no error");
    for ev in &reference {
        check_event(ev);
    }

    let mut one = SseParser::with_limit(limit);
    let whole = one.push(body);

    let mut parser = SseParser::with_limit(limit);
    let mut events = Vec::new();
    let mut error = None;
    for c in chunks {
        match parser.push(c) {
            Ok(evs) => events.extend(evs),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    match whole {
        Ok(evs) => {
            assert_eq!(error, None, "an error only in chunks");
            assert_eq!(evs, events, "events depend on the chunking");
            assert_eq!(evs, reference, "the limit changed events");
            assert_eq!(one.is_idle(), parser.is_idle());
        }
        Err(e) => {
            assert_eq!(error, Some(e), "errors depend on the chunking");
            assert!(events.len() <= reference.len());
            assert_eq!(events[..], reference[..events.len()], "not a prefix");
        }
    }
}

fn check_event(ev: &Event) {
    assert!(!ev.data.contains('\r'), "data holds a CR");
    for f in [&ev.event, &ev.id].into_iter().flatten() {
        assert!(!f.contains(['\r', '\n']), "field holds a line break: {f:?}");
    }
    if let Some(id) = &ev.id {
        assert!(!id.contains('\0'), "id holds a NUL");
    }
}

fn track<'a>(chunks: impl Iterator<Item = &'a [u8]>, limit: usize, collect: bool) -> UsageTracker {
    let mut t = UsageTracker::with_limit(limit);
    if collect {
        t = t.collecting_text();
    }
    let mut last = (None::<Usage>, 0, 0, false, None::<String>);
    for c in chunks {
        t.push(c);
        let (usage, values, pieces, done, broken) = &last;
        if let (Some(before), Some(now)) = (usage, t.usage()) {
            assert!(now.prompt_tokens >= before.prompt_tokens);
            assert!(now.completion_tokens >= before.completion_tokens);
            assert!(now.total_tokens >= before.total_tokens);
            assert!(now.cached_tokens() >= before.cached_tokens());
            assert!(now.reasoning_tokens() >= before.reasoning_tokens());
        }
        assert!(usage.is_none() || t.usage().is_some(), "usage forgotten");
        assert!(t.values_seen() >= *values);
        assert!(t.generated_pieces() >= *pieces);
        assert!(!done || t.saw_done(), "[DONE] forgotten");
        if let Some(b) = broken {
            assert_eq!(t.broken(), Some(b.as_str()), "a broken tracker changed");
        }
        if let Some(text) = t.text() {
            assert!(text.len() <= limit, "text beyond the limit");
        }
        last = (
            t.usage(),
            t.values_seen(),
            t.generated_pieces(),
            t.saw_done(),
            t.broken().map(str::to_owned),
        );
    }
    t
}

fn check_usage(u: &Usage, coefficient: u64) {
    assert!(u.total_tokens >= u.prompt_tokens.max(u.completion_tokens));
    let c = u.categories();
    assert_eq!(c.prompt + c.cached, u.prompt_tokens);
    assert_eq!(c.completion + c.reasoning, u.completion_tokens);
    let prices = PriceTable {
        price_per_token: 20,
        worker_fee_per_token: 16,
        multipliers: Multipliers {
            prompt: 10_000,
            cached: 1_000,
            completion: 20_000,
            reasoning: u32::MAX,
        },
    };
    let a = prices.adjust(u, coefficient);
    let sum = [
        a.categories.prompt,
        a.categories.cached,
        a.categories.completion,
        a.categories.reasoning,
    ]
    .into_iter()
    .fold(0u64, u64::saturating_add);
    assert_eq!(a.total, sum);
    assert!(prices.commission(a.total) <= prices.client_cost(a.total));
}
