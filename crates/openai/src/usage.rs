//! Token usage: reading it from engine answers, and the price arithmetic.
//!
//! Parsing the engine's answer as a sequence of bare JSON values fails on Server-Sent Events
//! (a streamed answer would be billed as zero tokens), so the
//! [`UsageTracker`] here accepts both shapes — a JSON body (or newline-delimited JSON) and an SSE
//! stream — incrementally, keeps the largest value seen for every counter, and never buffers
//! more than its limit.
//!
//! Prices (COCOON-compatible, see docs/cocoon-compat.md): usage is split into four
//! categories, each category is scaled by the worker's coefficient (1000 = 1.0) and by its price
//! multiplier (10000 = 1.0), truncated, and summed, in `u128` integers so that two parties
//! computing the same bill always agree to the token.

use crate::sse::SseParser;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `usage.prompt_tokens_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the engine's prefix cache.
    #[serde(default)]
    pub cached_tokens: u64,
}

/// `usage.completion_tokens_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    /// Completion tokens spent on hidden reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

/// An OpenAI `usage` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: u64,
    /// Cached prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Reasoning tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

impl Usage {
    /// A usage with only prompt and completion counts.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: None,
            completion_tokens_details: None,
        }
    }

    /// Cached prompt tokens (0 when not reported).
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }

    /// Reasoning tokens (0 when not reported).
    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details
            .map_or(0, |d| d.reasoning_tokens)
    }

    /// Reads a `usage` JSON value leniently: missing or `null` counters are 0, negative or
    /// non-integer ones make the whole object unusable (`None`). Also accepts the top-level
    /// `reasoning_tokens` some engines report.
    pub fn from_json(v: &Value) -> Option<Usage> {
        let obj = v.as_object()?;
        let num = |o: &serde_json::Map<String, Value>, k: &str| -> Option<u64> {
            match o.get(k) {
                None | Some(Value::Null) => Some(0),
                Some(x) => x.as_u64(),
            }
        };
        let prompt = num(obj, "prompt_tokens")?;
        let completion = num(obj, "completion_tokens")?;
        let total = num(obj, "total_tokens")?;
        let cached = match obj.get("prompt_tokens_details") {
            Some(Value::Object(d)) => num(d, "cached_tokens")?,
            _ => 0,
        };
        let mut reasoning = match obj.get("completion_tokens_details") {
            Some(Value::Object(d)) => num(d, "reasoning_tokens")?,
            _ => 0,
        };
        reasoning = reasoning.max(num(obj, "reasoning_tokens")?);
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total.max(prompt.saturating_add(completion)),
            prompt_tokens_details: (cached > 0).then_some(PromptTokensDetails {
                cached_tokens: cached,
            }),
            completion_tokens_details: (reasoning > 0).then_some(CompletionTokensDetails {
                reasoning_tokens: reasoning,
            }),
        })
    }

    /// Element-wise maximum (a later chunk may repeat or refine an earlier usage).
    pub fn max(self, other: Usage) -> Usage {
        let cached = self.cached_tokens().max(other.cached_tokens());
        let reasoning = self.reasoning_tokens().max(other.reasoning_tokens());
        Usage {
            prompt_tokens: self.prompt_tokens.max(other.prompt_tokens),
            completion_tokens: self.completion_tokens.max(other.completion_tokens),
            total_tokens: self.total_tokens.max(other.total_tokens),
            prompt_tokens_details: (cached > 0).then_some(PromptTokensDetails {
                cached_tokens: cached,
            }),
            completion_tokens_details: (reasoning > 0).then_some(CompletionTokensDetails {
                reasoning_tokens: reasoning,
            }),
        }
    }

    /// The four billing categories.
    pub fn categories(&self) -> TokenCategories {
        let cached = self.cached_tokens().min(self.prompt_tokens);
        let reasoning = self.reasoning_tokens().min(self.completion_tokens);
        TokenCategories {
            prompt: self.prompt_tokens - cached,
            cached,
            completion: self.completion_tokens - reasoning,
            reasoning,
        }
    }
}

