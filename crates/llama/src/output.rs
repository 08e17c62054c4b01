//! Turning generated tokens into OpenAI answers: UTF-8 reassembly, stop strings, and the
//! chunk / completion JSON in the shapes OpenAI SDKs parse.

use cocoon_openai::Endpoint;
use cocoon_openai::types::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChunkChoice, Completion,
    CompletionChoice, Delta, FunctionCall, SSE_DONE, ToolCall,
};
use cocoon_openai::usage::Usage;
use serde::Serialize;
use serde_json::{Value, json};

/// OpenAI reports a token the sampler cannot pick (a banned one) at this log-probability
/// rather than `-inf`, which JSON cannot carry.
pub const MIN_LOGPROB: f32 = -9999.0;

/// Log-probabilities of one generated token and of the likeliest alternatives, from the
/// distribution the sampler saw (after penalties and `logit_bias`, before temperature).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (a piece may be part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// Its log-probability (≤ 0).
    pub logprob: f32,
    /// The likeliest tokens, likeliest first: bytes and log-probability.
    pub top: Vec<(Vec<u8>, f32)>,
}

fn token_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A finite log-probability, as JSON can carry it.
fn lp(x: f32) -> f64 {
    f64::from(if x.is_nan() {
        MIN_LOGPROB
    } else {
        x.max(MIN_LOGPROB)
    })
}

/// Reassembles UTF-8 from token pieces, which may split a character.
#[derive(Debug, Default)]
pub struct Utf8Buf {
    pending: Vec<u8>,
}

impl Utf8Buf {
    /// Appends bytes and returns the complete characters available.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let s = s.to_owned();
                self.pending.clear();
                s
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // An invalid sequence (not just an incomplete tail) is replaced, never stalls.
                let cut = if e.error_len().is_some() {
                    self.pending.len()
                } else {
                    valid
                };
                let out = String::from_utf8_lossy(&self.pending[..cut]).into_owned();
                self.pending.drain(..cut);
                out
            }
        }
    }

    /// Whatever is left at the end, lossily.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Holds back text that might be the start of a stop string; cuts at the first stop string.
#[derive(Debug, Default)]
pub struct StopScanner {
    stops: Vec<String>,
    held: String,
}

impl StopScanner {
    /// A scanner for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopScanner {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Feeds text; returns the text safe to emit and whether a stop string was reached.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..pos].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.held.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        (out, false)
    }

    /// Releases held text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Part of a tool call in a piece of a chat answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallPart {
    /// A call begins: its id (`call_…`) and function name.
    Start {
        /// The call's id.
        id: String,
        /// The function called.
        name: String,
    },
    /// More of the current call's arguments (JSON text).
    Args(String),
}

/// One tool call of a choice.
#[derive(Debug, Default)]
struct Call {
    id: String,
    name: String,
    /// The arguments so far (kept only for a whole answer).
    args: String,
}

/// One choice's state in an answer.
#[derive(Debug, Default)]
struct ChoiceState {
    text: String,
    started: bool,
    pending: Vec<TokenLogprob>,
    /// Characters that logprob entries covered so far (legacy `text_offset`).
    offset: usize,
    finish: Option<String>,
    /// Tool calls made (streaming: ids and names only, the arguments went out).
    calls: Vec<Call>,
}

/// Produces the answer body for one request (one or `n` choices).
#[derive(Debug)]
pub struct AnswerWriter {
    endpoint: Endpoint,
    stream: bool,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    choices: Vec<ChoiceState>,
}

impl AnswerWriter {
    /// A writer for one answer with one choice.
    pub fn new(endpoint: Endpoint, stream: bool, id: String, created: u64, model: String) -> Self {
        AnswerWriter {
            endpoint,
            stream,
            id,
            created,
            model,
            logprobs: false,
            choices: vec![ChoiceState::default()],
        }
    }

    /// The answer has `n` choices (at least one), indexed from 0.
    pub fn with_choices(mut self, n: usize) -> Self {
        self.choices.resize_with(n.max(1), ChoiceState::default);
        self
    }

    /// Answers carry `logprobs` (chat's or the legacy shape, by endpoint) for the tokens
    /// given to [`AnswerWriter::logprob`].
    pub fn with_logprobs(mut self, on: bool) -> Self {
        self.logprobs = on;
        self
    }

    /// Records one generated token's log-probabilities for choice 0.
    pub fn logprob(&mut self, entry: TokenLogprob) {
        self.logprob_at(0, entry);
    }

