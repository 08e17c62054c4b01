//! What COCOON's client adds to an answer for the app, done the same way here.
//!
//! - The head gets `X-Cocoon-Client-Start` (when the request arrived) and
//!   `X-Cocoon-Client-End` (when its answer's head did), Unix seconds with 6 decimals,
//!   beside the proxy's and the worker's `X-Cocoon-*-Start/End`.
//! - Every `usage` object the app sees carries COCOON's cost fields (`prompt_total_cost`,
//!   `completion_total_cost`, `total_cost`, nanoTON) at the figure this client books: the
//!   final info's adjusted tokens × `price_per_token`, the count the proxy's receipts sign.
//!   A whole answer is priced once it is complete; in a stream the event with the usage, and
//!   what follows it, is held until the final info arrives (at most [`HOLD_LIMIT`] bytes;
//!   past that, or when the answer ends without a final count, it passes as the proxy sent
//!   it).
//! - With `enable_debug`, the debug object `{"proxy": …, "worker": …, "client": {"type":
//!   "client_stats", "start_time", "answer_receive_start_at", "answer_receive_end_at"}}` goes
//!   into the answer as COCOON's client puts it: as the `debug` member of a whole JSON answer
//!   (a body that is not a JSON object gets a line `{"debug": …}` appended), and as a last
//!   line `{"debug": …}` after a stream's final event (SSE readers skip a line without a
//!   field name).

use std::time::{SystemTime, UNIX_EPOCH};

use cocoon_openai::cost::{CostInjector, cost_fields};
use cocoon_openai::usage::AdjustedTokens;
use serde_json::{Value, json};

use crate::request::Usage;

/// Most bytes of a stream held for pricing: the event with the usage and what follows it
/// (normally `data: [DONE]`), or one unfinished event.
pub(crate) const HOLD_LIMIT: usize = 1 << 20;

/// Seconds since the Unix epoch.
pub(crate) fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// COCOON's client timing headers for an answer whose request arrived at `started` and
/// whose head arrived at `head`.
pub(crate) fn timing_headers(started: SystemTime, head: SystemTime) -> [(String, String); 2] {
    [
        (
            "X-Cocoon-Client-Start".into(),
            format!("{:.6}", unix(started)),
        ),
        ("X-Cocoon-Client-End".into(), format!("{:.6}", unix(head))),
    ]
}

/// The adjusted tokens a usage was booked at.
fn adjusted(u: &Usage) -> AdjustedTokens {
    AdjustedTokens {
        categories: cocoon_openai::TokenCategories {
            prompt: u.prompt_tokens,
            cached: u.cached_tokens,
            completion: u.completion_tokens,
            reasoning: u.reasoning_tokens,
        },
        total: u.total_tokens,
    }
}

/// A debug text of the proxy or the worker as JSON (a text that is not JSON as a string).
fn debug_value(text: Option<&str>) -> Option<Value> {
    let t = text?;
    Some(serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_owned())))
}

/// Whether one SSE event is a `data:` line holding a JSON object with a `usage` object.
fn has_usage(event: &[u8]) -> bool {
    // Cheap test first: most events of a stream carry no usage, or `"usage": null`.
    if !cocoon_openai::cost::may_hold_usage(event) {
        return false;
    }
    let Ok(text) = std::str::from_utf8(event) else {
        return false;
    };
    let Some(data) = text.trim_end().strip_prefix("data:") else {
        return false;
    };
    serde_json::from_str::<Value>(data.trim_start())
        .ok()
        .is_some_and(|v| v.get("usage").is_some_and(Value::is_object))
}

/// The end of the first complete SSE event in `buf`: (its length, the terminator's).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let find = |n: &[u8]| buf.windows(n.len()).position(|w| w == n);
    match (find(b"\n\n"), find(b"\r\n\r\n")) {
        (Some(a), Some(b)) if b < a => Some((b, 4)),
        (Some(a), _) => Some((a, 2)),
        (None, Some(b)) => Some((b, 4)),
        (None, None) => None,
    }
}

/// One answer's additions: its timings, whether debug was asked for, and (streams) the
/// events held until the final info prices them.
#[derive(Debug)]
pub(crate) struct Extras {
    debug: bool,
    started: SystemTime,
    head: SystemTime,
    /// An unfinished SSE event.
    pending: Vec<u8>,
    /// Complete events from the first one carrying a usage object on.
    held: Vec<u8>,
    /// Over the limit: everything passes unchanged from now on.
    raw: bool,
    /// Hold the stream's `data: [DONE]` too, until the answer's receipt is checked.
    hold_done: bool,
}