/// Usage split into the categories that are priced separately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCategories {
    /// Prompt tokens not served from cache.
    pub prompt: u64,
    /// Prompt tokens served from cache.
    pub cached: u64,
    /// Completion tokens that are not reasoning.
    pub completion: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
}

/// The root config's per-category price multipliers; 10000 means 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Multipliers {
    /// Prompt tokens.
    pub prompt: u32,
    /// Cached prompt tokens.
    pub cached: u32,
    /// Completion tokens.
    pub completion: u32,
    /// Reasoning tokens.
    pub reasoning: u32,
}

impl Default for Multipliers {
    fn default() -> Self {
        Multipliers {
            prompt: 10_000,
            cached: 10_000,
            completion: 10_000,
            reasoning: 10_000,
        }
    }
}

/// The coefficient meaning 1.0 (workers quote prices as multiples of this).
pub const COEFFICIENT_ONE: u64 = 1000;
/// The multiplier meaning 1.0.
pub const MULTIPLIER_ONE: u64 = 10_000;

/// `trunc(n × coefficient/1000 × multiplier/10000)` in exact integer arithmetic.
pub fn adjust_tokens(n: u64, coefficient: u64, multiplier: u64) -> u64 {
    let v = u128::from(n) * u128::from(coefficient) * u128::from(multiplier)
        / u128::from(COEFFICIENT_ONE * MULTIPLIER_ONE);
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Adjusted ("billable") tokens per category and their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustedTokens {
    /// Per-category adjusted counts.
    pub categories: TokenCategories,
    /// Their sum: the token count that is paid for.
    pub total: u64,
}

/// Prices from the root config, in nanoTON per adjusted token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTable {
    /// What a client pays per adjusted token.
    pub price_per_token: u64,
    /// What a worker earns per adjusted token (≤ `price_per_token`).
    pub worker_fee_per_token: u64,
    /// Category multipliers.
    pub multipliers: Multipliers,
}

impl PriceTable {
    /// Adjusted tokens for `usage` served at `coefficient`.
    pub fn adjust(&self, usage: &Usage, coefficient: u64) -> AdjustedTokens {
        let c = usage.categories();
        let m = self.multipliers;
        let cats = TokenCategories {
            prompt: adjust_tokens(c.prompt, coefficient, m.prompt.into()),
            cached: adjust_tokens(c.cached, coefficient, m.cached.into()),
            completion: adjust_tokens(c.completion, coefficient, m.completion.into()),
            reasoning: adjust_tokens(c.reasoning, coefficient, m.reasoning.into()),
        };
        let total = cats
            .prompt
            .saturating_add(cats.cached)
            .saturating_add(cats.completion)
            .saturating_add(cats.reasoning);
        AdjustedTokens {
            categories: cats,
            total,
        }
    }

    /// Tokens a proxy reserves before forwarding a request: `(max_tokens + request_bytes)`
    /// adjusted by the client's `max_coefficient` (request bytes stand in for prompt tokens).
    pub fn reservation(&self, max_tokens: u64, request_bytes: u64, max_coefficient: u64) -> u64 {
        adjust_tokens(
            max_tokens.saturating_add(request_bytes),
            max_coefficient,
            MULTIPLIER_ONE,
        )
    }

    /// nanoTON the client pays for `tokens` adjusted tokens.
    pub fn client_cost(&self, tokens: u64) -> u128 {
        u128::from(tokens) * u128::from(self.price_per_token)
    }

    /// nanoTON the worker earns for `tokens` adjusted tokens.
    pub fn worker_earning(&self, tokens: u64) -> u128 {
        u128::from(tokens) * u128::from(self.worker_fee_per_token)
    }

    /// nanoTON the proxy keeps: the difference, never negative.
    pub fn commission(&self, tokens: u64) -> u128 {
        self.client_cost(tokens)
            .saturating_sub(self.worker_earning(tokens))
    }
}

