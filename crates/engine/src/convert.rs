//! A BERT sentence-embedding checkpoint (Hugging Face `model.safetensors`, `config.json`,
//! `tokenizer.json` and sentence-transformers' `1_Pooling/config.json`) converted to a GGUF that
//! llama.cpp loads as its `bert` architecture.
//!
//! The conversion is pure and deterministic: the same inputs give the same bytes (a fixed order
//! of metadata and tensors, F32 weights copied as they are), so the GGUF's SHA-256 can be pinned
//! like a downloaded file's. The inputs come from a download and are checked before use: the
//! safetensors header is bounded, every tensor's byte range must lie inside the file and match
//! its dtype and shape, and every tensor llama.cpp needs must be present with the shape the
//! config implies.

use serde_json::Value;
use std::io::{self, Write};

/// Largest safetensors header accepted (the real one is about 11 KiB).
pub const MAX_HEADER: u64 = 1 << 20;
/// Largest vocabulary accepted.
pub const MAX_VOCAB: usize = 1 << 20;

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The safetensors file is malformed.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// `config.json`, `tokenizer.json` or the pooling config is unusable.
    #[error("{file}: {message}")]
    Config {
        /// Which file.
        file: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A tensor is missing, has the wrong dtype or shape, or is not expected.
    #[error("tensor {name}: {message}")]
    Tensor {
        /// The checkpoint's tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Writing the GGUF failed.
    #[error("write: {0}")]
    Io(#[from] io::Error),
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafeTensor<'a> {
    /// Name in the checkpoint.
    pub name: String,
    /// Dtype as safetensors spells it (`F32`, `F16`, `I64`, …).
    pub dtype: String,
    /// Shape, outermost dimension first.
    pub shape: Vec<u64>,
    /// The tensor's bytes.
    pub data: &'a [u8],
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Parses a safetensors file held in memory: an 8-byte little-endian header length, a JSON
/// header of at most [`MAX_HEADER`] bytes, then the data. Tensors come back sorted by name.
pub fn parse_safetensors(file: &[u8]) -> Result<Vec<SafeTensor<'_>>, ConvertError> {
    let bad = |m: String| ConvertError::Safetensors(m);
    let len_bytes: [u8; 8] = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("shorter than its 8-byte header length".into()))?;
    let hlen = u64::from_le_bytes(len_bytes);
    if hlen > MAX_HEADER {
        return Err(bad(format!(
            "header of {hlen} bytes (at most {MAX_HEADER} accepted)"
        )));
    }
    let header = file.get(8..8 + hlen as usize).ok_or_else(|| {
        bad(format!(
            "header of {hlen} bytes runs past the end of the file"
        ))
    })?;
    let data = &file[8 + hlen as usize..];
    let map: serde_json::Map<String, Value> =
        serde_json::from_slice(header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let t = |m: &str| bad(format!("{name}: {m}"));
        let dtype = v
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| t("no dtype"))?
            .to_owned();
        let size = dtype_size(&dtype).ok_or_else(|| t("unknown dtype"))?;
        let shape = v
            .get("shape")
            .and_then(Value::as_array)
            .filter(|s| s.len() <= 8)
            .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| t("shape is not a list of at most 8 sizes"))?;
        let (start, end) = match v.get("data_offsets").and_then(Value::as_array) {
            Some(o) if o.len() == 2 => match (o[0].as_u64(), o[1].as_u64()) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(t("data_offsets are not two integers")),
            },
            _ => return Err(t("data_offsets are not two integers")),
        };
        if start > end || end > data.len() as u64 {
            return Err(t(&format!(
                "bytes {start}..{end} are outside the {} data bytes",
                data.len()
            )));
        }
        let want = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| t("shape overflows"))?;
        if want != end - start {
            return Err(t(&format!(
                "{} bytes for a {dtype} tensor of shape {shape:?} ({want} bytes)",
                end - start
            )));
        }
        out.push(SafeTensor {
            name,
            dtype,
            shape,
            data: &data[start as usize..end as usize],
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The hyperparameters llama.cpp's `bert` architecture reads, from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// `vocab_size`.
    pub vocab: u64,
    /// `hidden_size`.
    pub hidden: u64,
    /// `intermediate_size`.
    pub ffn: u64,
    /// `num_hidden_layers`.
    pub layers: u64,
    /// `num_attention_heads`.
    pub heads: u64,
    /// `max_position_embeddings`.
    pub context: u64,
    /// `type_vocab_size`.
    pub token_types: u64,
    /// `layer_norm_eps`.
    pub norm_eps: f32,
}

/// Reads `config.json` of a BERT model (`model_type` "bert", GELU, absolute positions).
pub fn bert_config(json: &[u8]) -> Result<BertConfig, ConvertError> {
    let bad = |m: String| ConvertError::Config {
        file: "config.json",
        message: m,
    };
    let v: Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    if s("model_type") != Some("bert") {
        return Err(bad("model_type is not \"bert\"".into()));
    }
    if s("hidden_act").is_some_and(|a| a != "gelu") {
        return Err(bad("hidden_act is not gelu".into()));
    }
    if s("position_embedding_type").is_some_and(|a| a != "absolute") {
        return Err(bad("position_embedding_type is not absolute".into()));
    }
    let n = |k: &str, max: u64| {
        v.get(k)
            .and_then(Value::as_u64)
            .filter(|&x| x >= 1 && x <= max)
            .ok_or_else(|| bad(format!("{k} is not an integer in 1..={max}")))
    };
    let cfg = BertConfig {
        vocab: n("vocab_size", MAX_VOCAB as u64)?,
        hidden: n("hidden_size", 1 << 14)?,
        ffn: n("intermediate_size", 1 << 16)?,
        layers: n("num_hidden_layers", 256)?,
        heads: n("num_attention_heads", 1024)?,
        context: n("max_position_embeddings", 1 << 16)?,
        token_types: n("type_vocab_size", 16)?,
        norm_eps: v
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .filter(|e| *e > 0.0 && *e < 1.0)
            .ok_or_else(|| bad("layer_norm_eps is not a number in (0, 1)".into()))?
            as f32,
    };
    if !cfg.hidden.is_multiple_of(cfg.heads) {
        return Err(bad(
            "hidden_size is not a multiple of num_attention_heads".into()
        ));
    }
    Ok(cfg)
}

/// llama.cpp's pooling types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean of the token vectors (1).
    Mean = 1,
    /// The `[CLS]` token's vector (2).
    Cls = 2,
}