/// Whether one SSE event (without its terminator) is the end marker `data: [DONE]`.
fn is_done(event: &[u8]) -> bool {
    std::str::from_utf8(event)
        .ok()
        .and_then(|t| t.trim().strip_prefix("data:"))
        .is_some_and(|d| d.trim() == "[DONE]")
}

impl Extras {
    pub(crate) fn new(debug: bool, started: SystemTime, head: SystemTime) -> Extras {
        Extras {
            debug,
            started,
            head,
            pending: Vec::new(),
            held: Vec::new(),
            raw: false,
            hold_done: false,
        }
    }

    /// Holds the stream's `[DONE]` (and what follows it) until the final info.
    pub(crate) fn hold_done(&mut self) {
        self.hold_done = true;
    }

    /// COCOON's debug object, `end` being when the answer's last bytes arrived.
    pub(crate) fn debug_object(&self, usage: Option<&Usage>, end: SystemTime) -> Value {
        let mut v = serde_json::Map::new();
        if let Some(p) = debug_value(usage.and_then(|u| u.proxy_debug.as_deref())) {
            v.insert("proxy".into(), p);
        }
        if let Some(w) = debug_value(usage.and_then(|u| u.worker_debug.as_deref())) {
            v.insert("worker".into(), w);
        }
        v.insert(
            "client".into(),
            json!({
                "type": "client_stats",
                "start_time": unix(self.started),
                "answer_receive_start_at": unix(self.head),
                "answer_receive_end_at": unix(end),
            }),
        );
        Value::Object(v)
    }

    /// Whether the app asked for debug output.
    pub(crate) fn debug(&self) -> bool {
        self.debug
    }

