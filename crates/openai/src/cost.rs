//! COCOON's cost fields in answers.
//!
//! A COCOON worker adds three fields to every `usage` object its answer carries, in nanoTON:
//! `prompt_total_cost` (adjusted prompt and cached tokens × `price_per_token`),
//! `completion_total_cost` (adjusted completion and reasoning tokens × `price_per_token`) and
//! `total_cost` (their sum). [`CostInjector`] does the same to a body as it streams by: SSE
//! events and JSON values that carry a `usage` object are re-serialised with the fields added,
//! everything else passes unchanged. It buffers at most one unfinished event or value, up to a
//! limit: an event or value longer than that, and everything after it, passes unchanged,
//! however the body is cut into chunks.

use serde_json::Value;

use crate::usage::{AdjustedTokens, Usage};

/// What the body looked like so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Unknown,
    Json,
    Sse,
    /// Over the limit or not JSON: everything passes unchanged.
    Raw,
}

/// Adds COCOON's cost fields to the `usage` objects of a body as it streams by.
pub struct CostInjector {
    shape: Shape,
    buf: Vec<u8>,
    limit: usize,
    price_per_token: u64,
    adjust: Box<dyn Fn(&Usage) -> AdjustedTokens + Send + Sync>,
}

impl std::fmt::Debug for CostInjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CostInjector")
            .field("shape", &self.shape)
            .field("buffered", &self.buf.len())
            .field("limit", &self.limit)
            .field("price_per_token", &self.price_per_token)
            .finish()
    }
}