/// Reads sentence-transformers' `1_Pooling/config.json`: exactly one of mean or CLS pooling.
pub fn pooling(json: &[u8]) -> Result<Pooling, ConvertError> {
    let bad = |m: String| ConvertError::Config {
        file: "1_Pooling/config.json",
        message: m,
    };
    let v: Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let on = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let modes = [
        "pooling_mode_cls_token",
        "pooling_mode_mean_tokens",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
    ]
    .map(on);
    match modes {
        [false, true, false, false] => Ok(Pooling::Mean),
        [true, false, false, false] => Ok(Pooling::Cls),
        _ => Err(bad(
            "exactly one of mean or CLS pooling must be on (llama.cpp has no other)".into(),
        )),
    }
}

/// A WordPiece vocabulary as llama.cpp's WPM tokenizer wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    /// Tokens by id: a word-initial piece gets the phantom-space prefix `▁`, a continuation
    /// (`##x`) loses its `##`, bracketed special tokens stay as they are.
    pub tokens: Vec<String>,
    /// llama.cpp token types by id: 3 (control) for the added special tokens, else 1 (normal).
    pub types: Vec<i32>,
    /// Ids of `[UNK]`, `[SEP]`, `[PAD]`, `[CLS]`, `[MASK]`.
    pub unk: u32,
    /// `[SEP]`.
    pub sep: u32,
    /// `[PAD]`.
    pub pad: u32,
    /// `[CLS]`.
    pub cls: u32,
    /// `[MASK]`.
    pub mask: u32,
}