    /// A stream's next bytes: what can go to the app now.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.raw {
            return chunk.to_vec();
        }
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((end, term)) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end + term).collect();
            if !self.held.is_empty()
                || has_usage(&event[..end])
                || (self.hold_done && is_done(&event[..end]))
            {
                self.held.extend_from_slice(&event);
            } else {
                out.extend_from_slice(&event);
            }
        }
        if self.held.len() + self.pending.len() > HOLD_LIMIT {
            self.raw = true;
            out.append(&mut self.held);
            out.append(&mut self.pending);
        }
        out
    }

    /// The stream ended without a final count (an error, a closed connection): what is held
    /// passes unchanged.
    pub(crate) fn flush(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.held);
        out.append(&mut self.pending);
        out
    }

    /// The stream failed after its last event: what is held passes unchanged, except the
    /// `[DONE]` marker (an error follows instead).
    pub(crate) fn flush_without_done(&mut self) -> Vec<u8> {
        let held = self.flush();
        let mut out = Vec::new();
        let mut rest = &held[..];
        while let Some((end, term)) = event_end(rest) {
            if !is_done(&rest[..end]) {
                out.extend_from_slice(&rest[..end + term]);
            }
            rest = &rest[end + term..];
        }
        out.extend_from_slice(rest);
        out
    }

    /// The stream's final info arrived: the held usage priced at what was booked, and with
    /// debug, COCOON's debug line last.
    pub(crate) fn finish_stream(&mut self, usage: &Usage, price_per_token: u64) -> Vec<u8> {
        let held = self.flush();
        let mut out = if held.is_empty() {
            held
        } else {
            let a = adjusted(usage);
            let mut c =
                CostInjector::new(HOLD_LIMIT.saturating_mul(2), price_per_token, move |_| a);
            let mut out = c.push(&held);
            out.extend_from_slice(&c.finish());
            out
        };
        if self.debug {
            let line = json!({"debug": self.debug_object(Some(usage), SystemTime::now())});
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// A whole answer's body: its usage priced at what was booked (when the final info came),
    /// and with debug, COCOON's debug object in it.
    pub(crate) fn finish_whole(
        &self,
        body: Vec<u8>,
        usage: Option<&Usage>,
        price_per_token: u64,
    ) -> Vec<u8> {
        let priced = usage.map(|u| cost_fields(&adjusted(u), price_per_token));
        let debug = self
            .debug
            .then(|| self.debug_object(usage, SystemTime::now()));
        if priced.is_none() && debug.is_none() {
            return body;
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut o)) => {
                let mut changed = false;
                if let (Some(fields), Some(u)) =
                    (priced, o.get_mut("usage").and_then(Value::as_object_mut))
                {
                    for (k, n) in fields {
                        u.insert(k.to_owned(), Value::from(n));
                    }
                    changed = true;
                }
                if let Some(d) = debug {
                    o.insert("debug".into(), d);
                    changed = true;
                }
                if changed {
                    Value::Object(o).to_string().into_bytes()
                } else {
                    body
                }
            }
            _ => match debug {
                Some(d) => {
                    let mut body = body;
                    if !body.is_empty() && !body.ends_with(b"\n") {
                        body.push(b'\n');
                    }
                    body.extend_from_slice(json!({"debug": d}).to_string().as_bytes());
                    body.push(b'\n');
                    body
                }
                None => body,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn usage() -> Usage {
        Usage {
            prompt_tokens: 12,
            cached_tokens: 2,
            completion_tokens: 30,
            reasoning_tokens: 4,
            total_tokens: 48,
            cost_nanoton: 48 * 20,
            worker_debug: Some(r#"{"type":"worker_stats"}"#.into()),
            proxy_debug: Some("not json".into()),
            ..Usage::default()
        }
    }

    fn events(text: &str) -> Vec<Value> {
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }

    #[test]
    fn a_stream_is_priced_at_the_booked_usage_however_it_is_cut() {
        let body = "data: {\"choices\":[],\"usage\":null}\n\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9,\"total_cost\":99999}}\n\n\
                    data: [DONE]\n\n";
        for cut in 1..body.len() {
            let mut x = Extras::new(false, SystemTime::now(), SystemTime::now());
            let mut out = x.push(&body.as_bytes()[..cut]);
            out.extend(x.push(&body.as_bytes()[cut..]));
            assert!(
                !String::from_utf8_lossy(&out).contains("\"total_cost\""),
                "the usage event is held"
            );
            out.extend(x.finish_stream(&usage(), 20));
            let text = String::from_utf8(out).unwrap();
            let u = &events(&text)[1]["usage"];
            assert_eq!(u["prompt_total_cost"], 14 * 20);
            assert_eq!(u["completion_total_cost"], 34 * 20);
            assert_eq!(u["total_cost"], 48 * 20);
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        }
    }

    #[test]
    fn debug_goes_last_in_a_stream_and_into_a_whole_answer() {
        let mut x = Extras::new(true, SystemTime::now(), SystemTime::now());
        let mut out = x.push(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        out.extend(x.finish_stream(&usage(), 20));
        let text = String::from_utf8(out).unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["debug"]["worker"]["type"], "worker_stats");
        assert_eq!(last["debug"]["proxy"], "not json");
        assert_eq!(last["debug"]["client"]["type"], "client_stats");

        let whole = x.finish_whole(
            br#"{"usage":{"total_tokens":3}}"#.to_vec(),
            Some(&usage()),
            20,
        );
        let v: Value = serde_json::from_slice(&whole).unwrap();
        assert_eq!(v["usage"]["total_cost"], 48 * 20);
        assert_eq!(v["debug"]["client"]["type"], "client_stats");
        let text = x.finish_whole(b"plain".to_vec(), None, 20);
        assert!(text.starts_with(b"plain\n{\"debug\":"));
    }

    #[test]
    fn done_is_held_for_the_receipt_and_dropped_when_it_fails() {
        let mut x = Extras::new(false, SystemTime::now(), SystemTime::now());
        x.hold_done();
        let out = x.push(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(out, b"data: {\"a\":1}\n\n");
        assert!(x.flush_without_done().is_empty());
        let mut x = Extras::new(false, SystemTime::now(), SystemTime::now());
        x.hold_done();
        let out = x.push(b"data: {\"a\":1}\n\ndata:[DONE]\r\n\r\n");
        assert_eq!(out, b"data: {\"a\":1}\n\n");
        assert_eq!(
            x.finish_stream(&usage(), 10),
            b"data:[DONE]\r\n\r\n",
            "passes once the receipt holds"
        );
    }

    #[test]
    fn without_usage_or_debug_nothing_changes_and_an_overlong_tail_passes() {
        let x = Extras::new(false, SystemTime::now(), SystemTime::now());
        let body = br#"{ "id": "x" }"#.to_vec();
        assert_eq!(x.finish_whole(body.clone(), Some(&usage()), 20), body);
        assert_eq!(x.finish_whole(body.clone(), None, 20), body);

        let mut x = Extras::new(false, SystemTime::now(), SystemTime::now());
        let mut out = x.push(b"data: {\"usage\":{\"total_tokens\":1}}\n\n");
        assert!(out.is_empty());
        let filler = vec![b'x'; HOLD_LIMIT];
        out.extend(x.push(&filler));
        assert_eq!(
            out.len(),
            36 + HOLD_LIMIT,
            "over the limit: all of it passes"
        );
        assert_eq!(x.push(b"more"), b"more");
    }
}