/// The three cost fields of `adjusted` at `price_per_token`, saturating.
pub fn cost_fields(adjusted: &AdjustedTokens, price_per_token: u64) -> [(&'static str, u64); 3] {
    let c = adjusted.categories;
    let nano = |t: u64| t.saturating_mul(price_per_token);
    let prompt = nano(c.prompt.saturating_add(c.cached));
    let completion = nano(c.completion.saturating_add(c.reasoning));
    [
        ("prompt_total_cost", prompt),
        ("completion_total_cost", completion),
        ("total_cost", nano(adjusted.total)),
    ]
}

impl CostInjector {
    /// An injector pricing a usage as `adjust(usage)` adjusted tokens at `price_per_token`,
    /// buffering at most `limit` bytes of one unfinished event or value.
    pub fn new(
        limit: usize,
        price_per_token: u64,
        adjust: impl Fn(&Usage) -> AdjustedTokens + Send + Sync + 'static,
    ) -> Self {
        CostInjector {
            shape: Shape::Unknown,
            buf: Vec::new(),
            limit,
            price_per_token,
            adjust: Box::new(adjust),
        }
    }

    /// Feeds the next body chunk; returns the bytes to pass on now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.shape == Shape::Raw {
            return chunk.to_vec();
        }
        self.buf.extend_from_slice(chunk);
        if self.shape == Shape::Unknown {
            let Some(first) = self.buf.iter().find(|b| !b.is_ascii_whitespace()) else {
                if self.buf.len() > self.limit {
                    return self.give_up(Vec::new());
                }
                return Vec::new();
            };
            self.shape = if matches!(first, b'{' | b'[') {
                Shape::Json
            } else {
                Shape::Sse
            };
        }
        let out = match self.shape {
            Shape::Sse => self.drain_sse(),
            Shape::Json => self.drain_json(),
            Shape::Unknown | Shape::Raw => Vec::new(),
        };
        if self.buf.len() > self.limit {
            return self.give_up(out);
        }
        out
    }

    /// The end of the body: whatever is still held, unchanged.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Stops injecting: `out` and everything held pass on unchanged.
    fn give_up(&mut self, mut out: Vec<u8>) -> Vec<u8> {
        self.shape = Shape::Raw;
        out.append(&mut self.buf);
        out
    }

    /// `v` with the cost fields added to its `usage` object, when it has one.
    fn priced(&self, v: &mut Value) -> bool {
        let Some(u) = v.get("usage").and_then(Usage::from_json) else {
            return false;
        };
        let fields = cost_fields(&(self.adjust)(&u), self.price_per_token);
        let Some(obj) = v.get_mut("usage").and_then(Value::as_object_mut) else {
            return false;
        };
        for (k, n) in fields {
            obj.insert(k.to_owned(), Value::from(n));
        }
        true
    }

    /// Complete SSE events (ended by a blank line) out of the buffer.
    fn drain_sse(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len());
        let mut start = 0;
        while let Some((end, term)) = event_end(&self.buf[start..]) {
            if end + term > self.limit {
                // Longer than the limit: it and the rest pass unchanged, as they would have
                // had it arrived in pieces.
                self.buf.drain(..start);
                return self.give_up(out);
            }
            self.sse_event(&self.buf[start..start + end + term], term, &mut out);
            start += end + term;
        }
        self.buf.drain(..start);
        out
    }

    /// One SSE event (with its terminator of `term` bytes) onto `out`, priced when it is a
    /// single `data:` line holding a JSON object with a usage.
    fn sse_event(&self, event: &[u8], term: usize, out: &mut Vec<u8>) {
        match self.priced_event(&event[..event.len() - term]) {
            Some(json) => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(json.as_bytes());
                out.extend_from_slice(&event[event.len() - term..]);
            }
            None => out.extend_from_slice(event),
        }
    }

    /// The JSON of an event's body with the cost fields added, when it needs them.
    fn priced_event(&self, body: &[u8]) -> Option<String> {
        let data = body.strip_prefix(b"data:")?;
        if data.contains(&b'\n') || !may_hold_usage(data) {
            return None;
        }
        let text = std::str::from_utf8(data).ok()?;
        let mut v = serde_json::from_str::<Value>(text.trim_start()).ok()?;
        self.priced(&mut v).then(|| v.to_string())
    }

    /// Complete JSON values out of the buffer.
    fn drain_json(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut broken = false;
        let limit = self.limit;
        {
            let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            loop {
                let start = consumed;
                match stream.next() {
                    Some(Ok(mut v)) => {
                        if stream.byte_offset() - start > limit {
                            broken = true;
                            break;
                        }
                        consumed = stream.byte_offset();
                        let raw = &self.buf[start..consumed];
                        if self.priced(&mut v) {
                            let lead = raw.iter().take_while(|b| b.is_ascii_whitespace()).count();
                            out.extend_from_slice(&raw[..lead]);
                            out.extend_from_slice(v.to_string().as_bytes());
                        } else {
                            out.extend_from_slice(raw);
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => {
                        broken = true;
                        break;
                    }
                    None => {
                        out.extend_from_slice(&self.buf[start..]);
                        consumed = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        if broken {
            return self.give_up(out);
        }
        out
    }
}

/// Where the first SSE event ends: the offset of its blank line and the terminator's length
/// (the earlier of `\n\n` and `\r\n\r\n`).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let p = from + i;
        match buf.get(p + 1) {
            Some(b'\n') => return Some((p, 2)),
            Some(b'\r') if p >= 1 && buf[p - 1] == b'\r' && buf.get(p + 2) == Some(&b'\n') => {
                return Some((p - 1, 4));
            }
            _ => from = p + 1,
        }
    }
    None
}

/// Whether `bytes` may hold a usage object: `"usage"`, then `:` and `{` (spaces between
/// allowed). A cheap test before parsing: most events of a stream carry no usage, or
/// `"usage":null`.
pub fn may_hold_usage(bytes: &[u8]) -> bool {
    let key = b"\"usage\"";
    let mut rest = bytes;
    while let Some(at) = rest.windows(key.len()).position(|w| w == key) {
        rest = &rest[at + key.len()..];
        let mut after = rest.iter().skip_while(|b| b.is_ascii_whitespace());
        if after.next() != Some(&b':') {
            continue;
        }
        if after.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_hold_usage_skips_events_without_a_usage_object() {
        for yes in [
            &br#"{"usage":{"total_tokens":1}}"#[..],
            br#"{"a":1, "usage" :  {"x":1}}"#,
            br#"{"usage":null,"x":{"usage":{}}}"#,
        ] {
            assert!(may_hold_usage(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &br#"{"usage":null}"#[..],
            br#"{"choices":[]}"#,
            br#"{"content":"\"usage\": {"}"#,
            br#"{"usage""#,
            b"",
        ] {
            assert!(!may_hold_usage(no), "{}", String::from_utf8_lossy(no));
        }
    }
    use crate::usage::{Multipliers, PriceTable};
    use proptest::prelude::*;

    fn injector(limit: usize) -> CostInjector {
        let prices = PriceTable {
            price_per_token: 20,
            worker_fee_per_token: 10,
            multipliers: Multipliers {
                prompt: 10_000,
                cached: 5_000,
                completion: 20_000,
                reasoning: 20_000,
            },
        };
        CostInjector::new(limit, 20, move |u| prices.adjust(u, 1500))
    }

    fn usage_of(bytes: &[u8]) -> Value {
        let s = std::str::from_utf8(bytes).unwrap();
        let json = s
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .find(|l| l.contains("prompt_tokens"))
            .unwrap_or(s);
        serde_json::from_str::<Value>(json).unwrap()["usage"].clone()
    }

    #[test]
    fn sse_usage_event_gets_the_costs_split_anywhere() {
        let body = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":4,\"total_tokens\":14,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\ndata: [DONE]\n\n";
        for split in [1, 7, 40, 90, body.len()] {
            let mut inj = injector(1 << 20);
            let mut out = Vec::new();
            for c in body.chunks(split) {
                out.extend(inj.push(c));
            }
            out.extend(inj.finish());
            let s = String::from_utf8(out.clone()).unwrap();
            // Untouched events pass byte for byte.
            assert!(s.starts_with(
                "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n"
            ));
            assert!(s.ends_with("data: [DONE]\n\n"));
            let u = usage_of(&out);
            // prompt 8 × 1.5 = 12, cached 2 × 1.5 × 0.5 = 1, completion 4 × 1.5 × 2 = 12.
            assert_eq!(u["prompt_total_cost"], 13 * 20);
            assert_eq!(u["completion_total_cost"], 12 * 20);
            assert_eq!(u["total_cost"], 25 * 20);
            assert_eq!(u["prompt_tokens"], 10);
        }
    }

    /// Feeds `body` in chunks cut at `cuts` (offsets, any order).
    fn fed(limit: usize, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut inj = injector(limit);
        let (mut out, mut at) = (Vec::new(), 0);
        for c in cuts.into_iter().chain([body.len()]) {
            out.extend(inj.push(&body[at..c]));
            at = c;
        }
        out.extend(inj.finish());
        out
    }

    proptest! {
        /// Whatever the chunking, the same output; bytes without a usage object pass
        /// unchanged; the usage a tracker reads is the same before and after.
        #[test]
        fn chunking_never_matters_and_only_usage_changes(
            events in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-z :{}\"]{0,12}".prop_map(|t| format!("data: {t}\n\n")),
                    (0u32..500, 0u32..500).prop_map(|(p, c)| format!(
                        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}\n\n"
                    )),
                    proptest::strategy::Just("data: [DONE]\n\n".to_owned()),
                    proptest::strategy::Just(": comment\r\n\r\n".to_owned()),
                ],
                0..6,
            ),
            json in proptest::bool::ANY,
            cuts in proptest::collection::vec(0usize..400, 0..6),
            limit in proptest::prop_oneof![proptest::strategy::Just(1usize << 20), 8usize..64],
        ) {
            let body: Vec<u8> = if json {
                events
                    .iter()
                    .filter_map(|e| e.strip_prefix("data: "))
                    .filter(|e| e.starts_with('{'))
                    .collect::<String>()
                    .into_bytes()
            } else {
                events.concat().into_bytes()
            };
            let whole = fed(limit, &body, &[]);
            prop_assert_eq!(&fed(limit, &body, &cuts), &whole);
            let has_usage = events.iter().any(|e| e.contains("usage"));
            if !has_usage {
                prop_assert_eq!(&whole, &body);
            }
            let mut before = crate::UsageTracker::new();
            before.push(&body);
            let mut after = crate::UsageTracker::new();
            after.push(&whole);
            prop_assert_eq!(before.usage(), after.usage());
        }
    }

    #[test]
    fn json_body_gets_the_costs_and_other_bodies_pass() {
        let body = b"{\"id\":\"x\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}";
        let mut inj = injector(1 << 20);
        let mut out = inj.push(&body[..10]);
        assert!(out.is_empty());
        out.extend(inj.push(&body[10..]));
        out.extend(inj.finish());
        let u = usage_of(&out);
        assert_eq!(u["total_cost"], (4 + 6) * 20);
        // Not JSON: passes unchanged.
        let mut inj = injector(1 << 20);
        let mut out = inj.push(b"{nope");
        out.extend(inj.push(b" more"));
        out.extend(inj.finish());
        assert_eq!(out, b"{nope more");
        // Over the limit: passes unchanged from there on.
        let mut inj = injector(8);
        let mut out = inj.push(b"data: {\"usage\":");
        out.extend(inj.push(b"{\"prompt_tokens\":1}}\n\n"));
        out.extend(inj.finish());
        assert_eq!(out, b"data: {\"usage\":{\"prompt_tokens\":1}}\n\n");
    }
}
