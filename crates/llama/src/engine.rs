//! The embedded engine: one llama.cpp context, several requests decoded in one batch.
//!
//! llama.cpp contexts are not safe to create or drive from several threads, so one dedicated
//! thread owns the context and runs the scheduler; requests reach it through a bounded queue and
//! answers leave through per-request channels. Each step the scheduler builds one batch: first
//! the next token of every sequence that is generating (so running answers never wait behind a
//! long prompt), then as much prompt prefill as the batch has room for. One `decode` serves all
//! sequences; each sequence samples from its own logits with its own sampler and seed.
//!
//! A request for `n` choices takes `n` sequences at once (it waits, and holds back later
//! requests, until that many are free): the first prefills the prompt, and when its last
//! prompt token is decoded the others copy its KV cells and sample from the same logits, each
//! with its own seed, so the prompt is decoded and counted once.
//!
//! A request whose receiver is dropped is cancelled at the next step and its KV cells freed.
//!
//! `POST /v1/embeddings` runs on a second thread with its own context ([`crate::embed`]) when
//! the engine serves embeddings ([`Serve`]).

use crate::embed::{self, EmbedJob, EmbedLimits};
use crate::grammar::{self, CallMode, Format};
use crate::output::{AnswerWriter, CallPart, StopScanner, TokenLogprob, Utf8Buf};
use crate::template::{ChatTemplate, messages_from_json};
use crate::tools::{self, CallParser, ToolEvent, ToolPlan};
use cocoon_engine::{
    BodyEvent, Engine, EngineError, EngineRequest, EngineResponse, Health, ModelInfo, Tokenizer,
};
use cocoon_openai::{Endpoint, Usage};
use futures::future::BoxFuture;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use serde_json::Value;
use std::cell::RefCell;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Engine settings.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    /// GGUF file.
    pub model_path: PathBuf,
    /// Model name on the network (what requests put in `model`).
    pub model_name: String,
    /// Sequences decoded together (requests served at once).
    pub slots: u32,
    /// Context length of each sequence, in tokens (prompt + answer).
    pub ctx_per_slot: u32,
    /// Tokens per decode call.
    pub batch_tokens: u32,
    /// CPU threads.
    pub threads: u32,
    /// Layers offloaded to a GPU (needs a `cuda`/`vulkan`/`metal` build).
    pub gpu_layers: u32,
    /// Requests that may wait for a free slot before new ones are refused as busy.
    pub max_queue: usize,
    /// The SHA-256 (hex) the model file must have: checked when loading, and the file is
    /// then read into memory once rather than mapped, so what was hashed is what runs (a
    /// mapped file is paged in later, from a disk the host may have rewritten meanwhile).
    pub expected_sha256: Option<String>,
    /// What the engine serves: generation, embeddings or both.
    pub serve: Serve,
}

/// What an embedded engine serves. A model whose GGUF states a pooling type (an embedding
/// model) serves embeddings only, whatever is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Serve {
    /// `/v1/chat/completions` and `/v1/completions`.
    #[default]
    Generate,
    /// Both, embeddings with a second context (pooled by the mean for a generative model).
    GenerateAndEmbed,
    /// `/v1/embeddings` only.
    Embed,
}

impl Serve {
    /// Whether chat and text completions are served.
    pub fn generates(self) -> bool {
        self != Serve::Embed
    }

    /// Whether embeddings are served.
    pub fn embeds(self) -> bool {
        self != Serve::Generate
    }
}

impl LlamaConfig {
    /// Defaults: 4 slots of 4096 tokens, 512-token batches, all cores, no GPU, 64 queued.
    pub fn new(model_path: impl Into<PathBuf>, model_name: impl Into<String>) -> Self {
        LlamaConfig {
            model_path: model_path.into(),
            model_name: model_name.into(),
            slots: 4,
            ctx_per_slot: 4096,
            batch_tokens: 512,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
            gpu_layers: 0,
            max_queue: 64,
            expected_sha256: None,
            serve: Serve::Generate,
        }
    }
}

/// Loading failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// llama.cpp could not be initialised.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// The GGUF could not be loaded.
    #[error("{path}: cannot load model: {message}")]
    Model {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The context could not be created (usually too little memory for slots × ctx).
    #[error("cannot create context: {0}")]
    Context(String),
    /// The chat template does not compile.
    #[error("chat template: {0}")]
    Template(String),
    /// A setting is out of range.
    #[error("invalid engine setting: {0}")]
    Config(String),
    /// The model file is not the pinned one.
    #[error("{path}: SHA-256 is {actual}, the pinned model is {expected}: refusing to load it")]
    ModelHash {
        /// The file.
        path: PathBuf,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
}

fn backend() -> Result<&'static LlamaBackend, LoadError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp's own logging goes to `tracing` (it never logs prompt text at info).
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LoadError::Backend(e.clone()))
}

struct Shared {
    model: LlamaModel,
    template: ChatTemplate,
}

/// The embedded llama.cpp engine.
pub struct LlamaEngine {
    cfg: LlamaConfig,
    shared: Arc<Shared>,
    jobs: std_mpsc::SyncSender<Job>,
    /// The embeddings thread's queue, when the engine serves embeddings.
    embed_jobs: Option<(std_mpsc::SyncSender<EmbedJob>, EmbedLimits)>,
    alive: Arc<AtomicBool>,
    context_length: Option<u32>,
}

/// Sampling settings of one request.
#[derive(Clone, Debug, PartialEq)]
struct Sampling {
    temperature: f32,
    top_p: f32,
    frequency_penalty: f32,
    presence_penalty: f32,
    /// Tokens the penalties look back over (the answer's limit: OpenAI counts the whole
    /// answer so far).
    penalty_window: i32,
    /// Added to the token's logit; `-inf` bans it (OpenAI's -100).
    logit_bias: Vec<(LlamaToken, f32)>,
    seed: u32,
    /// Report each token's log-probability and this many alternatives.
    logprobs: Option<usize>,
    /// The grammar the answer follows (`response_format`), root rule `root`.
    grammar: Option<String>,
}