/// Whether a streamed choice carries generated output (text, reasoning or a tool call).
fn generated_piece(choice: &Value) -> bool {
    let nonempty = |v: Option<&Value>| match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        _ => false,
    };
    let delta = choice.get("delta");
    let field = |k: &str| nonempty(delta.and_then(|d| d.get(k)));
    field("content")
        || field("reasoning_content")
        || field("reasoning")
        || field("tool_calls")
        || nonempty(choice.get("text"))
}

/// What the tracker decided the body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Unknown,
    Json,
    Sse,
}

/// Finds usage in an engine's answer as it streams by.
///
/// Feed every body chunk to [`UsageTracker::push`]; [`UsageTracker::usage`] is the best usage
/// seen so far. The body itself is not modified.
#[derive(Debug)]
pub struct UsageTracker {
    shape: Shape,
    sse: SseParser,
    json_buf: Vec<u8>,
    limit: usize,
    usage: Option<Usage>,
    events: u64,
    broken: Option<String>,
    done: bool,
    text: Option<String>,
    generated: u64,
}

impl Default for UsageTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageTracker {
    /// A tracker that buffers at most 16 MiB of an unparsed JSON value.
    pub fn new() -> Self {
        Self::with_limit(16 << 20)
    }

    /// A tracker with a custom buffer limit.
    pub fn with_limit(limit: usize) -> Self {
        UsageTracker {
            shape: Shape::Unknown,
            sse: SseParser::with_limit(limit),
            json_buf: Vec::new(),
            limit,
            usage: None,
            events: 0,
            broken: None,
            done: false,
            text: None,
            generated: 0,
        }
    }

    /// Also collects the generated text (`choices[].delta.content`, `choices[].message.content`,
    /// `choices[].text`), up to the tracker's limit, so that usage can be counted locally when an
    /// engine does not report it.
    pub fn collecting_text(mut self) -> Self {
        self.text = Some(String::new());
        self
    }

