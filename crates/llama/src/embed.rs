//! `POST /v1/embeddings` on the embedded engine.
//!
//! Embeddings run on their own thread with their own llama.cpp context (embeddings on,
//! pooled per sequence), so a batch of inputs never waits behind generation and generation
//! never shares its KV cells with them. A request's inputs are packed into as few decodes as
//! the context allows (at most [`EMBED_SEQS`] inputs and the context's tokens per decode);
//! each pooled vector is L2-normalised, as OpenAI's are.
//!
//! Pooling is the model's own where its GGUF states one (an embedding model: BERT-style CLS or
//! mean, Qwen3-Embedding's last token); a generative model is pooled by the mean of its last
//! hidden states, which llama.cpp computes for any model.
//!
//! The answer is OpenAI's: `{"object":"list","data":[{"object":"embedding","index":i,
//! "embedding":[…]}],"model":…,"usage":{"prompt_tokens":n,"total_tokens":n}}`, each vector
//! a list of floats or, with `encoding_format: "base64"`, the base64 of its little-endian
//! `f32`s. Only prompt tokens are counted: an embeddings request completes nothing.

use cocoon_engine::{BodyEvent, EngineError};
use cocoon_openai::Usage;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde_json::{Map, Value, json};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Inputs decoded together at most (the embeddings context's sequences).
pub const EMBED_SEQS: u32 = 16;

/// Most vector components one answer may carry (inputs × dimensions): about 3 MiB of JSON at
/// worst, within what a proxy buffers for one answer (4 MiB) and far under the 16 MiB a usage
/// reader buffers for one JSON value.
pub const MAX_ANSWER_FLOATS: usize = 1 << 18;

/// The answer leaves in pieces of this many bytes (each its own `proxy.queryAnswerPartEx`).
pub const ANSWER_PIECE: usize = 64 << 10;

/// What bounds an embeddings request on this engine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EmbedLimits {
    /// Tokens one input may have (the embeddings context).
    pub per_input: u32,
    /// Tokens all inputs of one request together may have.
    pub total: u64,
    /// Size of each vector.
    pub dims: usize,
    /// The model's vocabulary size (token ids must be below it).
    pub n_vocab: i32,
}

/// One embeddings request on its way to the embeddings thread.
pub(crate) struct EmbedJob {
    pub inputs: Vec<Vec<LlamaToken>>,
    pub base64: bool,
    pub model: String,
    pub deadline: Instant,
    pub out: mpsc::Sender<BodyEvent>,
}

fn invalid(param: &str, code: &'static str, msg: String) -> EngineError {
    EngineError::invalid(param, code, msg)
}

/// The request's inputs as token lists, checked against the limits. Strings are tokenized
/// as the model's embedding runs expect (its special tokens added: BOS, or CLS and SEP).
pub(crate) fn inputs(
    model: &LlamaModel,
    name: &str,
    limits: &EmbedLimits,
    body: &Map<String, Value>,
) -> Result<(Vec<Vec<LlamaToken>>, bool), EngineError> {
    if let Some(d) = body.get("dimensions").and_then(Value::as_u64)
        && d != limits.dims as u64
    {
        return Err(invalid(
            "dimensions",
            "invalid_value",
            format!(
                "The model {name} makes vectors of {} dimensions and cannot shorten them; \
                 dimensions must be {} or left out.",
                limits.dims, limits.dims
            ),
        ));
    }
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let tokenize = |s: &str| model.vocab().tokenize(s.as_bytes(), true, false);
    let ids = |a: &[Value]| -> Result<Vec<LlamaToken>, EngineError> {
        a.iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| i32::try_from(t).ok())
                    .filter(|t| *t < limits.n_vocab)
                    .map(LlamaToken)
                    .ok_or_else(|| {
                        invalid(
                            "input",
                            "invalid_value",
                            format!(
                                "'$.input' is invalid: token ids must be below {} (this \
                                 model's vocabulary).",
                                limits.n_vocab
                            ),
                        )
                    })
            })
            .collect()
    };
    let list: Vec<Vec<LlamaToken>> = match body.get("input") {
        Some(Value::String(s)) => vec![tokenize(s)],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .map(|s| tokenize(s.as_str().unwrap_or_default()))
            .collect(),
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| ids(x.as_array().map(Vec::as_slice).unwrap_or_default()))
            .collect::<Result<_, _>>()?,
        Some(Value::Array(a)) => vec![ids(a)?],
        _ => {
            return Err(invalid(
                "input",
                "invalid_value",
                "'$.input' is invalid: expected a string or a list of strings or token ids.".into(),
            ));
        }
    };
    if list.is_empty() || list.iter().any(Vec::is_empty) {
        return Err(invalid(
            "input",
            "invalid_value",
            "'$.input' is invalid: an input must not be empty.".into(),
        ));
    }
    if let Some((i, t)) = list
        .iter()
        .enumerate()
        .find(|(_, t)| t.len() as u64 > u64::from(limits.per_input))
    {
        return Err(invalid(
            "input",
            "context_length_exceeded",
            format!(
                "This model's maximum context length is {} tokens, however you requested {} \
                 tokens in input {i}. Please reduce your input.",
                limits.per_input,
                t.len()
            ),
        ));
    }
    let total: u64 = list.iter().map(|t| t.len() as u64).sum();
    if total > limits.total {
        return Err(invalid(
            "input",
            "max_tokens_per_request",
            format!(
                "Requested {total} tokens, max {} tokens per request on the model {name}.",
                limits.total
            ),
        ));
    }
    if list.len().saturating_mul(limits.dims) > MAX_ANSWER_FLOATS {
        return Err(invalid(
            "input",
            "invalid_value",
            format!(
                "'$.input' is invalid: at most {} inputs per request on the model {name} \
                 ({} dimensions each).",
                MAX_ANSWER_FLOATS / limits.dims.max(1),
                limits.dims
            ),
        ));
    }
    Ok((list, base64))
}