#[derive(Clone)]
struct Job {
    /// Choices (`n`): sequences that share the prompt's KV cells.
    n: u32,
    endpoint: Endpoint,
    stream: bool,
    id: String,
    created: u64,
    model: String,
    prompt: Vec<LlamaToken>,
    max_tokens: u32,
    stops: Vec<String>,
    sampling: Sampling,
    /// The answer may call functions (`tools`): how its output is read.
    calls: Option<CallMode>,
    deadline: Instant,
    timeout: Duration,
    out: mpsc::Sender<BodyEvent>,
}

fn f32_field(body: &serde_json::Map<String, Value>, key: &str, default: f32) -> f32 {
    body.get(key)
        .and_then(Value::as_f64)
        .map_or(default, |v| v as f32)
}

/// A tool call's id: `call_` and 24 random hex digits.
fn call_id() -> String {
    format!(
        "call_{:08x}{:08x}{:08x}",
        next_seed(),
        next_seed(),
        next_seed()
    )
}

fn next_seed() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let x = t ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    (x ^ (x >> 32)) as u32
}

impl LlamaEngine {
    /// Loads the model and starts the scheduler thread.
    pub fn load(cfg: LlamaConfig) -> Result<Self, LoadError> {
        if cfg.slots == 0 || cfg.ctx_per_slot < 16 || cfg.batch_tokens == 0 || cfg.threads == 0 {
            return Err(LoadError::Config(format!(
                "slots={}, ctx_per_slot={}, batch_tokens={}, threads={}",
                cfg.slots, cfg.ctx_per_slot, cfg.batch_tokens, cfg.threads
            )));
        }
        let backend = backend()?;
        let mut params = LlamaModelParams::default().with_n_gpu_layers(cfg.gpu_layers);
        if !cfg.model_path.is_file() {
            return Err(LoadError::Model {
                path: cfg.model_path.clone(),
                message: "no such file".into(),
            });
        }
        if let Some(expected) = &cfg.expected_sha256 {
            let actual =
                cocoon_engine::store::hash_file(&cfg.model_path).map_err(|e| LoadError::Model {
                    path: cfg.model_path.clone(),
                    message: e.to_string(),
                })?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(LoadError::ModelHash {
                    path: cfg.model_path.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
            params = params.with_use_mmap(false);
        }
        let model = LlamaModel::load_from_file(backend, &cfg.model_path, &params).map_err(|e| {
            LoadError::Model {
                path: cfg.model_path.clone(),
                message: e.to_string(),
            }
        })?;
        let source = model.meta_val_str("tokenizer.chat_template").ok();
        // A vocabulary without BOS or EOS (an embedding model's may have no EOS) states -1:
        // llama.cpp throws, uncatchably, on a piece of a token outside the vocabulary.
        let n_vocab = model.vocab().n_tokens();
        let piece = |t: LlamaToken| {
            if (0..n_vocab).contains(&t.0) {
                String::from_utf8_lossy(&model.vocab().token_to_piece(t, true, None)).into_owned()
            } else {
                String::new()
            }
        };
        let (bos, eos) = (piece(model.vocab().bos()), piece(model.vocab().eos()));
        let template = ChatTemplate::new(source.as_deref(), &bos, &eos)
            .map_err(|e| LoadError::Template(e.to_string()))?;
        let ctx_train = model.n_ctx_train();
        let ctx_per_slot = if ctx_train > 0 {
            cfg.ctx_per_slot.min(ctx_train)
        } else {
            cfg.ctx_per_slot
        };
        // An embedding model states its pooling in its GGUF (`<arch>.pooling_type`).
        let pooling = model
            .meta_val_str("general.architecture")
            .ok()
            .and_then(|arch| model.meta_val_str(&format!("{arch}.pooling_type")).ok())
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|p| *p > 0);
        let mut cfg = cfg;
        if pooling.is_some() && cfg.serve != Serve::Embed {
            tracing::info!(model = %cfg.model_name, "an embedding model: serving embeddings only");
            cfg.serve = Serve::Embed;
        }
        let shared = Arc::new(Shared { model, template });
        let alive = Arc::new(AtomicBool::new(true));
        let embed_jobs = if cfg.serve.embeds() {
            Some(start_embeddings(
                backend,
                &shared,
                &cfg,
                ctx_per_slot,
                pooling.is_none(),
                &alive,
            )?)
        } else {
            None
        };

        let (jobs_tx, jobs_rx) = std_mpsc::sync_channel::<Job>(cfg.max_queue);
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), String>>();
        let thread_shared = shared.clone();
        let thread_alive = alive.clone();
        let thread_cfg = LlamaConfig {
            ctx_per_slot,
            ..cfg.clone()
        };
        std::thread::Builder::new()
            .name("cocoon-llama".into())
            .spawn(move || {
                let model = &thread_shared.model;
                let n_ctx = thread_cfg.slots.saturating_mul(thread_cfg.ctx_per_slot);
                let cparams = LlamaContextParams::default()
                    .with_n_ctx(NonZeroU32::new(n_ctx))
                    .with_n_batch(thread_cfg.batch_tokens)
                    .with_n_ubatch(thread_cfg.batch_tokens)
                    .with_n_seq_max(thread_cfg.slots)
                    .with_n_threads(thread_cfg.threads as i32)
                    .with_n_threads_batch(thread_cfg.threads as i32);
                match model.new_context(backend, cparams) {
                    Ok(ctx) => {
                        let _ = ready_tx.send(Ok(()));
                        Scheduler::new(model, ctx, &thread_cfg).run(jobs_rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
                thread_alive.store(false, Ordering::SeqCst);
            })
            .map_err(|e| LoadError::Context(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(LoadError::Context(e)),
            Err(_) => return Err(LoadError::Context("engine thread exited".into())),
        }
        tracing::info!(
            model = %cfg.model_name,
            slots = cfg.slots,
            ctx_per_slot,
            threads = cfg.threads,
            "embedded llama.cpp engine ready"
        );
        Ok(LlamaEngine {
            cfg,
            shared,
            jobs: jobs_tx,
            embed_jobs,
            alive,
            context_length: Some(ctx_per_slot),
        })
    }

    /// What this engine serves (an embedding model's GGUF makes it [`Serve::Embed`]).
    pub fn serves(&self) -> Serve {
        self.cfg.serve
    }

    /// A tokenizer that counts exactly as this model does.
    pub fn tokenizer(&self) -> Arc<dyn Tokenizer> {
        Arc::new(LlamaTokenizer(self.shared.clone()))
    }

    /// The prompt text a request renders to (chat template applied).
    pub fn render_prompt(
        &self,
        endpoint: Endpoint,
        body: &serde_json::Map<String, Value>,
    ) -> Result<String, EngineError> {
        render(&self.shared, endpoint, body)
    }

    /// The token ids of a text as the model's vocabulary spells it (no BOS, special tokens
    /// taken as text): what `logit_bias` keys name.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        self.shared
            .model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .into_iter()
            .map(|t| t.0.max(0) as u32)
            .collect()
    }

    /// The bytes of a token id of the model's vocabulary (`None` outside it).
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let vocab = self.shared.model.vocab();
        let id = i32::try_from(id)
            .ok()
            .filter(|&i| i < self.shared.model.n_vocab())?;
        Some(vocab.token_to_piece(LlamaToken(id), false, None))
    }

    /// Tokens of a rendered prompt, as the engine feeds them.
    pub fn prompt_tokens(&self, prompt: &str) -> usize {
        tokenize_prompt(&self.shared.model, prompt).len()
    }
}

/// Starts the embeddings thread with its own context: one input per sequence, each input
/// within one micro-batch (an encoder attends to all of its tokens at once).
fn start_embeddings(
    backend: &'static LlamaBackend,
    shared: &Arc<Shared>,
    cfg: &LlamaConfig,
    ctx_tokens: u32,
    mean_pooling: bool,
    alive: &Arc<AtomicBool>,
) -> Result<(std_mpsc::SyncSender<EmbedJob>, EmbedLimits), LoadError> {
    let limits = EmbedLimits {
        per_input: ctx_tokens,
        total: u64::from(ctx_tokens).saturating_mul(u64::from(embed::EMBED_SEQS)),
        dims: usize::try_from(shared.model.n_embd()).unwrap_or(0),
        n_vocab: shared.model.n_vocab(),
    };
    let (tx, rx) = std_mpsc::sync_channel::<EmbedJob>(cfg.max_queue);
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), String>>();
    let (thread_shared, thread_alive) = (shared.clone(), alive.clone());
    let threads = cfg.threads as i32;
    std::thread::Builder::new()
        .name("cocoon-llama-embed".into())
        .spawn(move || {
            let model = &thread_shared.model;
            let mut cparams = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(ctx_tokens))
                .with_n_batch(ctx_tokens)
                .with_n_ubatch(ctx_tokens)
                .with_n_seq_max(embed::EMBED_SEQS)
                .with_n_threads(threads)
                .with_n_threads_batch(threads)
                // One KV buffer for all sequences: split per sequence, each would get only
                // n_ctx / n_seq_max cells (and batched vectors differed from single ones).
                .with_kv_unified(true)
                .with_embeddings(true);
            if mean_pooling {
                cparams = cparams.with_pooling_type(LlamaPoolingType::Mean);
            }
            match model.new_context(backend, cparams) {
                Ok(ctx) => {
                    let _ = ready_tx.send(Ok(()));
                    embed::run(model, ctx, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
            thread_alive.store(false, Ordering::SeqCst);
        })
        .map_err(|e| LoadError::Context(e.to_string()))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((tx, limits)),
        Ok(Err(e)) => Err(LoadError::Context(format!("embeddings context: {e}"))),
        Err(_) => Err(LoadError::Context("embeddings thread exited".into())),
    }
}

/// The 400 for a request this engine does not serve.
fn not_served(model: &str, endpoint: Endpoint) -> EngineError {
    let message = if endpoint == Endpoint::Embeddings {
        format!("The model {model} does not support embeddings.")
    } else {
        format!(
            "The model {model} is an embeddings model: it does not serve {}; use \
             /v1/embeddings.",
            endpoint.path()
        )
    };
    EngineError::invalid("model", "model_not_supported", message)
}

fn prepare(
    shared: &Shared,
    model_name: String,
    context_length: Option<u32>,
    slots: u32,
    req: EngineRequest,
) -> Result<(Job, mpsc::Receiver<BodyEvent>), EngineError> {
    let body = &req.body;
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    if n > u64::from(slots) {
        return Err(EngineError::invalid(
            "n",
            "invalid_value",
            format!(
                "n is {n}; the model {model_name} serves at most {slots} choices per request \
                 (the sequences its engine decodes together)."
            ),
        ));
    }
    let n = n as u32;
    for (field, unsupported) in [
        (
            "best_of",
            body.get("best_of")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 1),
        ),
        ("echo", body.get("echo") == Some(&Value::Bool(true))),
    ] {
        if unsupported {
            return Err(EngineError::invalid(
                field,
                "unsupported_parameter",
                format!(
                    "Unsupported parameter: '{field}' is not supported by the model {model_name} \
                     (embedded engine)."
                ),
            ));
        }
    }
    let plan = if req.endpoint == Endpoint::ChatCompletions {
        text_only(body, &model_name)?;
        tools::plan(body).map_err(|r| {
            let code = if r.param.ends_with(".parameters") {
                "unsupported_value"
            } else {
                "invalid_value"
            };
            EngineError::invalid(r.param, code, r.message)
        })?
    } else {
        None
    };
    let prompt_text = render_with(shared, req.endpoint, body, plan.as_ref())?;
    let prompt = tokenize_prompt(&shared.model, &prompt_text);
    let (what, param) = match req.endpoint {
        Endpoint::ChatCompletions => ("messages", "messages"),
        Endpoint::Completions | Endpoint::Embeddings => ("prompt", "prompt"),
    };
    if prompt.is_empty() {
        return Err(EngineError::invalid(
            param,
            "invalid_value",
            format!("The {what} render to an empty prompt."),
        ));
    }
    let asked = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    // Decided before the request reaches the decoding thread: nothing generated, nothing
    // billed. As OpenAI, the prompt and the completion limit together must fit.
    let ctx = u64::from(context_length.unwrap_or(u32::MAX));
    let used = prompt.len() as u64;
    let completion = asked.unwrap_or(0);
    if used >= ctx || used.saturating_add(completion) > ctx {
        return Err(EngineError::invalid(
            param,
            "context_length_exceeded",
            format!(
                "This model's maximum context length is {ctx} tokens. However, you requested \
                 {} tokens ({used} in the {what}, {completion} in the completion). Please \
                 reduce the length of the {what} or completion.",
                used.saturating_add(completion)
            ),
        ));
    }
    let max_tokens = asked.unwrap_or(ctx - used) as u32;
    let stops = match body.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let logit_bias = logit_bias(body, shared.model.n_vocab())?;
    let refuse_format = |why: String| {
        EngineError::invalid(
            "response_format",
            "unsupported_value",
            format!("Invalid response_format for the model {model_name}: {why}."),
        )
    };
    let format = match (grammar::response_format(body.get("response_format")), &plan) {
        (Ok(Format::Grammar(_)), Some(_)) => {
            return Err(refuse_format(
                "a JSON response_format cannot be combined with tool calls on this engine \
                 (tool_choice none allows it)"
                    .into(),
            ));
        }
        (Ok(Format::Text), Some(p)) => Ok(Format::Grammar(p.grammar.clone())),
        (other, _) => other,
    };
    let grammar = match format {
        Ok(Format::Text) => None,
        Ok(Format::Grammar(g)) => {
            // Compiled here once so that a grammar llama.cpp refuses is the caller's 400, not
            // a failure on the decoding thread.
            LlamaSampler::grammar(&shared.model, &g, "root").map_err(|e| match &plan {
                Some(_) => EngineError::invalid(
                    "tools",
                    "unsupported_value",
                    format!(
                        "The tools' grammar does not compile for the model {model_name} ({e})."
                    ),
                ),
                None => refuse_format(format!("the schema's grammar does not compile ({e})")),
            })?;
            Some(g)
        }
        Err(why) => return Err(refuse_format(why)),
    };
    let mut logit_bias = logit_bias;
    if grammar.is_some() {
        // A grammar sets every token it does not allow to -inf; were bans -inf too, a request
        // could ban every token the grammar allows, llama.cpp would pick one it does not, and
        // its grammar would abort the process. Far below any logit but finite, a ban yields
        // only where nothing else is allowed.
        for (_, b) in &mut logit_bias {
            if *b == f32::NEG_INFINITY {
                *b = -1.0e9;
            }
        }
    }
    let sampling = Sampling {
        temperature: f32_field(body, "temperature", 1.0),
        top_p: f32_field(body, "top_p", 1.0),
        frequency_penalty: f32_field(body, "frequency_penalty", 0.0),
        presence_penalty: f32_field(body, "presence_penalty", 0.0),
        penalty_window: max_tokens.min(i32::MAX as u32) as i32,
        logit_bias,
        logprobs: logprobs(req.endpoint, body),
        grammar,
        seed: body
            .get("seed")
            .and_then(Value::as_i64)
            .map_or_else(next_seed, |s| s as u32),
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prefix = match req.endpoint {
        Endpoint::ChatCompletions => "chatcmpl",
        Endpoint::Completions | Endpoint::Embeddings => "cmpl",
    };
    // Every token of every choice may be its own chunk, and each choice has a role and a
    // finish chunk.
    let (tx, rx) = mpsc::channel((max_tokens as usize + 4).saturating_mul(n as usize) + 8);
    let job = Job {
        n,
        endpoint: req.endpoint,
        stream: req.stream,
        id: format!(
            "{prefix}-{:016x}",
            u64::from(next_seed()) << 32 | u64::from(next_seed())
        ),
        created,
        model: model_name,
        prompt,
        max_tokens,
        stops,
        sampling,
        calls: plan.map(|p| p.mode),
        deadline: Instant::now() + req.timeout,
        timeout: req.timeout,
        out: tx,
    };
    Ok((job, rx))
}

/// Whether the answer carries logprobs, and how many alternatives per token: chat's
/// `logprobs: true` with `top_logprobs` (0..=20), the legacy integer `logprobs` (0..=5).
fn logprobs(endpoint: Endpoint, body: &serde_json::Map<String, Value>) -> Option<usize> {
    let v = body.get("logprobs")?;
    match endpoint {
        Endpoint::ChatCompletions => (v == &Value::Bool(true)).then(|| {
            body.get("top_logprobs")
                .and_then(Value::as_u64)
                .map_or(0, |k| k.min(20) as usize)
        }),
        Endpoint::Completions | Endpoint::Embeddings => v.as_u64().map(|k| k.min(5) as usize),
    }
}

/// `logit_bias` (already checked for shape and range by the client): token ids the model's
/// vocabulary has, each bias added to its logit; -100 bans the token outright and 100 makes
/// the biased tokens the only candidates, as OpenAI describes them.
fn logit_bias(
    body: &serde_json::Map<String, Value>,
    n_vocab: i32,
) -> Result<Vec<(LlamaToken, f32)>, EngineError> {
    let Some(map) = body.get("logit_bias").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let token = k.parse::<i32>().ok().filter(|t| (0..n_vocab).contains(t));
        let bias = v.as_f64().filter(|b| (-100.0..=100.0).contains(b));
        let (Some(token), Some(bias)) = (token, bias) else {
            return Err(EngineError::invalid(
                "logit_bias",
                "invalid_value",
                format!(
                    "logit_bias maps token ids below {n_vocab} (this model's vocabulary) to \
                     numbers between -100 and 100; {k:?} is not one."
                ),
            ));
        };
        let bias = if bias <= -100.0 {
            f32::NEG_INFINITY
        } else if bias >= 100.0 {
            // Far above any logit, still finite so a softmax over it stays a number.
            1.0e9
        } else {
            bias as f32
        };
        out.push((LlamaToken(token), bias));
    }
    Ok(out)
}

/// Refuses content parts other than text (images, audio, files): the embedded engine serves
/// text-only models, and a part dropped silently would answer a question not asked.
fn text_only(body: &serde_json::Map<String, Value>, model: &str) -> Result<(), EngineError> {
    let messages = body.get("messages").and_then(Value::as_array);
    for (i, m) in messages.into_iter().flatten().enumerate() {
        let Some(parts) = m.get("content").and_then(Value::as_array) else {
            continue;
        };
        for (j, p) in parts.iter().enumerate() {
            let kind = p.get("type").and_then(Value::as_str);
            if kind == Some("text") && p.get("text").is_some_and(Value::is_string) {
                continue;
            }
            let param = format!("messages[{i}].content[{j}]");
            let message = match kind {
                Some(k @ ("image_url" | "input_audio" | "file")) => format!(
                    "Invalid content type at {param}: {k} is not supported by the model \
                     {model}, which takes text only."
                ),
                _ => format!("{param} must be a text part: {{\"type\": \"text\", \"text\": …}}."),
            };
            return Err(EngineError::invalid(param, "unsupported_value", message));
        }
    }
    Ok(())
}

fn tokenize_prompt(model: &LlamaModel, prompt: &str) -> Vec<LlamaToken> {
    // As llama-server does for a rendered template: special tokens in the text are parsed,
    // and BOS is added when the vocabulary asks for it.
    model.vocab().tokenize(prompt.as_bytes(), true, true)
}

fn render(
    shared: &Shared,
    endpoint: Endpoint,
    body: &serde_json::Map<String, Value>,
) -> Result<String, EngineError> {
    let plan = match endpoint {
        Endpoint::ChatCompletions => tools::plan(body).ok().flatten(),
        Endpoint::Completions | Endpoint::Embeddings => None,
    };
    render_with(shared, endpoint, body, plan.as_ref())
}

/// The prompt: with tools, the functions listed in a system block and earlier calls and
/// results written in the call format (see [`tools::messages`]).
fn render_with(
    shared: &Shared,
    endpoint: Endpoint,
    body: &serde_json::Map<String, Value>,
    plan: Option<&ToolPlan>,
) -> Result<String, EngineError> {
    match endpoint {
        Endpoint::ChatCompletions => {
            let raw = body.get("messages").unwrap_or(&Value::Null);
            let block = plan.map(|p| tools::system_block(&p.listed));
            let msgs = tools::messages(messages_from_json(raw), raw, block.as_deref());
            shared
                .template
                .render(&msgs)
                .map_err(|e| EngineError::Unsupported(format!("chat template: {e}")))
        }
        Endpoint::Completions | Endpoint::Embeddings => match body.get("prompt") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Ok(a[0].as_str().unwrap_or_default().to_owned())
            }
            _ => Err(EngineError::invalid(
                "prompt",
                "unsupported_value",
                "The embedded engine takes one prompt string per request.",
            )),
        },
    }
}