/// Reads a Hugging Face `tokenizer.json` with a WordPiece model (`##` continuations) whose ids
/// are exactly `0..vocab_size`.
pub fn wordpiece_vocab(json: &[u8], vocab_size: u64) -> Result<Vocab, ConvertError> {
    let bad = |m: String| ConvertError::Config {
        file: "tokenizer.json",
        message: m,
    };
    let v: Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let model = v.get("model").ok_or_else(|| bad("no model".into()))?;
    if model.get("type").and_then(Value::as_str) != Some("WordPiece") {
        return Err(bad("model.type is not WordPiece".into()));
    }
    if model
        .get("continuing_subword_prefix")
        .and_then(Value::as_str)
        .is_some_and(|p| p != "##")
    {
        return Err(bad("continuing_subword_prefix is not ##".into()));
    }
    let map = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    if map.len() as u64 != vocab_size {
        return Err(bad(format!(
            "{} tokens, config.json says {vocab_size}",
            map.len()
        )));
    }
    let mut raw: Vec<Option<&str>> = vec![None; map.len()];
    for (tok, id) in map {
        let slot = id
            .as_u64()
            .and_then(|i| raw.get_mut(i as usize))
            .filter(|s| s.is_none())
            .ok_or_else(|| {
                bad(format!(
                    "token {tok:?}: id {id} is out of range or repeated"
                ))
            })?;
        *slot = Some(tok);
    }
    let mut special = vec![false; raw.len()];
    for a in v
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if a.get("special").and_then(Value::as_bool) == Some(true)
            && let Some(s) = a
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| special.get_mut(i as usize))
        {
            *s = true;
        }
    }
    let mut tokens = Vec::with_capacity(raw.len());
    let mut types = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        // Every slot is filled: as many distinct in-range ids as slots.
        let t = t.unwrap_or_default();
        tokens.push(if special[i] || (t.starts_with('[') && t.ends_with(']')) {
            t.to_owned()
        } else if let Some(rest) = t.strip_prefix("##") {
            rest.to_owned()
        } else {
            format!("\u{2581}{t}")
        });
        types.push(if special[i] { 3 } else { 1 });
    }
    let id = |name: &str| {
        map.get(name)
            .and_then(Value::as_u64)
            .map(|i| i as u32)
            .ok_or_else(|| bad(format!("no {name} token")))
    };
    Ok(Vocab {
        unk: id("[UNK]")?,
        sep: id("[SEP]")?,
        pad: id("[PAD]")?,
        cls: id("[CLS]")?,
        mask: id("[MASK]")?,
        tokens,
        types,
    })
}

/// The checkpoint's tensors in GGUF order: (GGUF name, checkpoint name, expected shape with the
/// outermost dimension first, as the checkpoint stores it).
fn tensor_plan(c: &BertConfig) -> Vec<(String, String, Vec<u64>)> {
    let h = c.hidden;
    let mut plan = vec![
        (
            "token_embd.weight".to_owned(),
            "embeddings.word_embeddings.weight".to_owned(),
            vec![c.vocab, h],
        ),
        (
            "token_types.weight".into(),
            "embeddings.token_type_embeddings.weight".into(),
            vec![c.token_types, h],
        ),
        (
            "position_embd.weight".into(),
            "embeddings.position_embeddings.weight".into(),
            vec![c.context, h],
        ),
        (
            "token_embd_norm.weight".into(),
            "embeddings.LayerNorm.weight".into(),
            vec![h],
        ),
        (
            "token_embd_norm.bias".into(),
            "embeddings.LayerNorm.bias".into(),
            vec![h],
        ),
    ];
    for i in 0..c.layers {
        let parts: [(&str, &str, Vec<u64>); 8] = [
            ("attn_q", "attention.self.query", vec![h, h]),
            ("attn_k", "attention.self.key", vec![h, h]),
            ("attn_v", "attention.self.value", vec![h, h]),
            ("attn_output", "attention.output.dense", vec![h, h]),
            ("attn_output_norm", "attention.output.LayerNorm", vec![h]),
            ("ffn_up", "intermediate.dense", vec![c.ffn, h]),
            ("ffn_down", "output.dense", vec![h, c.ffn]),
            ("layer_output_norm", "output.LayerNorm", vec![h]),
        ];
        for (g, hf, shape) in parts {
            let bias = vec![shape[0]];
            plan.push((
                format!("blk.{i}.{g}.weight"),
                format!("encoder.layer.{i}.{hf}.weight"),
                shape,
            ));
            plan.push((
                format!("blk.{i}.{g}.bias"),
                format!("encoder.layer.{i}.{hf}.bias"),
                bias,
            ));
        }
    }
    plan
}