    /// The generated text seen so far, when collecting.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Feeds the next body chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.broken.is_some() || chunk.is_empty() {
            return;
        }
        if self.shape == Shape::Unknown {
            self.json_buf.extend_from_slice(chunk);
            let Some(first) = self.json_buf.iter().find(|b| !b.is_ascii_whitespace()) else {
                return;
            };
            self.shape = if matches!(first, b'{' | b'[') {
                Shape::Json
            } else {
                Shape::Sse
            };
            let buffered = std::mem::take(&mut self.json_buf);
            return self.push(&buffered);
        }
        match self.shape {
            Shape::Sse => match self.sse.push(chunk) {
                Ok(events) => {
                    for ev in events {
                        if ev.is_done() {
                            self.done = true;
                            continue;
                        }
                        self.events += 1;
                        if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                            self.observe(&v);
                        }
                    }
                }
                Err(e) => self.broken = Some(e.to_string()),
            },
            Shape::Json => {
                if self.json_buf.len() + chunk.len() > self.limit {
                    self.broken = Some(format!("JSON value longer than {} bytes", self.limit));
                    return;
                }
                self.json_buf.extend_from_slice(chunk);
                self.drain_json();
            }
            Shape::Unknown => {}
        }
    }

    fn drain_json(&mut self) {
        let mut consumed = 0;
        let mut values = Vec::new();
        {
            let mut stream =
                serde_json::Deserializer::from_slice(&self.json_buf).into_iter::<Value>();
            loop {
                match stream.next() {
                    Some(Ok(v)) => {
                        consumed = stream.byte_offset();
                        values.push(v);
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        self.broken = Some(format!("answer is not JSON: {e}"));
                        break;
                    }
                    None => {
                        consumed = self.json_buf.len();
                        break;
                    }
                }
            }
        }
        self.json_buf.drain(..consumed);
        for v in values {
            self.events += 1;
            self.observe(&v);
        }
    }

    fn observe(&mut self, v: &Value) {
        if self.shape == Shape::Sse
            && let Some(choices) = v.get("choices").and_then(Value::as_array)
        {
            let pieces = choices.iter().filter(|c| generated_piece(c)).count();
            self.generated = self.generated.saturating_add(pieces as u64);
        }
        if let (Some(text), Some(choices)) = (
            self.text.as_mut(),
            v.get("choices").and_then(Value::as_array),
        ) {
            for c in choices {
                let piece = c
                    .get("delta")
                    .and_then(|d| d.get("content"))
                    .or_else(|| c.get("message").and_then(|m| m.get("content")))
                    .or_else(|| c.get("text"))
                    .and_then(Value::as_str);
                if let Some(p) = piece
                    && text.len() + p.len() <= self.limit
                {
                    text.push_str(p);
                }
            }
        }
        if let Some(u) = v.get("usage").and_then(Usage::from_json) {
            self.usage = Some(match self.usage {
                Some(prev) => prev.max(u),
                None => u,
            });
        }
    }

    /// The largest usage seen so far, if any chunk carried one.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Streamed pieces of generated output seen: one per choice per SSE event that carries
    /// text, reasoning or a tool-call fragment. Engines send every generated token at most
    /// once, and may end a choice with one more piece (text held back until the end: a
    /// stop-string prefix, an unfinished UTF-8 sequence), so more pieces than a request's
    /// limit plus its choices prove the engine went past it.
    pub fn generated_pieces(&self) -> u64 {
        self.generated
    }

    /// Number of JSON values (or SSE data events) seen.
    pub fn values_seen(&self) -> u64 {
        self.events
    }

    /// True after an SSE `[DONE]` marker.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// Why tracking stopped, when the body exceeded a limit or was not JSON/SSE.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn prices() -> PriceTable {
        PriceTable {
            price_per_token: 20,
            worker_fee_per_token: 16,
            multipliers: Multipliers {
                prompt: 10_000,
                cached: 1_000,
                completion: 20_000,
                reasoning: 15_000,
            },
        }
    }

    #[test]
    fn categories_and_adjustment() {
        let u = Usage::from_json(&json!({
            "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 40},
            "completion_tokens_details": {"reasoning_tokens": 10}
        }))
        .unwrap();
        assert_eq!(
            u.categories(),
            TokenCategories {
                prompt: 60,
                cached: 40,
                completion: 40,
                reasoning: 10
            }
        );
        let a = prices().adjust(&u, 1500);
        // 60×1.5×1 = 90; 40×1.5×0.1 = 6; 40×1.5×2 = 120; 10×1.5×1.5 = 22.5 → 22
        assert_eq!(
            a.categories,
            TokenCategories {
                prompt: 90,
                cached: 6,
                completion: 120,
                reasoning: 22
            }
        );
        assert_eq!(a.total, 238);
        assert_eq!(prices().client_cost(a.total), 238 * 20);
        assert_eq!(prices().worker_earning(a.total), 238 * 16);
        assert_eq!(prices().commission(a.total), 238 * 4);
    }

    #[test]
    fn reservation_matches_cocoon() {
        // (max_tokens + bytes) × max_coefficient/1000
        assert_eq!(prices().reservation(1000, 250, 4000), 5000);
        assert_eq!(prices().reservation(1, 0, 1500), 1);
    }

    #[test]
    fn adjust_is_exact_where_double_drifts() {
        // 10^15 tokens at coefficient 1001: double arithmetic would lose the last digits.
        assert_eq!(
            adjust_tokens(1_000_000_000_000_000, 1001, 10_000),
            1_001_000_000_000_000
        );
        assert_eq!(adjust_tokens(u64::MAX, 1_000_000, 10_000), u64::MAX);
    }

    #[test]
    fn lenient_usage_parsing() {
        assert_eq!(
            Usage::from_json(&json!({"prompt_tokens": 3}))
                .unwrap()
                .total_tokens,
            3
        );
        assert_eq!(Usage::from_json(&json!({"prompt_tokens": -1})), None);
        assert_eq!(Usage::from_json(&json!("x")), None);
        let u = Usage::from_json(&json!({"completion_tokens": 9, "reasoning_tokens": 4})).unwrap();
        assert_eq!(u.reasoning_tokens(), 4);
        // Reported cached above prompt is clamped in categories, never underflows.
        let u = Usage::from_json(
            &json!({"prompt_tokens": 2, "prompt_tokens_details": {"cached_tokens": 5}}),
        )
        .unwrap();
        assert_eq!(u.categories().prompt, 0);
        assert_eq!(u.categories().cached, 2);
    }

    const SSE: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn tracks_sse_usage_that_cocoon_misses() {
        let mut t = UsageTracker::new();
        t.push(SSE.as_bytes());
        assert_eq!(t.usage(), Some(Usage::new(12, 3)));
        assert!(t.saw_done());
        assert_eq!(t.values_seen(), 2);
        assert!(t.broken().is_none());
    }

    #[test]
    fn tracks_plain_and_ndjson() {
        let mut t = UsageTracker::new();
        t.push(
            br#"  {"id":"x","usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
        );
        assert_eq!(t.usage(), Some(Usage::new(5, 7)));
        let mut t = UsageTracker::new();
        t.push(b"{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n{\"usage\":{\"prompt_tokens\":1,");
        assert_eq!(t.usage(), Some(Usage::new(1, 1)));
        t.push(b"\"completion_tokens\":4}}\n");
        assert_eq!(t.usage(), Some(Usage::new(1, 4)));
        assert_eq!(t.values_seen(), 2);
    }

    #[test]
    fn collects_text_for_local_counting() {
        let mut t = UsageTracker::new().collecting_text();
        t.push(SSE.as_bytes());
        assert_eq!(t.text(), Some("Hi"));
        let mut t = UsageTracker::new().collecting_text();
        t.push(br#"{"choices":[{"message":{"role":"assistant","content":"Hello there"}}]}"#);
        assert_eq!(t.text(), Some("Hello there"));
        assert_eq!(UsageTracker::new().text(), None);
    }

    #[test]
    fn counts_generated_pieces_per_choice() {
        let mut t = UsageTracker::new();
        t.push(SSE.as_bytes());
        // "Hi"; the usage-only chunk carries no output.
        assert_eq!(t.generated_pieces(), 1);
        let mut t = UsageTracker::new();
        t.push(
            concat!(
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}},",
                "{\"index\":1,\"delta\":{\"reasoning_content\":\"b\"}}]}\n\n",
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}},",
                "{\"index\":1,\"delta\":{\"content\":\"\"}}]}\n\n",
                "data: {\"choices\":[{\"index\":0,\"text\":\"c\"}]}\n\n",
            )
            .as_bytes(),
        );
        assert_eq!(t.generated_pieces(), 4);
        // A whole JSON answer is not a stream of pieces.
        let mut t = UsageTracker::new();
        t.push(br#"{"choices":[{"message":{"content":"Hello"}}]}"#);
        assert_eq!(t.generated_pieces(), 0);
    }

    #[test]
    fn garbage_and_oversize_stop_tracking_without_panic() {
        let mut t = UsageTracker::new();
        t.push(b"{\"a\": nope}");
        assert!(t.broken().is_some());
        let mut t = UsageTracker::with_limit(10);
        t.push(b"{\"aaaaaaaaaaaaaaaaa");
        assert!(t.broken().is_some());
    }

    proptest! {
        #[test]
        fn sse_usage_independent_of_chunking(cuts in proptest::collection::vec(0usize..400, 0..10)) {
            let bytes = SSE.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort();
            let mut t = UsageTracker::new();
            let mut start = 0;
            for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                t.push(&bytes[start..c]);
                start = c;
            }
            prop_assert_eq!(t.usage(), Some(Usage::new(12, 3)));
        }

        #[test]
        fn cost_splits_exactly(tokens in 0u64..1u64 << 40, price in 0u64..1_000_000, fee_frac in 0u64..=100) {
            let fee = price * fee_frac / 100;
            let p = PriceTable { price_per_token: price, worker_fee_per_token: fee, multipliers: Multipliers::default() };
            prop_assert_eq!(p.worker_earning(tokens) + p.commission(tokens), p.client_cost(tokens));
        }
    }
}