struct LlamaTokenizer(Arc<Shared>);

impl Tokenizer for LlamaTokenizer {
    fn count(&self, text: &str) -> Result<u64, String> {
        Ok(self
            .0
            .model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .len() as u64)
    }
}

impl LlamaEngine {
    async fn submit_embeddings(&self, req: EngineRequest) -> Result<EngineResponse, EngineError> {
        let Some((jobs, limits)) = self.embed_jobs.clone() else {
            return Err(not_served(&self.cfg.model_name, req.endpoint));
        };
        let (shared, name) = (self.shared.clone(), self.cfg.model_name.clone());
        let (inputs, base64) = tokio::task::spawn_blocking(move || {
            embed::inputs(&shared.model, &name, &limits, &req.body)
        })
        .await
        .map_err(|e| EngineError::Unreachable(format!("prepare task: {e}")))??;
        let (tx, rx) = mpsc::channel(8);
        let job = EmbedJob {
            inputs,
            base64,
            model: self.cfg.model_name.clone(),
            deadline: Instant::now() + req.timeout,
            out: tx,
        };
        jobs.try_send(job).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => EngineError::Busy(format!(
                "{} embeddings requests are already waiting",
                self.cfg.max_queue
            )),
            std_mpsc::TrySendError::Disconnected(_) => {
                EngineError::Unreachable("the embeddings thread has stopped".into())
            }
        })?;
        Ok(EngineResponse {
            status: 200,
            content_type: "application/json".into(),
            body: rx,
        })
    }
}