/// Checkpoint tensors that llama.cpp does not use.
fn ignored(name: &str) -> bool {
    name == "embeddings.position_ids" || name.starts_with("pooler.")
}

/// GGUF's alignment of tensor data.
const ALIGN: u64 = 32;

/// The inputs of [`bert_to_gguf`].
#[derive(Clone, Copy, Debug)]
pub struct BertInputs<'a> {
    /// `general.name`.
    pub name: &'a str,
    /// `model.safetensors`.
    pub safetensors: &'a [u8],
    /// `config.json`.
    pub config: &'a [u8],
    /// `tokenizer.json`.
    pub tokenizer: &'a [u8],
    /// `1_Pooling/config.json`.
    pub pooling: &'a [u8],
}

/// Converts a BERT checkpoint to a GGUF (version 3, F32 tensors) written to `out`; returns the
/// bytes written. Every tensor llama.cpp's `bert` architecture needs must be present in F32
/// with the shape `config.json` implies; an unexpected tensor is refused.
pub fn bert_to_gguf(inp: &BertInputs<'_>, out: &mut dyn Write) -> Result<u64, ConvertError> {
    let cfg = bert_config(inp.config)?;
    let pool = pooling(inp.pooling)?;
    let vocab = wordpiece_vocab(inp.tokenizer, cfg.vocab)?;
    let tensors = parse_safetensors(inp.safetensors)?;
    let plan = tensor_plan(&cfg);
    for t in &tensors {
        if !ignored(&t.name) && !plan.iter().any(|(_, hf, _)| *hf == t.name) {
            return Err(ConvertError::Tensor {
                name: t.name.clone(),
                message: "not part of a BERT model".into(),
            });
        }
    }
    let mut picked = Vec::with_capacity(plan.len());
    for (gguf, hf, shape) in &plan {
        let t = tensors
            .iter()
            .find(|t| t.name == *hf)
            .ok_or_else(|| ConvertError::Tensor {
                name: hf.clone(),
                message: "missing".into(),
            })?;
        if t.dtype != "F32" {
            return Err(ConvertError::Tensor {
                name: hf.clone(),
                message: format!("dtype {} (only F32 is converted)", t.dtype),
            });
        }
        if t.shape != *shape {
            return Err(ConvertError::Tensor {
                name: hf.clone(),
                message: format!("shape {:?}, expected {shape:?}", t.shape),
            });
        }
        picked.push((gguf.as_str(), t));
    }

    let mut w = Counting { out, n: 0 };
    let kvs = metadata(inp.name, &cfg, pool, &vocab);
    w.put(b"GGUF")?;
    w.put(&3u32.to_le_bytes())?;
    w.put(&(picked.len() as u64).to_le_bytes())?;
    w.put(&(kvs.len() as u64).to_le_bytes())?;
    for (k, v) in &kvs {
        w.string(k)?;
        v.write(&mut w)?;
    }
    let mut offset = 0u64;
    for (name, t) in &picked {
        w.string(name)?;
        w.put(&(t.shape.len() as u32).to_le_bytes())?;
        for d in t.shape.iter().rev() {
            w.put(&d.to_le_bytes())?;
        }
        w.put(&0u32.to_le_bytes())?; // GGML_TYPE_F32
        w.put(&offset.to_le_bytes())?;
        offset = (offset + t.data.len() as u64).next_multiple_of(ALIGN);
    }
    w.pad()?;
    for (_, t) in &picked {
        w.put(t.data)?;
        w.pad()?;
    }
    w.out.flush()?;
    Ok(w.n)
}