    /// Records one generated token's log-probabilities for a choice: sent with that choice's
    /// next chunk when streaming, in the answer at the end otherwise.
    pub fn logprob_at(&mut self, choice: usize, entry: TokenLogprob) {
        if self.logprobs
            && let Some(c) = self.choices.get_mut(choice)
        {
            c.pending.push(entry);
        }
    }

    /// The `logprobs` object for a choice's pending entries (drained), in the endpoint's
    /// shape.
    fn take_logprobs(&mut self, choice: usize) -> Option<Value> {
        if !self.logprobs {
            return None;
        }
        let endpoint = self.endpoint;
        let c = self.choices.get_mut(choice)?;
        let entries = std::mem::take(&mut c.pending);
        Some(match endpoint {
            Endpoint::ChatCompletions => {
                let item = |bytes: &[u8], logprob: f32| json!({"token": token_text(bytes), "logprob": lp(logprob), "bytes": bytes});
                let content: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        let mut v = item(&e.bytes, e.logprob);
                        v["top_logprobs"] = e
                            .top
                            .iter()
                            .map(|(b, l)| item(b, *l))
                            .collect::<Vec<_>>()
                            .into();
                        v
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Endpoint::Completions | Endpoint::Embeddings => {
                let mut offsets = Vec::with_capacity(entries.len());
                for e in &entries {
                    offsets.push(c.offset);
                    c.offset += token_text(&e.bytes).chars().count();
                }
                json!({
                    "tokens": entries.iter().map(|e| token_text(&e.bytes)).collect::<Vec<_>>(),
                    "token_logprobs": entries.iter().map(|e| lp(e.logprob)).collect::<Vec<_>>(),
                    "top_logprobs": entries
                        .iter()
                        .map(|e| {
                            e.top
                                .iter()
                                .map(|(b, l)| (token_text(b), Value::from(lp(*l))))
                                .collect::<serde_json::Map<_, _>>()
                        })
                        .collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
        })
    }

    /// An answer or chunk as JSON bytes, with `logprobs` set on its choices where given
    /// (without any, the struct's own field order).
    fn encode<T: Serialize>(value: &T, logprobs: Vec<Option<Value>>) -> Vec<u8> {
        if logprobs.iter().all(Option::is_none) {
            return serde_json::to_vec(value).unwrap_or_default();
        }
        let mut v = serde_json::to_value(value).unwrap_or_default();
        for (i, lp) in logprobs.into_iter().enumerate() {
            if let Some(lp) = lp
                && let Some(choice) = v.get_mut("choices").and_then(|c| c.get_mut(i))
            {
                choice["logprobs"] = lp;
            }
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }

    fn sse(json: Vec<u8>) -> Vec<u8> {
        let mut out = b"data: ".to_vec();
        out.extend(json);
        out.extend_from_slice(b"\n\n");
        out
    }

    fn chat_chunk(
        &self,
        choices: Vec<ChunkChoice>,
        usage: Option<Usage>,
        logprobs: Option<Value>,
    ) -> Vec<u8> {
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        };
        Self::sse(Self::encode(&chunk, vec![logprobs]))
    }

    fn text_chunk(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<Usage>,
        logprobs: Option<Value>,
    ) -> Vec<u8> {
        let chunk = Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        };
        Self::sse(Self::encode(&chunk, vec![logprobs]))
    }

    /// Bytes to send for new text of choice 0.
    pub fn delta(&mut self, text: &str) -> Option<Vec<u8>> {
        self.delta_at(0, text)
    }

    /// Bytes to send for new text of a choice (nothing when not streaming: text is kept for
    /// the end).
    pub fn delta_at(&mut self, choice: usize, text: &str) -> Option<Vec<u8>> {
        let index = choice as u32;
        let c = self.choices.get_mut(choice)?;
        if !self.stream {
            c.text.push_str(text);
            return None;
        }
        let first = !c.started;
        c.started = true;
        let has_pending = !c.pending.is_empty();
        let mut out = Vec::new();
        if first && self.endpoint == Endpoint::ChatCompletions {
            out.extend(self.chat_chunk(
                vec![ChunkChoice {
                    index,
                    delta: Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                    },
                    finish_reason: None,
                }],
                None,
                None,
            ));
        }
        if !text.is_empty() || has_pending {
            let logprobs = self.take_logprobs(choice);
            out.extend(match self.endpoint {
                Endpoint::ChatCompletions => self.chat_chunk(
                    vec![ChunkChoice {
                        index,
                        delta: Delta {
                            role: None,
                            content: Some(text.to_owned()),
                        },
                        finish_reason: None,
                    }],
                    None,
                    logprobs,
                ),
                Endpoint::Completions | Endpoint::Embeddings => self.text_chunk(
                    vec![CompletionChoice {
                        index,
                        text: text.to_owned(),
                        finish_reason: None,
                    }],
                    None,
                    logprobs,
                ),
            });
        }
        (!out.is_empty()).then_some(out)
    }

    /// Bytes to send for a piece of a chat choice that may carry tool-call parts, all in one
    /// chunk (one piece per generated token, as the worker counts them): a call's first part
    /// carries `index`, `id`, `type` and the name with empty `arguments`, later ones `index`
    /// and an `arguments` fragment, as OpenAI streams them. Not streaming: kept for the end.
    pub fn parts_at(&mut self, choice: usize, text: &str, parts: &[CallPart]) -> Option<Vec<u8>> {
        if parts.is_empty() || self.endpoint != Endpoint::ChatCompletions {
            return self.delta_at(choice, text);
        }
        let stream = self.stream;
        let c = self.choices.get_mut(choice)?;
        let mut items = Vec::new();
        for p in parts {
            match p {
                CallPart::Start { id, name } => {
                    c.calls.push(Call {
                        id: id.clone(),
                        name: name.clone(),
                        args: String::new(),
                    });
                    items.push(
                        json!({"index": c.calls.len() - 1, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}),
                    );
                }
                CallPart::Args(a) => {
                    let Some(index) = c.calls.len().checked_sub(1) else {
                        continue;
                    };
                    if stream {
                        items.push(json!({"index": index, "function": {"arguments": a}}));
                    } else if let Some(call) = c.calls.last_mut() {
                        call.args.push_str(a);
                    }
                }
            }
        }
        if !stream {
            c.text.push_str(text);
            return None;
        }
        let first = !c.started;
        c.started = true;
        let index = choice as u32;
        let mut out = Vec::new();
        if first {
            let delta = if text.is_empty() {
                json!({"role": "assistant", "content": null})
            } else {
                json!({"role": "assistant", "content": ""})
            };
            out.extend(self.chat_chunk_value(index, delta, None));
        }
        let mut delta = serde_json::Map::new();
        if !text.is_empty() {
            delta.insert("content".into(), Value::from(text));
        }
        delta.insert("tool_calls".into(), Value::Array(items));
        let logprobs = self.take_logprobs(choice);
        out.extend(self.chat_chunk_value(index, Value::Object(delta), logprobs));
        Some(out)
    }

    /// A chat chunk with one choice whose delta is given as JSON.
    fn chat_chunk_value(&self, index: u32, delta: Value, logprobs: Option<Value>) -> Vec<u8> {
        let mut choice = json!({"index": index, "delta": delta, "finish_reason": null});
        if let Some(lp) = logprobs {
            choice["logprobs"] = lp;
        }
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        Self::sse(serde_json::to_vec(&chunk).unwrap_or_default())
    }

    /// Tool calls made by a choice so far.
    pub fn calls_at(&self, choice: usize) -> usize {
        self.choices.get(choice).map_or(0, |c| c.calls.len())
    }

    /// A choice ended: when streaming, its remaining logprobs and its finish chunk. A choice
    /// that called tools and stopped by itself finishes with `tool_calls`.
    pub fn finish_choice(&mut self, choice: usize, finish_reason: &str) -> Vec<u8> {
        let Some(c) = self.choices.get_mut(choice) else {
            return Vec::new();
        };
        let finish_reason = if finish_reason == "stop" && !c.calls.is_empty() {
            "tool_calls"
        } else {
            finish_reason
        };
        c.finish = Some(finish_reason.to_owned());
        if !self.stream {
            return Vec::new();
        }
        let index = choice as u32;
        let reason = Some(finish_reason.to_owned());
        let mut out = self.delta_at(choice, "").unwrap_or_default();
        out.extend(match self.endpoint {
            Endpoint::ChatCompletions => self.chat_chunk(
                vec![ChunkChoice {
                    index,
                    delta: Delta::default(),
                    finish_reason: reason,
                }],
                None,
                None,
            ),
            Endpoint::Completions | Endpoint::Embeddings => self.text_chunk(
                vec![CompletionChoice {
                    index,
                    text: String::new(),
                    finish_reason: reason,
                }],
                None,
                None,
            ),
        });
        out
    }

    /// The closing bytes once every choice ended: the usage chunk and `[DONE]`, or the
    /// whole JSON answer.
    pub fn done(&mut self, usage: Usage) -> Vec<u8> {
        if self.stream {
            let mut out = match self.endpoint {
                Endpoint::ChatCompletions => self.chat_chunk(vec![], Some(usage), None),
                Endpoint::Completions | Endpoint::Embeddings => {
                    self.text_chunk(vec![], Some(usage), None)
                }
            };
            out.extend_from_slice(SSE_DONE);
            return out;
        }
        let logprobs: Vec<Option<Value>> = (0..self.choices.len())
            .map(|i| self.take_logprobs(i))
            .collect();
        let texts: Vec<(String, Option<String>)> = self
            .choices
            .iter_mut()
            .map(|c| (std::mem::take(&mut c.text), c.finish.take()))
            .collect();
        let calls: Vec<Vec<Call>> = self
            .choices
            .iter_mut()
            .map(|c| std::mem::take(&mut c.calls))
            .collect();
        match self.endpoint {
            Endpoint::ChatCompletions => Self::encode(
                &ChatCompletion {
                    id: self.id.clone(),
                    object: "chat.completion".into(),
                    created: self.created,
                    model: self.model.clone(),
                    choices: texts
                        .into_iter()
                        .zip(calls)
                        .enumerate()
                        .map(|(i, ((content, finish_reason), calls))| ChatChoice {
                            index: i as u32,
                            message: Self::message(content, calls),
                            finish_reason,
                        })
                        .collect(),
                    usage,
                },
                logprobs,
            ),
            Endpoint::Completions | Endpoint::Embeddings => Self::encode(
                &Completion {
                    id: self.id.clone(),
                    object: "text_completion".into(),
                    created: self.created,
                    model: self.model.clone(),
                    choices: texts
                        .into_iter()
                        .enumerate()
                        .map(|(i, (text, finish_reason))| CompletionChoice {
                            index: i as u32,
                            text,
                            finish_reason,
                        })
                        .collect(),
                    usage: Some(usage),
                },
                logprobs,
            ),
        }
    }

    /// A whole answer's message: its text, and the tools it called (a message that calls
    /// tools and says nothing has `content: null`, as OpenAI sends it).
    fn message(content: String, calls: Vec<Call>) -> AssistantMessage {
        if calls.is_empty() {
            return AssistantMessage {
                role: "assistant".into(),
                content: Some(content),
                tool_calls: None,
            };
        }
        AssistantMessage {
            role: "assistant".into(),
            content: (!content.is_empty()).then_some(content),
            tool_calls: Some(
                calls
                    .into_iter()
                    .map(|c| ToolCall {
                        id: c.id,
                        kind: "function".into(),
                        function: FunctionCall {
                            name: c.name,
                            arguments: c.args,
                        },
                    })
                    .collect(),
            ),
        }
    }

    /// The closing bytes of a one-choice answer: choice 0's end, then [`AnswerWriter::done`].
    pub fn finish(&mut self, finish_reason: &str, usage: Usage) -> Vec<u8> {
        let mut out = self.finish_choice(0, finish_reason);
        out.extend(self.done(usage));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_openai::UsageTracker;

    #[test]
    fn utf8_split_and_invalid() {
        let mut b = Utf8Buf::default();
        let e = "é".as_bytes();
        assert_eq!(b.push(&e[..1]), "");
        assert_eq!(b.push(&e[1..]), "é");
        assert_eq!(b.push(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(b.push(&e[..1]), "");
        assert_eq!(b.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_strings_are_cut_and_never_leak() {
        let mut s = StopScanner::new(vec!["</end>".into(), String::new()]);
        assert_eq!(s.push("Hello </"), ("Hello ".into(), false));
        assert_eq!(s.push("e"), (String::new(), false));
        assert_eq!(s.push("x"), ("</ex".into(), false));
        assert_eq!(s.push(" done</end> tail"), (" done".into(), true));
        let mut s = StopScanner::new(vec!["ab".into()]);
        assert_eq!(s.push("xa"), ("x".into(), false));
        assert_eq!(s.finish(), "a");
        let mut s = StopScanner::new(vec![]);
        assert_eq!(s.push("anything"), ("anything".into(), false));
    }

    #[test]
    fn streamed_chat_is_openai_shaped_and_counted() {
        let mut w = AnswerWriter::new(Endpoint::ChatCompletions, true, "c1".into(), 5, "m".into());
        let mut body = w.delta("Hel").unwrap();
        body.extend(w.delta("lo").unwrap());
        body.extend(w.finish("stop", Usage::new(7, 2)));
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.starts_with("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\""));
        assert!(text.contains("\"role\":\"assistant\""));
        assert!(text.contains("\"finish_reason\":\"stop\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
        let mut t = UsageTracker::new().collecting_text();
        t.push(&body);
        assert_eq!(t.usage(), Some(Usage::new(7, 2)));
        assert_eq!(t.text(), Some("Hello"));
    }

    #[test]
    fn whole_answers() {
        let mut w = AnswerWriter::new(Endpoint::ChatCompletions, false, "c".into(), 1, "m".into());
        assert!(w.delta("Hi").is_none());
        let v: serde_json::Value =
            serde_json::from_slice(&w.finish("length", Usage::new(3, 1))).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hi");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 4);
        let mut w = AnswerWriter::new(Endpoint::Completions, false, "c".into(), 1, "m".into());
        w.delta("x");
        let v: serde_json::Value =
            serde_json::from_slice(&w.finish("stop", Usage::new(1, 1))).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "x");
        // An empty stream still has a role chunk, a finish chunk, usage and [DONE].
        let mut w = AnswerWriter::new(Endpoint::ChatCompletions, true, "c".into(), 1, "m".into());
        let s = String::from_utf8(w.finish("stop", Usage::new(1, 0))).unwrap();
        assert_eq!(s.matches("data: ").count(), 4);
    }

    #[test]
    fn logprobs_go_with_the_chunk_that_carries_their_text() {
        let e = |t: &str, l: f32| TokenLogprob {
            bytes: t.as_bytes().to_vec(),
            logprob: l,
            top: vec![
                (t.as_bytes().to_vec(), l),
                (b"x".to_vec(), f32::NEG_INFINITY),
            ],
        };
        let mut w = AnswerWriter::new(Endpoint::ChatCompletions, true, "c".into(), 1, "m".into())
            .with_logprobs(true);
        w.logprob(e("Hel", -0.5));
        let first = String::from_utf8(w.delta("Hel").unwrap()).unwrap();
        assert!(first.contains("\"logprobs\":{\"content\":[{"), "{first}");
        // A token whose text is held back (a stop-string prefix) goes with the last chunk.
        w.logprob(e("lo", -0.25));
        let rest = String::from_utf8(w.finish("stop", Usage::new(1, 2))).unwrap();
        assert!(rest.contains("\"token\":\"lo\""), "{rest}");
        assert!(
            rest.contains("-9999"),
            "a banned alternative is finite: {rest}"
        );

        let mut w = AnswerWriter::new(Endpoint::Completions, false, "c".into(), 1, "m".into())
            .with_logprobs(true);
        for (t, l) in [("ab", -1.0), ("é", -2.0)] {
            w.logprob(e(t, l));
            w.delta(t);
        }
        let v: serde_json::Value =
            serde_json::from_slice(&w.finish("length", Usage::new(1, 2))).unwrap();
        let lp = &v["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"], json!(["ab", "é"]));
        assert_eq!(lp["token_logprobs"], json!([-1.0, -2.0]));
        assert_eq!(lp["text_offset"], json!([0, 2]));
        assert_eq!(lp["top_logprobs"][1]["é"], json!(-2.0));
        // Without logprobs asked, none is recorded or written.
        let mut w = AnswerWriter::new(Endpoint::ChatCompletions, false, "c".into(), 1, "m".into());
        w.logprob(e("a", -1.0));
        w.delta("a");
        let v: serde_json::Value =
            serde_json::from_slice(&w.finish("stop", Usage::new(1, 1))).unwrap();
        assert!(v["choices"][0].get("logprobs").is_none());
    }

    #[test]
    fn tool_calls_streamed_as_openai_streams_them_and_whole() {
        let start = |id: &str, name: &str| CallPart::Start {
            id: id.into(),
            name: name.into(),
        };
        let args = |a: &str| CallPart::Args(a.into());
        let mut w = AnswerWriter::new(Endpoint::ChatCompletions, true, "c".into(), 1, "m".into());
        let mut body = w
            .parts_at(0, "", &[start("call_a", "f"), args("{\"x\": ")])
            .unwrap();
        body.extend(w.parts_at(0, "", &[args("1}")]).unwrap());
        body.extend(
            w.parts_at(0, "", &[start("call_b", "g"), args("{}")])
                .unwrap(),
        );
        assert_eq!(w.calls_at(0), 2);
        body.extend(w.finish("stop", Usage::new(5, 4)));
        let text = String::from_utf8(body.clone()).unwrap();
        let chunks: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let deltas: Vec<Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0).map(|c| c["delta"].clone()))
            .collect();
        assert_eq!(
            deltas,
            vec![
                json!({"role": "assistant", "content": null}),
                json!({"tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}},
                    {"index": 0, "function": {"arguments": "{\"x\": "}}]}),
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                json!({"tool_calls": [
                    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}},
                    {"index": 1, "function": {"arguments": "{}"}}]}),
                json!({}),
            ]
        );
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[5]["usage"]["completion_tokens"], 4);
        assert!(text.ends_with("data: [DONE]\n\n"));
        let mut t = UsageTracker::new();
        t.push(&body);
        assert_eq!(t.usage(), Some(Usage::new(5, 4)));
        // One generated piece per chunk that carries a call part.
        assert_eq!(t.generated_pieces(), 3);

        let mut w = AnswerWriter::new(Endpoint::ChatCompletions, false, "c".into(), 1, "m".into())
            .with_choices(2);
        assert!(
            w.parts_at(0, "", &[start("call_a", "f"), args("{\"x\"")])
                .is_none()
        );
        assert!(w.parts_at(0, "", &[args(": 1}")]).is_none());
        assert!(w.delta_at(1, "plain").is_none());
        w.finish_choice(0, "stop");
        w.finish_choice(1, "stop");
        let v: Value = serde_json::from_slice(&w.done(Usage::new(3, 2))).unwrap();
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_a",
                "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]})
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][1]["message"],
            json!({"role": "assistant", "content": "plain"})
        );
        assert_eq!(v["choices"][1]["finish_reason"], "stop");
        // Cut by the limit: the reason stays `length`.
        let mut w = AnswerWriter::new(Endpoint::ChatCompletions, false, "c".into(), 1, "m".into());
        w.parts_at(0, "", &[start("call_a", "f"), args("{\"x")]);
        let v: Value = serde_json::from_slice(&w.finish("length", Usage::new(3, 2))).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"x"
        );
    }

    #[test]
    fn whole_answer_with_tool_calls_is_the_typed_chat_completion() {
        // A whole answer that calls tools is the crate's own `ChatCompletion`, read back
        // field for field (a message with only calls has `content: null`; one that also says
        // something keeps its text), with logprobs beside the calls.
        let mut w = AnswerWriter::new(Endpoint::ChatCompletions, false, "c".into(), 7, "m".into())
            .with_choices(2)
            .with_logprobs(true);
        w.logprob_at(
            0,
            TokenLogprob {
                bytes: b"{".to_vec(),
                logprob: -0.5,
                top: vec![],
            },
        );
        assert!(w.delta_at(0, "Let me look. ").is_none());
        assert!(
            w.parts_at(
                0,
                "",
                &[
                    CallPart::Start {
                        id: "call_a".into(),
                        name: "f".into()
                    },
                    CallPart::Args("{}".into())
                ]
            )
            .is_none()
        );
        assert!(
            w.parts_at(
                1,
                "",
                &[
                    CallPart::Start {
                        id: "call_b".into(),
                        name: "g".into()
                    },
                    CallPart::Args("[1]".into())
                ]
            )
            .is_none()
        );
        w.finish_choice(0, "stop");
        w.finish_choice(1, "stop");
        let body = w.done(Usage::new(3, 2));
        let typed: ChatCompletion = serde_json::from_slice(&body).unwrap();
        let call = |id: &str, name: &str, arguments: &str| ToolCall {
            id: id.into(),
            kind: "function".into(),
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        };
        assert_eq!(
            typed,
            ChatCompletion {
                id: "c".into(),
                object: "chat.completion".into(),
                created: 7,
                model: "m".into(),
                choices: vec![
                    ChatChoice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant".into(),
                            content: Some("Let me look. ".into()),
                            tool_calls: Some(vec![call("call_a", "f", "{}")]),
                        },
                        finish_reason: Some("tool_calls".into()),
                    },
                    ChatChoice {
                        index: 1,
                        message: AssistantMessage {
                            role: "assistant".into(),
                            content: None,
                            tool_calls: Some(vec![call("call_b", "g", "[1]")]),
                        },
                        finish_reason: Some("tool_calls".into()),
                    },
                ],
                usage: Usage::new(3, 2),
            }
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["choices"][0]["logprobs"]["content"][0]["token"], "{");
        assert_eq!(v["choices"][1]["logprobs"]["content"], json!([]));
    }
}