impl Engine for LlamaEngine {
    fn submit(&self, req: EngineRequest) -> BoxFuture<'_, Result<EngineResponse, EngineError>> {
        Box::pin(async move {
            if !self.alive.load(Ordering::SeqCst) {
                return Err(EngineError::Unreachable(
                    "the engine thread has stopped".into(),
                ));
            }
            let stream = req.stream;
            let served = if req.endpoint == Endpoint::Embeddings {
                self.cfg.serve.embeds()
            } else {
                self.cfg.serve.generates()
            };
            if !served {
                return Err(not_served(&self.cfg.model_name, req.endpoint));
            }
            if req.endpoint == Endpoint::Embeddings {
                return self.submit_embeddings(req).await;
            }
            // Rendering and tokenizing a long prompt takes milliseconds: keep it off the runtime.
            let (shared, name, ctx, slots) = (
                self.shared.clone(),
                self.cfg.model_name.clone(),
                self.context_length,
                self.cfg.slots,
            );
            let (job, rx) =
                tokio::task::spawn_blocking(move || prepare(&shared, name, ctx, slots, req))
                    .await
                    .map_err(|e| EngineError::Unreachable(format!("prepare task: {e}")))??;
            self.jobs.try_send(job).map_err(|e| match e {
                std_mpsc::TrySendError::Full(_) => EngineError::Busy(format!(
                    "{} requests are already waiting for a free slot",
                    self.cfg.max_queue
                )),
                std_mpsc::TrySendError::Disconnected(_) => {
                    EngineError::Unreachable("the engine thread has stopped".into())
                }
            })?;
            let content_type = if stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            Ok(EngineResponse {
                status: 200,
                content_type: content_type.into(),
                body: rx,
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            if self.alive.load(Ordering::SeqCst) {
                Health {
                    up: true,
                    reason: None,
                }
            } else {
                Health {
                    up: false,
                    reason: Some("the engine thread has stopped".into()),
                }
            }
        })
    }

    fn model_info(&self) -> ModelInfo {
        let (generates, embeds) = (self.cfg.serve.generates(), self.cfg.serve.embeds());
        ModelInfo {
            name: self.cfg.model_name.clone(),
            engine: "llama.cpp (embedded)".into(),
            context_length: self.context_length,
            max_concurrency: self.cfg.slots,
            // What the engine serves; requests using the rest are 400s (engine validation).
            capabilities: cocoon_openai::Capabilities {
                chat: Some(generates),
                completions: Some(generates),
                embeddings: Some(embeds),
                tools: Some(generates),
                json_schema: Some(generates),
                vision: Some(false),
                logprobs: Some(generates),
            },
        }
    }
}

/// One sequence being served.
struct Slot {
    seq: i32,
    job: Job,
    sampler: LlamaSampler,
    /// With logprobs: the penalties and bias alone, to see the distribution the sampler
    /// sees (it tracks the same accepted tokens).
    shaping: Option<LlamaSampler>,
    fed: usize,
    pos: i32,
    next_input: Option<LlamaToken>,
    batch_idx: Option<i32>,
    generated: u32,
    utf8: Utf8Buf,
    stop: StopScanner,
    /// Which choice of its request this sequence answers.
    choice: usize,
    /// Reads tool calls out of the answer (a request with tools).
    calls: Option<CallParser>,
    /// The prompt's last token is in this step's batch.
    prompt_done: bool,
    /// A choice after the first: waits for the first one's prompt, then copies its cells.
    follows: Option<i32>,
    group: Rc<RefCell<Group>>,
}

/// What the choices of one request share: the answer being written and the usage.
struct Group {
    writer: AnswerWriter,
    /// Choices still generating.
    live: u32,
    /// Completion tokens over all choices.
    generated: u64,
    prompt: u64,
    /// An error was sent: nothing more goes out.
    failed: bool,
}

impl Group {
    fn usage(&self) -> Usage {
        Usage::new(self.prompt, self.generated)
    }
}

impl Slot {
    /// Sends an event; false when the caller went away.
    fn send(&self, ev: BodyEvent) -> bool {
        self.job.out.try_send(ev).is_ok()
    }
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    slots: Vec<Option<Slot>>,
    batch: LlamaBatch<'static>,
    batch_tokens: usize,
    /// A request with more choices than free slots: placed first once they free up.
    waiting: Option<Job>,
}

enum Outcome {
    Continue,
    Finished(&'static str),
    Gone,
}

impl<'m> Scheduler<'m> {
    fn new(model: &'m LlamaModel, ctx: LlamaContext<'m>, cfg: &LlamaConfig) -> Self {
        Scheduler {
            model,
            ctx,
            slots: (0..cfg.slots).map(|_| None).collect(),
            batch: LlamaBatch::new(cfg.batch_tokens as usize, cfg.slots as i32),
            batch_tokens: cfg.batch_tokens as usize,
            waiting: None,
        }
    }