/// `v` scaled to unit length (left as it is when it is all zeros).
pub fn normalise(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The base64 (standard alphabet, padded) of `v`'s little-endian bytes: OpenAI's
/// `encoding_format: "base64"`.
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(B64[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The answer body for `vectors` (in input order).
pub fn answer(model: &str, vectors: &[Vec<f32>], base64: bool, prompt_tokens: u64) -> Vec<u8> {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                Value::String(base64_f32(v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The embeddings thread: one job at a time, its inputs in as few decodes as fit.
pub(crate) fn run(
    model: &LlamaModel,
    mut ctx: LlamaContext<'_>,
    jobs: std_mpsc::Receiver<EmbedJob>,
) {
    let n_ctx = ctx.n_ctx() as usize;
    let mut batch = LlamaBatch::new(n_ctx, 1);
    while let Ok(job) = jobs.recv() {
        if job.out.is_closed() {
            continue;
        }
        let result = embed(model, &mut ctx, &mut batch, &job);
        let events = match result {
            Ok(vectors) => {
                let tokens: u64 = job.inputs.iter().map(|t| t.len() as u64).sum();
                let body = answer(&job.model, &vectors, job.base64, tokens);
                let mut events: Vec<BodyEvent> = body
                    .chunks(ANSWER_PIECE)
                    .map(|c| BodyEvent::Data(c.to_vec()))
                    .collect();
                events.push(BodyEvent::End {
                    usage: Usage::new(tokens, 0),
                    counted_locally: false,
                });
                events
            }
            Err(error) => vec![BodyEvent::Failed {
                error,
                usage: Usage::default(),
            }],
        };
        // This thread is not the runtime's: waiting for room is fine, and ends when the
        // caller drops its receiver.
        for ev in events {
            if job.out.blocking_send(ev).is_err() {
                break;
            }
        }
    }
}

fn embed(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    job: &EmbedJob,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let n_ctx = ctx.n_ctx() as usize;
    let dims = usize::try_from(model.n_embd()).unwrap_or(0);
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(job.inputs.len());
    let mut next = 0;
    while next < job.inputs.len() {
        if Instant::now() >= job.deadline {
            return Err(EngineError::Timeout(job.deadline.elapsed()));
        }
        if job.out.is_closed() {
            return Err(EngineError::Protocol("the caller went away".into()));
        }
        batch.clear();
        ctx.clear_kv_cache();
        let first = next;
        let mut used = 0;
        while next < job.inputs.len()
            && next - first < EMBED_SEQS as usize
            && (next == first || used + job.inputs[next].len() <= n_ctx)
        {
            let seq = (next - first) as i32;
            for (pos, t) in job.inputs[next].iter().enumerate() {
                batch
                    .add(*t, pos as i32, &[seq], true)
                    .map_err(|e| EngineError::Protocol(format!("embeddings batch: {e}")))?;
            }
            used += job.inputs[next].len();
            next += 1;
        }
        ctx.decode(batch)
            .map_err(|e| EngineError::Protocol(format!("embeddings decode: {e}")))?;
        for seq in 0..(next - first) as i32 {
            let mut v = ctx
                .embeddings_seq_ith(seq)
                .map_err(|e| EngineError::Protocol(format!("embeddings of sequence: {e}")))?
                .to_vec();
            if dims > 0 {
                v.truncate(dims);
            }
            normalise(&mut v);
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_vectors_have_unit_length() {
        let mut v = vec![3.0, 4.0];
        normalise(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        normalise(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn base64_is_little_endian_f32_as_openai_sends_it() {
        // 1.0f32 = 00 00 80 3f; -2.0f32 = 00 00 00 c0.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(base64_f32(&[1.0, -2.0, 0.5]), "AACAPwAAAMAAAAA/");
        assert_eq!(base64_f32(&[]), "");
    }

    #[test]
    fn answer_has_openai_shape() {
        let a: Value =
            serde_json::from_slice(&answer("m", &[vec![1.0, 0.0], vec![0.0, 1.0]], false, 7))
                .unwrap();
        assert_eq!(a["object"], "list");
        assert_eq!(a["model"], "m");
        assert_eq!(a["data"][1]["index"], 1);
        assert_eq!(a["data"][1]["object"], "embedding");
        assert_eq!(a["data"][1]["embedding"], json!([0.0, 1.0]));
        assert_eq!(a["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
        let b: Value = serde_json::from_slice(&answer("m", &[vec![1.0]], true, 1)).unwrap();
        assert_eq!(b["data"][0]["embedding"], "AACAPw==");
    }
}