enum Kv {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

impl Kv {
    fn write(&self, w: &mut Counting<'_>) -> io::Result<()> {
        match self {
            Kv::U32(x) => {
                w.put(&4u32.to_le_bytes())?;
                w.put(&x.to_le_bytes())
            }
            Kv::F32(x) => {
                w.put(&6u32.to_le_bytes())?;
                w.put(&x.to_le_bytes())
            }
            Kv::Bool(b) => {
                w.put(&7u32.to_le_bytes())?;
                w.put(&[u8::from(*b)])
            }
            Kv::Str(s) => {
                w.put(&8u32.to_le_bytes())?;
                w.string(s)
            }
            Kv::Strs(v) => {
                w.put(&9u32.to_le_bytes())?;
                w.put(&8u32.to_le_bytes())?;
                w.put(&(v.len() as u64).to_le_bytes())?;
                v.iter().try_for_each(|s| w.string(s))
            }
            Kv::I32s(v) => {
                w.put(&9u32.to_le_bytes())?;
                w.put(&5u32.to_le_bytes())?;
                w.put(&(v.len() as u64).to_le_bytes())?;
                v.iter().try_for_each(|x| w.put(&x.to_le_bytes()))
            }
        }
    }
}

fn metadata(name: &str, c: &BertConfig, pool: Pooling, v: &Vocab) -> Vec<(&'static str, Kv)> {
    let n = |x: u64| Kv::U32(x as u32);
    vec![
        ("general.architecture", Kv::Str("bert".into())),
        ("general.name", Kv::Str(name.into())),
        ("general.file_type", Kv::U32(0)), // all F32
        ("bert.context_length", n(c.context)),
        ("bert.embedding_length", n(c.hidden)),
        ("bert.feed_forward_length", n(c.ffn)),
        ("bert.block_count", n(c.layers)),
        ("bert.attention.head_count", n(c.heads)),
        ("bert.attention.layer_norm_epsilon", Kv::F32(c.norm_eps)),
        ("bert.attention.causal", Kv::Bool(false)),
        ("bert.pooling_type", Kv::U32(pool as u32)),
        ("tokenizer.ggml.model", Kv::Str("bert".into())),
        ("tokenizer.ggml.token_type_count", n(c.token_types)),
        ("tokenizer.ggml.tokens", Kv::Strs(v.tokens.clone())),
        ("tokenizer.ggml.token_type", Kv::I32s(v.types.clone())),
        // [CLS] opens every input as llama.cpp's BOS, [SEP] closes it (and stands for EOS).
        ("tokenizer.ggml.bos_token_id", Kv::U32(v.cls)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(v.sep)),
        ("tokenizer.ggml.unknown_token_id", Kv::U32(v.unk)),
        ("tokenizer.ggml.seperator_token_id", Kv::U32(v.sep)),
        ("tokenizer.ggml.padding_token_id", Kv::U32(v.pad)),
        ("tokenizer.ggml.cls_token_id", Kv::U32(v.cls)),
        ("tokenizer.ggml.mask_token_id", Kv::U32(v.mask)),
        ("tokenizer.ggml.add_bos_token", Kv::Bool(true)),
        ("tokenizer.ggml.add_eos_token", Kv::Bool(false)),
        ("tokenizer.ggml.add_sep_token", Kv::Bool(true)),
    ]
}

struct Counting<'a> {
    out: &'a mut dyn Write,
    n: u64,
}

impl Counting<'_> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.n += b.len() as u64;
        Ok(())
    }
    fn string(&mut self, s: &str) -> io::Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }
    fn pad(&mut self) -> io::Result<()> {
        let pad = self.n.next_multiple_of(ALIGN) - self.n;
        self.put(&vec![0u8; pad as usize])
    }
}