    fn free_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    fn run(mut self, jobs: std_mpsc::Receiver<Job>) {
        loop {
            if self.waiting.is_none() && self.slots.iter().all(Option::is_none) {
                match jobs.recv() {
                    Ok(job) => self.waiting = Some(job),
                    Err(_) => return,
                }
            }
            // In arrival order: a request waiting for several slots holds back later ones.
            loop {
                let job = match self.waiting.take() {
                    Some(job) => job,
                    None => match jobs.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    },
                };
                if job.out.is_closed() {
                    continue;
                }
                if (job.n as usize) > self.free_slots() {
                    self.waiting = Some(job);
                    break;
                }
                self.place(job);
            }
            self.housekeeping();
            self.step();
        }
    }

    fn sampler(&self, s: &Sampling) -> Result<LlamaSampler, String> {
        let mut chain = Vec::new();
        if let Some(g) = &s.grammar {
            // First, so that nothing after it can lift a token the grammar excludes.
            chain.push(LlamaSampler::grammar(self.model, g, "root").map_err(|e| e.to_string())?);
        }
        chain.extend(self.shaping(s));
        if s.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if s.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(s.top_p, 1));
            }
            chain.push(LlamaSampler::temp(s.temperature));
            chain.push(LlamaSampler::dist(s.seed));
        }
        Ok(LlamaSampler::chain_simple(chain))
    }

    /// What changes the logits before the choice: penalties, then `logit_bias`.
    fn shaping(&self, s: &Sampling) -> Vec<LlamaSampler> {
        let mut chain = Vec::new();
        if s.frequency_penalty != 0.0 || s.presence_penalty != 0.0 {
            chain.push(LlamaSampler::penalties(
                self.model.n_vocab(),
                s.penalty_window.max(1),
                1.0,
                s.frequency_penalty,
                s.presence_penalty,
            ));
        }
        if !s.logit_bias.is_empty() {
            let biases: Vec<LlamaLogitBias> = s
                .logit_bias
                .iter()
                .map(|&(t, b)| LlamaLogitBias::new(t, b))
                .collect();
            chain.push(LlamaSampler::logit_bias(self.model.n_vocab(), &biases));
        }
        chain
    }

    /// The log-probabilities of the token chosen at `idx` and of the likeliest `top`: a
    /// log-softmax over the logits after penalties and bias (before temperature and top_p,
    /// as OpenAI reports them).
    fn logprobs(
        model: &LlamaModel,
        ctx: &LlamaContext<'_>,
        idx: i32,
        shaping: &mut LlamaSampler,
        top: usize,
        chosen: LlamaToken,
    ) -> TokenLogprob {
        let mut arr = LlamaTokenDataArray::from_iter(ctx.candidates_ith(idx), false);
        arr.apply_sampler(shaping);
        let logits: Vec<(LlamaToken, f32)> = arr.data.iter().map(|d| (d.id(), d.logit())).collect();
        let max = logits
            .iter()
            .map(|&(_, l)| l)
            .fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&(_, l)| f64::from(l - max).exp()).sum();
        let norm = max + sum.ln() as f32;
        let piece = |t: LlamaToken| model.vocab().token_to_piece(t, false, None);
        let logprob = logits
            .iter()
            .find(|&&(t, _)| t == chosen)
            .map_or(f32::NEG_INFINITY, |&(_, l)| l - norm);
        let mut best = logits;
        let k = top.min(best.len());
        if k > 0 {
            best.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            best.truncate(k);
            best.sort_by(|a, b| b.1.total_cmp(&a.1));
        } else {
            best.clear();
        }
        TokenLogprob {
            bytes: piece(chosen),
            logprob: logprob.min(0.0),
            top: best
                .into_iter()
                .map(|(t, l)| (piece(t), (l - norm).min(0.0)))
                .collect(),
        }
    }

    /// Puts a request's choices into free slots (the caller checked there are enough).
    fn place(&mut self, job: Job) {
        let writer = AnswerWriter::new(
            job.endpoint,
            job.stream,
            job.id.clone(),
            job.created,
            job.model.clone(),
        )
        .with_choices(job.n as usize)
        .with_logprobs(job.sampling.logprobs.is_some());
        let group = Rc::new(RefCell::new(Group {
            writer,
            live: job.n,
            generated: 0,
            prompt: job.prompt.len() as u64,
            failed: false,
        }));
        let mut first_seq = None;
        for choice in 0..job.n {
            let Some(i) = self.slots.iter().position(Option::is_none) else {
                return;
            };
            let mut sampling = job.sampling.clone();
            // Each choice draws its own tokens; a seed still makes the whole answer
            // reproducible.
            sampling.seed = sampling.seed.wrapping_add(choice);
            let sampler = match self.sampler(&sampling) {
                Ok(s) => s,
                Err(e) => {
                    let usage = Usage::new(job.prompt.len() as u64, 0);
                    let _ = job.out.try_send(BodyEvent::Failed {
                        error: EngineError::Unsupported(format!("grammar: {e}")),
                        usage,
                    });
                    for k in 0..self.slots.len() {
                        if self.slots[k]
                            .as_ref()
                            .is_some_and(|s| Rc::ptr_eq(&s.group, &group))
                        {
                            self.free(k);
                        }
                    }
                    return;
                }
            };
            let shaping = sampling
                .logprobs
                .map(|_| LlamaSampler::chain_simple(self.shaping(&sampling)));
            let seq = i as i32;
            let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            let follows = first_seq;
            first_seq.get_or_insert(seq);
            let mut job = job.clone();
            job.sampling = sampling;
            let parser = job.calls.map(CallParser::new);
            self.slots[i] = Some(Slot {
                seq,
                stop: StopScanner::new(job.stops.clone()),
                // A later choice feeds no prompt of its own: it copies the first one's cells.
                fed: if follows.is_some() {
                    job.prompt.len()
                } else {
                    0
                },
                job,
                sampler,
                shaping,
                pos: 0,
                next_input: None,
                batch_idx: None,
                generated: 0,
                utf8: Utf8Buf::default(),
                choice: choice as usize,
                calls: parser,
                prompt_done: false,
                follows,
                group: group.clone(),
            });
        }
    }

    fn free(&mut self, i: usize) {
        if let Some(s) = self.slots[i].take() {
            let _ = self.ctx.clear_kv_cache_seq(Some(s.seq as u32), None, None);
        }
    }

    /// Fails a request (once, whichever of its choices failed) and frees this choice's slot;
    /// the other choices are freed as they come up (their group has failed).
    fn fail(&mut self, i: usize, error: EngineError) {
        if let Some(s) = &self.slots[i] {
            let mut g = s.group.borrow_mut();
            if !g.failed {
                g.failed = true;
                let usage = g.usage();
                s.send(BodyEvent::Failed { error, usage });
            }
        }
        self.free(i);
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let Some(s) = &self.slots[i] else { continue };
            if s.group.borrow().failed {
                self.free(i);
            } else if s.job.out.is_closed() {
                tracing::debug!(seq = s.seq, "request cancelled by the caller");
                self.free(i);
            } else if now >= s.job.deadline {
                let t = s.job.timeout;
                self.fail(i, EngineError::Timeout(t));
            }
        }
    }

    fn step(&mut self) {
        self.batch.clear();
        let mut budget = self.batch_tokens;
        // Generating sequences first: one token each.
        for s in self.slots.iter_mut().flatten() {
            s.batch_idx = None;
            s.prompt_done = false;
            if let Some(t) = s.next_input.take() {
                if budget == 0 || self.batch.add(t, s.pos, &[s.seq], true).is_err() {
                    s.next_input = Some(t);
                    continue;
                }
                s.batch_idx = Some(self.batch.n_tokens() - 1);
                s.pos += 1;
                budget -= 1;
            }
        }
        // Then prompt prefill with the remaining room.
        for s in self.slots.iter_mut().flatten() {
            while s.fed < s.job.prompt.len() && budget > 0 {
                let last = s.fed + 1 == s.job.prompt.len();
                if self
                    .batch
                    .add(s.job.prompt[s.fed], s.pos, &[s.seq], last)
                    .is_err()
                {
                    break;
                }
                if last {
                    s.batch_idx = Some(self.batch.n_tokens() - 1);
                    s.prompt_done = true;
                }
                s.fed += 1;
                s.pos += 1;
                budget -= 1;
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            tracing::warn!(error = %e, "llama.cpp decode failed; failing the requests in this batch");
            for i in 0..self.slots.len() {
                if self.slots[i].is_some() {
                    self.fail(i, EngineError::Busy(format!("decode failed: {e}")));
                }
            }
            return;
        }
        // Prompts just finished: their later choices copy the cells and sample from the
        // same logits.
        let done: Vec<(i32, i32, i32)> = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.prompt_done && s.follows.is_none())
            .filter_map(|s| s.batch_idx.map(|idx| (s.seq, idx, s.pos)))
            .collect();
        for (first, idx, pos) in done {
            for k in 0..self.slots.len() {
                let Some(s) = &self.slots[k] else { continue };
                if s.follows != Some(first) {
                    continue;
                }
                let seq = s.seq;
                if let Err(e) = self.ctx.copy_kv_cache_seq(first, seq, None, None) {
                    self.fail(k, EngineError::Busy(format!("KV cache copy failed: {e}")));
                    continue;
                }
                if let Some(s) = &mut self.slots[k] {
                    s.follows = None;
                    s.pos = pos;
                    s.batch_idx = Some(idx);
                }
            }
        }
        for i in 0..self.slots.len() {
            let outcome = match &mut self.slots[i] {
                Some(s) => match s.batch_idx {
                    Some(idx) => {
                        let tok = s.sampler.sample(&self.ctx, idx);
                        let entry = match (&mut s.shaping, s.job.sampling.logprobs) {
                            (Some(shaping), Some(top)) => {
                                let e =
                                    Self::logprobs(self.model, &self.ctx, idx, shaping, top, tok);
                                shaping.accept(tok);
                                Some(e)
                            }
                            _ => None,
                        };
                        Self::accept(self.model, s, tok, entry)
                    }
                    None => Outcome::Continue,
                },
                None => continue,
            };
            match outcome {
                Outcome::Continue => {}
                Outcome::Gone => self.free(i),
                Outcome::Finished(reason) => {
                    if let Some(s) = &mut self.slots[i] {
                        let mut tail = s.utf8.finish();
                        if reason != "stop_string" {
                            tail = s.stop.push(&tail).0 + &s.stop.finish();
                        }
                        let mut g = s.group.borrow_mut();
                        if let Some(b) =
                            Self::write(&mut g.writer, &mut s.calls, s.choice, &tail, true)
                        {
                            s.send(BodyEvent::Data(b));
                        }
                        let r = if reason == "stop_string" {
                            "stop"
                        } else {
                            reason
                        };
                        let bytes = g.writer.finish_choice(s.choice, r);
                        if !bytes.is_empty() {
                            s.send(BodyEvent::Data(bytes));
                        }
                        g.live = g.live.saturating_sub(1);
                        if g.live == 0 {
                            let usage = g.usage();
                            let bytes = g.writer.done(usage);
                            s.send(BodyEvent::Data(bytes));
                            s.send(BodyEvent::End {
                                usage,
                                counted_locally: false,
                            });
                        }
                    }
                    self.free(i);
                }
            }
        }
    }

    /// Writes a piece of a choice's answer (through the tool-call parser when the request
    /// has tools): the bytes to send, if any. `last`: the answer ends here.
    fn write(
        writer: &mut AnswerWriter,
        calls: &mut Option<CallParser>,
        choice: usize,
        text: &str,
        last: bool,
    ) -> Option<Vec<u8>> {
        let Some(parser) = calls else {
            return (!text.is_empty())
                .then(|| writer.delta_at(choice, text))
                .flatten();
        };
        let mut events = parser.push(text);
        if last {
            events.extend(parser.finish());
        }
        if events.is_empty() {
            return None;
        }
        let mut content = String::new();
        let mut parts = Vec::new();
        for e in events {
            match e {
                ToolEvent::Text(t) => content.push_str(&t),
                ToolEvent::Start(name) => parts.push(CallPart::Start {
                    id: call_id(),
                    name,
                }),
                ToolEvent::Args(a) => parts.push(CallPart::Args(a)),
            }
        }
        writer.parts_at(choice, &content, &parts)
    }

    fn accept(
        model: &LlamaModel,
        s: &mut Slot,
        tok: LlamaToken,
        logprob: Option<TokenLogprob>,
    ) -> Outcome {
        let vocab = model.vocab();
        if vocab.is_eog(tok) {
            return Outcome::Finished("stop");
        }
        s.generated += 1;
        let mut g = s.group.borrow_mut();
        g.generated += 1;
        if let Some(e) = logprob {
            g.writer.logprob_at(s.choice, e);
        }
        let piece = vocab.token_to_piece(tok, false, None);
        let text = s.utf8.push(&piece);
        let (emit, stopped) = s.stop.push(&text);
        if let Some(b) = Self::write(&mut g.writer, &mut s.calls, s.choice, &emit, false)
            && !s.send(BodyEvent::Data(b))
        {
            return Outcome::Gone;
        }
        drop(g);
        if stopped {
            return Outcome::Finished("stop_string");
        }
        if s.generated >= s.job.max_tokens {
            return Outcome::Finished("length");
        }
        s.next_input = Some(tok);
        Outcome::Continue
    }
}
